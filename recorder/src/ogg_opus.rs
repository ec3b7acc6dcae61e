//! Opus in Ogg (RFC 7845): an `OpusHead` page, an `OpusTags` page, then audio pages whose
//! granule position is the count of 48 kHz samples at the end of their last packet. A page is
//! ended about once a second, so a killed recorder loses at most that much.

use std::io::Write;

use ogg::writing::{PacketWriteEndInfo, PacketWriter};

use crate::RecordError;
use crate::clock::RtpClock;

/// Opus' RTP clock and granule rate (RFC 7587, RFC 7845).
const OPUS_RATE: u32 = 48_000;
/// Audio packets per page (20 ms each: about one second).
const PACKETS_PER_PAGE: u32 = 50;

pub struct OggOpusWriter<W: Write> {
    ogg: PacketWriter<'static, W>,
    serial: u32,
    clock: RtpClock,
    /// The packet not yet written: the last one must be written with end-of-stream.
    pending: Option<(Vec<u8>, u64)>,
    in_page: u32,
}

fn opus_head(channels: u8) -> Vec<u8> {
    let mut head = b"OpusHead".to_vec();
    head.push(1); // version
    head.push(channels);
    head.extend_from_slice(&0u16.to_le_bytes()); // pre-skip: WebRTC streams carry none
    head.extend_from_slice(&OPUS_RATE.to_le_bytes()); // input sample rate (informational)
    head.extend_from_slice(&0i16.to_le_bytes()); // output gain
    head.push(0); // channel mapping family 0: mono or stereo
    head
}

fn opus_tags(vendor: &str) -> Vec<u8> {
    let mut tags = b"OpusTags".to_vec();
    tags.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
    tags.extend_from_slice(vendor.as_bytes());
    tags.extend_from_slice(&0u32.to_le_bytes()); // no user comments
    tags
}

impl<W: Write> OggOpusWriter<W> {
    /// Starts a stream: writes the two header pages at once.
    pub fn new(writer: W, serial: u32, channels: u8) -> Result<Self, RecordError> {
        let mut ogg = PacketWriter::new(writer);
        ogg.write_packet(opus_head(channels), serial, PacketWriteEndInfo::EndPage, 0)?;
        ogg.write_packet(
            opus_tags("Ting recorder"),
            serial,
            PacketWriteEndInfo::EndPage,
            0,
        )?;
        Ok(Self {
            ogg,
            serial,
            clock: RtpClock::default(),
            pending: None,
            in_page: 0,
        })
    }

    /// Adds one Opus packet with its RTP timestamp (48 kHz).
    pub fn push(&mut self, packet: &[u8], rtp_timestamp: u32) -> Result<(), RecordError> {
        let samples = opus::packet::get_nb_samples(packet, OPUS_RATE)
            .map_err(|e| RecordError::BadOpus(e.to_string()))?;
        let start = self.clock.ticks(rtp_timestamp).max(0) as u64;
        // The granule position of a packet is the sample count at its end; it never goes back.
        let previous_end = self.pending.as_ref().map_or(0, |(_, end)| *end);
        let end = (start + samples as u64).max(previous_end);
        if let Some((previous, granule)) = self.pending.replace((packet.to_vec(), end)) {
            self.in_page += 1;
            let info = if self.in_page >= PACKETS_PER_PAGE {
                self.in_page = 0;
                PacketWriteEndInfo::EndPage
            } else {
                PacketWriteEndInfo::NormalPacket
            };
            self.ogg
                .write_packet(previous, self.serial, info, granule)?;
        }
        Ok(())
    }

    /// Ends the stream (its last page is marked end-of-stream) and returns the writer.
    pub fn finish(mut self) -> Result<W, RecordError> {
        if let Some((last, granule)) = self.pending.take() {
            self.ogg
                .write_packet(last, self.serial, PacketWriteEndInfo::EndStream, granule)?;
        }
        let mut writer = self.ogg.into_inner();
        writer.flush()?;
        Ok(writer)
    }
}
