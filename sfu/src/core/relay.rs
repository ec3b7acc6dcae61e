//! Rooms that span nodes: tracks relayed between the SFU cores of different nodes.
//!
//! A track is published on one node (its origin). Another node that has receivers for it knows
//! it as a remote track and asks the origin for the layers its receivers need with `Want`,
//! renewed every housekeeping round as a lease; the origin answers with the track's layers
//! and codecs (`Layers`) and relays the wanted layers' packets, once per node whatever the
//! number of receivers there. Keyframe requests go to the origin; packets lost on the way
//! between nodes are asked for again (`Nack`) from the origin's short cache, so receivers'
//! own NACKs are answered by the node they are connected to.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use str0m::format::PayloadParams;
use str0m::media::MediaTime;
use str0m::media::{KeyframeRequestKind, MediaKind, Mid, Pt};
use str0m::rtp::{ExtensionValues, RtpPacket, VideoOrientation};
use ting_protocol::{NodeId, ParticipantId, RoomId, TrackId, TrackKind};
use tracing::trace;

use super::packet::VideoPacket;
use super::track::{LayerKey, Track};
use super::{Incoming, Sfu, SfuOutput, media_kind};

/// A relay lease lasts this long unless renewed; the far node renews it every housekeeping
/// round while it has receivers, so a node that goes away stops costing within a second.
const RELAY_LEASE: Duration = Duration::from_secs(1);
/// A layer counts as wanted by a far node for this long after its receivers last chose it.
const WANTED_WINDOW: Duration = Duration::from_secs(1);
/// Relayed video packets kept at the origin for the far nodes' NACKs.
const RELAY_CACHE_PACKETS: usize = 512;
/// A gap longer than this is a new start (publisher restart), not loss.
const MAX_NACK_GAP: u64 = 64;

/// One media packet crossing between nodes.
#[derive(Debug, Clone, PartialEq)]
pub struct RelayMedia {
    pub track: TrackId,
    pub layer: LayerKey,
    /// The publisher's payload type; its codec comes with the track's `Layers`.
    pub pt: Pt,
    /// Extended sequence number of the publisher's stream.
    pub seq_no: u64,
    /// Extended RTP time in the codec's clock.
    pub time: u64,
    pub marker: bool,
    pub audio_level: Option<i8>,
    pub voice_activity: Option<bool>,
    pub video_orientation: Option<VideoOrientation>,
    /// When the origin received the packet from the publisher.
    pub arrival: Instant,
    pub payload: Arc<[u8]>,
}

/// A simulcast layer as the origin node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteLayer {
    pub key: LayerKey,
    pub bitrate_bps: u64,
    pub height: Option<u32>,
    /// Packets arrive at the origin now (a paused layer is known but not available).
    pub available: bool,
}

/// Control messages between the SFU cores of two nodes, about one track.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RelayControl {
    /// The sender has receivers for the track: relay these layers (audio has one, `None`) for
    /// the next lease. An empty list asks only for the track's `Layers`.
    Want {
        track: TrackId,
        layers: Vec<LayerKey>,
    },
    /// The origin's answer to `Want`: the track's layers and codecs.
    Layers {
        track: TrackId,
        layers: Vec<RemoteLayer>,
        payloads: Vec<PayloadParams>,
    },
    Keyframe {
        track: TrackId,
        layer: LayerKey,
    },
    /// Relayed packets that did not arrive.
    Nack {
        track: TrackId,
        layer: LayerKey,
        seq_nos: Vec<u64>,
    },
}

/// What a core sends to another node.
#[derive(Debug, Clone)]
pub enum RelayMessage {
    Media(RelayMedia),
    Control(RelayControl),
}

/// A far node's standing request for a track.
#[derive(Debug, Clone)]
pub struct RelayLease {
    pub node: NodeId,
    pub layers: Vec<LayerKey>,
    pub until: Instant,
}

