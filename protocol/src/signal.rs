//! Signalling protocol v1: JSON messages over one WebSocket per participant.
//!
//! Every message is an object with a `type` field in snake_case. The client always makes the
//! SDP offers (publishing its own tracks, and adding receive-only transceivers for what it wants
//! to watch), so there is never offer glare; the server answers. What a receive-only m-line shows
//! is chosen with `subscribe`, which maps a remote track to one of the client's `mid`s and can be
//! changed at any time without renegotiating.

use serde::{Deserialize, Serialize};

use crate::collab::{Channel, CollabErrorCode, CollabEvent, ObjectName};
use crate::{ParticipantId, RoomId, TrackId};

/// Messages a client sends to the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    /// The first message on a new WebSocket. `room`, when given, must be the token's room (a
    /// client that believes it joins room A must not silently land in room B). `resume`
    /// carries the `resume_token` of an earlier `joined` to come back as the same participant
    /// after the socket dropped.
    Join {
        version: u32,
        token: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        room: Option<RoomId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume: Option<String>,
    },
    /// An SDP offer covering the whole peer connection; `tracks` names the source of each
    /// m-line the client sends on. Answered by `answer`.
    Offer {
        sdp: String,
        #[serde(default)]
        tracks: Vec<PublishedTrack>,
    },
    /// A trickled ICE candidate (`a=candidate` value without the prefix). Optional: the server
    /// learns the client's address from its connectivity checks.
    Candidate {
        candidate: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sdp_mid: Option<String>,
    },
    /// The full list of what the client wants to receive, and on which receive-only m-line.
    /// `audio_slots`, when given, names audio m-lines the server fills with the room's
    /// loudest speakers (loudest-N) — the way to hear a large meeting without one m-line per
    /// microphone.
    Subscribe {
        subscriptions: Vec<Subscription>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        audio_slots: Option<Vec<String>>,
    },
    /// Mute or unmute one of the client's own tracks. Muted tracks are not forwarded.
    Mute { track_id: TrackId, muted: bool },
    /// Leave the room; the server answers `bye` and closes the socket. (A struct variant so
    /// that unknown fields are rejected like everywhere else.)
    Leave {},
    /// Keep-alive; answered by `pong` with the same nonce.
    Ping {
        #[serde(default)]
        nonce: u64,
    },
    /// Ask for a page of the roster, optionally only names containing `query`.
    RosterPage {
        #[serde(default)]
        offset: u32,
        #[serde(default = "default_page")]
        limit: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        query: Option<String>,
        /// Hosts and moderators only: list viewers too (to find and promote one).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        viewers: bool,
    },
    /// Raise or lower one's hand (ask to speak).
    RaiseHand { raised: bool },
    /// Moderation: change a participant's role (e.g. promote an attendee to speaker and back).
    SetRole {
        participant_id: ParticipantId,
        role: Role,
    },
    /// Moderation: mute a participant's audio or stop their video (`muted: true`), or allow
    /// them to unmute again (`muted: false`; the participant unmutes themselves).
    MuteParticipant {
        participant_id: ParticipantId,
        kind: TrackKind,
        #[serde(default = "yes")]
        muted: bool,
    },
    /// Moderation: mute everybody's audio (or video) except moderators.
    MuteAll { kind: TrackKind },
    /// Moderation: remove a participant from the meeting; they cannot rejoin it.
    RemoveParticipant { participant_id: ParticipantId },
    /// Moderation: change room settings; absent fields stay as they are.
    UpdateRoom {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        locked: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lobby: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        allow_self_unmute: Option<bool>,
    },
    /// Moderation: start or stop recording the meeting (every publisher to a file of its own).
    SetRecording { active: bool },
    /// Moderation: let a participant in from the lobby.
    Admit { participant_id: ParticipantId },
    /// Moderation: turn a participant in the lobby away.
    Deny { participant_id: ParticipantId },
    /// Instead of `join`: a socket for the collaboration add-ons only (team chat rooms and
    /// boards outside a meeting). No roster, no media; answered by `collab_joined`.
    CollabJoin { version: u32, token: String },
    /// Follow a collab object. With `since` (the last `seq` the client saw) the server sends
    /// exactly the events after it; without it, or when they are no longer kept, a snapshot.
    /// Then `collab_synced`.
    CollabSubscribe {
        channel: Channel,
        object: ObjectName,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<u64>,
    },
    CollabUnsubscribe {
        channel: Channel,
        object: ObjectName,
    },
    /// A change to a collab object (`volatile: false`, acknowledged by `collab_ack` once it is
    /// stored; a repeated `op_id` is applied once), or a droppable frame such as a cursor or
    /// typing (`volatile: true`, relayed to the other subscribers, never stored).
    Collab {
        channel: Channel,
        object: ObjectName,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        op_id: Option<String>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        volatile: bool,
        body: serde_json::Value,
    },
    /// A read-only request (chat history, search); answered by `collab_result`.
    CollabQuery {
        channel: Channel,
        object: ObjectName,
        op_id: String,
        body: serde_json::Value,
    },
}

