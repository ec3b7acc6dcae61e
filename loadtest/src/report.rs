//! The run's report: per-participant results, the aggregate figures, the tester's own health;
//! written as JSON and summarised for people.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use ting_protocol::Role;

use crate::participant::Outcome;
use crate::scenario::ParticipantPlan;
use crate::stats::{Histogram, Percentiles};

/// Entries kept in the report's lists of problems (the counts are complete).
const LIST_LIMIT: usize = 50;

/// What one simulated participant did and measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ParticipantResult {
    pub identity: String,
    pub room: String,
    pub group: String,
    pub role: Role,
    /// Its id on the server, once joined.
    pub participant_id: Option<u64>,
    pub audio: bool,
    pub video: bool,
    /// From starting to connect to `joined`.
    pub join_ms: Option<f64>,
    /// Times it joined again after the server moved it (a cluster node went away) or its
    /// socket dropped; its media figures are from its last session.
    #[serde(default)]
    pub rejoins: u32,
    /// For each rejoin, from the last media frame of the old session to the first of the new.
    #[serde(default)]
    pub recovery_ms: Vec<f64>,
    /// From starting to connect to ICE and DTLS up.
    pub connect_ms: Option<f64>,
    /// From starting to connect to the first media frame received.
    pub first_media_ms: Option<f64>,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// The first server `error` messages that did not end the session.
    pub server_errors: Vec<String>,
    pub server_error_count: u64,
    pub offers: u32,
    /// Received bitrate on the wire (UDP payload) from connecting to the end.
    pub recv_kbps: f64,
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub tx_dropped: u64,
    /// Media payload bytes received.
    pub media_bytes: u64,
    /// Keyframe requests this publisher got from the SFU.
    pub keyframe_requests: u64,
    /// `publish_layers` messages this publisher got (layers paused or resumed).
    pub publish_layers: u64,
    /// Frames skipped because the tester woke up too late to send them.
    pub late_frames: u64,
    pub misrouted: u64,
    pub unreadable: u64,
    /// What arrived from each sender.
    pub sources: Vec<SourceResult>,
}

impl ParticipantResult {
    pub fn planned(plan: &ParticipantPlan) -> Self {
        Self {
            identity: plan.identity.clone(),
            room: plan.room.to_string(),
            group: plan.group.clone(),
            role: plan.role,
            audio: plan.audio,
            video: plan.video,
            ..Default::default()
        }
    }

    /// Whether it subscribed to anything.
    pub fn receives(&self) -> bool {
        self.sources
            .iter()
            .any(|s| s.subscribed_audio || s.subscribed_video)
    }
}

/// What one receiver got from one sender.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceResult {
    /// The sender's participant id.
    pub sender: u64,
    pub subscribed_audio: bool,
    pub subscribed_video: bool,
    pub audio_frames: u64,
    pub audio_expected: u64,
    pub audio_lost: u64,
    pub video_frames: u64,
    pub video_expected: u64,
    pub video_lost: u64,
    pub keyframes: u64,
    /// Video frames received per simulcast layer (q, h, f).
    pub layers: [u64; 3],
    pub freezes: u32,
    pub frozen_ms: f64,
    pub longest_freeze_ms: f64,
    /// From subscribing to the first frame.
    pub first_audio_ms: Option<f64>,
    pub first_video_ms: Option<f64>,
}

