//! Command line: `ting-loadtest run …` and `ting loadtest run …` share these arguments.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args as ClapArgs, Subcommand};

use crate::floor;
use crate::runner::{self, RunConfig, Target};
use crate::scenario::Scenario;
use crate::tokens::resolve_secret;

/// Drive simulated participants against a Ting server and report what they measured.
#[derive(Debug, ClapArgs)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a scenario against a server.
    Run(RunArgs),
    /// Measure the forwarding floor: the CPU cost of merely sending datagrams with `sendmmsg`
    /// to many loopback sockets (run it pinned, e.g. `taskset -c 0`).
    Floor(FloorArgs),
    /// Collaboration benchmark: chat fan-out to many members and a late joiner on a large
    /// whiteboard (a running server with collaboration on).
    Collab(CollabArgs),
    /// Check scenario files and show what they would do, without connecting.
    Check {
        /// Scenario files (TOML).
        #[arg(required = true)]
        scenarios: Vec<PathBuf>,
    },
}

#[derive(Debug, ClapArgs)]
pub struct CollabArgs {
    /// The server (http://HOST:PORT).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// The server's token secret. Default: read DATA_DIR/token-secret.
    #[arg(long, env = "TING_TOKEN_SECRET", hide_env_values = true)]
    pub token_secret: Option<String>,
    #[arg(long, env = "TING_DATA_DIR", default_value = "ting-data")]
    pub data_dir: PathBuf,
    /// Room (a fresh name per run keeps runs apart).
    #[arg(long, default_value = "collab-bench")]
    pub room: String,
    /// Members following the chat.
    #[arg(long, default_value_t = 1000)]
    pub members: usize,
    /// Chat messages posted.
    #[arg(long, default_value_t = 100)]
    pub messages: usize,
    /// Pause between messages, in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub interval_ms: u64,
    /// Whiteboard elements written before the late joiners come.
    #[arg(long, default_value_t = 10_000)]
    pub elements: usize,
    /// Late joiners, one after the other.
    #[arg(long, default_value_t = 10)]
    pub joiners: usize,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub time_limit: u64,
    /// Write the JSON report here.
    #[arg(long)]
    pub report: Option<PathBuf>,
}

#[derive(Debug, ClapArgs)]
pub struct FloorArgs {
    /// Datagrams to send.
    #[arg(long, default_value_t = 2_000_000)]
    pub datagrams: u64,
    /// Bytes per datagram (a full video packet is about 1200).
    #[arg(long, default_value_t = 1200)]
    pub size: usize,
    /// Receiving sockets (distinct destinations, like subscribers).
    #[arg(long, default_value_t = 200)]
    pub destinations: usize,
    /// Pin the draining thread to this core (the sender stays where the process runs).
    #[arg(long)]
    pub receiver_core: Option<usize>,
    /// Stop sending after this many seconds even if not all datagrams went out.
    #[arg(long, default_value_t = 120)]
    pub time_limit: u64,
    /// Write the JSON report here.
    #[arg(long)]
    pub report: Option<PathBuf>,
}

#[derive(Debug, ClapArgs)]
pub struct RunArgs {
    /// Scenario file (TOML), e.g. loadtest/scenarios/smoke-10.toml.
    #[arg(long)]
    pub scenario: PathBuf,
    /// The server under test: Ting, or Janus' VideoRoom for comparison.
    #[arg(long, value_enum, default_value_t = Target::Ting)]
    pub target: Target,
    /// The server: http://HOST:PORT for Ting, ws://HOST:PORT for Janus (default
    /// http://127.0.0.1:8080, or ws://127.0.0.1:8188 with --target janus).
    #[arg(long)]
    pub server: Option<String>,
    /// Another node of the same cluster to rejoin through when the server is gone
    /// (repeatable; tried in order).
    #[arg(long = "fallback-server")]
    pub fallback_servers: Vec<String>,
    /// The server's token secret. Default: read DATA_DIR/token-secret, as `ting token` does.
    #[arg(long, env = "TING_TOKEN_SECRET", hide_env_values = true)]
    pub token_secret: Option<String>,
    /// The server's data directory (for its token secret).
    #[arg(long, env = "TING_DATA_DIR", default_value = "ting-data")]
    pub data_dir: PathBuf,
    /// Write the JSON report here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Worker threads driving the participants.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Override the scenario's duration_secs (hold time after the ramp).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Override the scenario's ramp_per_sec (joins per second).
    #[arg(long)]
    pub ramp: Option<f64>,
    /// Multiply the size of the receive-only groups (attendees, viewers); publishers stay.
    #[arg(long)]
    pub scale: Option<f64>,
    /// Address the simulated participants' media sockets bind to.
    #[arg(long, default_value = "127.0.0.1")]
    pub local_ip: IpAddr,
    /// The server's process id when it runs on this machine: its CPU use goes in the report.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Seconds to wait for `joined`.
    #[arg(long, default_value_t = 15)]
    pub join_timeout: u64,
    /// No progress lines.
    #[arg(long)]
    pub quiet: bool,
}

