//! What the signalling hub needs of the cluster: where to send a joining participant, and where
//! to publish who is here.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use ting_protocol::{NodeId, RoomId};
use tracing::warn;

use super::{ClusterState, Directory, NodeStatus, select_node};

#[derive(Clone)]
pub struct ClusterLink {
    pub store: Arc<dyn ClusterState>,
    pub node: NodeId,
    pub region: String,
    pub directory: Directory,
    /// How long a room claimed for a node waits for its first participant there.
    pub claim_ttl: Duration,
    /// Set when the node hands its meetings over before it stops; its heartbeats say so, and
    /// placement sends nobody new here.
    pub draining: Arc<AtomicBool>,
    /// This node's base HTTP URL as clients reach it.
    pub http_url: String,
    /// The last registry read, shared by the placement steps of one join.
    pub recent_nodes: RecentNodes,
}

/// A registry read reused for 200 ms: one join asks where its room is and where its
/// media goes, and both need the live nodes; heartbeats change them only twice a second.
#[derive(Clone, Default)]
pub struct RecentNodes(Arc<std::sync::Mutex<Option<RegistryRead>>>);

/// When the registry was read, and what it said.
type RegistryRead = (std::time::Instant, Vec<NodeStatus>);

/// How long a registry read is reused.
const RECENT: Duration = Duration::from_millis(200);

impl ClusterLink {
    /// The live nodes, from a registry read of the last [`RECENT`] or a new one.
    async fn live_nodes(&self) -> Result<Vec<NodeStatus>, super::ClusterError> {
        let cache = || {
            self.recent_nodes
                .0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
        };
        if let Some((at, nodes)) = cache().as_ref()
            && at.elapsed() < RECENT
        {
            return Ok(nodes.clone());
        }
        let nodes = self.store.live_nodes().await?;
        *cache() = Some((std::time::Instant::now(), nodes.clone()));
        Ok(nodes)
    }

    /// The base HTTP URL of the node a new participant of `room` should use, or `None` for
    /// this one. A room's signalling stays on the node that carries it (its media may spread
    /// over other nodes); a new room goes to the least loaded open node of this node's
    /// region. When the store cannot be read the participant stays here: a meeting that works
    /// on a busier node beats no meeting. A node that does not answer is not sent anyone:
    /// this node takes its room over at once instead of waiting for its registry entry to
    /// expire (a crashed node's meeting re-forms within seconds).
    pub async fn elsewhere(&self, room: &RoomId) -> Option<String> {
        let placement = async {
            let hosts = self.store.room_nodes(room).await?;
            if hosts.contains(&self.node) {
                return Ok(None);
            }
            let mut nodes = self.live_nodes().await?;
            // Rooms live on nodes that serve clients (not on media-only `ting sfu` nodes).
            nodes.retain(|n| n.signalling);
            let url_of = |id: &NodeId| {
                nodes
                    .iter()
                    .find(|n| n.id == *id && n.id != self.node)
                    .map(|n| n.http_url.clone())
            };
            // The room's claim decides. A running room is claimed by the node carrying it
            // (unless that node handed it over while draining); a new room is claimed for the
            // best node (this one if none is better). The first claim wins, so people opening
            // a room at once on different nodes meet on one, and the node a participant is sent
            // to finds the claim and keeps them.
            let best = match hosts.first() {
                Some(host) => host,
                None => select_node(&nodes, Some(&self.region)).map_or(&self.node, |n| &n.id),
            };
            let owner = self.store.claim_room(room, best, self.claim_ttl).await?;
            let Some(url) = url_of(&owner) else {
                return Ok(None);
            };
            if answers(&url).await {
                return Ok(Some(url));
            }
            if self
                .store
                .hand_over_room(room, &owner, &self.node, self.claim_ttl)
                .await?
            {
                warn!(room = %room, node = %owner, "the room's node does not answer; taking the room over");
                return Ok(None);
            }
            // Someone took it over meanwhile (another participant of the room, arriving here
            // at the same moment, or another node): whoever holds it now.
            let owner = self
                .store
                .claim_room(room, &self.node, self.claim_ttl)
                .await?;
            Ok::<_, super::ClusterError>(url_of(&owner))
        };
        match placement.await {
            Ok(url) => url,
            Err(e) => {
                warn!(room = %room, "cluster placement unavailable, serving here: {e}");
                None
            }
        }
    }
}

