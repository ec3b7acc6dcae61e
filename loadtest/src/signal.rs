//! The signalling client: one WebSocket to `/ws` speaking protocol v1, as the web client does.

use std::net::IpAddr;

use anyhow::{Context, bail};
use serde::Deserialize;
use ting_protocol::{ClientMessage, ParticipantId, ParticipantInfo, TrackId, TrackInfo};

use crate::ws::{self, JsonSocket};

/// Where the server is: its WebSocket URL and, for candidate filtering, its address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUrl {
    /// `http://host:port` as given, without a trailing slash.
    pub http: String,
    /// `ws://host:port/ws`.
    pub ws: String,
    /// The host part, if it is an IP address.
    pub ip: Option<IpAddr>,
}

impl ServerUrl {
    /// Accepts `http://host[:port][/]`; `https` needs TLS, which the load tester does not speak.
    pub fn parse(server: &str) -> anyhow::Result<Self> {
        let trimmed = server.trim().trim_end_matches('/');
        let Some(rest) = trimmed.strip_prefix("http://") else {
            bail!(
                "the server URL must start with http:// (got {server:?}); run the load tester next to the server, not through a TLS proxy"
            );
        };
        if rest.is_empty() || rest.contains('/') || rest.contains('@') {
            bail!("the server URL must be http://HOST[:PORT] (got {server:?})");
        }
        let (host, port) = match rest.strip_prefix('[') {
            // [v6]:port or [v6]
            Some(v6) => match v6.split_once(']') {
                Some((host, tail)) => (host, tail.strip_prefix(':')),
                None => bail!("unclosed '[' in server URL {server:?}"),
            },
            None => match rest.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (rest, None),
            },
        };
        if let Some(port) = port {
            port.parse::<u16>()
                .with_context(|| format!("bad port in server URL {server:?}"))?;
        }
        let ip = host.parse::<IpAddr>().ok();
        Ok(Self {
            http: format!("http://{rest}"),
            ws: format!("ws://{rest}/ws"),
            ip,
        })
    }
}

/// The server messages a simulated participant acts on, read leniently with the protocol's
/// wire types: message types and fields it does not know are ignored (as protocol section
/// "Versioning" asks of clients), error codes and reasons are kept as text, and the roster
/// arrives either as per-event messages or as batched `roster_changed`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerEvent {
    Joined {
        participant: ParticipantInfo,
        /// Everybody else (or the first page of them, publishers first).
        participants: Vec<ParticipantInfo>,
        /// Everyone in the room, when the server says.
        #[serde(default)]
        participant_count: u32,
    },
    /// In the lobby until a moderator admits us.
    Waiting {},
    /// Cluster mode: join on this node instead.
    Moved {
        url: String,
    },
    ParticipantJoined {
        participant: ParticipantInfo,
    },
    ParticipantUpdated {
        participant: ParticipantInfo,
    },
    ParticipantLeft {
        participant_id: ParticipantId,
    },
    RosterChanged {
        #[serde(default)]
        joined: Vec<ParticipantInfo>,
        #[serde(default)]
        left: Vec<Departed>,
        #[serde(default)]
        updated: Vec<ParticipantInfo>,
    },
    RosterPage {
        participants: Vec<ParticipantInfo>,
        #[serde(default)]
        total: u32,
        #[serde(default)]
        offset: u32,
    },
    TrackPublished {
        track: TrackInfo,
    },
    TrackUnpublished {
        track_id: TrackId,
    },
    TrackUpdated {
        track: TrackInfo,
    },
    Answer {
        sdp: String,
        /// The ids given to the client's own m-lines.
        #[serde(default)]
        tracks: Vec<TrackInfo>,
    },
    /// To a publisher: send only these simulcast layers of that track.
    PublishLayers {
        track_id: TrackId,
        active: Vec<String>,
    },
    Error {
        code: String,
        #[serde(default)]
        message: String,
    },
    Pong {
        nonce: u64,
    },
    Bye {
        reason: String,
    },
    #[serde(other)]
    Other,
}

