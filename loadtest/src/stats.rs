//! Measurement: histograms with percentiles, loss from sequence gaps, freeze detection, and
//! what one receiver saw from each source. Times are microseconds on the run clock.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::media::Probe;

/// A log-linear histogram of non-negative integers (microseconds, usually): exact below 64,
/// then 32 buckets per power of two (at most ~3 % error). Mergeable; grows as needed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Histogram {
    counts: Vec<u64>,
    count: u64,
    sum: u128,
    min: u64,
    max: u64,
}

const EXACT: u64 = 64;
const SUB_BITS: u32 = 5;

fn bucket_of(v: u64) -> usize {
    if v < EXACT {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros(); // >= 6
    let sub = (v >> (exp - SUB_BITS)) & ((1 << SUB_BITS) - 1);
    EXACT as usize + ((exp - 6) as usize) * (1 << SUB_BITS) + sub as usize
}

/// The largest value that falls in bucket `b`.
fn bucket_high(b: usize) -> u64 {
    if (b as u64) < EXACT {
        return b as u64;
    }
    let rel = b - EXACT as usize;
    let exp = (rel >> SUB_BITS) as u32 + 6;
    let sub = (rel & ((1 << SUB_BITS) - 1)) as u64;
    let low = (1u64 << exp) | (sub << (exp - SUB_BITS));
    low + (1u64 << (exp - SUB_BITS)) - 1
}

impl Histogram {
    pub fn record(&mut self, v: u64) {
        let b = bucket_of(v);
        if self.counts.len() <= b {
            self.counts.resize(b + 1, 0);
        }
        self.counts[b] += 1;
        if self.count == 0 || v < self.min {
            self.min = v;
        }
        self.max = self.max.max(v);
        self.count += 1;
        self.sum += u128::from(v);
    }

    pub fn merge(&mut self, other: &Histogram) {
        if other.count == 0 {
            return;
        }
        if self.counts.len() < other.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        if self.count == 0 || other.min < self.min {
            self.min = other.min;
        }
        self.max = self.max.max(other.max);
        self.count += other.count;
        self.sum += other.sum;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    pub fn min(&self) -> u64 {
        self.min
    }

    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum as f64 / self.count as f64
        }
    }

    /// The value below or at which `p` percent of the samples lie (nearest rank; the top of its
    /// bucket, capped by the maximum). 0 when empty.
    pub fn percentile(&self, p: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((p / 100.0) * self.count as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (b, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return bucket_high(b).min(self.max).max(self.min);
            }
        }
        self.max
    }
}

/// Percentiles of a histogram of microseconds, in milliseconds, for reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    pub fn of_us(h: &Histogram) -> Self {
        let ms = |us: u64| (us as f64 / 1000.0 * 100.0).round() / 100.0;
        Self {
            count: h.count(),
            p50: ms(h.percentile(50.0)),
            p90: ms(h.percentile(90.0)),
            p99: ms(h.percentile(99.0)),
            max: ms(h.max()),
        }
    }
}

/// Loss from the sequence numbers of one stream: what was expected between the first and the
/// highest number seen, against what arrived. Duplicates (a video frame number seen again when
/// the SFU switches layers) do not count twice.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeqTracker {
    first: Option<u32>,
    highest: u32,
    received: u64,
    /// Windows closed by [`SeqTracker::restart`]: (expected, received).
    closed: (u64, u64),
    pub duplicates: u64,
    pub reordered: u64,
}

impl SeqTracker {
    pub fn record(&mut self, seq: u32) {
        match self.first {
            None => {
                self.first = Some(seq);
                self.highest = seq;
                self.received = 1;
            }
            Some(_) if seq > self.highest => {
                self.highest = seq;
                self.received += 1;
            }
            Some(_) if seq == self.highest => self.duplicates += 1,
            Some(first) if seq < first => {
                // Older than anything seen: it widens the window.
                self.first = Some(seq);
                self.received += 1;
                self.reordered += 1;
            }
            Some(_) => {
                self.received += 1;
                self.reordered += 1;
            }
        }
    }

    /// Starts a new window: what was not sent to this receiver in between (a loudest-N slot
    /// that showed somebody else) is not loss.
    pub fn restart(&mut self) {
        let window = self.window_expected();
        self.closed.0 += window;
        self.closed.1 += self.received.min(window);
        self.first = None;
        self.received = 0;
    }

    fn window_expected(&self) -> u64 {
        self.first
            .map(|f| u64::from(self.highest - f) + 1)
            .unwrap_or(0)
    }

    pub fn received(&self) -> u64 {
        self.closed.1 + self.received
    }

    pub fn expected(&self) -> u64 {
        self.closed.0 + self.window_expected()
    }

    pub fn lost(&self) -> u64 {
        self.closed.0 - self.closed.1 + self.window_expected().saturating_sub(self.received)
    }
}

/// A video freeze is a gap longer than the threshold between two frames of one source (or
/// between its last frame and the end of the measurement, while still subscribed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FreezeDetector {
    threshold_us: u64,
    last_us: Option<u64>,
    pub count: u32,
    pub frozen_us: u64,
    pub longest_us: u64,
}

