//! A meeting spread over three nodes: three `ting serve` nodes with a real Redis, each taking
//! 12 participants, and 30 load-tester participants (real WebSocket signalling, ICE, DTLS and
//! SRTP) joining one room. The room's node carries the speakers; the participants placed on
//! the other nodes get the speakers' audio and video over the node links, and each track
//! crosses to each node once, not once per receiver there.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::load::{assert_everyone_gets_the_speakers, speakers};
use common::{SECRET, TestServer, redis_url};
use ting::config::ClusterConfig;
use ting_loadtest::{RunConfig, Scenario};
use ting_signalling::cluster::{ClusterState, RedisCluster};

fn node(prefix: &str, id: &str) -> ClusterConfig {
    common::cluster_node(prefix, id, 12)
}

/// A scenario of `loadtest/scenarios`, with everyone staying `hold` seconds after the ramp.
fn scenario(name: &str, hold: f64) -> Scenario {
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../loadtest/scenarios")
        .join(format!("{name}.toml"));
    let mut scenario = Scenario::load(&file).unwrap();
    scenario.duration_secs = hold;
    scenario
}

/// Three `ting serve` processes, node-1 to node-3, with keys under `prefix`.
async fn three_processes(prefix: &str) -> Vec<NodeProcess> {
    let mut nodes = Vec::new();
    for id in ["node-1", "node-2", "node-3"] {
        nodes.push(NodeProcess::start(prefix, id).await);
    }
    nodes
}

/// The value of a metric line `name{labels} value` in Prometheus text.
fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

async fn metrics(server: &TestServer) -> String {
    reqwest::get(format!("http://{}/metrics", server.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meeting_spans_three_nodes_and_everyone_gets_the_speakers() {
    let prefix = format!("ting-test:relay:{:x}", rand::random::<u64>());
    let store = RedisCluster::connect(&redis_url(), &prefix).await.unwrap();
    let nodes = [
        TestServer::start_in_cluster(node(&prefix, "node-1")).await,
        TestServer::start_in_cluster(node(&prefix, "node-2")).await,
        TestServer::start_in_cluster(node(&prefix, "node-3")).await,
    ];
    let scenario = scenario("cluster-30", 8.0);
    // Everyone starts at the first node; the cluster sends them where the room is.
    let config = RunConfig::new(
        scenario,
        format!("http://{}", nodes[0].http),
        SECRET.as_bytes().to_vec(),
    );
    let (report, load) = tokio::task::spawn_blocking({
        let store = store.clone();
        move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            // The nodes' load while everyone is in, read from Redis half-way through.
            let probe = std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_secs(7));
                runtime.block_on(store.live_nodes()).unwrap()
            });
            let report = ting_loadtest::run(&config).unwrap();
            (report, probe.join().unwrap())
        }
    })
    .await
    .unwrap();
    let summary = report.summary();
    println!("{summary}");
    let per_node: HashMap<String, u32> = load
        .iter()
        .map(|n| (n.id.to_string(), n.participants))
        .collect();
    println!("participants per node: {per_node:?}");

    assert_eq!(report.failed, 0, "{summary}{:?}", report.errors);
    assert_eq!((report.joined, report.connected), (30, 30), "{summary}");
    assert_eq!(per_node.values().sum::<u32>(), 30, "{per_node:?}");
    assert!(
        per_node.values().all(|n| *n >= 5 && *n <= 12),
        "the meeting spreads over all three nodes within their capacity: {per_node:?}"
    );
    assert_eq!(speakers(&report).len(), 2);
    assert_everyone_gets_the_speakers(&report, |_, _| {});
    assert_eq!(report.misrouted_frames, 0, "{summary}");
    assert!(report.loss.video_percent < 5.0, "{summary}");

    // Relay traffic: what the speakers' node sent to each other node is about one copy of
    // the speakers' tracks, while each of those nodes forwarded it to all its receivers.
    let mut texts = Vec::new();
    for server in &nodes {
        texts.push(metrics(server).await);
    }
    // The speakers' node is the one that sent media out (everyone has left by now).
    let sent_out = |text: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with("ting_relay_packets_total{direction=\"out\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let (origin, origin_text) = texts
        .iter()
        .enumerate()
        .max_by(|a, b| sent_out(a.1).total_cmp(&sent_out(b.1)))
        .unwrap();
    for (i, text) in texts.iter().enumerate().filter(|(i, _)| *i != origin) {
        let peer = format!("node-{}", i + 1);
        let relayed = metric(
            origin_text,
            &format!("ting_relay_packets_total{{direction=\"out\",peer=\"{peer}\"}}"),
        );
        let received = metric(
            text,
            &format!(
                "ting_relay_packets_total{{direction=\"in\",peer=\"node-{}\"}}",
                origin + 1
            ),
        );
        let forwarded = metric(text, "ting_sfu_packets_forwarded_total ");
        let receivers = f64::from(per_node[&peer]);
        println!(
            "node-{} → {peer}: relayed {relayed} packets (received {received}); {peer} forwarded {forwarded} to {receivers} receivers",
            origin + 1
        );
        assert!(relayed > 500.0, "tracks crossed to {peer}: {relayed}");
        assert!(received >= relayed * 0.9, "{received} of {relayed} arrived");
        assert!(
            forwarded > relayed * (receivers - 1.0) * 0.7,
            "{peer} fanned the relayed packets out to its {receivers} receivers: {forwarded}"
        );
    }
    for server in nodes {
        server.shutdown().await;
    }
}

