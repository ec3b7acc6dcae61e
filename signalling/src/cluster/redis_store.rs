//! Cluster state in Redis, shared by every node of a cluster.
//!
//! Keys (under a prefix, `ting` by default; times are Unix milliseconds, so nodes' clocks must
//! agree to well within a TTL, as NTP gives):
//! - `{p}:nodes`: sorted set of node ids, scored by when their heartbeat expires;
//! - `{p}:node:{id}`: the node's status (JSON), expiring with the heartbeat;
//! - `{p}:node:{id}:participants`: hash participant → room; `{p}:node:{id}:rooms`: hash
//!   room → participants on the node; both expiring with the heartbeat;
//! - `{p}:participant:{id}`: the participant's node, expiring with the heartbeat;
//! - `{p}:room:{room}`: sorted set of the nodes carrying the room, scored by expiry;
//! - `{p}:epochs`: a counter; every node start takes the next value (participant ids);
//! - `{p}:room-owner:{room}`: the node that claimed the room, renewed by its heartbeats.
//!
//! A heartbeat renews all of a node's keys, so a dead node's keys vanish within one TTL.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Client, RedisError};
use ting_protocol::{NodeId, ParticipantId, RoomId};

use super::{ClusterError, ClusterState, NodeStatus};

#[derive(Clone)]
pub struct RedisCluster {
    connection: ConnectionManager,
    prefix: String,
}

impl From<RedisError> for ClusterError {
    fn from(e: RedisError) -> Self {
        ClusterError::Unavailable(e.to_string())
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Renews a room claim only if this node holds it.
const RENEW_CLAIM: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
    return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0";
/// Passes a room claim on if this node holds it (or nobody does).
const HAND_OVER_CLAIM: &str = "local held = redis.call('GET', KEYS[1]) \
    if held == false or held == ARGV[1] then \
    redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) return 1 end return 0";
/// Ends a room claim only if this node holds it.
const RELEASE_CLAIM: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

fn ttl_ms(ttl: Duration) -> u64 {
    (ttl.as_millis() as u64).max(1)
}

impl RedisCluster {
    /// Connects to `url` (`redis://host:port/db`). The connection reconnects by itself when
    /// Redis restarts; nodes then re-register with their next heartbeat.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, ClusterError> {
        let client = Client::open(url)?;
        // Heartbeats run every third of a TTL: a command must not hang for longer than that,
        // and a node that cannot reach Redis at start-up says so within seconds.
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(2)
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)));
        let connection = ConnectionManager::new_with_config(client, config).await?;
        Ok(Self {
            connection,
            prefix: prefix.to_owned(),
        })
    }

    /// Adds to `pipe`: `node` no longer hosts `room`, and lets go of its claim on it.
    fn leave_room(&self, pipe: &mut redis::Pipeline, room: &str, node: &NodeId) {
        pipe.zrem(self.room_key(room), node.as_str())
            .ignore()
            .cmd("EVAL")
            .arg(RELEASE_CLAIM)
            .arg(1)
            .arg(self.owner_key(room))
            .arg(node.as_str())
            .ignore();
    }

    fn nodes_key(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    fn node_key(&self, node: &NodeId) -> String {
        format!("{}:node:{node}", self.prefix)
    }

    fn node_participants_key(&self, node: &NodeId) -> String {
        format!("{}:node:{node}:participants", self.prefix)
    }

    fn node_rooms_key(&self, node: &NodeId) -> String {
        format!("{}:node:{node}:rooms", self.prefix)
    }

    fn participant_key(&self, participant: ParticipantId) -> String {
        format!("{}:participant:{}", self.prefix, participant.0)
    }

    fn room_key(&self, room: &str) -> String {
        format!("{}:room:{room}", self.prefix)
    }

    fn owner_key(&self, room: &str) -> String {
        format!("{}:room-owner:{room}", self.prefix)
    }

    async fn is_live(&self, node: &str) -> Result<bool, ClusterError> {
        let score: Option<u64> = self
            .connection
            .clone()
            .zscore(self.nodes_key(), node)
            .await?;
        Ok(score.is_some_and(|expires| expires > now_ms()))
    }
}

