//! A receiver's downlink rate judged from the loss it reports, for peers without send-side
//! bandwidth estimation (the receive-only crowd of a large meeting, where str0m's estimator,
//! pacer and probes cost a timer per packet per receiver and padding on the wire).
//!
//! The rule is the loss-based half of Google Congestion Control (draft-ietf-rmcat-gcc §6):
//! above 10 % loss the rate backs off by half the loss, below 2 % it grows, in between it holds.
//! Growth is 8 % per report (libwebrtc's figure), so a receiver climbs one simulcast layer in
//! a few seconds and falls back within one report when the link cannot carry it.

use std::time::{Duration, Instant};

const HIGH_LOSS: f32 = 0.10;
const LOW_LOSS: f32 = 0.02;
const GROWTH: f64 = 1.08;
const MIN_BPS: u64 = 100_000;
const MAX_BPS: u64 = 10_000_000;
/// Reports closer together than this are one observation (one per stream in a stats round).
const MIN_INTERVAL: Duration = Duration::from_millis(800);

#[derive(Debug, Clone)]
pub struct LossBasedRate {
    bps: u64,
    last_change: Option<Instant>,
}

impl LossBasedRate {
    pub fn new(initial_bps: u64) -> Self {
        Self {
            bps: initial_bps.clamp(MIN_BPS, MAX_BPS),
            last_change: None,
        }
    }

    /// Takes the fraction of packets lost (0–1) in the receiver's latest report; returns the
    /// new rate.
    pub fn on_report(&mut self, loss: f32, now: Instant) -> u64 {
        if self
            .last_change
            .is_some_and(|at| now.saturating_duration_since(at) < MIN_INTERVAL)
        {
            return self.bps;
        }
        let loss = f64::from(loss.clamp(0.0, 1.0));
        let next = if loss > f64::from(HIGH_LOSS) {
            self.bps as f64 * (1.0 - 0.5 * loss)
        } else if loss < f64::from(LOW_LOSS) {
            self.bps as f64 * GROWTH
        } else {
            self.bps as f64
        };
        self.bps = (next.round() as u64).clamp(MIN_BPS, MAX_BPS);
        self.last_change = Some(now);
        self.bps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_without_loss_backs_off_with_heavy_loss_and_holds_in_between() {
        let t0 = Instant::now();
        let second = |n: u64| t0 + Duration::from_secs(n);
        let mut rate = LossBasedRate::new(1_000_000);
        assert_eq!(rate.on_report(0.0, second(1)), 1_080_000);
        assert_eq!(
            rate.on_report(0.0, second(1) + Duration::from_millis(100)),
            1_080_000,
            "a second stream's report in the same round counts once"
        );
        assert_eq!(
            rate.on_report(0.05, second(2)),
            1_080_000,
            "moderate loss holds"
        );
        assert_eq!(rate.on_report(0.30, second(3)), 918_000, "30 % loss: −15 %");
        let mut rate = LossBasedRate::new(1_000_000);
        for n in 0..100 {
            rate.on_report(1.0, second(n));
        }
        assert_eq!(
            rate.on_report(0.05, second(100)),
            MIN_BPS,
            "never below the floor"
        );
        for n in 101..300 {
            rate.on_report(0.0, second(n));
        }
        assert_eq!(
            rate.on_report(0.05, second(300)),
            MAX_BPS,
            "never above the ceiling"
        );
    }
}
