//! Synthetic media that looks like a browser's to the SFU: Opus-sized audio frames every 20 ms
//! (DTX while silent), VP8 frames at 30 fps per simulcast layer with real keyframe headers, and
//! in every frame a [`Probe`] that tells the receiver who sent it, its sequence number and when.

use std::time::{Duration, Instant};

/// A run-wide time base shared by every simulated participant in the process, so that send
/// times written by one participant can be compared with receive times of another.
#[derive(Debug, Clone, Copy)]
pub struct RunClock {
    base: Instant,
}

impl RunClock {
    pub fn new(base: Instant) -> Self {
        Self { base }
    }

    pub fn base(&self) -> Instant {
        self.base
    }

    /// Microseconds since the base (0 before it).
    pub fn us(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.base).as_micros() as u64
    }

    /// Time since the base.
    pub fn elapsed(&self, at: Instant) -> Duration {
        at.saturating_duration_since(self.base)
    }

    /// An RTP clock at `rate` Hz, starting at the base.
    pub fn rtp_ticks(&self, at: Instant, rate: u64) -> u64 {
        self.us(at) * rate / 1_000_000
    }
}

/// What a frame carries: audio or one of the simulcast layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layer {
    Audio,
    Q,
    H,
    F,
}

impl Layer {
    fn byte(self) -> u8 {
        match self {
            Layer::Audio => b'a',
            Layer::Q => b'q',
            Layer::H => b'h',
            Layer::F => b'f',
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            b'a' => Layer::Audio,
            b'q' => Layer::Q,
            b'h' => Layer::H,
            b'f' => Layer::F,
            _ => return None,
        })
    }

    /// Index of a video layer in [`VIDEO_LAYERS`].
    pub fn video_index(self) -> Option<usize> {
        match self {
            Layer::Audio => None,
            Layer::Q => Some(0),
            Layer::H => Some(1),
            Layer::F => Some(2),
        }
    }
}

/// Measurement header inside every frame's payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub layer: Layer,
    /// The sender's participant id (from its `joined`).
    pub sender: u64,
    /// Audio: per-stream frame number. Video: frame number shared by the three layers, so a
    /// receiver sees one sequence per source whatever layer the SFU forwards.
    pub seq: u32,
    /// Send time, microseconds on the [`RunClock`].
    pub sent_us: u64,
}

const MAGIC: [u8; 2] = *b"TL";
/// Bytes a [`Probe`] takes.
pub const PROBE_LEN: usize = 2 + 1 + 8 + 4 + 8;
/// Where the probe sits in an audio frame: after the Opus TOC byte.
pub const AUDIO_PROBE_AT: usize = 1;
/// Where the probe sits in a video frame: after a fixed 10-byte VP8 prefix (the keyframe header
/// with its dimensions, or a delta frame's tag and filler).
pub const VIDEO_PROBE_AT: usize = 10;

impl Probe {
    pub fn encode(&self, out: &mut [u8]) {
        if out.len() < PROBE_LEN {
            return;
        }
        out[..2].copy_from_slice(&MAGIC);
        out[2] = self.layer.byte();
        out[3..11].copy_from_slice(&self.sender.to_be_bytes());
        out[11..15].copy_from_slice(&self.seq.to_be_bytes());
        out[15..23].copy_from_slice(&self.sent_us.to_be_bytes());
    }

    /// Reads a probe at the start of `data`.
    pub fn decode(data: &[u8]) -> Option<Self> {
        let d = data.get(..PROBE_LEN)?;
        if d[..2] != MAGIC {
            return None;
        }
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&d[i..i + 8]);
            u64::from_be_bytes(b)
        };
        let mut seq = [0u8; 4];
        seq.copy_from_slice(&d[11..15]);
        Some(Self {
            layer: Layer::from_byte(d[2])?,
            sender: u64_at(3),
            seq: u32::from_be_bytes(seq),
            sent_us: u64_at(15),
        })
    }

    /// Reads the probe of a received audio or video frame.
    pub fn find(frame: &[u8], video: bool) -> Option<Self> {
        let at = if video {
            VIDEO_PROBE_AT
        } else {
            AUDIO_PROBE_AT
        };
        Self::decode(frame.get(at..)?)
    }
}

