//! Runs a scenario: mints the tokens, lays out the timeline (ramp, hold, leave), drives the
//! participants on a few worker threads — each a single-threaded tokio runtime that owns a share
//! of the participants as tasks — prints progress, and builds the report.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail, ensure};

use crate::health::{
    self, MAX_BUSY_PERCENT, MAX_CPU_WAIT_PERCENT, MAX_LAG_P99_MS, MAX_SATURATED_SHARE,
    SATURATED_PERCENT, UdpSockets, WorkerHealth,
};
use crate::janus;
use crate::media::RunClock;
use crate::participant::{self, Outcome, Shared};
use crate::progress::{Progress, Snapshot};
use crate::report::{ParticipantResult, Report, RunInfo, ServerUsage, TesterHealth};
use crate::scenario::{ParticipantPlan, Scenario};
use crate::signal::ServerUrl;
use crate::stats::{Histogram, Percentiles};
use crate::tokens::TokenMinter;

/// Most worker threads.
pub const MAX_WORKERS: usize = 64;
/// File descriptors each participant needs (WebSocket, UDP socket; against Janus a second UDP
/// socket for the subscriber connection) plus a reserve.
const FDS_PER_PARTICIPANT: u64 = 3;
const FD_RESERVE: u64 = 64;
/// Time for setting up before the first join.
const STARTUP: Duration = Duration::from_millis(200);
/// After the leave time, participants get this long to say goodbye before they are cut off.
const LEAVE_GRACE: Duration = Duration::from_secs(10);

/// The server under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Target {
    /// Ting: join tokens and Ting's signalling (`--server http://HOST:PORT`).
    #[default]
    Ting,
    /// Janus' VideoRoom plugin over its WebSocket API (`--server ws://HOST:PORT`).
    Janus,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Ting => "ting",
            Target::Janus => "janus",
        }
    }
}

/// How to run a scenario.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub scenario: Scenario,
    pub target: Target,
    /// `http://host:port` of the Ting server, or `ws://host:port` of Janus.
    pub server: String,
    /// The server's token secret (Ting only).
    pub secret: Vec<u8>,
    /// Worker threads.
    pub workers: usize,
    /// Address the participants' media sockets bind to.
    pub local_ip: IpAddr,
    /// Print a progress line to stderr every second.
    pub progress: bool,
    /// Longest wait for `joined`.
    pub join_timeout: Duration,
    /// The server's process id, when it runs on this machine: its CPU use goes in the report.
    pub server_pid: Option<u32>,
    /// Other nodes of the same cluster (`http://host:port`): a participant whose node is gone
    /// rejoins through them when `server` does not answer either.
    pub fallback_servers: Vec<String>,
}

impl RunConfig {
    pub fn new(scenario: Scenario, server: impl Into<String>, secret: Vec<u8>) -> Self {
        Self {
            scenario,
            target: Target::Ting,
            server: server.into(),
            secret,
            workers: 1,
            local_ip: IpAddr::from([127, 0, 0, 1]),
            progress: false,
            join_timeout: Duration::from_secs(15),
            server_pid: None,
            fallback_servers: Vec::new(),
        }
    }
}

/// What a worker hands back.
struct WorkerResult {
    outcomes: Vec<(usize, Outcome)>,
    health: WorkerHealth,
}

