//! What the signalling hub needs of the cluster: where to send a joining participant, and where
//! to publish who is here.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use ting_protocol::{NodeId, RoomId};
use tracing::warn;

use super::{ClusterState, Directory, select_node};

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
}

impl ClusterLink {
    /// The base HTTP URL of the node a new participant of `room` should use, or `None` for
    /// this one. A room stays on the node that already carries it (until rooms can span nodes
    /// through the media relay); a new room goes to the least loaded open node of this node's
    /// region. When the store cannot be read the participant stays here: a meeting that works
    /// on a busier node beats no meeting.
    pub async fn elsewhere(&self, room: &RoomId) -> Option<String> {
        let placement = async {
            let hosts = self.store.room_nodes(room).await?;
            if hosts.contains(&self.node) {
                return Ok(None);
            }
            let nodes = self.store.live_nodes().await?;
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
    /// Hands `room` over to the least loaded other open node before this one stops; returns
    /// that node's WebSocket URL for the room's participants, or `None` when no node can take
    /// it (the meeting then ends here).
    pub async fn hand_over(&self, room: &RoomId) -> Option<String> {
        let nodes = match self.store.live_nodes().await {
            Ok(nodes) => nodes,
            Err(e) => {
                warn!(room = %room, "cannot hand the meeting over: {e}");
                return None;
            }
        };
        let others: Vec<_> = nodes.into_iter().filter(|n| n.id != self.node).collect();
        let target = select_node(&others, Some(&self.region))?;
        match self
            .store
            .hand_over_room(room, &self.node, &target.id, self.claim_ttl)
            .await
        {
            Ok(true) => Some(websocket_url(&target.http_url)),
            Ok(false) => None,
            Err(e) => {
                warn!(room = %room, "cannot hand the meeting over: {e}");
                None
            }
        }
    }
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
