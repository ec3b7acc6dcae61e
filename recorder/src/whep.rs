//! Records one participant of a room by watching it like a player: a WHEP session
//! (`/whep/{room}?participant=…`) with a str0m peer over real ICE, DTLS and SRTP, whose
//! depacketized VP8 and Opus frames go into one WebM file. Because it joins like any player it
//! works on whichever node serves the room. Timestamps are the tracks' RTP clocks, each
//! offset by its first packet's arrival since the recording began, so the audio and video of
//! one file, and the files of one recording, line up.

use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::media::{Direction, KeyframeRequestKind, MediaData, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::RecordError;
use crate::clock::RtpClock;
use crate::webm_file::{VideoFormat, WebmWriter};

/// What to record and where.
#[derive(Debug, Clone)]
pub struct WhepRecording {
    /// The server's HTTP base (`http://127.0.0.1:8080`).
    pub server: String,
    pub room: String,
    /// The identity of the participant to record.
    pub participant: String,
    /// A join token for the room (a viewer's is enough).
    pub token: String,
    pub file: PathBuf,
    /// The local address for the media socket.
    pub local_ip: IpAddr,
    /// The start of the whole recording (the files' time zero).
    pub epoch: Instant,
}

/// What a finished recording holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecordedTrackCounts {
    pub video_frames: u64,
    pub audio_packets: u64,
}

/// One track's time: RTP ticks since its first frame, plus that frame's arrival.
struct TrackTime {
    clock: RtpClock,
    offset_ns: Option<u64>,
}

impl TrackTime {
    fn new() -> Self {
        Self {
            clock: RtpClock::default(),
            offset_ns: None,
        }
    }

    fn ns(&mut self, data: &MediaData, rate: u64, epoch: Instant) -> u64 {
        let offset = *self.offset_ns.get_or_insert_with(|| {
            data.network_time
                .saturating_duration_since(epoch)
                .as_nanos() as u64
        });
        let ticks = self.clock.ticks(data.time.numer() as u32).max(0) as u128;
        let ns = ticks * 1_000_000_000 / u128::from(rate);
        offset.saturating_add(u64::try_from(ns).unwrap_or(u64::MAX))
    }
}

/// The file, made at the first video keyframe or audio packet (the video size is only known
/// from a keyframe; audio alone waits a little for video).
enum FileState {
    Waiting { first_audio: Option<Instant> },
    Writing(WebmWriter<File>),
}

/// Records until `stop` is cancelled or the participant leaves (the session ends).
pub async fn record(
    config: WhepRecording,
    stop: CancellationToken,
) -> Result<RecordedTrackCounts, RecordError> {
    let socket = UdpSocket::bind(SocketAddr::new(config.local_ip, 0)).await?;
    let local = socket.local_addr()?;
    let mut rtc: Rtc = RtcConfig::new()
        .clear_codecs()
        .enable_opus(true, false)
        .enable_vp8(true)
        .build(Instant::now());
    let candidate =
        Candidate::host(local, "udp").map_err(|e| RecordError::Session(e.to_string()))?;
    rtc.add_local_candidate(candidate);
    let mut change = rtc.sdp_api();
    let audio_mid = change.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
    let video_mid = change.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
    let (offer, pending) = change
        .apply()
        .ok_or_else(|| RecordError::Session("no offer".into()))?;
    let (answer, session) = post_offer(&config, offer).await?;
    let result = run(
        &config,
        rtc,
        socket,
        local,
        (answer, pending),
        (audio_mid, video_mid),
        stop,
    )
    .await;
    // End the WHEP session at once (otherwise the server keeps it until ICE times out).
    if let Some(session) = session {
        let url = format!("{}{session}", config.server.trim_end_matches('/'));
        let _ = reqwest::Client::new()
            .delete(url)
            .bearer_auth(&config.token)
            .send()
            .await;
    }
    result
}

/// The session's loop, until `stop` or the end of the participant's media.
async fn run(
    config: &WhepRecording,
    mut rtc: Rtc,
    socket: UdpSocket,
    local: SocketAddr,
    (answer, pending): (SdpAnswer, SdpPendingOffer),
    (audio_mid, video_mid): (Mid, Mid),
    stop: CancellationToken,
) -> Result<RecordedTrackCounts, RecordError> {
    rtc.sdp_api()
        .accept_answer(pending, answer)
        .map_err(|e| RecordError::Session(e.to_string()))?;

    let mut out = FileState::Waiting { first_audio: None };
    let (mut video_time, mut audio_time) = (TrackTime::new(), TrackTime::new());
    let mut counts = RecordedTrackCounts::default();
    let mut buf = vec![0u8; 2048];
    let mut pending_audio: Vec<(Vec<u8>, u64)> = Vec::new();
    let mut video_broken = false;
    loop {
        let timeout = loop {
            match rtc
                .poll_output()
                .map_err(|e| RecordError::Session(e.to_string()))?
            {
                Output::Timeout(t) => break t,
                Output::Transmit(t) => {
                    let _ = socket.send_to(&t.contents, t.destination).await;
                }
                Output::Event(Event::MediaData(data)) => {
                    // After a lost packet the video waits for a keyframe (and asks for one):
                    // frames that reference what was lost would show as garbage.
                    if data.mid == video_mid {
                        if !data.contiguous && !data.is_keyframe() {
                            if !video_broken && let Some(mut writer) = rtc.writer(video_mid) {
                                let _ = writer.request_keyframe(data.rid, KeyframeRequestKind::Pli);
                            }
                            video_broken = true;
                        } else if data.is_keyframe() {
                            video_broken = false;
                        }
                        if video_broken {
                            continue;
                        }
                    }
                    let handled = handle_media(
                        config,
                        &data,
                        (audio_mid, video_mid),
                        &mut out,
                        (&mut audio_time, &mut video_time),
                        &mut pending_audio,
                        &mut counts,
                    );
                    if let Err(e) = handled {
                        // What was written stays playable.
                        let _ = finish(out, counts);
                        return Err(e);
                    }
                }
                Output::Event(Event::IceConnectionStateChange(state)) => {
                    // Disconnected may recover; the end is `is_alive()` turning false.
                    debug!(?state, participant = %config.participant, "recording ICE");
                }
                Output::Event(_) => {}
            }
        };
        let wait = timeout
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(50));
        tokio::select! {
            _ = stop.cancelled() => return finish(out, counts),
            received = tokio::time::timeout(wait, socket.recv_from(&mut buf)) => {
                let now = Instant::now();
                match received {
                    Ok(Ok((n, source))) => {
                        if let Ok(receive) = Receive::new(Protocol::Udp, source, local, &buf[..n]) {
                            rtc.handle_input(Input::Receive(now, receive)).map_err(|e| RecordError::Session(e.to_string()))?;
                        }
                    }
                    Ok(Err(e)) => return Err(e.into()),
                    Err(_) => rtc.handle_input(Input::Timeout(now)).map_err(|e| RecordError::Session(e.to_string()))?,
                }
            }
        }
        if !rtc.is_alive() {
            return finish(out, counts);
        }
    }
}

