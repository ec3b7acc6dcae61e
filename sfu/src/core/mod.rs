//! The sans-IO forwarding core of one shard.
//!
//! [`Sfu`] owns every participant's `str0m::Rtc` and the routing table between them. It never
//! reads a clock or touches a socket: datagrams and time go in through `handle_*`, and
//! [`Sfu::poll_output`] hands back transmits, events and the next timeout. As with str0m itself,
//! after every call that changes state, drain `poll_output` until it returns a timeout.

mod packet;
mod peer;
mod relay;
mod rewrite;
mod track;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::bwe::{Bitrate, BweKind};
use str0m::change::SdpOffer;
use str0m::format::PayloadParams;
use str0m::media::MediaTime;
use str0m::media::{Direction, KeyframeRequestKind, MediaKind, Mid, Pt, Rids};
use str0m::net::{DatagramRecv, Protocol, Receive, TcpType, Transmit};
use str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite};
use str0m::{Candidate, Event, IceConnectionState, IceCreds, Input, Output, Rtc};
use ting_protocol::{NodeId, ParticipantId, RoomId, TrackId, TrackKind};
use tracing::{debug, trace};

use crate::demux::{Demux, Route, is_stun};
use crate::layer::{VideoDemand, select_layers};
use crate::loss_rate::LossBasedRate;
use crate::loudest::LoudestSet;
use crate::metrics::SfuMetrics;
use crate::speaker::SpeakerDetector;
use packet::VideoPacket;
use peer::{Peer, Slot};
use relay::RelayBook;
pub use relay::{RelayControl, RelayMedia, RelayMessage, RemoteLayer};
pub use track::LayerKey;
use track::Track;

/// How often layer choices, speakers and bandwidth targets are re-evaluated.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_millis(250);
/// Default cap on one receiver's subscriptions: a 25-tile gallery, screen shares and a few
/// directly subscribed microphones.
pub const DEFAULT_MAX_SUBSCRIPTIONS: usize = 32;
/// Video packets kept per receiving m-line for retransmissions: over half a second of a 2.5
/// Mbit/s top layer, seconds of the lower ones; enough for NACKs at a few hundred ms round trip.
/// Payloads are shared with every other receiver; each entry still holds its own header.
const RESEND_BUFFER_PACKETS: usize = 150;
/// Retransmissions are answered for packets up to this old.
const RESEND_BUFFER_AGE: Duration = Duration::from_secs(3);
/// Resends are dropped while they exceed this share of what a receiver is sent (str0m's
/// default): a receiver on a lossy link must not be buried in retransmissions.
const RESEND_RATIO_CAP: f32 = 0.15;
/// At most one keyframe request per layer of a track in this interval.
const KEYFRAME_REQUEST_INTERVAL: Duration = Duration::from_millis(500);
/// Bandwidth assumed for a receiver before its first estimate.
const INITIAL_BANDWIDTH: Bitrate = Bitrate::kbps(1_500);
/// How often peers without a bandwidth estimator have their loss reports read.
const LOSS_STATS_INTERVAL: Duration = Duration::from_secs(1);
/// Loudness bonus for a speaker an audio slot already carries (hysteresis per receiver).
const STICKY_BONUS: f64 = 1.3;
/// Audio receives this much of a receiver's bandwidth before video is allocated.
const AUDIO_BUDGET_BPS: u64 = 48_000;

#[derive(Debug, Clone)]
pub struct SfuConfig {
    /// Host candidates put in every answer: the local addresses of the shard's sockets.
    pub host_candidates: Vec<SocketAddr>,
    /// Public addresses in front of a NAT, each with the local socket address it forwards to.
    pub reflexive_candidates: Vec<(SocketAddr, SocketAddr)>,
    /// Passive ICE-TCP candidates (RFC 6544), for clients whose UDP is blocked.
    pub tcp_candidates: Vec<SocketAddr>,
    /// Loudest-N: how many speakers a receiver's audio slots carry at most.
    pub loudest_n: usize,
    /// Most tracks one receiver may subscribe to at once (audio slots not counted): what a
    /// receiver is sent stays bounded whatever the room's size; clients show last-N.
    pub max_subscriptions: usize,
}

impl Default for SfuConfig {
    fn default() -> Self {
        Self {
            host_candidates: Vec::new(),
            reflexive_candidates: Vec::new(),
            tcp_candidates: Vec::new(),
            loudest_n: 3,
            max_subscriptions: DEFAULT_MAX_SUBSCRIPTIONS,
        }
    }
}

/// How one participant's media connection is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PeerOptions {
    /// Send-side bandwidth estimation towards the peer (TWCC feedback, probing, pacing). Off
    /// for the receive-only crowd of a large meeting: it costs a timer per forwarded packet and
    /// padding on the wire per receiver; their layer follows the loss they report instead.
    pub estimate_bandwidth: bool,
}

impl Default for PeerOptions {
    fn default() -> Self {
        Self {
            estimate_bandwidth: true,
        }
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SfuError {
    #[error("unknown participant")]
    UnknownParticipant,
    #[error("participant is already connected")]
    DuplicateParticipant,
    #[error("invalid SDP offer: {0}")]
    InvalidSdp(String),
    #[error("invalid subscription: {0}")]
    InvalidSubscription(String),
    #[error("no such track: {0}")]
    UnknownTrack(TrackId),
    #[error("invalid ICE candidate: {0}")]
    InvalidCandidate(String),
    #[error("at most {max} subscriptions per participant; show fewer (last-N)")]
    TooManySubscriptions { max: usize },
    #[error("the media node is unavailable")]
    Unavailable,
}

/// A track the publisher declared for one of its m-lines.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PublishRequest {
    pub mid: String,
    pub track_id: TrackId,
    pub kind: TrackKind,
    pub muted: bool,
}

/// The SDP answer to an offer, and the declared tracks that did not match the offer as
/// (mid, reason); those are not published, the rest of the offer stands.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OfferAnswer {
    pub sdp: String,
    pub rejected_tracks: Vec<(String, String)>,
}

