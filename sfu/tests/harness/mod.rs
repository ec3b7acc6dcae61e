//! A virtual-time network: an SFU core (and a second one, "far", standing for another node of
//! a cluster, to which the first relays) and several str0m peers acting as browsers, with a
//! bottleneck model on each peer's downlink. Deterministic: no sockets, no wall clock.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::format::{Codec, PayloadParams};
use str0m::media::{
    Direction, Frequency, KeyframeRequestKind, MediaKind, MediaTime, Mid, Rid, Simulcast,
    SimulcastLayer,
};
use str0m::net::{Protocol, Receive, Transmit};
use str0m::{Candidate, Event, Input, Output, Rtc};
use ting_protocol::{NodeId, ParticipantId, RoomId, TrackId, TrackKind};
use ting_sfu::{
    PeerOptions, PublishRequest, RelayMessage, Sfu, SfuConfig, SfuEvent, SfuMetrics, SfuOutput,
    SubscribeRequest,
};

pub const SFU_ADDR: &str = "10.0.0.1:7882";
pub const FAR_ADDR: &str = "10.0.0.2:7882";
const TICK: Duration = Duration::from_millis(2);
const LATENCY: Duration = Duration::from_millis(15);
/// Packets that would wait longer than this in a bottleneck queue are dropped.
const QUEUE_LIMIT: Duration = Duration::from_millis(250);

/// Simulcast ladder the simulated browsers send: (rid, bitrate, height).
pub const LADDER: [(&str, u64, u16); 3] = [
    ("q", 150_000, 90),
    ("h", 500_000, 180),
    ("f", 1_500_000, 360),
];

/// A received frame, as a receiving peer saw it.
#[derive(Debug, Clone)]
pub struct Frame {
    pub at: Instant,
    pub keyframe: bool,
    /// The layer marker the sender put in the payload (`b'q'`, `b'h'`, `b'f'`, or `b'a'` for
    /// audio), and the sending participant.
    pub layer: u8,
    pub from: u64,
}

