//! Active-speaker detection from RFC 6464 audio levels, with hysteresis so the highlight does
//! not flicker between two people talking at once.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long a level keeps counting: a smoothed window of about one second.
const SMOOTHING: Duration = Duration::from_millis(600);
/// Below this smoothed loudness (0–127 scale, 127 = loudest) nobody is speaking.
const SPEAKING_THRESHOLD: f64 = 30.0;
/// A challenger must be this much louder than the current speaker to take over.
const TAKEOVER_RATIO: f64 = 1.3;
/// Minimum time between two speaker changes.
const MIN_DWELL: Duration = Duration::from_millis(800);

#[derive(Debug, Clone, Copy)]
struct Loudness {
    smoothed: f64,
    updated: Instant,
}

/// Tracks loudness per participant of one room. Generic over the participant key so it can be
/// tested with plain numbers.
#[derive(Debug)]
pub struct SpeakerDetector<K> {
    levels: HashMap<K, Loudness>,
    current: Option<K>,
    changed_at: Option<Instant>,
}

impl<K> Default for SpeakerDetector<K> {
    fn default() -> Self {
        Self {
            levels: HashMap::new(),
            current: None,
            changed_at: None,
        }
    }
}

impl<K: Copy + Eq + std::hash::Hash> SpeakerDetector<K> {
    /// Records one audio packet's level: `level_dbov` is RFC 6464's value as a negative number
    /// (0 = loudest, -127 = silence).
    pub fn record(&mut self, who: K, level_dbov: i8, now: Instant) {
        let loudness = f64::from(127 - level_dbov.unsigned_abs().min(127));
        let entry = self.levels.entry(who).or_insert(Loudness {
            smoothed: 0.0,
            updated: now,
        });
        let decayed = decay(entry.smoothed, now.saturating_duration_since(entry.updated));
        // Exponential moving average; packets come every 20 ms.
        entry.smoothed = decayed + (loudness - decayed) * 0.1;
        entry.updated = now;
    }

    pub fn remove(&mut self, who: K) {
        self.levels.remove(&who);
        if self.current == Some(who) {
            self.current = None;
        }
    }

    pub fn current(&self) -> Option<K> {
        self.current
    }

    /// One participant's smoothed loudness now (0–127 scale; 0 if never heard).
    pub fn loudness_of(&self, who: K, now: Instant) -> f64 {
        self.levels
            .get(&who)
            .map(|l| decay(l.smoothed, now.saturating_duration_since(l.updated)))
            .unwrap_or(0.0)
    }

    /// Everyone's smoothed loudness now (0–127 scale), for loudest-N selection.
    pub fn loudness(&self, now: Instant) -> HashMap<K, f64> {
        self.levels
            .iter()
            .map(|(k, l)| {
                (
                    *k,
                    decay(l.smoothed, now.saturating_duration_since(l.updated)),
                )
            })
            .collect()
    }

    /// Re-evaluates who speaks; returns the new speaker when it changed. A speaker stays until
    /// somebody else is clearly louder: a silent room keeps its last speaker highlighted, as
    /// users of other meeting tools expect.
    pub fn evaluate(&mut self, now: Instant) -> Option<Option<K>> {
        let loudness = |l: &Loudness| decay(l.smoothed, now.saturating_duration_since(l.updated));
        let (loudest, level) = self
            .levels
            .iter()
            .map(|(k, l)| (*k, loudness(l)))
            .max_by(|a, b| a.1.total_cmp(&b.1))?;
        if level < SPEAKING_THRESHOLD || self.current == Some(loudest) {
            return None;
        }
        if let Some(changed_at) = self.changed_at
            && now.saturating_duration_since(changed_at) < MIN_DWELL
        {
            return None;
        }
        let current_level = self
            .current
            .and_then(|c| self.levels.get(&c))
            .map(loudness)
            .unwrap_or(0.0);
        if level < current_level * TAKEOVER_RATIO {
            return None;
        }
        self.current = Some(loudest);
        self.changed_at = Some(now);
        Some(self.current)
    }
}

/// Loudness fades when no packet arrives (DTX silence, muted microphone).
fn decay(value: f64, elapsed: Duration) -> f64 {
    value * (-elapsed.as_secs_f64() / SMOOTHING.as_secs_f64()).exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(d: &mut SpeakerDetector<u32>, who: u32, level: i8, start: Instant, ms: u64) -> Instant {
        let mut t = start;
        for _ in 0..ms / 20 {
            t += Duration::from_millis(20);
            d.record(who, level, t);
        }
        t
    }

    #[test]
    fn the_loud_participant_becomes_the_speaker() {
        let mut d = SpeakerDetector::default();
        let t0 = Instant::now();
        feed(&mut d, 2, -127, t0, 1000);
        let t = feed(&mut d, 1, -20, t0, 1000);
        assert_eq!(d.evaluate(t), Some(Some(1)));
        assert_eq!(d.evaluate(t), None, "no repeated change events");
    }

    #[test]
    fn silence_is_nobody() {
        let mut d = SpeakerDetector::default();
        let t = feed(&mut d, 1, -127, Instant::now(), 1000);
        assert_eq!(d.evaluate(t), None);
        assert_eq!(d.current(), None);
    }

    #[test]
    fn a_slightly_louder_challenger_does_not_take_over() {
        let mut d = SpeakerDetector::default();
        let t0 = Instant::now();
        let t = feed(&mut d, 1, -30, t0, 1000);
        assert_eq!(d.evaluate(t), Some(Some(1)));
        // Both talk; 2 is a little louder. Feed interleaved for two seconds.
        let mut t = t;
        for _ in 0..100 {
            t += Duration::from_millis(20);
            d.record(1, -30, t);
            d.record(2, -26, t);
        }
        assert_eq!(d.evaluate(t), None);
        assert_eq!(d.current(), Some(1));
    }

    #[test]
    fn a_clearly_louder_challenger_takes_over_after_the_dwell_time() {
        let mut d = SpeakerDetector::default();
        let t0 = Instant::now();
        let t = feed(&mut d, 1, -40, t0, 1000);
        assert_eq!(d.evaluate(t), Some(Some(1)));
        let t = feed(&mut d, 2, -10, t, 200);
        assert_eq!(d.evaluate(t), None, "too soon after the last change");
        let t = feed(&mut d, 2, -10, t, 1000);
        assert_eq!(d.evaluate(t), Some(Some(2)));
    }

    #[test]
    fn a_speaker_who_leaves_is_forgotten() {
        let mut d = SpeakerDetector::default();
        let t = feed(&mut d, 1, -20, Instant::now(), 1000);
        d.evaluate(t);
        d.remove(1);
        assert_eq!(d.current(), None);
    }
}