/// A gap between video frames longer than this is a freeze.
pub const FREEZE_THRESHOLD_US: u64 = 500_000;

impl Default for FreezeDetector {
    fn default() -> Self {
        Self::new(FREEZE_THRESHOLD_US)
    }
}

impl FreezeDetector {
    pub fn new(threshold_us: u64) -> Self {
        Self {
            threshold_us,
            last_us: None,
            count: 0,
            frozen_us: 0,
            longest_us: 0,
        }
    }

    fn gap(&mut self, at_us: u64) {
        if let Some(last) = self.last_us {
            let gap = at_us.saturating_sub(last);
            if gap > self.threshold_us {
                self.count += 1;
                self.frozen_us += gap;
                self.longest_us = self.longest_us.max(gap);
            }
        }
    }

    /// A frame arrived.
    pub fn frame(&mut self, at_us: u64) {
        self.gap(at_us);
        self.last_us = Some(self.last_us.map_or(at_us, |l| l.max(at_us)));
    }

    /// The measurement ends at `end_us`: a gap still open counts.
    pub fn finish(&mut self, end_us: u64) {
        self.gap(end_us);
        self.last_us = None;
    }
}

/// What one receiver got from one sender.
#[derive(Debug, Clone, Default)]
pub struct SourceStats {
    pub audio: SeqTracker,
    pub video: SeqTracker,
    pub freeze: FreezeDetector,
    pub audio_frames: u64,
    pub video_frames: u64,
    pub keyframes: u64,
    /// Video frames by layer (q, h, f).
    pub layers: [u64; 3],
    pub first_audio_us: Option<u64>,
    pub first_video_us: Option<u64>,
    last_audio_us: u64,
}

/// A sender's audio on a loudest-N slot that pauses this long starts a new loss window.
const SLOT_AUDIO_GAP_US: u64 = 1_000_000;

/// Everything one receiver measured.
#[derive(Debug, Clone, Default)]
pub struct ReceiverStats {
    pub sources: BTreeMap<u64, SourceStats>,
    pub audio_latency: Histogram,
    pub video_latency: Histogram,
    pub media_bytes: u64,
    pub first_media_us: Option<u64>,
    /// When the last media frame arrived (run clock).
    pub last_media_us: Option<u64>,
    /// Frames whose probe names another sender than the track on that m-line.
    pub misrouted: u64,
    /// Frames without a readable probe.
    pub unreadable: u64,
}

impl ReceiverStats {
    /// A frame arrived at `recv_us` carrying `probe`; `via_slot`: on a loudest-N audio slot.
    pub fn frame(
        &mut self,
        probe: &Probe,
        recv_us: u64,
        len: usize,
        keyframe: bool,
        via_slot: bool,
    ) {
        self.media_bytes += len as u64;
        self.first_media_us.get_or_insert(recv_us);
        self.last_media_us = Some(recv_us);
        let latency = recv_us.saturating_sub(probe.sent_us);
        let source = self.sources.entry(probe.sender).or_default();
        match probe.layer.video_index() {
            None => {
                if via_slot
                    && source.audio_frames > 0
                    && recv_us.saturating_sub(source.last_audio_us) > SLOT_AUDIO_GAP_US
                {
                    source.audio.restart();
                }
                source.last_audio_us = recv_us;
                source.audio.record(probe.seq);
                source.audio_frames += 1;
                source.first_audio_us.get_or_insert(recv_us);
                self.audio_latency.record(latency);
            }
            Some(layer) => {
                source.video.record(probe.seq);
                source.video_frames += 1;
                source.layers[layer] += 1;
                if keyframe {
                    source.keyframes += 1;
                }
                source.first_video_us.get_or_insert(recv_us);
                source.freeze.frame(recv_us);
                self.video_latency.record(latency);
            }
        }
    }

