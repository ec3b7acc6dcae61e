//! `ting`: run the server, or mint join tokens for scripts.

use std::io::Write;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ting::config::{
    CommonArgs, FileConfig, Roles, ServeArgs, ServeConfig, resolve_data_dir, resolve_secret,
};
use ting_protocol::{Role, RoomId};
use ting_signalling::TokenKeys;
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "ting", version, about = "Self-hosted video meetings")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run everything in one process: web client, signalling, SFU.
    Serve(ServeArgs),
    /// Cluster role: media only (an SFU that signalling nodes place participants on); serves
    /// /healthz and /metrics on its HTTP port. Needs --redis and --node-id.
    Sfu(ServeArgs),
    /// Cluster role: web client, signalling and rooms, with every participant's media on
    /// `ting sfu` (or `ting serve`) nodes. Needs --redis and --node-id.
    Signalling(ServeArgs),
    /// Print a join token (also usable as a WHIP/WHEP Bearer token).
    Token(TokenArgs),
    /// Load test a server with simulated participants (see loadtest/README.md).
    Loadtest(ting_loadtest::cli::Args),
}

#[derive(clap::Args)]
struct TokenArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[arg(long)]
    room: String,
    /// Stable identity of the user (user id, e-mail, ...).
    #[arg(long)]
    identity: String,
    /// Display name; defaults to the identity.
    #[arg(long)]
    name: Option<String>,
    /// host, moderator, speaker, attendee or viewer.
    #[arg(long, default_value = "speaker")]
    role: Role,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 24 * 3600)]
    ttl: u64,
    /// Where the participant is (a cluster region name): its media goes to a node there.
    #[arg(long)]
    region: Option<String>,
    /// A guest's collaboration grants, e.g. `chat,files:read` (channels chat, whiteboard,
    /// board, files; `:read` for read only). Default: everything a member of the room may.
    #[arg(long, value_delimiter = ',')]
    collab: Option<Vec<String>>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args, Roles::ALL),
        Command::Sfu(args) => serve(args, Roles::MEDIA),
        Command::Signalling(args) => serve(args, Roles::SIGNALLING),
        Command::Token(args) => token(args),
        Command::Loadtest(args) => ting_loadtest::cli::run(args),
    }
}

fn serve(args: ServeArgs, roles: Roles) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("info,str0m=error")),
        )
        .init();
    let config = ServeConfig::resolve_for(&args, roles)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let running = ting::server::start(config, shutdown_signal()).await?;
        let http = running.http_addr;
        let shown = if http.ip().is_unspecified() {
            format!("localhost:{}", http.port())
        } else {
            http.to_string()
        };
        let list = |addrs: &[std::net::SocketAddr]| {
            addrs
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let (udp, tcp) = (list(&running.media_addrs), list(&running.tcp_media_addrs));
        // Scripts and tests read this line; a closed stdout must not stop the server.
        let _ = writeln!(
            std::io::stdout(),
            "ting: listening on http://{shown} (media udp {udp}; ice-tcp {tcp})"
        );
        running.task.await.context("server task")??;
        let _ = writeln!(std::io::stdout(), "ting: stopped");
        Ok(())
    })
}

async fn shutdown_signal() {
    let terminate = async {
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = terminate => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    tracing::info!("shutting down: telling clients, draining rooms");
}

fn token(args: TokenArgs) -> anyhow::Result<()> {
    let room = RoomId::new(&args.room)?;
    let file = FileConfig::load(args.common.config.as_deref())?;
    let data_dir = resolve_data_dir(&args.common, &file);
    let secret = resolve_secret(&args.common, &file, &data_dir)?;
    let name = args.name.as_deref().unwrap_or(&args.identity);
    if let Some(grants) = &args.collab {
        ting_collab::Access::from_grants(grants).map_err(|e| anyhow::anyhow!("--collab: {e}"))?;
    }
    let now = ting_signalling::token::unix_now();
    let token = TokenKeys::new(&secret)?.sign(&ting_signalling::Claims {
        room,
        sub: args.identity.clone(),
        name: name.to_owned(),
        role: args.role,
        exp: now + args.ttl,
        iat: Some(now),
        region: args.region,
        collab: args.collab,
        file: None,
    })?;
    println!("{token}");
    Ok(())
}
