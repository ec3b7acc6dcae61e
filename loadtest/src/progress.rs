//! Live counters shared by all workers, and the progress line printed every second.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Debug, Default)]
pub struct Progress {
    pub started: AtomicU64,
    pub joined: AtomicU64,
    pub connected: AtomicU64,
    /// Participants that received at least one media frame.
    pub receiving: AtomicU64,
    pub failed: AtomicU64,
    pub finished: AtomicU64,
    pub rx_packets: AtomicU64,
    pub rx_media_packets: AtomicU64,
    pub tx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// Highest loop lag seen by any worker in the current second, microseconds.
    pub lag_us: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub started: u64,
    pub joined: u64,
    pub connected: u64,
    pub receiving: u64,
    pub failed: u64,
    pub finished: u64,
    pub rx_packets: u64,
    pub rx_media_packets: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub lag_us: u64,
}

impl Progress {
    pub fn add(counter: &AtomicU64, n: u64) {
        if n > 0 {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn note_lag(&self, lag_us: u64) {
        self.lag_us.fetch_max(lag_us, Ordering::Relaxed);
    }

    /// Reads the counters without restarting the lag maximum.
    pub fn peek(&self) -> Snapshot {
        Snapshot {
            lag_us: self.lag_us.load(Ordering::Relaxed),
            ..self.read()
        }
    }

    /// Reads the counters; the lag maximum restarts.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            lag_us: self.lag_us.swap(0, Ordering::Relaxed),
            ..self.read()
        }
    }

    fn read(&self) -> Snapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Snapshot {
            started: get(&self.started),
            joined: get(&self.joined),
            connected: get(&self.connected),
            receiving: get(&self.receiving),
            failed: get(&self.failed),
            finished: get(&self.finished),
            rx_packets: get(&self.rx_packets),
            rx_media_packets: get(&self.rx_media_packets),
            tx_packets: get(&self.tx_packets),
            rx_bytes: get(&self.rx_bytes),
            tx_bytes: get(&self.tx_bytes),
            lag_us: 0,
        }
    }
}

impl Snapshot {
    /// `[  12s] joined 850/1000 connected 840 receiving 830 failed 0 | rx 45.2k pkt/s 38.1 Mbit/s
    /// tx 1.2k pkt/s | lag max 3 ms`
    pub fn line(
        &self,
        before: &Snapshot,
        elapsed: Duration,
        interval: Duration,
        planned: usize,
    ) -> String {
        let secs = interval.as_secs_f64().max(1e-3);
        let rate = |now: u64, then: u64| now.saturating_sub(then) as f64 / secs;
        let rx_pps = rate(self.rx_packets, before.rx_packets);
        let tx_pps = rate(self.tx_packets, before.tx_packets);
        let rx_mbps = rate(self.rx_bytes, before.rx_bytes) * 8.0 / 1e6;
        let tx_mbps = rate(self.tx_bytes, before.tx_bytes) * 8.0 / 1e6;
        format!(
            "[{:>5.0}s] joined {}/{planned} connected {} receiving {} failed {} left {} | rx {} pkt/s {rx_mbps:.1} Mbit/s | tx {} pkt/s {tx_mbps:.1} Mbit/s | lag max {} ms",
            elapsed.as_secs_f64(),
            self.joined,
            self.connected,
            self.receiving,
            self.failed,
            self.finished,
            human(rx_pps),
            human(tx_pps),
            self.lag_us / 1000,
        )
    }
}

fn human(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.1}k", v / 1000.0)
    } else {
        format!("{v:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_show_rates() {
        let p = Progress::default();
        let before = p.snapshot();
        Progress::add(&p.rx_packets, 2000);
        Progress::add(&p.rx_bytes, 250_000);
        Progress::inc(&p.joined);
        p.note_lag(3500);
        let now = p.snapshot();
        let line = now.line(&before, Duration::from_secs(12), Duration::from_secs(1), 10);
        assert!(line.contains("joined 1/10"), "{line}");
        assert!(line.contains("rx 2.0k pkt/s 2.0 Mbit/s"), "{line}");
        assert!(line.contains("lag max 3 ms"), "{line}");
        assert_eq!(p.snapshot().lag_us, 0);
    }
}
