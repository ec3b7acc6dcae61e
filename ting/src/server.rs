//! `ting serve`: the SFU shard, the signalling service and the web client in one process.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};

use anyhow::Context;
use prometheus::Registry;
use ting_sfu::{SfuConfig, SfuMetrics, ShardSockets, spawn_shard};
use ting_signalling::{Hub, SignallingConfig, TokenKeys};
use tokio::task::JoinHandle;

use crate::config::ServeConfig;

/// A started server: where it listens, and the task that ends when it has shut down.
pub struct Running {
    pub http_addr: SocketAddr,
    pub media_addrs: Vec<SocketAddr>,
    pub tcp_media_addrs: Vec<SocketAddr>,
    pub task: JoinHandle<anyhow::Result<()>>,
}

/// Binds every socket and starts serving until `shutdown` completes.
pub async fn start(
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Running> {
    let sockets = bind_media(config.bind, config.udp_port)?;
    let locals: Vec<SocketAddr> = sockets
        .iter()
        .map(UdpSocket::local_addr)
        .collect::<Result<_, _>>()?;
    // NAT: the public address forwards to the first non-loopback socket.
    let base = locals
        .iter()
        .find(|a| !a.ip().is_loopback())
        .or(locals.first())
        .copied();
    let reflexive_candidates = match base {
        Some(base) => config
            .public_ips
            .iter()
            .filter(|ip| !locals.iter().any(|l| l.ip() == **ip))
            .map(|ip| (SocketAddr::new(*ip, base.port()), base))
            .collect(),
        None => Vec::new(),
    };
    // ICE-TCP on the same addresses, for networks that block UDP.
    let mut tcp_listeners = Vec::new();
    let mut tcp_candidates = Vec::new();
    if let Some(mut port) = config.tcp_port {
        for local in &locals {
            let listener = TcpListener::bind((local.ip(), port))
                .with_context(|| format!("binding ICE-TCP {}:{port}", local.ip()))?;
            // With port 0, the first listener picks the port and the others share it.
            port = listener.local_addr()?.port();
            tcp_candidates.push(listener.local_addr()?);
            tcp_listeners.push(listener);
        }
    }
    let sfu_config = SfuConfig {
        host_candidates: locals.clone(),
        reflexive_candidates,
        tcp_candidates: tcp_candidates.clone(),
        loudest_n: config.loudest_n,
        max_subscriptions: config.max_subscriptions,
    };
    let sockets = ShardSockets {
        udp: sockets,
        tcp: tcp_listeners,
    };

    let registry = Registry::new();
    let sfu_metrics = SfuMetrics::new(&registry)?;
    let shard =
        spawn_shard(sockets, sfu_config, sfu_metrics, 0).context("starting the media shard")?;
    let signalling = SignallingConfig {
        quick_start: config.quick_start,
        resume_grace: config.resume_grace,
        ..SignallingConfig::default()
    };
    let hub = Hub::new(
        signalling,
        TokenKeys::new(&config.token_secret)?,
        shard.handle,
        registry,
    )?;
    tokio::spawn(ting_signalling::pump_sfu_events(hub.clone(), shard.events));

    let listener = tokio::net::TcpListener::bind((config.bind, config.http_port))
        .await
        .with_context(|| format!("binding HTTP port {}", config.http_port))?;
    let http_addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        ting_signalling::serve(listener, hub, shutdown).await?;
        Ok(())
    });
    Ok(Running {
        http_addr,
        media_addrs: locals,
        tcp_media_addrs: tcp_candidates,
        task,
    })
}

/// One UDP socket per local IPv4 address (all on the same port), so every host candidate's
/// address is the exact destination the packets arrive at.
fn bind_media(bind: IpAddr, port: u16) -> anyhow::Result<Vec<UdpSocket>> {
    if !bind.is_unspecified() {
        let socket =
            UdpSocket::bind((bind, port)).with_context(|| format!("binding UDP {bind}:{port}"))?;
        return Ok(vec![socket]);
    }
    let mut ips: Vec<IpAddr> = if_addrs::get_if_addrs()
        .context("listing network interfaces")?
        .into_iter()
        .map(|i| i.ip())
        .filter(|ip| ip.is_ipv4())
        .collect();
    if ips.is_empty() {
        ips.push(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    ips.sort_by_key(|ip| ip.is_loopback());
    ips.dedup();
    let mut sockets = Vec::new();
    let mut port = port;
    for ip in ips {
        let socket =
            UdpSocket::bind((ip, port)).with_context(|| format!("binding UDP {ip}:{port}"))?;
        // With port 0, the first socket picks the port and the others share it.
        port = socket.local_addr()?.port();
        sockets.push(socket);
    }
    Ok(sockets)
}