/// Relay state of a room's remote tracks: recent packets for NACKs (at the origin) and the
/// last sequence number per layer (at the receiving node).
#[derive(Debug, Default)]
pub struct RelayBook {
    cache: VecDeque<RelayMedia>,
    /// Looked up for every relayed packet.
    last_seq: HashMap<(TrackId, LayerKey), u64>,
}

impl RelayMedia {
    /// The relayed form of a packet received from a local publisher.
    pub fn from_packet(track: TrackId, layer: LayerKey, packet: &RtpPacket) -> Self {
        let ext = &packet.header.ext_vals;
        Self {
            track,
            layer,
            pt: packet.header.payload_type,
            seq_no: *packet.seq_no,
            time: packet.time.numer(),
            marker: packet.header.marker,
            audio_level: ext.audio_level,
            voice_activity: ext.voice_activity,
            video_orientation: ext.video_orientation,
            arrival: packet.timestamp,
            payload: packet.payload.clone(),
        }
    }
}

impl Sfu {
    /// Declares a track published on another node (`origin`) in a room with receivers here.
    /// It is relayed only while receivers here need it; audio always, for loudest-N.
    pub fn add_remote_track(
        &mut self,
        now: Instant,
        room: RoomId,
        track_id: TrackId,
        owner: ParticipantId,
        kind: TrackKind,
        origin: NodeId,
    ) {
        self.now = now;
        if self.tracks.contains_key(&track_id) {
            return;
        }
        let mut track = Track::new(owner, Mid::from("relay"), media_kind(kind), false, now);
        track.origin = Some((origin, room.clone()));
        self.tracks.insert(track_id, track);
        self.rooms
            .entry(room)
            .or_default()
            .remote_tracks
            .push(track_id);
        self.report_counts();
    }

    /// Forgets a remote track (unpublished at its origin, or its publisher left).
    pub fn remove_remote_track(&mut self, track_id: TrackId) {
        let Some(track) = self.tracks.get(&track_id) else {
            return;
        };
        let Some((_, room_id)) = track.origin.clone() else {
            return;
        };
        let owner = track.owner;
        self.unpublish(owner, Mid::from("relay"), track_id);
        if let Some(room) = self.rooms.get_mut(&room_id) {
            room.remote_tracks.retain(|t| *t != track_id);
            room.speakers.remove(owner);
            room.loudest.remove(owner);
            // A room known here only for remote tracks is gone with its last one.
            if room.members.is_empty() && room.remote_tracks.is_empty() {
                self.rooms.remove(&room_id);
            }
        }
        self.report_counts();
    }

    /// A packet of a remote track arrived from its origin.
    pub fn handle_relay_media(&mut self, now: Instant, from: &NodeId, media: RelayMedia) {
        self.now = now;
        let Some(track) = self.tracks.get_mut(&media.track) else {
            return;
        };
        if track.origin_node() != Some(from) {
            return;
        }
        let Some(params) = track.remote_payload(media.pt) else {
            trace!(track = %media.track, "relayed packet before its codec is known");
            return;
        };
        let kind = track.kind;
        let owner = track.owner;
        let missing = self.relay_book.gap(media.track, media.layer, media.seq_no);
        if !missing.is_empty() && kind == MediaKind::Video {
            self.metrics.relay_nacks.inc_by(missing.len() as u64);
            self.out.push_back(SfuOutput::Relay {
                node: from.clone(),
                message: RelayMessage::Control(RelayControl::Nack {
                    track: media.track,
                    layer: media.layer,
                    seq_nos: missing,
                }),
            });
        }
        let video = if kind == MediaKind::Video {
            VideoPacket::inspect(params.spec().codec, &media.payload)
        } else {
            VideoPacket::default()
        };
        if let Some(level) = media.audio_level
            && kind == MediaKind::Audio
            && let Some((_, room_id)) = &track.origin
            && let Some(room) = self.rooms.get_mut(room_id)
        {
            room.speakers.record(owner, level, now);
        }
        let ext_vals = ExtensionValues {
            audio_level: media.audio_level,
            voice_activity: media.voice_activity,
            video_orientation: media.video_orientation,
            ..ExtensionValues::default()
        };
        let incoming = Incoming {
            pt: media.pt,
            seq_no: media.seq_no,
            time: MediaTime::new(media.time, params.spec().clock_rate),
            marker: media.marker,
            ext_vals,
            payload: &media.payload,
            arrival: media.arrival,
            params,
            kind,
            layer: media.layer,
            video,
        };
        self.forward_to_subscribers(media.track, &incoming);
    }

