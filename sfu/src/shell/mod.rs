//! The IO shell of a shard: one OS thread with a single-threaded tokio runtime that owns the
//! shard's UDP sockets, its ICE-TCP listeners and its [`Sfu`] core, and takes commands from the
//! signalling service.

mod router;
mod tcp;
pub mod udp;

pub use router::{ShardRouter, shard_of_room};

use std::future::poll_fn;
use std::io;
use std::net::{SocketAddr, TcpListener as StdTcpListener, UdpSocket as StdUdpSocket};
use std::sync::Arc;
use std::task::Poll;
use std::thread::JoinHandle;
use std::time::Instant;

use str0m::net::Protocol;
use ting_protocol::{NodeId, ParticipantId, RoomId, TrackId, TrackKind};
use tokio::io::ReadBuf;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, oneshot};
use tracing::{Instrument, debug, info_span, warn};

use crate::core::{
    OfferAnswer, PeerOptions, PublishRequest, RelayControl, RelayMedia, RelayMessage, Sfu,
    SfuConfig, SfuError, SfuEvent, SfuOutput, SubscribeRequest,
};
use crate::metrics::SfuMetrics;

/// Datagrams read per socket readiness before the core is drained again.
const MAX_READS_PER_WAKE: usize = 64;

enum Command {
    AddPeer {
        room: RoomId,
        participant: ParticipantId,
        options: PeerOptions,
        reply: oneshot::Sender<Result<(), SfuError>>,
    },
    Offer {
        participant: ParticipantId,
        sdp: String,
        publish: Vec<PublishRequest>,
        reply: oneshot::Sender<Result<OfferAnswer, SfuError>>,
    },
    Subscribe {
        participant: ParticipantId,
        subscriptions: Vec<SubscribeRequest>,
        reply: oneshot::Sender<Result<(), SfuError>>,
    },
    AudioSlots {
        participant: ParticipantId,
        mids: Vec<String>,
        reply: oneshot::Sender<Result<(), SfuError>>,
    },
    SetMuted {
        track: TrackId,
        muted: bool,
    },
    Candidate {
        participant: ParticipantId,
        candidate: String,
        reply: oneshot::Sender<Result<(), SfuError>>,
    },
    RemovePeer {
        participant: ParticipantId,
    },
    UnpublishAll {
        participant: ParticipantId,
    },
    SetRelay(Arc<dyn RelaySink>),
    AddRemoteTrack {
        room: RoomId,
        track: TrackId,
        owner: ParticipantId,
        kind: TrackKind,
        origin: NodeId,
    },
    RemoveRemoteTrack(TrackId),
    RelayControl {
        from: NodeId,
        control: RelayControl,
    },
}

/// Where a shard's messages for other nodes go: the node links of the cluster.
pub trait RelaySink: Send + Sync {
    fn send(&self, node: &NodeId, message: RelayMessage);
}

/// Why a command could not be carried out by the shard.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ShardError {
    #[error(transparent)]
    Sfu(#[from] SfuError),
    #[error("the media shard has stopped")]
    Stopped,
}

/// Relayed packets queued for a shard at most; beyond, they are dropped (and counted): a
/// shard that cannot keep up must not queue media without bound.
const RELAY_QUEUE: usize = 4096;

/// Cheap, cloneable access to a running shard from async code.
#[derive(Clone)]
pub struct SfuHandle {
    commands: mpsc::UnboundedSender<Command>,
    relayed: mpsc::Sender<(NodeId, RelayMedia)>,
}

