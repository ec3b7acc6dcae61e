//! A real `ting serve` in-process on loopback ports chosen by the OS, and a WebSocket client.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

pub mod load;
pub mod peer;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use ting::config::ServeConfig;
use ting_protocol::{
    ClientMessage, Departure, LeaveReason, ParticipantId, ParticipantInfo, Role, RoomId,
    ServerMessage,
};
use ting_signalling::TokenKeys;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const SECRET: &str = "test-secret-0123456789";

/// The Redis of the cluster tests (the test command starts one if none runs).
pub fn redis_url() -> String {
    std::env::var("TING_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A cluster node's configuration for the tests: keys under `prefix`, any free relay port.
pub fn cluster_node(prefix: &str, id: &str, capacity: u32) -> ting::config::ClusterConfig {
    ting::config::ClusterConfig {
        redis_url: redis_url(),
        key_prefix: prefix.into(),
        node_id: ting_protocol::NodeId::new(id).unwrap(),
        region: "eu-test".into(),
        capacity,
        relay_port: 0,
    }
}

pub struct TestServer {
    pub http: SocketAddr,
    pub media: SocketAddr,
    pub tcp_media: SocketAddr,
    /// Every shard's UDP address, by shard index.
    pub shard_media: Vec<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    dir: Option<TempDir>,
}

pub struct TempDir(pub PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn temp_dir(tag: &str) -> TempDir {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "ting-test-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}

impl TestServer {
    pub async fn start(resume_grace: Duration) -> Self {
        Self::start_with_shards(resume_grace, 1).await
    }

    /// A server with `shards` media shards (rooms spread over them).
    pub async fn start_with_shards(resume_grace: Duration, shards: usize) -> Self {
        Self::start_configured(resume_grace, shards, None).await
    }

    /// A node of a cluster joined through Redis.
    pub async fn start_in_cluster(cluster: ting::config::ClusterConfig) -> Self {
        Self::start_configured(Duration::from_secs(5), 1, Some(cluster)).await
    }

    async fn start_configured(
        resume_grace: Duration,
        shards: usize,
        cluster: Option<ting::config::ClusterConfig>,
    ) -> Self {
        Self::start_full(
            resume_grace,
            shards,
            cluster,
            None,
            temp_dir("server"),
            false,
        )
        .await
    }

    /// A server with the collaboration add-ons on `database_url` (SQLite in `dir` when
    /// `None`), keeping its data in `dir`.
    pub async fn start_with_collab(database_url: Option<String>, dir: TempDir) -> Self {
        let url =
            database_url.unwrap_or_else(|| format!("sqlite://{}", dir.0.join("ting.db").display()));
        let settings = ting::config::CollabSettings {
            database_url: url,
            blobs: ting_collab::BlobConfig::Local(dir.0.join("files")),
            limits: ting_collab::FileLimits {
                max_file_bytes: 4 << 20,
                room_quota_bytes: 5 << 20,
                ..ting_collab::FileLimits::default()
            },
        };
        Self::start_full(Duration::from_secs(5), 1, None, Some(settings), dir, false).await
    }

    /// A server with these collaboration settings, keeping its data in `dir`.
    pub async fn start_with_collab_settings(
        settings: ting::config::CollabSettings,
        dir: TempDir,
    ) -> Self {
        Self::start_full(Duration::from_secs(5), 1, None, Some(settings), dir, false).await
    }

    /// A cluster node with the collaboration add-ons on a shared database.
    pub async fn start_cluster_with_collab(
        cluster: ting::config::ClusterConfig,
        database_url: String,
    ) -> Self {
        let dir = temp_dir("cluster-collab");
        let settings = ting::config::CollabSettings {
            database_url,
            blobs: ting_collab::BlobConfig::Local(dir.0.join("files")),
            limits: ting_collab::FileLimits::default(),
        };
        Self::start_full(
            Duration::from_secs(5),
            1,
            Some(cluster),
            Some(settings),
            dir,
            false,
        )
        .await
    }

    /// A server that records every meeting from its first publisher on, keeping its data in
    /// `dir`.
    pub async fn start_auto_recording(dir: TempDir) -> Self {
        Self::start_full(Duration::from_secs(5), 1, None, None, dir, true).await
    }

    async fn start_full(
        resume_grace: Duration,
        shards: usize,
        cluster: Option<ting::config::ClusterConfig>,
        collab: Option<ting::config::CollabSettings>,
        dir: TempDir,
        auto_record: bool,
    ) -> Self {
        let config = ServeConfig {
            roles: ting::config::Roles::ALL,
            data_dir: dir.0.clone(),
            token_secret: SECRET.as_bytes().to_vec(),
            http_port: 0,
            udp_port: 0,
            tcp_port: Some(0),
            bind: IpAddr::from([127, 0, 0, 1]),
            public_ips: vec![],
            quick_start: true,
            resume_grace,
            loudest_n: 3,
            max_subscriptions: ting_sfu::DEFAULT_MAX_SUBSCRIPTIONS,
            shards,
            cluster,
            collab,
            auto_record,
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let running = ting::server::start(config, async move {
            let _ = stopped.await;
        })
        .await
        .unwrap();
        assert_eq!(
            running.media_addrs.len(),
            shards,
            "one UDP socket per shard"
        );
        Self {
            http: running.http_addr,
            media: running.media_addrs[0],
            tcp_media: running.tcp_media_addrs[0],
            shard_media: running.media_addrs.clone(),
            stop: Some(stop),
            task: running.task,
            dir: Some(dir),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    pub fn token(&self, room: &str, identity: &str, role: Role) -> String {
        keys()
            .mint(
                RoomId::new(room).unwrap(),
                identity,
                identity,
                role,
                Duration::from_secs(600),
            )
            .unwrap()
    }

    /// Triggers graceful shutdown and waits for the server to finish.
    pub async fn shutdown(self) {
        self.stop_keeping_data().await;
    }

    /// Stops the server and hands back its data directory (for a restart on the same data).
    pub async fn stop_keeping_data(mut self) -> TempDir {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .expect("server stops within 10 s")
            .unwrap()
            .unwrap();
        self.dir.take().expect("a server has its data directory")
    }
}

pub fn keys() -> TokenKeys {
    TokenKeys::new(SECRET.as_bytes()).unwrap()
}

pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    pub async fn connect(server: &TestServer) -> Self {
        Self::connect_url(&format!("ws://{}/ws", server.http)).await
    }

    pub async fn connect_url(url: &str) -> Self {
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        Self { ws }
    }

    /// Connects and joins; returns the client and its `joined`.
    pub async fn join(server: &TestServer, token: &str) -> (Self, ServerMessage) {
        let mut client = Self::connect(server).await;
        client.send(&join(token, None)).await;
        let joined = client.recv().await.expect("joined");
        assert!(matches!(joined, ServerMessage::Joined { .. }), "{joined:?}");
        (client, joined)
    }

    pub async fn send(&mut self, message: &ClientMessage) {
        self.send_raw(serde_json::to_string(message).unwrap()).await;
    }

    pub async fn send_raw(&mut self, text: String) {
        self.ws.send(Message::Text(text.into())).await.unwrap();
    }

    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.ws.send(Message::Binary(bytes.into())).await.unwrap();
    }

    /// Next server message within 5 s; `None` when the socket closed.
    pub async fn recv(&mut self) -> Option<ServerMessage> {
        self.recv_within(Duration::from_secs(5))
            .await
            .expect("a message within the time limit")
    }

    /// `Err` on timeout, `Ok(None)` on close.
    pub async fn recv_within(&mut self, limit: Duration) -> Result<Option<ServerMessage>, ()> {
        loop {
            let next = tokio::time::timeout(limit, self.ws.next())
                .await
                .map_err(|_| ())?;
            match next {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return Ok(None),
                Some(Ok(Message::Text(t))) => return Ok(Some(serde_json::from_str(&t).unwrap())),
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Receives until a message matches, failing on close or timeout.
    pub async fn expect(
        &mut self,
        what: &str,
        f: impl Fn(&ServerMessage) -> bool,
    ) -> ServerMessage {
        loop {
            match self.recv().await {
                Some(m) if f(&m) => return m,
                Some(_) => continue,
                None => panic!("socket closed while waiting for {what}"),
            }
        }
    }

    /// Waits for a roster batch announcing a newcomer; returns the first newcomer.
    pub async fn expect_arrival(&mut self) -> ParticipantInfo {
        let m = self
            .expect(
                "roster_changed with a newcomer",
                |m| matches!(m, ServerMessage::RosterChanged { joined, .. } if !joined.is_empty()),
            )
            .await;
        let ServerMessage::RosterChanged { joined, .. } = m else {
            unreachable!()
        };
        joined[0].clone()
    }

    /// Waits for a roster batch saying `id` left, and checks why.
    pub async fn expect_departure(&mut self, id: ParticipantId, reason: LeaveReason) {
        let m = self
            .expect("roster_changed with a departure", |m| {
                matches!(m, ServerMessage::RosterChanged { left, .. } if left.iter().any(|d| d.participant_id == id))
            })
            .await;
        let ServerMessage::RosterChanged { left, .. } = m else {
            unreachable!()
        };
        assert!(
            left.contains(&Departure {
                participant_id: id,
                reason
            }),
            "{left:?}"
        );
    }

    /// Waits for a roster batch updating `id`; returns its new state.
    pub async fn expect_update(&mut self, id: ParticipantId) -> ParticipantInfo {
        let m = self
            .expect("roster_changed with an update", |m| {
                matches!(m, ServerMessage::RosterChanged { updated, .. } if updated.iter().any(|p| p.id == id))
            })
            .await;
        let ServerMessage::RosterChanged { updated, .. } = m else {
            unreachable!()
        };
        updated.into_iter().find(|p| p.id == id).unwrap()
    }

    /// Asserts nothing arrives for `quiet`.
    pub async fn expect_silence(&mut self, quiet: Duration) {
        if let Ok(m) = self.recv_within(quiet).await {
            panic!("expected silence, got {m:?}");
        }
    }

    /// A ping round trip: the session is alive and responsive.
    pub async fn ping(&mut self, nonce: u64) {
        self.send(&ClientMessage::Ping { nonce }).await;
        let pong = self
            .expect("pong", |m| matches!(m, ServerMessage::Pong { .. }))
            .await;
        assert_eq!(pong, ServerMessage::Pong { nonce });
    }

    /// Drops the TCP connection without a close handshake, like a lost network.
    pub fn drop_connection(self) {
        drop(self.ws);
    }
}

pub fn join(token: &str, resume: Option<String>) -> ClientMessage {
    ClientMessage::Join {
        version: 1,
        token: token.to_owned(),
        room: None,
        resume,
    }
}

pub fn participant_of(joined: &ServerMessage) -> (ParticipantId, String) {
    match joined {
        ServerMessage::Joined {
            participant,
            resume_token,
            ..
        } => (participant.id, resume_token.clone()),
        other => panic!("not joined: {other:?}"),
    }
}
