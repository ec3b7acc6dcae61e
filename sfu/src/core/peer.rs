//! One participant's media connection: its `Rtc`, what it publishes, what it receives.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use str0m::Rtc;
use str0m::media::{Mid, Pt};
use str0m::rtp::Ssrc;
use ting_protocol::{RoomId, TrackId};

use super::rewrite::LineContinuity;
use super::track::LayerKey;
use crate::loss_rate::LossBasedRate;

#[derive(Debug)]
pub struct Peer {
    pub room: RoomId,
    pub rtc: Rtc,
    pub connected: bool,
    /// The publisher's m-lines and the tracks they carry.
    pub published: HashMap<Mid, TrackId>,
    /// The receiver's m-lines and what they show.
    pub slots: HashMap<Mid, Slot>,
    /// Receive m-lines the server fills with the room's loudest speakers (loudest-N).
    pub audio_slots: Vec<Mid>,
    /// Numbering of m-lines that show nothing right now, kept so the next source continues it.
    pub idle_lines: HashMap<Mid, LineContinuity>,
    /// The publisher's incoming streams by SSRC: their m-line and simulcast layer.
    pub rx_routes: HashMap<Ssrc, (Mid, LayerKey)>,
    /// Latest egress bandwidth estimate towards this peer.
    pub bandwidth_bps: u64,
    /// For peers without send-side estimation: the rate judged from their loss reports.
    pub loss_rate: Option<LossBasedRate>,
    /// When str0m next wants `Input::Timeout`.
    pub timeout: Instant,
    /// Queued for `poll_output` draining.
    pub dirty: bool,
    /// Cumulative NACK / keyframe-request counts last seen in str0m's stats, by
    /// (mid, rid, ingress), so Prometheus counters get the increments.
    pub stats_seen: HashMap<(Mid, LayerKey, bool), (u64, u64)>,
}

/// A receive m-line of a subscriber showing one remote track.
#[derive(Debug)]
pub struct Slot {
    pub track: TrackId,
    pub max_height: Option<u32>,
    /// Layer being forwarded; `None` until a keyframe of `target` arrives.
    pub current: Option<LayerKey>,
    /// Layer the selector wants.
    pub target: LayerKey,
    /// A higher layer the selector has asked for since the given time.
    upgrade: Option<(LayerKey, Instant)>,
    /// Sequence numbers, timestamps and VP8 picture ids of the m-line, continuous across
    /// sources.
    pub line: LineContinuity,
    /// The publisher's payload type last seen and the receiver's matching one.
    pub payload_types: Option<(Pt, Pt)>,
    /// Whether the m-line's send stream was set up for forwarding: unpaced video and a
    /// resend cache of its own size (see `Sfu::forward`).
    pub stream_configured: bool,
}

/// How long the selector must keep asking for a higher layer before the slot switches up.
/// Switching down is immediate; the delay keeps a fluctuating estimate from flapping layers.
const UPGRADE_DELAY: Duration = Duration::from_millis(1500);

impl Slot {
    pub fn new(track: TrackId, max_height: Option<u32>, line: LineContinuity) -> Self {
        Self {
            track,
            max_height,
            current: None,
            stream_configured: false,
            target: None,
            upgrade: None,
            line,
            payload_types: None,
        }
    }

    /// Applies the selector's choice `keys[index]` (`keys` ordered lowest layer first).
    pub fn retarget(&mut self, keys: &[LayerKey], index: usize, now: Instant) {
        let wanted = keys[index];
        let is_upgrade = keys
            .iter()
            .position(|k| *k == self.target)
            .is_some_and(|p| index > p);
        if !is_upgrade {
            self.target = wanted;
            self.upgrade = None;
            return;
        }
        match self.upgrade {
            Some((key, since)) if key == wanted => {
                if now.saturating_duration_since(since) >= UPGRADE_DELAY {
                    self.target = wanted;
                    self.upgrade = None;
                }
            }
            _ => self.upgrade = Some((wanted, now)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_go_down_at_once_and_up_only_after_a_steady_request() {
        let keys = [Some("q".into()), Some("h".into()), Some("f".into())];
        let mut slot = Slot::new(TrackId(1), None, LineContinuity::default());
        let t0 = Instant::now();
        slot.retarget(&keys, 2, t0);
        assert_eq!(slot.target, keys[2], "the first choice applies at once");
        slot.retarget(&keys, 0, t0);
        assert_eq!(slot.target, keys[0], "down at once");
        slot.retarget(&keys, 2, t0);
        slot.retarget(&keys, 2, t0 + Duration::from_millis(500));
        assert_eq!(slot.target, keys[0], "not up yet");
        slot.retarget(&keys, 1, t0 + Duration::from_millis(600));
        slot.retarget(&keys, 1, t0 + Duration::from_millis(2000));
        assert_eq!(slot.target, keys[0], "a changed wish restarts the wait");
        slot.retarget(&keys, 1, t0 + Duration::from_millis(2200));
        assert_eq!(slot.target, keys[1]);
    }
}