pub struct Peer {
    pub id: ParticipantId,
    /// Connected to the far node's core.
    pub far: bool,
    pub addr: SocketAddr,
    pub rtc: Rtc,
    pub audio_mid: Option<Mid>,
    pub video_mid: Option<Mid>,
    pub audio_track: TrackId,
    pub video_track: TrackId,
    pub recv_audio: Vec<Mid>,
    pub recv_video: Vec<Mid>,
    pub received: HashMap<Mid, Vec<Frame>>,
    pub keyframe_requests: Vec<(Instant, Option<Rid>)>,
    pub connected: bool,
    pub publishing: bool,
    /// Audio level to send (RFC 6464, -127 = silence).
    pub audio_level: i8,
    video_codec: Codec,
    /// Simulcast layers the SFU asked for (`None`: all).
    pub active_layers: Option<Vec<String>>,
    /// A layer the encoder starts late (as browsers start their top layer last).
    pub late_layer: Option<(&'static str, Instant)>,
    force_keyframe: Vec<Option<Rid>>,
    next_audio: Instant,
    next_video: Instant,
    video_frames: u64,
    pending: Option<SdpPendingOffer>,
}

struct Link {
    capacity_bps: Option<u64>,
    busy_until: Instant,
    /// Random loss in packets per thousand.
    loss_per_mille: u32,
}

struct InFlight {
    at: Instant,
    transmit: Transmit,
}

/// Relay traffic between the two cores.
#[derive(Debug, Default)]
pub struct RelayStats {
    /// Media packets the near core sent to the far one, by simulcast layer (`b'q'`, `b'h'`,
    /// `b'f'`; `b'a'` for audio).
    pub media: HashMap<u8, u64>,
    pub control: u64,
    /// Media packets lost on the way (by `relay_loss_per_mille`).
    pub lost: u64,
}

pub struct Net {
    pub now: Instant,
    pub sfu: Sfu,
    /// Another node's core: peers added with `add_peer_on(true, ..)` connect to it.
    pub far: Sfu,
    pub far_metrics: SfuMetrics,
    pub relay: RelayStats,
    /// Random loss of relayed media between the nodes, per thousand.
    pub relay_loss_per_mille: u32,
    relay_in_flight: Vec<(bool, NodeId, RelayMessage)>,
    pub peers: Vec<Peer>,
    pub events: Vec<SfuEvent>,
    downlinks: HashMap<SocketAddr, Link>,
    in_flight: Vec<InFlight>,
    next_track: u64,
    /// Video codec the peers added from now on use.
    pub video_codec: Codec,
    /// How the SFU sets up the media connections of peers added from now on.
    pub peer_options: PeerOptions,
    /// Bytes delivered to each peer, for bandwidth checks.
    pub delivered_bytes: HashMap<SocketAddr, u64>,
    pub dropped: u64,
    /// The core's metrics (shared atomics).
    pub metrics: SfuMetrics,
    /// Seeded xorshift state for link loss: runs are repeatable.
    rng: u64,
}

pub fn sfu_addr() -> SocketAddr {
    SFU_ADDR.parse().unwrap()
}

pub fn far_addr() -> SocketAddr {
    FAR_ADDR.parse().unwrap()
}

pub fn near_node() -> NodeId {
    NodeId::new("near").unwrap()
}

pub fn far_node() -> NodeId {
    NodeId::new("far").unwrap()
}

impl Net {
    pub fn new() -> Self {
        let now = Instant::now();
        let metrics = SfuMetrics::unregistered();
        let config = SfuConfig {
            host_candidates: vec![sfu_addr()],
            ..Default::default()
        };
        let far_config = SfuConfig {
            host_candidates: vec![far_addr()],
            ..Default::default()
        };
        let far_metrics = SfuMetrics::unregistered();
        Self {
            now,
            sfu: Sfu::new(config, metrics.clone(), now),
            far: Sfu::new(far_config, far_metrics.clone(), now),
            far_metrics,
            relay: RelayStats::default(),
            relay_loss_per_mille: 0,
            relay_in_flight: Vec::new(),
            metrics,
            rng: 0x2545_f491_4f6c_dd1d,
            peers: Vec::new(),
            events: Vec::new(),
            downlinks: HashMap::new(),
            in_flight: Vec::new(),
            next_track: 1,
            video_codec: Codec::Vp8,
            peer_options: PeerOptions::default(),
            delivered_bytes: HashMap::new(),
            dropped: 0,
        }
    }

    /// Adds a peer that publishes audio and 3-layer simulcast video (if `publish`) and has
    /// `recv` receive-only m-lines of each kind. Returns its index.
    pub fn add_peer(&mut self, publish: bool, recv: usize) -> usize {
        self.add_peer_on(false, publish, recv)
    }

    fn core(&mut self, far: bool) -> &mut Sfu {
        if far { &mut self.far } else { &mut self.sfu }
    }

