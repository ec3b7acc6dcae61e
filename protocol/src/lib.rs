//! Ting's wire and model types: typed ids and the signalling protocol messages.
//!
//! This crate is data only — serde types, no IO, no async runtime — so every other crate
//! (SFU, signalling, tools, tests) can depend on it. The JSON shape of every message is
//! documented with examples in `docs/protocol.md`; [`PROTOCOL_VERSION`] is bumped when a
//! change would break an existing client.

pub mod collab;
mod ids;
mod signal;

pub use ids::{NodeId, NodeIdError, ParticipantId, RoomId, RoomIdError, TrackId};
pub use signal::{
    ClientMessage, Departure, ErrorCode, LeaveReason, ModerationAction, ParticipantInfo,
    PublishedTrack, Role, RoomSettings, ServerMessage, Subscription, TrackInfo, TrackKind,
    TrackSource,
};

/// Version of the signalling protocol spoken on `/ws`.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest WebSocket message (in bytes) the server accepts. An SDP offer grows by 1–2 KiB per
/// m-line, and a client showing a 49-tile gallery has over 50 of them.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;
