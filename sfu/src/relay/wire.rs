//! What travels between nodes: relayed media as QUIC datagrams in a compact binary layout, and
//! control frames (length-prefixed JSON) on one stream per link.
//!
//! Datagram layout, big-endian: version (1), track id (8), RID length (1) and bytes, payload
//! type (1), extended sequence number (8), extended RTP time (8), flags (1: marker, audio
//! level, voice activity and its value, orientation), audio level (1, if flagged), orientation
//! (1, if flagged), arrival at the origin in Unix microseconds (8), then the RTP payload.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use str0m::media::{Pt, Rid};
use str0m::rtp::VideoOrientation;
use ting_protocol::{NodeId, TrackId};

use crate::SfuEvent;
use crate::core::{RelayControl, RelayMedia};
use crate::relay::rpc::{MediaCall, MediaReply};

const VERSION: u8 = 1;
/// Control frames larger than this end the link: nothing legitimate comes near it (an SDP
/// offer of a large client is tens of kilobytes).
pub const MAX_FRAME: usize = 1 << 20;

const MARKER: u8 = 1;
const AUDIO_LEVEL: u8 = 1 << 1;
const VOICE_ACTIVITY: u8 = 1 << 2;
const VOICE_ACTIVE: u8 = 1 << 3;
const ORIENTATION: u8 = 1 << 4;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("relay datagram truncated")]
    Truncated,
    #[error("relay datagram version {0} not understood")]
    Version(u8),
    #[error("invalid simulcast RID in relay datagram")]
    Rid,
}

/// Messages on a link's control stream.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "frame", rename_all = "snake_case")]
pub enum Frame {
    /// The first frame each way: who is speaking, and proof that it holds the cluster secret,
    /// bound to this TLS session; `incarnation` changes when the node restarts.
    Hello {
        node: NodeId,
        proof: String,
        incarnation: u64,
    },
    Relay {
        control: RelayControl,
    },
    Call {
        id: u64,
        call: MediaCall,
    },
    Reply {
        id: u64,
        reply: Result<MediaReply, String>,
    },
    Event {
        event: SfuEvent,
    },
}

pub fn encode_media(media: &RelayMedia, now: Instant) -> Bytes {
    let rid: &[u8] = media.layer.as_ref().map_or(&[], |r| r.as_bytes());
    let mut out = BytesMut::with_capacity(48 + rid.len() + media.payload.len());
    out.put_u8(VERSION);
    out.put_u64(media.track.0);
    out.put_u8(rid.len() as u8);
    out.put_slice(rid);
    out.put_u8(*media.pt);
    out.put_u64(media.seq_no);
    out.put_u64(media.time);
    let mut flags = 0;
    if media.marker {
        flags |= MARKER;
    }
    if media.audio_level.is_some() {
        flags |= AUDIO_LEVEL;
    }
    if let Some(active) = media.voice_activity {
        flags |= VOICE_ACTIVITY;
        if active {
            flags |= VOICE_ACTIVE;
        }
    }
    if media.video_orientation.is_some() {
        flags |= ORIENTATION;
    }
    out.put_u8(flags);
    if let Some(level) = media.audio_level {
        out.put_i8(level);
    }
    if let Some(orientation) = media.video_orientation {
        out.put_u8(orientation as u8);
    }
    out.put_u64(unix_micros(media.arrival, now));
    out.put_slice(&media.payload);
    out.freeze()
}