    /// Ends the measurement at `end_us` for the senders whose video is still subscribed.
    pub fn finish(&mut self, end_us: u64, video_senders: impl IntoIterator<Item = u64>) {
        for sender in video_senders {
            if let Some(s) = self.sources.get_mut(&sender) {
                s.freeze.finish(end_us);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::Layer;

    #[test]
    fn percentiles_are_exact_for_small_values() {
        let mut h = Histogram::default();
        for v in 1..=100 {
            h.record(v);
        }
        assert_eq!(h.count(), 100);
        assert_eq!(h.percentile(50.0), 50);
        assert_eq!(h.percentile(99.0), 99);
        assert_eq!(h.percentile(100.0), 100);
        assert_eq!(h.percentile(0.0), 1);
        assert_eq!(h.min(), 1);
        assert_eq!(h.max(), 100);
        assert!((h.mean() - 50.5).abs() < 1e-9);
        assert_eq!(Histogram::default().percentile(50.0), 0);
    }

    #[test]
    fn percentiles_of_large_values_are_within_three_percent() {
        let mut h = Histogram::default();
        for v in 0..10_000u64 {
            h.record(v * 1000);
        }
        for p in [50.0, 90.0, 99.0] {
            let exact = (p / 100.0 * 10_000.0) as u64 * 1000 - 1000;
            let got = h.percentile(p);
            let err = (got as f64 - exact as f64).abs() / exact as f64;
            assert!(err < 0.03, "p{p}: {got} vs {exact}");
        }
        assert_eq!(h.percentile(100.0), 9_999_000);
        // Every bucket's top maps back to the bucket.
        for b in 0..1500 {
            assert_eq!(bucket_of(bucket_high(b)), b);
            assert_eq!(bucket_of(bucket_high(b) + 1), b + 1);
        }
    }

    #[test]
    fn histograms_merge() {
        let (mut a, mut b) = (Histogram::default(), Histogram::default());
        for v in 0..50 {
            a.record(v);
        }
        for v in 50..100 {
            b.record(v * 10);
        }
        a.merge(&b);
        assert_eq!(a.count(), 100);
        assert_eq!(a.min(), 0);
        assert_eq!(a.max(), 990);
        assert_eq!(a.percentile(50.0), 49);
        a.merge(&Histogram::default());
        assert_eq!(a.count(), 100);
    }

    #[test]
    fn loss_comes_from_sequence_gaps() {
        let mut s = SeqTracker::default();
        assert_eq!((s.expected(), s.lost()), (0, 0));
        for seq in [10, 11, 12, 15, 16] {
            s.record(seq);
        }
        assert_eq!(s.expected(), 7);
        assert_eq!(s.lost(), 2);
        // A duplicate does not hide a loss; a late one fills its gap.
        s.record(16);
        assert_eq!(s.duplicates, 1);
        assert_eq!(s.lost(), 2);
        s.record(13);
        assert_eq!(s.reordered, 1);
        assert_eq!(s.lost(), 1);
        // Older than the first: the window grows, nothing is lost.
        s.record(9);
        assert_eq!((s.expected(), s.lost()), (8, 1));
        // A restart keeps the totals and opens a new window.
        s.restart();
        s.record(100);
        s.record(102);
        assert_eq!((s.expected(), s.received(), s.lost()), (11, 9, 2));
    }

    #[test]
    fn freezes_are_gaps_over_half_a_second() {
        let mut f = FreezeDetector::default();
        for t in (0..1_000_000).step_by(33_000) {
            f.frame(t);
        }
        assert_eq!(f.count, 0);
        f.frame(990_000 + 600_000);
        assert_eq!(f.count, 1);
        assert_eq!(f.frozen_us, 600_000);
        f.frame(1_620_000);
        // Exactly at the threshold is not a freeze; an open gap at the end is.
        f.frame(2_120_000);
        assert_eq!(f.count, 1);
        f.finish(2_900_000);
        assert_eq!(f.count, 2);
        assert_eq!(f.longest_us, 780_000);
        // Without any frame, finishing is not a freeze (that is "received nothing").
        let mut never = FreezeDetector::default();
        never.finish(5_000_000);
        assert_eq!(never.count, 0);
    }

    #[test]
    fn receivers_count_per_source() {
        let mut r = ReceiverStats::default();
        let probe = |layer, sender, seq, sent_us| Probe {
            layer,
            sender,
            seq,
            sent_us,
        };
        r.frame(&probe(Layer::Audio, 1, 1, 1000), 3000, 80, false, false);
        r.frame(&probe(Layer::Audio, 1, 3, 41_000), 42_000, 80, false, false);
        r.frame(&probe(Layer::Q, 2, 1, 0), 5000, 600, true, false);
        r.frame(&probe(Layer::H, 2, 2, 33_000), 36_000, 2000, false, false);
        r.frame(&probe(Layer::Q, 2, 2, 33_000), 37_000, 600, false, false);
        assert_eq!(r.sources[&1].audio.lost(), 1);
        assert_eq!(r.sources[&2].video.lost(), 0);
        assert_eq!(r.sources[&2].video.duplicates, 1);
        assert_eq!(r.sources[&2].layers, [2, 1, 0]);
        assert_eq!(r.sources[&2].keyframes, 1);
        assert_eq!(r.first_media_us, Some(3000));
        // Bucket precision: within 3 %.
        assert!((1000..1030).contains(&r.audio_latency.percentile(50.0)));
        assert_eq!(r.video_latency.max(), 5000);
        r.finish(1_000_000, [2]);
        assert_eq!(r.sources[&2].freeze.count, 1);

        // On a loudest-N slot, a sender that was away for a while lost nothing.
        r.frame(&probe(Layer::Audio, 3, 1, 0), 100_000, 80, false, true);
        r.frame(&probe(Layer::Audio, 3, 2, 0), 120_000, 80, false, true);
        r.frame(&probe(Layer::Audio, 3, 90, 0), 3_000_000, 80, false, true);
        r.frame(&probe(Layer::Audio, 3, 92, 0), 3_040_000, 80, false, true);
        let s = r.sources[&3].audio;
        assert_eq!((s.expected(), s.received(), s.lost()), (5, 4, 1));
    }
}
