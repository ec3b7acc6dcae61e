//! The load tester watching itself: how late each worker's timers fire, how busy each worker
//! is, the process's CPU time, the machine's UDP drops, the open-file limit. An overloaded tester
//! measures its own queueing, not the server's: then the report says its figures are not trusted.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::progress::Progress;
use crate::stats::Histogram;

/// How often the lag probe wakes up.
const PROBE_INTERVAL: Duration = Duration::from_millis(10);
/// Loop lag p99 above this means the tester is overloaded.
pub const MAX_LAG_P99_MS: f64 = 50.0;
/// A worker busy more than this share of the time is saturated.
pub const MAX_BUSY_PERCENT: f64 = 90.0;
/// A second in which a worker was busy at least this share of the time is a saturated second.
pub const SATURATED_PERCENT: f64 = 95.0;
/// A worker saturated in more than this share of the seconds was overloaded.
pub const MAX_SATURATED_SHARE: f64 = 0.1;
/// A worker that waited for a CPU more than this share of the time shared its core with other
/// work: its timings include that wait.
pub const MAX_CPU_WAIT_PERCENT: f64 = 20.0;

/// What one worker measured about itself.
#[derive(Debug, Clone, Default)]
pub struct WorkerHealth {
    pub lag: Histogram,
    /// Share of time the worker's runtime was busy, in percent, from `from` to the end.
    pub busy_percent: f64,
    /// Share of time the worker's thread ran on a CPU, and waited for one (runnable but another
    /// thread or process had the core), in percent (`/proc/thread-self/schedstat`).
    pub cpu_percent: Option<f64>,
    pub cpu_wait_percent: Option<f64>,
    /// Seconds measured, and seconds in which the worker was busy at least
    /// [`SATURATED_PERCENT`] of the time.
    pub seconds: u32,
    pub saturated_seconds: u32,
}

/// Runs on a worker's runtime from now until `until`: a timer every 10 ms whose lateness is the
/// loop lag, and the runtime's busy time. Lag counts from `from` on.
pub async fn monitor(progress: Arc<Progress>, from: Instant, until: Instant) -> WorkerHealth {
    let metrics = tokio::runtime::Handle::current().metrics();
    let busy = || {
        (0..metrics.num_workers())
            .map(|w| metrics.worker_total_busy_duration(w))
            .sum::<Duration>()
    };
    let mut lag = Histogram::default();
    let mut start: Option<(Instant, Duration)> = None;
    let mut sched_start = None;
    let (mut seconds, mut saturated_seconds) = (0, 0);
    let mut second: Option<(Instant, Duration)> = None;
    loop {
        let target = Instant::now() + PROBE_INTERVAL;
        if target > until {
            break;
        }
        tokio::time::sleep_until(target.into()).await;
        let now = Instant::now();
        if now < from {
            continue;
        }
        let late = now.saturating_duration_since(target).as_micros() as u64;
        lag.record(late);
        progress.note_lag(late);
        if start.is_none() {
            start = Some((now, busy()));
            sched_start = thread_schedstat();
        }
        match second {
            Some((at, before)) if now.duration_since(at) >= Duration::from_secs(1) => {
                let busy_now = busy();
                let share = busy_now.saturating_sub(before).as_secs_f64()
                    / now.duration_since(at).as_secs_f64()
                    * 100.0;
                seconds += 1;
                if share >= SATURATED_PERCENT {
                    saturated_seconds += 1;
                }
                second = Some((now, busy_now));
            }
            Some(_) => {}
            None => second = Some((now, busy())),
        }
    }
    let wall = start.map_or(0.0, |(at, _)| at.elapsed().as_secs_f64());
    let share = |d: Duration| {
        if wall <= 0.0 {
            0.0
        } else {
            (d.as_secs_f64() / wall * 1000.0).round() / 10.0
        }
    };
    let busy_percent = start.map_or(0.0, |(_, before)| {
        share(busy().saturating_sub(before)).min(100.0)
    });
    let sched = match (sched_start, thread_schedstat()) {
        (Some((cpu0, wait0)), Some((cpu1, wait1))) => Some((
            share(Duration::from_nanos(cpu1.saturating_sub(cpu0))),
            share(Duration::from_nanos(wait1.saturating_sub(wait0))),
        )),
        _ => None,
    };
    WorkerHealth {
        lag,
        busy_percent,
        cpu_percent: sched.map(|s| s.0),
        cpu_wait_percent: sched.map(|s| s.1),
        seconds,
        saturated_seconds,
    }
}

/// The tester's own UDP sockets as the kernel sees them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UdpSockets {
    pub sockets: usize,
    /// Datagrams dropped because a socket's receive buffer was full (since it was opened).
    pub drops: u64,
    /// Bytes waiting to be read now.
    pub queued_bytes: u64,
}

/// Sums `/proc/net/udp` and `/proc/net/udp6` over the sockets bound to `ports`.
pub fn udp_sockets(ports: &HashSet<u16>) -> Option<UdpSockets> {
    let mut total = UdpSockets::default();
    let mut any = false;
    for file in ["/proc/net/udp", "/proc/net/udp6"] {
        if let Ok(table) = std::fs::read_to_string(file) {
            any = true;
            add_udp_table(&table, ports, &mut total);
        }
    }
    any.then_some(total)
}

