//! Keeps what a receiver sees on one m-line continuous when the source behind it changes
//! (another simulcast layer, another speaker, a track unmuted): every source has its own
//! random sequence numbers, timestamps and VP8 picture ids, and a receiver must see one
//! unbroken stream or it drops frames and asks for retransmissions that make no sense.

use std::time::Instant;

use str0m::media::MediaTime;
use str0m::rtp::{Vp8Descriptor, Vp8Patch};

/// The numbering state of one receiving m-line.
#[derive(Debug, Default)]
pub struct LineContinuity {
    pub sequence: SequenceRewriter,
    pub timestamps: TimestampRewriter,
    pub pictures: PictureIdRewriter,
}

impl LineContinuity {
    /// The next packet comes from a different source; re-anchor every numbering on it.
    pub fn source_changed(&mut self) {
        self.sequence.source_changed();
        self.timestamps.source_changed();
        self.pictures.source_changed();
    }
}

/// Outgoing sequence numbers: the first packet of a source follows the last one written, and
/// gaps within a source stay gaps (so the receiver asks for what was really lost).
#[derive(Debug, Default)]
pub struct SequenceRewriter {
    offset: i64,
    /// First incoming number of the current source: older packets belong to before the switch.
    anchor: u64,
    last: Option<u64>,
    anchored: bool,
}

impl SequenceRewriter {
    pub fn source_changed(&mut self) {
        self.anchored = false;
    }

    /// The outgoing extended sequence number for an incoming one, or `None` for a late packet
    /// from before the current source began (it would collide with numbers already used).
    pub fn rewrite(&mut self, incoming: u64) -> Option<u64> {
        if !self.anchored {
            // A new line starts with the low 16 bits so that its rollover counter is 0, as an
            // SRTP receiver that was told nothing out of band expects.
            let first = self.last.map_or(incoming & 0xffff, |last| last + 1);
            self.offset = first as i64 - incoming as i64;
            self.anchor = incoming;
            self.anchored = true;
        }
        if incoming < self.anchor {
            return None;
        }
        let out = (incoming as i64 + self.offset) as u64;
        self.last = Some(self.last.map_or(out, |last| last.max(out)));
        Some(out)
    }
}

/// Outgoing RTP timestamps: a new source continues from the last written timestamp, advanced
/// by the wall-clock time since.
#[derive(Debug, Default)]
pub struct TimestampRewriter {
    offset: i64,
    last: Option<(u64, Instant)>,
    anchored: bool,
}

impl TimestampRewriter {
    pub fn source_changed(&mut self) {
        self.anchored = false;
    }