/// Show `track_id` on the receiver's m-line `mid`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SubscribeRequest {
    pub track_id: TrackId,
    pub mid: String,
    pub max_height: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SfuEvent {
    /// ICE and DTLS are up: media can flow.
    Connected { participant: ParticipantId },
    /// The media connection ended (ICE consent lost, DTLS closed); the peer has been removed.
    Closed { participant: ParticipantId },
    /// The publisher should send only these simulcast layers (RIDs) of its track: the others
    /// have had no receiver for a while. An empty list pauses the video entirely.
    LayersWanted {
        participant: ParticipantId,
        track: TrackId,
        active: Vec<String>,
    },
    ActiveSpeaker {
        room: RoomId,
        participant: Option<ParticipantId>,
    },
}

#[derive(Debug)]
pub enum SfuOutput {
    Transmit(Transmit),
    Event(SfuEvent),
    /// For the SFU of another node of the cluster.
    Relay {
        node: NodeId,
        message: RelayMessage,
    },
    Timeout(Instant),
}

#[derive(Debug, Default)]
struct RoomMedia {
    members: Vec<ParticipantId>,
    speakers: SpeakerDetector<ParticipantId>,
    loudest: LoudestSet<ParticipantId>,
    /// Tracks of the room published on other nodes.
    remote_tracks: Vec<TrackId>,
}

pub struct Sfu {
    config: SfuConfig,
    metrics: SfuMetrics,
    peers: HashMap<ParticipantId, Peer>,
    tracks: HashMap<TrackId, Track>,
    rooms: HashMap<RoomId, RoomMedia>,
    demux: Demux<ParticipantId>,
    out: VecDeque<SfuOutput>,
    dirty: Vec<ParticipantId>,
    /// Peers' str0m timers, earliest first; entries whose time no longer matches the peer's
    /// `timeout` are stale and skipped.
    timers: BinaryHeap<Reverse<(Instant, ParticipantId)>>,
    event_buffer: Vec<Event>,
    next_housekeeping: Instant,
    now: Instant,
    /// Peers and tracks last added to the node-wide gauges, which all shards share.
    reported: (i64, i64),
    relay_book: RelayBook,
}

impl Sfu {
    pub fn new(config: SfuConfig, metrics: SfuMetrics, now: Instant) -> Self {
        Self {
            config,
            metrics,
            peers: HashMap::new(),
            tracks: HashMap::new(),
            rooms: HashMap::new(),
            demux: Demux::default(),
            out: VecDeque::new(),
            dirty: Vec::new(),
            timers: BinaryHeap::new(),
            event_buffer: Vec::new(),
            next_housekeeping: now,
            now,
            reported: (0, 0),
            relay_book: RelayBook::default(),
        }
    }

    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// Creates the media connection of a participant; its first `accept_offer` follows.
    pub fn add_peer(
        &mut self,
        now: Instant,
        room: RoomId,
        participant: ParticipantId,
        options: PeerOptions,
    ) -> Result<(), SfuError> {
        if self.peers.contains_key(&participant) {
            return Err(SfuError::DuplicateParticipant);
        }
        self.now = now;
        let creds = IceCreds::new();
        let mut rtc = Rtc::builder()
            .clear_codecs()
            .enable_opus(true, false)
            .enable_vp8(true)
            .enable_h264(true)
            .set_local_ice_credentials(creds.clone())
            .enable_bwe(options.estimate_bandwidth.then_some(INITIAL_BANDWIDTH))
            // Without an estimator, loss reports are the only signal: read them every second.
            .set_stats_interval(Some(if options.estimate_bandwidth {
                Duration::from_secs(2)
            } else {
                LOSS_STATS_INTERVAL
            }))
            // Packets are forwarded as they come: no depacketizing and packetizing again per
            // receiver, payloads shared by all of them.
            .set_rtp_mode(true)
            .build(now);
        let hosts = self
            .config
            .host_candidates
            .iter()
            .map(|a| (Candidate::host(*a, "udp"), *a));
        let reflexive = self
            .config
            .reflexive_candidates
            .iter()
            .map(|(public, base)| (Candidate::server_reflexive(*public, *base, "udp"), *public));
        let tcp = self.config.tcp_candidates.iter().map(|a| {
            let candidate = Candidate::builder()
                .tcp()
                .host(*a)
                .tcptype(TcpType::Passive)
                .build();
            (candidate, *a)
        });
        for (candidate, addr) in hosts.chain(reflexive).chain(tcp) {
            match candidate {
                Ok(c) => {
                    rtc.add_local_candidate(c);
                }
                Err(e) => debug!(%addr, "unusable candidate: {e}"),
            }
        }
        self.demux.add_ufrag(creds.ufrag, participant);
        self.rooms
            .entry(room.clone())
            .or_default()
            .members
            .push(participant);
        self.peers.insert(
            participant,
            Peer {
                room,
                rtc,
                connected: false,
                published: HashMap::new(),
                slots: HashMap::new(),
                audio_slots: Vec::new(),
                idle_lines: HashMap::new(),
                rx_routes: HashMap::new(),
                bandwidth_bps: INITIAL_BANDWIDTH.as_u64(),
                loss_rate: (!options.estimate_bandwidth)
                    .then(|| LossBasedRate::new(INITIAL_BANDWIDTH.as_u64())),
                timeout: now,
                dirty: false,
                stats_seen: HashMap::new(),
            },
        );
        self.timers.push(Reverse((now, participant)));
        self.report_counts();
        Ok(())
    }

    /// Applies a client's SDP offer and the list of tracks it publishes; returns the SDP answer.
    ///
    /// `publish` is the complete list: tracks of this peer missing from it are unpublished.
    pub fn accept_offer(
        &mut self,
        now: Instant,
        participant: ParticipantId,
        offer_sdp: &str,
        publish: &[PublishRequest],
    ) -> Result<OfferAnswer, SfuError> {
        self.now = now;
        let peer = self
            .peers
            .get_mut(&participant)
            .ok_or(SfuError::UnknownParticipant)?;
        let offer = SdpOffer::from_sdp_string(offer_sdp)
            .map_err(|e| SfuError::InvalidSdp(e.to_string()))?;
        let answer = peer
            .rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| SfuError::InvalidSdp(e.to_string()))?;