impl SfuHandle {
    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, SfuError>>) -> Command,
    ) -> Result<T, ShardError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(make(reply))
            .map_err(|_| ShardError::Stopped)?;
        Ok(answer.await.map_err(|_| ShardError::Stopped)??)
    }

    pub async fn add_peer(
        &self,
        room: RoomId,
        participant: ParticipantId,
        options: PeerOptions,
    ) -> Result<(), ShardError> {
        self.call(|reply| Command::AddPeer {
            room,
            participant,
            options,
            reply,
        })
        .await
    }

    /// Returns the SDP answer.
    pub async fn offer(
        &self,
        participant: ParticipantId,
        sdp: String,
        publish: Vec<PublishRequest>,
    ) -> Result<OfferAnswer, ShardError> {
        self.call(|reply| Command::Offer {
            participant,
            sdp,
            publish,
            reply,
        })
        .await
    }

    pub async fn subscribe(
        &self,
        participant: ParticipantId,
        subscriptions: Vec<SubscribeRequest>,
    ) -> Result<(), ShardError> {
        self.call(|reply| Command::Subscribe {
            participant,
            subscriptions,
            reply,
        })
        .await
    }

    /// Declares the receiver's loudest-N audio slots.
    pub async fn set_audio_slots(
        &self,
        participant: ParticipantId,
        mids: Vec<String>,
    ) -> Result<(), ShardError> {
        self.call(|reply| Command::AudioSlots {
            participant,
            mids,
            reply,
        })
        .await
    }

    pub async fn add_candidate(
        &self,
        participant: ParticipantId,
        candidate: String,
    ) -> Result<(), ShardError> {
        self.call(|reply| Command::Candidate {
            participant,
            candidate,
            reply,
        })
        .await
    }

    pub fn set_muted(&self, track: TrackId, muted: bool) {
        // A stopped shard has no tracks left to mute.
        let _ = self.commands.send(Command::SetMuted { track, muted });
    }

    pub fn unpublish_all(&self, participant: ParticipantId) {
        let _ = self.commands.send(Command::UnpublishAll { participant });
    }

    pub fn remove_peer(&self, participant: ParticipantId) {
        let _ = self.commands.send(Command::RemovePeer { participant });
    }

    /// Where the shard's messages for other nodes go.
    pub fn set_relay(&self, sink: Arc<dyn RelaySink>) {
        let _ = self.commands.send(Command::SetRelay(sink));
    }

    pub fn add_remote_track(
        &self,
        room: RoomId,
        track: TrackId,
        owner: ParticipantId,
        kind: TrackKind,
        origin: NodeId,
    ) {
        let _ = self.commands.send(Command::AddRemoteTrack {
            room,
            track,
            owner,
            kind,
            origin,
        });
    }

    pub fn remove_remote_track(&self, track: TrackId) {
        let _ = self.commands.send(Command::RemoveRemoteTrack(track));
    }

    /// Queues a relayed packet; `false` when the shard's queue is full (the packet is dropped).
    pub fn relay_media(&self, from: NodeId, media: RelayMedia) -> bool {
        self.relayed.try_send((from, media)).is_ok()
    }

    pub fn relay_control(&self, from: NodeId, control: RelayControl) {
        let _ = self.commands.send(Command::RelayControl { from, control });
    }
}

/// A running shard: its handle, its events, and its thread (which ends when every handle is
/// dropped).
pub struct Shard {
    pub handle: SfuHandle,
    pub events: mpsc::UnboundedReceiver<SfuEvent>,
    pub thread: JoinHandle<()>,
}

/// The already-bound sockets a shard serves: UDP sockets (one per local address, all on the
/// media port) and ICE-TCP listeners.
pub struct ShardSockets {
    pub udp: Vec<StdUdpSocket>,
    pub tcp: Vec<StdTcpListener>,
}