#[async_trait]
impl ClusterState for RedisCluster {
    async fn heartbeat(&self, status: &NodeStatus, ttl: Duration) -> Result<bool, ClusterError> {
        let mut con = self.connection.clone();
        let (now, ttl) = (now_ms(), ttl_ms(ttl));
        let expires = now + ttl;
        let node = &status.id;
        let json =
            serde_json::to_string(status).map_err(|e| ClusterError::Corrupt(e.to_string()))?;
        // The expired entries go first, so that a node that had expired counts as new.
        let (added, participants, rooms): (u64, Vec<u64>, Vec<String>) = redis::pipe()
            .zrembyscore(self.nodes_key(), "-inf", now)
            .ignore()
            .cmd("SET")
            .arg(self.node_key(node))
            .arg(json)
            .arg("PX")
            .arg(ttl)
            .ignore()
            .zadd(self.nodes_key(), node.as_str(), expires)
            .pexpire(self.node_participants_key(node), ttl as i64)
            .ignore()
            .pexpire(self.node_rooms_key(node), ttl as i64)
            .ignore()
            .hkeys(self.node_participants_key(node))
            .hkeys(self.node_rooms_key(node))
            .query_async(&mut con)
            .await?;
        let registered_anew = added == 1;
        if participants.is_empty() && rooms.is_empty() {
            return Ok(registered_anew);
        }
        let mut renew = redis::pipe();
        for participant in participants {
            renew
                .pexpire(self.participant_key(ParticipantId(participant)), ttl as i64)
                .ignore();
        }
        for room in rooms {
            let key = self.room_key(&room);
            renew
                .zadd(&key, node.as_str(), expires)
                .ignore()
                .zrembyscore(&key, "-inf", now)
                .ignore()
                .pexpire(&key, ttl as i64)
                .ignore()
                .cmd("EVAL")
                .arg(RENEW_CLAIM)
                .arg(1)
                .arg(self.owner_key(&room))
                .arg(node.as_str())
                .arg(ttl)
                .ignore();
        }
        renew.query_async::<()>(&mut con).await?;
        Ok(registered_anew)
    }

    async fn next_epoch(&self) -> Result<u64, ClusterError> {
        let epoch: u64 = self
            .connection
            .clone()
            .incr(format!("{}:epochs", self.prefix), 1)
            .await?;
        Ok(epoch)
    }

    async fn deregister(&self, node: &NodeId) -> Result<(), ClusterError> {
        let mut con = self.connection.clone();
        let (participants, rooms): (Vec<u64>, Vec<String>) = redis::pipe()
            .hkeys(self.node_participants_key(node))
            .hkeys(self.node_rooms_key(node))
            .query_async(&mut con)
            .await?;
        let mut remove = redis::pipe();
        for participant in participants {
            remove
                .del(self.participant_key(ParticipantId(participant)))
                .ignore();
        }
        for room in rooms {
            self.leave_room(&mut remove, &room, node);
        }
        remove
            .del(&[
                self.node_key(node),
                self.node_participants_key(node),
                self.node_rooms_key(node),
            ])
            .ignore()
            .zrem(self.nodes_key(), node.as_str())
            .ignore()
            .query_async::<()>(&mut con)
            .await?;
        Ok(())
    }

    async fn live_nodes(&self) -> Result<Vec<NodeStatus>, ClusterError> {
        let mut con = self.connection.clone();
        let ids: Vec<String> = con
            .zrangebyscore(self.nodes_key(), now_ms() + 1, "+inf")
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids
            .iter()
            .filter_map(|id| NodeId::new(id).ok())
            .map(|id| self.node_key(&id))
            .collect();
        let records: Vec<Option<String>> =
            redis::cmd("MGET").arg(&keys).query_async(&mut con).await?;
        let mut nodes = Vec::new();
        for record in records.into_iter().flatten() {
            let status: NodeStatus =
                serde_json::from_str(&record).map_err(|e| ClusterError::Corrupt(e.to_string()))?;
            nodes.push(status);
        }
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(nodes)
    }

