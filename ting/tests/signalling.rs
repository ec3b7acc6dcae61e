//! Signalling over a real WebSocket against a real in-process server on port 0.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Client, TestServer, join, keys, participant_of};
use ting_protocol::{
    ClientMessage, ErrorCode, LeaveReason, MAX_MESSAGE_BYTES, PublishedTrack, Role, RoomId,
    ServerMessage, TrackId, TrackSource,
};
use ting_signalling::{Claims, TokenKeys};

const GRACE: Duration = Duration::from_secs(1);

fn error_code(m: &ServerMessage) -> Option<ErrorCode> {
    match m {
        ServerMessage::Error { code, .. } => Some(*code),
        _ => None,
    }
}

/// Joins with `token` and expects an error with `code`, then the socket closing.
async fn join_fails(server: &TestServer, message: ClientMessage, code: ErrorCode) {
    let mut client = Client::connect(server).await;
    client.send(&message).await;
    let reply = client.recv().await.expect("an error before the close");
    assert_eq!(error_code(&reply), Some(code), "{reply:?}");
    if let ServerMessage::Error { message, .. } = &reply {
        assert!(!message.is_empty(), "the error explains itself");
    }
    assert_eq!(
        client.recv().await,
        None,
        "the socket is closed after a failed join"
    );
}

#[tokio::test]
async fn join_returns_the_roster_and_announces_the_newcomer() {
    let server = TestServer::start(GRACE).await;
    let (mut alice, joined) =
        Client::join(&server, &server.token("daily", "alice", Role::Host)).await;
    let ServerMessage::Joined {
        room,
        participant,
        participants,
        version,
        ..
    } = joined
    else {
        unreachable!()
    };
    assert_eq!(
        (room.as_str(), participant.identity.as_str(), version),
        ("daily", "alice", 1)
    );
    assert!(participants.is_empty());

    let (_bob, joined) = Client::join(&server, &server.token("daily", "bob", Role::Speaker)).await;
    let ServerMessage::Joined { participants, .. } = joined else {
        unreachable!()
    };
    assert_eq!(participants.len(), 1);
    assert_eq!(participants[0].identity, "alice");
    let participant = alice.expect_arrival().await;
    assert_eq!(
        (participant.identity.as_str(), participant.role),
        ("bob", Role::Speaker)
    );

    // Another room is another world.
    let (_carol, joined) =
        Client::join(&server, &server.token("other", "carol", Role::Speaker)).await;
    let ServerMessage::Joined { participants, .. } = joined else {
        unreachable!()
    };
    assert!(participants.is_empty());
    alice.expect_silence(Duration::from_millis(300)).await;
    server.shutdown().await;
}

#[tokio::test]
async fn bad_tokens_are_refused_with_clear_codes() {
    let server = TestServer::start(GRACE).await;
    let forged = TokenKeys::new(b"not-the-server-secret")
        .unwrap()
        .mint(
            RoomId::new("r").unwrap(),
            "mallory",
            "M",
            Role::Host,
            Duration::from_secs(60),
        )
        .unwrap();
    join_fails(&server, join(&forged, None), ErrorCode::InvalidToken).await;
    join_fails(&server, join("garbage", None), ErrorCode::InvalidToken).await;

    let expired = keys()
        .sign(&Claims {
            room: RoomId::new("r").unwrap(),
            sub: "late".into(),
            name: "Late".into(),
            role: Role::Speaker,
            exp: ting_signalling::token::unix_now() - 600,
            iat: None,
            region: None,
            collab: None,
            file: None,
        })
        .unwrap();
    join_fails(&server, join(&expired, None), ErrorCode::TokenExpired).await;

    let for_r = server.token("r", "eve", Role::Speaker);
    let wrong_room = ClientMessage::Join {
        version: 1,
        token: for_r.clone(),
        room: Some(RoomId::new("board-meeting").unwrap()),
        resume: None,
    };
    join_fails(&server, wrong_room, ErrorCode::WrongRoom).await;

    let old_client = ClientMessage::Join {
        version: 99,
        token: for_r.clone(),
        room: None,
        resume: None,
    };
    join_fails(&server, old_client, ErrorCode::UnsupportedVersion).await;

    join_fails(
        &server,
        join(&for_r, Some("no-such-session".into())),
        ErrorCode::ResumeFailed,
    )
    .await;
    server.shutdown().await;
}

