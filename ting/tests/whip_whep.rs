//! WHIP publish and WHEP play against a real server, with str0m clients over real UDP.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::peer::{MediaPeer, Sender, broadcast, post_sdp};
use common::{Client, TestServer};
use str0m::media::{Direction, MediaKind};
use ting_protocol::{ClientMessage, LeaveReason, Role, RoomId, ServerMessage};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whep_player_receives_what_a_whip_publisher_sends() {
    let server = TestServer::start(Duration::from_secs(5)).await;
    let publisher_token = server.token("live", "obs", Role::Speaker);
    let player_token = server.token("live", "player", Role::Viewer);

    let publisher = Sender {
        peer: MediaPeer::udp(),
        token: &publisher_token,
        marker: b'A',
    };
    let player = (MediaPeer::udp(), player_token.as_str(), "");
    let result = broadcast(
        &server,
        "live",
        vec![publisher],
        player,
        Duration::from_secs(6),
    )
    .await;
    let received = result.received;
    assert!(
        received.audio > 100,
        "the player hears the publisher: {received:?}"
    );
    assert!(
        received.video > 60,
        "the player sees the publisher: {received:?}"
    );
    assert_eq!(
        received.first_video_keyframe,
        Some(true),
        "playback starts on a keyframe"
    );
    let (publisher_location, player_location) = (
        result.publisher_locations[0].clone(),
        result.player_location,
    );

    let http = reqwest::Client::new();
    let delete = |location: String, token: String| {
        let http = http.clone();
        let url = server.url(&location);
        async move {
            http.delete(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(
        delete(
            player_location.clone(),
            server.token("live", "someone-else", Role::Viewer)
        )
        .await,
        404
    );
    assert_eq!(
        delete(player_location.clone(), player_token.clone()).await,
        200
    );
    assert_eq!(
        delete(publisher_location.clone(), publisher_token.clone()).await,
        200
    );
    assert_eq!(
        delete(publisher_location, publisher_token).await,
        404,
        "already ended"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn whip_refuses_bad_requests_clearly() {
    let server = TestServer::start(Duration::from_secs(5)).await;
    let mut peer = MediaPeer::udp();
    let (offer, _, _) = peer.offer(&[(MediaKind::Video, Direction::SendOnly)]);
    let sdp = offer.to_sdp_string();
    let http = reqwest::Client::new();

    let no_token = http
        .post(server.url("/whip/live"))
        .header("content-type", "application/sdp")
        .body(sdp.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(no_token.status(), 401);
    let body: serde_json::Value = no_token.json().await.unwrap();
    assert_eq!(body["code"], "invalid_token");

    let refusals = [
        (
            "/whip/live",
            server.token("elsewhere", "x", Role::Speaker),
            sdp.clone(),
            403,
        ),
        (
            "/whip/live",
            server.token("live", "v", Role::Viewer),
            sdp.clone(),
            403,
        ),
        (
            "/whip/live",
            server.token("live", "g", Role::Speaker),
            "m=video nonsense".into(),
            400,
        ),
        (
            "/whip/..%2Fetc",
            server.token("live", "g", Role::Speaker),
            sdp.clone(),
            400,
        ),
        (
            "/whip/live",
            server.token("live", "h", Role::Speaker),
            "a".repeat(1 << 20),
            413,
        ),
    ];
    for (path, token, body, status) in refusals {
        let response = post_sdp(&server, path, &token, body).await;
        assert_eq!(response.status(), status, "{path}");
    }
    let json = http
        .post(server.url("/whip/live"))
        .bearer_auth(server.token("live", "j", Role::Speaker))
        .header("content-type", "application/json")
        .body(sdp.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(json.status(), 415);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whep_player_can_watch_a_named_participant() {
    let server = TestServer::start(Duration::from_secs(5)).await;
    let (alice, bob) = (
        server.token("two", "alice", Role::Speaker),
        server.token("two", "bob", Role::Speaker),
    );
    let senders = vec![
        Sender {
            peer: MediaPeer::udp(),
            token: &alice,
            marker: b'A',
        },
        Sender {
            peer: MediaPeer::udp(),
            token: &bob,
            marker: b'B',
        },
    ];
    let viewer = server.token("two", "viewer", Role::Viewer);
    let player = (MediaPeer::udp(), viewer.as_str(), "?participant=bob");
    let result = broadcast(&server, "two", senders, player, Duration::from_secs(4)).await;
    assert!(result.received.video > 30, "{:?}", result.received);
    assert_eq!(
        result.received.video_markers,
        [b'B'].into(),
        "only Bob is shown"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_whip_session_ends_when_its_participant_is_removed() {
    let server = TestServer::start(Duration::from_secs(5)).await;
    let publisher_token = server.token("live", "encoder", Role::Speaker);
    let mut peer = MediaPeer::udp();
    let (offer, _pending, _mids) = peer.offer(&[
        (MediaKind::Audio, Direction::SendOnly),
        (MediaKind::Video, Direction::SendOnly),
    ]);
    let response = post_sdp(
        &server,
        "/whip/live",
        &publisher_token,
        offer.to_sdp_string(),
    )
    .await;
    assert_eq!(response.status(), 201);
    let location = response.headers()["location"].to_str().unwrap().to_owned();

    // A host removes the encoder; its session must not outlive it.
    let (mut host, joined) = Client::join(&server, &server.token("live", "host", Role::Host)).await;
    let ServerMessage::Joined { participants, .. } = joined else {
        unreachable!()
    };
    let encoder = participants
        .iter()
        .find(|p| p.identity == "encoder")
        .expect("the encoder is in the roster")
        .id;
    host.send(&ClientMessage::RemoveParticipant {
        participant_id: encoder,
    })
    .await;
    host.expect_departure(encoder, LeaveReason::Removed).await;

    let status = reqwest::Client::new()
        .delete(server.url(&location))
        .bearer_auth(&publisher_token)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 404, "the session ended with its participant");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_on_different_shards_each_carry_their_media() {
    let server = TestServer::start_with_shards(Duration::from_secs(5), 2).await;
    // Two rooms that land on different shards.
    let names: Vec<String> = (0..32).map(|i| format!("hall-{i}")).collect();
    let shard = |n: &str| ting_sfu::shard_of_room(&RoomId::new(n).unwrap(), 2);
    let first = names.iter().find(|n| shard(n) == 0).unwrap().clone();
    let second = names.iter().find(|n| shard(n) == 1).unwrap().clone();
    for (index, (room, marker)) in [(first, b'A'), (second, b'B')].into_iter().enumerate() {
        // The room's media is on its shard's port, and only there.
        let mut peer = MediaPeer::udp();
        let (offer, _pending, _mids) = peer.offer(&[(MediaKind::Audio, Direction::SendOnly)]);
        let probe_token = server.token(&room, "probe", Role::Speaker);
        let response = post_sdp(
            &server,
            &format!("/whip/{room}"),
            &probe_token,
            offer.to_sdp_string(),
        )
        .await;
        assert_eq!(response.status(), 201);
        let answer = response.text().await.unwrap();
        let ports: Vec<u16> = answer
            .lines()
            .filter(|l| l.starts_with("a=candidate") && l.contains(" udp "))
            .filter_map(|l| l.split_whitespace().nth(5)?.parse().ok())
            .collect();
        assert_eq!(
            ports,
            vec![server.shard_media[index].port()],
            "{room} is answered by shard {index}"
        );

        let publisher_token = server.token(&room, "encoder", Role::Speaker);
        let player_token = server.token(&room, "player", Role::Viewer);
        let publisher = Sender {
            peer: MediaPeer::udp(),
            token: &publisher_token,
            marker,
        };
        let player = (MediaPeer::udp(), player_token.as_str(), "");
        let result = broadcast(
            &server,
            &room,
            vec![publisher],
            player,
            Duration::from_secs(4),
        )
        .await;
        let received = result.received;
        assert!(received.video > 30, "{room}: the player sees: {received:?}");
        assert!(
            received.audio > 50,
            "{room}: the player hears: {received:?}"
        );
        assert_eq!(
            received.video_markers.iter().copied().collect::<Vec<_>>(),
            vec![marker],
            "{room}: only its own publisher"
        );
    }
    server.shutdown().await;
}
