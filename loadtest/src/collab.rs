//! Collaboration benchmark: chat fan-out to many members of a room, and a late joiner's
//! catch-up on a large whiteboard, over real WebSockets against a running server.
//!
//! Delivery latency is the time from the sender's write to a member reading the event, both
//! in this process (one monotonic clock); it includes the server storing the event.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use serde_json::json;
use ting_protocol::{PROTOCOL_VERSION, Role, RoomId, ServerMessage};
use ting_signalling::TokenKeys;
use tokio::sync::Mutex;

use crate::stats::Histogram;
use crate::ws::{Incoming, JsonSocket};

#[derive(Debug, Clone)]
pub struct CollabBenchConfig {
    pub server: String,
    pub secret: Vec<u8>,
    pub room: String,
    pub members: usize,
    pub messages: usize,
    pub interval: Duration,
    pub elements: usize,
    pub joiners: usize,
    pub time_limit: Duration,
}

#[derive(Debug, Serialize)]
pub struct CollabBenchReport {
    pub members: usize,
    pub messages_sent: usize,
    pub deliveries_expected: u64,
    pub deliveries: u64,
    pub delivery_p50_ms: f64,
    pub delivery_p99_ms: f64,
    pub delivery_max_ms: f64,
    pub ack_p50_ms: f64,
    pub ack_p99_ms: f64,
    pub whiteboard_elements: usize,
    pub snapshot_bytes: usize,
    pub late_join_ms: Vec<f64>,
    pub late_join_median_ms: f64,
    pub late_join_max_ms: f64,
}

type Socket = JsonSocket<ServerMessage>;

fn ws_url(server: &str) -> String {
    let base = server
        .replacen("http://", "ws://", 1)
        .replacen("https://", "wss://", 1);
    format!("{}/ws", base.trim_end_matches('/'))
}

async fn connect(
    config: &CollabBenchConfig,
    keys: &TokenKeys,
    identity: &str,
) -> anyhow::Result<Socket> {
    let url = ws_url(&config.server);
    let mut socket = Socket::connect(url.as_str(), &url).await?;
    let room = RoomId::new(&config.room).map_err(|e| anyhow::anyhow!("room: {e}"))?;
    let token = keys.mint(
        room,
        identity,
        identity,
        Role::Speaker,
        Duration::from_secs(3600),
    )?;
    socket
        .send_json(&json!({"type":"collab_join","version":PROTOCOL_VERSION,"token":token}))
        .await?;
    match socket.recv().await {
        Incoming::Message(m) if matches!(*m, ServerMessage::CollabJoined { .. }) => Ok(socket),
        other => bail!("collab_join of {identity}: {other:?}"),
    }
}