#[tokio::test]
async fn messages_before_join_are_refused_but_the_socket_stays() {
    let server = TestServer::start(GRACE).await;
    let mut client = Client::connect(&server).await;
    client.send(&ClientMessage::Ping { nonce: 1 }).await;
    assert_eq!(
        client.recv().await.as_ref().and_then(error_code),
        Some(ErrorCode::NotJoined)
    );
    client
        .send(&join(
            &server.token("r", "late-joiner", Role::Speaker),
            None,
        ))
        .await;
    assert!(matches!(
        client.recv().await,
        Some(ServerMessage::Joined { .. })
    ));
    server.shutdown().await;
}

#[tokio::test]
async fn bad_input_gets_clear_errors_and_harms_nobody_else() {
    let server = TestServer::start(GRACE).await;
    let (mut good, _) = Client::join(&server, &server.token("r", "good", Role::Speaker)).await;
    let (mut bad, _) = Client::join(&server, &server.token("r", "bad", Role::Speaker)).await;
    good.expect_arrival().await;

    let cases: Vec<(String, ErrorCode)> = vec![
        ("{not json".into(), ErrorCode::BadMessage),
        ("42".into(), ErrorCode::BadMessage),
        (
            r#"{"type":"self_destruct"}"#.into(),
            ErrorCode::UnknownMessage,
        ),
        (
            r#"{"type":"mute","track_id":"seven","muted":true}"#.into(),
            ErrorCode::BadMessage,
        ),
        (
            r#"{"type":"leave","please":true}"#.into(),
            ErrorCode::BadMessage,
        ),
        (
            format!(
                r#"{{"type":"ping","nonce":1,"pad":"{}"}}"#,
                "x".repeat(MAX_MESSAGE_BYTES)
            ),
            ErrorCode::MessageTooLarge,
        ),
        (
            r#"{"type":"offer","sdp":"v=0 this is not sdp","tracks":[]}"#.into(),
            ErrorCode::InvalidSdp,
        ),
        (
            r#"{"type":"offer","sdp":"","tracks":[]}"#.into(),
            ErrorCode::InvalidSdp,
        ),
        (
            r#"{"type":"candidate","candidate":"candidate:garbage"}"#.into(),
            ErrorCode::BadMessage,
        ),
        (
            r#"{"type":"mute","track_id":424242,"muted":true}"#.into(),
            ErrorCode::UnknownTrack,
        ),
        (
            r#"{"type":"subscribe","subscriptions":[{"track_id":424242,"mid":"1"}]}"#.into(),
            ErrorCode::UnknownTrack,
        ),
        (
            serde_json::to_string(&join("x", None)).unwrap(),
            ErrorCode::AlreadyJoined,
        ),
    ];
    for (text, code) in cases {
        bad.send_raw(text.clone()).await;
        let reply = bad
            .expect("an error", |m| matches!(m, ServerMessage::Error { .. }))
            .await;
        assert_eq!(error_code(&reply), Some(code), "for {text:.60}: {reply:?}");
    }
    bad.send_binary(vec![0xde, 0xad, 0xbe, 0xef]).await;
    assert_eq!(
        bad.recv().await.as_ref().and_then(error_code),
        Some(ErrorCode::BadMessage)
    );

    // Both sessions still work, and the good one saw none of it.
    bad.ping(7).await;
    good.expect_silence(Duration::from_millis(300)).await;
    good.ping(8).await;
    server.shutdown().await;
}

