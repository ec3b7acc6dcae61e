//! The collaboration envelope on a WebSocket: who the socket acts as (from its join token)
//! and the answers to `collab_*` messages. The work is done by `ting-collab`.

use ting_collab::{Access, Actor, CollabError, CollabSession};
use ting_protocol::collab::{Channel, CollabErrorCode, ObjectName};
use ting_protocol::{ClientMessage, ErrorCode, ParticipantId, Role, ServerMessage};

use crate::hub::HubError;
use crate::token::Claims;

/// What a token lets its holder do with the room's collab objects.
pub fn actor(claims: &Claims) -> Result<Actor, HubError> {
    actor_with_role(claims, claims.role)
}

/// As [`actor`], for a participant whose role in the meeting is now `role`.
pub fn actor_with_role(claims: &Claims, role: Role) -> Result<Actor, HubError> {
    let access = match &claims.collab {
        Some(grants) => Access::from_grants(grants)
            .map_err(|e| HubError::new(ErrorCode::InvalidToken, format!("collab grant: {e}")))?,
        None if role == Role::Viewer => Access::read_all_write(&[Channel::Chat]),
        None => Access::full(),
    };
    Ok(Actor {
        room: claims.room.to_string(),
        identity: claims.sub.clone(),
        name: claims.name.clone(),
        moderator: role.moderates(),
        access,
    })
}

fn error(
    channel: Channel,
    object: ObjectName,
    op_id: Option<String>,
    e: CollabError,
) -> ServerMessage {
    ServerMessage::CollabError {
        channel,
        object,
        op_id,
        code: e.code,
        message: e.message,
    }
}

/// The answer to a collab message when the server has no collab service.
pub fn disabled(message: &ClientMessage) -> Option<ServerMessage> {
    let (channel, object, op_id) = match message {
        ClientMessage::CollabSubscribe {
            channel, object, ..
        }
        | ClientMessage::CollabUnsubscribe { channel, object } => (*channel, object.clone(), None),
        ClientMessage::Collab {
            channel,
            object,
            op_id,
            ..
        } => (*channel, object.clone(), op_id.clone()),
        ClientMessage::CollabQuery {
            channel,
            object,
            op_id,
            ..
        } => (*channel, object.clone(), Some(op_id.clone())),
        _ => return None,
    };
    Some(error(
        channel,
        object,
        op_id,
        CollabError::new(
            CollabErrorCode::Unavailable,
            "collaboration is not enabled on this server (a cluster needs --database-url)",
        ),
    ))
}

/// The refusal for a collab message from somebody who may not use the room's objects now.
pub fn refused(message: &ClientMessage, why: &str) -> Option<ServerMessage> {
    let mut reply = disabled(message)?;
    if let ServerMessage::CollabError { code, message, .. } = &mut reply {
        *code = CollabErrorCode::NotAllowed;
        *message = why.to_owned();
    }
    Some(reply)
}

/// Handles one collab message; returns what to send back (events go through the session's
/// collab outbox). `None`: not a collab message.
pub async fn handle(
    session: &CollabSession,
    message: ClientMessage,
) -> Option<Option<ServerMessage>> {
    let reply = match message {
        ClientMessage::CollabSubscribe {
            channel,
            object,
            since,
        } => match session.subscribe(channel, &object, since).await {
            Ok(()) => None,
            Err(e) => Some(error(channel, object, None, e)),
        },
        ClientMessage::CollabUnsubscribe { channel, object } => {
            session.unsubscribe(channel, &object);
            None
        }
        ClientMessage::Collab {
            channel,
            object,
            op_id,
            volatile: true,
            body,
        } => session
            .volatile(channel, &object, body)
            .err()
            .map(|e| error(channel, object, op_id, e)),
        ClientMessage::Collab {
            channel,
            object,
            op_id,
            volatile: false,
            body,
        } => match session
            .write(channel, &object, op_id.as_deref(), body)
            .await
        {
            Ok((seq, duplicate)) => op_id.map(|op_id| ServerMessage::CollabAck {
                channel,
                object,
                op_id,
                seq,
                duplicate,
            }),
            Err(e) => Some(error(channel, object, op_id, e)),
        },
        ClientMessage::CollabQuery {
            channel,
            object,
            op_id,
            body,
        } => Some(match session.query(channel, &object, body).await {
            Ok(body) => ServerMessage::CollabResult {
                channel,
                object,
                op_id,
                body,
            },
            Err(e) => error(channel, object, Some(op_id), e),
        }),
        _ => return None,
    };
    Some(reply)
}

pub fn is_collab(message: &ClientMessage) -> bool {
    matches!(
        message,
        ClientMessage::CollabSubscribe { .. }
            | ClientMessage::CollabUnsubscribe { .. }
            | ClientMessage::Collab { .. }
            | ClientMessage::CollabQuery { .. }
    )
}

/// The audit log entry of a moderator action (recorded once it succeeded); `who` names a
/// participant by identity.
pub fn moderation_audit(
    message: &ClientMessage,
    who: impl Fn(ParticipantId) -> Option<String>,
) -> Option<(&'static str, String)> {
    let name = |id: &ParticipantId| who(*id).unwrap_or_else(|| format!("participant {id}"));
    Some(match message {
        ClientMessage::SetRole {
            participant_id,
            role,
        } => (
            "role changed",
            format!("{} to {role:?}", name(participant_id)),
        ),
        ClientMessage::MuteParticipant {
            participant_id,
            kind,
            muted,
        } => (
            if *muted {
                "participant muted"
            } else {
                "unmute allowed"
            },
            format!("{} {kind:?}", name(participant_id)),
        ),
        ClientMessage::MuteAll { kind } => ("everyone muted", format!("{kind:?}")),
        ClientMessage::RemoveParticipant { participant_id } => {
            ("participant removed", name(participant_id))
        }
        ClientMessage::UpdateRoom {
            locked,
            lobby,
            allow_self_unmute,
        } => (
            "room settings changed",
            format!("locked {locked:?}, lobby {lobby:?}, self-unmute {allow_self_unmute:?}"),
        ),
        ClientMessage::SetRecording { active } => (
            if *active {
                "recording started"
            } else {
                "recording stopped"
            },
            String::new(),
        ),
        ClientMessage::Admit { participant_id } => ("admitted", name(participant_id)),
        ClientMessage::Deny { participant_id } => ("denied", name(participant_id)),
        _ => return None,
    })
}