    /// [`Net::add_peer`] on the near or the far core. A publisher's tracks are declared to the
    /// other core as remote tracks, as the signalling does for the sites of a room.
    pub fn add_peer_on(&mut self, far: bool, publish: bool, recv: usize) -> usize {
        let index = self.peers.len();
        let id = ParticipantId(index as u64 + 1);
        let addr: SocketAddr = format!("10.0.1.{}:5000", index + 1).parse().unwrap();
        let builder = match self.video_codec {
            Codec::H264 => Rtc::builder()
                .clear_codecs()
                .enable_opus(true, false)
                .enable_h264(true),
            _ => Rtc::builder(),
        };
        let mut rtc = builder.build(self.now);
        rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
        let mut change = rtc.sdp_api();
        let (mut audio_mid, mut video_mid) = (None, None);
        if publish {
            audio_mid =
                Some(change.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None));
            let mut simulcast = Simulcast::new();
            for (rid, _, _) in LADDER {
                simulcast.add_send_layer(SimulcastLayer::new(rid));
            }
            video_mid = Some(change.add_media(
                MediaKind::Video,
                Direction::SendOnly,
                None,
                None,
                Some(simulcast),
            ));
        }
        let recv_audio: Vec<Mid> = (0..recv)
            .map(|_| change.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None))
            .collect();
        let recv_video: Vec<Mid> = (0..recv)
            .map(|_| change.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None))
            .collect();
        let (offer, pending) = change.apply().expect("an offer");
        let audio_track = TrackId(self.next_track);
        let video_track = TrackId(self.next_track + 1);
        self.next_track += 2;
        let mut publish_list = Vec::new();
        if publish {
            publish_list.push(PublishRequest {
                mid: audio_mid.unwrap().to_string(),
                track_id: audio_track,
                kind: TrackKind::Audio,
                muted: false,
            });
            publish_list.push(PublishRequest {
                mid: video_mid.unwrap().to_string(),
                track_id: video_track,
                kind: TrackKind::Video,
                muted: false,
            });
        }
        let room = RoomId::new("test").unwrap();
        let (now, options) = (self.now, self.peer_options);
        self.core(far)
            .add_peer(now, room.clone(), id, options)
            .unwrap();
        let answer = self
            .core(far)
            .accept_offer(now, id, &offer.to_sdp_string(), &publish_list)
            .expect("offer accepted");
        if publish {
            let origin = if far { far_node() } else { near_node() };
            for (track, kind) in [
                (audio_track, TrackKind::Audio),
                (video_track, TrackKind::Video),
            ] {
                self.core(!far).add_remote_track(
                    now,
                    room.clone(),
                    track,
                    id,
                    kind,
                    origin.clone(),
                );
            }
        }
        assert!(
            answer.rejected_tracks.is_empty(),
            "{:?}",
            answer.rejected_tracks
        );
        let answer = SdpAnswer::from_sdp_string(&answer.sdp).unwrap();
        rtc.sdp_api().accept_answer(pending, answer).unwrap();
        self.downlinks.insert(
            addr,
            Link {
                capacity_bps: None,
                busy_until: self.now,
                loss_per_mille: 0,
            },
        );
        self.peers.push(Peer {
            id,
            far,
            addr,
            rtc,
            audio_mid,
            video_mid,
            audio_track,
            video_track,
            recv_audio,
            recv_video,
            received: HashMap::new(),
            keyframe_requests: Vec::new(),
            connected: false,
            publishing: publish,
            audio_level: -30,
            video_codec: self.video_codec,
            active_layers: None,
            late_layer: None,
            force_keyframe: Vec::new(),
            next_audio: self.now,
            next_video: self.now,
            video_frames: 0,
            pending: None,
        });
        index
    }

    /// Subscribes peer `who` to everything the `sources` publish, in order, on its recv m-lines.
    pub fn subscribe_to(&mut self, who: usize, sources: &[usize], max_height: Option<u32>) {
        let mut subs = Vec::new();
        for (i, &s) in sources.iter().enumerate() {
            let (audio, video) = (self.peers[s].audio_track, self.peers[s].video_track);
            subs.push(SubscribeRequest {
                track_id: audio,
                mid: self.peers[who].recv_audio[i].to_string(),
                max_height: None,
            });
            subs.push(SubscribeRequest {
                track_id: video,
                mid: self.peers[who].recv_video[i].to_string(),
                max_height,
            });
        }
        let (id, far, now) = (self.peers[who].id, self.peers[who].far, self.now);
        self.core(far)
            .set_subscriptions(now, id, &subs)
            .expect("valid subscriptions");
    }

    /// Lets the SFU fill all of `who`'s receive-only audio m-lines with the loudest speakers.
    pub fn use_audio_slots(&mut self, who: usize) {
        let mids: Vec<String> = self.peers[who]
            .recv_audio
            .iter()
            .map(ToString::to_string)
            .collect();
        let (id, far, now) = (self.peers[who].id, self.peers[who].far, self.now);
        self.core(far)
            .set_audio_slots(now, id, &mids)
            .expect("valid audio slots");
    }

    /// Which publishers (by participant number) `who` heard on its audio m-lines since `since`.
    pub fn heard(&self, who: usize, since: Instant) -> std::collections::BTreeSet<u64> {
        self.peers[who]
            .recv_audio
            .iter()
            .flat_map(|mid| self.frames(who, *mid, since))
            .map(|f| f.from)
            .collect()
    }

    pub fn set_downlink_loss(&mut self, peer: usize, per_mille: u32) {
        let addr = self.peers[peer].addr;
        self.downlinks.get_mut(&addr).unwrap().loss_per_mille = per_mille;
    }

    pub fn set_downlink(&mut self, peer: usize, capacity_bps: Option<u64>) {
        let addr = self.peers[peer].addr;
        self.downlinks.get_mut(&addr).unwrap().capacity_bps = capacity_bps;
    }

    pub fn run_for(&mut self, duration: Duration) {
        let end = self.now + duration;
        while self.now < end {
            self.now += TICK;
            self.tick();
        }
    }

    /// Runs until `done` holds, at most `limit`; returns whether it held.
    pub fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Net) -> bool) -> bool {
        let end = self.now + limit;
        while self.now < end {
            self.now += TICK;
            self.tick();
            if done(self) {
                return true;
            }
        }
        false
    }

    fn tick(&mut self) {
        let now = self.now;
        // Deliver what has arrived.
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.in_flight)
            .into_iter()
            .partition(|p| p.at <= now);
        self.in_flight = later;
        for packet in due {
            let t = packet.transmit;
            if t.destination == sfu_addr() {
                self.sfu
                    .handle_receive(now, Protocol::Udp, t.source, t.destination, &t.contents);
            } else if t.destination == far_addr() {
                self.far
                    .handle_receive(now, Protocol::Udp, t.source, t.destination, &t.contents);
            } else if let Some(peer) = self.peers.iter_mut().find(|p| p.addr == t.destination) {
                *self.delivered_bytes.entry(peer.addr).or_default() += t.contents.len() as u64;
                let receive =
                    Receive::new(Protocol::Udp, t.source, t.destination, &t.contents).unwrap();
                peer.rtc.handle_input(Input::Receive(now, receive)).unwrap();
            }
        }
        for i in 0..self.peers.len() {
            self.peers[i].rtc.handle_input(Input::Timeout(now)).unwrap();
            self.peers[i].send_media(now);
            self.drain_peer(i);
        }
        // Relay messages sent last tick arrive now (a hop of one tick).
        for (to_far, from, message) in std::mem::take(&mut self.relay_in_flight) {
            let core = self.core(to_far);
            match message {
                RelayMessage::Media(media) => core.handle_relay_media(now, &from, media),
                RelayMessage::Control(control) => core.handle_relay_control(now, from, control),
            }
        }
        self.sfu.handle_timeout(now);
        self.far.handle_timeout(now);
        for far in [false, true] {
            self.drain_core(far);
        }
    }

    fn drain_core(&mut self, far: bool) {
        let from = if far { far_node() } else { near_node() };
        loop {
            match self.core(far).poll_output() {
                SfuOutput::Relay { node, message } => {
                    let to_far = node == far_node();
                    assert_ne!(to_far, far, "a core relays to the other one");
                    if let RelayMessage::Media(media) = &message {
                        self.rng ^= self.rng << 13;
                        self.rng ^= self.rng >> 7;
                        self.rng ^= self.rng << 17;
                        if (self.rng % 1000) < u64::from(self.relay_loss_per_mille) {
                            self.relay.lost += 1;
                            continue;
                        }
                        if to_far {
                            // Audio has no simulcast layer: counted as `a`.
                            let marker = media.layer.map_or(b'a', |rid| rid.as_bytes()[0]);
                            *self.relay.media.entry(marker).or_default() += 1;
                        }
                    } else {
                        self.relay.control += 1;
                    }
                    self.relay_in_flight.push((to_far, from.clone(), message));
                }
                SfuOutput::Transmit(t) => self.send_down(t),
                SfuOutput::Event(e) => {
                    // Publishers obey layer pauses, as browsers do with `encodings[i].active`.
                    if let SfuEvent::LayersWanted {
                        participant,
                        active,
                        ..
                    } = &e
                        && let Some(p) = self.peers.iter_mut().find(|p| p.id == *participant)
                    {
                        p.active_layers = Some(active.clone());
                    }
                    self.events.push(e);
                }
                SfuOutput::Timeout(_) => break,
            }
        }
    }

    fn drain_peer(&mut self, i: usize) {
        let now = self.now;
        loop {
            match self.peers[i].rtc.poll_output().unwrap() {
                Output::Transmit(t) => self.in_flight.push(InFlight {
                    at: now + LATENCY,
                    transmit: t,
                }),
                Output::Timeout(_) => break,
                Output::Event(e) => self.peers[i].on_event(e, now),
            }
        }
    }

    /// SFU → peer through the peer's bottleneck.
    fn send_down(&mut self, t: Transmit) {
        let now = self.now;
        let Some(link) = self.downlinks.get_mut(&t.destination) else {
            return;
        };
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        if (self.rng % 1000) < u64::from(link.loss_per_mille) {
            self.dropped += 1;
            return;
        }
        let depart = match link.capacity_bps {
            None => now,
            Some(bps) => {
                let start = link.busy_until.max(now);
                if start.duration_since(now) > QUEUE_LIMIT {
                    self.dropped += 1;
                    return;
                }
                let serialize =
                    Duration::from_nanos(t.contents.len() as u64 * 8 * 1_000_000_000 / bps);
                link.busy_until = start + serialize;
                link.busy_until
            }
        };
        self.in_flight.push(InFlight {
            at: depart + LATENCY,
            transmit: t,
        });
    }

    /// Frames peer `who` received on m-line `mid` since `since`.
    pub fn frames(&self, who: usize, mid: Mid, since: Instant) -> Vec<Frame> {
        self.peers[who]
            .received
            .get(&mid)
            .map(|v| v.iter().filter(|f| f.at >= since).cloned().collect())
            .unwrap_or_default()
    }

    /// Layer of the most recent video frame on `mid` (b'q', b'h', b'f').
    pub fn last_layer(&self, who: usize, mid: Mid) -> Option<u8> {
        self.peers[who]
            .received
            .get(&mid)
            .and_then(|v| v.last())
            .map(|f| f.layer)
    }
}