/// Starts a shard on already-bound sockets.
pub fn spawn_shard(
    sockets: ShardSockets,
    config: SfuConfig,
    metrics: SfuMetrics,
    index: usize,
) -> io::Result<Shard> {
    let (commands_tx, commands) = mpsc::unbounded_channel();
    let (relayed_tx, relayed) = mpsc::channel(RELAY_QUEUE);
    let (events_tx, events) = mpsc::unbounded_channel();
    for socket in &sockets.udp {
        socket.set_nonblocking(true)?;
        let (receive, send) = udp::enlarge_buffers(socket);
        debug!(receive, send, "media socket buffers");
    }
    for listener in &sockets.tcp {
        listener.set_nonblocking(true)?;
    }
    let ShardSockets {
        udp: sockets,
        tcp: listeners,
    } = sockets;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let thread = std::thread::Builder::new()
        .name(format!("ting-shard-{index}"))
        .spawn(move || {
            let span = info_span!("shard", index);
            runtime.block_on(
                async move {
                    let sockets = match sockets
                        .into_iter()
                        .map(UdpSocket::from_std)
                        .collect::<io::Result<Vec<_>>>()
                    {
                        Ok(s) => s,
                        Err(e) => {
                            warn!("media sockets unusable: {e}");
                            return;
                        }
                    };
                    let (tcp_tx, tcp_rx) = mpsc::channel(4096);
                    for listener in listeners {
                        match TcpListener::from_std(listener) {
                            Ok(l) => drop(tokio::spawn(tcp::accept_loop(l, tcp_tx.clone()))),
                            Err(e) => warn!("ICE-TCP listener unusable: {e}"),
                        }
                    }
                    let inputs = Inputs {
                        commands,
                        relayed,
                        tcp: tcp_rx,
                    };
                    run(sockets, inputs, config, metrics, events_tx).await;
                }
                .instrument(span),
            );
        })?;
    Ok(Shard {
        handle: SfuHandle {
            commands: commands_tx,
            relayed: relayed_tx,
        },
        events,
        thread,
    })
}

/// What a shard takes besides its sockets' datagrams.
struct Inputs {
    commands: mpsc::UnboundedReceiver<Command>,
    relayed: mpsc::Receiver<(NodeId, RelayMedia)>,
    tcp: mpsc::Receiver<tcp::TcpEvent>,
}

async fn run(
    sockets: Vec<UdpSocket>,
    inputs: Inputs,
    config: SfuConfig,
    metrics: SfuMetrics,
    events: mpsc::UnboundedSender<SfuEvent>,
) {
    let Inputs {
        mut commands,
        mut relayed,
        tcp: mut tcp_events,
    } = inputs;
    let locals: Vec<SocketAddr> = sockets.iter().filter_map(|s| s.local_addr().ok()).collect();
    let loop_seconds = metrics.loop_seconds.clone();
    let send_dropped = metrics.send_dropped.clone();
    let relay_hop = metrics.relay_hop_seconds.clone();
    let mut relay: Option<Arc<dyn RelaySink>> = None;
    let mut batch = udp::SendBatch::new(sockets.len());
    let mut sfu = Sfu::new(config, metrics, Instant::now());
    let mut buf = vec![0u8; 2048];
    let mut tcp_connections = tcp::TcpConnections::default();
    loop {
        let started = Instant::now();
        let timeout = drain(
            &mut sfu,
            &sockets,
            &locals,
            &mut batch,
            &tcp_connections,
            &events,
            relay.as_deref(),
        );
        send_dropped.inc_by(batch.take_dropped());
        loop_seconds.observe(started.elapsed().as_secs_f64());
        let wake_at = tokio::time::Instant::from_std(timeout.max(Instant::now()));
        tokio::select! {
            command = commands.recv() => match command {
                Some(Command::SetRelay(sink)) => relay = Some(sink),
                Some(command) => apply(&mut sfu, command),
                None => break,
            },
            received = recv_any(&sockets, &mut buf) => {
                let (index, first) = received;
                let mut next = Some(first);
                let mut reads = 0;
                while let Some(result) = next.take() {
                    match result {
                        Ok((len, source)) => sfu.handle_receive(
                            Instant::now(), Protocol::Udp, source, locals[index], &buf[..len],
                        ),
                        // ICMP errors surface here on Linux; one bad peer must not stop the shard.
                        Err(e) => debug!("udp receive: {e}"),
                    }
                    reads += 1;
                    if reads < MAX_READS_PER_WAKE {
                        match sockets[index].try_recv_from(&mut buf) {
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                            other => next = Some(other),
                        }
                    }
                }
            },
            Some((from, media)) = relayed.recv() => {
                let mut next = Some((from, media));
                let mut reads = 0;
                while let Some((from, media)) = next.take() {
                    let now = Instant::now();
                    relay_hop.observe(now.saturating_duration_since(media.arrival).as_secs_f64());
                    sfu.handle_relay_media(now, &from, media);
                    reads += 1;
                    if reads < MAX_READS_PER_WAKE {
                        next = relayed.try_recv().ok();
                    }
                }
            },
            Some(event) = tcp_events.recv() => match event {
                tcp::TcpEvent::Opened { key, writer } => tcp_connections.opened(key, writer),
                tcp::TcpEvent::Frame { key: (local, remote), data } => {
                    sfu.handle_receive(Instant::now(), Protocol::Tcp, remote, local, &data);
                }
                tcp::TcpEvent::Closed { key } => tcp_connections.closed(key),
            },
            _ = tokio::time::sleep_until(wake_at) => {},
        }
        let now = Instant::now();
        if now >= timeout {
            sfu.handle_timeout(now);
        }
    }
    debug!("shard stopped");
}