/// Runs a command; the entry point of both binaries.
pub fn run(args: Args) -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,str0m=error")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    match args.command {
        Command::Run(run) => run_scenario(run),
        Command::Floor(floor) => run_floor(&floor),
        Command::Collab(args) => run_collab(args),
        Command::Check { scenarios } => check(&scenarios),
    }
}

/// Applies the command line's overrides to the scenario file.
pub fn load_scenario(args: &RunArgs) -> anyhow::Result<Scenario> {
    let mut scenario = Scenario::load(&args.scenario)?;
    if let Some(d) = args.duration {
        scenario.duration_secs = d;
    }
    if let Some(r) = args.ramp {
        scenario.ramp_per_sec = r;
    }
    if let Some(f) = args.scale {
        scenario.scale_audience(f)?;
    }
    scenario
        .validate()
        .context("after applying the overrides")?;
    Ok(scenario)
}

fn run_scenario(args: RunArgs) -> anyhow::Result<()> {
    let scenario = load_scenario(&args)?;
    let (secret, server) = match args.target {
        Target::Ting => (
            resolve_secret(args.token_secret.as_deref(), &args.data_dir)?,
            args.server
                .clone()
                .unwrap_or_else(|| "http://127.0.0.1:8080".to_owned()),
        ),
        Target::Janus => (
            Vec::new(),
            args.server
                .clone()
                .unwrap_or_else(|| "ws://127.0.0.1:8188".to_owned()),
        ),
    };
    let config = RunConfig {
        target: args.target,
        workers: args.workers,
        local_ip: args.local_ip,
        progress: !args.quiet,
        join_timeout: Duration::from_secs(args.join_timeout),
        server_pid: args.server_pid,
        fallback_servers: args.fallback_servers.clone(),
        ..RunConfig::new(scenario.clone(), server, secret)
    };
    eprintln!(
        "ting-loadtest: {} — {} participants, ramp {:.1} s, hold {:.0} s, {} worker(s), {} server {}",
        scenario.name,
        scenario.participant_count(),
        scenario.ramp_duration().as_secs_f64(),
        scenario.duration_secs,
        config.workers,
        config.target.name(),
        config.server
    );
    let report = runner::run(&config)?;
    if let Some(path) = &args.report {
        report.write_json(path)?;
        eprintln!("ting-loadtest: report written to {}", path.display());
    }
    print!("{}", report.summary());
    Ok(())
}

fn run_collab(args: CollabArgs) -> anyhow::Result<()> {
    let config = crate::collab::CollabBenchConfig {
        server: args.server.clone(),
        secret: resolve_secret(args.token_secret.as_deref(), &args.data_dir)?,
        room: args.room.clone(),
        members: args.members,
        messages: args.messages,
        interval: Duration::from_millis(args.interval_ms),
        elements: args.elements,
        joiners: args.joiners,
        time_limit: Duration::from_secs(args.time_limit),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let report = runtime.block_on(crate::collab::run(config))?;
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(path) = &args.report {
        std::fs::write(path, &json).with_context(|| format!("writing {}", path.display()))?;
    }
    println!("{json}");
    Ok(())
}

fn run_floor(args: &FloorArgs) -> anyhow::Result<()> {
    let report = floor::measure(&floor::FloorConfig {
        datagrams: args.datagrams,
        size: args.size,
        destinations: args.destinations,
        receiver_core: args.receiver_core,
        time_limit: Duration::from_secs(args.time_limit),
    })?;
    if let Some(path) = &args.report {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    print!("{}", report.summary());
    Ok(())
}

fn check(paths: &[PathBuf]) -> anyhow::Result<()> {
    for path in paths {
        let scenario = Scenario::load(path)?;
        let plans = scenario.plan()?;
        let publishers = plans.iter().filter(|p| p.publishes()).count();
        let cameras = plans.iter().filter(|p| p.video).count();
        println!(
            "{}: {} — {} participants in {} room(s), {publishers} publishing ({cameras} with camera); ramp {:.1} s, hold {:.0} s",
            path.display(),
            scenario.name,
            plans.len(),
            scenario.rooms,
            scenario.ramp_duration().as_secs_f64(),
            scenario.duration_secs
        );
    }
    Ok(())
}