impl Default for Net {
    fn default() -> Self {
        Self::new()
    }
}

impl Peer {
    fn on_event(&mut self, event: Event, now: Instant) {
        match event {
            Event::Connected => self.connected = true,
            Event::MediaData(data) => {
                // H.264 frames arrive in Annex B form; the markers follow the NAL header.
                let skip = if data.data.starts_with(&[0, 0, 0, 1]) {
                    4
                } else {
                    0
                };
                let data_bytes = &data.data[skip..];
                let (layer, from) = (
                    data_bytes.get(1).copied().unwrap_or(0),
                    data_bytes.get(2).copied().unwrap_or(0),
                );
                self.received.entry(data.mid).or_default().push(Frame {
                    at: now,
                    keyframe: data.is_keyframe(),
                    layer,
                    from: u64::from(from),
                });
            }
            Event::KeyframeRequest(req) => {
                self.keyframe_requests.push((now, req.rid));
                self.force_keyframe.push(req.rid);
            }
            _ => {}
        }
    }

    fn params(&mut self, mid: Mid, kind: MediaKind) -> PayloadParams {
        let video_codec = self.video_codec;
        let writer = self.rtc.writer(mid).unwrap();
        *writer
            .payload_params()
            .find(|p| match kind {
                MediaKind::Audio => p.spec().codec == str0m::format::Codec::Opus,
                MediaKind::Video => p.spec().codec == video_codec,
            })
            .unwrap()
    }