/// Waits until any socket has a datagram; returns the socket's index and the read result.
async fn recv_any(
    sockets: &[UdpSocket],
    buf: &mut [u8],
) -> (usize, io::Result<(usize, SocketAddr)>) {
    poll_fn(|cx| {
        for (index, socket) in sockets.iter().enumerate() {
            let mut read = ReadBuf::new(buf);
            if let Poll::Ready(result) = socket.poll_recv_from(cx, &mut read) {
                return Poll::Ready((index, result.map(|source| (read.filled().len(), source))));
            }
        }
        Poll::Pending
    })
    .await
}

fn drain(
    sfu: &mut Sfu,
    sockets: &[UdpSocket],
    locals: &[SocketAddr],
    batch: &mut udp::SendBatch,
    tcp_connections: &tcp::TcpConnections,
    events: &mpsc::UnboundedSender<SfuEvent>,
    relay: Option<&dyn RelaySink>,
) -> Instant {
    loop {
        match sfu.poll_output() {
            SfuOutput::Transmit(t) if t.proto != Protocol::Udp => {
                tcp_connections.send(t.source, t.destination, &t.contents);
            }
            SfuOutput::Transmit(t) => {
                let index = locals.iter().position(|l| *l == t.source).unwrap_or(0);
                batch.push(sockets, index, t.destination, t.contents);
            }
            SfuOutput::Event(event) => {
                let _ = events.send(event);
            }
            SfuOutput::Relay { node, message } => {
                if let Some(relay) = relay {
                    relay.send(&node, message);
                }
            }
            SfuOutput::Timeout(at) => {
                batch.flush(sockets);
                return at;
            }
        }
    }
}

fn apply(sfu: &mut Sfu, command: Command) {
    let now = Instant::now();
    match command {
        Command::AddPeer {
            room,
            participant,
            options,
            reply,
        } => {
            let _ = reply.send(sfu.add_peer(now, room, participant, options));
        }
        Command::Offer {
            participant,
            sdp,
            publish,
            reply,
        } => {
            let _ = reply.send(sfu.accept_offer(now, participant, &sdp, &publish));
        }
        Command::Subscribe {
            participant,
            subscriptions,
            reply,
        } => {
            let _ = reply.send(sfu.set_subscriptions(now, participant, &subscriptions));
        }
        Command::AudioSlots {
            participant,
            mids,
            reply,
        } => {
            let _ = reply.send(sfu.set_audio_slots(now, participant, &mids));
        }
        Command::SetMuted { track, muted } => {
            if let Err(e) = sfu.set_muted(now, track, muted) {
                debug!("mute: {e}");
            }
        }
        Command::Candidate {
            participant,
            candidate,
            reply,
        } => {
            let _ = reply.send(sfu.add_remote_candidate(participant, &candidate));
        }
        Command::RemovePeer { participant } => sfu.remove_peer(participant),
        Command::UnpublishAll { participant } => sfu.unpublish_all(participant),
        // Taken by the loop itself.
        Command::SetRelay(_) => {}
        Command::AddRemoteTrack {
            room,
            track,
            owner,
            kind,
            origin,
        } => sfu.add_remote_track(now, room, track, owner, kind, origin),
        Command::RemoveRemoteTrack(track) => sfu.remove_remote_track(track),
        Command::RelayControl { from, control } => {
            sfu.handle_relay_control(now, from, control);
        }
    }
}
