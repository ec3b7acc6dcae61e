//! One participant's media connection: its `Rtc`, what it publishes, what it receives.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use str0m::Rtc;
use str0m::media::{MediaTime, Mid};
use ting_protocol::{RoomId, TrackId};

use super::track::LayerKey;

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
    /// Timestamp lines of m-lines that show nothing right now, kept so the next source
    /// continues them.
    pub idle_timestamps: HashMap<Mid, TimestampRewriter>,
    /// Latest egress bandwidth estimate towards this peer.
    pub bandwidth_bps: u64,
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
    pub timestamps: TimestampRewriter,
    /// Whether the m-line's send stream was switched to unpaced (see `Sfu::forward`).
    pub unpaced: bool,
}

/// How long the selector must keep asking for a higher layer before the slot switches up.
/// Switching down is immediate; the delay keeps a fluctuating estimate from flapping layers.
const UPGRADE_DELAY: Duration = Duration::from_millis(1500);

impl Slot {
    pub fn new(track: TrackId, max_height: Option<u32>, timestamps: TimestampRewriter) -> Self {
        Self {
            track,
            max_height,
            current: None,
            unpaced: false,
            target: None,
            upgrade: None,
            timestamps,
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

/// Keeps outgoing RTP timestamps continuous when the source behind an m-line changes (another
/// simulcast layer or another track): each source has its own random timestamp base.
#[derive(Debug, Default)]
pub struct TimestampRewriter {
    offset: i64,
    last: Option<(u64, Instant)>,
    anchored: bool,
}

impl TimestampRewriter {
    /// The next frame comes from a different source; re-anchor on it.
    pub fn source_changed(&mut self) {
        self.anchored = false;
    }

    pub fn rewrite(&mut self, time: MediaTime, arrived: Instant) -> MediaTime {
        let rate = u64::from(time.denom());
        let incoming = time.numer() as i64;
        if !self.anchored {
            let expected = match self.last {
                // Continue from the last written timestamp, advanced by the wall-clock gap.
                Some((ts, at)) => {
                    let gap = arrived.saturating_duration_since(at);
                    let ticks = (gap.as_micros() as u64 * rate / 1_000_000).max(1);
                    (ts + ticks) as i64
                }
                None => incoming,
            };
            self.offset = expected - incoming;
            self.anchored = true;
        }
        let out = (incoming + self.offset).max(0) as u64;
        self.last = Some((out, arrived));
        MediaTime::new(out, time.frequency())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use str0m::media::Frequency;

    fn t90(v: u64) -> MediaTime {
        MediaTime::new(v, Frequency::NINETY_KHZ)
    }

    #[test]
    fn layers_go_down_at_once_and_up_only_after_a_steady_request() {
        let keys = [Some("q".into()), Some("h".into()), Some("f".into())];
        let mut slot = Slot::new(TrackId(1), None, TimestampRewriter::default());
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

    #[test]
    fn timestamps_stay_continuous_across_a_source_change() {
        let mut ts = TimestampRewriter::default();
        let t0 = Instant::now();
        assert_eq!(ts.rewrite(t90(1000), t0).numer(), 1000);
        assert_eq!(
            ts.rewrite(t90(4000), t0 + Duration::from_millis(33))
                .numer(),
            4000
        );
        ts.source_changed();
        // The new layer's clock is far away; 33 ms later we expect +2970 ticks.
        let after = t0 + Duration::from_millis(66);
        assert_eq!(ts.rewrite(t90(9_000_000), after).numer(), 4000 + 2970);
        // And the following frame keeps the new source's spacing.
        assert_eq!(
            ts.rewrite(t90(9_003_000), after).numer(),
            4000 + 2970 + 3000
        );
    }
}
