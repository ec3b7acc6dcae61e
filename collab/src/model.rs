//! What every collab object has in common: who acts, what they may do, and the two steps of
//! a write — `decide` (check a command against the state, return the event it makes) and
//! `apply` (fold a stored event into the state). Replaying the log is `apply` alone, so a
//! state rebuilt after a restart is the state every client saw.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use ting_protocol::collab::{Author, Channel, CollabErrorCode};

use crate::board::BoardState;
use crate::chat::ChatState;
use crate::drop::FilesState;
use crate::whiteboard::WhiteboardState;

/// Who acts on a room's objects, as the join token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub room: String,
    pub identity: String,
    pub name: String,
    /// Hosts and moderators: may delete others' messages, set retention, export.
    pub moderator: bool,
    pub access: Access,
}

impl Actor {
    pub fn author(&self) -> Author {
        Author {
            identity: self.identity.clone(),
            name: self.name.clone(),
        }
    }
}

/// Per-channel read and write rights.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    read: BTreeSet<Channel>,
    write: BTreeSet<Channel>,
}

impl Access {
    /// Everything: a room member's rights.
    pub fn full() -> Self {
        Self {
            read: Channel::ALL.into_iter().collect(),
            write: Channel::ALL.into_iter().collect(),
        }
    }

    /// Read everything, write only `writable` (webinar viewers: chat).
    pub fn read_all_write(writable: &[Channel]) -> Self {
        Self {
            read: Channel::ALL.into_iter().collect(),
            write: writable.iter().copied().collect(),
        }
    }

    /// Grants as a token lists them: `chat` (read and write), `files:read`, `board:write`.
    pub fn from_grants<S: AsRef<str>>(grants: &[S]) -> Result<Self, String> {
        let mut access = Access::default();
        for grant in grants {
            let grant = grant.as_ref();
            let (channel, mode) = grant.split_once(':').unwrap_or((grant, "write"));
            let channel: Channel = channel.parse()?;
            match mode {
                "read" => {
                    access.read.insert(channel);
                }
                "write" => {
                    access.read.insert(channel);
                    access.write.insert(channel);
                }
                other => return Err(format!("unknown grant mode '{other}' (read, write)")),
            }
        }
        Ok(access)
    }

    pub fn can_read(&self, channel: Channel) -> bool {
        self.read.contains(&channel)
    }

    pub fn can_write(&self, channel: Channel) -> bool {
        self.write.contains(&channel)
    }
}

/// Why a collab request was refused. Client mistakes, never logged as errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CollabError {
    pub code: CollabErrorCode,
    pub message: String,
}

impl CollabError {
    pub fn new(code: CollabErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn bad(message: impl Into<String>) -> Self {
        Self::new(CollabErrorCode::BadOp, message)
    }

    pub fn not_allowed(message: impl Into<String>) -> Self {
        Self::new(CollabErrorCode::NotAllowed, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(CollabErrorCode::NotFound, message)
    }

    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(CollabErrorCode::TooLarge, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(CollabErrorCode::Unavailable, message)
    }
}

/// The facts a decision may use besides the state: the actor, the clock and the number the
/// event will get (which doubles as the id of what it creates).
#[derive(Debug, Clone, Copy)]
pub struct Ctx<'a> {
    pub actor: &'a Actor,
    pub now_ms: i64,
    pub seq: u64,
}

/// A stored event as the state machines see it.
#[derive(Debug, Clone, Copy)]
pub struct Stored<'a> {
    pub seq: u64,
    pub at: i64,
    pub author: &'a Author,
    pub body: &'a Value,
}

/// Parses a command body into a channel's command type, with a message naming the field.
pub(crate) fn parse_body<T: serde::de::DeserializeOwned>(body: Value) -> Result<T, CollabError> {
    serde_json::from_value(body).map_err(|e| CollabError::bad(format!("invalid op: {e}")))
}

/// Checks a user-supplied text's length (in characters).
pub(crate) fn check_text(what: &str, text: &str, max_chars: usize) -> Result<(), CollabError> {
    if text.chars().count() > max_chars {
        return Err(CollabError::too_large(format!(
            "{what} is limited to {max_chars} characters"
        )));
    }
    Ok(())
}

/// One object's state, whatever its channel.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "channel", content = "state", rename_all = "snake_case")]
pub enum ObjectState {
    Chat(ChatState),
    Whiteboard(WhiteboardState),
    Board(BoardState),
    Files(FilesState),
}

impl ObjectState {
    pub fn empty(channel: Channel) -> Self {
        match channel {
            Channel::Chat => ObjectState::Chat(ChatState::default()),
            Channel::Whiteboard => ObjectState::Whiteboard(WhiteboardState::default()),
            Channel::Board => ObjectState::Board(BoardState::default()),
            Channel::Files => ObjectState::Files(FilesState::default()),
        }
    }

    /// Checks a client's command and returns the event body it makes.
    pub fn decide(&self, ctx: Ctx<'_>, command: Value) -> Result<Value, CollabError> {
        match self {
            ObjectState::Chat(s) => s.decide(ctx, command),
            ObjectState::Whiteboard(s) => s.decide(ctx, command),
            ObjectState::Board(s) => s.decide(ctx, command),
            ObjectState::Files(_) => Err(CollabError::not_allowed(
                "files are added through the file drop (tus) and removed with DELETE",
            )),
        }
    }

    /// Folds a stored event in. Events were made by `decide` (or the server), so a body that
    /// does not parse is skipped rather than trusted.
    pub fn apply(&mut self, event: Stored<'_>) {
        match self {
            ObjectState::Chat(s) => s.apply(event),
            ObjectState::Whiteboard(s) => s.apply(event),
            ObjectState::Board(s) => s.apply(event),
            ObjectState::Files(s) => s.apply(event),
        }
    }

    /// What a subscriber gets instead of the log: for chat the latest page, not all history.
    pub fn client_snapshot(&self, actor: &Actor) -> Value {
        match self {
            ObjectState::Chat(s) => s.client_snapshot(actor),
            ObjectState::Whiteboard(s) => s.client_snapshot(),
            ObjectState::Board(s) => serde_json::to_value(s).unwrap_or(Value::Null),
            ObjectState::Files(s) => serde_json::to_value(s).unwrap_or(Value::Null),
        }
    }

    /// Read-only requests (history, search).
    pub fn query(&self, actor: &Actor, body: Value) -> Result<Value, CollabError> {
        match self {
            ObjectState::Chat(s) => s.query(actor, body),
            _ => Err(CollabError::bad("this channel has no queries")),
        }
    }

    /// How many items retention would remove before `cutoff_ms` (an `expired` event removes
    /// them).
    pub fn expiring_before(&self, cutoff_ms: i64) -> usize {
        match self {
            ObjectState::Chat(s) => s.expiring_before(cutoff_ms),
            _ => 0,
        }
    }
}