    async fn place_participant(
        &self,
        participant: ParticipantId,
        room: &RoomId,
        node: &NodeId,
        ttl: Duration,
    ) -> Result<(), ClusterError> {
        let mut con = self.connection.clone();
        let ttl = ttl_ms(ttl);
        let (added,): (u64,) = redis::pipe()
            .cmd("SET")
            .arg(self.participant_key(participant))
            .arg(node.as_str())
            .arg("PX")
            .arg(ttl)
            .ignore()
            .hset(
                self.node_participants_key(node),
                participant.0,
                room.as_str(),
            )
            .pexpire(self.node_participants_key(node), ttl as i64)
            .ignore()
            .query_async(&mut con)
            .await?;
        if added == 0 {
            // Placed before (a retried call): the room's count already includes it.
            return Ok(());
        }
        let room_key = self.room_key(room.as_str());
        redis::pipe()
            .hincr(self.node_rooms_key(node), room.as_str(), 1)
            .ignore()
            .pexpire(self.node_rooms_key(node), ttl as i64)
            .ignore()
            .zadd(&room_key, node.as_str(), now_ms() + ttl)
            .ignore()
            .pexpire(&room_key, ttl as i64)
            .ignore()
            .query_async::<()>(&mut con)
            .await?;
        Ok(())
    }

    async fn remove_participant(
        &self,
        participant: ParticipantId,
        node: &NodeId,
    ) -> Result<(), ClusterError> {
        let mut con = self.connection.clone();
        let (room, placed_on): (Option<String>, Option<String>) = redis::pipe()
            .hget(self.node_participants_key(node), participant.0)
            .get(self.participant_key(participant))
            .query_async(&mut con)
            .await?;
        let Some(room) = room else {
            return Ok(());
        };
        let mut remove = redis::pipe();
        remove
            .hdel(self.node_participants_key(node), participant.0)
            .ignore();
        if placed_on.as_deref() == Some(node.as_str()) {
            // Not if it has moved to another node since.
            remove.del(self.participant_key(participant)).ignore();
        }
        remove.hincr(self.node_rooms_key(node), &room, -1);
        let (left,): (i64,) = remove.query_async(&mut con).await?;
        if left <= 0 {
            let mut leave = redis::pipe();
            leave.hdel(self.node_rooms_key(node), &room).ignore();
            self.leave_room(&mut leave, &room, node);
            leave.query_async::<()>(&mut con).await?;
        }
        Ok(())
    }

    async fn node_of(&self, participant: ParticipantId) -> Result<Option<NodeId>, ClusterError> {
        let node: Option<String> = self
            .connection
            .clone()
            .get(self.participant_key(participant))
            .await?;
        let Some(node) = node else {
            return Ok(None);
        };
        if !self.is_live(&node).await? {
            return Ok(None);
        }
        NodeId::new(&node)
            .map(Some)
            .map_err(|e| ClusterError::Corrupt(e.to_string()))
    }

    async fn claim_room(
        &self,
        room: &RoomId,
        node: &NodeId,
        ttl: Duration,
    ) -> Result<NodeId, ClusterError> {
        let mut con = self.connection.clone();
        let key = self.owner_key(room.as_str());
        let ttl = ttl_ms(ttl);
        // SET … NX GET: sets the claim if there is none, and returns the one there was.
        let held: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(node.as_str())
            .arg("NX")
            .arg("GET")
            .arg("PX")
            .arg(ttl)
            .query_async(&mut con)
            .await?;
        let Some(owner) = held else {
            return Ok(node.clone());
        };
        if owner != node.as_str() && !self.is_live(&owner).await? {
            // The owner died without releasing it: take the room over.
            redis::cmd("SET")
                .arg(&key)
                .arg(node.as_str())
                .arg("PX")
                .arg(ttl)
                .query_async::<()>(&mut con)
                .await?;
            return Ok(node.clone());
        }
        NodeId::new(&owner).map_err(|e| ClusterError::Corrupt(e.to_string()))
    }

    async fn hand_over_room(
        &self,
        room: &RoomId,
        from: &NodeId,
        to: &NodeId,
        ttl: Duration,
    ) -> Result<bool, ClusterError> {
        let passed: i64 = redis::cmd("EVAL")
            .arg(HAND_OVER_CLAIM)
            .arg(1)
            .arg(self.owner_key(room.as_str()))
            .arg(from.as_str())
            .arg(to.as_str())
            .arg(ttl_ms(ttl))
            .query_async(&mut self.connection.clone())
            .await?;
        Ok(passed == 1)
    }

    async fn room_nodes(&self, room: &RoomId) -> Result<Vec<NodeId>, ClusterError> {
        let ids: Vec<String> = self
            .connection
            .clone()
            .zrangebyscore(self.room_key(room.as_str()), now_ms() + 1, "+inf")
            .await?;
        let mut nodes: Vec<NodeId> = ids.iter().filter_map(|id| NodeId::new(id).ok()).collect();
        nodes.sort();
        Ok(nodes)
    }
}
