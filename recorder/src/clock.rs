//! RTP timestamps are 32-bit and wrap (every 13 h at 90 kHz, 25 h at 48 kHz): a recording
//! unwraps them into a 64-bit count from the track's first packet.

/// Unwraps one track's RTP timestamps into ticks since its first packet.
#[derive(Debug, Clone, Copy, Default)]
pub struct RtpClock {
    first: Option<u32>,
    last: u32,
    /// Ticks of `last` since `first`.
    elapsed: i64,
}

impl RtpClock {
    /// Ticks since the first timestamp seen. A timestamp a little before the last one (a
    /// reordered packet) gives a smaller value, never a jump of 2^32.
    pub fn ticks(&mut self, timestamp: u32) -> i64 {
        let Some(_) = self.first else {
            self.first = Some(timestamp);
            self.last = timestamp;
            return 0;
        };
        let delta = i64::from(timestamp.wrapping_sub(self.last) as i32);
        self.last = timestamp;
        self.elapsed += delta;
        self.elapsed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_unwrap_across_the_32_bit_edge() {
        let start = u32::MAX - 959;
        let mut clock = RtpClock::default();
        assert_eq!(clock.ticks(start), 0);
        assert_eq!(clock.ticks(start.wrapping_add(960)), 960);
        assert_eq!(clock.ticks(start.wrapping_add(1920)), 1920);
        // A reordered packet goes back a little, not forward by 2^32.
        assert_eq!(clock.ticks(start.wrapping_add(961)), 961);
        assert_eq!(clock.ticks(start.wrapping_add(3840)), 3840);
    }
}
