//! A published track: who sends it, which simulcast layers arrive, who receives it.

use std::time::{Duration, Instant};

use str0m::Rtc;
use str0m::format::PayloadParams;
use str0m::media::{MediaKind, Mid, Pt, Rid};
use ting_protocol::{NodeId, ParticipantId, RoomId};

use super::relay::{RelayLease, RemoteLayer};
use crate::layer::LayerOption;

/// A simulcast layer is named by its RID; a track without simulcast has one layer, `None`.
pub type LayerKey = Option<Rid>;

/// A layer counts as available while packets arrived within this time.
const LAYER_STALE_AFTER: Duration = Duration::from_millis(2000);
/// A layer nobody has chosen for this long is paused at the publisher.
const PAUSE_AFTER: Duration = Duration::from_secs(3);
/// Bitrates are measured over windows of this length.
const BITRATE_WINDOW: Duration = Duration::from_millis(1000);

#[derive(Debug)]
pub struct LayerStat {
    pub key: LayerKey,
    /// Declared in the SDP but no packet yet: known (so it can be asked for) but not available.
    seen: bool,
    pub bitrate_bps: u64,
    pub height: Option<u32>,
    last_seen: Instant,
    window_bytes: u64,
    window_start: Instant,
}

#[derive(Debug)]
pub struct Track {
    pub owner: ParticipantId,
    /// The publisher's m-line.
    pub mid: Mid,
    pub kind: MediaKind,
    pub muted: bool,
    pub layers: Vec<LayerStat>,
    /// Receivers: (participant, their m-line showing this track).
    pub subscribers: Vec<(ParticipantId, Mid)>,
    last_keyframe_request: Vec<(LayerKey, Instant)>,
    /// When each layer was last chosen for some receiver.
    wanted_at: Vec<(LayerKey, Instant)>,
    /// Layers the publisher was last told to send.
    announced: Option<Vec<LayerKey>>,
    created: Instant,
    /// The publisher's payload types seen on this track and their codecs.
    payloads: Vec<(Pt, PayloadParams)>,
    /// `Some` for a track published on another node and relayed here: that node, and the
    /// room here it belongs to.
    pub origin: Option<(NodeId, RoomId)>,
    /// Nodes this track is relayed to, with the layers each asked for.
    pub relays: Vec<RelayLease>,
}

impl Track {
    pub fn new(owner: ParticipantId, mid: Mid, kind: MediaKind, muted: bool, now: Instant) -> Self {
        Self {
            wanted_at: Vec::new(),
            announced: None,
            created: now,
            payloads: Vec::new(),
            owner,
            mid,
            kind,
            muted,
            layers: Vec::new(),
            subscribers: Vec::new(),
            last_keyframe_request: Vec::new(),
            origin: None,
            relays: Vec::new(),
        }
    }

    /// The node a relayed track comes from (`None` for a local track).
    pub fn origin_node(&self) -> Option<&NodeId> {
        self.origin.as_ref().map(|(node, _)| node)
    }

    /// The payload types this track was seen with, for the nodes it is relayed to.
    pub fn payloads(&self) -> Vec<PayloadParams> {
        self.payloads.iter().map(|(_, p)| *p).collect()
    }

    /// The codec of payload type `pt` of a relayed track, as its origin announced it.
    pub fn remote_payload(&self, pt: Pt) -> Option<PayloadParams> {
        self.payloads
            .iter()
            .find(|(p, _)| *p == pt)
            .map(|(_, params)| *params)
    }

    /// Takes a relayed track's layers and codecs as its origin node sees them: the layer
    /// choice here works from the publisher's real layers, relayed or not.
    pub fn apply_remote_layers(
        &mut self,
        layers: &[RemoteLayer],
        payloads: &[PayloadParams],
        now: Instant,
    ) {
        for remote in layers {
            let key = remote.key;
            self.declare_layer(key, now);
            if let Some(layer) = self.layers.iter_mut().find(|l| l.key == key) {
                layer.bitrate_bps = remote.bitrate_bps;
                layer.height = remote.height.or(layer.height);
                if remote.available {
                    layer.seen = true;
                    layer.last_seen = now;
                }
            }
        }
        for params in payloads {
            if self.remote_payload(params.pt()).is_none() {
                self.payloads.push((params.pt(), *params));
            }
        }
    }

