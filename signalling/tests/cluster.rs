//! Cluster state: the same behaviour from the in-memory store and from a real Redis (started
//! by the test command), including expiry of a node that stops sending heartbeats.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use ting_protocol::{NodeId, ParticipantId, RoomId};
use ting_signalling::cluster::{
    ClusterState, MemoryCluster, NodeStatus, RedisCluster, select_node,
};

const TTL: Duration = Duration::from_millis(1000);

fn redis_url() -> String {
    std::env::var("TING_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A key prefix of its own per test run, so that parallel tests and old runs never meet.
fn prefix(test: &str) -> String {
    let nonce: u64 = rand::random();
    format!("ting-test:{test}:{nonce:x}")
}

async fn redis(test: &str) -> (RedisCluster, String) {
    let prefix = prefix(test);
    let cluster = RedisCluster::connect(&redis_url(), &prefix)
        .await
        .expect("Redis runs (scripts/start-services)");
    (cluster, prefix)
}

fn status(id: &str, participants: u32) -> NodeStatus {
    NodeStatus {
        id: NodeId::new(id).unwrap(),
        region: "eu".into(),
        http_url: format!("http://{id}.test:8080"),
        participants,
        capacity: 100,
        draining: false,
        relay_addr: None,
        media: true,
        signalling: true,
    }
}

fn ids(nodes: &[NodeStatus]) -> Vec<String> {
    nodes.iter().map(|n| n.id.to_string()).collect()
}

fn names(nodes: &[NodeId]) -> Vec<String> {
    nodes.iter().map(|n| n.to_string()).collect()
}

/// Registry, placement, participant map and room directory, and a node that dies.
async fn behaves_as_a_cluster_store(cluster: &dyn ClusterState) {
    let first = cluster.next_epoch().await.unwrap();
    assert!(first >= 1);
    assert_eq!(
        cluster.next_epoch().await.unwrap(),
        first + 1,
        "never the same twice"
    );

    let (a, b) = (status("node-a", 2), status("node-b", 1));
    assert!(
        cluster.heartbeat(&a, TTL).await.unwrap(),
        "the first heartbeat registers"
    );
    assert!(cluster.heartbeat(&b, TTL).await.unwrap());
    assert!(
        !cluster.heartbeat(&a, TTL).await.unwrap(),
        "later ones renew"
    );
    let live = cluster.live_nodes().await.unwrap();
    assert_eq!(
        live,
        vec![a.clone(), b.clone()],
        "both nodes, as they described themselves"
    );
    assert_eq!(
        select_node(&live, Some("eu"))
            .map(|n| n.id.to_string())
            .as_deref(),
        Some("node-b"),
        "the placement sees the load they reported"
    );

    let room = RoomId::new("allhands").unwrap();
    let other_room = RoomId::new("standup").unwrap();
    let (p1, p2, p3) = (ParticipantId(1), ParticipantId(2), ParticipantId(3));
    cluster
        .place_participant(p1, &room, &a.id, TTL)
        .await
        .unwrap();
    // A retried call is harmless.
    cluster
        .place_participant(p1, &room, &a.id, TTL)
        .await
        .unwrap();
    cluster
        .place_participant(p2, &room, &b.id, TTL)
        .await
        .unwrap();
    cluster
        .place_participant(p3, &other_room, &b.id, TTL)
        .await
        .unwrap();
    assert_eq!(cluster.node_of(p1).await.unwrap(), Some(a.id.clone()));
    assert_eq!(cluster.node_of(p2).await.unwrap(), Some(b.id.clone()));
    assert_eq!(cluster.node_of(ParticipantId(99)).await.unwrap(), None);
    assert_eq!(
        names(&cluster.room_nodes(&room).await.unwrap()),
        ["node-a", "node-b"]
    );
    assert_eq!(
        names(&cluster.room_nodes(&other_room).await.unwrap()),
        ["node-b"]
    );

    // Room claims: the first wins; a claim ends when the room's last participant there leaves.
    let new_room = RoomId::new("townhall").unwrap();
    assert_eq!(
        cluster.claim_room(&new_room, &a.id, TTL).await.unwrap(),
        a.id
    );
    assert_eq!(
        cluster.claim_room(&new_room, &b.id, TTL).await.unwrap(),
        a.id,
        "a second node finds the room taken"
    );
    let p4 = ParticipantId(4);
    cluster
        .place_participant(p4, &new_room, &a.id, TTL)
        .await
        .unwrap();
    cluster.remove_participant(p4, &a.id).await.unwrap();
    assert_eq!(
        cluster.claim_room(&new_room, &b.id, TTL).await.unwrap(),
        b.id,
        "released when its last participant left"
    );
    let handover = RoomId::new("handover").unwrap();
    assert_eq!(
        cluster.claim_room(&handover, &b.id, TTL).await.unwrap(),
        b.id
    );

    // The room's last participant on node-a leaves: node-a no longer carries the room, even
    // though p1 was placed twice.
    cluster.remove_participant(p1, &a.id).await.unwrap();
    assert_eq!(cluster.node_of(p1).await.unwrap(), None);
    assert_eq!(names(&cluster.room_nodes(&room).await.unwrap()), ["node-b"]);

    // node-b stops sending heartbeats; node-a keeps on. Within one TTL node-b and all it held
    // are gone.
    cluster
        .place_participant(p1, &room, &a.id, TTL)
        .await
        .unwrap();
    for _ in 0..5 {
        tokio::time::sleep(TTL / 4).await;
        assert!(!cluster.heartbeat(&a, TTL).await.unwrap());
    }
    assert_eq!(ids(&cluster.live_nodes().await.unwrap()), ["node-a"]);
    assert_eq!(cluster.node_of(p2).await.unwrap(), None);
    assert_eq!(
        cluster.node_of(p1).await.unwrap(),
        Some(a.id.clone()),
        "renewed by heartbeats"
    );
    assert_eq!(names(&cluster.room_nodes(&room).await.unwrap()), ["node-a"]);
    assert!(cluster.room_nodes(&other_room).await.unwrap().is_empty());
    assert_eq!(
        cluster.claim_room(&handover, &a.id, TTL).await.unwrap(),
        a.id,
        "a dead node's claim is taken over"
    );

    // A clean shutdown removes a node at once.
    cluster.deregister(&a.id).await.unwrap();
    assert!(cluster.live_nodes().await.unwrap().is_empty());
    assert_eq!(cluster.node_of(p1).await.unwrap(), None);
    assert!(cluster.room_nodes(&room).await.unwrap().is_empty());

    // The node that expired comes back: it registers anew (and so knows to publish its
    // participants again).
    assert!(cluster.heartbeat(&b, TTL).await.unwrap());
    cluster.deregister(&b.id).await.unwrap();
}

#[tokio::test]
async fn memory_store() {
    behaves_as_a_cluster_store(&MemoryCluster::default()).await;
}

#[tokio::test]
async fn redis_store() {
    let (cluster, _) = redis("store").await;
    behaves_as_a_cluster_store(&cluster).await;
}

#[tokio::test]
async fn a_dead_nodes_redis_keys_are_gone_within_its_ttl() {
    let (cluster, prefix) = redis("expiry").await;
    let node = status("node-dead", 1);
    let room = RoomId::new("r1").unwrap();
    cluster.heartbeat(&node, TTL).await.unwrap();
    cluster
        .place_participant(ParticipantId(7), &room, &node.id, TTL)
        .await
        .unwrap();
    let client = redis::Client::open(redis_url()).unwrap();
    let con = client.get_multiplexed_async_connection().await.unwrap();
    let keys = || {
        let mut con = con.clone();
        let pattern = format!("{prefix}:*");
        async move {
            let mut keys: Vec<String> = redis::cmd("KEYS")
                .arg(&pattern)
                .query_async(&mut con)
                .await
                .unwrap();
            keys.sort();
            keys
        }
    };
    let before = keys().await;
    assert_eq!(
        before.len(),
        6,
        "registry, status, participant, room and two per-node keys: {before:?}"
    );
    tokio::time::sleep(TTL + Duration::from_millis(300)).await;
    // The registry set itself is pruned by the next heartbeat of any node; everything the dead
    // node held is gone by itself.
    let after = keys().await;
    let leftover: Vec<&String> = after.iter().filter(|k| !k.ends_with(":nodes")).collect();
    assert!(leftover.is_empty(), "left after the TTL: {leftover:?}");
    assert!(cluster.live_nodes().await.unwrap().is_empty());
    cluster
        .heartbeat(&status("node-other", 0), TTL)
        .await
        .unwrap();
    assert_eq!(ids(&cluster.live_nodes().await.unwrap()), ["node-other"]);
    cluster
        .deregister(&status("node-other", 0).id)
        .await
        .unwrap();
    assert!(keys().await.is_empty(), "{:?}", keys().await);
}

#[tokio::test]
async fn an_unreachable_redis_is_a_clear_error() {
    let result = RedisCluster::connect("redis://127.0.0.1:1/", "ting-test").await;
    let error = result.err().expect("no Redis listens on port 1");
    assert!(
        error.to_string().contains("cluster store unavailable"),
        "{error}"
    );
}