/// One simulcast layer of the simulated camera: the encodings a browser sends
/// (`scaleResolutionDownBy` 4/2/1 with the web client's `maxBitrate`s).
#[derive(Debug, Clone, Copy)]
pub struct VideoLayer {
    pub rid: &'static str,
    pub layer: Layer,
    pub bitrate_bps: u64,
    pub width: u16,
    pub height: u16,
}

pub const VIDEO_LAYERS: [VideoLayer; 3] = [
    VideoLayer {
        rid: "q",
        layer: Layer::Q,
        bitrate_bps: 150_000,
        width: 320,
        height: 180,
    },
    VideoLayer {
        rid: "h",
        layer: Layer::H,
        bitrate_bps: 500_000,
        width: 640,
        height: 360,
    },
    VideoLayer {
        rid: "f",
        layer: Layer::F,
        bitrate_bps: 1_500_000,
        width: 1280,
        height: 720,
    },
];

pub const VIDEO_FPS: u32 = 30;
/// Keyframes are this many times larger than delta frames.
pub const KEYFRAME_FACTOR: usize = 3;
pub const AUDIO_FRAME: Duration = Duration::from_millis(20);
/// Chrome sends one DTX frame every 400 ms while silent.
pub const DTX_INTERVAL: Duration = Duration::from_millis(400);
/// RFC 6464 level (-dBov) of silence.
pub const SILENCE_LEVEL: i8 = -127;