pub fn decode_media(datagram: &[u8], now: Instant) -> Result<RelayMedia, WireError> {
    let mut r = Reader(datagram);
    let version = r.u8()?;
    if version != VERSION {
        return Err(WireError::Version(version));
    }
    let track = TrackId(r.u64()?);
    let rid_len = r.u8()? as usize;
    let layer = match rid_len {
        0 => None,
        1..=8 => {
            let bytes = r.take(rid_len)?;
            let rid = std::str::from_utf8(bytes).map_err(|_| WireError::Rid)?;
            Some(Rid::from(rid))
        }
        _ => return Err(WireError::Rid),
    };
    let pt = Pt::from(r.u8()?);
    let seq_no = r.u64()?;
    let time = r.u64()?;
    let flags = r.u8()?;
    let audio_level = if flags & AUDIO_LEVEL != 0 {
        Some(r.u8()? as i8)
    } else {
        None
    };
    let video_orientation = if flags & ORIENTATION != 0 {
        Some(match r.u8()? {
            3 => VideoOrientation::Deg90,
            2 => VideoOrientation::Deg180,
            1 => VideoOrientation::Deg270,
            _ => VideoOrientation::Deg0,
        })
    } else {
        None
    };
    let arrival = instant_of(r.u64()?, now);
    Ok(RelayMedia {
        track,
        layer,
        pt,
        seq_no,
        time,
        marker: flags & MARKER != 0,
        audio_level,
        voice_activity: (flags & VOICE_ACTIVITY != 0).then_some(flags & VOICE_ACTIVE != 0),
        video_orientation,
        arrival,
        payload: Arc::from(r.0),
    })
}

pub fn encode_frame(frame: &Frame) -> Vec<u8> {
    // Serialising plain data into a Vec cannot fail.
    let body = serde_json::to_vec(frame).unwrap_or_default();
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// `instant` as Unix time: nodes of a cluster share a clock (NTP), so the far node can tell
/// how long the packet took from the origin.
fn unix_micros(instant: Instant, now: Instant) -> u64 {
    let unix_now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let age = now.saturating_duration_since(instant);
    unix_now.saturating_sub(age).as_micros() as u64
}

fn instant_of(unix_micros: u64, now: Instant) -> Instant {
    let unix_now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let age = unix_now.saturating_sub(Duration::from_micros(unix_micros));
    now.checked_sub(age).unwrap_or(now)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.0.len() < n {
            return Err(WireError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        let bytes = self.take(8)?;
        let mut array = [0u8; 8];
        array.copy_from_slice(bytes);
        Ok(u64::from_be_bytes(array))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RelayMedia {
        RelayMedia {
            track: TrackId(0x0102_0304_0506_0708),
            layer: Some(Rid::from("h")),
            pt: Pt::from(96),
            seq_no: 70_000,
            time: 1 << 33,
            marker: true,
            audio_level: Some(-42),
            voice_activity: Some(true),
            video_orientation: Some(VideoOrientation::Deg90),
            arrival: Instant::now(),
            payload: Arc::from(&b"vp8 payload"[..]),
        }
    }

    #[test]
    fn media_round_trips_through_a_datagram() {
        let now = Instant::now();
        let media = sample();
        let back = decode_media(&encode_media(&media, now), now).unwrap();
        assert_eq!(back.track, media.track);
        assert_eq!(back.layer, media.layer);
        assert_eq!(back.pt, media.pt);
        assert_eq!(back.seq_no, media.seq_no);
        assert_eq!(back.time, media.time);
        assert!(back.marker);
        assert_eq!(back.audio_level, Some(-42));
        assert_eq!(back.voice_activity, Some(true));
        assert_eq!(back.video_orientation, Some(VideoOrientation::Deg90));
        assert_eq!(&*back.payload, b"vp8 payload");
        let plain = RelayMedia {
            layer: None,
            marker: false,
            audio_level: None,
            voice_activity: None,
            video_orientation: None,
            ..media
        };
        let back = decode_media(&encode_media(&plain, now), now).unwrap();
        assert_eq!(
            (
                back.layer,
                back.marker,
                back.audio_level,
                back.voice_activity
            ),
            (None, false, None, None)
        );
    }

    #[test]
    fn garbage_datagrams_are_errors_not_panics() {
        let now = Instant::now();
        let good = encode_media(&sample(), now);
        assert_eq!(decode_media(&[], now), Err(WireError::Truncated));
        assert_eq!(decode_media(&[9; 40], now), Err(WireError::Version(9)));
        for len in 0..30 {
            assert!(
                decode_media(&good[..len], now).is_err(),
                "prefix of {len} bytes"
            );
        }
        let mut long_rid = good.to_vec();
        long_rid[9] = 200;
        assert_eq!(decode_media(&long_rid, now), Err(WireError::Rid));
    }
}