    /// The layers as the origin node describes them to the nodes it relays to.
    pub fn describe_layers(&self, now: Instant) -> Vec<RemoteLayer> {
        self.layers
            .iter()
            .map(|l| RemoteLayer {
                key: l.key,
                bitrate_bps: l.bitrate_bps,
                height: l.height,
                available: l.seen && now.saturating_duration_since(l.last_seen) < LAYER_STALE_AFTER,
            })
            .collect()
    }

    /// Layers some receiver here chose within `window`.
    pub fn recently_wanted(&self, now: Instant, window: Duration) -> Vec<LayerKey> {
        self.wanted_at
            .iter()
            .filter(|(_, at)| now.saturating_duration_since(*at) < window)
            .map(|(k, _)| *k)
            .collect()
    }

    /// The codec parameters of the publisher's payload type `pt`, if it negotiated it.
    pub fn payload_params(&mut self, pt: Pt, publisher: &Rtc) -> Option<PayloadParams> {
        if let Some((_, params)) = self.payloads.iter().find(|(p, _)| *p == pt) {
            return Some(*params);
        }
        let params = *publisher.codec_config().find(|p| p.pt() == pt)?;
        self.payloads.push((pt, params));
        Some(params)
    }

    /// Accounts one received packet to its layer.
    pub fn record_packet(
        &mut self,
        key: LayerKey,
        bytes: usize,
        height: Option<u32>,
        now: Instant,
    ) {
        let layer = match self.layers.iter_mut().position(|l| l.key == key) {
            Some(i) => &mut self.layers[i],
            None => {
                self.layers.push(LayerStat {
                    key,
                    seen: true,
                    bitrate_bps: 0,
                    height: None,
                    last_seen: now,
                    window_bytes: 0,
                    window_start: now,
                });
                let last = self.layers.len() - 1;
                &mut self.layers[last]
            }
        };
        if !layer.seen {
            layer.seen = true;
            layer.window_start = now;
        }
        layer.window_bytes += bytes as u64;
        layer.last_seen = now;
        if height.is_some() {
            layer.height = height;
        }
        let elapsed = now.saturating_duration_since(layer.window_start);
        if elapsed >= BITRATE_WINDOW {
            layer.bitrate_bps = layer.window_bytes * 8 * 1000 / elapsed.as_millis().max(1) as u64;
            layer.window_bytes = 0;
            layer.window_start = now;
        }
    }

    /// Layers that currently arrive, cheapest first, with the key each index stands for.
    pub fn available_layers(&self, now: Instant) -> (Vec<LayerKey>, Vec<LayerOption>) {
        self.layers_where(|l| {
            l.seen && now.saturating_duration_since(l.last_seen) < LAYER_STALE_AFTER
        })
    }

    /// Registers a simulcast layer the publisher's SDP declares, before any of it arrives, so
    /// that receivers can ask for it (an encoder starts its top layer last; it must not be
    /// paused for not having been seen yet).
    pub fn declare_layer(&mut self, key: LayerKey, now: Instant) {
        if self.layers.iter().all(|l| l.key != key) {
            self.layers.push(LayerStat {
                key,
                seen: false,
                bitrate_bps: 0,
                height: None,
                last_seen: now,
                window_bytes: 0,
                window_start: now,
            });
        }
    }

    /// Every layer ever seen, including paused ones, cheapest first.
    pub fn known_layers(&self) -> (Vec<LayerKey>, Vec<LayerOption>) {
        self.layers_where(|_| true)
    }

    /// Notes that a receiver would take `key` now (it counts as wanted for a while).
    pub fn mark_wanted(&mut self, key: LayerKey, now: Instant) {
        match self.wanted_at.iter_mut().find(|(k, _)| *k == key) {
            Some((_, at)) => *at = now,
            None => self.wanted_at.push((key, now)),
        }
    }

