//! One participant's WebSocket: waits for `join`, then relays client messages to the hub and
//! the participant's outbox to the socket. Written against `Stream`/`Sink` of axum messages.

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use ting_protocol::{
    ClientMessage, ErrorCode, LeaveReason, MAX_MESSAGE_BYTES, PROTOCOL_VERSION, ParticipantId,
    ServerMessage,
};
use tokio::sync::mpsc;
use tracing::{Instrument, debug, info_span};

use ting_collab::CollabSession;

use crate::cluster::websocket_url;
use crate::collab_ws;
use crate::hub::{Hub, HubError};
use crate::rooms::OUTBOX_CAPACITY;
use crate::token::Claims;

/// Close codes (4000–4999 are for applications).
const CLOSE_PROTOCOL: u16 = 4000;
const CLOSE_TOKEN: u16 = 4001;

type WsError = axum::Error;

/// Runs a socket to its end.
pub async fn run<S>(hub: Hub, socket: S)
where
    S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin + Send,
{
    let (sink, stream) = socket.split();
    let mut conn = Connection {
        hub: hub.clone(),
        sink,
        stream,
    };
    let joined = tokio::select! {
        joined = tokio::time::timeout(hub.config().join_timeout, conn.await_join()) => joined,
        _ = hub.shutdown_token().cancelled() => {
            conn.send(&ServerMessage::Bye { reason: LeaveReason::ServerShutdown }).await;
            conn.close(1001, "server shutting down").await;
            return;
        }
    };
    let (participant, generation, outbox, claims) = match joined {
        Ok(Some(Attached::Meeting {
            participant,
            generation,
            outbox,
            claims,
        })) => (participant, generation, outbox, claims),
        Ok(Some(Attached::CollabOnly(claims))) => {
            let span = info_span!("collab_session", room = %claims.room);
            conn.serve_collab_only(claims).instrument(span).await;
            return;
        }
        _ => {
            conn.close(CLOSE_PROTOCOL, "no join").await;
            return;
        }
    };
    let room = hub
        .room_of(participant)
        .map(|r| r.to_string())
        .unwrap_or_default();
    let span = info_span!("session", %room, participant = %participant);
    conn.serve(participant, generation, outbox, &claims)
        .instrument(span)
        .await;
}

/// What a socket became after its first message.
enum Attached {
    Meeting {
        participant: ParticipantId,
        generation: u64,
        outbox: mpsc::Receiver<ServerMessage>,
        claims: Claims,
    },
    CollabOnly(Claims),
}

/// Queued collab events per socket before it counts as lagging.
const COLLAB_OUTBOX: usize = 1024;

/// A socket's collab side: its session and the receiving end of its event queue.
fn collab_session(
    hub: &Hub,
    claims: &Claims,
) -> Option<(CollabSession, mpsc::Receiver<ServerMessage>)> {
    let collab = hub.collab()?;
    let actor = collab_ws::actor(claims).ok()?;
    let (tx, rx) = mpsc::channel(COLLAB_OUTBOX);
    Some((collab.session(actor, tx), rx))
}

struct Connection<Tx, Rx> {
    hub: Hub,
    sink: Tx,
    stream: Rx,
}

enum Incoming {
    Message(ClientMessage),
    Invalid(HubError),
    Gone,
}

