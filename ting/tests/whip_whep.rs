//! WHIP publish and WHEP play against a real server, with str0m clients over real UDP.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::TestServer;
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};
use ting_protocol::Role;

struct UdpPeer {
    rtc: Rtc,
    socket: UdpSocket,
    local: SocketAddr,
}

impl UdpPeer {
    fn new() -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let local = socket.local_addr().unwrap();
        let mut rtc = Rtc::builder().build(Instant::now());
        rtc.add_local_candidate(Candidate::host(local, "udp").unwrap());
        Self { rtc, socket, local }
    }

    fn offer(&mut self, media: &[(MediaKind, Direction)]) -> (SdpOffer, SdpPendingOffer, Vec<Mid>) {
        let mut change = self.rtc.sdp_api();
        let mids = media
            .iter()
            .map(|(k, d)| change.add_media(*k, *d, None, None, None))
            .collect();
        let (offer, pending) = change.apply().unwrap();
        (offer, pending, mids)
    }

    /// Runs the peer until `deadline`, calling `tick` every loop and `event` for each event.
    fn run(
        &mut self,
        deadline: Instant,
        mut tick: impl FnMut(&mut Rtc, Instant),
        mut event: impl FnMut(Event),
    ) {
        let mut buf = vec![0u8; 2000];
        while Instant::now() < deadline {
            tick(&mut self.rtc, Instant::now());
            let timeout = loop {
                match self.rtc.poll_output().unwrap() {
                    Output::Transmit(t) => {
                        let _ = self.socket.send_to(&t.contents, t.destination);
                    }
                    Output::Timeout(t) => break t,
                    Output::Event(e) => event(e),
                }
            };
            let wait = timeout
                .saturating_duration_since(Instant::now())
                .clamp(Duration::from_millis(1), Duration::from_millis(10));
            self.socket.set_read_timeout(Some(wait)).unwrap();
            match self.socket.recv_from(&mut buf) {
                Ok((n, source)) => {
                    let receive =
                        Receive::new(Protocol::Udp, source, self.local, &buf[..n]).unwrap();
                    self.rtc
                        .handle_input(Input::Receive(Instant::now(), receive))
                        .unwrap();
                }
                Err(_) => self
                    .rtc
                    .handle_input(Input::Timeout(Instant::now()))
                    .unwrap(),
            }
        }
    }
}

async fn post_sdp(server: &TestServer, path: &str, token: &str, sdp: String) -> reqwest::Response {
    reqwest::Client::new()
        .post(server.url(path))
        .bearer_auth(token)
        .header("content-type", "application/sdp")
        .body(sdp)
        .send()
        .await
        .unwrap()
}