    /// A control message from another node about one of the tracks.
    pub fn handle_relay_control(&mut self, now: Instant, from: NodeId, control: RelayControl) {
        self.now = now;
        match control {
            RelayControl::Want { track, layers } => {
                let Some(t) = self.tracks.get_mut(&track).filter(|t| t.origin.is_none()) else {
                    return;
                };
                for layer in &layers {
                    t.mark_wanted(*layer, now);
                }
                let until = now + RELAY_LEASE;
                let added = match t.relays.iter_mut().find(|l| l.node == from) {
                    Some(lease) => {
                        let new_layers: Vec<LayerKey> = layers
                            .iter()
                            .filter(|l| !lease.layers.contains(l))
                            .copied()
                            .collect();
                        lease.layers = layers;
                        lease.until = until;
                        new_layers
                    }
                    None => {
                        t.relays.push(RelayLease {
                            node: from.clone(),
                            layers: layers.clone(),
                            until,
                        });
                        layers
                    }
                };
                let answer = RelayControl::Layers {
                    track,
                    layers: t.describe_layers(now),
                    payloads: t.payloads(),
                };
                self.out.push_back(SfuOutput::Relay {
                    node: from,
                    message: RelayMessage::Control(answer),
                });
                // A newly relayed video layer starts at a keyframe.
                for layer in added {
                    self.request_keyframe(track, layer, KeyframeRequestKind::Pli);
                }
            }
            RelayControl::Layers {
                track,
                layers,
                payloads,
            } => {
                if let Some(t) = self
                    .tracks
                    .get_mut(&track)
                    .filter(|t| t.origin_node() == Some(&from))
                {
                    t.apply_remote_layers(&layers, &payloads, now);
                }
            }
            RelayControl::Keyframe { track, layer } => {
                if self.tracks.get(&track).is_some_and(|t| t.origin.is_none()) {
                    self.request_keyframe(track, layer, KeyframeRequestKind::Pli);
                }
            }
            RelayControl::Nack {
                track,
                layer,
                seq_nos,
            } => {
                for media in self.relay_book.cached(track, layer, &seq_nos) {
                    self.out.push_back(SfuOutput::Relay {
                        node: from.clone(),
                        message: RelayMessage::Media(media),
                    });
                }
            }
        }
    }

    /// Sends a local track's packet to the nodes that asked for its layer.
    pub(super) fn relay_out(&mut self, track_id: TrackId, layer: LayerKey, packet: &RtpPacket) {
        let now = self.now;
        let Some(track) = self.tracks.get_mut(&track_id) else {
            return;
        };
        if track.relays.is_empty() {
            return;
        }
        track.relays.retain(|lease| lease.until > now);
        let audio = track.kind == MediaKind::Audio;
        let mut media = None;
        for lease in &track.relays {
            if !audio && !lease.layers.contains(&layer) {
                continue;
            }
            let media =
                media.get_or_insert_with(|| RelayMedia::from_packet(track_id, layer, packet));
            self.out.push_back(SfuOutput::Relay {
                node: lease.node.clone(),
                message: RelayMessage::Media(media.clone()),
            });
        }
        if let Some(media) = media.filter(|_| !audio) {
            self.relay_book.keep(media);
        }
    }

