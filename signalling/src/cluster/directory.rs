//! Keeps the cluster's participant map and room directory in step with this node's rooms, off
//! the signalling path: joins and leaves are queued and one task applies them in order. The
//! task keeps its own copy of who is here, so that after Redis lost its data (a restart without
//! persistence) or missed an update, it publishes everything again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ting_protocol::{NodeId, ParticipantId, RoomId};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::warn;

use super::ClusterState;

/// How often a directory that failed to update tries to publish everything again.
const RESYNC_INTERVAL: Duration = Duration::from_secs(1);

/// The sending half, held by the signalling hub.
#[derive(Debug, Clone)]
pub struct Directory {
    updates: mpsc::UnboundedSender<Update>,
}

#[derive(Debug)]
enum Update {
    Joined(ParticipantId, RoomId),
    Left(ParticipantId),
    /// The store lost this node's entries: publish them all again.
    Republish,
}

impl Directory {
    /// Starts the task that writes this node's participants to `store`, each entry living as
    /// long as the node's heartbeats (`ttl`). It ends when every `Directory` is dropped.
    pub fn spawn(
        store: Arc<dyn ClusterState>,
        node: NodeId,
        ttl: Duration,
    ) -> (Self, JoinHandle<()>) {
        let (updates, receiver) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(store, node, ttl, receiver));
        (Self { updates }, task)
    }

    pub fn joined(&self, participant: ParticipantId, room: RoomId) {
        let _ = self.updates.send(Update::Joined(participant, room));
    }

    pub fn left(&self, participant: ParticipantId) {
        let _ = self.updates.send(Update::Left(participant));
    }

    /// The node was registered anew (the store had lost it): publish every participant again.
    pub fn republish(&self) {
        let _ = self.updates.send(Update::Republish);
    }
}

async fn run(
    store: Arc<dyn ClusterState>,
    node: NodeId,
    ttl: Duration,
    mut updates: mpsc::UnboundedReceiver<Update>,
) {
    let mut here: HashMap<ParticipantId, RoomId> = HashMap::new();
    let mut out_of_step = false;
    let mut resync = tokio::time::interval(RESYNC_INTERVAL);
    loop {
        tokio::select! {
            update = updates.recv() => {
                let Some(update) = update else { break };
                let applied = match update {
                    Update::Joined(participant, room) => {
                        let result = store.place_participant(participant, &room, &node, ttl).await;
                        here.insert(participant, room);
                        result
                    }
                    Update::Left(participant) => {
                        here.remove(&participant);
                        store.remove_participant(participant, &node).await
                    }
                    Update::Republish => {
                        out_of_step = true;
                        continue;
                    }
                };
                if let Err(e) = applied {
                    warn!("cluster directory update failed: {e}; publishing again shortly");
                    out_of_step = true;
                }
            }
            _ = resync.tick(), if out_of_step => {
                out_of_step = false;
                for (participant, room) in &here {
                    if let Err(e) = store.place_participant(*participant, room, &node, ttl).await {
                        warn!("cluster directory resync failed: {e}");
                        out_of_step = true;
                        break;
                    }
                }
            }
        }
    }
}
