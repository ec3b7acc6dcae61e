//! Loudest-N audio: which N participants of a room are heard. A receiver gets only their
//! audio, so a 1000-person meeting costs what is *heard*, not what is joined.
//!
//! Hysteresis keeps the set stable: members stay until someone clearly louder needs the
//! place, and a member that just got in keeps it for a moment (speech has pauses).

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Smoothed loudness (0–127 scale) a participant needs to get in at all.
const MIN_LOUDNESS: f64 = 30.0;
/// A newcomer must be this much louder than the quietest member to replace it.
const REPLACE_RATIO: f64 = 1.3;
/// A member keeps its place at least this long.
const MIN_TENURE: Duration = Duration::from_millis(1500);

#[derive(Debug)]
pub struct LoudestSet<K> {
    members: Vec<K>,
    since: HashMap<K, Instant>,
}

impl<K> Default for LoudestSet<K> {
    fn default() -> Self {
        Self {
            members: Vec::new(),
            since: HashMap::new(),
        }
    }
}

impl<K: Copy + Eq + Hash> LoudestSet<K> {
    /// The current members, in the order they got in.
    pub fn members(&self) -> &[K] {
        &self.members
    }

    pub fn remove(&mut self, who: K) {
        self.members.retain(|m| *m != who);
        self.since.remove(&who);
    }

    /// Updates the set from current loudness values (`None` for someone no longer present);
    /// returns whether it changed.
    pub fn update(&mut self, loudness: &HashMap<K, f64>, n: usize, now: Instant) -> bool {
        let before = self.members.clone();
        let level = |k: &K| loudness.get(k).copied().unwrap_or(0.0);
        self.members.retain(|m| loudness.contains_key(m));
        self.members.truncate(n);
        let mut candidates: Vec<(K, f64)> = loudness
            .iter()
            .filter(|(k, l)| **l >= MIN_LOUDNESS && !self.members.contains(k))
            .map(|(k, l)| (*k, *l))
            .collect();
        candidates.sort_by(|a, b| b.1.total_cmp(&a.1));
        for (candidate, candidate_level) in candidates {
            if self.members.len() < n {
                self.members.push(candidate);
                self.since.insert(candidate, now);
                continue;
            }
            let replaceable = self
                .members
                .iter()
                .enumerate()
                .filter(|(_, m)| {
                    self.since
                        .get(m)
                        .is_none_or(|t| now.saturating_duration_since(*t) >= MIN_TENURE)
                })
                .min_by(|a, b| level(a.1).total_cmp(&level(b.1)));
            let Some((index, quietest)) = replaceable.map(|(i, m)| (i, *m)) else {
                break;
            };
            if candidate_level > level(&quietest) * REPLACE_RATIO {
                self.since.remove(&quietest);
                self.members[index] = candidate;
                self.since.insert(candidate, now);
            }
        }
        self.since.retain(|k, _| self.members.contains(k));
        self.members != before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn levels(pairs: &[(u32, f64)]) -> HashMap<u32, f64> {
        pairs.iter().copied().collect()
    }

    #[test]
    fn the_loudest_fill_the_set_and_silence_stays_out() {
        let mut set = LoudestSet::default();
        let t = Instant::now();
        assert!(set.update(
            &levels(&[(1, 90.0), (2, 10.0), (3, 60.0), (4, 80.0), (5, 0.0)]),
            3,
            t
        ));
        let mut m = set.members().to_vec();
        m.sort();
        assert_eq!(m, vec![1, 3, 4]);
        let mut set = LoudestSet::default();
        set.update(&levels(&[(1, 0.0), (2, 5.0)]), 3, t);
        assert!(
            set.members().is_empty(),
            "nobody speaks, nobody is forwarded"
        );
    }

    #[test]
    fn a_clearly_louder_newcomer_replaces_the_quietest_after_its_tenure() {
        let mut set = LoudestSet::default();
        let t0 = Instant::now();
        set.update(&levels(&[(1, 90.0), (2, 50.0)]), 2, t0);
        // 3 is louder than 2 but 2 just got in.
        let loud3 = levels(&[(1, 90.0), (2, 50.0), (3, 80.0)]);
        assert!(!set.update(&loud3, 2, t0 + Duration::from_millis(500)));
        assert!(set.update(&loud3, 2, t0 + Duration::from_secs(2)));
        let mut m = set.members().to_vec();
        m.sort();
        assert_eq!(m, vec![1, 3]);
    }

    #[test]
    fn a_slightly_louder_newcomer_does_not_cause_flapping() {
        let mut set = LoudestSet::default();
        let t0 = Instant::now();
        set.update(&levels(&[(1, 90.0), (2, 60.0)]), 2, t0);
        let close = levels(&[(1, 90.0), (2, 60.0), (3, 70.0)]);
        assert!(!set.update(&close, 2, t0 + Duration::from_secs(5)));
    }

    #[test]
    fn members_who_leave_free_their_place() {
        let mut set = LoudestSet::default();
        let t0 = Instant::now();
        set.update(&levels(&[(1, 90.0), (2, 60.0)]), 2, t0);
        assert!(set.update(&levels(&[(2, 60.0), (3, 40.0)]), 2, t0));
        let mut m = set.members().to_vec();
        m.sort();
        assert_eq!(m, vec![2, 3]);
    }
}