/// Runs the scenario to the end (blocking; it starts its own threads and runtimes) and returns
/// the report.
pub fn run(config: &RunConfig) -> anyhow::Result<Report> {
    let scenario = &config.scenario;
    let server = match config.target {
        Target::Ting => ServerUrl::parse(&config.server)?,
        Target::Janus => janus::server_url(&config.server)?,
    };
    ensure!(
        (1..=MAX_WORKERS).contains(&config.workers),
        "workers must be 1..={MAX_WORKERS}"
    );
    let plans = scenario.plan()?;
    check_open_files(plans.len())?;

    let ramp = scenario.ramp_duration();
    let hold = Duration::from_secs_f64(scenario.duration_secs);
    let tokens = match config.target {
        Target::Ting => {
            let ttl = ramp + hold + Duration::from_secs(3600);
            let minter = TokenMinter::new(&config.secret, ttl)?;
            plans
                .iter()
                .map(|p| minter.mint(p))
                .collect::<anyhow::Result<Vec<_>>>()?
        }
        // Janus rooms are open: no tokens.
        Target::Janus => vec![String::new(); plans.len()],
    };

    let fallbacks = config
        .fallback_servers
        .iter()
        .map(|s| ServerUrl::parse(s).map(|u| u.ws))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let base = Instant::now() + STARTUP;
    let leave_at = base + ramp + hold;
    let hard_stop = leave_at + LEAVE_GRACE;
    let progress = Arc::new(Progress::default());
    let shared = Arc::new(Shared {
        clock: RunClock::new(base),
        server: server.clone(),
        fallbacks,
        local_ip: config.local_ip,
        leave_at,
        hard_stop,
        join_timeout: config.join_timeout,
        keyframe_interval: Duration::from_secs_f64(scenario.keyframe_interval_secs),
        progress: progress.clone(),
        ports: Mutex::new(HashSet::new()),
    });

    let cpu_before = health::process_cpu();
    let server_cpu_before = config.server_pid.and_then(health::pid_cpu);
    let server_rss_before = config.server_pid.and_then(health::pid_rss_kib);
    let udp_before = health::udp_receive_buffer_errors();
    let machine_before = health::machine_cpu();
    let started_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let wall_start = Instant::now();

    // Participant i goes to worker i % workers, so every worker ramps at the same pace.
    let mut shares: Vec<Vec<(ParticipantPlan, String)>> = vec![Vec::new(); config.workers];
    for (plan, token) in plans.iter().cloned().zip(tokens) {
        shares[plan.index % config.workers].push((plan, token));
    }
    let mut threads = Vec::new();
    for (w, share) in shares.into_iter().enumerate() {
        let shared = shared.clone();
        let target = config.target;
        let thread = std::thread::Builder::new()
            .name(format!("loadtest-{w}"))
            .spawn(move || worker(share, shared, target))
            .context("starting a worker thread")?;
        threads.push(thread);
    }

    let planned = plans.len();
    let mut before = progress.snapshot();
    let mut last = Instant::now();
    // The tester's own sockets, sampled while everybody is still there.
    let mut own_udp: Option<UdpSockets> = None;
    let mut max_queued = 0;
    // Traffic while everybody is in: from the end of the ramp to the leave.
    let hold_start = base + ramp;
    let mut hold_begin: Option<(Instant, Snapshot)> = None;
    let mut hold_end: Option<(Instant, Snapshot)> = None;
    // The server's CPU time at both ends of the hold, and its memory at the end.
    let server_cpu_at = || config.server_pid.and_then(health::pid_cpu);
    let mut server_hold: (Option<Duration>, Option<Duration>, Option<u64>) = (None, None, None);
    while !threads.iter().all(|t| t.is_finished()) {
        std::thread::sleep(Duration::from_millis(100));
        let now = Instant::now();
        if hold_begin.is_none() && now >= hold_start {
            hold_begin = Some((now, progress.peek()));
            server_hold.0 = server_cpu_at();
        }
        if hold_end.is_none() && now >= leave_at {
            hold_end = Some((now, progress.peek()));
            server_hold.1 = server_cpu_at();
            server_hold.2 = config.server_pid.and_then(health::pid_rss_kib);
        }
        if last.elapsed() >= Duration::from_secs(1) {
            if Instant::now() < leave_at {
                let ports = shared.ports.lock().map(|p| p.clone()).unwrap_or_default();
                if let Some(sample) = health::udp_sockets(&ports) {
                    max_queued = max_queued.max(sample.queued_bytes);
                    own_udp = Some(sample);
                }
            }
            let now = progress.snapshot();
            if config.progress {
                eprintln!(
                    "{}",
                    now.line(&before, wall_start.elapsed(), last.elapsed(), planned)
                );
            }
            before = now;
            last = Instant::now();
        }
    }

    let mut outcomes: Vec<(usize, Outcome)> = Vec::with_capacity(planned);
    let mut workers = Vec::new();
    for thread in threads {
        match thread.join() {
            Ok(Ok(result)) => {
                outcomes.extend(result.outcomes);
                workers.push(result.health);
            }
            Ok(Err(e)) => return Err(e.context("a worker failed")),
            Err(_) => bail!("a worker thread panicked"),
        }
    }
    outcomes.sort_by_key(|(i, _)| *i);
    let wall = wall_start.elapsed();

    let results = || outcomes.iter().map(|(_, o)| &o.result);
    let send_drops = results().map(|r| r.tx_dropped).sum();
    let late_frames = results().map(|r| r.late_frames).sum();
    let cpu_percent = match (cpu_before, health::process_cpu()) {
        (Some(a), Some(b)) if wall > Duration::ZERO => {
            Some(((b.saturating_sub(a)).as_secs_f64() / wall.as_secs_f64() * 1000.0).round() / 10.0)
        }
        _ => None,
    };
    let udp_errors = match (udp_before, health::udp_receive_buffer_errors()) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    let server_cpu_percent = match (
        server_cpu_before,
        config.server_pid.and_then(health::pid_cpu),
    ) {
        (Some(a), Some(b)) if wall > Duration::ZERO => {
            Some(((b.saturating_sub(a)).as_secs_f64() / wall.as_secs_f64() * 1000.0).round() / 10.0)
        }
        _ => None,
    };
    let mut tester = assess(
        &workers,
        cpu_percent,
        udp_errors,
        own_udp.map(|u| u.drops),
        send_drops,
        late_frames,
    );
    tester.max_queued_bytes = own_udp.map(|_| max_queued);
    tester.server_cpu_percent = server_cpu_percent;
    let mut server_usage = None;
    if let (Some((t0, a)), Some((t1, b))) = (hold_begin, hold_end)
        && config.server_pid.is_some()
    {
        server_usage = Some(ServerUsage::measure(
            t1.duration_since(t0),
            b.rx_packets.saturating_sub(a.rx_packets),
            b.rx_media_packets.saturating_sub(a.rx_media_packets),
            server_hold
                .0
                .zip(server_hold.1)
                .map(|(x, y)| y.saturating_sub(x)),
            server_rss_before,
            server_hold.2,
            planned,
        ));
    }
    if let (Some((t0, a)), Some((t1, b))) = (hold_begin, hold_end) {
        let secs = t1.duration_since(t0).as_secs_f64();
        if secs > 0.5 {
            let rate = |x: u64, y: u64| (y.saturating_sub(x) as f64 / secs).round();
            tester.hold_rx_pps = Some(rate(a.rx_packets, b.rx_packets));
            tester.hold_tx_pps = Some(rate(a.tx_packets, b.tx_packets));
            tester.hold_rx_mbps = Some((rate(a.rx_bytes, b.rx_bytes) * 8.0 / 1e4).round() / 100.0);
            tester.hold_tx_mbps = Some((rate(a.tx_bytes, b.tx_bytes) * 8.0 / 1e4).round() / 100.0);
        }
    }
    if let (Some((busy0, total0, cores)), Some((busy1, total1, _))) =
        (machine_before, health::machine_cpu())
        && total1 > total0
    {
        let share = (busy1 - busy0) as f64 / (total1 - total0) as f64;
        tester.machine_cpu_percent = Some((share * 1000.0).round() / 10.0);
        tester.machine_cores = Some(cores);
    }
    let info = RunInfo {
        target: config.target.name().to_owned(),
        server_usage,
        scenario: scenario.name.clone(),
        description: scenario.description.clone(),
        server: server.http.clone(),
        started_unix,
        ramp_secs: ramp.as_secs_f64(),
        duration_secs: hold.as_secs_f64(),
        wall_secs: (wall.as_secs_f64() * 10.0).round() / 10.0,
    };
    Ok(Report::build(
        info,
        outcomes.into_iter().map(|(_, o)| o).collect(),
        tester,
    ))
}