/// A VP8 frame of the layer's size: keyframes start with the real keyframe header (tag, start
/// code, 14-bit width and height), delta frames with a tag whose bit 0 is set.
pub fn video_frame(layer: &VideoLayer, keyframe: bool, probe: &Probe) -> Vec<u8> {
    let delta_len = (layer.bitrate_bps / 8 / u64::from(VIDEO_FPS)) as usize;
    let len = if keyframe {
        delta_len * KEYFRAME_FACTOR
    } else {
        delta_len
    }
    .max(VIDEO_PROBE_AT + PROBE_LEN);
    let mut frame = vec![0x5a; len];
    if keyframe {
        let [w_lo, w_hi] = (layer.width & 0x3fff).to_le_bytes();
        let [h_lo, h_hi] = (layer.height & 0x3fff).to_le_bytes();
        frame[..10].copy_from_slice(&[0x50, 0, 0, 0x9d, 0x01, 0x2a, w_lo, w_hi, h_lo, h_hi]);
    } else {
        frame[..10].copy_from_slice(&[0x51, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    }
    probe.encode(&mut frame[VIDEO_PROBE_AT..]);
    frame
}

/// An Opus frame: `size` bytes while talking; while silent a DTX frame, which in a browser is 1–3
/// bytes and here is just large enough for the probe (24 bytes).
pub fn audio_frame(size: usize, probe: &Probe) -> Vec<u8> {
    let mut frame = vec![0x33; size.max(AUDIO_PROBE_AT + PROBE_LEN)];
    // TOC: config 15 (hybrid fullband 20 ms), mono, one frame.
    frame[0] = 0x78;
    probe.encode(&mut frame[AUDIO_PROBE_AT..]);
    frame
}

/// A frame due to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutFrame {
    Audio {
        data: Vec<u8>,
        /// RFC 6464 audio level (-dBov) and voice activity.
        level: i8,
        voice: bool,
    },
    Video {
        rid: &'static str,
        keyframe: bool,
        data: Vec<u8>,
    },
}

/// A publisher's schedule: which frames are due when.
#[derive(Debug)]
pub struct MediaSource {
    sender: u64,
    audio: bool,
    video: bool,
    next_audio: Instant,
    next_video: Instant,
    next_keyframe: Instant,
    keyframe_interval: Duration,
    keyframe_due: [bool; 3],
    /// Layers being sent (`publish_layers` pauses the ones nobody watches).
    active: [bool; 3],
    audio_seq: u32,
    video_seq: u32,
    talking: bool,
    rng: u64,
    /// Frames skipped because the loop woke up more than a frame late.
    pub late_skips: u64,
    pub keyframe_requests: u64,
}

impl MediaSource {
    pub fn new(
        sender: u64,
        audio: bool,
        video: bool,
        now: Instant,
        keyframe_interval: Duration,
    ) -> Self {
        Self {
            sender,
            audio,
            video,
            next_audio: now,
            next_video: now,
            next_keyframe: now + keyframe_interval,
            keyframe_interval,
            keyframe_due: [true; 3],
            active: [true; 3],
            audio_seq: 0,
            video_seq: 0,
            talking: false,
            rng: sender.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
            late_skips: 0,
            keyframe_requests: 0,
        }
    }

    /// When the next frame is due.
    pub fn next_due(&self) -> Option<Instant> {
        match (self.audio, self.video) {
            (true, true) => Some(self.next_audio.min(self.next_video)),
            (true, false) => Some(self.next_audio),
            (false, true) => Some(self.next_video),
            (false, false) => None,
        }
    }

    /// A keyframe request from the SFU, for one layer or (`None`) all of them.
    pub fn request_keyframe(&mut self, rid: Option<&str>) {
        self.keyframe_requests += 1;
        for (i, layer) in VIDEO_LAYERS.iter().enumerate() {
            if rid.is_none_or(|r| r == layer.rid) {
                self.keyframe_due[i] = true;
            }
        }
    }

    /// The server's `publish_layers`: send only these rids. A layer that resumes starts with a
    /// keyframe, as a browser's encoder does.
    pub fn set_active_layers(&mut self, rids: &[String]) {
        for (i, layer) in VIDEO_LAYERS.iter().enumerate() {
            let active = rids.iter().any(|r| r == layer.rid);
            if active && !self.active[i] {
                self.keyframe_due[i] = true;
            }
            self.active[i] = active;
        }
    }

    fn random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// Appends the frames due at `now` to `out`. `talking` says whether the microphone carries
    /// speech now; `sent_us` is `now` on the [`RunClock`].
    pub fn poll(&mut self, now: Instant, sent_us: u64, talking: bool, out: &mut Vec<OutFrame>) {
        if self.audio {
            if talking && !self.talking {
                // Speech starts at once, not at the next DTX tick.
                self.next_audio = self.next_audio.min(now);
            }
            self.talking = talking;
            if now >= self.next_audio {
                let interval = if talking { AUDIO_FRAME } else { DTX_INTERVAL };
                self.next_audio = advance(self.next_audio, interval, now, &mut self.late_skips);
                self.audio_seq = self.audio_seq.wrapping_add(1);
                let probe = Probe {
                    layer: Layer::Audio,
                    sender: self.sender,
                    seq: self.audio_seq,
                    sent_us,
                };
                let frame = if talking {
                    let size = 60 + (self.random() % 61) as usize;
                    let level = -20 - (self.random() % 10) as i8;
                    OutFrame::Audio {
                        data: audio_frame(size, &probe),
                        level,
                        voice: true,
                    }
                } else {
                    OutFrame::Audio {
                        data: audio_frame(0, &probe),
                        level: SILENCE_LEVEL,
                        voice: false,
                    }
                };
                out.push(frame);
            }
        }
        if self.video && now >= self.next_video {
            let interval = Duration::from_secs(1) / VIDEO_FPS;
            self.next_video = advance(self.next_video, interval, now, &mut self.late_skips);
            if now >= self.next_keyframe {
                self.next_keyframe = now + self.keyframe_interval;
                self.keyframe_due = [true; 3];
            }
            self.video_seq = self.video_seq.wrapping_add(1);
            for (i, layer) in VIDEO_LAYERS.iter().enumerate() {
                if !self.active[i] {
                    continue;
                }
                let keyframe = std::mem::take(&mut self.keyframe_due[i]);
                let probe = Probe {
                    layer: layer.layer,
                    sender: self.sender,
                    seq: self.video_seq,
                    sent_us,
                };
                out.push(OutFrame::Video {
                    rid: layer.rid,
                    keyframe,
                    data: video_frame(layer, keyframe, &probe),
                });
            }
        }
    }
}

/// The next deadline of a periodic timer: one interval on, or from `now` if it fell more than an
/// interval behind (the frames in between are skipped, as a browser's encoder would).
fn advance(due: Instant, interval: Duration, now: Instant, skips: &mut u64) -> Instant {
    let next = due + interval;
    if next <= now {
        *skips += 1;
        now + interval
    } else {
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_round_trip_in_frames() {
        let probe = Probe {
            layer: Layer::H,
            sender: 42,
            seq: 7,
            sent_us: 123_456_789,
        };
        let key = video_frame(&VIDEO_LAYERS[1], true, &probe);
        assert_eq!(&key[..6], &[0x50, 0, 0, 0x9d, 0x01, 0x2a]);
        assert_eq!(u16::from_le_bytes([key[8], key[9]]), 360);
        assert_eq!(key.len(), 500_000 / 8 / 30 * KEYFRAME_FACTOR);
        assert_eq!(Probe::find(&key, true), Some(probe));
        let delta = video_frame(&VIDEO_LAYERS[0], false, &probe);
        assert_eq!(delta[0] & 1, 1);
        assert_eq!(delta.len(), 625);
        assert_eq!(Probe::find(&delta, true), Some(probe));
        let audio = audio_frame(
            80,
            &Probe {
                layer: Layer::Audio,
                ..probe
            },
        );
        assert_eq!(audio.len(), 80);
        assert_eq!(
            Probe::find(&audio, false).map(|p| p.layer),
            Some(Layer::Audio)
        );
        assert_eq!(Probe::find(&[0x50; 40], true), None);
        assert_eq!(Probe::find(&audio[..10], false), None);
    }

    #[test]
    fn a_source_sends_audio_dtx_and_simulcast_on_schedule() {
        let t0 = Instant::now();
        let mut source = MediaSource::new(3, true, true, t0, Duration::from_secs(3));
        let mut out = Vec::new();
        source.poll(t0, 0, false, &mut out);
        // DTX audio plus three keyframes.
        assert_eq!(out.len(), 4);
        assert!(matches!(
            out[0],
            OutFrame::Audio {
                level: SILENCE_LEVEL,
                voice: false,
                ..
            }
        ));
        assert!(
            out[1..]
                .iter()
                .all(|f| matches!(f, OutFrame::Video { keyframe: true, .. }))
        );
        // Silent: the next audio frame is 400 ms away; video every 33 ms.
        assert_eq!(source.next_due(), Some(t0 + Duration::from_secs(1) / 30));
        out.clear();
        let mut t = t0;
        for _ in 0..30 {
            t += Duration::from_secs(1) / 30;
            source.poll(t, 0, false, &mut out);
        }
        let audio = out
            .iter()
            .filter(|f| matches!(f, OutFrame::Audio { .. }))
            .count();
        assert_eq!(audio, 2, "DTX every 400 ms over one second");
        let keys = out
            .iter()
            .filter(|f| matches!(f, OutFrame::Video { keyframe: true, .. }))
            .count();
        assert_eq!(keys, 0);
        // Talking: audio at once, then every 20 ms; a keyframe request for one layer.
        out.clear();
        source.request_keyframe(Some("h"));
        t += Duration::from_millis(1);
        source.poll(t, 0, true, &mut out);
        assert!(matches!(&out[0], OutFrame::Audio { voice: true, data, .. } if data.len() >= 60));
        assert!(source.next_due() <= Some(t + AUDIO_FRAME));
        t += Duration::from_secs(1) / 30;
        source.poll(t, 0, true, &mut out);
        let keyed: Vec<_> = out
            .iter()
            .filter_map(|f| match f {
                OutFrame::Video {
                    rid,
                    keyframe: true,
                    ..
                } => Some(*rid),
                _ => None,
            })
            .collect();
        assert_eq!(keyed, ["h"]);

        // Paused layers are not sent; a resumed one starts with a keyframe.
        source.set_active_layers(&["q".to_owned()]);
        out.clear();
        t += Duration::from_secs(1) / 30;
        source.poll(t, 0, true, &mut out);
        let sent = |out: &[OutFrame]| -> Vec<(&str, bool)> {
            out.iter()
                .filter_map(|f| match f {
                    OutFrame::Video { rid, keyframe, .. } => Some((*rid, *keyframe)),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(sent(&out), [("q", false)]);
        source.set_active_layers(&["q".to_owned(), "f".to_owned()]);
        out.clear();
        t += Duration::from_secs(1) / 30;
        source.poll(t, 0, true, &mut out);
        assert_eq!(sent(&out), [("q", false), ("f", true)]);
        source.set_active_layers(&[]);
        out.clear();
        t += Duration::from_secs(1) / 30;
        source.poll(t, 0, true, &mut out);
        assert!(sent(&out).is_empty());
    }
}
