//! One participant's media connection: a str0m `Rtc` on its own UDP socket, with a browser-like
//! set of m-lines (sendonly microphone, sendonly simulcast camera, recvonly slots).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{
    Direction, Frequency, MediaKind, MediaTime, Mid, Pt, Rid, Simulcast, SimulcastLayer,
};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};
use ting_protocol::{PublishedTrack, TrackKind, TrackSource};
use tokio::net::UdpSocket;

use crate::media::{OutFrame, RunClock, VIDEO_LAYERS};

/// Datagrams read per wake-up before str0m's output is drained.
const READ_BATCH: usize = 64;

/// Traffic counters of one peer.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counters {
    pub rx_packets: u64,
    /// RTP media packets received (str0m's ingress stats, once a second): without the
    /// bandwidth estimator's padding and probes, RTCP and STUN that `rx_packets` also counts.
    pub rx_media_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Datagrams the socket would not take (send buffer full).
    pub tx_dropped: u64,
}

/// An offer ready to send.
#[derive(Debug)]
pub struct Offer {
    pub sdp: String,
    /// The full list of sending m-lines, as `offer.tracks` wants it.
    pub tracks: Vec<PublishedTrack>,
    /// Receive-only m-lines added by this offer.
    pub recv_mids: Vec<(Mid, TrackKind)>,
}

pub struct MediaPeer {
    pub rtc: Rtc,
    socket: UdpSocket,
    local: SocketAddr,
    buf: Vec<u8>,
    audio_mid: Option<Mid>,
    video_mid: Option<Mid>,
    audio_pt: Option<Pt>,
    video_pt: Option<Pt>,
    publish_added: bool,
    published: Vec<PublishedTrack>,
    pending: Option<(SdpPendingOffer, Vec<Mid>)>,
    pub counters: Counters,
    /// Cumulative ingress packet counts last seen per receiving stream.
    media_packets_seen: HashMap<(Mid, Option<Rid>), u64>,
}

impl MediaPeer {
    /// A peer with one host candidate: a fresh UDP socket on `local_ip`. Needs a tokio runtime.
    pub fn bind(local_ip: IpAddr, now: Instant) -> anyhow::Result<Self> {
        let std_socket =
            std::net::UdpSocket::bind(SocketAddr::new(local_ip, 0)).with_context(|| {
                format!(
                    "binding a UDP socket on {local_ip} (too many open files? raise `ulimit -n`)"
                )
            })?;
        std_socket.set_nonblocking(true)?;
        let local = std_socket.local_addr()?;
        let socket = UdpSocket::from_std(std_socket)?;
        // Opus and VP8 only, as a browser offers them (fewer codecs keep the SDP small).
        let mut rtc = Rtc::builder()
            .clear_codecs()
            .enable_opus(true, false)
            .enable_vp8(true)
            .set_stats_interval(Some(Duration::from_secs(1)))
            .build(now);
        rtc.add_local_candidate(
            Candidate::host(local, "udp").context("host candidate for the media socket")?,
        );
        Ok(Self {
            rtc,
            socket,
            local,
            buf: vec![0; 2048],
            audio_mid: None,
            video_mid: None,
            audio_pt: None,
            video_pt: None,
            publish_added: false,
            published: Vec::new(),
            pending: None,
            counters: Counters::default(),
            media_packets_seen: HashMap::new(),
        })
    }

    /// The media socket's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    pub fn offer_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// Builds the next offer: on the first call the publisher's m-lines (microphone; camera with
    /// simulcast q/h/f), plus one receive-only m-line per entry of `recv`. `None` when nothing
    /// would change. Only one offer may be in flight.
    pub fn create_offer(
        &mut self,
        audio: bool,
        video: bool,
        recv: &[TrackKind],
    ) -> anyhow::Result<Option<Offer>> {
        if self.pending.is_some() {
            bail!("an offer is already in flight");
        }
        let mut change = self.rtc.sdp_api();
        let mut added = Vec::new();
        if !self.publish_added {
            self.publish_added = true;
            if audio {
                let mid = change.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
                self.audio_mid = Some(mid);
                self.published.push(PublishedTrack {
                    mid: mid.to_string(),
                    source: TrackSource::Microphone,
                    muted: false,
                });
                added.push(mid);
            }
            if video {
                let mut simulcast = Simulcast::new();
                for layer in VIDEO_LAYERS {
                    simulcast.add_send_layer(SimulcastLayer::new(layer.rid));
                }
                let mid = change.add_media(
                    MediaKind::Video,
                    Direction::SendOnly,
                    None,
                    None,
                    Some(simulcast),
                );
                self.video_mid = Some(mid);
                self.published.push(PublishedTrack {
                    mid: mid.to_string(),
                    source: TrackSource::Camera,
                    muted: false,
                });
                added.push(mid);
            }
        }
        let mut recv_mids = Vec::new();
        for &kind in recv {
            let media_kind = match kind {
                TrackKind::Audio => MediaKind::Audio,
                TrackKind::Video => MediaKind::Video,
            };
            let mid = change.add_media(media_kind, Direction::RecvOnly, None, None, None);
            recv_mids.push((mid, kind));
            added.push(mid);
        }
        let Some((offer, pending)) = change.apply() else {
            return Ok(None);
        };
        self.pending = Some((pending, added));
        Ok(Some(Offer {
            sdp: offer.to_sdp_string(),
            tracks: self.published.clone(),
            recv_mids,
        }))
    }