/// The load tester's own health: when it is overloaded its figures are not trusted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TesterHealth {
    pub workers: usize,
    /// How late the workers' timers fired.
    pub loop_lag_ms: Percentiles,
    /// Share of time each worker was busy, from the first join to the end.
    pub busy_percent: Vec<f64>,
    /// Share of time each worker's thread ran on a CPU, and waited for one.
    pub worker_cpu_percent: Vec<f64>,
    pub worker_cpu_wait_percent: Vec<f64>,
    /// The tester process's CPU use, in percent of one core.
    pub cpu_percent: Option<f64>,
    /// The whole machine's CPU use during the run (server, tester and anything else), in
    /// percent of all its cores, and how many cores it has.
    pub machine_cpu_percent: Option<f64>,
    pub machine_cores: Option<usize>,
    /// UDP datagrams the kernel dropped for full receive buffers during the run, on the whole
    /// machine (server included).
    pub udp_receive_buffer_errors: Option<u64>,
    /// Of these, the ones dropped at the tester's own sockets (sampled before the leave).
    pub tester_udp_drops: Option<u64>,
    /// Most bytes waiting in the tester's sockets at one sample (a receive backlog).
    pub max_queued_bytes: Option<u64>,
    /// Per worker: seconds in which it was busy at least 95 % of the time.
    pub saturated_seconds: Vec<u32>,
    /// The server's CPU use in percent of one core (`--server-pid`, same machine only).
    pub server_cpu_percent: Option<f64>,
    /// The tester's traffic while everybody was in (from the end of the ramp to the leave).
    pub hold_rx_pps: Option<f64>,
    pub hold_tx_pps: Option<f64>,
    pub hold_rx_mbps: Option<f64>,
    pub hold_tx_mbps: Option<f64>,
    /// Datagrams the tester could not send (socket buffer full).
    pub send_drops: u64,
    /// Frames publishers skipped because they woke up too late.
    pub late_frames: u64,
    pub overloaded: bool,
    pub reasons: Vec<String>,
}

/// What the server under test (`--server-pid`, same machine) cost while everybody was in: the
/// figures that compare servers. Packets are those the tester received, i.e. what the server
/// forwarded to it (media, RTCP, STUN), counted the same way for every target.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerUsage {
    /// From the end of the ramp to the leave.
    pub hold_secs: f64,
    /// Server CPU time (user + system) during the hold; 10 ms resolution.
    pub cpu_secs: Option<f64>,
    /// Datagrams the tester received during the hold.
    pub rx_packets: u64,
    /// Server CPU-seconds per million packets the tester received during the hold.
    pub cpu_secs_per_million_packets: Option<f64>,
    /// RTP media packets among them (from str0m's ingress stats: no padding, probes, RTCP or
    /// STUN), and the server's CPU per million of those: the fairer figure between servers
    /// whose bandwidth probing differs.
    pub rx_media_packets: u64,
    pub cpu_secs_per_million_media_packets: Option<f64>,
    /// Server resident memory (VmRSS) before the run and at the end of the hold, KiB.
    pub rss_before_kib: Option<u64>,
    pub rss_kib: Option<u64>,
    pub participants: usize,
    /// RSS at the end of the hold / participants, KiB.
    pub rss_per_participant_kib: Option<f64>,
    /// (RSS at the end of the hold − RSS before the run) / participants, KiB.
    pub rss_added_per_participant_kib: Option<f64>,
}

impl ServerUsage {
    pub fn measure(
        hold: std::time::Duration,
        rx_packets: u64,
        rx_media_packets: u64,
        cpu: Option<std::time::Duration>,
        rss_before_kib: Option<u64>,
        rss_kib: Option<u64>,
        participants: usize,
    ) -> Self {
        let round = |x: f64, places: i32| {
            let f = 10f64.powi(places);
            (x * f).round() / f
        };
        let cpu_secs = cpu.map(|c| c.as_secs_f64());
        let per_participant =
            |kib: u64| (participants > 0).then(|| round(kib as f64 / participants as f64, 1));
        Self {
            hold_secs: round(hold.as_secs_f64(), 2),
            cpu_secs: cpu_secs.map(|c| round(c, 2)),
            rx_packets,
            cpu_secs_per_million_packets: cpu_secs
                .filter(|_| rx_packets > 0)
                .map(|c| round(c / rx_packets as f64 * 1e6, 3)),
            rx_media_packets,
            cpu_secs_per_million_media_packets: cpu_secs
                .filter(|_| rx_media_packets > 0)
                .map(|c| round(c / rx_media_packets as f64 * 1e6, 3)),
            rss_before_kib,
            rss_kib,
            participants,
            rss_per_participant_kib: rss_kib.and_then(per_participant),
            rss_added_per_participant_kib: rss_kib
                .zip(rss_before_kib)
                .and_then(|(after, before)| per_participant(after.saturating_sub(before))),
        }
    }
}

