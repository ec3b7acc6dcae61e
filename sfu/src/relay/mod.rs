//! Node links: one QUIC connection per pair of nodes in a cluster, over which their SFUs relay
//! media (datagrams tagged with the track id), their cores exchange relay control, and a
//! signalling node drives the SFU of another node for participants whose media is there
//! (calls and replies, and the SFU's events back).
//!
//! A link authenticates both ends with the cluster secret (see the `auth` module); until it
//! has, nothing it carries is read. Links are dialed when first needed, to addresses learnt
//! from the cluster's registry; a link that goes quiet for three seconds is dead, and the
//! [`LinkHandler`] hears of it.

mod auth;
pub mod rpc;
pub mod wire;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use aws_lc_rs::hmac;
use prometheus::IntCounter;
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use ting_protocol::{NodeId, ParticipantId, RoomId};

use crate::core::{OfferAnswer, RelayMessage, SfuEvent};
use crate::metrics::SfuMetrics;
use crate::shell::{RelaySink, ShardError, ShardRouter};
use auth::Side;
use rpc::{MediaCall, MediaReply};
use wire::{Frame, MAX_FRAME};

/// How long a call on another node's SFU may take (an SDP offer is the slowest).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a new link may take to connect and authenticate.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A node whose dial failed is not dialed again for relay traffic before this.
const REDIAL_AFTER: Duration = Duration::from_secs(1);
/// Handshakes (unauthenticated peers) served at once.
const MAX_HANDSHAKES: usize = 32;
/// A `hello` is a node id and a proof: anything longer is not one.
const MAX_HELLO: usize = 1024;

/// What a signalling node does with what other nodes' SFUs tell it.
pub trait LinkHandler: Send + Sync + 'static {
    /// An SFU event from `from` about a participant (or room) whose signalling is here.
    fn event(&self, from: &NodeId, event: SfuEvent);
    /// The link to `node` ended: the node stopped or died.
    fn link_lost(&self, node: &NodeId);
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
    #[error("relay socket: {0}")]
    Io(#[from] std::io::Error),
}

/// Cheaply cloneable access to this node's links.
#[derive(Clone)]
pub struct NodeLinks(Arc<Inner>);

struct Inner {
    node: NodeId,
    endpoint: quinn::Endpoint,
    key: hmac::Key,
    /// This node's SFU; `None` on a signalling-only node.
    router: Option<ShardRouter>,
    metrics: SfuMetrics,
    handler: OnceLock<Arc<dyn LinkHandler>>,
    state: Mutex<State>,
    next_call: AtomicU64,
    runtime: tokio::runtime::Handle,
    /// Where other nodes reach this one (the bound address may be 0.0.0.0).
    advertised: OnceLock<SocketAddr>,
    /// Random per start: a peer that says hello with another one has restarted.
    incarnation: u64,
    /// Handshakes in progress: unauthenticated peers cannot make this node do more at once.
    handshakes: Arc<tokio::sync::Semaphore>,
}

#[derive(Default)]
struct State {
    links: HashMap<NodeId, Link>,
    addresses: HashMap<NodeId, SocketAddr>,
    dialing: Vec<NodeId>,
    /// When a dial last failed, per node: relay traffic for a dead node does not redial it in
    /// a loop.
    dial_failed: HashMap<NodeId, Instant>,
    calls: HashMap<u64, (NodeId, oneshot::Sender<Result<MediaReply, String>>)>,
    /// Participants whose signalling is on another node, and that node: their SFU events go
    /// there.
    controllers: HashMap<ParticipantId, NodeId>,
    /// Rooms with such participants: (their signalling node, participants here).
    room_controllers: HashMap<RoomId, (NodeId, usize)>,
}