/// Somebody who left (in `roster_changed`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Departed {
    pub participant_id: ParticipantId,
}

/// What the socket delivered.
pub type Incoming = ws::Incoming<ServerEvent>;

/// One participant's signalling socket.
pub struct SignalClient {
    socket: JsonSocket<ServerEvent>,
}

impl SignalClient {
    /// Connects; needs a tokio runtime (the socket's reader is a task on it).
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        Ok(Self {
            socket: JsonSocket::connect(url, url).await?,
        })
    }

    pub async fn send(&mut self, message: &ClientMessage) -> anyhow::Result<()> {
        self.send_json(&serde_json::to_value(message)?).await
    }

    /// Sends a message given as JSON (for messages newer than the wire types in use).
    pub async fn send_json(&mut self, message: &serde_json::Value) -> anyhow::Result<()> {
        self.socket.send_json(message).await
    }

    /// The next message, `Unreadable` text or `Closed`; a failed socket is an error.
    pub async fn recv(&mut self) -> anyhow::Result<Incoming> {
        match self.socket.recv().await {
            Incoming::Failed(e) => Err(anyhow::anyhow!("WebSocket receive: {e}")),
            incoming => Ok(incoming),
        }
    }

    /// Closes the socket politely; errors do not matter any more.
    pub async fn close(&mut self) {
        self.socket.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_become_websocket_urls() {
        let u = ServerUrl::parse("http://127.0.0.1:8080/").unwrap();
        assert_eq!(u.ws, "ws://127.0.0.1:8080/ws");
        assert_eq!(u.http, "http://127.0.0.1:8080");
        assert_eq!(u.ip, Some(IpAddr::from([127, 0, 0, 1])));
        let u = ServerUrl::parse("http://localhost").unwrap();
        assert_eq!(u.ws, "ws://localhost/ws");
        assert_eq!(u.ip, None);
        let u = ServerUrl::parse("http://[::1]:8080").unwrap();
        assert_eq!(u.ip, Some("::1".parse().unwrap()));
        assert!(ServerUrl::parse("https://example.org").is_err());
        assert!(ServerUrl::parse("http://host:port").is_err());
        assert!(ServerUrl::parse("http://host/path").is_err());
    }

    #[test]
    fn server_messages_are_read_leniently() {
        let read = |s: &str| serde_json::from_str::<ServerEvent>(s).unwrap();
        assert_eq!(read(r#"{"type":"dance","x":1}"#), ServerEvent::Other);
        assert_eq!(
            read(r#"{"type":"error","code":"brand_new_code","message":"m"}"#),
            ServerEvent::Error {
                code: "brand_new_code".into(),
                message: "m".into()
            }
        );
        assert_eq!(
            read(r#"{"type":"bye","reason":"removed"}"#),
            ServerEvent::Bye {
                reason: "removed".into()
            }
        );
        let person = r#"{"id":3,"identity":"c","name":"C","role":"attendee","tracks":[],"new":1}"#;
        let batch = format!(
            r#"{{"type":"roster_changed","joined":[{person}],"left":[{{"participant_id":2,"reason":"left"}}],"updated":[],"count":9}}"#
        );
        match read(&batch) {
            ServerEvent::RosterChanged { joined, left, .. } => {
                assert_eq!(joined[0].id, ParticipantId(3));
                assert_eq!(left[0].participant_id, ParticipantId(2));
            }
            other => panic!("{other:?}"),
        }
        let joined = format!(
            r#"{{"type":"joined","version":1,"room":"r","participant":{person},"resumed":false,"resume_token":"x","resume_grace_secs":30,"participants":[],"active_speaker":null}}"#
        );
        assert!(matches!(
            read(&joined),
            ServerEvent::Joined {
                participant_count: 0,
                ..
            }
        ));
        assert!(matches!(
            read(r#"{"type":"waiting","room":"r"}"#),
            ServerEvent::Waiting {}
        ));
    }
}