impl ClusterLink {
    /// The node whose SFU should carry a new participant's media, or `None` for this one.
    /// This node while it has room and is in the participant's `region` (default: this node's)
    /// — relaying costs a hop; otherwise the least loaded open media node of that region, or of
    /// any region when none there has room. `placed_on` counts the participants this node
    /// placed on a node: heartbeats report load twice a second, and a join storm must not fill
    /// a node before its next one.
    pub async fn media_node(
        &self,
        placed_on: impl Fn(&NodeId) -> u32,
        region: Option<&str>,
    ) -> Option<NodeStatus> {
        let mut nodes = match self.live_nodes().await {
            Ok(nodes) => nodes,
            Err(e) => {
                warn!("cluster placement unavailable, media stays here: {e}");
                return None;
            }
        };
        for node in &mut nodes {
            node.participants = node.participants.max(placed_on(&node.id));
        }
        let wanted = region.unwrap_or(&self.region);
        let draining = self.draining.load(std::sync::atomic::Ordering::Relaxed);
        let open_here = |n: &NodeStatus| n.media && n.participants < n.capacity && !draining;
        if nodes
            .iter()
            .any(|n| n.id == self.node && open_here(n) && n.region == wanted)
        {
            return None;
        }
        // This node stays a candidate (for another region's participant when no node there
        // has room); the others need a node-link address.
        nodes.retain(|n| {
            if n.id == self.node {
                open_here(n)
            } else {
                n.media && n.relay_addr.is_some()
            }
        });
        select_node(&nodes, Some(wanted))
            .filter(|n| n.id != self.node)
            .cloned()
    }

    /// Hands every meeting over to other open nodes before this one stops, each to the least
    /// loaded counting the meetings already handed over (so that a big node's meetings spread
    /// instead of landing on one node). `rooms` are (room, participants); returns, in the same
    /// order, the WebSocket URL its participants go to, or `None` when no node can take it (the
    /// meeting then ends here).
    pub async fn hand_over(&self, rooms: &[(RoomId, u32)]) -> Vec<Option<String>> {
        let mut others: Vec<_> = match self.store.live_nodes().await {
            Ok(nodes) => nodes
                .into_iter()
                .filter(|n| n.id != self.node && n.signalling)
                .collect(),
            Err(e) => {
                warn!("cannot hand the meetings over: {e}");
                return vec![None; rooms.len()];
            }
        };
        let mut targets = Vec::with_capacity(rooms.len());
        for (room, participants) in rooms {
            let Some(target) = select_node(&others, Some(&self.region)).map(|n| n.id.clone())
            else {
                targets.push(None);
                continue;
            };
            let passed = self
                .store
                .hand_over_room(room, &self.node, &target, self.claim_ttl)
                .await;
            let Some(node) = others.iter_mut().find(|n| n.id == target) else {
                targets.push(None);
                continue;
            };
            match passed {
                Ok(true) => {
                    node.participants = node.participants.saturating_add(*participants);
                    targets.push(Some(websocket_url(&node.http_url)));
                }
                Ok(false) => targets.push(None),
                Err(e) => {
                    warn!(room = %room, "cannot hand the meeting over: {e}");
                    targets.push(None);
                }
            }
        }
        targets
    }
}

/// How long a node may take to accept a TCP connection before it counts as gone.
const PROBE_TIMEOUT: Duration = Duration::from_millis(300);

/// Whether the node at `http_url` accepts connections (a crashed node refuses them at once, a
/// dead host times out). Two tries: one lost SYN must not make a live node's room move.
async fn answers(http_url: &str) -> bool {
    let authority = http_url
        .split_once("://")
        .map_or(http_url, |(_, rest)| rest)
        .trim_end_matches('/');
    for _ in 0..2 {
        let connect = tokio::net::TcpStream::connect(authority);
        if matches!(
            tokio::time::timeout(PROBE_TIMEOUT, connect).await,
            Ok(Ok(_))
        ) {
            return true;
        }
    }
    false
}

