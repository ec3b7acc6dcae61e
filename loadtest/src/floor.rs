//! The machine's floor for forwarding: the CPU it costs merely to send datagrams with
//! `sendmmsg` (Ting's own batch sender) to many loopback sockets, with nothing else done per
//! packet. A forwarder's CPU per packet is compared against this. On loopback the sender also
//! pays the kernel's receive path, as it does when Ting forwards to the load tester.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sched::{CpuSet, sched_setaffinity};
use nix::sys::resource::{UsageWho, getrusage};
use nix::unistd::Pid;
use serde::Serialize;
use ting_sfu::shell::udp::{SendBatch, enlarge_buffers};

/// What to send.
#[derive(Debug, Clone)]
pub struct FloorConfig {
    pub datagrams: u64,
    pub size: usize,
    /// Receiving sockets, each a distinct destination (as distinct subscribers are).
    pub destinations: usize,
    /// Core the draining thread is pinned to; the sender stays where the process runs.
    pub receiver_core: Option<usize>,
    /// Stop early after this long.
    pub time_limit: Duration,
}

/// The measurement.
#[derive(Debug, Clone, Serialize)]
pub struct FloorReport {
    pub datagrams_sent: u64,
    pub datagrams_received: u64,
    pub size: usize,
    pub destinations: usize,
    /// CPU time (user + system) of the sending thread.
    pub sender_cpu_secs: f64,
    pub wall_secs: f64,
    pub cpu_secs_per_million_datagrams: f64,
    pub sends_per_second: f64,
    /// Datagrams the kernel would not take (full send buffer).
    pub send_dropped: u64,
}

impl FloorReport {
    pub fn summary(&self) -> String {
        format!(
            "sendmmsg floor: {} datagrams of {} bytes to {} loopback sockets in {:.2} s \
             ({:.0}/s); sender cpu {:.2} s = {:.2} cpu-s per million datagrams ({:.2} µs each); \
             received {} ({:.1} %), send buffer drops {}\n",
            self.datagrams_sent,
            self.size,
            self.destinations,
            self.wall_secs,
            self.sends_per_second,
            self.sender_cpu_secs,
            self.cpu_secs_per_million_datagrams,
            self.cpu_secs_per_million_datagrams,
            self.datagrams_received,
            100.0 * self.datagrams_received as f64 / self.datagrams_sent.max(1) as f64,
            self.send_dropped,
        )
    }
}

fn thread_cpu() -> anyhow::Result<Duration> {
    let usage = getrusage(UsageWho::RUSAGE_THREAD).context("getrusage")?;
    let micros = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(t.tv_sec().max(0) as u64)
            + Duration::from_micros(t.tv_usec().max(0) as u64)
    };
    Ok(micros(usage.user_time()) + micros(usage.system_time()))
}

/// Sends `config.datagrams` datagrams round-robin to `config.destinations` sockets that a
/// second thread drains, and measures the sending thread's CPU time.
pub fn measure(config: &FloorConfig) -> anyhow::Result<FloorReport> {
    anyhow::ensure!(config.destinations > 0, "at least one destination");
    anyhow::ensure!(
        (1..=65_000).contains(&config.size),
        "datagram size must be 1..=65000"
    );
    let receivers: Vec<UdpSocket> = (0..config.destinations)
        .map(|_| {
            let socket = UdpSocket::bind("127.0.0.1:0")?;
            socket.set_nonblocking(true)?;
            enlarge_buffers(&socket);
            Ok(socket)
        })
        .collect::<std::io::Result<_>>()
        .context("binding the receiving sockets (raise `ulimit -n`?)")?;
    let addresses: Vec<SocketAddr> = receivers
        .iter()
        .map(UdpSocket::local_addr)
        .collect::<std::io::Result<_>>()?;
    let sender = UdpSocket::bind("127.0.0.1:0")?;
    sender.set_nonblocking(true)?;
    enlarge_buffers(&sender);

    let done = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let drain = {
        let (done, received, core) = (done.clone(), received.clone(), config.receiver_core);
        std::thread::Builder::new()
            .name("floor-receiver".into())
            .spawn(move || drain_until(receivers, core, &done, &received))?
    };

    let payload = vec![0x5au8; config.size];
    let sockets = [sender];
    let mut batch = SendBatch::new(1);
    let deadline = Instant::now() + config.time_limit;
    let cpu_before = thread_cpu()?;
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < config.datagrams {
        // The payload copy stands for the one a forwarder makes into each receiver's packet.
        let destination = addresses[(sent % addresses.len() as u64) as usize];
        batch.push(&sockets, 0, destination, payload.clone().into());
        sent += 1;
        if sent.is_multiple_of(65_536) && Instant::now() >= deadline {
            break;
        }
    }
    batch.flush(&sockets);
    let wall = started.elapsed();
    let cpu = thread_cpu()? - cpu_before;
    let send_dropped = batch.take_dropped();
    // Let the receiver catch up, then stop it.
    std::thread::sleep(Duration::from_millis(300));
    done.store(true, Ordering::Relaxed);
    let _ = drain.join();

    let cpu_secs = cpu.as_secs_f64();
    Ok(FloorReport {
        datagrams_sent: sent,
        datagrams_received: received.load(Ordering::Relaxed),
        size: config.size,
        destinations: config.destinations,
        sender_cpu_secs: cpu_secs,
        wall_secs: wall.as_secs_f64(),
        cpu_secs_per_million_datagrams: cpu_secs * 1e6 / sent.max(1) as f64,
        sends_per_second: sent as f64 / wall.as_secs_f64().max(1e-9),
        send_dropped,
    })
}

fn drain_until(
    receivers: Vec<UdpSocket>,
    core: Option<usize>,
    done: &AtomicBool,
    received: &AtomicU64,
) {
    if let Some(core) = core {
        let mut set = CpuSet::new();
        if set.set(core).is_ok() && sched_setaffinity(Pid::from_raw(0), &set).is_err() {
            tracing::warn!("could not pin the receiving thread to core {core}");
        }
    }
    let mut buf = vec![0u8; 65_536];
    while !done.load(Ordering::Relaxed) {
        let mut got = 0;
        for socket in &receivers {
            while socket.recv(&mut buf).is_ok() {
                got += 1;
            }
        }
        received.fetch_add(got, Ordering::Relaxed);
        if got == 0 {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_sends_and_counts_every_datagram() {
        let report = measure(&FloorConfig {
            datagrams: 20_000,
            size: 1200,
            destinations: 8,
            receiver_core: None,
            time_limit: Duration::from_secs(20),
        })
        .unwrap();
        assert_eq!(report.datagrams_sent, 20_000);
        assert_eq!(report.send_dropped, 0);
        assert!(
            report.datagrams_received + report.send_dropped >= 19_000,
            "{report:?}"
        );
        assert!(report.sender_cpu_secs > 0.0);
        assert!(report.cpu_secs_per_million_datagrams > 0.0);
    }

    #[test]
    fn nonsense_is_refused() {
        let bad = FloorConfig {
            datagrams: 1,
            size: 0,
            destinations: 1,
            receiver_core: None,
            time_limit: Duration::from_secs(1),
        };
        assert!(measure(&bad).is_err());
        assert!(
            measure(&FloorConfig {
                size: 100,
                destinations: 0,
                ..bad
            })
            .is_err()
        );
    }
}