/// One worker thread: a single-threaded runtime, one task per participant, and a monitor.
fn worker(
    share: Vec<(ParticipantPlan, String)>,
    shared: Arc<Shared>,
    target: Target,
) -> anyhow::Result<WorkerResult> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a worker runtime")?;
    runtime.block_on(async move {
        let monitor = tokio::spawn(health::monitor(
            shared.progress.clone(),
            shared.clock.base(),
            shared.leave_at,
        ));
        let mut tasks = Vec::with_capacity(share.len());
        for (plan, token) in share {
            let index = plan.index;
            let planned = ParticipantResult::planned(&plan);
            let task = match target {
                Target::Ting => tokio::spawn(participant::run(plan, token, shared.clone())),
                Target::Janus => tokio::spawn(janus::participant::run(plan, shared.clone())),
            };
            tasks.push((index, planned, task));
        }
        let mut outcomes = Vec::with_capacity(tasks.len());
        for (index, planned, task) in tasks {
            let outcome = match task.await {
                Ok(o) => o,
                Err(e) => Outcome {
                    result: ParticipantResult {
                        error: Some(format!("participant task failed: {e}")),
                        ..planned
                    },
                    ..Default::default()
                },
            };
            outcomes.push((index, outcome));
        }
        let health = monitor.await.unwrap_or_default();
        Ok(WorkerResult { outcomes, health })
    })
}

