//! VP8 video and Opus audio in WebM, muxed by libwebm (the `webm` crate). Each cluster goes to
//! the file when it is complete, so a file whose recorder was killed plays up to its last
//! written cluster; finishing adds the cues (seeking) and the duration.

use std::collections::VecDeque;
use std::io::{Seek, Write};

use webm::mux::{
    AudioCodecId, AudioTrack, Segment, SegmentBuilder, SegmentMode, VideoCodecId, VideoTrack,
    Writer,
};

use crate::RecordError;
use crate::clock::RtpClock;

const VIDEO_RATE: i64 = 90_000;
const AUDIO_RATE: i64 = 48_000;

/// The video track's size as the first keyframe said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VideoFormat {
    pub width: u32,
    pub height: u32,
}

impl VideoFormat {
    /// Reads a VP8 keyframe's size (RFC 6386 §9.1); `None` for an interframe or garbage.
    pub fn from_vp8_keyframe(frame: &[u8]) -> Option<Self> {
        let keyframe = frame.first().is_some_and(|b| b & 1 == 0);
        if !keyframe || frame.len() < 10 || frame[3..6] != [0x9d, 0x01, 0x2a] {
            return None;
        }
        let width = u32::from(u16::from_le_bytes([frame[6], frame[7]]) & 0x3fff);
        let height = u32::from(u16::from_le_bytes([frame[8], frame[9]]) & 0x3fff);
        (width > 0 && height > 0).then_some(Self { width, height })
    }
}

fn webm_error(e: impl std::fmt::Debug) -> RecordError {
    RecordError::Webm(format!("{e:?}"))
}

pub struct WebmWriter<W: Write + Seek> {
    segment: Segment<W>,
    video: Option<VideoTrack>,
    audio: Option<AudioTrack>,
    video_clock: RtpClock,
    audio_clock: RtpClock,
    /// Timestamps must not go back across tracks (libwebm's rule).
    last_ns: u64,
    /// Video starts on a keyframe.
    video_started: bool,
    /// Frames of both tracks held back briefly and written in time order, so that one track
    /// arriving a little behind the other is not clamped onto the other's timeline.
    reorder: VecDeque<Frame>,
}

/// A frame waiting in the reorder window.
struct Frame {
    ns: u64,
    video: bool,
    keyframe: bool,
    data: Vec<u8>,
}

/// How long frames wait for a slower track before they are written.
const REORDER_WINDOW_NS: u64 = 200_000_000;

impl<W: Write + Seek> WebmWriter<W> {
    /// A file with a VP8 track of `video` size and/or an Opus track of `audio_channels`.
    pub fn new(
        writer: W,
        video: Option<VideoFormat>,
        audio_channels: Option<u8>,
    ) -> Result<Self, RecordError> {
        let builder = SegmentBuilder::new(Writer::new(writer))
            .map_err(webm_error)?
            .set_mode(SegmentMode::File)
            .map_err(webm_error)?
            .set_writing_app("Ting recorder")
            .map_err(webm_error)?;
        let (builder, video) = match video {
            Some(format) => {
                let (builder, track) = builder
                    .add_video_track(format.width, format.height, VideoCodecId::VP8, None)
                    .map_err(webm_error)?;
                (builder, Some(track))
            }
            None => (builder, None),
        };
        let (builder, audio) = match audio_channels {
            Some(channels) => {
                let (builder, track) = builder
                    .add_audio_track(48_000, u32::from(channels), AudioCodecId::Opus, None)
                    .map_err(webm_error)?;
                (builder, Some(track))
            }
            None => (builder, None),
        };
        Ok(Self {
            segment: builder.build(),
            video,
            audio,
            video_clock: RtpClock::default(),
            audio_clock: RtpClock::default(),
            last_ns: 0,
            video_started: false,
            reorder: VecDeque::new(),
        })
    }

    fn nanos(ticks: i64, rate: i64) -> u64 {
        u64::try_from(ticks.max(0) as i128 * 1_000_000_000 / i128::from(rate)).unwrap_or(0)
    }

    /// Adds a VP8 frame with its RTP timestamp (90 kHz). Frames before the first keyframe are
    /// dropped (they cannot be decoded).
    pub fn push_video(
        &mut self,
        frame: &[u8],
        rtp_timestamp: u32,
        keyframe: bool,
    ) -> Result<(), RecordError> {
        let ns = Self::nanos(self.video_clock.ticks(rtp_timestamp), VIDEO_RATE);
        self.push_video_ns(frame, ns, keyframe)
    }

    /// Adds a VP8 frame at `ns` from the start of the file.
    pub fn push_video_ns(
        &mut self,
        frame: &[u8],
        ns: u64,
        keyframe: bool,
    ) -> Result<(), RecordError> {
        if self.video.is_none() {
            return Ok(());
        }
        self.hold(Frame {
            ns,
            video: true,
            keyframe,
            data: frame.to_vec(),
        })
    }

    /// Adds an Opus packet with its RTP timestamp (48 kHz).
    pub fn push_audio(&mut self, packet: &[u8], rtp_timestamp: u32) -> Result<(), RecordError> {
        let ns = Self::nanos(self.audio_clock.ticks(rtp_timestamp), AUDIO_RATE);
        self.push_audio_ns(packet, ns)
    }

    /// Adds an Opus packet at `ns` from the start of the file.
    pub fn push_audio_ns(&mut self, packet: &[u8], ns: u64) -> Result<(), RecordError> {
        if self.audio.is_none() {
            return Ok(());
        }
        self.hold(Frame {
            ns,
            video: false,
            keyframe: true,
            data: packet.to_vec(),
        })
    }

    /// Puts a frame in time order among the held ones and writes those older than the window.
    fn hold(&mut self, frame: Frame) -> Result<(), RecordError> {
        let at = self.reorder.partition_point(|f| f.ns <= frame.ns);
        let newest = self.reorder.back().map_or(frame.ns, |f| f.ns.max(frame.ns));
        self.reorder.insert(at, frame);
        while self
            .reorder
            .front()
            .is_some_and(|f| f.ns + REORDER_WINDOW_NS < newest)
        {
            if let Some(frame) = self.reorder.pop_front() {
                self.write(frame)?;
            }
        }
        Ok(())
    }

    fn write(&mut self, frame: Frame) -> Result<(), RecordError> {
        let track: u64 = match (frame.video, self.video, self.audio) {
            (true, Some(video), _) => {
                if !self.video_started && !frame.keyframe {
                    return Ok(());
                }
                self.video_started = true;
                video.into()
            }
            (false, _, Some(audio)) => audio.into(),
            _ => return Ok(()),
        };
        // Only a straggler older than the window is moved up to the last written time.
        let ns = frame.ns.max(self.last_ns);
        self.segment
            .add_frame(track, &frame.data, ns, frame.keyframe)
            .map_err(webm_error)?;
        self.last_ns = ns;
        Ok(())
    }

    /// Writes the cues and sizes and returns the writer.
    pub fn finish(mut self) -> Result<W, RecordError> {
        while let Some(frame) = self.reorder.pop_front() {
            self.write(frame)?;
        }
        let writer = self
            .segment
            .finalize(None)
            .map_err(|_| RecordError::Webm("finalizing failed".into()))?;
        Ok(writer.into_inner())
    }
}
