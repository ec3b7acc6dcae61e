//! Typed identifiers. Numeric ids are `Copy` because they sit on the media hot path.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A participant of a room, unique within one server process (in a cluster, within the
/// cluster: each node start gives out ids from a range of its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ParticipantId(pub u64);

/// A published media track (one m-line of a publisher), unique within one server process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TrackId(pub u64);

impl fmt::Display for ParticipantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "p{}", self.0)
    }
}

impl fmt::Display for TrackId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "t{}", self.0)
    }
}

/// A room name as users type it: 1–64 characters of letters, digits, `-`, `_` and `.`.
///
/// The restriction keeps room names safe in URLs, file paths and log lines.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct RoomId(String);

/// Why a string is not a valid [`RoomId`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomIdError;

impl fmt::Display for RoomIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("room names are 1-64 characters of letters, digits, '-', '_' and '.'")
    }
}

impl std::error::Error for RoomIdError {}

/// 1–64 characters of letters, digits, `-`, `_` and `.`, and not a path step (`.`, `..`).
fn is_safe_name(name: &str) -> bool {
    let valid_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    !name.is_empty()
        && name.len() <= 64
        && name.chars().all(valid_char)
        && name != "."
        && name != ".."
}

impl RoomId {
    pub fn new(name: &str) -> Result<Self, RoomIdError> {
        if is_safe_name(name) {
            Ok(Self(name.to_owned()))
        } else {
            Err(RoomIdError)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for RoomId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        RoomId::new(&s).map_err(serde::de::Error::custom)
    }
}

/// A `ting` process in a cluster, named by its operator (`--node-id`); the same name rules as
/// a room, since it appears in Redis keys, URLs and log lines.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct NodeId(String);

/// Why a string is not a valid [`NodeId`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIdError;

impl fmt::Display for NodeIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("node ids are 1-64 characters of letters, digits, '-', '_' and '.'")
    }
}

impl std::error::Error for NodeIdError {}

impl NodeId {
    pub fn new(name: &str) -> Result<Self, NodeIdError> {
        if is_safe_name(name) {
            Ok(Self(name.to_owned()))
        } else {
            Err(NodeIdError)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        NodeId::new(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names_are_restricted_to_safe_characters() {
        assert!(RoomId::new("daily-standup_2.0").is_ok());
        assert_eq!(RoomId::new(""), Err(RoomIdError));
        assert_eq!(RoomId::new(".."), Err(RoomIdError));
        assert_eq!(RoomId::new("a/b"), Err(RoomIdError));
        assert_eq!(RoomId::new("tür"), Err(RoomIdError));
        assert_eq!(RoomId::new(&"x".repeat(65)), Err(RoomIdError));
    }

    #[test]
    fn node_ids_follow_the_room_name_rules() {
        assert!(NodeId::new("sfu-1.eu").is_ok());
        for bad in ["", "..", "a:b", "node/1", &"n".repeat(65)] {
            assert_eq!(NodeId::new(bad), Err(NodeIdError), "{bad:?}");
        }
        assert!(serde_json::from_str::<NodeId>("\"a b\"").is_err());
    }

    #[test]
    fn room_id_validates_when_deserialized() {
        assert!(serde_json::from_str::<RoomId>("\"ok\"").is_ok());
        assert!(serde_json::from_str::<RoomId>("\"../etc\"").is_err());
    }
}
