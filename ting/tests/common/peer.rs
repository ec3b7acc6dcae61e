//! A str0m peer acting as a WHIP/WHEP client over real UDP or ICE-TCP (RFC 4571 framing).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use str0m::change::{SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid};
use str0m::net::{Protocol, Receive, TcpType};
use str0m::{Candidate, Event, Input, Output, Rtc};

enum Link {
    Udp(UdpSocket),
    Tcp(TcpStream),
}

pub struct MediaPeer {
    pub rtc: Rtc,
    link: Link,
    local: SocketAddr,
    incoming: mpsc::Receiver<(SocketAddr, Vec<u8>)>,
}

impl MediaPeer {
    pub fn udp() -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let local = socket.local_addr().unwrap();
        let reader = socket.try_clone().unwrap();
        let (tx, incoming) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 2000];
            while let Ok((n, source)) = reader.recv_from(&mut buf) {
                if tx.send((source, buf[..n].to_vec())).is_err() {
                    return;
                }
            }
        });
        let mut rtc = Rtc::builder().build(Instant::now());
        rtc.add_local_candidate(Candidate::host(local, "udp").unwrap());
        Self {
            rtc,
            link: Link::Udp(socket),
            local,
            incoming,
        }
    }

    /// A peer whose only candidate is an active ICE-TCP connection to `server`.
    pub fn tcp(server: SocketAddr) -> Self {
        let stream = TcpStream::connect(server).unwrap();
        stream.set_nodelay(true).unwrap();
        let local = stream.local_addr().unwrap();
        let mut reader = stream.try_clone().unwrap();
        let (tx, incoming) = mpsc::channel();
        std::thread::spawn(move || {
            let mut len = [0u8; 2];
            while reader.read_exact(&mut len).is_ok() {
                let mut frame = vec![0u8; usize::from(u16::from_be_bytes(len))];
                if reader.read_exact(&mut frame).is_err() || tx.send((server, frame)).is_err() {
                    return;
                }
            }
        });
        let mut rtc = Rtc::builder().build(Instant::now());
        let candidate = Candidate::builder()
            .tcp()
            .host(local)
            .tcptype(TcpType::Active)
            .build()
            .unwrap();
        rtc.add_local_candidate(candidate);
        Self {
            rtc,
            link: Link::Tcp(stream),
            local,
            incoming,
        }
    }

    pub fn offer(
        &mut self,
        media: &[(MediaKind, Direction)],
    ) -> (SdpOffer, SdpPendingOffer, Vec<Mid>) {
        let mut change = self.rtc.sdp_api();
        let mids = media
            .iter()
            .map(|(k, d)| change.add_media(*k, *d, None, None, None))
            .collect();
        let (offer, pending) = change.apply().unwrap();
        (offer, pending, mids)
    }

    /// Runs the peer until `deadline`, calling `tick` every loop and `event` for each event.
    pub fn run(
        &mut self,
        deadline: Instant,
        mut tick: impl FnMut(&mut Rtc, Instant),
        mut event: impl FnMut(Event),
    ) {
        let proto = match self.link {
            Link::Udp(_) => Protocol::Udp,
            Link::Tcp(_) => Protocol::Tcp,
        };
        while Instant::now() < deadline {
            tick(&mut self.rtc, Instant::now());
            let timeout = loop {
                match self.rtc.poll_output().unwrap() {
                    Output::Transmit(t) => match &mut self.link {
                        Link::Udp(socket) => {
                            let _ = socket.send_to(&t.contents, t.destination);
                        }
                        Link::Tcp(stream) => {
                            let len = u16::try_from(t.contents.len()).unwrap().to_be_bytes();
                            let _ = stream
                                .write_all(&len)
                                .and_then(|_| stream.write_all(&t.contents));
                        }
                    },
                    Output::Timeout(t) => break t,
                    Output::Event(e) => event(e),
                }
            };
            let wait = timeout
                .saturating_duration_since(Instant::now())
                .clamp(Duration::from_millis(1), Duration::from_millis(10));
            match self.incoming.recv_timeout(wait) {
                Ok((source, data)) => {
                    let receive = Receive::new(proto, source, self.local, &data).unwrap();
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

/// What a publisher sends: Opus-sized audio every 20 ms and VP8 frames every 33 ms, with a
/// keyframe each second.
pub struct Publisher {
    start: Instant,
    next_audio: Instant,
    next_video: Instant,
    frames: u64,
    mids: Vec<Mid>,
    /// Second payload byte of every frame, so receivers can tell publishers apart.
    marker: u8,
}

impl Publisher {
    /// `mids`: the audio m-line, then the video m-line.
    pub fn new(mids: Vec<Mid>, marker: u8) -> Self {
        let now = Instant::now();
        Self {
            start: now,
            next_audio: now,
            next_video: now,
            frames: 0,
            mids,
            marker,
        }
    }

    pub fn tick(&mut self, rtc: &mut Rtc, now: Instant) {
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
        let clock =
            |rate: u64| now.duration_since(self.start).as_micros() as u64 * rate / 1_000_000;
        if now >= self.next_audio {
            self.next_audio = now + Duration::from_millis(20);
            let pt = pt_of(rtc, self.mids[0], Codec::Opus).unwrap();
            let ts = MediaTime::new(clock(48_000), Frequency::FORTY_EIGHT_KHZ);
            let writer = rtc.writer(self.mids[0]).unwrap().audio_level(-20, true);
            let mut payload = vec![0xfc; 40];
            payload[1] = self.marker;
            writer.write(pt, now, ts, payload).unwrap();
        }
        if now >= self.next_video {
            self.next_video = now + Duration::from_millis(33);
            let pt = pt_of(rtc, self.mids[1], Codec::Vp8).unwrap();
            let ts = MediaTime::new(clock(90_000), Frequency::NINETY_KHZ);
            let mut frame = vec![0u8; 1500];
            frame[0] = if self.frames.is_multiple_of(30) {
                0x50
            } else {
                0x51
            };
            frame[1] = self.marker;
            self.frames += 1;
            rtc.writer(self.mids[1])
                .unwrap()
                .write(pt, now, ts, frame)
                .unwrap();
        }
    }
}

/// Counts what a player receives.
#[derive(Debug, Default, Clone)]
pub struct Received {
    pub audio: u32,
    pub video: u32,
    pub first_video_keyframe: Option<bool>,
    /// Publisher markers seen in video frames.
    pub video_markers: std::collections::BTreeSet<u8>,
}

impl Received {
    pub fn record(&mut self, event: &Event, audio_mid: Mid, video_mid: Mid) {
        if let Event::MediaData(d) = event {
            if d.mid == audio_mid {
                self.audio += 1;
            } else if d.mid == video_mid {
                self.video += 1;
                self.first_video_keyframe.get_or_insert(d.is_keyframe());
                self.video_markers.extend(d.data.get(1).copied());
            }
        }
    }
}

/// WHIP publishers and a WHEP player of one room, connected through a server.
pub struct Broadcast {
    pub received: Received,
    pub publisher_locations: Vec<String>,
    pub player_location: String,
}

pub async fn post_sdp(
    server: &super::TestServer,
    path: &str,
    token: &str,
    sdp: String,
) -> reqwest::Response {
    reqwest::Client::new()
        .post(server.url(path))
        .bearer_auth(token)
        .header("content-type", "application/sdp")
        .body(sdp)
        .send()
        .await
        .unwrap()
}

/// POSTs an offer for audio and video in `direction` to a WHIP/WHEP `path`, applies the
/// answer, and returns the session's `Location` and the m-lines (audio, video).
async fn negotiate(
    server: &super::TestServer,
    peer: &mut MediaPeer,
    path: &str,
    token: &str,
    direction: Direction,
) -> (String, Vec<Mid>) {
    let (offer, pending, mids) =
        peer.offer(&[(MediaKind::Audio, direction), (MediaKind::Video, direction)]);
    let response = post_sdp(server, path, token, offer.to_sdp_string()).await;
    assert_eq!(response.status(), 201, "POST {path}");
    assert_eq!(response.headers()["content-type"], "application/sdp");
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let answer =
        str0m::change::SdpAnswer::from_sdp_string(&response.text().await.unwrap()).unwrap();
    peer.rtc.sdp_api().accept_answer(pending, answer).unwrap();
    (location, mids)
}

/// One WHIP publisher: its peer, its Bearer token, and the marker its frames carry.
pub struct Sender<'a> {
    pub peer: MediaPeer,
    pub token: &'a str,
    pub marker: u8,
}

/// Publishes with each sender over WHIP, then plays with `player` over WHEP
/// (`/whep/{room}{query}`) for `duration`, and reports what the player received.
pub async fn broadcast(
    server: &super::TestServer,
    room: &str,
    senders: Vec<Sender<'_>>,
    (mut player, player_token, query): (MediaPeer, &str, &str),
    duration: Duration,
) -> Broadcast {
    let mut publishers = Vec::new();
    let mut publisher_locations = Vec::new();
    for Sender {
        mut peer,
        token,
        marker,
    } in senders
    {
        let path = format!("/whip/{room}");
        let (location, mids) =
            negotiate(server, &mut peer, &path, token, Direction::SendOnly).await;
        assert!(location.starts_with(&format!("/whip/{room}/")));
        publisher_locations.push(location);
        publishers.push((peer, Publisher::new(mids, marker)));
    }
    let path = format!("/whep/{room}{query}");
    let (player_location, play_mids) = negotiate(
        server,
        &mut player,
        &path,
        player_token,
        Direction::RecvOnly,
    )
    .await;

    let deadline = Instant::now() + duration;
    let publishing: Vec<_> = publishers
        .into_iter()
        .map(|(mut peer, mut media)| {
            std::thread::spawn(move || peer.run(deadline, |rtc, now| media.tick(rtc, now), |_| {}))
        })
        .collect();
    let playing = std::thread::spawn(move || {
        let mut received = Received::default();
        player.run(
            deadline,
            |_, _| {},
            |e| received.record(&e, play_mids[0], play_mids[1]),
        );
        received
    });
    for p in publishing {
        p.join().unwrap();
    }
    let received = playing.join().unwrap();
    Broadcast {
        received,
        publisher_locations,
        player_location,
    }
}
