//! Cluster state: which `ting` nodes are alive and how loaded, where each participant's media
//! is, and which nodes host a room. Behind one trait, with an in-memory implementation for the
//! embedded default and a Redis one for cluster mode.
//!
//! Everything a node publishes lives only as long as its heartbeats: a node that dies (or is
//! cut off) disappears from the registry, the room directory and the participant map within
//! one TTL, without anybody cleaning up after it.

mod directory;
mod link;
mod memory;
mod placement;
mod redis_store;

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use ting_protocol::{NodeId, ParticipantId, RoomId};

pub use directory::Directory;
pub use link::{ClusterLink, RecentNodes, websocket_url};
pub use memory::MemoryCluster;
pub use placement::select_node;
pub use redis_store::RedisCluster;

/// What a node tells the cluster about itself with every heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub id: NodeId,
    /// Where the node runs (a data centre or site); participants are placed in their own.
    pub region: String,
    /// Base URL of the node's HTTP and WebSocket endpoint, as clients reach it.
    pub http_url: String,
    /// Participants whose media it carries now.
    pub participants: u32,
    /// Most participants it takes.
    pub capacity: u32,
    /// Finishing its meetings before an upgrade: no new participants.
    pub draining: bool,
    /// Where the node takes links from other nodes (media relay, remote media calls).
    #[serde(default)]
    pub relay_addr: Option<std::net::SocketAddr>,
    /// Carries participants' media (`ting serve`, `ting sfu`).
    #[serde(default = "yes")]
    pub media: bool,
    /// Serves clients and hosts rooms' signalling (`ting serve`, `ting signalling`).
    #[serde(default = "yes")]
    pub signalling: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster store unavailable: {0}")]
    Unavailable(String),
    #[error("corrupt cluster record: {0}")]
    Corrupt(String),
}

#[async_trait]
pub trait ClusterState: Send + Sync {
    /// Publishes the node's status and renews everything it holds (its participants, its rooms)
    /// for `ttl`. A node calls this at a fraction of `ttl`. Returns whether the node was not
    /// registered before (its first heartbeat, or the store lost it: expired, or Redis
    /// restarted empty), in which case the node publishes its participants again.
    async fn heartbeat(&self, status: &NodeStatus, ttl: Duration) -> Result<bool, ClusterError>;

    /// A number no earlier call in this cluster returned: a starting node takes one to make
    /// its participant ids unique in the cluster.
    async fn next_epoch(&self) -> Result<u64, ClusterError>;

    /// Removes the node and what it holds at once (a clean shutdown).
    async fn deregister(&self, node: &NodeId) -> Result<(), ClusterError>;

    /// Nodes whose last heartbeat has not expired, in id order.
    async fn live_nodes(&self) -> Result<Vec<NodeStatus>, ClusterError>;

    /// Records that `node` carries the participant's media, in `room`. Lives as long as the
    /// node's heartbeats.
    async fn place_participant(
        &self,
        participant: ParticipantId,
        room: &RoomId,
        node: &NodeId,
        ttl: Duration,
    ) -> Result<(), ClusterError>;

    /// Forgets a participant placed on `node` (it left).
    async fn remove_participant(
        &self,
        participant: ParticipantId,
        node: &NodeId,
    ) -> Result<(), ClusterError>;

    /// The node carrying the participant's media, if any live node does.
    async fn node_of(&self, participant: ParticipantId) -> Result<Option<NodeId>, ClusterError>;

    /// Passes the claim on `room` from `from` to `to` (a draining node hands its meetings
    /// over); false when `from` did not hold it.
    async fn hand_over_room(
        &self,
        room: &RoomId,
        from: &NodeId,
        to: &NodeId,
        ttl: Duration,
    ) -> Result<bool, ClusterError>;

    /// The live nodes carrying participants of `room`, in id order.
    async fn room_nodes(&self, room: &RoomId) -> Result<Vec<NodeId>, ClusterError>;

    /// Makes `node` the owner of `room` unless a live node owns it already; returns the owner.
    /// The first claim wins, so that two people opening the same new room on two nodes at once
    /// meet on one. A claim lives for `ttl`, renewed by the owner's heartbeats while it carries
    /// the room, and ends when the room's last participant there leaves.
    async fn claim_room(
        &self,
        room: &RoomId,
        node: &NodeId,
        ttl: Duration,
    ) -> Result<NodeId, ClusterError>;
}