fn yes() -> bool {
    true
}

fn default_page() -> u32 {
    100
}

/// Somebody who left, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Departure {
    pub participant_id: ParticipantId,
    pub reason: LeaveReason,
}

/// Messages the server sends to a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// Answer to `join`: who you are and a snapshot of the room.
    Joined {
        version: u32,
        room: RoomId,
        participant: ParticipantInfo,
        /// Present when this `joined` resumes an earlier session of the same participant.
        resumed: bool,
        /// Secret that lets this participant come back within the grace period after its
        /// WebSocket drops.
        resume_token: String,
        /// Seconds the server keeps a participant whose socket dropped.
        resume_grace_secs: u32,
        /// The first page of everybody else in the room (hosts and moderators, then speakers,
        /// then the others, each by name),
        /// with their tracks; ask for more with `roster_page`.
        participants: Vec<ParticipantInfo>,
        /// Everyone in the room, viewers included.
        #[serde(default)]
        participant_count: u32,
        /// The current active speaker, if anybody speaks.
        active_speaker: Option<ParticipantId>,
        #[serde(default)]
        settings: RoomSettings,
        /// Participants waiting in the lobby (sent to moderators only; empty otherwise).
        #[serde(default)]
        lobby: Vec<ParticipantInfo>,
    },
    /// Answer to `join` while the room's lobby is on: wait until a moderator admits you
    /// (`joined` follows) or denies you (`bye` with reason `denied`). No media, no roster.
    Waiting {
        room: RoomId,
    },
    /// Answer to `join` in cluster mode when the room is served by another node (or another
    /// node has more room for a new one): connect the WebSocket to `url` and send the same
    /// `join` there. The server closes this socket.
    Moved {
        url: String,
    },
    /// To moderators: who waits in the lobby now (the complete list).
    LobbyUpdated {
        waiting: Vec<ParticipantInfo>,
    },
    /// The room's settings changed.
    RoomUpdated {
        settings: RoomSettings,
    },
    /// To a participant: a moderator acted on you.
    Moderated {
        action: ModerationAction,
        /// The muted (or unmutable) kind, with `muted` and `unmute_allowed`.
        kind: Option<TrackKind>,
        /// Your new role, with `role_changed`.
        role: Option<Role>,
        by: ParticipantId,
    },
    /// Roster changes since the last batch. Sent a few times a second at most and never as a
    /// full roster, so a join storm costs batches, not one message per join per participant.
    /// Viewers are not listed; they get `roster_count` instead.
    RosterChanged {
        joined: Vec<ParticipantInfo>,
        left: Vec<Departure>,
        updated: Vec<ParticipantInfo>,
        /// Everyone in the room, viewers included.
        count: u32,
    },
    /// To viewers, instead of roster changes: the headcount (at most once a second).
    RosterCount {
        count: u32,
    },
    /// Answer to `roster_page`.
    RosterPage {
        participants: Vec<ParticipantInfo>,
        /// Matches in all (for the query, if any).
        total: u32,
        offset: u32,
    },
    TrackPublished {
        track: TrackInfo,
    },
    TrackUnpublished {
        track_id: TrackId,
        participant_id: ParticipantId,
    },
    /// A track's state changed (mute).
    TrackUpdated {
        track: TrackInfo,
    },
    /// To a publisher: send only these simulcast layers (RIDs) of your track; nobody watches
    /// the others. An empty list pauses the video until someone watches again. Browsers set
    /// `RTCRtpEncodingParameters.active` accordingly.
    PublishLayers {
        track_id: TrackId,
        active: Vec<String>,
    },
    /// Answer to the client's `offer`. `tracks` are the ids given to the client's own m-lines.
    Answer {
        sdp: String,
        tracks: Vec<TrackInfo>,
    },
    /// The loudest participant changed (`None` when the room fell silent).
    ActiveSpeaker {
        participant_id: Option<ParticipantId>,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
    Pong {
        nonce: u64,
    },
    /// The server ends this session; the socket closes right after.
    Bye {
        reason: LeaveReason,
    },
    /// Answer to `collab_join`.
    CollabJoined {
        room: RoomId,
        identity: String,
        name: String,
        moderator: bool,
    },
    /// An event of a collab object the client follows.
    Collab(CollabEvent),
    /// The state of a collab object as of `seq` (answer to `collab_subscribe` when events
    /// alone cannot bring the client up to date).
    CollabSnapshot {
        channel: Channel,
        object: ObjectName,
        seq: u64,
        state: serde_json::Value,
    },
    /// The client is up to date with the object as of `seq`; live events follow.
    CollabSynced {
        channel: Channel,
        object: ObjectName,
        seq: u64,
    },
    /// The write with `op_id` is stored as event `seq` (`duplicate`: it had been already).
    CollabAck {
        channel: Channel,
        object: ObjectName,
        op_id: String,
        seq: u64,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        duplicate: bool,
    },
    /// Answer to `collab_query`.
    CollabResult {
        channel: Channel,
        object: ObjectName,
        op_id: String,
        body: serde_json::Value,
    },
    /// A collab request failed; nothing was changed.
    CollabError {
        channel: Channel,
        object: ObjectName,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        op_id: Option<String>,
        code: CollabErrorCode,
        message: String,
    },
}