    pub fn rewrite(&mut self, time: MediaTime, arrived: Instant) -> MediaTime {
        let rate = u64::from(time.denom());
        let incoming = time.numer() as i64;
        if !self.anchored {
            let expected = match self.last {
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

/// VP8 picture ids and TL0PICIDX: a decoder that sees them jump (or go back) on a layer
/// switch may discard the new layer's frames as old ones.
#[derive(Debug, Default)]
pub struct PictureIdRewriter {
    picture_offset: u16,
    tl0_offset: u8,
    last: Option<(u16, Option<u8>)>,
    anchored: bool,
}

const PICTURE_ID_MASK: u16 = 0x7fff;

impl PictureIdRewriter {
    pub fn source_changed(&mut self) {
        self.anchored = false;
    }

    /// The patch that renumbers this packet's descriptor, or `None` when nothing changes.
    pub fn rewrite(&mut self, descriptor: &Vp8Descriptor) -> Option<Vp8Patch> {
        let picture_id = descriptor.picture_id()?;
        let tl0 = descriptor.tl0_pic_idx();
        if !self.anchored {
            if let Some((last_picture, last_tl0)) = self.last {
                self.picture_offset =
                    last_picture.wrapping_add(1).wrapping_sub(picture_id) & PICTURE_ID_MASK;
                if let (Some(last_tl0), Some(tl0)) = (last_tl0, tl0) {
                    self.tl0_offset = last_tl0.wrapping_add(1).wrapping_sub(tl0);
                }
            }
            self.anchored = true;
        }
        let out_picture = picture_id.wrapping_add(self.picture_offset) & PICTURE_ID_MASK;
        let out_tl0 = tl0.map(|t| t.wrapping_add(self.tl0_offset));
        self.last = Some((out_picture, out_tl0));
        if self.picture_offset == 0 && self.tl0_offset == 0 {
            return None;
        }
        let mut patch = descriptor.patch();
        if let Some(t) = out_tl0 {
            patch = patch.tl0_pic_idx(t);
        }
        // A 7-bit picture id wraps at 128; the descriptor keeps its width.
        match patch.picture_id(out_picture).build() {
            Ok(p) => Some(p),
            Err(_) => patch.picture_id(out_picture & 0x7f).build().ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use str0m::media::Frequency;

    fn t90(v: u64) -> MediaTime {
        MediaTime::new(v, Frequency::NINETY_KHZ)
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

    #[test]
    fn sequence_numbers_continue_across_sources_and_keep_gaps() {
        let mut seq = SequenceRewriter::default();
        // A long-running source: the line still starts with rollover counter 0.
        assert_eq!(seq.rewrite(3 * 65_536 + 100), Some(100));
        assert_eq!(seq.rewrite(3 * 65_536 + 101), Some(101));
        assert_eq!(
            seq.rewrite(3 * 65_536 + 104),
            Some(104),
            "a loss stays visible"
        );
        assert_eq!(
            seq.rewrite(3 * 65_536 + 102),
            Some(102),
            "reordering is kept"
        );
        seq.source_changed();
        assert_eq!(seq.rewrite(7_000), Some(105), "the next source follows on");
        assert_eq!(seq.rewrite(7_001), Some(106));
        assert_eq!(
            seq.rewrite(6_999),
            None,
            "a straggler from before the switch would reuse 104"
        );
    }

    fn descriptor(picture_id: u16, tl0: u8) -> Vec<u8> {
        // X=1, S=1; I=1, L=1, T=1; 15-bit picture id; TL0PICIDX; TID; then a payload byte.
        vec![
            0x90,
            0xe0,
            0x80 | (picture_id >> 8) as u8,
            picture_id as u8,
            tl0,
            0x00,
            0x9d,
        ]
    }

    /// The patch expected to renumber `packet` to (picture id, TL0PICIDX); `Vp8Patch`
    /// compares by value.
    fn expected(packet: &[u8], picture: u16, tl0: u8) -> Option<Vp8Patch> {
        let d = Vp8Descriptor::parse(packet).unwrap();
        Some(
            d.patch()
                .picture_id(picture)
                .tl0_pic_idx(tl0)
                .build()
                .unwrap(),
        )
    }

    fn rewrite(pictures: &mut PictureIdRewriter, packet: &[u8]) -> Option<Vp8Patch> {
        pictures.rewrite(&Vp8Descriptor::parse(packet).unwrap())
    }

    #[test]
    fn picture_ids_continue_across_a_layer_switch() {
        let mut pictures = PictureIdRewriter::default();
        let first = descriptor(500, 200);
        assert_eq!(
            rewrite(&mut pictures, &first),
            None,
            "the first source as it is"
        );
        assert_eq!(rewrite(&mut pictures, &descriptor(501, 201)), None);
        pictures.source_changed();
        let switched = descriptor(20, 1);
        assert_eq!(
            rewrite(&mut pictures, &switched),
            expected(&switched, 502, 202),
            "the new layer continues the old one's numbering"
        );
        let next = descriptor(21, 2);
        assert_eq!(rewrite(&mut pictures, &next), expected(&next, 503, 203));
        pictures.source_changed();
        let wrapping = descriptor(0x7ffe, 3);
        assert_eq!(
            rewrite(&mut pictures, &wrapping),
            expected(&wrapping, 504, 204)
        );
        let wrapped = descriptor(1, 3);
        assert_eq!(
            rewrite(&mut pictures, &wrapped),
            expected(&wrapped, 507, 204),
            "the source's wrap is carried through"
        );
    }
}