/// How long audio waits for a video keyframe before the file is made audio-only.
const VIDEO_GRACE: Duration = Duration::from_secs(3);

fn handle_media(
    config: &WhepRecording,
    data: &MediaData,
    (audio_mid, video_mid): (Mid, Mid),
    out: &mut FileState,
    (audio_time, video_time): (&mut TrackTime, &mut TrackTime),
    pending_audio: &mut Vec<(Vec<u8>, u64)>,
    counts: &mut RecordedTrackCounts,
) -> Result<(), RecordError> {
    if data.mid == video_mid {
        let ns = video_time.ns(data, 90_000, config.epoch);
        if let FileState::Waiting { .. } = out {
            let Some(format) = data
                .is_keyframe()
                .then(|| VideoFormat::from_vp8_keyframe(&data.data))
                .flatten()
            else {
                return Ok(());
            };
            let mut writer = WebmWriter::new(File::create(&config.file)?, Some(format), Some(2))?;
            for (packet, ns) in pending_audio.drain(..) {
                writer.push_audio_ns(&packet, ns)?;
            }
            *out = FileState::Writing(writer);
        }
        if let FileState::Writing(writer) = out {
            writer.push_video_ns(&data.data, ns, data.is_keyframe())?;
            counts.video_frames += 1;
        }
    } else if data.mid == audio_mid {
        let ns = audio_time.ns(data, 48_000, config.epoch);
        counts.audio_packets += 1;
        match out {
            FileState::Writing(writer) => writer.push_audio_ns(&data.data, ns)?,
            FileState::Waiting { first_audio } => {
                let first = *first_audio.get_or_insert(data.network_time);
                pending_audio.push((data.data.to_vec(), ns));
                if data.network_time.saturating_duration_since(first) > VIDEO_GRACE {
                    // No video yet: the file starts with audio, and keeps a video track (of a
                    // nominal size: decoders take the real one from the frames) for a camera
                    // turned on later.
                    let later_camera = VideoFormat {
                        width: 640,
                        height: 360,
                    };
                    let mut writer =
                        WebmWriter::new(File::create(&config.file)?, Some(later_camera), Some(2))?;
                    for (packet, ns) in pending_audio.drain(..) {
                        writer.push_audio_ns(&packet, ns)?;
                    }
                    *out = FileState::Writing(writer);
                }
            }
        }
    }
    Ok(())
}

fn finish(out: FileState, counts: RecordedTrackCounts) -> Result<RecordedTrackCounts, RecordError> {
    if let FileState::Writing(writer) = out {
        writer.finish()?;
    }
    Ok(counts)
}

/// Posts the offer; returns the answer and the session's location (for the DELETE).
async fn post_offer(
    config: &WhepRecording,
    offer: SdpOffer,
) -> Result<(SdpAnswer, Option<String>), RecordError> {
    let base = format!(
        "{}/whep/{}",
        config.server.trim_end_matches('/'),
        config.room
    );
    let mut url = reqwest::Url::parse(&base).map_err(|e| RecordError::Session(e.to_string()))?;
    // Identities may hold `+`, `#`, `&`…: encoded, not pasted.
    url.query_pairs_mut()
        .append_pair("participant", &config.participant);
    let response = reqwest::Client::new()
        .post(url)
        .bearer_auth(&config.token)
        .header("content-type", "application/sdp")
        .body(offer.to_sdp_string())
        .send()
        .await
        .map_err(|e| RecordError::Session(e.to_string()))?;
    if !response.status().is_success() {
        return Err(RecordError::Session(format!(
            "WHEP answered {}",
            response.status()
        )));
    }
    let location = response
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let sdp = response
        .text()
        .await
        .map_err(|e| RecordError::Session(e.to_string()))?;
    let answer =
        SdpAnswer::from_sdp_string(&sdp).map_err(|e| RecordError::Session(e.to_string()))?;
    Ok((answer, location))
}