/// `http(s)://host:port` → `ws(s)://host:port/ws`.
pub fn websocket_url(http_url: &str) -> String {
    let base = http_url.trim_end_matches('/');
    match base.strip_prefix("https://") {
        Some(rest) => format!("wss://{rest}/ws"),
        None => format!("ws://{}/ws", base.trim_start_matches("http://")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::atomic::AtomicBool;

    use crate::cluster::{MemoryCluster, NodeStatus};

    fn status(id: &str, participants: u32, capacity: u32) -> NodeStatus {
        NodeStatus {
            id: NodeId::new(id).unwrap(),
            region: "eu".into(),
            http_url: format!("http://{id}:8080"),
            participants,
            capacity,
            draining: false,
            relay_addr: None,
            media: true,
            signalling: true,
        }
    }

    #[tokio::test]
    async fn a_stopping_nodes_meetings_spread_over_the_others_within_their_capacity() {
        let store = Arc::new(MemoryCluster::default());
        let ttl = Duration::from_secs(30);
        for node in [
            status("leaving", 90, 100),
            status("b", 10, 100),
            status("c", 10, 40),
        ] {
            store.heartbeat(&node, ttl).await.unwrap();
        }
        let (directory, _task) =
            Directory::spawn(store.clone(), NodeId::new("leaving").unwrap(), ttl);
        let link = ClusterLink {
            store: store.clone(),
            node: NodeId::new("leaving").unwrap(),
            region: "eu".into(),
            directory,
            claim_ttl: ttl,
            draining: Arc::new(AtomicBool::new(true)),
            http_url: "http://leaving:8080".into(),
            recent_nodes: RecentNodes::default(),
        };
        let rooms: Vec<(RoomId, u32)> = [("r1", 40), ("r2", 20), ("r3", 20), ("r4", 10)]
            .into_iter()
            .map(|(r, n)| (RoomId::new(r).unwrap(), n))
            .collect();
        let targets = link.hand_over(&rooms).await;
        // b (10/100) takes r1 (→ 50 %); c (10/40 = 25 %) then takes r2 (→ 75 %); b (50 %)
        // takes r3 (→ 70 %); c is now over 70 % and b at 70 %: b takes r4 as well.
        assert_eq!(
            targets,
            vec![
                Some("ws://b:8080/ws".to_owned()),
                Some("ws://c:8080/ws".to_owned()),
                Some("ws://b:8080/ws".to_owned()),
                Some("ws://b:8080/ws".to_owned()),
            ]
        );
        for ((room, _), target) in rooms.iter().zip(&targets) {
            let owner = store
                .claim_room(room, &NodeId::new("x").unwrap(), ttl)
                .await
                .unwrap();
            assert_eq!(
                Some(websocket_url(&format!("http://{owner}:8080"))),
                *target
            );
        }
        // With every other node full, a meeting cannot be handed over.
        let full = MemoryCluster::default();
        full.heartbeat(&status("leaving", 1, 10), ttl)
            .await
            .unwrap();
        full.heartbeat(&status("b", 10, 10), ttl).await.unwrap();
        let link = ClusterLink {
            store: Arc::new(full),
            ..link
        };
        assert_eq!(link.hand_over(&rooms[..1]).await, vec![None]);
    }

    #[tokio::test]
    async fn a_room_whose_node_does_not_answer_is_taken_over_at_once() {
        let store = Arc::new(MemoryCluster::default());
        let ttl = Duration::from_secs(30);
        // A node that is alive (listening) and one that crashed (its port refuses), both
        // still in the registry.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let alive = format!("http://{}", listener.local_addr().unwrap());
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let crashed = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        for (id, url) in [("alive", &alive), ("crashed", &crashed), ("here", &alive)] {
            let node = NodeStatus {
                http_url: url.clone(),
                ..status(id, 10, 100)
            };
            store.heartbeat(&node, ttl).await.unwrap();
        }
        let here = NodeId::new("here").unwrap();
        let (directory, _task) = Directory::spawn(store.clone(), here.clone(), ttl);
        let link = ClusterLink {
            store: store.clone(),
            node: here.clone(),
            region: "eu".into(),
            directory,
            claim_ttl: ttl,
            draining: Arc::new(AtomicBool::new(false)),
            http_url: alive.clone(),
            recent_nodes: RecentNodes::default(),
        };
        let room_of = |name: &str| RoomId::new(name).unwrap();
        for (room, owner) in [("up", "alive"), ("down", "crashed")] {
            let owner = NodeId::new(owner).unwrap();
            store.claim_room(&room_of(room), &owner, ttl).await.unwrap();
        }
        assert_eq!(link.elsewhere(&room_of("up")).await, Some(alive.clone()));
        assert_eq!(link.elsewhere(&room_of("down")).await, None, "served here");
        let owner = store
            .claim_room(&room_of("down"), &NodeId::new("x").unwrap(), ttl)
            .await
            .unwrap();
        assert_eq!(owner, here, "the claim moved to this node");
    }

    #[tokio::test]
    async fn media_goes_to_this_node_then_to_the_least_loaded_in_the_participants_region() {
        let ttl = Duration::from_secs(30);
        let relay = Some("127.0.0.1:7890".parse().unwrap());
        let node = |id: &str, region: &str, participants: u32| NodeStatus {
            region: region.into(),
            relay_addr: relay,
            ..status(id, participants, 10)
        };
        let placed = |nodes: Vec<NodeStatus>, draining: bool| async move {
            let store = Arc::new(MemoryCluster::default());
            for n in &nodes {
                store.heartbeat(n, ttl).await.unwrap();
            }
            let here = NodeId::new("here").unwrap();
            let (directory, _task) = Directory::spawn(store.clone(), here.clone(), ttl);
            ClusterLink {
                store,
                node: here,
                region: "eu".into(),
                directory,
                claim_ttl: ttl,
                draining: Arc::new(AtomicBool::new(draining)),
                http_url: "http://here:8080".into(),
                recent_nodes: RecentNodes::default(),
            }
        };
        let chosen = |link: ClusterLink, region: Option<&'static str>| async move {
            link.media_node(|_| 0, region)
                .await
                .map(|n| n.id.to_string())
        };
        let cluster = vec![
            node("here", "eu", 5),
            node("eu-2", "eu", 2),
            node("us-1", "us", 8),
        ];
        // This node while it has room, though another is less loaded: no relay hop.
        let link = placed(cluster.clone(), false).await;
        assert_eq!(chosen(link.clone(), None).await, None);
        assert_eq!(chosen(link.clone(), Some("eu")).await, None);
        // A participant elsewhere goes to a node of its region.
        assert_eq!(chosen(link.clone(), Some("us")).await, Some("us-1".into()));
        // A region without nodes: the least loaded anywhere.
        assert_eq!(chosen(link, Some("ap")).await, Some("eu-2".into()));
        // Full here: the least loaded of the region.
        let mut full = cluster.clone();
        full[0].participants = 10;
        assert_eq!(
            chosen(placed(full.clone(), false).await, None).await,
            Some("eu-2".into())
        );
        // The region full as well: another region rather than nobody.
        full[1].participants = 10;
        assert_eq!(
            chosen(placed(full, false).await, None).await,
            Some("us-1".into())
        );
        // Draining: never here.
        assert_eq!(
            chosen(placed(cluster, true).await, None).await,
            Some("eu-2".into())
        );
    }

    #[test]
    fn websocket_urls_follow_the_http_scheme() {
        assert_eq!(
            websocket_url("http://10.0.0.2:8080"),
            "ws://10.0.0.2:8080/ws"
        );
        assert_eq!(
            websocket_url("https://meet.example/"),
            "wss://meet.example/ws"
        );
    }
}