#[derive(Clone)]
struct Link {
    connection: quinn::Connection,
    /// Whether this node dialed it (when both dial at once, the lower id's dial is kept).
    dialed: bool,
    /// The peer's incarnation (see `Inner::incarnation`).
    incarnation: u64,
    frames: mpsc::UnboundedSender<Frame>,
    out_packets: IntCounter,
    out_bytes: IntCounter,
}

impl NodeLinks {
    /// Listens for links on `bind` and sends the shards' relay traffic over links. Needs a
    /// tokio runtime.
    pub fn start(
        node: NodeId,
        bind: SocketAddr,
        cluster_secret: &[u8],
        router: Option<ShardRouter>,
        metrics: SfuMetrics,
    ) -> Result<Self, LinkError> {
        let mut endpoint = quinn::Endpoint::server(auth::server_config()?, bind)?;
        endpoint.set_default_client_config(auth::client_config()?);
        let links = Self(Arc::new(Inner {
            node,
            endpoint,
            key: auth::link_key(cluster_secret),
            router: router.clone(),
            metrics,
            handler: OnceLock::new(),
            state: Mutex::default(),
            next_call: AtomicU64::new(1),
            runtime: tokio::runtime::Handle::current(),
            advertised: OnceLock::new(),
            incarnation: rand::random(),
            handshakes: Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES)),
        }));
        if let Some(router) = &router {
            router.set_relay(Arc::new(links.clone()));
        }
        tokio::spawn(links.clone().accept_loop());
        Ok(links)
    }

    pub fn node(&self) -> &NodeId {
        &self.0.node
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.0.endpoint.local_addr()
    }

    /// Where the events of other nodes' SFUs go. Set once.
    pub fn set_handler(&self, handler: Arc<dyn LinkHandler>) {
        let _ = self.0.handler.set(handler);
    }

    /// Remembers where `node` takes links (from the cluster's registry).
    pub fn learn(&self, node: &NodeId, addr: SocketAddr) {
        if *node != self.0.node && !addr.ip().is_unspecified() {
            self.state().addresses.insert(node.clone(), addr);
        }
    }

    /// The address this node publishes for its links (the bound one may be 0.0.0.0).
    pub fn set_advertised(&self, addr: SocketAddr) {
        let _ = self.0.advertised.set(addr);
    }

    /// Where `node` takes links: this node's advertised address, or one learnt.
    pub fn address_of(&self, node: &NodeId) -> Option<SocketAddr> {
        if *node == self.0.node {
            return self.0.advertised.get().copied().or(self.local_addr().ok());
        }
        self.state().addresses.get(node).copied()
    }

    /// Stops accepting and closes every link.
    pub fn close(&self) {
        self.0.endpoint.close(0u32.into(), b"node stopping");
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every update is a single map operation: the state stays consistent after a panic.
        self.0.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Calls the SFU of `node`; the SDP answer for `Offer`.
    pub async fn call(
        &self,
        node: &NodeId,
        call: MediaCall,
    ) -> Result<Option<OfferAnswer>, ShardError> {
        let unavailable = || ShardError::Sfu(crate::SfuError::Unavailable);
        let link = self.link_to(node).await.ok_or_else(unavailable)?;
        let id = self.0.next_call.fetch_add(1, Ordering::Relaxed);
        let (reply_tx, reply) = oneshot::channel();
        self.state().calls.insert(id, (node.clone(), reply_tx));
        if link.frames.send(Frame::Call { id, call }).is_err() {
            self.state().calls.remove(&id);
            return Err(unavailable());
        }
        let answer = tokio::time::timeout(CALL_TIMEOUT, reply).await;
        self.state().calls.remove(&id);
        match answer {
            Ok(Ok(Ok(reply))) => reply.into_result(),
            Ok(Ok(Err(e))) => {
                debug!(%node, "remote media call failed: {e}");
                Err(unavailable())
            }
            _ => Err(unavailable()),
        }
    }

    /// Sends a call whose answer nobody waits for, in order after the calls before it on the
    /// same link (a mute and an unmute arrive as sent). Dropped when there is no link.
    pub fn notify(&self, node: &NodeId, call: MediaCall) {
        match self.state().links.get(node) {
            Some(link) => {
                let _ = link.frames.send(Frame::Call { id: 0, call });
            }
            None => debug!(%node, "no link for a media call"),
        }
    }

    /// Sends an event of this node's SFU to the signalling node that controls its participant
    /// or room, if that is another node; otherwise hands it back for the local hub.
    pub fn route_event(&self, event: SfuEvent) -> Option<SfuEvent> {
        let target = {
            let mut state = self.state();
            match &event {
                SfuEvent::Connected { participant }
                | SfuEvent::LayersWanted { participant, .. } => {
                    state.controllers.get(participant).cloned()
                }
                SfuEvent::Closed { participant } => {
                    let controller = state.controllers.remove(participant);
                    if let Some(node) = &controller {
                        release_room(&mut state, node);
                    }
                    controller
                }
                SfuEvent::ActiveSpeaker { room, .. } => {
                    state.room_controllers.get(room).map(|(n, _)| n.clone())
                }
            }
        };
        let Some(node) = target else {
            return Some(event);
        };
        if let Some(link) = self.state().links.get(&node) {
            let _ = link.frames.send(Frame::Event { event });
        }
        None
    }

    /// The link to `node`, dialing it if there is none (and its address is known).
    async fn link_to(&self, node: &NodeId) -> Option<Link> {
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        loop {
            let dial = {
                let mut state = self.state();
                if let Some(link) = state.links.get(node) {
                    return Some(link.clone());
                }
                let addr = *state.addresses.get(node)?;
                let dial = !state.dialing.contains(node);
                if dial {
                    state.dialing.push(node.clone());
                }
                dial.then_some(addr)
            };
            if let Some(addr) = dial {
                let result = tokio::time::timeout(CONNECT_TIMEOUT, self.dial(node, addr)).await;
                let mut state = self.state();
                state.dialing.retain(|n| n != node);
                if matches!(result, Ok(Ok(()))) {
                    state.dial_failed.remove(node);
                    continue;
                }
                state.dial_failed.insert(node.clone(), Instant::now());
                drop(state);
                match result {
                    Ok(Err(e)) => warn!(%node, %addr, "node link failed: {e}"),
                    _ => warn!(%node, %addr, "node link timed out"),
                }
                return None;
            }
            // Someone else is dialing the node: wait for their link.
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts a link to `node` in the background (for relay traffic, which never waits),
    /// unless one is being dialed or the last attempt failed within [`REDIAL_AFTER`].
    fn dial_soon(&self, node: &NodeId) {
        {
            let state = self.state();
            let recently_failed = state
                .dial_failed
                .get(node)
                .is_some_and(|at| at.elapsed() < REDIAL_AFTER);
            if state.dialing.contains(node) || recently_failed {
                return;
            }
        }
        let links = self.clone();
        let node = node.clone();
        self.0.runtime.spawn(async move {
            links.link_to(&node).await;
        });
    }

    async fn dial(&self, node: &NodeId, addr: SocketAddr) -> Result<(), String> {
        let connection = self
            .0
            .endpoint
            .connect(addr, auth::SERVER_NAME)
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        let (mut send, mut recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
        self.say_hello(&connection, &mut send, Side::Dialer).await?;
        let (peer, incarnation) = self
            .hear_hello(&connection, &mut recv, Side::Listener)
            .await?;
        if peer != *node {
            connection.close(1u32.into(), b"not the node dialed");
            return Err(format!("{addr} is node {peer}, not {node}"));
        }
        self.run(peer, incarnation, true, connection, send, recv);
        Ok(())
    }

    async fn accept_loop(self) {
        while let Some(incoming) = self.0.endpoint.accept().await {
            let links = self.clone();
            // At most MAX_HANDSHAKES unauthenticated peers are served at once.
            let Ok(permit) = links.0.handshakes.clone().try_acquire_owned() else {
                incoming.refuse();
                continue;
            };
            tokio::spawn(async move {
                let _permit = permit;
                let remote = incoming.remote_address();
                match tokio::time::timeout(CONNECT_TIMEOUT, links.accept(incoming)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => warn!(%remote, "node link refused: {e}"),
                    Err(_) => warn!(%remote, "node link refused: no hello in time"),
                }
            });
        }
    }

    async fn accept(&self, incoming: quinn::Incoming) -> Result<(), String> {
        let connection = incoming.await.map_err(|e| e.to_string())?;
        let (mut send, mut recv) = connection.accept_bi().await.map_err(|e| e.to_string())?;
        let (peer, incarnation) = self
            .hear_hello(&connection, &mut recv, Side::Dialer)
            .await?;
        self.say_hello(&connection, &mut send, Side::Listener)
            .await?;
        self.run(peer, incarnation, false, connection, send, recv);
        Ok(())
    }

    /// Reads the other end's `hello` (it is on `side` of the connection) and checks its proof;
    /// returns its node id and incarnation, or closes the connection.
    async fn hear_hello(
        &self,
        connection: &quinn::Connection,
        recv: &mut quinn::RecvStream,
        side: Side,
    ) -> Result<(NodeId, u64), String> {
        let hello = read_frame(recv, MAX_HELLO)
            .await
            .map_err(|e| e.to_string())?;
        let Frame::Hello {
            node,
            proof,
            incarnation,
        } = hello
        else {
            connection.close(1u32.into(), b"hello first");
            return Err("the first frame was not hello".into());
        };
        if !auth::verify(&self.0.key, connection, side, &node, &proof) {
            connection.close(1u32.into(), b"not authenticated");
            return Err(format!("{node} did not prove it belongs to this cluster"));
        }
        Ok((node, incarnation))
    }

    /// Sends this node's `hello` with its proof for `side` of the connection.
    async fn say_hello(
        &self,
        connection: &quinn::Connection,
        send: &mut quinn::SendStream,
        side: Side,
    ) -> Result<(), String> {
        let proof =
            auth::prove(&self.0.key, connection, side, &self.0.node).map_err(|e| e.to_string())?;
        let hello = Frame::Hello {
            node: self.0.node.clone(),
            proof,
            incarnation: self.0.incarnation,
        };
        write_frame(send, &hello).await.map_err(|e| e.to_string())
    }

    /// Serves an authenticated link until it ends. When both nodes dialed at once, the link
    /// the lower node id dialed is kept and the other closed (both sides choose the same);
    /// a peer with a new incarnation restarted, and what it carried is lost.
    fn run(
        &self,
        peer: NodeId,
        incarnation: u64,
        dialed: bool,
        connection: quinn::Connection,
        mut send: quinn::SendStream,
        recv: quinn::RecvStream,
    ) {
        let i_am_lower = self.0.node < peer;
        let previous = self.state().links.get(&peer).cloned();
        if let Some(old) = &previous {
            let old_alive = old.connection.close_reason().is_none();
            let keep_old = old_alive && old.incarnation == incarnation && old.dialed == i_am_lower;
            if keep_old {
                connection.close(0u32.into(), b"duplicate link");
                return;
            }
        }
        info!(node = %peer, remote = %connection.remote_address(), "node link up");
        let (frames, mut outgoing) = mpsc::unbounded_channel::<Frame>();
        let label = |direction: &str, counter: &prometheus::IntCounterVec| {
            counter.with_label_values(&[direction, peer.as_str()])
        };
        let metrics = &self.0.metrics;
        let link = Link {
            connection: connection.clone(),
            dialed,
            incarnation,
            frames,
            out_packets: label("out", &metrics.relay_packets),
            out_bytes: label("out", &metrics.relay_bytes),
        };
        self.state().links.insert(peer.clone(), link);
        if let Some(old) = previous {
            old.connection.close(0u32.into(), b"replaced");
            if old.incarnation != incarnation {
                // The peer restarted: the participants it carried for us are gone.
                self.forget_peer(&peer);
            }
        }
        tokio::spawn(async move {
            while let Some(frame) = outgoing.recv().await {
                if write_frame(&mut send, &frame).await.is_err() {
                    break;
                }
            }
        });
        let in_counters = (
            label("in", &metrics.relay_packets),
            label("in", &metrics.relay_bytes),
        );
        tokio::spawn(
            self.clone()
                .read_datagrams(peer.clone(), connection.clone(), in_counters),
        );
        // Calls are served one after the other, in the order they came.
        let (calls, mut queued) = mpsc::unbounded_channel::<(u64, MediaCall)>();
        let links = self.clone();
        let from = peer.clone();
        tokio::spawn(async move {
            while let Some((id, call)) = queued.recv().await {
                links.serve_call(&from, id, call).await;
            }
        });
        tokio::spawn(self.clone().read_frames(peer, connection, recv, calls));
    }

    async fn read_datagrams(
        self,
        peer: NodeId,
        connection: quinn::Connection,
        (packets, bytes): (IntCounter, IntCounter),
    ) {
        while let Ok(datagram) = connection.read_datagram().await {
            packets.inc();
            bytes.inc_by(datagram.len() as u64);
            match wire::decode_media(&datagram, Instant::now()) {
                Ok(media) => {
                    if let Some(router) = &self.0.router
                        && !router.relay_media(peer.clone(), media)
                    {
                        self.0.metrics.relay_dropped.inc();
                    }
                }
                Err(e) => {
                    self.0.metrics.unroutable.inc();
                    debug!(node = %peer, "relay datagram dropped: {e}");
                }
            }
        }
    }

    async fn read_frames(
        self,
        peer: NodeId,
        connection: quinn::Connection,
        mut recv: quinn::RecvStream,
        calls: mpsc::UnboundedSender<(u64, MediaCall)>,
    ) {
        loop {
            let frame = match read_frame(&mut recv, MAX_FRAME).await {
                Ok(frame) => frame,
                Err(e) => {
                    debug!(node = %peer, "node link closed: {e}");
                    break;
                }
            };
            match frame {
                Frame::Hello { .. } => {}
                Frame::Relay { control } => {
                    if let Some(router) = &self.0.router {
                        router.relay_control(peer.clone(), control);
                    }
                }
                Frame::Call { id, call } => {
                    let _ = calls.send((id, call));
                }
                Frame::Reply { id, reply } => {
                    if let Some((_, waiter)) = self.state().calls.remove(&id) {
                        let _ = waiter.send(reply);
                    }
                }
                Frame::Event { event } => {
                    if let Some(handler) = self.0.handler.get() {
                        handler.event(&peer, event);
                    }
                }
            }
        }
        connection.close(0u32.into(), b"link closed");
        self.lost(&peer, &connection);
    }

    /// Serves a call from `from`; `id` 0 wants no reply.
    async fn serve_call(&self, from: &NodeId, id: u64, call: MediaCall) {
        let added = match &call {
            MediaCall::AddPeer {
                room, participant, ..
            } => Some((room.clone(), *participant)),
            MediaCall::AddRemoteTrack {
                origin,
                origin_addr,
                ..
            } => {
                self.learn(origin, *origin_addr);
                None
            }
            _ => None,
        };
        let removed = match &call {
            MediaCall::RemovePeer { participant } => Some(*participant),
            _ => None,
        };
        let reply = match &self.0.router {
            Some(router) => rpc::serve(router, call).await,
            None => MediaReply::Failed {
                error: crate::SfuError::Unavailable,
            },
        };
        if let (Some((room, participant)), MediaReply::Done) = (added, &reply) {
            // Its SFU events go to `from` from now on.
            let mut state = self.state();
            state.controllers.insert(participant, from.clone());
            state
                .room_controllers
                .entry(room)
                .or_insert_with(|| (from.clone(), 0))
                .1 += 1;
        }
        if let Some(participant) = removed {
            let mut state = self.state();
            if let Some(node) = state.controllers.remove(&participant) {
                release_room(&mut state, &node);
            }
        }
        if id == 0 {
            return;
        }
        if let Some(link) = self.state().links.get(from) {
            let _ = link.frames.send(Frame::Reply {
                id,
                reply: Ok(reply),
            });
        }
    }

    /// A link ended: forget it (unless a newer one replaced it), fail its pending calls, and
    /// tell the handler when no link to the node is left.
    fn lost(&self, peer: &NodeId, connection: &quinn::Connection) {
        let current = {
            let mut state = self.state();
            let current = state
                .links
                .get(peer)
                .is_some_and(|l| l.connection.stable_id() == connection.stable_id());
            if current {
                state.links.remove(peer);
            }
            current
        };
        if current {
            warn!(node = %peer, "node link lost");
            self.forget_peer(peer);
        }
    }

    /// What ties this node to `peer` ends: its pending calls fail, the media of participants
    /// it controlled here goes, and the handler hears that the peer's own is gone.
    fn forget_peer(&self, peer: &NodeId) {
        let orphans = {
            let mut state = self.state();
            state.calls.retain(|_, (node, _)| node != peer);
            // Participants whose signalling was on that node are its to clean up; it is gone,
            // so their media goes too.
            let orphans: Vec<ParticipantId> = state
                .controllers
                .iter()
                .filter(|(_, n)| *n == peer)
                .map(|(p, _)| *p)
                .collect();
            for participant in &orphans {
                state.controllers.remove(participant);
            }
            state.room_controllers.retain(|_, (n, _)| n != peer);
            orphans
        };
        if let Some(router) = &self.0.router {
            for participant in orphans {
                router.remove_peer(participant);
            }
        }
        if let Some(handler) = self.0.handler.get() {
            handler.link_lost(peer);
        }
    }
}

/// One participant of a remotely controlled room left this node.
fn release_room(state: &mut State, controller: &NodeId) {
    state.room_controllers.retain(|_, (node, count)| {
        if node == controller {
            *count = count.saturating_sub(1);
        }
        *count > 0
    });
}

impl RelaySink for NodeLinks {
    fn send(&self, node: &NodeId, message: RelayMessage) {
        let link = self.state().links.get(node).cloned();
        let Some(link) = link else {
            self.0.metrics.relay_dropped.inc();
            self.dial_soon(node);
            return;
        };
        match message {
            RelayMessage::Media(media) => {
                let datagram = wire::encode_media(&media, Instant::now());
                let len = datagram.len() as u64;
                match link.connection.send_datagram(datagram) {
                    Ok(()) => {
                        link.out_packets.inc();
                        link.out_bytes.inc_by(len);
                    }
                    Err(e) => {
                        self.0.metrics.relay_dropped.inc();
                        debug!(%node, "relay datagram not sent: {e}");
                    }
                }
            }
            RelayMessage::Control(control) => {
                let _ = link.frames.send(Frame::Relay { control });
            }
        }
    }
}

async fn write_frame(send: &mut quinn::SendStream, frame: &Frame) -> std::io::Result<()> {
    send.write_all(&wire::encode_frame(frame))
        .await
        .map_err(std::io::Error::other)
}

/// The next control frame, if it is at most `max` bytes long.
async fn read_frame(recv: &mut quinn::RecvStream, max: usize) -> std::io::Result<Frame> {
    let length = recv.read_u32().await? as usize;
    if length > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("control frame of {length} bytes"),
        ));
    }
    let mut body = vec![0u8; length];
    recv.read_exact(&mut body)
        .await
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::UnexpectedEof, e))?;
    serde_json::from_slice(&body)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}
