//! What the signalling hub needs of the cluster: where to send a joining participant, and where
//! to publish who is here.

use std::sync::Arc;

use ting_protocol::{NodeId, RoomId};
use tracing::warn;

use super::{ClusterState, Directory, select_node};

#[derive(Clone)]
pub struct ClusterLink {
    pub store: Arc<dyn ClusterState>,
    pub node: NodeId,
    pub region: String,
    pub directory: Directory,
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
            let nodes = self.store.live_nodes().await?;
            if hosts.contains(&self.node) {
                return Ok(None);
            }
            let target = match hosts.first() {
                Some(host) => nodes.iter().find(|n| n.id == *host),
                None => select_node(&nodes, Some(&self.region)),
            };
            Ok::<_, super::ClusterError>(
                target
                    .filter(|n| n.id != self.node)
                    .map(|n| n.http_url.clone()),
            )
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