    /// The simulcast layers someone wanted within `PAUSE_AFTER` — what the publisher should
    /// keep sending — if that differs from what was last announced. `None` for tracks
    /// without simulcast or when nothing changed.
    pub fn layers_to_announce(&mut self, now: Instant) -> Option<Vec<LayerKey>> {
        if self.layers.len() < 2 {
            return None;
        }
        let (keys, _) = self.known_layers();
        let active: Vec<LayerKey> = keys
            .into_iter()
            .filter(|k| {
                let wanted = self
                    .wanted_at
                    .iter()
                    .find(|(w, _)| w == k)
                    .map(|(_, at)| *at);
                // A layer nobody asked for yet counts from when it appeared.
                let since = wanted.unwrap_or(self.created);
                now.saturating_duration_since(since) < PAUSE_AFTER
            })
            .collect();
        if self.announced.as_ref() == Some(&active) {
            return None;
        }
        self.announced = Some(active.clone());
        Some(active)
    }

    fn layers_where(&self, keep: impl Fn(&LayerStat) -> bool) -> (Vec<LayerKey>, Vec<LayerOption>) {
        let mut live: Vec<&LayerStat> = self.layers.iter().filter(|l| keep(l)).collect();
        // Bitrates alone can mislead (an encoder ramping up sends its top layer below the
        // middle one), so the browsers' RID order (q < h < f) decides first, then the height
        // read from keyframes, then the measured bitrate.
        live.sort_by_key(|l| (rid_rank(&l.key), l.height, l.bitrate_bps));
        let keys = live.iter().map(|l| l.key).collect();
        let options = live
            .iter()
            .enumerate()
            .map(|(index, l)| LayerOption {
                index,
                bitrate_bps: l.bitrate_bps,
                height: l.height,
            })
            .collect();
        (keys, options)
    }

    /// Whether a keyframe request for `key` may go out now (at most one per `min_interval`),
    /// recording it if so.
    pub fn allow_keyframe_request(
        &mut self,
        key: LayerKey,
        now: Instant,
        min_interval: Duration,
    ) -> bool {
        match self
            .last_keyframe_request
            .iter_mut()
            .find(|(k, _)| *k == key)
        {
            Some((_, at)) if now.saturating_duration_since(*at) < min_interval => false,
            Some((_, at)) => {
                *at = now;
                true
            }
            None => {
                self.last_keyframe_request.push((key, now));
                true
            }
        }
    }
}

/// Browsers' conventional simulcast RIDs, smallest first; unknown names sort last.
fn rid_rank(key: &LayerKey) -> u8 {
    match key.as_ref().map(|r| &**r) {
        Some("q") | Some("l") => 0,
        Some("h") | Some("m") => 1,
        Some("f") => 2,
        _ => 3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyframe_requests_are_rate_limited_per_layer() {
        let mut t = Track::new(
            ParticipantId(1),
            Mid::from("0"),
            MediaKind::Video,
            false,
            Instant::now(),
        );
        let now = Instant::now();
        let gap = Duration::from_millis(500);
        let f = Some(Rid::from("f"));
        assert!(t.allow_keyframe_request(f, now, gap));
        assert!(!t.allow_keyframe_request(f, now + Duration::from_millis(100), gap));
        assert!(
            t.allow_keyframe_request(None, now, gap),
            "other layers are independent"
        );
        assert!(t.allow_keyframe_request(f, now + gap, gap));
    }

    #[test]
    fn layers_are_ordered_by_bitrate_and_go_stale() {
        let mut t = Track::new(
            ParticipantId(1),
            Mid::from("0"),
            MediaKind::Video,
            false,
            Instant::now(),
        );
        let t0 = Instant::now();
        for i in 0..=50u64 {
            let now = t0 + Duration::from_millis(i * 20);
            t.record_packet(Some(Rid::from("f")), 4000, None, now);
            t.record_packet(Some(Rid::from("q")), 400, None, now);
        }
        let (keys, opts) = t.available_layers(t0 + Duration::from_millis(1000));
        assert_eq!(keys, vec![Some(Rid::from("q")), Some(Rid::from("f"))]);
        assert!(opts[0].bitrate_bps < opts[1].bitrate_bps);
        let (keys, _) = t.available_layers(t0 + Duration::from_secs(10));
        assert!(keys.is_empty());
    }
}