fn add_udp_table(table: &str, ports: &HashSet<u16>, total: &mut UdpSockets) {
    for line in table.lines().skip(1) {
        // sl local rem st tx_queue:rx_queue tr:tm retrnsmt uid timeout inode ref pointer drops
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(queues), Some(drops)) = (f.get(1), f.get(4), f.get(12)) else {
            continue;
        };
        let port = local
            .rsplit_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
        if !port.is_some_and(|p| ports.contains(&p)) {
            continue;
        }
        total.sockets += 1;
        total.drops += drops.parse::<u64>().unwrap_or(0);
        total.queued_bytes += queues
            .split_once(':')
            .and_then(|(_, rx)| u64::from_str_radix(rx, 16).ok())
            .unwrap_or(0);
    }
}

/// Time the calling thread ran on a CPU and waited for one, in nanoseconds.
pub fn thread_schedstat() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let mut fields = stat.split_whitespace().map(|f| f.parse::<u64>().ok());
    Some((fields.next()??, fields.next()??))
}

/// CPU time (user + system) of this process so far, from `/proc/self/stat`.
pub fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    parse_cpu(&stat)
}

/// CPU time (user + system) of another process so far (the server, when it runs on the same
/// machine).
pub fn pid_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu(&stat)
}

/// Resident memory (VmRSS) of a process in KiB, from `/proc/PID/status`.
pub fn pid_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_rss_kib(&status)
}

fn parse_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    // "VmRSS:	   12345 kB"
    line.split_whitespace().nth(1)?.parse().ok()
}

fn parse_cpu(stat: &str) -> Option<Duration> {
    // Fields after the command name (which may contain spaces) start at field 3.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // USER_HZ is 100 on every Linux architecture the tester runs on.
    Some(Duration::from_millis((utime + stime) * 10))
}

/// The machine's count of UDP datagrams dropped for full receive buffers (`/proc/net/snmp`).
pub fn udp_receive_buffer_errors() -> Option<u64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").ok()?;
    parse_rcvbuf_errors(&snmp)
}

fn parse_rcvbuf_errors(snmp: &str) -> Option<u64> {
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp: "));
    let header: Vec<&str> = udp.next()?.split_whitespace().collect();
    let values: Vec<&str> = udp.next()?.split_whitespace().collect();
    let i = header.iter().position(|h| *h == "RcvbufErrors")?;
    values.get(i)?.parse().ok()
}

/// Busy and total CPU time of the whole machine so far, in clock ticks (`/proc/stat`), and the
/// number of cores.
pub fn machine_cpu() -> Option<(u64, u64, usize)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    parse_machine_cpu(&stat)
}

fn parse_machine_cpu(stat: &str) -> Option<(u64, u64, usize)> {
    let mut lines = stat.lines();
    let total_line = lines.next()?.strip_prefix("cpu ")?;
    let ticks: Vec<u64> = total_line
        .split_whitespace()
        .take(8)
        .filter_map(|v| v.parse().ok())
        .collect();
    if ticks.len() < 5 {
        return None;
    }
    let total: u64 = ticks.iter().sum();
    // idle and iowait
    let busy = total - ticks[3] - ticks[4];
    let cores = lines
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count();
    Some((busy, total, cores.max(1)))
}

/// The soft limit on open files (`/proc/self/limits`); `None` when unknown or unlimited.
pub fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_is_read_from_status() {
        let status = "Name:\tjanus\nVmPeak:\t  900 kB\nVmRSS:\t   12345 kB\nThreads:\t4\n";
        assert_eq!(parse_rss_kib(status), Some(12345));
        assert_eq!(parse_rss_kib("Name:\tx\n"), None);
        assert!(pid_rss_kib(std::process::id()).is_some_and(|kib| kib > 0));
    }

    #[test]
    fn proc_files_parse() {
        let stat = "123 (my (odd) name) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1";
        assert_eq!(parse_cpu(stat), Some(Duration::from_secs(3)));
        let snmp = "Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\n\
                    Udp: 420804 2698 268 421923 17 0\n";
        assert_eq!(parse_rcvbuf_errors(snmp), Some(17));
        let stat = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 50 0 25 400 25 0 0 0 0 0\n\
                    cpu1 50 0 25 400 25 0 0 0 0 0\nintr 1 2 3\n";
        assert_eq!(parse_machine_cpu(stat), Some((150, 1000, 2)));
        let udp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
                   6896: 0100007F:45DA 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 374180 2 0000000074da8e58 391740\n\
                   6897: 0100007F:9C40 00000000:0000 07 00000000:00000A00 00:00000000 00000000     0        0 374181 2 0000000074da8e59 5\n";
        let mut total = UdpSockets::default();
        add_udp_table(udp, &HashSet::from([0x9c40]), &mut total);
        assert_eq!(
            total,
            UdpSockets {
                sockets: 1,
                drops: 5,
                queued_bytes: 0xa00
            }
        );
        // On Linux the real files are there.
        if cfg!(target_os = "linux") {
            assert!(process_cpu().is_some());
            assert!(pid_cpu(std::process::id()).is_some());
            assert!(machine_cpu().is_some());
            assert!(open_file_limit().is_some_and(|n| n > 0));
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_idle_worker_has_little_lag() {
        let progress = Arc::new(Progress::default());
        let now = Instant::now();
        let health = monitor(progress, now, now + Duration::from_millis(200)).await;
        assert!(health.lag.count() >= 10);
        assert!(health.lag.percentile(50.0) < 20_000);
        assert!(health.busy_percent < 50.0);
        assert_eq!(health.saturated_seconds, 0);
        if cfg!(target_os = "linux") {
            assert!(health.cpu_percent.is_some_and(|c| c < 50.0));
        }
    }
}
