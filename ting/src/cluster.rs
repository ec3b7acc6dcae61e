//! Cluster mode: this node's membership in the shared Redis. It registers at start-up (a node
//! that cannot reach Redis does not start), renews its entry every second with its current
//! load, and deregisters when it shuts down cleanly; a node that dies simply stops renewing
//! and expires after [`HEARTBEAT_TTL`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use prometheus::IntGauge;
use ting_signalling::cluster::{ClusterState, Directory, NodeStatus, RedisCluster};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::config::ClusterConfig;

/// How long a node counts as alive after its last heartbeat.
pub const HEARTBEAT_TTL: Duration = Duration::from_secs(2);
/// How often a node renews its entry: four chances per TTL, so that a node stalled for over a
/// second keeps its place, and a dead one is gone within two.
const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(500);

pub struct Membership {
    store: RedisCluster,
    status: NodeStatus,
    participants: IntGauge,
    /// Set by the hub while it hands its meetings over before stopping.
    draining: Arc<AtomicBool>,
}

impl Membership {
    /// Connects to the cluster's Redis and registers this node.
    pub async fn join(
        config: &ClusterConfig,
        http_addr: SocketAddr,
        relay_addr: SocketAddr,
        (media, signalling): (bool, bool),
        participants: IntGauge,
        draining: Arc<AtomicBool>,
    ) -> anyhow::Result<Self> {
        let store = RedisCluster::connect(&config.redis_url, &config.key_prefix)
            .await
            .with_context(|| {
                format!("connecting to the cluster's Redis at {}", config.redis_url)
            })?;
        let membership = Self {
            store,
            status: NodeStatus {
                id: config.node_id.clone(),
                region: config.region.clone(),
                http_url: format!("http://{http_addr}"),
                participants: 0,
                capacity: config.capacity,
                draining: false,
                relay_addr: Some(relay_addr),
                media,
                signalling,
            },
            participants,
            draining,
        };
        membership
            .beat()
            .await
            .context("registering this node in the cluster")?;
        info!(node = %config.node_id, region = %config.region, "joined the cluster");
        Ok(membership)
    }

    /// The cluster store, for the hub's participant directory.
    pub fn store(&self) -> RedisCluster {
        self.store.clone()
    }

    /// Renews the node's entry; whether the store had lost it.
    async fn beat(&self) -> anyhow::Result<bool> {
        let mut status = self.status.clone();
        status.participants = u32::try_from(self.participants.get().max(0)).unwrap_or(u32::MAX);
        status.draining = self.draining.load(Ordering::Relaxed);
        Ok(self.store.heartbeat(&status, HEARTBEAT_TTL).await?)
    }

    /// Renews the entry until `stop` turns true, then deregisters. Failed heartbeats (Redis
    /// restarting) are logged and retried: the node re-registers with the next one that works.
    ///
    /// When the store had lost the node (Redis restarted empty, or the node was cut off for
    /// longer than the TTL), `directory` publishes its participants again.
    pub fn spawn_heartbeats(
        self,
        mut stop: watch::Receiver<bool>,
        directory: Option<Directory>,
    ) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(HEARTBEAT_INTERVAL);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticks.tick() => {
                        match self.beat().await {
                            Ok(true) => {
                                warn!(node = %self.status.id, "the cluster had lost this node; registered again");
                                if let Some(directory) = &directory {
                                    directory.republish();
                                }
                            }
                            Ok(false) => {}
                            Err(e) => warn!("cluster heartbeat failed: {e:#}"),
                        }
                    }
                    changed = stop.changed() => {
                        if changed.is_err() || *stop.borrow() {
                            break;
                        }
                    }
                }
            }
            match self.store.deregister(&self.status.id).await {
                Ok(()) => info!(node = %self.status.id, "left the cluster"),
                Err(e) => warn!("leaving the cluster: {e}; the entry expires by itself"),
            }
        })
    }
}