    /// Housekeeping for relayed tracks: renews this node's leases on the remote tracks its
    /// receivers need (audio always while the room has members here), and drops expired leases
    /// of local tracks.
    pub(super) fn relay_housekeeping(&mut self) {
        let now = self.now;
        let mut wants = Vec::new();
        for room in self.rooms.values() {
            if room.members.is_empty() {
                continue;
            }
            for track_id in &room.remote_tracks {
                let Some(track) = self.tracks.get(track_id) else {
                    continue;
                };
                let Some(origin) = track.origin_node() else {
                    continue;
                };
                let layers = if track.kind == MediaKind::Audio {
                    vec![None]
                } else if track.subscribers.is_empty() {
                    // No video, but the layers and codecs, so a first receiver starts at once.
                    Vec::new()
                } else {
                    let mut layers = track.recently_wanted(now, WANTED_WINDOW);
                    for (subscriber, mid) in &track.subscribers {
                        let slot = self.peers.get(subscriber).and_then(|p| p.slots.get(mid));
                        if let Some(slot) = slot {
                            for key in [Some(slot.target), slot.current].into_iter().flatten() {
                                if !layers.contains(&key) {
                                    layers.push(key);
                                }
                            }
                        }
                    }
                    layers
                };
                wants.push((
                    origin.clone(),
                    RelayControl::Want {
                        track: *track_id,
                        layers,
                    },
                ));
            }
        }
        for (node, want) in wants {
            self.out.push_back(SfuOutput::Relay {
                node,
                message: RelayMessage::Control(want),
            });
        }
        for track in self.tracks.values_mut() {
            track.relays.retain(|lease| lease.until > now);
        }
    }
}

impl RelayBook {
    fn keep(&mut self, media: RelayMedia) {
        if self.cache.len() >= RELAY_CACHE_PACKETS {
            self.cache.pop_front();
        }
        self.cache.push_back(media);
    }

    fn cached(&self, track: TrackId, layer: LayerKey, seq_nos: &[u64]) -> Vec<RelayMedia> {
        self.cache
            .iter()
            .filter(|m| m.track == track && m.layer == layer && seq_nos.contains(&m.seq_no))
            .cloned()
            .collect()
    }

    /// Records a relayed packet's sequence number; returns the ones skipped since the last.
    fn gap(&mut self, track: TrackId, layer: LayerKey, seq_no: u64) -> Vec<u64> {
        let Some(entry) = self.last_seq.get_mut(&(track, layer)) else {
            self.last_seq.insert((track, layer), seq_no);
            return Vec::new();
        };
        let last = *entry;
        if seq_no <= last {
            // Far behind: the stream started again (a new source); count from here.
            if last - seq_no > MAX_NACK_GAP {
                *entry = seq_no;
            }
            return Vec::new();
        }
        *entry = seq_no;
        if seq_no - last > MAX_NACK_GAP {
            return Vec::new();
        }
        (last + 1..seq_no).collect()
    }

    /// Forgets a track's sequence numbers (it is gone).
    pub fn forget(&mut self, track: TrackId) {
        self.last_seq.retain(|(t, _), _| *t != track);
        self.cache.retain(|m| m.track != track);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relayed_gaps_are_reported_once_and_restarts_are_not_loss() {
        let mut book = RelayBook::default();
        let track = TrackId(7);
        assert!(book.gap(track, None, 100).is_empty());
        assert!(book.gap(track, None, 101).is_empty());
        assert_eq!(book.gap(track, None, 104), vec![102, 103]);
        assert!(
            book.gap(track, None, 102).is_empty(),
            "a resend fills the gap"
        );
        assert!(book.gap(track, None, 104 + MAX_NACK_GAP + 1).is_empty());
        // A new start far behind: counted from there, its gaps reported again.
        assert!(book.gap(track, None, 10).is_empty());
        assert_eq!(book.gap(track, None, 12), vec![11]);
        // Layers are counted apart.
        assert!(book.gap(track, Some("f".into()), 5).is_empty());
        assert_eq!(book.gap(track, Some("f".into()), 7), vec![6]);
    }
}