    fn send_media(&mut self, now: Instant) {
        if !self.publishing || !self.connected {
            return;
        }
        let me = self.id.0 as u8;
        if now >= self.next_audio {
            self.next_audio = now + Duration::from_millis(20);
            let mid = self.audio_mid.unwrap();
            let pt = self.params(mid, MediaKind::Audio).pt();
            let ts = MediaTime::new(elapsed_ticks(now, 48_000), Frequency::FORTY_EIGHT_KHZ);
            let payload = vec![
                0xfc, b'a', me, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ];
            let level = self.audio_level;
            let writer = self
                .rtc
                .writer(mid)
                .unwrap()
                .audio_level(level, level > -50);
            writer.write(pt, now, ts, payload).unwrap();
        }
        if now >= self.next_video {
            self.next_video = now + Duration::from_millis(33);
            let mid = self.video_mid.unwrap();
            let pt = self.params(mid, MediaKind::Video).pt();
            let ts = MediaTime::new(elapsed_ticks(now, 90_000), Frequency::NINETY_KHZ);
            let periodic_key = self.video_frames.is_multiple_of(300);
            self.video_frames += 1;
            for (rid, bps, height) in LADDER {
                if self
                    .active_layers
                    .as_ref()
                    .is_some_and(|a| !a.iter().any(|r| r == rid))
                {
                    continue;
                }
                let rid_key = Some(Rid::from(rid));
                let forced = self
                    .force_keyframe
                    .iter()
                    .any(|r| r.is_none() || *r == rid_key);
                let keyframe = periodic_key || forced;
                let mut frame = vec![0u8; (bps / 8 / 30) as usize];
                if self.video_codec == Codec::H264 {
                    // One Annex B NAL unit: IDR (type 5) or non-IDR slice (type 1); no zero
                    // bytes in the body, which would read as start codes.
                    frame.fill(0xaa);
                    frame[..5].copy_from_slice(&[0, 0, 0, 1, if keyframe { 0x65 } else { 0x41 }]);
                    frame[5] = rid.as_bytes()[0];
                    frame[6] = me;
                    let writer = self.rtc.writer(mid).unwrap().rid(Rid::from(rid));
                    writer.write(pt, now, ts, frame).unwrap();
                    continue;
                }
                if keyframe {
                    // VP8 keyframe header: tag, start code, 14-bit width and height.
                    frame[..10].copy_from_slice(&[0x50, 0, 0, 0x9d, 0x01, 0x2a, 0, 0, 0, 0]);
                    frame[8..10].copy_from_slice(&height.to_le_bytes());
                } else {
                    frame[0] = 0x51;
                }
                frame[1] = rid.as_bytes()[0];
                frame[2] = me;
                let writer = self.rtc.writer(mid).unwrap().rid(Rid::from(rid));
                writer.write(pt, now, ts, frame).unwrap();
            }
            self.force_keyframe.clear();
        }
    }
}

/// A media clock that starts at an arbitrary base per peer, like browsers' random offsets.
fn elapsed_ticks(now: Instant, rate: u64) -> u64 {
    static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let base = *BASE.get_or_init(|| now - Duration::from_secs(1));
    (now.duration_since(base).as_micros() as u64) * rate / 1_000_000
}

pub fn count_keyframe_requests(peer: &Peer, since: Instant) -> usize {
    peer.keyframe_requests
        .iter()
        .filter(|(at, _)| *at >= since)
        .count()
}

pub const PLI: KeyframeRequestKind = KeyframeRequestKind::Pli;
