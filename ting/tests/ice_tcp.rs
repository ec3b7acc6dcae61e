//! ICE-TCP fallback: a player that can only use TCP still receives the room's media.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::TestServer;
use common::peer::{MediaPeer, Sender, broadcast};
use ting_protocol::Role;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_with_only_tcp_receives_media_over_ice_tcp() {
    let server = TestServer::start(Duration::from_secs(5)).await;
    let publisher_token = server.token("tcp", "obs", Role::Speaker);
    let player_token = server.token("tcp", "player", Role::Viewer);
    let publisher = Sender {
        peer: MediaPeer::udp(),
        token: &publisher_token,
        marker: b'T',
    };
    let player = (MediaPeer::tcp(server.tcp_media), player_token.as_str(), "");
    let result = broadcast(
        &server,
        "tcp",
        vec![publisher],
        player,
        Duration::from_secs(6),
    )
    .await;
    let received = result.received;
    assert!(received.audio > 100, "audio arrives over TCP: {received:?}");
    assert!(received.video > 60, "video arrives over TCP: {received:?}");
    assert_eq!(received.first_video_keyframe, Some(true));
    server.shutdown().await;
}