/// What a participant may do in a room. Carried in the join token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Host,
    Moderator,
    #[default]
    Speaker,
    /// Listens and watches; may publish once promoted.
    Attendee,
    /// Receive only.
    Viewer,
}

impl Role {
    pub fn may_publish(self) -> bool {
        matches!(self, Role::Host | Role::Moderator | Role::Speaker)
    }

    /// Hosts and moderators run the meeting.
    pub fn moderates(self) -> bool {
        matches!(self, Role::Host | Role::Moderator)
    }
}

/// Room-wide settings moderators control.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomSettings {
    /// Nobody new may join (hosts and moderators still can).
    pub locked: bool,
    /// New participants wait in the lobby until a moderator admits them.
    pub lobby: bool,
    /// Whether participants muted by a moderator may unmute themselves.
    pub allow_self_unmute: bool,
    /// The meeting is being recorded (everybody sees it).
    #[serde(default)]
    pub recording: bool,
}

impl Default for RoomSettings {
    fn default() -> Self {
        Self {
            locked: false,
            lobby: false,
            allow_self_unmute: true,
            recording: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModerationAction {
    /// Your audio was muted or your video stopped (`kind`).
    Muted,
    /// You may unmute `kind` again.
    UnmuteAllowed,
    /// Your role changed; the new role is in `role`.
    RoleChanged,
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        serde_json::from_value(serde_json::Value::String(s.to_owned()))
            .map_err(|_| format!("unknown role '{s}' (host, moderator, speaker, attendee, viewer)"))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantInfo {
    pub id: ParticipantId,
    /// Stable identity from the token (user id, e-mail, ...).
    pub identity: String,
    /// Display name.
    pub name: String,
    pub role: Role,
    pub tracks: Vec<TrackInfo>,
    /// Asking to speak.
    #[serde(default)]
    pub hand_raised: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrackKind {
    Audio,
    Video,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrackSource {
    Microphone,
    Camera,
    Screen,
    /// Audio that comes with a screen share.
    ScreenAudio,
}

impl TrackSource {
    pub fn kind(self) -> TrackKind {
        match self {
            TrackSource::Microphone | TrackSource::ScreenAudio => TrackKind::Audio,
            TrackSource::Camera | TrackSource::Screen => TrackKind::Video,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackInfo {
    pub id: TrackId,
    pub participant_id: ParticipantId,
    /// The publisher's m-line.
    pub mid: String,
    pub kind: TrackKind,
    pub source: TrackSource,
    pub muted: bool,
}

/// One m-line the client publishes on, as declared in its `offer`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishedTrack {
    pub mid: String,
    pub source: TrackSource,
    #[serde(default)]
    pub muted: bool,
}

/// Show remote track `track_id` on the client's receive-only m-line `mid`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subscription {
    pub track_id: TrackId,
    pub mid: String,
    /// Height in pixels of the tile the video is shown in; picks the simulcast layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_height: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaveReason {
    /// The participant said `leave` (or a WHIP/WHEP session was deleted).
    Left,
    /// The socket dropped and did not come back within the grace period.
    Disconnected,
    /// The media connection failed (ICE or DTLS).
    MediaFailed,
    /// The same participant resumed on a newer socket.
    Replaced,
    /// The server is shutting down.
    ServerShutdown,
    /// A moderator removed the participant.
    Removed,
    /// A moderator turned the participant away from the lobby.
    Denied,
}

/// Machine-readable error codes. A client shows `message`; it branches on `code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not valid JSON, or a known message with wrong fields.
    BadMessage,
    /// Valid JSON with a `type` the server does not know.
    UnknownMessage,
    /// The message exceeds the size limit.
    MessageTooLarge,
    UnsupportedVersion,
    /// The token is malformed or its signature is wrong.
    InvalidToken,
    TokenExpired,
    /// The token is for another room.
    WrongRoom,
    /// A message other than `join` arrived before `join`.
    NotJoined,
    AlreadyJoined,
    /// The resume token is unknown or its grace period ran out.
    ResumeFailed,
    /// The SDP could not be parsed or negotiated.
    InvalidSdp,
    /// The participant's role does not allow this.
    NotAllowed,
    UnknownTrack,
    /// A `subscribe` names more tracks than the server sends one participant.
    TooManyStreams,
    /// The room is locked; ask a moderator.
    RoomLocked,
    /// The media server is overloaded or shutting down.
    Unavailable,
    Internal,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages_use_a_type_tag() {
        let msg: ClientMessage =
            serde_json::from_str(r#"{"type":"mute","track_id":7,"muted":true}"#).unwrap();
        assert_eq!(
            msg,
            ClientMessage::Mute {
                track_id: TrackId(7),
                muted: true
            }
        );
        let leave: ClientMessage = serde_json::from_str(r#"{"type":"leave"}"#).unwrap();
        assert_eq!(leave, ClientMessage::Leave {});
    }

    #[test]
    fn unknown_fields_and_types_are_rejected() {
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"dance"}"#).is_err());
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"leave","extra":1}"#).is_err());
    }

    #[test]
    fn server_messages_serialize_snake_case() {
        let json = serde_json::to_value(ServerMessage::Error {
            code: ErrorCode::TokenExpired,
            message: "expired".into(),
        })
        .unwrap();
        assert_eq!(json["type"], "error");
        assert_eq!(json["code"], "token_expired");
    }

    #[test]
    fn roles_parse_from_cli_strings() {
        assert_eq!("viewer".parse::<Role>(), Ok(Role::Viewer));
        assert!("emperor".parse::<Role>().is_err());
        assert!(!Role::Viewer.may_publish());
        assert!(Role::Host.may_publish());
    }
}
