//! Ting's recorder: writes a meeting's tracks to files without transcoding.
//!
//! This crate holds the writers, fed with what a subscriber receives (depacketized Opus and
//! VP8 frames with their RTP timestamps): [`OggOpusWriter`] (Opus → Ogg, RFC 7845) and
//! [`WebmWriter`] (VP8 and Opus → WebM, through libwebm). Both write as they go and make pages
//! or clusters that players read even if the recorder is killed before it finishes: a killed
//! recording is playable up to its last written frame. The invariant: timestamps in a file
//! come from the RTP clock of its track, unwrapped, so tracks recorded side by side line up.

mod clock;
mod ogg_opus;
#[cfg(feature = "test-media")]
pub mod test_media;
mod webm_file;
mod whep;

pub use clock::RtpClock;
pub use ogg_opus::OggOpusWriter;
pub use webm_file::{VideoFormat, WebmWriter};
pub use whep::{RecordedTrackCounts, WhepRecording, record};

/// Why writing a recording failed.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("writing the recording: {0}")]
    Io(#[from] std::io::Error),
    #[error("the WebM muxer refused: {0}")]
    Webm(String),
    #[error("not an Opus packet: {0}")]
    BadOpus(String),
    #[error("the recording session failed: {0}")]
    Session(String),
}