    /// Applies the server's answer to the offer in flight; returns the m-lines it negotiated.
    /// Only the server's UDP candidates on `server_ip` (when known) are kept, so media goes
    /// nowhere else.
    pub fn accept_answer(
        &mut self,
        sdp: &str,
        server_ip: Option<IpAddr>,
    ) -> anyhow::Result<Vec<Mid>> {
        let Some((pending, mids)) = self.pending.take() else {
            bail!("an answer arrived without an offer in flight");
        };
        let sdp = filter_candidates(sdp, server_ip, self.local.ip())?;
        let answer = SdpAnswer::from_sdp_string(&sdp).context("parsing the SDP answer")?;
        self.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .context("applying the SDP answer")?;
        Ok(mids)
    }

    /// Answers an offer from the server (Janus offers the subscriber side), keeping only its UDP
    /// candidates on `server_ip` as [`MediaPeer::accept_answer`] does; returns the SDP answer.
    pub fn accept_offer(&mut self, sdp: &str, server_ip: Option<IpAddr>) -> anyhow::Result<String> {
        let sdp = filter_candidates(sdp, server_ip, self.local.ip())?;
        let offer = SdpOffer::from_sdp_string(&sdp).context("parsing the SDP offer")?;
        let answer = self
            .rtc
            .sdp_api()
            .accept_offer(offer)
            .context("answering the SDP offer")?;
        Ok(answer.to_sdp_string())
    }

    /// The offer in flight was refused: forget it (its m-lines stay unnegotiated).
    pub fn offer_failed(&mut self) {
        self.pending = None;
    }

    /// Waits for a datagram (cancel-safe); hand it to [`MediaPeer::receive`].
    pub async fn recv(&mut self) -> io::Result<(usize, SocketAddr)> {
        self.socket.recv_from(&mut self.buf).await
    }

    /// Feeds the datagram just received, and whatever else is already queued on the socket.
    pub fn receive(&mut self, len: usize, source: SocketAddr, now: Instant) -> anyhow::Result<()> {
        self.feed(len, source, now)?;
        for _ in 0..READ_BATCH {
            match self.socket.try_recv_from(&mut self.buf) {
                Ok((len, source)) => self.feed(len, source, now)?,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e).context("UDP receive"),
            }
        }
        Ok(())
    }

    fn feed(&mut self, len: usize, source: SocketAddr, now: Instant) -> anyhow::Result<()> {
        self.counters.rx_packets += 1;
        self.counters.rx_bytes += len as u64;
        let Ok(receive) = Receive::new(Protocol::Udp, source, self.local, &self.buf[..len]) else {
            return Ok(());
        };
        self.rtc
            .handle_input(Input::Receive(now, receive))
            .context("str0m input")
    }

    pub fn timeout(&mut self, now: Instant) -> anyhow::Result<()> {
        self.rtc
            .handle_input(Input::Timeout(now))
            .context("str0m timeout")
    }

    /// Writes one frame (dropped until ICE and DTLS are up).
    pub fn write(&mut self, frame: OutFrame, now: Instant, clock: &RunClock) -> anyhow::Result<()> {
        if !self.rtc.is_connected() {
            return Ok(());
        }
        match frame {
            OutFrame::Audio { data, level, voice } => {
                let Some(mid) = self.audio_mid else {
                    return Ok(());
                };
                let Some(pt) = cached_pt(&mut self.rtc, mid, Codec::Opus, &mut self.audio_pt)
                else {
                    return Ok(());
                };
                let time = MediaTime::new(clock.rtp_ticks(now, 48_000), Frequency::FORTY_EIGHT_KHZ);
                if let Some(writer) = self.rtc.writer(mid) {
                    writer
                        .audio_level(level, voice)
                        .write(pt, now, time, data)
                        .context("writing audio")?;
                }
            }
            OutFrame::Video { rid, data, .. } => {
                let Some(mid) = self.video_mid else {
                    return Ok(());
                };
                let Some(pt) = cached_pt(&mut self.rtc, mid, Codec::Vp8, &mut self.video_pt) else {
                    return Ok(());
                };
                let time = MediaTime::new(clock.rtp_ticks(now, 90_000), Frequency::NINETY_KHZ);
                if let Some(writer) = self.rtc.writer(mid) {
                    writer
                        .rid(Rid::from(rid))
                        .write(pt, now, time, data)
                        .context("writing video")?;
                }
            }
        }
        Ok(())
    }

    /// Sends what str0m wants sent, collects its events, and returns its next timeout.
    pub fn drain(&mut self, events: &mut Vec<Event>) -> anyhow::Result<Instant> {
        loop {
            match self.rtc.poll_output().context("str0m output")? {
                Output::Timeout(t) => return Ok(t),
                Output::Transmit(t) => match self.socket.try_send_to(&t.contents, t.destination) {
                    Ok(n) => {
                        self.counters.tx_packets += 1;
                        self.counters.tx_bytes += n as u64;
                    }
                    Err(_) => self.counters.tx_dropped += 1,
                },
                Output::Event(e) => {
                    if let Event::MediaIngressStats(s) = &e {
                        let seen = self.media_packets_seen.entry((s.mid, s.rid)).or_default();
                        // A count below the last one is a new stream on the m-line (a new SSRC
                        // after renegotiation), counting from zero.
                        self.counters.rx_media_packets += if s.packets >= *seen {
                            s.packets - *seen
                        } else {
                            s.packets
                        };
                        *seen = s.packets;
                    }
                    events.push(e);
                }
            }
        }
    }

    /// Ends the media connection (str0m closes DTLS).
    pub fn close(&mut self) {
        self.rtc.disconnect();
        let mut events = Vec::new();
        let _ = self.drain(&mut events);
    }
}