/// Sends Opus-sized audio every 20 ms and VP8 frames every 33 ms (a keyframe each second).
fn publish_media(
    rtc: &mut Rtc,
    now: Instant,
    mids: &[Mid],
    state: &mut (Instant, Instant, Instant, u64),
) {
    let (start, next_audio, next_video, frames) = state;
    if !rtc.is_connected() {
        return;
    }
    let pt_of = |rtc: &mut Rtc, mid: Mid, codec: Codec| {
        rtc.writer(mid)
            .unwrap()
            .payload_params()
            .find(|p| p.spec().codec == codec)
            .map(|p| p.pt())
    };
    let clock = |rate: u64| now.duration_since(*start).as_micros() as u64 * rate / 1_000_000;
    if now >= *next_audio {
        *next_audio = now + Duration::from_millis(20);
        let pt = pt_of(rtc, mids[0], Codec::Opus).unwrap();
        let ts = MediaTime::new(clock(48_000), Frequency::FORTY_EIGHT_KHZ);
        rtc.writer(mids[0])
            .unwrap()
            .audio_level(-20, true)
            .write(pt, now, ts, vec![0xfc; 40])
            .unwrap();
    }
    if now >= *next_video {
        *next_video = now + Duration::from_millis(33);
        let pt = pt_of(rtc, mids[1], Codec::Vp8).unwrap();
        let ts = MediaTime::new(clock(90_000), Frequency::NINETY_KHZ);
        let mut frame = vec![0u8; 1500];
        frame[0] = if frames.is_multiple_of(30) { 0x50 } else { 0x51 };
        *frames += 1;
        rtc.writer(mids[1])
            .unwrap()
            .write(pt, now, ts, frame)
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whep_player_receives_what_a_whip_publisher_sends() {
    let server = TestServer::start(Duration::from_secs(5)).await;
    let publisher_token = server.token("live", "obs", Role::Speaker);
    let player_token = server.token("live", "player", Role::Viewer);

    let mut publisher = UdpPeer::new();
    let (offer, pending, pub_mids) = publisher.offer(&[
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
    assert_eq!(response.headers()["content-type"], "application/sdp");
    let publisher_location = response.headers()["location"].to_str().unwrap().to_owned();
    assert!(publisher_location.starts_with("/whip/live/"));
    let answer = SdpAnswer::from_sdp_string(&response.text().await.unwrap()).unwrap();
    publisher
        .rtc
        .sdp_api()
        .accept_answer(pending, answer)
        .unwrap();

    let mut player = UdpPeer::new();
    let (offer, pending, play_mids) = player.offer(&[
        (MediaKind::Audio, Direction::RecvOnly),
        (MediaKind::Video, Direction::RecvOnly),
    ]);
    let response = post_sdp(&server, "/whep/live", &player_token, offer.to_sdp_string()).await;
    assert_eq!(response.status(), 201);
    let player_location = response.headers()["location"].to_str().unwrap().to_owned();
    let answer = SdpAnswer::from_sdp_string(&response.text().await.unwrap()).unwrap();
    player.rtc.sdp_api().accept_answer(pending, answer).unwrap();

    let deadline = Instant::now() + Duration::from_secs(6);
    let publishing = std::thread::spawn(move || {
        let mut state = (Instant::now(), Instant::now(), Instant::now(), 0);
        publisher.run(
            deadline,
            |rtc, now| publish_media(rtc, now, &pub_mids, &mut state),
            |_| {},
        );
    });
    let playing = std::thread::spawn(move || {
        let (mut audio, mut video, mut first_video_key) = (0, 0, None);
        player.run(
            deadline,
            |_, _| {},
            |e| {
                if let Event::MediaData(d) = e {
                    if d.mid == play_mids[0] {
                        audio += 1;
                    } else if d.mid == play_mids[1] {
                        video += 1;
                        first_video_key.get_or_insert(d.is_keyframe());
                    }
                }
            },
        );
        (audio, video, first_video_key)
    });
    publishing.join().unwrap();
    let (audio, video, first_video_key) = playing.join().unwrap();
    assert!(
        audio > 100,
        "the player hears the publisher: {audio} audio frames"
    );
    assert!(
        video > 60,
        "the player sees the publisher: {video} video frames"
    );
    assert_eq!(first_video_key, Some(true), "playback starts on a keyframe");

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
    let mut peer = UdpPeer::new();
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

    let other_room = post_sdp(
        &server,
        "/whip/live",
        &server.token("elsewhere", "x", Role::Speaker),
        sdp.clone(),
    )
    .await;
    assert_eq!(other_room.status(), 403);
    let viewer = post_sdp(
        &server,
        "/whip/live",
        &server.token("live", "v", Role::Viewer),
        sdp.clone(),
    )
    .await;
    assert_eq!(viewer.status(), 403);
    let garbage = post_sdp(
        &server,
        "/whip/live",
        &server.token("live", "g", Role::Speaker),
        "m=video nonsense".into(),
    )
    .await;
    assert_eq!(garbage.status(), 400);
    let bad_room = post_sdp(
        &server,
        "/whip/..%2Fetc",
        &server.token("live", "g", Role::Speaker),
        sdp.clone(),
    )
    .await;
    assert_eq!(bad_room.status(), 400);
    let json = http
        .post(server.url("/whip/live"))
        .bearer_auth(server.token("live", "j", Role::Speaker))
        .header("content-type", "application/json")
        .body(sdp.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(json.status(), 415);
    let huge = post_sdp(
        &server,
        "/whip/live",
        &server.token("live", "h", Role::Speaker),
        "a".repeat(1 << 20),
    )
    .await;
    assert_eq!(huge.status(), 413);
    server.shutdown().await;
}