/// A `ting serve` process in cluster mode, for tests that kill it.
struct NodeProcess {
    child: std::process::Child,
    http: std::net::SocketAddr,
    _data: common::TempDir,
}

fn free_port() -> u16 {
    // Bound and released: the node binds it a moment later (both TCP and UDP are free).
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = udp.local_addr().unwrap().port();
    drop(udp);
    port
}

impl NodeProcess {
    async fn start(prefix: &str, id: &str) -> Self {
        Self::start_role("serve", prefix, id).await
    }

    /// A node with one role: `serve`, `sfu` or `signalling`.
    async fn start_role(role: &str, prefix: &str, id: &str) -> Self {
        let data = common::temp_dir(id);
        let http = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_ting"))
            .args([role, "--bind", "127.0.0.1", "--no-ice-tcp", "--shards", "1"])
            .args(["--http-port", &http.port().to_string()])
            .args(["--udp-port", &free_port().to_string()])
            .args(["--relay-port", &free_port().to_string()])
            .args(["--redis", &redis_url(), "--redis-prefix", prefix])
            .args(["--node-id", id, "--node-capacity", "12"])
            .args(["--token-secret", SECRET])
            .arg("--data-dir")
            .arg(&data.0)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let node = Self {
            child,
            http,
            _data: data,
        };
        let start = std::time::Instant::now();
        while reqwest::get(format!("http://{http}/healthz"))
            .await
            .is_err()
        {
            assert!(start.elapsed().as_secs() < 20, "{id} did not start");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        node
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_participants_get_media_again_on_the_others() {
    let prefix = format!("ting-test:failover:{:x}", rand::random::<u64>());
    let store = RedisCluster::connect(&redis_url(), &prefix).await.unwrap();
    let mut nodes = three_processes(&prefix).await;
    let scenario = scenario("cluster-30", 14.0);
    let config = RunConfig::new(
        scenario,
        format!("http://{}", nodes[0].http),
        SECRET.as_bytes().to_vec(),
    );
    let run = tokio::task::spawn_blocking(move || ting_loadtest::run(&config).unwrap());
    // Everyone is in after the 2 s ramp; the third node dies (SIGKILL) 5 s later. Its
    // participants notice when the node link times out (3 s) and they are moved.
    tokio::time::sleep(std::time::Duration::from_secs(7)).await;
    let before = store.live_nodes().await.unwrap();
    let on_third = before
        .iter()
        .find(|n| n.id.as_str() == "node-3")
        .map_or(0, |n| n.participants);
    let mut third = nodes.pop().unwrap();
    third.child.kill().unwrap();
    let killed_at = std::time::Instant::now();
    // Its registry entry is gone within the heartbeat TTL (and the polling interval).
    loop {
        let live = store.live_nodes().await.unwrap();
        if live.iter().all(|n| n.id.as_str() != "node-3") {
            break;
        }
        let limit = ting::cluster::HEARTBEAT_TTL + std::time::Duration::from_millis(200);
        assert!(killed_at.elapsed() < limit, "{live:?}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let report = run.await.unwrap();
    let summary = report.summary();
    println!("{summary}");
    println!("participants on node-3 when it was killed: {on_third}");

    assert!(
        on_third >= 5,
        "node-3 carried part of the meeting: {before:?}"
    );
    assert_eq!(report.failed, 0, "{summary}{:?}", report.errors);
    assert_eq!(
        report.rejoined, on_third as usize,
        "exactly node-3's participants rejoined\n{summary}"
    );
    assert!(
        report.recovery_ms.count as u32 == on_third && report.recovery_ms.max < 5000.0,
        "media again within 5 s: {:?}\n{summary}",
        report.recovery_ms
    );
    // Everyone has both speakers again at the end; those who stayed put saw at most a short
    // gap.
    assert_eq!(speakers(&report).len(), 2);
    assert_everyone_gets_the_speakers(&report, |p, from| {
        if p.rejoins == 0 {
            assert!(
                from.longest_freeze_ms < 1000.0,
                "{} froze {} ms on participant {}",
                p.identity,
                from.longest_freeze_ms,
                from.sender
            );
        }
    });
    drop(nodes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signalling_node_puts_everyone_on_media_nodes() {
    let prefix = format!("ting-test:roles:{:x}", rand::random::<u64>());
    let store = RedisCluster::connect(&redis_url(), &prefix).await.unwrap();
    let signalling = NodeProcess::start_role("signalling", &prefix, "signal-1").await;
    let media = [
        NodeProcess::start_role("sfu", &prefix, "media-1").await,
        NodeProcess::start_role("sfu", &prefix, "media-2").await,
    ];
    // A media node serves no clients.
    let page = reqwest::get(format!("http://{}/", media[0].http))
        .await
        .unwrap();
    assert_eq!(page.status(), reqwest::StatusCode::NOT_FOUND);
    let scenario = scenario("smoke-10", 6.0);
    let config = RunConfig::new(
        scenario,
        format!("http://{}", signalling.http),
        SECRET.as_bytes().to_vec(),
    );
    let run = tokio::task::spawn_blocking(move || ting_loadtest::run(&config).unwrap());
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    let load = store.live_nodes().await.unwrap();
    let report = run.await.unwrap();
    let summary = report.summary();
    println!("{summary}\n{load:?}");
    let roles: Vec<(String, bool, bool, u32)> = load
        .iter()
        .map(|n| (n.id.to_string(), n.media, n.signalling, n.participants))
        .collect();
    assert_eq!(roles.len(), 3, "{roles:?}");
    for (id, media, signals, participants) in &roles {
        assert_eq!(*media, id.starts_with("media"), "{roles:?}");
        assert_eq!(*signals, id.starts_with("signal"), "{roles:?}");
        if *media {
            assert!(*participants >= 3, "media spread over both SFUs: {roles:?}");
        }
    }
    assert_eq!(report.failed, 0, "{summary}{:?}", report.errors);
    assert_eq!((report.joined, report.connected), (10, 10), "{summary}");
    assert_eq!(report.received_nothing, 0, "{summary}");
    assert_eq!(report.missing_streams, 0, "{summary}");
    drop(media);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_room_nodes_meeting_re_forms_on_the_others() {
    let prefix = format!("ting-test:room-failover:{:x}", rand::random::<u64>());
    let store = RedisCluster::connect(&redis_url(), &prefix).await.unwrap();
    let mut nodes = three_processes(&prefix).await;
    let scenario = scenario("cluster-30", 14.0);
    // Everyone comes in through node-1, which takes the room; when it is gone they come back
    // through the others (as through a load balancer).
    let config = RunConfig {
        fallback_servers: vec![
            format!("http://{}", nodes[1].http),
            format!("http://{}", nodes[2].http),
        ],
        ..RunConfig::new(
            scenario,
            format!("http://{}", nodes[0].http),
            SECRET.as_bytes().to_vec(),
        )
    };
    let run = tokio::task::spawn_blocking(move || ting_loadtest::run(&config).unwrap());
    tokio::time::sleep(std::time::Duration::from_secs(7)).await;
    let mut room_node = nodes.remove(0);
    room_node.child.kill().unwrap();
    let report = run.await.unwrap();
    let summary = report.summary();
    println!("{summary}");
    let live: Vec<String> = store
        .live_nodes()
        .await
        .unwrap()
        .iter()
        .map(|n| n.id.to_string())
        .collect();
    assert_eq!(live, ["node-2", "node-3"]);

    assert_eq!(report.failed, 0, "{summary}{:?}", report.errors);
    assert_eq!(
        report.rejoined, 30,
        "everyone's signalling was there\n{summary}"
    );
    assert!(
        report.recovery_ms.count == 30 && report.recovery_ms.max < 5000.0,
        "media again within 5 s: {:?}\n{summary}",
        report.recovery_ms
    );
    assert_eq!(speakers(&report).len(), 2);
    assert_everyone_gets_the_speakers(&report, |_, _| {});
    drop(nodes);
}