fn cached_pt(rtc: &mut Rtc, mid: Mid, codec: Codec, cache: &mut Option<Pt>) -> Option<Pt> {
    if cache.is_none() {
        *cache = rtc
            .writer(mid)?
            .payload_params()
            .find(|p| p.spec().codec == codec)
            .map(|p| p.pt());
    }
    *cache
}

/// Keeps the answer's UDP candidates on `server_ip` (or, for a server named by host name, of
/// the local address's family); drops the rest, ICE-TCP included.
pub fn filter_candidates(
    sdp: &str,
    server_ip: Option<IpAddr>,
    local_ip: IpAddr,
) -> anyhow::Result<String> {
    let mut out = String::with_capacity(sdp.len());
    let mut kept = 0;
    for line in sdp.split_inclusive('\n') {
        if let Some(candidate) = line.trim_end().strip_prefix("a=candidate:") {
            let fields: Vec<&str> = candidate.split_whitespace().collect();
            let udp = fields.get(2).is_some_and(|t| t.eq_ignore_ascii_case("udp"));
            let ip = fields.get(4).and_then(|a| a.parse::<IpAddr>().ok());
            let wanted = match (server_ip, ip) {
                (_, None) => false,
                (Some(server), Some(ip)) => ip == server,
                (None, Some(ip)) => ip.is_ipv4() == local_ip.is_ipv4(),
            };
            if !(udp && wanted) {
                continue;
            }
            kept += 1;
        }
        out.push_str(line);
    }
    if kept == 0 {
        bail!(
            "the server's answer has no UDP candidate on {} (start the server with --bind {} or \
             point --server at an address it listens on)",
            server_ip.map_or_else(
                || "the local address family".to_owned(),
                |ip| ip.to_string()
            ),
            server_ip.unwrap_or(local_ip)
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_servers_udp_candidates_are_kept() {
        let sdp = "v=0\r\n\
                   a=candidate:1 1 udp 2130706431 127.0.0.1 7882 typ host\r\n\
                   a=candidate:2 1 udp 2130706431 10.1.2.3 7882 typ host\r\n\
                   a=candidate:3 1 tcp 2130706431 127.0.0.1 7881 typ host tcptype passive\r\n\
                   a=end-of-candidates\r\n";
        let local = IpAddr::from([127, 0, 0, 1]);
        let kept = filter_candidates(sdp, Some(local), local).unwrap();
        assert!(kept.contains("127.0.0.1 7882"));
        assert!(!kept.contains("10.1.2.3"));
        assert!(!kept.contains(" tcp "));
        assert!(kept.starts_with("v=0\r\n") && kept.ends_with("a=end-of-candidates\r\n"));
        let by_name = filter_candidates(sdp, None, local).unwrap();
        assert!(by_name.contains("10.1.2.3"));
        let err = filter_candidates(sdp, Some(IpAddr::from([192, 168, 0, 1])), local);
        assert!(format!("{:#}", err.unwrap_err()).contains("no UDP candidate on 192.168.0.1"));
    }
}
