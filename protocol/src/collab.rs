//! The collaboration envelope: chat, whiteboards, kanban boards and the file drop all speak
//! through it on the meeting WebSocket (or a collab-only one).
//!
//! Every shared thing is an *object* of a *channel* inside a room (`chat/main`,
//! `whiteboard/main`, `board/sprint-12`, `files/main`). The server orders each object's
//! writes with a sequence number; a client that knows the last number it saw catches up with
//! exactly what it missed. The bodies (commands, events, state) are channel-specific JSON
//! documented in `docs/protocol.md` §13; this module only fixes the envelope.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Largest `body` of one collab message, in bytes of JSON. Pictures and files do not travel
/// in envelopes (they go through the file drop and are referred to by id).
pub const MAX_COLLAB_BODY_BYTES: usize = 64 * 1024;

/// The add-on an object belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Chat,
    Whiteboard,
    Board,
    Files,
}

impl Channel {
    pub const ALL: [Channel; 4] = [
        Channel::Chat,
        Channel::Whiteboard,
        Channel::Board,
        Channel::Files,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Chat => "chat",
            Channel::Whiteboard => "whiteboard",
            Channel::Board => "board",
            Channel::Files => "files",
        }
    }
}

impl std::fmt::Display for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Channel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Channel::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| format!("unknown channel '{s}' (chat, whiteboard, board, files)"))
    }
}

/// An object's name inside its room and channel: 1–64 of `A-Z a-z 0-9 . _ -`, not starting
/// with a dot (names become parts of export paths).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ObjectName(String);

impl ObjectName {
    pub fn new(name: &str) -> Result<Self, String> {
        let valid = !name.is_empty()
            && name.len() <= 64
            && !name.starts_with('.')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if valid {
            Ok(Self(name.to_owned()))
        } else {
            Err(format!(
                "invalid object name '{}': 1-64 of A-Z a-z 0-9 . _ - (not starting with '.')",
                name.chars().take(80).collect::<String>()
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ObjectName {
    type Error = String;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(&value)
    }
}

impl From<ObjectName> for String {
    fn from(value: ObjectName) -> Self {
        value.0
    }
}

impl std::fmt::Display for ObjectName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who wrote an event, as the server saw it (never as the client claimed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Author {
    pub identity: String,
    pub name: String,
}

/// An event of one object, as the server sends it: stored events carry `seq`, volatile ones
/// (cursors, typing) do not and are never stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollabEvent {
    pub channel: Channel,
    pub object: ObjectName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// The writer's op id, so the writer recognises its own change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op_id: Option<String>,
    pub author: Author,
    /// Server time of the event, unix milliseconds.
    pub at: i64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub volatile: bool,
    pub body: Value,
}

/// Error codes of collab requests (`collab_error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CollabErrorCode {
    /// The body is not a valid command for the channel.
    BadOp,
    /// The token does not let you read or write this object, or the change is someone else's.
    NotAllowed,
    /// The message, a body, a text or a quota exceeds its limit.
    TooLarge,
    /// The command names something that does not exist (a message, a card, a column).
    NotFound,
    /// Not subscribed to the object a volatile frame or query is for.
    NotSubscribed,
    /// Storage failed; the write was not applied. Retry with the same op id.
    Unavailable,
}