/// A subscribed stream that delivered nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissingStream {
    pub receiver: String,
    pub sender: u64,
    pub kind: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Loss {
    pub audio_percent: f64,
    pub audio_expected: u64,
    pub audio_lost: u64,
    pub video_percent: f64,
    pub video_expected: u64,
    pub video_lost: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Freezes {
    pub count: u64,
    pub total_ms: f64,
    pub longest_ms: f64,
    /// Receivers with at least one freeze.
    pub receivers: u64,
    /// Subscribed video streams measured.
    pub streams: u64,
}

/// The whole report, as written to JSON.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub scenario: String,
    pub description: String,
    /// The server under test: `ting` or `janus`.
    #[serde(default)]
    pub target: String,
    pub server: String,
    pub started_unix: u64,
    pub ramp_secs: f64,
    pub duration_secs: f64,
    pub wall_secs: f64,
    pub planned: usize,
    pub joined: usize,
    pub connected: usize,
    pub failed: usize,
    /// To `joined`.
    pub join_ms: Percentiles,
    /// To ICE and DTLS up.
    pub connect_ms: Percentiles,
    /// To the first media frame.
    pub first_media_ms: Percentiles,
    /// Participants that joined again during the run (moved, or their socket dropped).
    #[serde(default)]
    pub rejoined: usize,
    /// The media gap of every rejoin: last frame before, first frame after.
    #[serde(default)]
    pub recovery_ms: Percentiles,
    /// From subscribing to a video to its first frame.
    pub first_video_frame_ms: Percentiles,
    pub audio_latency_ms: Percentiles,
    pub video_latency_ms: Percentiles,
    /// Signalling ping round trips.
    pub ws_rtt_ms: Percentiles,
    pub loss: Loss,
    pub freezes: Freezes,
    /// Received bitrate per receiver (p50 is the median).
    pub recv_kbps: Percentiles,
    /// Receivers that subscribed to something and received nothing.
    pub received_nothing: usize,
    pub received_nothing_list: Vec<String>,
    pub missing_streams: usize,
    pub missing_streams_list: Vec<MissingStream>,
    /// Video frames received per layer.
    pub layers: BTreeMap<String, u64>,
    pub misrouted_frames: u64,
    pub unreadable_frames: u64,
    pub server_errors: u64,
    /// Failures by message.
    pub errors: BTreeMap<String, u64>,
    pub tester: TesterHealth,
    /// The server's CPU per packet and memory per participant (with `--server-pid`).
    #[serde(default)]
    pub server_usage: Option<ServerUsage>,
    pub participants: Vec<ParticipantResult>,
}

/// What the runner knows besides the outcomes.
#[derive(Debug, Clone, Default)]
pub struct RunInfo {
    pub target: String,
    pub server_usage: Option<ServerUsage>,
    pub scenario: String,
    pub description: String,
    pub server: String,
    pub started_unix: u64,
    pub ramp_secs: f64,
    pub duration_secs: f64,
    pub wall_secs: f64,
}

/// An error message with its numbers replaced by `N`, so that alike failures group (digits
/// inside words, as in `str0m`, stay).
fn error_kind(error: &str) -> String {
    let mut kind = String::new();
    let mut in_number = false;
    let mut prev: Option<char> = None;
    for c in error.chars().take(200) {
        if c.is_ascii_digit() && (in_number || !prev.is_some_and(char::is_alphanumeric)) {
            if !in_number {
                kind.push('N');
            }
            in_number = true;
        } else {
            in_number = false;
            kind.push(c);
        }
        prev = Some(c);
    }
    kind
}

fn ms_histogram(values: impl Iterator<Item = f64>) -> Percentiles {
    let mut h = Histogram::default();
    for v in values {
        h.record((v * 1000.0).max(0.0) as u64);
    }
    Percentiles::of_us(&h)
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        (part as f64 * 100.0 / whole as f64 * 1000.0).round() / 1000.0
    }
}

