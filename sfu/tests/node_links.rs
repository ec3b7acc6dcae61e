//! Node links over real QUIC on loopback: nodes of one cluster (same secret) link up and drive
//! each other's SFU; a node with another secret gets nothing; garbage on the port harms no
//! one; a node that goes away is reported.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ting_protocol::{NodeId, ParticipantId, RoomId};
use ting_sfu::relay::rpc::MediaCall;
use ting_sfu::{
    LinkHandler, NodeLinks, PeerOptions, SfuConfig, SfuError, SfuEvent, SfuMetrics, ShardError,
    ShardRouter, ShardSockets, spawn_shard,
};

#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<(NodeId, SfuEvent)>>,
    lost: Mutex<Vec<NodeId>>,
}

impl LinkHandler for Recorder {
    fn event(&self, from: &NodeId, event: SfuEvent) {
        self.events.lock().unwrap().push((from.clone(), event));
    }

    fn link_lost(&self, node: &NodeId) {
        self.lost.lock().unwrap().push(node.clone());
    }
}

fn router() -> ShardRouter {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let config = SfuConfig {
        host_candidates: vec![socket.local_addr().unwrap()],
        ..SfuConfig::default()
    };
    let sockets = ShardSockets {
        udp: vec![socket],
        tcp: Vec::new(),
    };
    let shard = spawn_shard(sockets, config, SfuMetrics::unregistered(), 0).unwrap();
    ShardRouter::new(vec![shard.handle]).unwrap()
}

fn start(id: &str, secret: &[u8]) -> (NodeLinks, Arc<Recorder>) {
    let links = NodeLinks::start(
        NodeId::new(id).unwrap(),
        "127.0.0.1:0".parse().unwrap(),
        secret,
        Some(router()),
        SfuMetrics::unregistered(),
    )
    .unwrap();
    let recorder = Arc::new(Recorder::default());
    links.set_handler(recorder.clone());
    (links, recorder)
}

fn add_peer(participant: u64) -> MediaCall {
    MediaCall::AddPeer {
        room: RoomId::new("linked").unwrap(),
        participant: ParticipantId(participant),
        options: PeerOptions::default(),
    }
}

fn addr(links: &NodeLinks) -> SocketAddr {
    links.local_addr().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_with_the_cluster_secret_drive_each_others_media() {
    let secret = b"the cluster secret, 32 bytes ok.";
    let (a, a_events) = start("node-a", secret);
    let (b, _) = start("node-b", secret);
    let b_id = b.node().clone();
    a.learn(&b_id, addr(&b));

    assert_eq!(a.call(&b_id, add_peer(7)).await.unwrap(), None);
    // The far SFU's errors come back as they are.
    let bad_offer = MediaCall::Offer {
        participant: ParticipantId(7),
        sdp: "v=0 garbage".into(),
        publish: Vec::new(),
    };
    assert!(matches!(
        a.call(&b_id, bad_offer).await,
        Err(ShardError::Sfu(SfuError::InvalidSdp(_)))
    ));
    assert!(matches!(
        a.call(&b_id, add_peer(7)).await,
        Err(ShardError::Sfu(SfuError::DuplicateParticipant))
    ));

    // b's SFU events about a's participant go to a.
    let event = SfuEvent::Connected {
        participant: ParticipantId(7),
    };
    assert_eq!(b.route_event(event.clone()), None, "sent to node-a");
    let other = SfuEvent::Connected {
        participant: ParticipantId(8),
    };
    assert_eq!(b.route_event(other.clone()), Some(other), "b's own");
    tokio::time::timeout(Duration::from_secs(5), async {
        while a_events.events.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(
        a_events.events.lock().unwrap()[0],
        (b_id.clone(), event),
        "a heard b's event"
    );

    // b stops: a hears of it at once.
    b.close();
    tokio::time::timeout(Duration::from_secs(5), async {
        while a_events.lost.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(a_events.lost.lock().unwrap()[0], b_id);
    assert!(a.call(&b_id, add_peer(9)).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_restarted_is_reported_lost_even_before_its_old_link_times_out() {
    let secret = b"the cluster secret, 32 bytes ok.";
    let (a, a_events) = start("node-a", secret);
    let (b, _) = start("node-b", secret);
    let b_id = b.node().clone();
    a.learn(&b_id, addr(&b));
    assert_eq!(a.call(&b_id, add_peer(1)).await.unwrap(), None);
    // node-b comes back as a new process (same id, new port) and links up with a, while the
    // old process's link still looks alive.
    let (b_again, _) = start("node-b", secret);
    b_again.learn(a.node(), addr(&a));
    assert_eq!(b_again.call(a.node(), add_peer(2)).await.unwrap(), None);
    tokio::time::timeout(Duration::from_secs(5), async {
        while a_events.lost.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(
        a_events.lost.lock().unwrap()[0],
        b_id,
        "what the old node-b carried is gone"
    );
    // a talks to the new node-b from now on.
    a.learn(&b_id, addr(&b_again));
    assert_eq!(a.call(&b_id, add_peer(3)).await.unwrap(), None);
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_the_secret_gets_nothing_and_garbage_harms_nobody() {
    let (a, _) = start("node-a", b"the cluster secret, 32 bytes ok.");
    let (b, _) = start("node-b", b"the cluster secret, 32 bytes ok.");
    let (intruder, _) = start("node-x", b"some other secret of many bytes!");
    let a_id = a.node().clone();
    let b_id = b.node().clone();

    // The intruder dials a: refused.
    intruder.learn(&a_id, addr(&a));
    assert!(matches!(
        intruder.call(&a_id, add_peer(1)).await,
        Err(ShardError::Sfu(SfuError::Unavailable))
    ));
    // a dials the intruder (say, a poisoned registry entry): a refuses to use it.
    let x_id = intruder.node().clone();
    a.learn(&x_id, addr(&intruder));
    assert!(a.call(&x_id, add_peer(2)).await.is_err());
    // An intruder claiming to be b, at its own address: refused as well.
    a.learn(&b_id, addr(&intruder));
    assert!(a.call(&b_id, add_peer(3)).await.is_err());

    // Garbage datagrams on a's port.
    let noise = UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..200u32 {
        let junk: Vec<u8> = (0..(i % 1300)).map(|j| (j * 31 + i) as u8).collect();
        noise.send_to(&junk, addr(&a)).unwrap();
    }
    // a still works for real members.
    b.learn(&a_id, addr(&a));
    assert_eq!(b.call(&a_id, add_peer(4)).await.unwrap(), None);
}
