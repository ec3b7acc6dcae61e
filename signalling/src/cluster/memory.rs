//! Cluster state in this process: the embedded default (one node) and the reference the Redis
//! implementation is tested against.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ting_protocol::{NodeId, ParticipantId, RoomId};

use super::{ClusterError, ClusterState, NodeStatus};

#[derive(Debug, Default)]
pub struct MemoryCluster {
    inner: Mutex<Inner>,
    epochs: AtomicU64,
}

#[derive(Debug, Default)]
struct Inner {
    /// Each node's last status and when it expires.
    nodes: HashMap<NodeId, (NodeStatus, Instant)>,
    /// Participants live exactly as long as their node.
    participants: HashMap<ParticipantId, (NodeId, RoomId)>,
    /// Room claims and when they expire unless the owner still carries the room.
    owners: HashMap<RoomId, (NodeId, Instant)>,
}

impl Inner {
    fn prune(&mut self, now: Instant) {
        self.nodes.retain(|_, (_, expires)| *expires > now);
        let nodes = &self.nodes;
        self.participants
            .retain(|_, (node, _)| nodes.contains_key(node));
        let participants = &self.participants;
        // A claim lasts while its owner is alive and carries the room, or until it expires.
        self.owners.retain(|room, (owner, expires)| {
            nodes.contains_key(owner)
                && (*expires > now || participants.values().any(|(n, r)| n == owner && r == room))
        });
    }
}

impl MemoryCluster {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.prune(Instant::now());
        inner
    }
}

#[async_trait]
impl ClusterState for MemoryCluster {
    async fn heartbeat(&self, status: &NodeStatus, ttl: Duration) -> Result<bool, ClusterError> {
        let expires = Instant::now() + ttl;
        let before = self
            .lock()
            .nodes
            .insert(status.id.clone(), (status.clone(), expires));
        Ok(before.is_none())
    }

    async fn next_epoch(&self) -> Result<u64, ClusterError> {
        Ok(self.epochs.fetch_add(1, Ordering::Relaxed) + 1)
    }

    async fn deregister(&self, node: &NodeId) -> Result<(), ClusterError> {
        let mut inner = self.lock();
        inner.nodes.remove(node);
        inner.participants.retain(|_, (n, _)| n != node);
        Ok(())
    }

    async fn live_nodes(&self) -> Result<Vec<NodeStatus>, ClusterError> {
        let mut nodes: Vec<NodeStatus> =
            self.lock().nodes.values().map(|(s, _)| s.clone()).collect();
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(nodes)
    }

    async fn place_participant(
        &self,
        participant: ParticipantId,
        room: &RoomId,
        node: &NodeId,
        _ttl: Duration,
    ) -> Result<(), ClusterError> {
        self.lock()
            .participants
            .insert(participant, (node.clone(), room.clone()));
        Ok(())
    }

    async fn remove_participant(
        &self,
        participant: ParticipantId,
        node: &NodeId,
    ) -> Result<(), ClusterError> {
        let mut inner = self.lock();
        let placed_here = matches!(inner.participants.get(&participant), Some((n, _)) if n == node);
        if !placed_here {
            return Ok(());
        }
        let Some((_, room)) = inner.participants.remove(&participant) else {
            return Ok(());
        };
        // The room's last participant on this node left: its claim ends.
        let still_here = inner
            .participants
            .values()
            .any(|(n, r)| n == node && *r == room);
        if !still_here
            && inner
                .owners
                .get(&room)
                .is_some_and(|(owner, _)| owner == node)
        {
            inner.owners.remove(&room);
        }
        Ok(())
    }

    async fn node_of(&self, participant: ParticipantId) -> Result<Option<NodeId>, ClusterError> {
        Ok(self
            .lock()
            .participants
            .get(&participant)
            .map(|(node, _)| node.clone()))
    }

    async fn claim_room(
        &self,
        room: &RoomId,
        node: &NodeId,
        ttl: Duration,
    ) -> Result<NodeId, ClusterError> {
        let expires = Instant::now() + ttl;
        let mut inner = self.lock();
        let (owner, _) = inner
            .owners
            .entry(room.clone())
            .or_insert_with(|| (node.clone(), expires));
        Ok(owner.clone())
    }

    async fn hand_over_room(
        &self,
        room: &RoomId,
        from: &NodeId,
        to: &NodeId,
        ttl: Duration,
    ) -> Result<bool, ClusterError> {
        let mut inner = self.lock();
        let held = inner
            .owners
            .get(room)
            .is_none_or(|(owner, _)| owner == from);
        if held {
            inner
                .owners
                .insert(room.clone(), (to.clone(), Instant::now() + ttl));
        }
        Ok(held)
    }

    async fn room_nodes(&self, room: &RoomId) -> Result<Vec<NodeId>, ClusterError> {
        let nodes: BTreeSet<NodeId> = self
            .lock()
            .participants
            .values()
            .filter(|(_, r)| r == room)
            .map(|(n, _)| n.clone())
            .collect();
        Ok(nodes.into_iter().collect())
    }
}