impl<Tx, Rx> Connection<Tx, Rx>
where
    Tx: Sink<Message, Error = WsError> + Unpin,
    Rx: Stream<Item = Result<Message, WsError>> + Unpin,
{
    async fn send(&mut self, message: &ServerMessage) -> bool {
        if let ServerMessage::Error { code, .. } = message {
            let code = serde_json::to_value(code).ok();
            let code = code.as_ref().and_then(|c| c.as_str()).unwrap_or("unknown");
            self.hub.metrics().errors.with_label_values(&[code]).inc();
        }
        self.hub
            .metrics()
            .messages
            .with_label_values(&["out"])
            .inc();
        match serde_json::to_string(message) {
            Ok(json) => self.sink.send(Message::Text(json.into())).await.is_ok(),
            Err(_) => false,
        }
    }

    async fn send_error(&mut self, error: HubError) -> bool {
        debug!(code = ?error.code, "client error: {}", error.message);
        self.send(&ServerMessage::Error {
            code: error.code,
            message: error.message,
        })
        .await
    }

    async fn close(&mut self, code: u16, reason: &'static str) {
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        };
        let _ = self.sink.send(Message::Close(Some(frame))).await;
    }

    async fn next(&mut self) -> Incoming {
        loop {
            let message = match self.stream.next().await {
                None | Some(Err(_)) => return Incoming::Gone,
                Some(Ok(m)) => m,
            };
            self.hub.metrics().messages.with_label_values(&["in"]).inc();
            return match message {
                Message::Text(text) => match parse(&text) {
                    Ok(m) => Incoming::Message(m),
                    Err(e) => Incoming::Invalid(e),
                },
                Message::Binary(_) => Incoming::Invalid(HubError::new(
                    ErrorCode::BadMessage,
                    "binary frames are not part of the protocol; send JSON text",
                )),
                Message::Close(_) => Incoming::Gone,
                Message::Ping(_) | Message::Pong(_) => continue,
            };
        }
    }

    /// Waits for a valid `join`; other messages get `not_joined`. Token problems end the socket.
    async fn await_join(&mut self) -> Option<Attached> {
        loop {
            let (version, token, room, resume) = match self.next().await {
                Incoming::Gone => return None,
                Incoming::Invalid(e) => {
                    self.send_error(e).await;
                    continue;
                }
                Incoming::Message(ClientMessage::CollabJoin { version, token }) => {
                    return self.collab_join(version, &token).await;
                }
                Incoming::Message(ClientMessage::Join {
                    version,
                    token,
                    room,
                    resume,
                }) => (version, token, room, resume),
                Incoming::Message(_) => {
                    self.send_error(HubError::new(ErrorCode::NotJoined, "send join first"))
                        .await;
                    continue;
                }
            };
            if version != PROTOCOL_VERSION {
                let message = format!("this server speaks protocol version {PROTOCOL_VERSION}");
                self.send_error(HubError::new(ErrorCode::UnsupportedVersion, message))
                    .await;
                self.close(CLOSE_PROTOCOL, "unsupported version").await;
                return None;
            }
            let claims = match self.hub.keys().verify(&token, room.as_ref()) {
                Ok(claims) => claims,
                Err(e) => {
                    self.send_error(HubError::new(e.code(), e.to_string()))
                        .await;
                    self.close(CLOSE_TOKEN, "token rejected").await;
                    return None;
                }
            };
            // A new participant may belong on another node of the cluster; a resume stays.
            if resume.is_none()
                && let Some(node) = self.hub.placed_elsewhere(&claims.room).await
            {
                let url = websocket_url(&node);
                self.send(&ServerMessage::Moved { url }).await;
                self.close(1000, "moved").await;
                return None;
            }
            let (outbox, outbox_rx) = mpsc::channel(OUTBOX_CAPACITY);
            let attached = match resume {
                Some(resume) => self.hub.resume(&resume, &claims, outbox),
                None => self.hub.join(&claims, false, Some(outbox)).await,
            };
            match attached {
                Ok((participant, generation)) => {
                    return Some(Attached::Meeting {
                        participant,
                        generation,
                        outbox: outbox_rx,
                        claims,
                    });
                }
                Err(e) => {
                    self.send_error(e).await;
                    self.close(CLOSE_PROTOCOL, "join failed").await;
                    return None;
                }
            }
        }
    }

    /// `collab_join`: checks version and token; the socket then serves collab only.
    async fn collab_join(&mut self, version: u32, token: &str) -> Option<Attached> {
        if version != PROTOCOL_VERSION {
            let message = format!("this server speaks protocol version {PROTOCOL_VERSION}");
            self.send_error(HubError::new(ErrorCode::UnsupportedVersion, message))
                .await;
            self.close(CLOSE_PROTOCOL, "unsupported version").await;
            return None;
        }
        let claims = self
            .hub
            .keys()
            .verify(token, None)
            .map_err(|e| HubError::new(e.code(), e.to_string()))
            .and_then(|claims| {
                if claims.file.is_some() {
                    return Err(HubError::new(
                        ErrorCode::NotAllowed,
                        "a file download link cannot open a session",
                    ));
                }
                if self.hub.is_banned(&claims.room, &claims.sub) {
                    return Err(HubError::new(
                        ErrorCode::NotAllowed,
                        "a moderator removed you from this room",
                    ));
                }
                collab_ws::actor(&claims).map(|_| claims)
            });
        match claims {
            Ok(claims) => Some(Attached::CollabOnly(claims)),
            Err(e) => {
                self.send_error(e).await;
                self.close(CLOSE_TOKEN, "token rejected").await;
                None
            }
        }
    }

    /// A collab-only socket: collab messages and pings until it closes.
    async fn serve_collab_only(&mut self, claims: Claims) {
        let Some((collab, mut events)) = collab_session(&self.hub, &claims) else {
            self.send_error(HubError::new(
                ErrorCode::Unavailable,
                "collaboration is not enabled on this server",
            ))
            .await;
            self.close(CLOSE_PROTOCOL, "no collab").await;
            return;
        };
        let joined = ServerMessage::CollabJoined {
            room: claims.room.clone(),
            identity: claims.sub.clone(),
            name: claims.name.clone(),
            moderator: claims.role.moderates(),
        };
        if !self.send(&joined).await {
            return;
        }
        let lagged = collab.lagged().clone();
        let shutdown = self.hub.shutdown_token().clone();
        loop {
            tokio::select! {
                Some(event) = events.recv() => {
                    if !self.send(&event).await {
                        return;
                    }
                }
                _ = lagged.cancelled() => {
                    self.close(CLOSE_PROTOCOL, "too slow").await;
                    return;
                }
                _ = shutdown.cancelled() => {
                    // The client reconnects (to another node, in a cluster) and catches up.
                    self.send(&ServerMessage::Bye { reason: LeaveReason::ServerShutdown }).await;
                    self.close(1001, "server shutting down").await;
                    return;
                }
                incoming = self.next() => match incoming {
                    Incoming::Gone => return,
                    Incoming::Invalid(e) => {
                        self.send_error(e).await;
                    }
                    Incoming::Message(ClientMessage::Ping { nonce }) => {
                        self.send(&ServerMessage::Pong { nonce }).await;
                    }
                    Incoming::Message(ClientMessage::Leave {}) => {
                        self.close(1000, "bye").await;
                        return;
                    }
                    Incoming::Message(message) if self.hub.is_banned(&claims.room, &claims.sub) => {
                        if let Some(reply) = collab_ws::refused(&message, "a moderator removed you from this room") {
                            self.send(&reply).await;
                        }
                    }
                    Incoming::Message(message) => {
                        match collab_ws::handle(&collab, message).await {
                            Some(Some(reply)) => {
                                self.send(&reply).await;
                            }
                            Some(None) => {}
                            None => {
                                self.send_error(HubError::new(
                                    ErrorCode::NotAllowed,
                                    "this socket joined for collaboration only",
                                ))
                                .await;
                            }
                        }
                    }
                },
            }
        }
    }

    async fn serve(
        &mut self,
        participant: ParticipantId,
        generation: u64,
        mut outbox: mpsc::Receiver<ServerMessage>,
        claims: &Claims,
    ) {
        let (collab, mut collab_events) = match collab_session(&self.hub, claims) {
            Some((session, events)) => (Some(session), Some(events)),
            None => (None, None),
        };
        let lagged = collab
            .as_ref()
            .map(|c| c.lagged().clone())
            .unwrap_or_default();
        loop {
            tokio::select! {
                Some(event) = async { match collab_events.as_mut() {
                    Some(events) => events.recv().await,
                    None => std::future::pending().await,
                } } => {
                    if !self.send(&event).await {
                        self.hub.socket_lost(participant, generation);
                        return;
                    }
                }
                _ = lagged.cancelled() => {
                    // A stored collab event could not be queued: the client reconnects (and
                    // resumes) and catches up by sequence.
                    self.close(CLOSE_PROTOCOL, "too slow").await;
                    self.hub.socket_lost(participant, generation);
                    return;
                }
                out = outbox.recv() => {
                    let Some(message) = out else {
                        // The hub dropped our outbox: this client fell too far behind.
                        self.close(CLOSE_PROTOCOL, "too slow").await;
                        self.hub.socket_lost(participant, generation);
                        return;
                    };
                    let bye = matches!(message, ServerMessage::Bye { .. });
                    let delivered = self.send(&message).await;
                    if bye {
                        // The participant has left or moved to a newer socket: nothing to keep.
                        self.close(1000, "bye").await;
                        return;
                    }
                    if !delivered {
                        self.hub.socket_lost(participant, generation);
                        return;
                    }
                }
                incoming = self.next() => match incoming {
                    Incoming::Gone => {
                        self.hub.socket_lost(participant, generation);
                        return;
                    }
                    Incoming::Invalid(e) => {
                        self.send_error(e).await;
                    }
                    Incoming::Message(message) if collab_ws::is_collab(&message) => {
                        let reply = match &collab {
                            // Waiting in the lobby: nothing of the room yet.
                            Some(_) if self.hub.in_lobby(participant) => collab_ws::refused(
                                &message,
                                "wait until a moderator admits you",
                            ),
                            Some(session) => {
                                // Rights follow the participant's role now, not the token's.
                                if let Some(role) = self.hub.role_of(participant)
                                    && let Ok(actor) = collab_ws::actor_with_role(claims, role)
                                {
                                    session.set_actor(actor);
                                }
                                collab_ws::handle(session, message).await.flatten()
                            }
                            None => collab_ws::disabled(&message),
                        };
                        if let Some(reply) = reply {
                            self.send(&reply).await;
                        }
                    }
                    Incoming::Message(message) => {
                        let audit = collab_ws::moderation_audit(&message, |id| self.hub.who(id));
                        match self.handle(participant, message).await {
                            Ok(()) => {
                                if let (Some((action, detail)), Some(collab)) = (audit, self.hub.collab()) {
                                    let (collab, room, actor) = (collab.clone(), claims.room.to_string(), claims.sub.clone());
                                    tokio::spawn(async move { collab.audit(&room, &actor, action, &detail).await });
                                }
                            }
                            Err(e) => {
                                self.send_error(e).await;
                            }
                        }
                    }
                },
            }
        }
    }

    async fn handle(
        &mut self,
        participant: ParticipantId,
        message: ClientMessage,
    ) -> Result<(), HubError> {
        match message {
            ClientMessage::Join { .. } => Err(HubError::new(
                ErrorCode::AlreadyJoined,
                "this socket has already joined",
            )),
            ClientMessage::Offer { sdp, tracks } => {
                let answer = self.hub.offer(participant, sdp, tracks).await?;
                self.send(&answer).await;
                Ok(())
            }
            ClientMessage::Candidate { candidate, .. } => {
                self.hub.add_candidate(participant, candidate).await
            }
            ClientMessage::Subscribe {
                subscriptions,
                audio_slots,
            } => {
                if let Some(mids) = audio_slots {
                    self.hub.set_audio_slots(participant, mids).await?;
                }
                self.hub.subscribe(participant, subscriptions).await
            }
            ClientMessage::Mute { track_id, muted } => self.hub.mute(participant, track_id, muted),
            ClientMessage::Leave {} => {
                // `bye` arrives through the outbox and ends the loop.
                self.hub.leave(participant, LeaveReason::Left);
                Ok(())
            }
            ClientMessage::Ping { nonce } => {
                self.send(&ServerMessage::Pong { nonce }).await;
                Ok(())
            }
            ClientMessage::RosterPage {
                offset,
                limit,
                query,
                viewers,
            } => {
                let page = self
                    .hub
                    .roster_page(participant, offset, limit, query, viewers)?;
                self.send(&page).await;
                Ok(())
            }
            ClientMessage::RaiseHand { raised } => self.hub.raise_hand(participant, raised),
            ClientMessage::SetRole {
                participant_id,
                role,
            } => self.hub.set_role(participant, participant_id, role),
            ClientMessage::MuteParticipant {
                participant_id,
                kind,
                muted,
            } => self
                .hub
                .mute_participant(participant, participant_id, kind, muted),
            ClientMessage::MuteAll { kind } => self.hub.mute_all(participant, kind),
            ClientMessage::RemoveParticipant { participant_id } => {
                self.hub.remove_participant(participant, participant_id)
            }
            ClientMessage::UpdateRoom {
                locked,
                lobby,
                allow_self_unmute,
            } => self
                .hub
                .update_room(participant, locked, lobby, allow_self_unmute),
            ClientMessage::SetRecording { active } => self.hub.set_recording(participant, active),
            ClientMessage::Admit { participant_id } => self.hub.admit(participant, participant_id),
            ClientMessage::Deny { participant_id } => self.hub.deny(participant, participant_id),
            ClientMessage::CollabJoin { .. } => Err(HubError::new(
                ErrorCode::AlreadyJoined,
                "this socket has already joined",
            )),
            // Routed before `handle`.
            ClientMessage::CollabSubscribe { .. }
            | ClientMessage::CollabUnsubscribe { .. }
            | ClientMessage::Collab { .. }
            | ClientMessage::CollabQuery { .. } => Ok(()),
        }
    }
}

