//! `ting serve --redis … --node-id …`: nodes register in a real Redis with their address and
//! load, keep their entry fresh, and leave it when they shut down.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Client, TestServer, redis_url};
use ting::config::ClusterConfig;
use ting_protocol::{ClientMessage, NodeId, ParticipantId, Role, RoomId, ServerMessage};
use ting_signalling::cluster::{ClusterState, NodeStatus, RedisCluster};

fn node(prefix: &str, id: &str) -> ClusterConfig {
    common::cluster_node(prefix, id, 50)
}

async fn wait_for(
    store: &RedisCluster,
    what: &str,
    done: impl Fn(&[NodeStatus]) -> bool,
) -> Vec<NodeStatus> {
    let start = Instant::now();
    loop {
        let nodes = store.live_nodes().await.unwrap();
        if done(&nodes) {
            return nodes;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{what}: {nodes:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn participant_id(joined: &ServerMessage) -> ParticipantId {
    match joined {
        ServerMessage::Joined { participant, .. } => participant.id,
        other => panic!("not joined: {other:?}"),
    }
}

async fn eventually<F, Fut>(what: &str, check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < Duration::from_secs(5), "{what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn nodes_register_report_their_load_and_leave() {
    let prefix = format!("ting-test:nodes:{:x}", rand::random::<u64>());
    let store = RedisCluster::connect(&redis_url(), &prefix).await.unwrap();
    let one = TestServer::start_in_cluster(node(&prefix, "node-1")).await;
    let two = TestServer::start_in_cluster(node(&prefix, "node-2")).await;

    let nodes = store.live_nodes().await.unwrap();
    let ids: Vec<String> = nodes.iter().map(|n| n.id.to_string()).collect();
    assert_eq!(ids, ["node-1", "node-2"], "registered before serving");
    assert_eq!(nodes[0].http_url, format!("http://{}", one.http));
    assert_eq!(nodes[1].http_url, format!("http://{}", two.http));
    assert!(
        nodes
            .iter()
            .all(|n| n.region == "eu-test" && n.capacity == 50 && !n.draining)
    );
    assert!(nodes.iter().all(|n| n.participants == 0));

    // Two people join node-1: its next heartbeats carry the load, and the directory knows
    // where they and their room are.
    let (mut alice, joined) = Client::join(&one, &one.token("r1", "alice", Role::Speaker)).await;
    let alice_id = participant_id(&joined);
    let (_bob, joined) = Client::join(&one, &one.token("r1", "bob", Role::Viewer)).await;
    let bob_id = participant_id(&joined);
    wait_for(&store, "node-1 reports two participants", |nodes| {
        nodes
            .iter()
            .any(|n| n.id.as_str() == "node-1" && n.participants == 2)
    })
    .await;
    // Each node gives out ids from a range of its own: unique in the cluster, and exact as
    // JavaScript numbers.
    let (_carol, joined) = Client::join(&two, &two.token("r9", "carol", Role::Host)).await;
    let carol_id = participant_id(&joined);
    for id in [alice_id, bob_id, carol_id] {
        assert!(id.0 > 1 << 32 && id.0 < 1 << 53, "{id}");
    }
    assert_eq!(bob_id.0, alice_id.0 + 1);
    assert!(
        carol_id.0.abs_diff(alice_id.0) >= 1 << 32,
        "{carol_id} vs {alice_id}"
    );

    let room = RoomId::new("r1").unwrap();
    let node_1 = Some(NodeId::new("node-1").unwrap());
    eventually("both placed on node-1", || async {
        store.node_of(alice_id).await.unwrap() == node_1
            && store.node_of(bob_id).await.unwrap() == node_1
    })
    .await;
    assert_eq!(
        store.room_nodes(&room).await.unwrap(),
        vec![NodeId::new("node-1").unwrap()]
    );

    // Alice leaves: she is gone from the directory, the room stays with Bob.
    alice.send(&ClientMessage::Leave {}).await;
    eventually("alice removed", || async {
        store.node_of(alice_id).await.unwrap().is_none()
    })
    .await;
    assert_eq!(store.room_nodes(&room).await.unwrap().len(), 1);

    // Redis loses everything (a restart without persistence): the nodes register again with
    // their next heartbeat and node-1 publishes Bob again.
    let client = redis::Client::open(redis_url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut con)
        .await
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(store.live_nodes().await.unwrap().is_empty());
    eventually("bob published again after the loss", || async {
        store.node_of(bob_id).await.unwrap() == node_1
            && store.live_nodes().await.unwrap().len() == 2
    })
    .await;

    // A clean shutdown leaves the cluster at once, not after the TTL.
    two.shutdown().await;
    let ids: Vec<String> = store
        .live_nodes()
        .await
        .unwrap()
        .iter()
        .map(|n| n.id.to_string())
        .collect();
    assert_eq!(ids, ["node-1"]);
    one.shutdown().await;
    assert!(store.live_nodes().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_node_that_cannot_reach_redis_does_not_start() {
    let mut config = node("ting-test:unreachable", "node-x");
    config.redis_url = "redis://127.0.0.1:1/".into();
    let dir = common::temp_dir("unreachable");
    let serve = ting::config::ServeConfig {
        roles: ting::config::Roles::ALL,
        data_dir: dir.0.clone(),
        token_secret: common::SECRET.as_bytes().to_vec(),
        http_port: 0,
        udp_port: 0,
        tcp_port: None,
        bind: std::net::IpAddr::from([127, 0, 0, 1]),
        public_ips: vec![],
        quick_start: true,
        resume_grace: Duration::from_secs(5),
        loudest_n: 3,
        max_subscriptions: ting_sfu::DEFAULT_MAX_SUBSCRIPTIONS,
        shards: 1,
        cluster: Some(config),
        collab: None,
        auto_record: false,
    };
    let error = ting::server::start(serve, std::future::pending())
        .await
        .err()
        .expect("no Redis on port 1");
    let message = format!("{error:#}");
    assert!(
        message.contains("cluster's Redis at redis://127.0.0.1:1/"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn newcomers_are_moved_to_the_node_that_serves_their_room() {
    let prefix = format!("ting-test:moves:{:x}", rand::random::<u64>());
    let store = RedisCluster::connect(&redis_url(), &prefix).await.unwrap();
    let one = TestServer::start_in_cluster(node(&prefix, "node-1")).await;
    let two = TestServer::start_in_cluster(node(&prefix, "node-2")).await;
    let ws_one = format!("ws://{}/ws", one.http);
    let ws_two = format!("ws://{}/ws", two.http);

    // The room starts on node-1.
    let (_alice, _) = Client::join(&one, &one.token("r1", "alice", Role::Host)).await;
    let room = RoomId::new("r1").unwrap();
    eventually("r1 is on node-1", || async {
        store.room_nodes(&room).await.unwrap() == [NodeId::new("node-1").unwrap()]
    })
    .await;

    // Bob comes in through node-2: he is sent to node-1, and joins there with the same token.
    let token = two.token("r1", "bob", Role::Speaker);
    let mut bob = Client::connect(&two).await;
    bob.send(&common::join(&token, None)).await;
    let moved = bob.recv().await.expect("an answer");
    assert_eq!(
        moved,
        ServerMessage::Moved {
            url: ws_one.clone()
        }
    );
    assert_eq!(bob.recv().await, None, "node-2 closes the socket");
    let mut bob = Client::connect_url(&ws_one).await;
    bob.send(&common::join(&token, None)).await;
    assert!(matches!(
        bob.recv().await,
        Some(ServerMessage::Joined { .. })
    ));

    // A new room goes to the less loaded node once node-1's load is known.
    wait_for(&store, "node-1 reports its two participants", |nodes| {
        nodes
            .iter()
            .any(|n| n.id.as_str() == "node-1" && n.participants == 2)
    })
    .await;
    let mut carol = Client::connect(&one).await;
    carol
        .send(&common::join(&one.token("r2", "carol", Role::Host), None))
        .await;
    assert_eq!(
        carol.recv().await,
        Some(ServerMessage::Moved {
            url: ws_two.clone()
        })
    );
    // node-2 finds the room claimed for it and keeps her (no move back).
    let mut carol = Client::connect_url(&ws_two).await;
    carol
        .send(&common::join(&one.token("r2", "carol", Role::Host), None))
        .await;
    assert!(matches!(
        carol.recv().await,
        Some(ServerMessage::Joined { .. })
    ));

    // WHIP ingest is redirected the same way (RFC 9725: 307 to the other node).
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let response = http
        .post(two.url("/whip/r1"))
        .bearer_auth(two.token("r1", "obs", Role::Speaker))
        .header("content-type", "application/sdp")
        .body("v=0\r\n")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(
        response.headers()["location"],
        format!("http://{}/whip/r1", one.http).as_str()
    );

    one.shutdown().await;
    two.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopping_node_hands_its_meetings_over() {
    let prefix = format!("ting-test:handover:{:x}", rand::random::<u64>());
    let store = RedisCluster::connect(&redis_url(), &prefix).await.unwrap();
    let one = TestServer::start_in_cluster(node(&prefix, "node-1")).await;
    let two = TestServer::start_in_cluster(node(&prefix, "node-2")).await;
    let ws_two = format!("ws://{}/ws", two.http);

    let alice_token = one.token("r1", "alice", Role::Host);
    let bob_token = one.token("r1", "bob", Role::Speaker);
    let (mut alice, _) = Client::join(&one, &alice_token).await;
    let (mut bob, _) = Client::join(&one, &bob_token).await;

    // node-1 stops (SIGTERM in production): the meeting moves to node-2, everyone is told.
    let stopping = tokio::spawn(one.shutdown());
    for client in [&mut alice, &mut bob] {
        let moved = loop {
            match client.recv().await.expect("told before the socket closes") {
                ServerMessage::Moved { url } => break url,
                _ => continue,
            }
        };
        assert_eq!(moved, ws_two);
    }
    drop((alice, bob));
    stopping.await.unwrap();

    // They rejoin on node-2 as new participants and meet there.
    let mut alice = Client::connect_url(&ws_two).await;
    alice.send(&common::join(&alice_token, None)).await;
    assert!(matches!(
        alice.recv().await,
        Some(ServerMessage::Joined { .. })
    ));
    let mut bob = Client::connect_url(&ws_two).await;
    bob.send(&common::join(&bob_token, None)).await;
    match bob.recv().await {
        Some(ServerMessage::Joined { participants, .. }) => {
            assert!(
                participants.iter().any(|p| p.identity == "alice"),
                "{participants:?}"
            );
        }
        other => panic!("bob did not rejoin: {other:?}"),
    }
    let room = RoomId::new("r1").unwrap();
    eventually("r1 is on node-2 alone", || async {
        store.room_nodes(&room).await.unwrap() == [NodeId::new("node-2").unwrap()]
    })
    .await;
    two.shutdown().await;
}