impl Report {
    pub fn build(info: RunInfo, outcomes: Vec<Outcome>, tester: TesterHealth) -> Self {
        let (mut audio_latency, mut video_latency, mut ws_rtt) = (
            Histogram::default(),
            Histogram::default(),
            Histogram::default(),
        );
        for o in &outcomes {
            audio_latency.merge(&o.audio_latency);
            video_latency.merge(&o.video_latency);
            ws_rtt.merge(&o.ws_rtt);
        }
        let results: Vec<ParticipantResult> = outcomes.into_iter().map(|o| o.result).collect();
        let sources = || results.iter().flat_map(|r| r.sources.iter());

        let mut loss = Loss::default();
        let mut freezes = Freezes::default();
        let mut layers = [0u64; 3];
        for s in sources() {
            loss.audio_expected += s.audio_expected;
            loss.audio_lost += s.audio_lost;
            loss.video_expected += s.video_expected;
            loss.video_lost += s.video_lost;
            freezes.count += u64::from(s.freezes);
            freezes.total_ms += s.frozen_ms;
            freezes.longest_ms = freezes.longest_ms.max(s.longest_freeze_ms);
            if s.subscribed_video {
                freezes.streams += 1;
            }
            for (total, n) in layers.iter_mut().zip(s.layers) {
                *total += n;
            }
        }
        loss.audio_percent = percent(loss.audio_lost, loss.audio_expected);
        loss.video_percent = percent(loss.video_lost, loss.video_expected);
        freezes.receivers = results
            .iter()
            .filter(|r| r.sources.iter().any(|s| s.freezes > 0))
            .count() as u64;

        let receivers = || results.iter().filter(|r| r.receives());
        let nothing: Vec<&ParticipantResult> = receivers().filter(|r| r.media_bytes == 0).collect();
        let mut missing = Vec::new();
        for r in &results {
            for s in &r.sources {
                for (subscribed, frames, kind) in [
                    (s.subscribed_audio, s.audio_frames, "audio"),
                    (s.subscribed_video, s.video_frames, "video"),
                ] {
                    if subscribed && frames == 0 {
                        missing.push(MissingStream {
                            receiver: r.identity.clone(),
                            sender: s.sender,
                            kind: kind.to_owned(),
                        });
                    }
                }
            }
        }
        let mut errors = BTreeMap::new();
        for e in results.iter().filter_map(|r| r.error.as_ref()) {
            *errors.entry(error_kind(e)).or_insert(0) += 1;
        }

        Report {
            scenario: info.scenario,
            description: info.description,
            target: info.target,
            server_usage: info.server_usage,
            server: info.server,
            started_unix: info.started_unix,
            ramp_secs: info.ramp_secs,
            duration_secs: info.duration_secs,
            wall_secs: info.wall_secs,
            planned: results.len(),
            joined: results.iter().filter(|r| r.join_ms.is_some()).count(),
            connected: results.iter().filter(|r| r.connect_ms.is_some()).count(),
            failed: results.iter().filter(|r| r.error.is_some()).count(),
            join_ms: ms_histogram(results.iter().filter_map(|r| r.join_ms)),
            connect_ms: ms_histogram(results.iter().filter_map(|r| r.connect_ms)),
            first_media_ms: ms_histogram(results.iter().filter_map(|r| r.first_media_ms)),
            rejoined: results.iter().filter(|r| r.rejoins > 0).count(),
            recovery_ms: ms_histogram(results.iter().flat_map(|r| r.recovery_ms.iter().copied())),
            first_video_frame_ms: ms_histogram(sources().filter_map(|s| s.first_video_ms)),
            audio_latency_ms: Percentiles::of_us(&audio_latency),
            video_latency_ms: Percentiles::of_us(&video_latency),
            ws_rtt_ms: Percentiles::of_us(&ws_rtt),
            loss,
            freezes,
            recv_kbps: ms_histogram(receivers().map(|r| r.recv_kbps)),
            received_nothing: nothing.len(),
            received_nothing_list: nothing
                .iter()
                .take(LIST_LIMIT)
                .map(|r| r.identity.clone())
                .collect(),
            missing_streams: missing.len(),
            missing_streams_list: missing.into_iter().take(LIST_LIMIT).collect(),
            layers: ["q", "h", "f"]
                .iter()
                .zip(layers)
                .map(|(k, v)| ((*k).to_owned(), v))
                .collect(),
            misrouted_frames: results.iter().map(|r| r.misrouted).sum(),
            unreadable_frames: results.iter().map(|r| r.unreadable).sum(),
            server_errors: results.iter().map(|r| r.server_error_count).sum(),
            errors,
            tester,
            participants: results,
        }
    }

    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        let json = serde_json::to_string_pretty(self)?;
        std::fs::write(path, json + "\n")
            .with_context(|| format!("writing the report to {}", path.display()))
    }

    /// A readable summary of the figures.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let p = |x: &Percentiles| {
            if x.count == 0 {
                "-".to_owned()
            } else {
                format!(
                    "p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
                    x.p50, x.p99, x.max
                )
            }
        };
        let _ = writeln!(
            s,
            "Ting load test: {} against {} {}",
            self.scenario,
            if self.target.is_empty() {
                "ting"
            } else {
                &self.target
            },
            self.server
        );
        if !self.description.is_empty() {
            let _ = writeln!(s, "  {}", self.description);
        }
        let _ = writeln!(
            s,
            "  ramp {:.1} s, hold {:.1} s, wall time {:.1} s",
            self.ramp_secs, self.duration_secs, self.wall_secs
        );
        let row = |s: &mut String, label: &str, value: String| {
            let _ = writeln!(s, "{label:<20}{value}");
        };
        row(
            &mut s,
            "participants",
            format!(
                "{} planned, {} joined, {} media connected, {} failed",
                self.planned, self.joined, self.connected, self.failed
            ),
        );
        row(&mut s, "join (joined)", p(&self.join_ms));
        row(&mut s, "join (connected)", p(&self.connect_ms));
        row(&mut s, "join (first media)", p(&self.first_media_ms));
        if self.rejoined > 0 {
            let recovered = format!(
                "{} participants rejoined; media again after {}",
                self.rejoined,
                p(&self.recovery_ms)
            );
            row(&mut s, "rejoins", recovered);
        }
        row(&mut s, "video after subscr.", p(&self.first_video_frame_ms));
        row(&mut s, "latency audio", p(&self.audio_latency_ms));
        row(&mut s, "latency video", p(&self.video_latency_ms));
        row(&mut s, "signalling rtt", p(&self.ws_rtt_ms));
        row(
            &mut s,
            "loss",
            format!(
                "audio {:.3} % ({} of {} frames), video {:.3} % ({} of {} frames)",
                self.loss.audio_percent,
                self.loss.audio_lost,
                self.loss.audio_expected,
                self.loss.video_percent,
                self.loss.video_lost,
                self.loss.video_expected
            ),
        );
        row(
            &mut s,
            "freezes",
            format!(
                "{} (> 500 ms) in {} of {} video streams, {} receivers; total {:.1} s, longest {:.0} ms",
                self.freezes.count,
                self.sources_with_freezes(),
                self.freezes.streams,
                self.freezes.receivers,
                self.freezes.total_ms / 1000.0,
                self.freezes.longest_ms
            ),
        );
        row(
            &mut s,
            "received bitrate",
            if self.recv_kbps.count == 0 {
                "-".to_owned()
            } else {
                format!(
                    "median {:.0} kbit/s per receiver (p90 {:.0}, max {:.0})",
                    self.recv_kbps.p50, self.recv_kbps.p90, self.recv_kbps.max
                )
            },
        );
        let total_layers: u64 = self.layers.values().sum();
        let share = |k: &str| percent(self.layers.get(k).copied().unwrap_or(0), total_layers);
        row(
            &mut s,
            "video layers",
            format!(
                "q {:.0} %  h {:.0} %  f {:.0} %",
                share("q"),
                share("h"),
                share("f")
            ),
        );
        row(
            &mut s,
            "received nothing",
            format!("{} receivers", self.received_nothing),
        );
        row(
            &mut s,
            "missing streams",
            format!(
                "{} subscribed streams without a frame",
                self.missing_streams
            ),
        );
        if self.misrouted_frames + self.unreadable_frames + self.server_errors > 0 {
            row(
                &mut s,
                "anomalies",
                format!(
                    "{} misrouted frames, {} unreadable frames, {} server errors",
                    self.misrouted_frames, self.unreadable_frames, self.server_errors
                ),
            );
        }
        for (error, n) in self.errors.iter().take(10) {
            row(&mut s, "failure", format!("{n} x {error}"));
        }
        let t = &self.tester;
        let list = |v: &[f64]| {
            v.iter()
                .map(|b| format!("{b:.0} %"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let busy = list(&t.busy_percent);
        row(
            &mut s,
            "tester",
            format!(
                "{} worker(s), busy {busy}; cpu {}; loop lag p50 {:.1} ms p99 {:.1} ms max {:.1} ms",
                t.workers,
                t.cpu_percent
                    .map_or_else(|| "?".to_owned(), |c| format!("{c:.0} %")),
                t.loop_lag_ms.p50,
                t.loop_lag_ms.p99,
                t.loop_lag_ms.max
            ),
        );
        if !t.worker_cpu_wait_percent.is_empty() {
            row(
                &mut s,
                "tester threads",
                format!(
                    "on cpu {}; waiting for a cpu {}; saturated seconds {}",
                    list(&t.worker_cpu_percent),
                    list(&t.worker_cpu_wait_percent),
                    t.saturated_seconds
                        .iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        }
        if let (Some(rx), Some(tx), Some(rx_mbps), Some(tx_mbps)) =
            (t.hold_rx_pps, t.hold_tx_pps, t.hold_rx_mbps, t.hold_tx_mbps)
        {
            row(
                &mut s,
                "tester traffic",
                format!(
                    "while all are in: rx {rx:.0} pkt/s {rx_mbps:.1} Mbit/s, tx {tx:.0} pkt/s {tx_mbps:.1} Mbit/s"
                ),
            );
        }
        if let Some(cpu) = t.server_cpu_percent {
            row(&mut s, "server", format!("cpu {cpu:.0} % (of one core)"));
        }
        if let Some(u) = &self.server_usage {
            let or_q = |x: Option<f64>, places: usize| {
                x.map_or_else(|| "?".to_owned(), |v| format!("{v:.places$}"))
            };
            row(
                &mut s,
                "server per packet",
                format!(
                    "{} cpu-s per million packets received by the tester during the hold \
                     ({} cpu-s, {} packets, {:.0} s)",
                    or_q(u.cpu_secs_per_million_packets, 3),
                    or_q(u.cpu_secs, 2),
                    u.rx_packets,
                    u.hold_secs
                ),
            );
            row(
                &mut s,
                "server per media",
                format!(
                    "{} cpu-s per million RTP media packets received ({} of them; no padding, \
                     probes, RTCP or STUN)",
                    or_q(u.cpu_secs_per_million_media_packets, 3),
                    u.rx_media_packets
                ),
            );
            row(
                &mut s,
                "server memory",
                format!(
                    "RSS {} MiB at the end of the hold ({} MiB before the run): {} KiB per \
                     participant, {} KiB added per participant ({} participants)",
                    or_q(u.rss_kib.map(|k| k as f64 / 1024.0), 1),
                    or_q(u.rss_before_kib.map(|k| k as f64 / 1024.0), 1),
                    or_q(u.rss_per_participant_kib, 0),
                    or_q(u.rss_added_per_participant_kib, 0),
                    u.participants
                ),
            );
        }
        if let (Some(busy), Some(cores)) = (t.machine_cpu_percent, t.machine_cores) {
            row(
                &mut s,
                "machine",
                format!("cpu {busy:.0} % of {cores} cores (server, tester and anything else)"),
            );
        }
        if let Some(errors) = t.udp_receive_buffer_errors {
            let own = t.tester_udp_drops.map_or_else(
                || "?".to_owned(),
                |d| format!("{d} at the tester's sockets"),
            );
            row(
                &mut s,
                "udp drops",
                format!(
                    "{errors} datagrams dropped by full receive buffers on the machine, {own} \
                     (the rest: the server or others); tester backlog max {} KiB",
                    t.max_queued_bytes.map_or(0, |b| b / 1024)
                ),
            );
        }
        if t.overloaded {
            let _ = writeln!(
                s,
                "WARNING: the load tester was overloaded ({}): its figures are not trusted.",
                t.reasons.join("; ")
            );
        } else {
            let _ = writeln!(s, "tester not overloaded: the figures above are trusted");
        }
        s
    }

    fn sources_with_freezes(&self) -> usize {
        self.participants
            .iter()
            .flat_map(|r| r.sources.iter())
            .filter(|s| s.freezes > 0)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receiver(name: &str, sources: Vec<SourceResult>, bytes: u64) -> Outcome {
        let mut h = Histogram::default();
        h.record(2000);
        Outcome {
            result: ParticipantResult {
                identity: name.into(),
                join_ms: Some(100.0),
                connect_ms: Some(150.0),
                media_bytes: bytes,
                recv_kbps: 800.0,
                sources,
                ..Default::default()
            },
            audio_latency: h.clone(),
            video_latency: h,
            ws_rtt: Histogram::default(),
        }
    }

    #[test]
    fn reports_aggregate_and_round_trip_through_json() {
        let good = SourceResult {
            sender: 1,
            subscribed_audio: true,
            subscribed_video: true,
            audio_frames: 99,
            audio_expected: 100,
            audio_lost: 1,
            video_frames: 300,
            video_expected: 300,
            layers: [0, 300, 0],
            freezes: 1,
            frozen_ms: 700.0,
            longest_freeze_ms: 700.0,
            first_video_ms: Some(80.0),
            ..Default::default()
        };
        let silent = SourceResult {
            sender: 1,
            subscribed_audio: true,
            subscribed_video: true,
            ..Default::default()
        };
        let mut failed = receiver("c", vec![], 0);
        failed.result.error = Some("join refused: invalid_token: no".into());
        failed.result.join_ms = None;
        failed.result.connect_ms = None;
        let outcomes = vec![
            receiver("a", vec![good], 5000),
            receiver("b", vec![silent], 0),
            failed,
        ];
        let tester = TesterHealth {
            workers: 1,
            overloaded: true,
            reasons: vec!["loop lag p99 80 ms > 50 ms".into()],
            ..Default::default()
        };
        let info = RunInfo {
            target: "janus".into(),
            server_usage: Some(ServerUsage::measure(
                std::time::Duration::from_secs(30),
                2_000_000,
                1_500_000,
                Some(std::time::Duration::from_millis(15_000)),
                Some(10_240),
                Some(30_720),
                200,
            )),
            ..RunInfo::default()
        };
        let report = Report::build(info, outcomes, tester);
        let usage = report.server_usage.clone().unwrap();
        assert_eq!(usage.cpu_secs_per_million_packets, Some(7.5));
        assert_eq!(usage.cpu_secs_per_million_media_packets, Some(10.0));
        assert_eq!(usage.rss_per_participant_kib, Some(153.6));
        assert_eq!(usage.rss_added_per_participant_kib, Some(102.4));
        assert_eq!((report.planned, report.joined, report.failed), (3, 2, 1));
        assert_eq!(report.loss.audio_percent, 1.0);
        assert_eq!(report.freezes.count, 1);
        assert_eq!(report.received_nothing, 1);
        assert_eq!(report.received_nothing_list, ["b"]);
        assert_eq!(report.missing_streams, 2);
        assert_eq!(report.layers["h"], 300);
        assert_eq!(report.audio_latency_ms.p50, 2.0);
        assert_eq!(report.errors.values().sum::<u64>(), 1);
        assert_eq!(
            error_kind("offer: 65537 bytes, 52 m-lines"),
            "offer: N bytes, N m-lines"
        );
        assert_eq!(error_kind("str0m output: p57"), "str0m output: p57");
        let summary = report.summary();
        assert!(summary.contains("3 planned, 2 joined"), "{summary}");
        assert!(summary.contains("not trusted"), "{summary}");
        assert!(summary.contains("against janus"), "{summary}");
        assert!(
            summary.contains("7.500 cpu-s per million packets"),
            "{summary}"
        );
        assert!(summary.contains("154 KiB per participant"), "{summary}");
        let json = serde_json::to_string(&report).unwrap();
        let back: Report = serde_json::from_str(&json).unwrap();
        assert_eq!(back, report);
    }
}