/// Fails early when the open-file limit cannot hold the participants' sockets.
fn check_open_files(participants: usize) -> anyhow::Result<()> {
    let needed = participants as u64 * FDS_PER_PARTICIPANT + FD_RESERVE;
    if let Some(limit) = health::open_file_limit()
        && limit < needed
    {
        bail!(
            "{participants} participants need about {needed} open files, the limit is {limit}: \
             raise it first (`ulimit -n {needed}`)"
        );
    }
    Ok(())
}

/// Decides whether the tester was overloaded.
fn assess(
    workers: &[WorkerHealth],
    cpu_percent: Option<f64>,
    udp_errors: Option<u64>,
    own_udp_drops: Option<u64>,
    send_drops: u64,
    late_frames: u64,
) -> TesterHealth {
    let mut lag = Histogram::default();
    for w in workers {
        lag.merge(&w.lag);
    }
    let loop_lag_ms = Percentiles::of_us(&lag);
    let busy_percent: Vec<f64> = workers
        .iter()
        .map(|w| (w.busy_percent * 10.0).round() / 10.0)
        .collect();
    let mut reasons = Vec::new();
    if loop_lag_ms.p99 > MAX_LAG_P99_MS {
        reasons.push(format!(
            "loop lag p99 {:.0} ms > {MAX_LAG_P99_MS:.0} ms",
            loop_lag_ms.p99
        ));
    }
    for (i, b) in busy_percent.iter().enumerate() {
        if *b > MAX_BUSY_PERCENT {
            reasons.push(format!(
                "worker {i} busy {b:.0} % > {MAX_BUSY_PERCENT:.0} %"
            ));
        }
    }
    for (i, w) in workers.iter().enumerate() {
        if w.seconds > 0
            && f64::from(w.saturated_seconds) > f64::from(w.seconds) * MAX_SATURATED_SHARE
        {
            reasons.push(format!(
                "worker {i} saturated (busy >= {SATURATED_PERCENT:.0} %) in {} of {} seconds",
                w.saturated_seconds, w.seconds
            ));
        }
    }
    if let Some(drops) = own_udp_drops.filter(|d| *d > 0) {
        reasons.push(format!(
            "{drops} datagrams dropped in the tester's own full socket buffers"
        ));
    }
    let worker_cpu_percent: Vec<f64> = workers.iter().filter_map(|w| w.cpu_percent).collect();
    let worker_cpu_wait_percent: Vec<f64> =
        workers.iter().filter_map(|w| w.cpu_wait_percent).collect();
    for (i, wait) in worker_cpu_wait_percent.iter().enumerate() {
        if *wait > MAX_CPU_WAIT_PERCENT {
            reasons.push(format!(
                "worker {i} waited for a cpu {wait:.0} % of the time (its core is shared)"
            ));
        }
    }
    if send_drops > 0 {
        reasons.push(format!("{send_drops} datagrams could not be sent"));
    }
    TesterHealth {
        workers: workers.len(),
        loop_lag_ms,
        busy_percent,
        worker_cpu_percent,
        worker_cpu_wait_percent,
        cpu_percent,
        udp_receive_buffer_errors: udp_errors,
        tester_udp_drops: own_udp_drops,
        max_queued_bytes: None,
        server_cpu_percent: None,
        hold_rx_pps: None,
        hold_tx_pps: None,
        hold_rx_mbps: None,
        hold_tx_mbps: None,
        saturated_seconds: workers.iter().map(|w| w.saturated_seconds).collect(),
        machine_cpu_percent: None,
        machine_cores: None,
        send_drops,
        late_frames,
        overloaded: !reasons.is_empty(),
        reasons,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overload_is_lag_or_saturation() {
        let mut calm = WorkerHealth::default();
        for _ in 0..100 {
            calm.lag.record(1000);
        }
        calm.busy_percent = 40.0;
        let ok = assess(&[calm.clone()], Some(40.0), Some(0), Some(0), 0, 0);
        assert!(!ok.overloaded, "{:?}", ok.reasons);

        let mut laggy = calm.clone();
        for _ in 0..10 {
            laggy.lag.record(120_000);
        }
        let lagged = assess(&[calm.clone(), laggy], None, None, None, 0, 0);
        assert!(lagged.overloaded);
        assert!(
            lagged.reasons[0].contains("loop lag p99"),
            "{:?}",
            lagged.reasons
        );

        let mut busy = calm.clone();
        busy.busy_percent = 97.0;
        let saturated = assess(&[busy], None, None, None, 0, 0);
        assert!(saturated.overloaded);
        assert!(saturated.reasons[0].contains("worker 0 busy 97 %"));

        let mut crowded = calm;
        crowded.cpu_percent = Some(30.0);
        crowded.cpu_wait_percent = Some(35.0);
        let shared = assess(&[crowded], None, None, None, 0, 0);
        assert!(shared.overloaded);
        assert!(
            shared.reasons[0].contains("waited for a cpu 35 %"),
            "{:?}",
            shared.reasons
        );

        let mut spiky = WorkerHealth {
            seconds: 30,
            saturated_seconds: 5,
            ..WorkerHealth::default()
        };
        let saturated = assess(&[spiky.clone()], None, None, Some(12), 0, 0);
        assert!(
            saturated.reasons[0].contains("in 5 of 30 seconds"),
            "{:?}",
            saturated.reasons
        );
        assert!(saturated.reasons[1].contains("12 datagrams dropped"));
        spiky.saturated_seconds = 2;
        assert!(!assess(&[spiky], None, None, Some(0), 0, 0).overloaded);
    }

    #[test]
    fn too_few_open_files_is_a_clear_error() {
        if let Some(limit) = health::open_file_limit() {
            let e = check_open_files(limit as usize).unwrap_err();
            assert!(format!("{e}").contains("ulimit -n"));
        }
        assert!(check_open_files(1).is_ok());
    }
}
