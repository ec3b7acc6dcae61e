//! Recording a room's participant over WHEP: a str0m publisher sends real VP8 (made by
//! ffmpeg's libvpx) and real Opus (libopus) over WHIP; the recorder watches it like a player
//! and writes a WebM file that ffprobe and ffmpeg check.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::TestServer;
use common::peer::MediaPeer;
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime};
use ting_protocol::{ClientMessage, Role, ServerMessage};
use ting_recorder::test_media::{
    decode_errors, opus_packets, probe, video_frames_decoded, vp8_frames,
};
use tokio_util::sync::CancellationToken;

/// Publishes real VP8 and Opus over WHIP, starting `delay` after connecting, until `run`
/// has passed.
async fn publish(
    base: &str,
    room: &str,
    token: &str,
    frames: Vec<(Vec<u8>, bool)>,
    audio: Vec<Vec<u8>>,
    delay: Duration,
    run: Duration,
) -> (std::thread::JoinHandle<()>, String) {
    publish_with(base, room, token, frames, audio, delay, run, Duration::ZERO).await
}

/// As [`publish`], with the camera starting `video_after` the microphone.
#[allow(clippy::too_many_arguments)]
async fn publish_with(
    base: &str,
    room: &str,
    token: &str,
    frames: Vec<(Vec<u8>, bool)>,
    audio: Vec<Vec<u8>>,
    delay: Duration,
    run: Duration,
    video_after: Duration,
) -> (std::thread::JoinHandle<()>, String) {
    let mut peer = MediaPeer::udp();
    let (offer, pending, mids) = peer.offer(&[
        (MediaKind::Audio, Direction::SendOnly),
        (MediaKind::Video, Direction::SendOnly),
    ]);
    let response = reqwest::Client::new()
        .post(format!("{base}/whip/{room}"))
        .bearer_auth(token)
        .header("content-type", "application/sdp")
        .body(offer.to_sdp_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let answer =
        str0m::change::SdpAnswer::from_sdp_string(&response.text().await.unwrap()).unwrap();
    peer.rtc.sdp_api().accept_answer(pending, answer).unwrap();
    let deadline = Instant::now() + run;
    let thread = std::thread::spawn(move || {
        let start = Instant::now();
        let (mut v, mut a) = (0usize, 0usize);
        peer.run(
            deadline,
            |rtc, now| {
                if !rtc.is_connected() {
                    return;
                }
                let Some(elapsed) = now.duration_since(start).checked_sub(delay) else {
                    return;
                };
                let pt = |rtc: &mut str0m::Rtc, mid, codec| {
                    rtc.writer(mid)
                        .unwrap()
                        .payload_params()
                        .find(|p| p.spec().codec == codec)
                        .map(|p| p.pt())
                        .unwrap()
                };
                while a < audio.len() && elapsed >= Duration::from_millis(a as u64 * 20) {
                    let pt = pt(rtc, mids[0], Codec::Opus);
                    let ts = MediaTime::new(a as u64 * 960, Frequency::FORTY_EIGHT_KHZ);
                    rtc.writer(mids[0])
                        .unwrap()
                        .write(pt, now, ts, audio[a].clone())
                        .unwrap();
                    a += 1;
                }
                let Some(video_elapsed) = elapsed.checked_sub(video_after) else {
                    return;
                };
                while v < frames.len()
                    && video_elapsed >= Duration::from_millis(v as u64 * 1000 / 30)
                {
                    let pt = pt(rtc, mids[1], Codec::Vp8);
                    let ts = MediaTime::new(v as u64 * 3000, Frequency::NINETY_KHZ);
                    rtc.writer(mids[1])
                        .unwrap()
                        .write(pt, now, ts, frames[v].0.clone())
                        .unwrap();
                    v += 1;
                }
            },
            |_| {},
        );
    });
    (thread, location)
}

/// With automatic recording a meeting records from its first publisher on; a moderator who
/// stops it is not overruled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_recording_starts_with_the_first_publisher() {
    let dir = common::temp_dir("auto-recording");
    let data = dir.0.clone();
    let server = TestServer::start_auto_recording(dir).await;
    let (mut host, joined) =
        common::Client::join(&server, &server.token("auto", "hana", Role::Host)).await;
    let ServerMessage::Joined { settings, .. } = joined else {
        unreachable!()
    };
    assert!(!settings.recording, "nobody publishes yet");
    let (publishing, _) = publish(
        &server.url(""),
        "auto",
        &server.token("auto", "alice", Role::Speaker),
        vp8_frames(&data, 4),
        opus_packets(4, true),
        Duration::from_millis(500),
        Duration::from_secs(4),
    )
    .await;
    host.expect(
        "recording on",
        |m| matches!(m, ServerMessage::RoomUpdated { settings } if settings.recording),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    host.send(&ClientMessage::SetRecording { active: false })
        .await;
    host.expect(
        "recording off",
        |m| matches!(m, ServerMessage::RoomUpdated { settings } if !settings.recording),
    )
    .await;
    publishing.join().unwrap();
    let recordings: Vec<_> = std::fs::read_dir(data.join("recordings/auto"))
        .unwrap()
        .collect();
    assert_eq!(
        recordings.len(),
        1,
        "one recording, not restarted after the stop"
    );
    server.shutdown().await;
}

/// When everybody has left, the recording ends by itself: the recorder stops, its file is
/// finished (with its duration), and the room is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_ends_when_everybody_leaves() {
    let dir = common::temp_dir("recording-ends");
    let data = dir.0.clone();
    let server = TestServer::start_auto_recording(dir).await;
    let token = server.token("empty", "alice", Role::Speaker);
    let (publishing, location) = publish(
        &server.url(""),
        "empty",
        &token,
        vp8_frames(&data, 4),
        opus_packets(4, true),
        Duration::from_millis(300),
        Duration::from_secs(3),
    )
    .await;
    publishing.join().unwrap();
    let left = reqwest::Client::new()
        .delete(server.url(&location))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(left.status(), 200);
    // The recorder finishes its file and leaves; a newcomer finds no recording running.
    let mut finished = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let folder = std::fs::read_dir(data.join("recordings/empty"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let file = folder.join("alice.webm");
        if let Ok(out) = Command::new("ffprobe")
            .args([
                "-v",
                "error",
                "-show_entries",
                "format=duration",
                "-of",
                "csv=p=0",
            ])
            .arg(&file)
            .output()
            && let Ok(duration) = String::from_utf8_lossy(&out.stdout).trim().parse::<f64>()
        {
            finished = Some(duration);
            break;
        }
    }
    let duration = finished.expect("the file was finished with a duration");
    assert!(duration > 1.5, "duration {duration}");
    let (_late, joined) =
        common::Client::join(&server, &server.token("empty", "bo", Role::Speaker)).await;
    let ServerMessage::Joined {
        settings,
        participant_count,
        ..
    } = joined
    else {
        unreachable!()
    };
    assert!(!settings.recording, "the old recording does not go on");
    assert_eq!(participant_count, 1, "no recorder left behind");
    server.shutdown().await;
}

/// A camera turned on long after the microphone is still recorded, in the same file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_camera_turned_on_later_is_recorded_too() {
    let dir = common::temp_dir("late-camera");
    let data = dir.0.clone();
    let server = TestServer::start_auto_recording(dir).await;
    let token = server.token("late", "alice", Role::Speaker);
    let (publishing, location) = publish_with(
        &server.url(""),
        "late",
        &token,
        vp8_frames(&data, 2),
        opus_packets(7, true),
        Duration::from_millis(300),
        Duration::from_secs(7),
        Duration::from_secs(4),
    )
    .await;
    publishing.join().unwrap();
    let left = reqwest::Client::new()
        .delete(server.url(&location))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(left.status(), 200);
    let folder = std::fs::read_dir(data.join("recordings/late"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let file = folder.join("alice.webm");
    let mut frames = 0;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        frames = video_frames_decoded(&file);
        if frames > 0 {
            break;
        }
    }
    assert!(
        frames >= 30,
        "{frames} video frames recorded after the late camera"
    );
    server.shutdown().await;
}

/// The room's retention rule covers its recordings: an old one goes (audited), a new one stays.
#[tokio::test]
async fn retention_removes_old_recordings() {
    let dir = common::temp_dir("recording-retention");
    let data = dir.0.clone();
    let server = TestServer::start_with_collab(None, dir).await;
    let old = data.join("recordings/keep/1000");
    let new = data.join(format!(
        "recordings/keep/{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    ));
    for folder in [&old, &new] {
        std::fs::create_dir_all(folder).unwrap();
        std::fs::write(folder.join("alice.webm"), b"webm").unwrap();
    }
    let host = server.token("keep", "hana", Role::Host);
    let http = reqwest::Client::new();
    let report: serde_json::Value = http
        .put(server.url("/api/rooms/keep/retention"))
        .bearer_auth(&host)
        .json(&serde_json::json!({"keep_days": 30}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(report["recordings"], 1, "{report}");
    assert!(!old.exists() && new.exists());
    let audit: serde_json::Value = http
        .get(server.url("/api/rooms/keep/audit"))
        .bearer_auth(&host)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "recording expired"),
        "{audit}"
    );
    server.shutdown().await;
}

/// A moderator records the meeting: everyone sees it, the publisher gets a file of its own,
/// moderators list and download it, others may not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moderator_records_the_meeting_and_downloads_it() {
    let dir = common::temp_dir("room-recording");
    let server = TestServer::start(Duration::from_secs(5)).await;
    let host_token = server.token("weekly", "hana", Role::Host);
    let (mut host, _) = common::Client::join(&server, &host_token).await;
    let (publishing, _) = publish(
        &server.url(""),
        "weekly",
        &server.token("weekly", "alice", Role::Speaker),
        vp8_frames(&dir.0, 6),
        opus_packets(6, true),
        Duration::from_millis(1500),
        Duration::from_secs(6),
    )
    .await;
    // A speaker may not start it; the host may.
    let (mut speaker, _) =
        common::Client::join(&server, &server.token("weekly", "sam", Role::Speaker)).await;
    speaker
        .send(&ClientMessage::SetRecording { active: true })
        .await;
    speaker
        .expect("refusal", |m| matches!(m, ServerMessage::Error { .. }))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    host.send(&ClientMessage::SetRecording { active: true })
        .await;
    let on = host
        .expect(
            "recording on",
            |m| matches!(m, ServerMessage::RoomUpdated { settings } if settings.recording),
        )
        .await;
    assert!(matches!(on, ServerMessage::RoomUpdated { .. }));
    speaker
        .expect(
            "everybody sees it",
            |m| matches!(m, ServerMessage::RoomUpdated { settings } if settings.recording),
        )
        .await;
    let (_late, joined) =
        common::Client::join(&server, &server.token("weekly", "lou", Role::Speaker)).await;
    let ServerMessage::Joined { settings, .. } = joined else {
        unreachable!()
    };
    assert!(settings.recording, "a newcomer sees the recording at once");
    // The recorder is not a person: the headcount stays at the four people (host, speaker,
    // newcomer, publisher) while it records.
    let until = Instant::now() + Duration::from_secs(4);
    let mut counted = 0;
    while Instant::now() < until {
        if let Ok(Some(message)) = host.recv_within(Duration::from_millis(200)).await {
            let count = match message {
                ServerMessage::RosterCount { count }
                | ServerMessage::RosterChanged { count, .. } => count,
                _ => continue,
            };
            assert_eq!(count, 4, "the recorder is not counted");
            counted += 1;
        }
    }
    assert!(
        counted > 0,
        "the recorder's arrival was announced as a headcount"
    );
    host.send(&ClientMessage::SetRecording { active: false })
        .await;
    host.expect(
        "recording off",
        |m| matches!(m, ServerMessage::RoomUpdated { settings } if !settings.recording),
    )
    .await;
    publishing.join().unwrap();

    let http = reqwest::Client::new();
    let list_url = server.url("/api/rooms/weekly/recordings");
    let refused = http
        .get(&list_url)
        .bearer_auth(server.token("weekly", "sam", Role::Speaker))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let mut listed = serde_json::Value::Null;
    for _ in 0..50 {
        listed = http
            .get(&list_url)
            .bearer_auth(&host_token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if listed[0]["files"][0]["size"].as_u64().unwrap_or(0) > 10_000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let id = listed[0]["id"].as_str().unwrap().to_owned();
    // The listing's link downloads that file without the moderator's token, and nothing else.
    let link = listed[0]["files"][0]["url"].as_str().unwrap().to_owned();
    assert!(!link.contains(&host_token), "no join token in a URL");
    let by_link = http.get(server.url(&link)).send().await.unwrap();
    assert_eq!(by_link.status(), 200);
    let link_token = link.split("token=").nth(1).unwrap();
    let elsewhere = http
        .get(server.url("/api/rooms/weekly/recordings"))
        .bearer_auth(link_token)
        .send()
        .await
        .unwrap();
    assert_eq!(elsewhere.status(), 403, "a link lists nothing");
    assert_eq!(listed[0]["files"][0]["name"], "alice.webm", "{listed}");
    let bytes = http
        .get(server.url(&format!("/api/rooms/weekly/recordings/{id}/alice.webm")))
        .bearer_auth(&host_token)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let file = dir.0.join("downloaded.webm");
    std::fs::write(&file, &bytes).unwrap();
    let info = probe(&file);
    let codecs: Vec<&str> = info["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["codec_name"].as_str().unwrap())
        .collect();
    assert!(
        codecs.contains(&"vp8") && codecs.contains(&"opus"),
        "{codecs:?}"
    );
    let traversal = http
        .get(server.url(&format!(
            "/api/rooms/weekly/recordings/{id}/..%2F..%2Ftoken-secret"
        )))
        .bearer_auth(&host_token)
        .send()
        .await
        .unwrap();
    assert_eq!(traversal.status(), 404);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_is_recorded_to_a_webm_that_ffprobe_accepts() {
    let dir = common::temp_dir("recording");
    let server = TestServer::start(Duration::from_secs(5)).await;
    let publisher_token = server.token("rec", "alice", Role::Speaker);
    let frames = vp8_frames(&dir.0, 6);
    let audio = opus_packets(6, true);

    let (publishing, _) = publish(
        &server.url(""),
        "rec",
        &publisher_token,
        frames,
        audio,
        Duration::from_millis(1500),
        Duration::from_secs(7),
    )
    .await;

    // The recorder joins a moment later, like a moderator pressing "record".
    tokio::time::sleep(Duration::from_millis(500)).await;
    let file = dir.0.join("alice.webm");
    let stop = CancellationToken::new();
    let recording = tokio::spawn(ting_recorder::record(
        ting_recorder::WhepRecording {
            server: server.url(""),
            room: "rec".into(),
            participant: "alice".into(),
            token: server.token("rec", "recorder", Role::Viewer),
            file: file.clone(),
            local_ip: "127.0.0.1".parse().unwrap(),
            epoch: Instant::now(),
        },
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.cancel();
    let counts = recording.await.unwrap().unwrap();
    publishing.join().unwrap();
    assert!(
        counts.video_frames > 60 && counts.audio_packets > 100,
        "{counts:?}"
    );

    let info = probe(&file);
    let streams = info["streams"].as_array().unwrap();
    let stream = |kind: &str| {
        streams
            .iter()
            .find(|s| s["codec_type"] == kind)
            .cloned()
            .unwrap()
    };
    assert_eq!(stream("video")["codec_name"], "vp8");
    assert_eq!(stream("audio")["codec_name"], "opus");
    let start = |kind: &str| {
        stream(kind)["start_time"]
            .as_str()
            .unwrap()
            .parse::<f64>()
            .unwrap()
    };
    assert!(
        (start("video") - start("audio")).abs() < 0.1,
        "A/V start {} vs {}",
        start("video"),
        start("audio")
    );
    let duration: f64 = info["format"]["duration"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(duration > 3.0, "duration {duration}");
    assert_eq!(decode_errors(&file), "", "every frame decodes");
    server.shutdown().await;
}

/// The whole server killed with SIGKILL while it records: the file written so far plays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_recording_leaves_a_playable_file() {
    let dir = common::temp_dir("killed-recording");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let secret = "killed-recording-secret-0123456789";
    let mut ting = std::process::Command::new(env!("CARGO_BIN_EXE_ting"))
        .args([
            "serve",
            "--bind",
            "127.0.0.1",
            "--udp-port",
            "0",
            "--tcp-port",
            "0",
            "--shards",
            "1",
        ])
        .args(["--http-port", &port.to_string(), "--token-secret", secret])
        .arg("--data-dir")
        .arg(&dir.0)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    for _ in 0..100 {
        if reqwest::get(format!("{base}/healthz")).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let keys = ting_signalling::TokenKeys::new(secret.as_bytes()).unwrap();
    let token = |who: &str, role| {
        keys.mint(
            ting_protocol::RoomId::new("kill").unwrap(),
            who,
            who,
            role,
            Duration::from_secs(600),
        )
        .unwrap()
    };
    let (publishing, _) = publish(
        &base,
        "kill",
        &token("alice", Role::Speaker),
        vp8_frames(&dir.0, 8),
        opus_packets(8, true),
        Duration::from_millis(1500),
        Duration::from_secs(8),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = reqwest::Client::new()
        .put(format!("{base}/api/rooms/kill/recording"))
        .bearer_auth(token("hana", Role::Host))
        .json(&serde_json::json!({"active": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), 204);
    tokio::time::sleep(Duration::from_secs(4)).await;
    ting.kill().unwrap();
    ting.wait().unwrap();
    publishing.join().unwrap();

    let recordings = dir.0.join("recordings/kill");
    let recording = std::fs::read_dir(&recordings)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let file = recording.join("alice.webm");
    let info = probe(&file);
    assert_eq!(info["streams"][0]["codec_name"], "vp8", "{info}");
    let count = video_frames_decoded(&file);
    assert!(count >= 30, "{count} frames playable after the kill");
}