/// Parses a text frame, telling apart too large, not JSON, unknown type and wrong fields.
fn parse(text: &str) -> Result<ClientMessage, HubError> {
    if text.len() > MAX_MESSAGE_BYTES {
        return Err(HubError::new(
            ErrorCode::MessageTooLarge,
            format!("messages are limited to {MAX_MESSAGE_BYTES} bytes"),
        ));
    }
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| HubError::new(ErrorCode::BadMessage, format!("not valid JSON: {e}")))?;
    let Some(kind) = value
        .get("type")
        .and_then(|t| t.as_str())
        .map(str::to_owned)
    else {
        return Err(HubError::new(
            ErrorCode::BadMessage,
            "a message is an object with a \"type\"",
        ));
    };
    serde_json::from_value(value).map_err(|e| {
        // serde names an unknown `type` tag "unknown variant"; anything else is a known
        // message with wrong fields.
        if e.to_string().starts_with("unknown variant") {
            HubError::new(
                ErrorCode::UnknownMessage,
                format!("unknown message type \"{kind}\""),
            )
        } else {
            HubError::new(
                ErrorCode::BadMessage,
                format!("invalid {kind} message: {e}"),
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_tells_error_kinds_apart() {
        let code = |t: &str| parse(t).err().map(|e| e.code);
        assert_eq!(code("{"), Some(ErrorCode::BadMessage));
        assert_eq!(code("[1,2]"), Some(ErrorCode::BadMessage));
        assert_eq!(
            code(r#"{"type":"teleport"}"#),
            Some(ErrorCode::UnknownMessage)
        );
        assert_eq!(
            code(r#"{"type":"mute","track_id":"x"}"#),
            Some(ErrorCode::BadMessage)
        );
        assert_eq!(
            code(&"x".repeat(MAX_MESSAGE_BYTES + 1)),
            Some(ErrorCode::MessageTooLarge)
        );
        assert_eq!(code(r#"{"type":"ping","nonce":3}"#), None);
    }
}