/// Subscribes and waits for `collab_synced`; returns the bytes of JSON received on the way.
async fn subscribe(socket: &mut Socket, channel: &str) -> anyhow::Result<usize> {
    socket
        .send_json(&json!({"type":"collab_subscribe","channel":channel,"object":"main"}))
        .await?;
    let mut bytes = 0;
    loop {
        match socket.recv().await {
            Incoming::Message(m) => match *m {
                ServerMessage::CollabSynced { .. } => return Ok(bytes),
                ServerMessage::CollabSnapshot { state, .. } => bytes += state.to_string().len(),
                _ => {}
            },
            other => bail!("subscribing to {channel}: {other:?}"),
        }
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

pub async fn run(config: CollabBenchConfig) -> anyhow::Result<CollabBenchReport> {
    let keys = TokenKeys::new(&config.secret).context("token secret")?;
    let deadline = Instant::now() + config.time_limit;
    let start = Instant::now();

    // Members join and follow the chat.
    let mut members = Vec::with_capacity(config.members);
    for i in 0..config.members {
        let mut socket = connect(&config, &keys, &format!("member-{i}")).await?;
        subscribe(&mut socket, "chat").await?;
        members.push(socket);
        if Instant::now() > deadline {
            bail!("time limit reached while {i} members had joined");
        }
    }
    eprintln!(
        "collab bench: {} members joined and subscribed in {:.1} s",
        config.members,
        start.elapsed().as_secs_f64()
    );

    let deliveries = Arc::new(Mutex::new(Histogram::default()));
    let mut readers = Vec::new();
    for mut socket in members {
        let deliveries = deliveries.clone();
        let expected = config.messages;
        readers.push(tokio::spawn(async move {
            let mut local = Histogram::default();
            let mut seen = 0;
            while seen < expected {
                let message = tokio::time::timeout_at(deadline.into(), socket.recv()).await;
                let Ok(Incoming::Message(m)) = message else {
                    break;
                };
                if let ServerMessage::Collab(event) = *m
                    && let Some(sent) = event.body["text"]
                        .as_str()
                        .and_then(|t| t.strip_prefix("t="))
                        .and_then(|t| t.parse::<u64>().ok())
                {
                    let now = start.elapsed().as_micros() as u64;
                    local.record(now.saturating_sub(sent));
                    seen += 1;
                }
            }
            deliveries.lock().await.merge(&local);
            socket.close().await;
        }));
    }

    // One sender posts, spaced by `interval`, and waits for each ack.
    let mut sender = connect(&config, &keys, "sender").await?;
    let mut acks = Histogram::default();
    for n in 0..config.messages {
        let sent = start.elapsed().as_micros() as u64;
        let op_id = format!("bench-{n}");
        sender
            .send_json(
                &json!({"type":"collab","channel":"chat","object":"main","op_id":op_id,
                               "body":{"op":"post","text":format!("t={sent}")}}),
            )
            .await?;
        loop {
            match tokio::time::timeout_at(deadline.into(), sender.recv()).await {
                Ok(Incoming::Message(m)) => {
                    if let ServerMessage::CollabAck { .. } = *m {
                        acks.record((start.elapsed().as_micros() as u64).saturating_sub(sent));
                        break;
                    }
                    if let ServerMessage::CollabError { message, .. } = *m {
                        bail!("post refused: {message}");
                    }
                }
                Ok(other) => bail!("sender: {other:?}"),
                Err(_) => bail!("time limit reached while sending message {n}"),
            }
        }
        tokio::time::sleep(config.interval).await;
    }
    for reader in readers {
        let _ = reader.await;
    }
    let deliveries = deliveries.lock().await.clone();

    // A whiteboard of `elements` elements, written in batches as a busy board would be.
    let mut written = 0;
    let mut batch_no = 0;
    while written < config.elements {
        let batch: Vec<serde_json::Value> = (written..(written + 100).min(config.elements))
            .map(|i| {
                let (x, y) = ((i % 100) as f64 * 30.0, (i / 100) as f64 * 30.0);
                if i % 2 == 0 {
                    json!({"id":format!("e{i}"),"type":"rectangle","version":1,"version_nonce":i,"x":x,"y":y,"width":20,"height":20})
                } else {
                    let points: Vec<[f64; 2]> = (0..20).map(|p| [p as f64, (p * p % 7) as f64]).collect();
                    json!({"id":format!("e{i}"),"type":"freedraw","version":1,"version_nonce":i,"x":x,"y":y,"points":points})
                }
            })
            .collect();
        written += batch.len();
        let op_id = format!("wb-{batch_no}");
        batch_no += 1;
        sender
            .send_json(
                &json!({"type":"collab","channel":"whiteboard","object":"main","op_id":op_id,
                               "body":{"op":"upsert","elements":batch}}),
            )
            .await?;
        loop {
            match tokio::time::timeout_at(deadline.into(), sender.recv()).await {
                Ok(Incoming::Message(m)) => match *m {
                    ServerMessage::CollabAck { .. } => break,
                    ServerMessage::CollabError { message, .. } => {
                        bail!("upsert refused: {message}")
                    }
                    _ => {}
                },
                other => bail!("whiteboard writer: {other:?}"),
            }
        }
    }
    sender.close().await;

    // Late joiners: connect, subscribe, time until the scene is in and parsed.
    let mut late = Vec::new();
    let mut snapshot_bytes = 0;
    for j in 0..config.joiners {
        let began = Instant::now();
        let mut socket = connect(&config, &keys, &format!("late-{j}")).await?;
        snapshot_bytes = subscribe(&mut socket, "whiteboard").await?;
        late.push(began.elapsed().as_secs_f64() * 1000.0);
        socket.close().await;
    }
    let mut sorted = late.clone();
    sorted.sort_by(f64::total_cmp);
    Ok(CollabBenchReport {
        members: config.members,
        messages_sent: config.messages,
        deliveries_expected: (config.members * config.messages) as u64,
        deliveries: deliveries.count(),
        delivery_p50_ms: ms(deliveries.percentile(50.0)),
        delivery_p99_ms: ms(deliveries.percentile(99.0)),
        delivery_max_ms: ms(deliveries.max()),
        ack_p50_ms: ms(acks.percentile(50.0)),
        ack_p99_ms: ms(acks.percentile(99.0)),
        whiteboard_elements: config.elements,
        snapshot_bytes,
        late_join_median_ms: sorted.get(sorted.len() / 2).copied().unwrap_or(0.0),
        late_join_max_ms: sorted.last().copied().unwrap_or(0.0),
        late_join_ms: late,
    })
}