#[tokio::test]
async fn viewers_may_not_publish() {
    let server = TestServer::start(GRACE).await;
    let (mut viewer, _) = Client::join(&server, &server.token("r", "v", Role::Viewer)).await;
    viewer
        .send(&ClientMessage::Offer {
            sdp: "v=0".into(),
            tracks: vec![PublishedTrack {
                mid: "0".into(),
                source: TrackSource::Camera,
                muted: false,
            }],
        })
        .await;
    assert_eq!(
        viewer.recv().await.as_ref().and_then(error_code),
        Some(ErrorCode::NotAllowed)
    );
    viewer
        .send(&ClientMessage::Mute {
            track_id: TrackId(1),
            muted: true,
        })
        .await;
    assert_eq!(
        viewer.recv().await.as_ref().and_then(error_code),
        Some(ErrorCode::UnknownTrack)
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_dropped_socket_resumes_as_the_same_participant() {
    let server = TestServer::start(Duration::from_secs(3)).await;
    let token = server.token("r", "wanderer", Role::Speaker);
    let (mut watcher, _) =
        Client::join(&server, &server.token("r", "watcher", Role::Speaker)).await;
    let (client, joined) = Client::join(&server, &token).await;
    let (id, resume_token) = participant_of(&joined);
    watcher.expect_arrival().await;

    client.drop_connection();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut back = Client::connect(&server).await;
    back.send(&join(&token, Some(resume_token))).await;
    let rejoined = back.recv().await.unwrap();
    let ServerMessage::Joined {
        participant,
        resumed,
        participants,
        ..
    } = &rejoined
    else {
        panic!("{rejoined:?}")
    };
    assert!(*resumed);
    assert_eq!(participant.id, id, "same participant, no ghost");
    assert_eq!(participants.len(), 1, "the roster is fresh");

    // Longer than the grace period: the watcher never saw the wanderer leave.
    watcher.expect_silence(Duration::from_secs(4)).await;
    back.ping(1).await;

    // A resume token works for its owner only.
    let (_, resume_token) = participant_of(&rejoined);
    let mut thief = Client::connect(&server).await;
    thief
        .send(&join(
            &server.token("r", "thief", Role::Speaker),
            Some(resume_token),
        ))
        .await;
    assert_eq!(
        thief.recv().await.as_ref().and_then(error_code),
        Some(ErrorCode::ResumeFailed)
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_socket_that_does_not_come_back_leaves_after_the_grace_period() {
    let server = TestServer::start(GRACE).await;
    let (mut watcher, _) =
        Client::join(&server, &server.token("r", "watcher", Role::Speaker)).await;
    let (client, joined) = Client::join(&server, &server.token("r", "gone", Role::Speaker)).await;
    let (id, _) = participant_of(&joined);
    watcher.expect_arrival().await;
    client.drop_connection();
    watcher
        .expect_departure(id, LeaveReason::Disconnected)
        .await;
    server.shutdown().await;
}

#[tokio::test]
async fn leave_says_bye_and_tells_the_room() {
    let server = TestServer::start(GRACE).await;
    let (mut watcher, _) =
        Client::join(&server, &server.token("r", "watcher", Role::Speaker)).await;
    let (mut leaver, joined) =
        Client::join(&server, &server.token("r", "leaver", Role::Speaker)).await;
    let (id, _) = participant_of(&joined);
    // A join and leave within one roster batch would never be announced at all.
    watcher.expect_arrival().await;
    leaver.send(&ClientMessage::Leave {}).await;
    assert_eq!(
        leaver
            .expect("bye", |m| matches!(m, ServerMessage::Bye { .. }))
            .await,
        ServerMessage::Bye {
            reason: LeaveReason::Left
        }
    );
    assert_eq!(leaver.recv().await, None, "then the socket closes");
    watcher.expect_departure(id, LeaveReason::Left).await;
    server.shutdown().await;
}

#[tokio::test]
async fn shutdown_tells_every_client() {
    let server = TestServer::start(GRACE).await;
    let (mut a, _) = Client::join(&server, &server.token("r1", "a", Role::Speaker)).await;
    let (mut b, _) = Client::join(&server, &server.token("r2", "b", Role::Speaker)).await;
    let shutdown = tokio::spawn(server.shutdown());
    for client in [&mut a, &mut b] {
        let bye = client
            .expect("bye", |m| matches!(m, ServerMessage::Bye { .. }))
            .await;
        assert_eq!(
            bye,
            ServerMessage::Bye {
                reason: LeaveReason::ServerShutdown
            }
        );
    }
    shutdown.await.unwrap();
}

#[tokio::test]
async fn http_endpoints_answer() {
    let server = TestServer::start(GRACE).await;
    let http = reqwest::Client::new();
    let health = http.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let (_a, _) = Client::join(&server, &server.token("metered", "a", Role::Speaker)).await;
    let metrics = http
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "ting_rooms 1",
        "ting_participants 1",
        "ting_sfu_peers 1",
        "ting_sfu_loop_seconds_bucket",
    ] {
        assert!(metrics.contains(name), "metrics lack {name}");
    }
    let quick = http
        .post(server.url("/api/quick-join"))
        .json(&serde_json::json!({"room": "standup", "name": "Dana"}))
        .send()
        .await
        .unwrap();
    assert_eq!(quick.status(), 200);
    let body: serde_json::Value = quick.json().await.unwrap();
    let claims = keys()
        .verify(body["token"].as_str().unwrap(), None)
        .unwrap();
    assert_eq!(
        (claims.room.as_str(), claims.name.as_str()),
        ("standup", "Dana")
    );
    let bad = http
        .post(server.url("/api/quick-join"))
        .json(&serde_json::json!({"room": "../../etc", "name": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let body: serde_json::Value = bad.json().await.unwrap();
    assert_eq!(body["code"], "bad_message");
    let not_json = http
        .post(server.url("/api/quick-join"))
        .body("{")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), 400);
    server.shutdown().await;
}

#[tokio::test]
async fn large_rooms_get_a_first_page_and_pages_on_request() {
    let server = TestServer::start(GRACE).await;
    let mut crowd = Vec::new();
    for i in 0..130 {
        let (client, _) = Client::join(
            &server,
            &server.token("big", &format!("user{i:03}"), Role::Attendee),
        )
        .await;
        crowd.push(client);
    }
    let (mut late, joined) =
        Client::join(&server, &server.token("big", "zed", Role::Attendee)).await;
    let ServerMessage::Joined {
        participants,
        participant_count,
        ..
    } = joined
    else {
        unreachable!()
    };
    assert_eq!(
        (participants.len(), participant_count),
        (100, 131),
        "a first page and the count"
    );

    late.send(&ClientMessage::RosterPage {
        offset: 100,
        limit: 100,
        query: None,
        viewers: false,
    })
    .await;
    let page = late
        .expect("page", |m| matches!(m, ServerMessage::RosterPage { .. }))
        .await;
    let ServerMessage::RosterPage {
        participants,
        total,
        offset,
    } = page
    else {
        unreachable!()
    };
    assert_eq!((participants.len(), total, offset), (30, 130, 100));

    late.send(&ClientMessage::RosterPage {
        offset: 0,
        limit: 10,
        query: Some("USER12".into()),
        viewers: false,
    })
    .await;
    let page = late
        .expect("search", |m| matches!(m, ServerMessage::RosterPage { .. }))
        .await;
    let ServerMessage::RosterPage {
        participants,
        total,
        ..
    } = page
    else {
        unreachable!()
    };
    assert_eq!(total, 10, "user120..user129");
    assert!(participants.iter().all(|p| p.name.starts_with("user12")));
    server.shutdown().await;
}
