//! Reading what forwarding needs from an incoming video RTP payload: where keyframes begin
//! (a receiver may only switch to a layer there) and the frame size they announce.

use str0m::format::Codec;
use str0m::rtp::Vp8Descriptor;

/// What the SFU knows about one incoming video packet.
#[derive(Debug, Clone, Copy, Default)]
pub struct VideoPacket {
    /// The first packet of a keyframe: a receiver can start decoding here.
    pub keyframe_start: bool,
    /// Frame height, read from a VP8 keyframe's first packet.
    pub height: Option<u32>,
    /// The VP8 payload descriptor, for renumbering picture ids.
    pub vp8: Option<Vp8Descriptor>,
}

impl VideoPacket {
    pub fn inspect(codec: Codec, payload: &[u8]) -> Self {
        match codec {
            Codec::Vp8 => {
                let Ok(descriptor) = Vp8Descriptor::parse(payload) else {
                    return Self::default();
                };
                let keyframe_start = descriptor.starts_keyframe(payload);
                let height = keyframe_start
                    .then(|| vp8_descriptor_len(payload))
                    .flatten()
                    .and_then(|len| vp8_keyframe_height(&payload[len..]));
                Self {
                    keyframe_start,
                    height,
                    vp8: Some(descriptor),
                }
            }
            Codec::H264 => Self {
                keyframe_start: h264_keyframe_start(payload),
                ..Self::default()
            },
            _ => Self::default(),
        }
    }
}

/// Length of the VP8 payload descriptor (RFC 7741 §4.2).
fn vp8_descriptor_len(payload: &[u8]) -> Option<usize> {
    let first = *payload.first()?;
    if first & 0x80 == 0 {
        return Some(1);
    }
    let extension = *payload.get(1)?;
    let mut len = 2;
    if extension & 0x80 != 0 {
        // PictureID: 7 bits, or 15 when its M bit is set.
        len += if payload.get(len)? & 0x80 != 0 { 2 } else { 1 };
    }
    if extension & 0x40 != 0 {
        len += 1; // TL0PICIDX
    }
    if extension & 0x30 != 0 {
        len += 1; // TID / KEYIDX
    }
    (len < payload.len()).then_some(len)
}

/// Frame height from the start of a VP8 keyframe (RFC 6386 §9.1): 3-byte frame tag, start
/// code 9d 01 2a, then 14-bit width and height.
pub fn vp8_keyframe_height(frame: &[u8]) -> Option<u32> {
    if frame.len() < 10 || frame[0] & 1 != 0 || frame[3..6] != [0x9d, 0x01, 0x2a] {
        return None;
    }
    Some(u32::from(u16::from_le_bytes([frame[8], frame[9]]) & 0x3fff))
}

const NAL_IDR: u8 = 5;
const NAL_SPS: u8 = 7;
const NAL_STAP_A: u8 = 24;
const NAL_FU_A: u8 = 28;

/// Whether an H.264 payload (RFC 6184) begins a keyframe: it carries the sequence parameter
/// set, or starts an IDR slice (encoders that send parameter sets only once).
fn h264_keyframe_start(payload: &[u8]) -> bool {
    let Some(&header) = payload.first() else {
        return false;
    };
    let starts = |nal: u8| matches!(nal & 0x1f, NAL_SPS | NAL_IDR);
    match header & 0x1f {
        NAL_STAP_A => {
            let mut at = 1;
            while let Some(size) = payload.get(at..at + 2) {
                let size = usize::from(u16::from_be_bytes([size[0], size[1]]));
                match payload.get(at + 2) {
                    Some(&nal) if size > 0 && starts(nal) => return true,
                    Some(_) => at += 2 + size,
                    None => return false,
                }
            }
            false
        }
        NAL_FU_A => payload
            .get(1)
            .is_some_and(|fu| fu & 0x80 != 0 && fu & 0x1f == NAL_IDR),
        nal => starts(nal),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A VP8 keyframe's first packet: descriptor with a 15-bit picture id, then the frame
    /// header of a 640×360 keyframe.
    fn vp8_keyframe_packet() -> Vec<u8> {
        let mut p = vec![0x90, 0x80, 0x81, 0x02];
        p.extend([
            0x50, 0x2a, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0x68, 0x01, 0, 0,
        ]);
        p
    }

    #[test]
    fn vp8_keyframe_starts_and_heights_are_read() {
        let packet = vp8_keyframe_packet();
        let seen = VideoPacket::inspect(Codec::Vp8, &packet);
        assert!(seen.keyframe_start);
        assert_eq!(seen.height, Some(360));
        assert_eq!(seen.vp8.and_then(|d| d.picture_id()), Some(0x102));

        let mut delta = packet.clone();
        delta[4] |= 1; // P bit: an interframe
        let seen = VideoPacket::inspect(Codec::Vp8, &delta);
        assert!(!seen.keyframe_start);
        assert_eq!(seen.height, None);

        let mut later = packet.clone();
        later[0] &= !0x10; // not the start of the partition
        assert!(!VideoPacket::inspect(Codec::Vp8, &later).keyframe_start);

        for garbage in [&[][..], &[0x90], &[0x90, 0x80, 0x81]] {
            let seen = VideoPacket::inspect(Codec::Vp8, garbage);
            assert!(!seen.keyframe_start && seen.height.is_none() && seen.vp8.is_none());
        }
        let truncated = VideoPacket::inspect(Codec::Vp8, &packet[..6]);
        assert_eq!(truncated.height, None, "a cut frame header gives no size");
    }

    #[test]
    fn h264_keyframes_start_at_parameter_sets_or_an_idr_slice() {
        let sps = [0x67, 0x42, 0x00, 0x1f];
        assert!(h264_keyframe_start(&sps));
        // STAP-A holding SPS and PPS.
        let stap = [0x78, 0x00, 0x02, 0x67, 0x42, 0x00, 0x01, 0x68];
        assert!(h264_keyframe_start(&stap));
        // STAP-A of two non-IDR slices.
        let stap_p = [0x78, 0x00, 0x01, 0x41, 0x00, 0x01, 0x41];
        assert!(!h264_keyframe_start(&stap_p));
        // FU-A: start of an IDR slice, then its continuation.
        assert!(h264_keyframe_start(&[0x7c, 0x85, 0x00]));
        assert!(!h264_keyframe_start(&[0x7c, 0x05, 0x00]));
        // A plain slice, and truncated input.
        assert!(!h264_keyframe_start(&[0x41, 0x9a]));
        assert!(!h264_keyframe_start(&[]));
        assert!(!h264_keyframe_start(&[0x78, 0x00]));
        assert!(!h264_keyframe_start(&[0x78, 0xff, 0xff, 0x41]));
    }
}