        // Validate the declared tracks against the negotiated m-lines.
        let mut wanted: HashMap<Mid, (TrackId, MediaKind, bool)> = HashMap::new();
        let mut rejected_tracks = Vec::new();
        for req in publish {
            let mid = Mid::from(req.mid.as_str());
            let kind = media_kind(req.kind);
            match peer.rtc.media(mid) {
                Some(m) if m.kind() != kind => {
                    rejected_tracks
                        .push((req.mid.clone(), format!("m-line is not {:?}", req.kind)));
                }
                Some(m) if !matches!(m.direction(), Direction::RecvOnly | Direction::SendRecv) => {
                    rejected_tracks
                        .push((req.mid.clone(), "m-line does not send to the server".into()));
                }
                Some(_) => {
                    wanted.insert(mid, (req.track_id, kind, req.muted));
                }
                None => {
                    rejected_tracks.push((req.mid.clone(), "no such m-line in the offer".into()))
                }
            }
        }

        // Unpublish what is gone or changed, publish what is new.
        let gone: Vec<(Mid, TrackId)> = peer
            .published
            .iter()
            .filter(|(mid, id)| wanted.get(mid).is_none_or(|(w, _, _)| w != *id))
            .map(|(m, id)| (*m, *id))
            .collect();
        for (mid, id) in gone {
            self.unpublish(participant, mid, id);
        }
        for (mid, (id, kind, muted)) in wanted {
            let peer = self.peer_mut(participant)?;
            if peer.published.contains_key(&mid) {
                continue;
            }
            peer.published.insert(mid, id);
            let mut track = Track::new(participant, mid, kind, muted, now);
            if let Some(Rids::Specific(rids)) = peer.rtc.media(mid).map(|m| m.rids_rx()) {
                for rid in rids {
                    track.declare_layer(Some(*rid), now);
                }
            }
            self.tracks.insert(id, track);
        }
        self.report_counts();
        self.mark_dirty(participant);
        Ok(OfferAnswer {
            sdp: answer.to_sdp_string(),
            rejected_tracks,
        })
    }

    /// Replaces what the participant receives with `subscriptions` (a complete list).
    /// Entries for tracks that no longer exist are skipped; nothing changes if any other entry
    /// is invalid.
    pub fn set_subscriptions(
        &mut self,
        now: Instant,
        participant: ParticipantId,
        subscriptions: &[SubscribeRequest],
    ) -> Result<(), SfuError> {
        self.now = now;
        let peer = self
            .peers
            .get(&participant)
            .ok_or(SfuError::UnknownParticipant)?;
        if subscriptions.len() > self.config.max_subscriptions {
            return Err(SfuError::TooManySubscriptions {
                max: self.config.max_subscriptions,
            });
        }
        let mut wanted: HashMap<Mid, &SubscribeRequest> = HashMap::new();
        for sub in subscriptions {
            let mid = Mid::from(sub.mid.as_str());
            // A track may be unpublished while the receiver's request is on its way: skip it.
            let Some(track) = self.tracks.get(&sub.track_id) else {
                debug!(track = %sub.track_id, "subscription to a track that is gone");
                continue;
            };
            let invalid = |why: &str| {
                Err(SfuError::InvalidSubscription(format!(
                    "mid {}: {why}",
                    sub.mid
                )))
            };
            if track.owner == participant {
                return invalid("a participant does not receive its own tracks");
            }
            if let Err(why) = check_receiving_mline(peer, mid, track.kind) {
                return invalid(why);
            }
            if wanted.insert(mid, sub).is_some() {
                return invalid("m-line used twice");
            }
        }

        let peer = self.peer_mut(participant)?;
        let audio_slots = peer.audio_slots.clone();
        if let Some(mid) = wanted.keys().find(|m| audio_slots.contains(m)) {
            return Err(SfuError::InvalidSubscription(format!(
                "mid {mid}: this m-line is an audio slot the server fills"
            )));
        }
        let shown: Vec<(Mid, TrackId)> = peer
            .slots
            .iter()
            .filter(|(m, _)| !audio_slots.contains(m))
            .map(|(m, s)| (*m, s.track))
            .collect();
        for (mid, track) in shown {
            if wanted.get(&mid).is_none_or(|s| s.track_id != track) {
                self.show(participant, mid, None);
            }
        }
        for (mid, sub) in wanted {
            let peer = self.peer_mut(participant)?;
            match peer.slots.get_mut(&mid) {
                Some(slot) if slot.track == sub.track_id => slot.max_height = sub.max_height,
                _ => self.show(participant, mid, Some((sub.track_id, sub.max_height))),
            }
        }
        self.select_layers_for(participant);
        self.mark_dirty(participant);
        Ok(())
    }

    /// Declares the receiver's audio slots: m-lines the server fills with the room's loudest
    /// speakers (at most `loudest_n`), instead of one m-line per remote microphone.
    pub fn set_audio_slots(
        &mut self,
        now: Instant,
        participant: ParticipantId,
        mids: &[String],
    ) -> Result<(), SfuError> {
        self.now = now;
        let peer = self
            .peers
            .get(&participant)
            .ok_or(SfuError::UnknownParticipant)?;
        let mut slots = Vec::new();
        for mid in mids.iter().take(self.config.loudest_n) {
            let id = Mid::from(mid.as_str());
            let invalid =
                |why: &str| Err(SfuError::InvalidSubscription(format!("mid {mid}: {why}")));
            if let Err(why) = check_receiving_mline(peer, id, MediaKind::Audio) {
                return invalid(why);
            }
            if slots.contains(&id) {
                return invalid("m-line used twice");
            }
            slots.push(id);
        }
        let before = std::mem::replace(&mut self.peer_mut(participant)?.audio_slots, slots.clone());
        for mid in before.into_iter().chain(slots) {
            // Whatever the m-line showed before, the loudest-N assignment decides now.
            self.show(participant, mid, None);
        }
        self.assign_audio_slots(participant);
        self.mark_dirty(participant);
        Ok(())
    }

    /// Points the receiver's m-line `mid` at a track (with the tile height it is shown at), or
    /// at nothing. The m-line's numbering continues across sources.
    fn show(
        &mut self,
        participant: ParticipantId,
        mid: Mid,
        source: Option<(TrackId, Option<u32>)>,
    ) {
        let Some(peer) = self.peers.get_mut(&participant) else {
            return;
        };
        if let Some(old) = peer.slots.remove(&mid) {
            peer.idle_lines.insert(mid, old.line);
            if let Some(t) = self.tracks.get_mut(&old.track) {
                t.subscribers.retain(|s| *s != (participant, mid));
            }
        }
        let Some((track, max_height)) = source else {
            return;
        };
        let Some(t) = self.tracks.get_mut(&track) else {
            return;
        };
        t.subscribers.push((participant, mid));
        let mut line = peer.idle_lines.remove(&mid).unwrap_or_default();
        line.source_changed();
        peer.slots.insert(mid, Slot::new(track, max_height, line));
    }

    /// The first audio track a participant publishes.
    fn audio_track_of(&self, participant: ParticipantId, room: &RoomMedia) -> Option<TrackId> {
        let Some(peer) = self.peers.get(&participant) else {
            // A speaker on another node: its relayed microphone.
            return room.remote_tracks.iter().copied().find(|id| {
                self.tracks
                    .get(id)
                    .is_some_and(|t| t.owner == participant && t.kind == MediaKind::Audio)
            });
        };
        let mut audio: Vec<TrackId> = peer
            .published
            .values()
            .filter(|id| {
                self.tracks
                    .get(id)
                    .is_some_and(|t| t.kind == MediaKind::Audio)
            })
            .copied()
            .collect();
        audio.sort();
        audio.first().copied()
    }

    /// Fills the receiver's audio slots with the room's loudest speakers other than itself,
    /// keeping speakers on the slot they already have.
    fn assign_audio_slots(&mut self, participant: ParticipantId) {
        let Some(peer) = self.peers.get(&participant) else {
            return;
        };
        if peer.audio_slots.is_empty() {
            return;
        }
        let Some(room) = self.rooms.get(&peer.room) else {
            return;
        };
        // The loudest of the set, other than the receiver; what a slot already carries gets a
        // bonus so that two similar voices do not make the slots flap.
        let carried: Vec<TrackId> = peer
            .audio_slots
            .iter()
            .filter_map(|m| peer.slots.get(m))
            .map(|s| s.track)
            .collect();
        let mut ranked: Vec<(TrackId, f64)> = room
            .loudest
            .members()
            .iter()
            .filter(|p| **p != participant)
            .filter_map(|p| {
                let track = self.audio_track_of(*p, room)?;
                let bonus = if carried.contains(&track) {
                    STICKY_BONUS
                } else {
                    1.0
                };
                Some((track, room.speakers.loudness_of(*p, self.now) * bonus))
            })
            .collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        let wanted: Vec<TrackId> = ranked
            .into_iter()
            .take(peer.audio_slots.len())
            .map(|(t, _)| t)
            .collect();
        let mut free = Vec::new();
        let mut kept = Vec::new();
        for mid in &peer.audio_slots {
            match peer.slots.get(mid).map(|s| s.track) {
                Some(track) if wanted.contains(&track) => kept.push(track),
                current => free.push((*mid, current.is_none())),
            }
        }
        let mut newcomers = wanted.into_iter().filter(|t| !kept.contains(t));
        for (mid, empty) in free {
            let source = newcomers.next().map(|track| (track, None));
            if source.is_none() && empty {
                continue;
            }
            self.show(participant, mid, source);
        }
    }

    /// Stops forwarding everything the participant publishes (it lost the right to publish).
    /// Its m-lines stay; a later offer may publish on them again.
    pub fn unpublish_all(&mut self, participant: ParticipantId) {
        let Some(peer) = self.peers.get_mut(&participant) else {
            return;
        };
        for (mid, track) in std::mem::take(&mut peer.published) {
            self.unpublish(participant, mid, track);
        }
        self.report_counts();
    }

    /// Muted tracks are not forwarded; unmuting video waits for a fresh keyframe.
    pub fn set_muted(
        &mut self,
        now: Instant,
        track_id: TrackId,
        muted: bool,
    ) -> Result<(), SfuError> {
        self.now = now;
        let track = self
            .tracks
            .get_mut(&track_id)
            .ok_or(SfuError::UnknownTrack(track_id))?;
        let was_muted = std::mem::replace(&mut track.muted, muted);
        if was_muted && !muted && track.kind == MediaKind::Video {
            let relayed: Vec<LayerKey> = track
                .relays
                .iter()
                .flat_map(|l| l.layers.iter().copied())
                .collect();
            for layer in relayed {
                self.request_keyframe(track_id, layer, KeyframeRequestKind::Pli);
            }
            let Some(track) = self.tracks.get(&track_id) else {
                return Ok(());
            };
            let subscribers = track.subscribers.clone();
            for (sub, mid) in subscribers {
                if let Some(slot) = self.peers.get_mut(&sub).and_then(|p| p.slots.get_mut(&mid)) {
                    slot.current = None;
                    slot.line.source_changed();
                    let target = slot.target;
                    self.request_keyframe(track_id, target, KeyframeRequestKind::Pli);
                }
            }
        }
        Ok(())
    }

    pub fn add_remote_candidate(
        &mut self,
        participant: ParticipantId,
        candidate: &str,
    ) -> Result<(), SfuError> {
        let candidate = candidate.strip_prefix("a=").unwrap_or(candidate);
        let parsed = Candidate::from_sdp_string(candidate)
            .map_err(|e| SfuError::InvalidCandidate(e.to_string()))?;
        self.peer_mut(participant)?.rtc.add_remote_candidate(parsed);
        self.mark_dirty(participant);
        Ok(())
    }

    /// Removes a participant's media: its tracks are unpublished and its subscriptions dropped.
    pub fn remove_peer(&mut self, participant: ParticipantId) {
        let Some(mut peer) = self.peers.remove(&participant) else {
            return;
        };
        peer.rtc.disconnect();
        // The peer is already out of the map, so `unpublish` only clears tracks and receivers.
        for (mid, track) in std::mem::take(&mut peer.published) {
            self.unpublish(participant, mid, track);
        }
        for (mid, slot) in peer.slots.drain() {
            if let Some(t) = self.tracks.get_mut(&slot.track) {
                t.subscribers.retain(|s| *s != (participant, mid));
            }
        }
        self.demux.remove(participant);
        if let Some(room) = self.rooms.get_mut(&peer.room) {
            room.members.retain(|p| *p != participant);
            let was_speaker = room.speakers.current() == Some(participant);
            room.speakers.remove(participant);
            room.loudest.remove(participant);
            if room.members.is_empty() {
                // Nobody here needs the room's relayed tracks any more.
                if let Some(room) = self.rooms.remove(&peer.room) {
                    for track in room.remote_tracks {
                        self.unpublish(ParticipantId(0), Mid::from("relay"), track);
                    }
                }
            } else if was_speaker {
                self.out
                    .push_back(SfuOutput::Event(SfuEvent::ActiveSpeaker {
                        room: peer.room.clone(),
                        participant: None,
                    }));
            }
        }
        // Audio slots that carried the departed participant take the next loudest.
        let others: Vec<ParticipantId> = self
            .rooms
            .get(&peer.room)
            .map(|r| r.members.clone())
            .unwrap_or_default();
        for other in others {
            self.assign_audio_slots(other);
        }
        self.report_counts();
    }

    /// A datagram arrived on the shard's socket.
    pub fn handle_receive(
        &mut self,
        now: Instant,
        proto: Protocol,
        source: SocketAddr,
        destination: SocketAddr,
        datagram: &[u8],
    ) {
        self.now = now;
        self.metrics.datagrams_in.inc();
        self.metrics.bytes_in.inc_by(datagram.len() as u64);
        let Route::Peer(participant) = self.demux.route((source, destination), datagram) else {
            trace!(%source, "datagram from unknown sender");
            self.metrics.unroutable.inc();
            return;
        };
        let Ok(contents) = DatagramRecv::try_from(datagram) else {
            self.metrics.unroutable.inc();
            return;
        };
        let Some(peer) = self.peers.get_mut(&participant) else {
            return;
        };
        let input = Input::Receive(
            now,
            Receive {
                proto,
                source,
                destination,
                contents,
            },
        );
        if is_stun(datagram) && peer.rtc.accepts(&input) {
            self.demux.learn_address((source, destination), participant);
        }
        if let Err(e) = peer.rtc.handle_input(input) {
            debug!(participant = %participant, "input rejected: {e}");
        }
        if is_rtp(datagram) {
            // In RTP mode str0m holds one received packet until the next `poll_output`; the
            // next datagram would overwrite it, so this peer is drained now.
            self.drive(participant);
        } else {
            // RTCP, STUN, DTLS: several from one peer in a batch cost one drive.
            self.mark_dirty(participant);
        }
    }

    /// Time passed; drives every peer whose timer is due, and periodic housekeeping.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        // Only the peers whose timer is due: the heap keeps this independent of headcount.
        while let Some(Reverse((at, participant))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(peer) = self.peers.get_mut(&participant) else {
                continue;
            };
            if peer.timeout != at {
                // A stale entry: the peer was driven since and has a newer timer.
                continue;
            }
            self.metrics.peer_timeouts.inc();
            if let Err(e) = peer.rtc.handle_input(Input::Timeout(now)) {
                debug!(participant = %participant, "timeout input failed: {e}");
            }
            self.mark_dirty(participant);
        }
        if now >= self.next_housekeeping {
            self.next_housekeeping = now + HOUSEKEEPING_INTERVAL;
            self.housekeeping();
        }
    }

    /// Next output; call until it returns [`SfuOutput::Timeout`].
    pub fn poll_output(&mut self) -> SfuOutput {
        loop {
            if let Some(out) = self.out.pop_front() {
                return out;
            }
            let Some(participant) = self.dirty.pop() else {
                break;
            };
            self.drive(participant);
        }
        // Drop stale heap entries so the earliest one is a live timer.
        while let Some(Reverse((at, participant))) = self.timers.peek().copied() {
            if self
                .peers
                .get(&participant)
                .is_some_and(|p| p.timeout == at)
            {
                break;
            }
            self.timers.pop();
        }
        let next = self.timers.peek().map(|Reverse((at, _))| *at);
        SfuOutput::Timeout(next.map_or(self.next_housekeeping, |at| at.min(self.next_housekeeping)))
    }

    /// Moves the shared gauges by this shard's change since the last report.
    fn report_counts(&mut self) {
        let local_tracks = self.tracks.values().filter(|t| t.origin.is_none()).count();
        let now = (self.peers.len() as i64, local_tracks as i64);
        self.metrics.peers.add(now.0 - self.reported.0);
        self.metrics.tracks.add(now.1 - self.reported.1);
        self.reported = now;
    }

    fn peer_mut(&mut self, participant: ParticipantId) -> Result<&mut Peer, SfuError> {
        self.peers
            .get_mut(&participant)
            .ok_or(SfuError::UnknownParticipant)
    }

    fn mark_dirty(&mut self, participant: ParticipantId) {
        if let Some(peer) = self.peers.get_mut(&participant)
            && !peer.dirty
        {
            peer.dirty = true;
            self.dirty.push(participant);
        }
    }

    /// Drains one peer's `Rtc` until it wants a timeout, then acts on its events.
    fn drive(&mut self, participant: ParticipantId) {
        let Some(peer) = self.peers.get_mut(&participant) else {
            return;
        };
        peer.dirty = false;
        // Reused across calls: `drive` runs for every datagram.
        let mut events = std::mem::take(&mut self.event_buffer);
        let mut failed = false;
        loop {
            match peer.rtc.poll_output() {
                Ok(Output::Transmit(t)) => {
                    self.metrics.datagrams_out.inc();
                    self.metrics.bytes_out.inc_by(t.contents.len() as u64);
                    self.out.push_back(SfuOutput::Transmit(t));
                }
                Ok(Output::Event(e)) => events.push(e),
                Ok(Output::Timeout(t)) => {
                    if peer.timeout != t {
                        peer.timeout = t;
                        self.timers.push(Reverse((t, participant)));
                    }
                    break;
                }
                Err(e) => {
                    debug!(participant = %participant, "media connection failed: {e}");
                    failed = true;
                    break;
                }
            }
        }
        let alive = peer.rtc.is_alive();
        for event in events.drain(..) {
            self.on_event(participant, event);
        }
        self.event_buffer = events;
        if failed || !alive {
            self.close(participant);
        }
    }

    fn close(&mut self, participant: ParticipantId) {
        if self.peers.contains_key(&participant) {
            self.remove_peer(participant);
            self.out
                .push_back(SfuOutput::Event(SfuEvent::Closed { participant }));
        }
    }

    fn on_event(&mut self, participant: ParticipantId, event: Event) {
        match event {
            Event::Connected => {
                if let Some(peer) = self.peers.get_mut(&participant) {
                    peer.connected = true;
                }
                self.out
                    .push_back(SfuOutput::Event(SfuEvent::Connected { participant }));
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                self.close(participant);
            }
            Event::Closed => self.close(participant),
            Event::RtpPacket(packet) => self.on_rtp(participant, packet),
            Event::KeyframeRequest(req) => {
                self.metrics
                    .keyframe_requests
                    .with_label_values(&["in"])
                    .inc();
                let slot = self
                    .peers
                    .get(&participant)
                    .and_then(|p| p.slots.get(&req.mid));
                if let Some(slot) = slot
                    && let Some(layer) = slot.current
                {
                    let track = slot.track;
                    self.request_keyframe(track, layer, req.kind);
                }
            }
            Event::EgressBitrateEstimate(BweKind::Twcc { estimate, .. }) => {
                if let Some(peer) = self.peers.get_mut(&participant) {
                    peer.bandwidth_bps = estimate.as_u64();
                }
            }
            Event::MediaIngressStats(s) => {
                self.record_stats(
                    participant,
                    s.mid,
                    s.rid,
                    true,
                    s.nacks,
                    s.plis + s.firs,
                    s.loss,
                );
            }
            Event::MediaEgressStats(s) => {
                self.record_stats(
                    participant,
                    s.mid,
                    s.rid,
                    false,
                    s.nacks,
                    s.plis + s.firs,
                    s.loss,
                );
            }
            _ => {}
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn record_stats(
        &mut self,
        participant: ParticipantId,
        mid: Mid,
        rid: LayerKey,
        ingress: bool,
        nacks: u64,
        keyframe_requests: u64,
        loss: Option<f32>,
    ) {
        let Some(peer) = self.peers.get_mut(&participant) else {
            return;
        };
        let seen = peer.stats_seen.entry((mid, rid, ingress)).or_default();
        // Ingress stats count what we sent to the publisher; egress what subscribers sent us.
        let direction = if ingress { "out" } else { "in" };
        self.metrics
            .nacks
            .with_label_values(&[direction])
            .inc_by(nacks.saturating_sub(seen.0));
        if ingress {
            // Incoming requests are already counted per event; only count ours here.
            self.metrics
                .keyframe_requests
                .with_label_values(&["out"])
                .inc_by(keyframe_requests.saturating_sub(seen.1));
        }
        *seen = (nacks.max(seen.0), keyframe_requests.max(seen.1));
        // Loss on a video m-line the peer receives moves its loss-based rate (if it has one).
        if !ingress
            && let (Some(loss), Some(rate)) = (loss, peer.loss_rate.as_mut())
            && peer
                .slots
                .get(&mid)
                .and_then(|slot| self.tracks.get(&slot.track))
                .is_some_and(|track| track.kind == MediaKind::Video)
        {
            peer.bandwidth_bps = rate.on_report(loss, self.now);
        }
        if let Some(loss) = loss {
            let direction = if ingress { "in" } else { "out" };
            self.metrics
                .loss_ratio
                .with_label_values(&[direction])
                .observe(f64::from(loss));
        }
    }

    fn on_rtp(&mut self, publisher: ParticipantId, packet: RtpPacket) {
        if packet.payload.is_empty() {
            return;
        }
        let Some(peer) = self.peers.get_mut(&publisher) else {
            return;
        };
        let ssrc = packet.header.ssrc;
        let (mid, layer) = match peer.rx_routes.get(&ssrc) {
            Some(route) => *route,
            None => {
                let mut api = peer.rtc.direct_api();
                let Some(stream) = api.stream_rx(&ssrc) else {
                    return;
                };
                let route = (stream.mid(), stream.rid());
                peer.rx_routes.insert(ssrc, route);
                route
            }
        };
        let Some(&track_id) = peer.published.get(&mid) else {
            return;
        };
        let Some(track) = self.tracks.get_mut(&track_id) else {
            return;
        };
        let pt = packet.header.payload_type;
        let Some(params) = track.payload_params(pt, &peer.rtc) else {
            trace!(publisher = %publisher, %pt, "payload type not negotiated");
            return;
        };
        let kind = track.kind;
        let video = if kind == MediaKind::Video {
            VideoPacket::inspect(params.spec().codec, &packet.payload)
        } else {
            VideoPacket::default()
        };
        track.record_packet(layer, packet.payload.len(), video.height, packet.timestamp);
        if kind == MediaKind::Audio
            && let Some(level) = packet.header.ext_vals.audio_level
            && !track.muted
            && let Some(room) = self.rooms.get_mut(&peer.room)
        {
            room.speakers.record(publisher, level, packet.timestamp);
        }
        if track.muted {
            return;
        }
        let source = &packet.header.ext_vals;
        let incoming = Incoming {
            pt: packet.header.payload_type,
            seq_no: *packet.seq_no,
            time: packet.time,
            marker: packet.header.marker,
            ext_vals: ExtensionValues {
                audio_level: source.audio_level,
                voice_activity: source.voice_activity,
                video_orientation: source.video_orientation,
                ..ExtensionValues::default()
            },
            payload: &packet.payload,
            arrival: packet.timestamp,
            params,
            kind,
            layer,
            video,
        };
        self.forward_to_subscribers(track_id, &incoming);
        self.relay_out(track_id, layer, &packet);
    }

    /// Sends a packet of a track (local or relayed) to its receivers on this node.
    fn forward_to_subscribers(&mut self, track_id: TrackId, incoming: &Incoming) {
        let Some(track) = self.tracks.get_mut(&track_id) else {
            return;
        };
        // Borrowed out for the loop and put back: no allocation per packet. `forward` never
        // changes who subscribes.
        let subscribers = std::mem::take(&mut track.subscribers);
        for &(subscriber, mid) in &subscribers {
            self.forward(incoming, subscriber, mid);
        }
        if let Some(track) = self.tracks.get_mut(&track_id) {
            track.subscribers = subscribers;
        }
    }

    fn forward(&mut self, incoming: &Incoming, subscriber: ParticipantId, mid: Mid) {
        let Some(peer) = self.peers.get_mut(&subscriber) else {
            return;
        };
        if !peer.connected {
            return;
        }
        let Some(slot) = peer.slots.get_mut(&mid) else {
            return;
        };
        let layer = incoming.layer;
        if incoming.kind == MediaKind::Video && slot.current != Some(layer) {
            // Switch layers (or start) only where a keyframe of the wanted layer begins.
            if slot.target != layer || !incoming.video.keyframe_start {
                return;
            }
            if slot.current.is_some() {
                self.metrics.layer_switches.inc();
            }
            slot.current = Some(layer);
            slot.line.source_changed();
        }
        let Some(pt) = receiving_pt(slot, &peer.rtc, incoming.pt, incoming.params) else {
            trace!(subscriber = %subscriber, "no matching codec on the receiving m-line");
            return;
        };
        let Some(seq_no) = slot.line.sequence.rewrite(incoming.seq_no) else {
            return;
        };
        let time = slot
            .line
            .timestamps
            .rewrite(incoming.time, incoming.arrival);
        let vp8_patch = incoming
            .video
            .vp8
            .as_ref()
            .and_then(|d| slot.line.pictures.rewrite(d));
        let mut api = peer.rtc.direct_api();
        let Some(stream) = api.stream_tx_by_mid(mid, None) else {
            return;
        };
        let video = incoming.kind == MediaKind::Video;
        if video && !slot.stream_configured {
            // Forwarded video was paced by the publisher's browser already. Pacing it again
            // costs a timer per packet per receiver (most of the CPU of a large meeting) and
            // adds delay; the bandwidth estimate still works from TWCC feedback, and probing
            // still goes through the pacer.
            slot.stream_configured = true;
            stream.set_unpaced(true);
            stream.set_rtx_cache(
                RESEND_BUFFER_PACKETS,
                RESEND_BUFFER_AGE,
                Some(RESEND_RATIO_CAP),
            );
        }
        // The payload is an `Arc<[u8]>` shared by all subscribers; str0m copies it only into
        // each receiver's encrypted packet.
        let mut write = RtpWrite::new(
            pt,
            seq_no.into(),
            time.numer() as u32,
            incoming.arrival,
            incoming.payload.clone(),
        )
        .marker(incoming.marker)
        .ext_vals(incoming.ext_vals.clone())
        .nackable(video);
        if let Some(patch) = vp8_patch {
            write = write.vp8_patch(patch);
        }
        stream.write_rtp(write);
        self.metrics.packets_forwarded.inc();
        self.mark_dirty(subscriber);
    }

    fn request_keyframe(&mut self, track_id: TrackId, layer: LayerKey, kind: KeyframeRequestKind) {
        let now = self.now;
        let Some(track) = self.tracks.get_mut(&track_id) else {
            return;
        };
        if track.kind != MediaKind::Video
            || !track.allow_keyframe_request(layer, now, KEYFRAME_REQUEST_INTERVAL)
        {
            return;
        }
        if let Some(origin) = track.origin_node() {
            self.out.push_back(SfuOutput::Relay {
                node: origin.clone(),
                message: RelayMessage::Control(RelayControl::Keyframe {
                    track: track_id,
                    layer,
                }),
            });
            return;
        }
        let (owner, mid) = (track.owner, track.mid);
        let Some(peer) = self.peers.get_mut(&owner) else {
            return;
        };
        match peer.rtc.direct_api().stream_rx_by_mid(mid, layer) {
            Some(stream) => {
                stream.request_keyframe(kind);
                self.mark_dirty(owner);
            }
            // The layer has not sent a packet yet; its keyframe comes with its first frames.
            None => debug!(track = %track_id, ?layer, "no stream to ask for a keyframe"),
        }
    }

    fn unpublish(&mut self, owner: ParticipantId, mid: Mid, track_id: TrackId) {
        if let Some(peer) = self.peers.get_mut(&owner) {
            peer.published.remove(&mid);
        }
        let Some(track) = self.tracks.remove(&track_id) else {
            return;
        };
        self.relay_book.forget(track_id);
        for (subscriber, sub_mid) in track.subscribers {
            if let Some(peer) = self.peers.get_mut(&subscriber)
                && let Some(slot) = peer.slots.remove(&sub_mid)
            {
                peer.idle_lines.insert(sub_mid, slot.line);
            }
        }
    }

    fn housekeeping(&mut self) {
        let now = self.now;
        let participants: Vec<ParticipantId> = self.peers.keys().copied().collect();
        for participant in participants {
            self.select_layers_for(participant);
        }
        let mut changes = Vec::new();
        for (id, track) in &mut self.tracks {
            // Only a track's own node tells its publisher which layers to send.
            if track.kind != MediaKind::Video || track.origin.is_some() {
                continue;
            }
            if let Some(active) = track.layers_to_announce(now) {
                let active = active.iter().flatten().map(|rid| rid.to_string()).collect();
                changes.push(SfuEvent::LayersWanted {
                    participant: track.owner,
                    track: *id,
                    active,
                });
            }
        }
        let mut reassign = Vec::new();
        let room_size = self.config.loudest_n + 1;
        for (room_id, room) in &mut self.rooms {
            if let Some(speaker) = room.speakers.evaluate(now) {
                changes.push(SfuEvent::ActiveSpeaker {
                    room: room_id.clone(),
                    participant: speaker,
                });
            }
            // One more than a receiver hears: a speaker in the set hears the others.
            let loudness = room.speakers.loudness(now);
            room.loudest.update(&loudness, room_size, now);
            // Within the set the order can change without the set changing; receivers re-rank
            // (a few comparisons each).
            reassign.extend(room.members.iter().copied());
        }
        self.out.extend(changes.into_iter().map(SfuOutput::Event));
        for participant in reassign {
            self.assign_audio_slots(participant);
        }
        self.relay_housekeeping();
    }

    /// Chooses the simulcast layer of every video the participant receives, asks publishers for
    /// keyframes where a switch is pending, and tells the bandwidth estimator what to aim for.
    fn select_layers_for(&mut self, participant: ParticipantId) {
        let now = self.now;
        let Some(peer) = self.peers.get(&participant) else {
            return;
        };
        let mut videos = Vec::new();
        let mut demands = Vec::new();
        // The same choice over every known layer, paused ones included: what this receiver
        // would take if the publisher sent it (keeps wanted layers from being paused, and
        // resumes paused ones).
        let (mut wanted, mut known_demands, mut wanted_tracks) =
            (Vec::new(), Vec::new(), Vec::new());
        let mut audio_slots = 0u64;
        for (mid, slot) in &peer.slots {
            let Some(track) = self.tracks.get(&slot.track) else {
                continue;
            };
            if track.kind == MediaKind::Audio {
                audio_slots += 1;
                continue;
            }
            let (known_keys, known) = track.known_layers();
            wanted.push(known_keys);
            known_demands.push(VideoDemand {
                layers: known,
                max_height: slot.max_height,
            });
            wanted_tracks.push(slot.track);
            let (keys, layers) = track.available_layers(now);
            if keys.is_empty() {
                continue;
            }
            videos.push((*mid, slot.track, keys));
            demands.push(VideoDemand {
                layers,
                max_height: slot.max_height,
            });
        }
        let audio_bps = audio_slots * AUDIO_BUDGET_BPS;
        let budget = peer.bandwidth_bps.saturating_sub(audio_bps);
        let choices = select_layers(budget, &demands);
        let sum = |choices: &[Option<usize>], demands: &[VideoDemand]| -> u64 {
            choices
                .iter()
                .zip(demands)
                .filter_map(|(c, d)| c.map(|i| d.layers[i].bitrate_bps))
                .sum()
        };
        // What the receiver would take with unlimited bandwidth, over every known layer
        // (paused ones too): the bandwidth estimator probes towards it, so a paused layer can
        // come back once the link allows.
        let unconstrained = select_layers(u64::MAX / 4, &known_demands);
        let (current_bps, desired_bps) =
            (sum(&choices, &demands), sum(&unconstrained, &known_demands));
        let known_choices = select_layers(budget, &known_demands);
        for ((track, keys), choice) in wanted_tracks.into_iter().zip(wanted).zip(known_choices) {
            if let (Some(t), Some(index)) = (self.tracks.get_mut(&track), choice) {
                t.mark_wanted(keys[index], now);
            }
        }

        let mut keyframes_needed = Vec::new();
        let Some(peer) = self.peers.get_mut(&participant) else {
            return;
        };
        for ((mid, track, keys), choice) in videos.into_iter().zip(choices) {
            let (Some(slot), Some(index)) = (peer.slots.get_mut(&mid), choice) else {
                continue;
            };
            slot.retarget(&keys, index, now);
            if slot.current != Some(slot.target) {
                keyframes_needed.push((track, slot.target));
            }
        }
        if desired_bps > 0 && peer.loss_rate.is_none() {
            let minimum = Bitrate::bps(current_bps + audio_bps);
            let desired = Bitrate::bps(desired_bps + audio_bps).max(minimum);
            peer.rtc.bwe().set_bitrate(minimum, desired);
        }
        for (track, layer) in keyframes_needed {
            self.request_keyframe(track, layer, KeyframeRequestKind::Pli);
        }
    }
}

/// RTP as opposed to RTCP (RFC 5761 §4): version 2, and a second byte outside the RTCP
/// packet types 192–223.
fn is_rtp(datagram: &[u8]) -> bool {
    match datagram {
        [first, second, ..] => first >> 6 == 2 && !(192..=223).contains(second),
        _ => false,
    }
}

/// One incoming packet (from a local publisher or relayed from another node) on its way to
/// the subscribers of its track.
struct Incoming<'a> {
    /// The publisher's payload type.
    pt: Pt,
    seq_no: u64,
    time: MediaTime,
    marker: bool,
    /// The header extensions forwarded to receivers.
    ext_vals: ExtensionValues,
    payload: &'a std::sync::Arc<[u8]>,
    /// When the packet reached the cluster.
    arrival: Instant,
    params: PayloadParams,
    kind: MediaKind,
    layer: LayerKey,
    video: VideoPacket,
}

/// The receiver's payload type for the publisher's `pt` (payload types are negotiated per
/// connection), remembered on the slot.
fn receiving_pt(slot: &mut Slot, rtc: &Rtc, pt: Pt, params: PayloadParams) -> Option<Pt> {
    if let Some((from, to)) = slot.payload_types
        && from == pt
    {
        return Some(to);
    }
    let to = rtc.codec_config().match_params(params)?.pt();
    slot.payload_types = Some((pt, to));
    Some(to)
}

/// Whether the receiver's m-line `mid` exists, is of `kind`, and receives from the server.
fn check_receiving_mline(peer: &Peer, mid: Mid, kind: MediaKind) -> Result<(), &'static str> {
    match peer.rtc.media(mid) {
        None => Err("no such m-line"),
        Some(m) if m.kind() != kind => Err("the m-line is of another kind"),
        Some(m) if !matches!(m.direction(), Direction::SendOnly | Direction::SendRecv) => {
            Err("m-line does not receive from the server")
        }
        Some(_) => Ok(()),
    }
}

fn media_kind(kind: TrackKind) -> MediaKind {
    match kind {
        TrackKind::Audio => MediaKind::Audio,
        TrackKind::Video => MediaKind::Video,
    }
}
