//! `ting serve`: the SFU shards, the signalling service and the web client in one process.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use prometheus::Registry;
use ting_sfu::{NodeLinks, SfuConfig, SfuMetrics, ShardRouter, ShardSockets, spawn_shard};
use ting_signalling::cluster::{ClusterLink, ClusterState, Directory, RecentNodes};
use ting_signalling::{Hub, MediaPlane, SignallingConfig, TokenKeys};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cluster::{HEARTBEAT_TTL, Membership};
use crate::config::ServeConfig;

/// A started server: where it listens, and the task that ends when it has shut down.
pub struct Running {
    pub http_addr: SocketAddr,
    pub media_addrs: Vec<SocketAddr>,
    pub tcp_media_addrs: Vec<SocketAddr>,
    pub task: JoinHandle<anyhow::Result<()>>,
}

/// One media shard's sockets and candidates.
struct ShardPlan {
    sockets: ShardSockets,
    config: SfuConfig,
}

/// Binds shard `index`'s sockets: UDP on `udp_port + index`, ICE-TCP on `tcp_port + index`
/// (port 0: any free port).
fn plan_shard(config: &ServeConfig, index: u16) -> anyhow::Result<ShardPlan> {
    let offset = |port: u16| {
        if port == 0 {
            0
        } else {
            port.saturating_add(index)
        }
    };
    let sockets = bind_media(config.bind, offset(config.udp_port))?;
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
    if let Some(port) = config.tcp_port {
        let mut port = offset(port);
        for local in &locals {
            let listener = TcpListener::bind((local.ip(), port))
                .with_context(|| format!("binding ICE-TCP {}:{port}", local.ip()))?;
            // With port 0, the first listener picks the port and the others share it.
            port = listener.local_addr()?.port();
            tcp_candidates.push(listener.local_addr()?);
            tcp_listeners.push(listener);
        }
    }
    Ok(ShardPlan {
        sockets: ShardSockets {
            udp: sockets,
            tcp: tcp_listeners,
        },
        config: SfuConfig {
            host_candidates: locals,
            reflexive_candidates,
            tcp_candidates,
            loudest_n: config.loudest_n,
            max_subscriptions: config.max_subscriptions,
        },
    })
}

/// Binds every socket and starts serving until `shutdown` completes.
pub async fn start(
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Running> {
    // A signalling-only node has no media shards.
    let shard_count = if config.roles.media {
        u16::try_from(config.shards.max(1)).unwrap_or(u16::MAX)
    } else {
        0
    };
    let plans = (0..shard_count)
        .map(|index| plan_shard(&config, index))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let media_addrs: Vec<SocketAddr> = plans
        .iter()
        .flat_map(|p| p.config.host_candidates.clone())
        .collect();
    let tcp_media_addrs: Vec<SocketAddr> = plans
        .iter()
        .flat_map(|p| p.config.tcp_candidates.clone())
        .collect();

    let registry = Registry::new();
    let sfu_metrics = SfuMetrics::new(&registry)?;
    // All shards' events go to the one signalling service.
    let (events_tx, events) = tokio::sync::mpsc::unbounded_channel();
    let mut handles = Vec::new();
    for (index, plan) in plans.into_iter().enumerate() {
        let mut shard = spawn_shard(plan.sockets, plan.config, sfu_metrics.clone(), index)
            .with_context(|| format!("starting media shard {index}"))?;
        let events_tx = events_tx.clone();
        tokio::spawn(async move {
            while let Some(event) = shard.events.recv().await {
                if events_tx.send(event).is_err() {
                    break;
                }
            }
        });
        handles.push(shard.handle);
    }
    let router = ShardRouter::new(handles);
    if config.roles.media && router.is_none() {
        anyhow::bail!("no media shard");
    }

    let listener = tokio::net::TcpListener::bind((config.bind, config.http_port))
        .await
        .with_context(|| format!("binding HTTP port {}", config.http_port))?;
    let http_addr = listener.local_addr()?;
    let draining = Arc::new(AtomicBool::new(false));
    // Clients and other nodes reach this node where its media is: the first host candidate's
    // address.
    let advertised_ip = media_addrs
        .first()
        .map_or_else(|| advertised_without_media(http_addr.ip()), |a| a.ip());
    let advertised = SocketAddr::new(advertised_ip, http_addr.port());
    let links = match &config.cluster {
        Some(cluster) => Some(
            NodeLinks::start(
                cluster.node_id.clone(),
                SocketAddr::new(config.bind, cluster.relay_port),
                &config.token_secret,
                router.clone(),
                sfu_metrics.clone(),
            )
            .with_context(|| format!("starting node links on port {}", cluster.relay_port))?,
        ),
        None => None,
    };
    let membership = match (&config.cluster, &links) {
        (Some(cluster), Some(links)) => {
            let relay_addr = SocketAddr::new(advertised_ip, links.local_addr()?.port());
            links.set_advertised(relay_addr);
            let gauge = sfu_metrics.peers.clone();
            let roles = (config.roles.media, config.roles.signalling);
            Some(
                Membership::join(
                    cluster,
                    advertised,
                    relay_addr,
                    roles,
                    gauge,
                    draining.clone(),
                )
                .await?,
            )
        }
        _ => None,
    };
    let link = match (&membership, &config.cluster) {
        (Some(membership), Some(cluster)) => {
            let store: Arc<dyn ClusterState> = Arc::new(membership.store());
            let (directory, _task) =
                Directory::spawn(store.clone(), cluster.node_id.clone(), HEARTBEAT_TTL);
            Some(ClusterLink {
                store,
                node: cluster.node_id.clone(),
                region: cluster.region.clone(),
                directory,
                claim_ttl: HEARTBEAT_TTL,
                draining: draining.clone(),
                http_url: format!("http://{advertised}"),
                recent_nodes: RecentNodes::default(),
            })
        }
        _ => None,
    };
    let (stop_heartbeats, stopped) = watch::channel(false);
    if !config.roles.signalling {
        // `ting sfu`: other nodes drive this node's SFU over the node links.
        let links = links.context("a media node runs in a cluster")?;
        let heartbeats = membership.map(|m| m.spawn_heartbeats(stopped, None));
        tokio::spawn(route_media_events(links.clone(), events));
        let task = tokio::spawn(async move {
            let served = ting_signalling::serve_media_node(listener, registry, shutdown).await;
            // No new participants while the link closes; the signalling nodes move the ones
            // here to other nodes as soon as the link is gone.
            draining.store(true, std::sync::atomic::Ordering::Relaxed);
            leave_cluster(Some(&links), stop_heartbeats, heartbeats).await;
            served?;
            Ok(())
        });
        return Ok(Running {
            http_addr,
            media_addrs,
            tcp_media_addrs,
            task,
        });
    }
    let directory = link.as_ref().map(|l| l.directory.clone());
    let first_participant_id = match &link {
        Some(link) => {
            let epoch = link
                .store
                .next_epoch()
                .await
                .context("reserving participant ids in the cluster")?;
            participant_id_base(epoch)
        }
        None => 1,
    };
    let signalling = SignallingConfig {
        quick_start: config.quick_start,
        resume_grace: config.resume_grace,
        first_participant_id,
        auto_record: config.auto_record,
        ..SignallingConfig::default()
    };
    let hub = Hub::new(
        signalling,
        TokenKeys::new(&config.token_secret)?,
        MediaPlane::new(router, links.clone()),
        registry,
        link,
    )?;
    if let Some(settings) = &config.collab {
        let fanout = config.cluster.as_ref().map(|c| ting_collab::FanoutConfig {
            redis_url: c.redis_url.clone(),
            prefix: format!("{}:", c.key_prefix),
            node: c.node_id.to_string(),
        });
        let collab = ting_collab::Collab::start(
            ting_collab::CollabConfig {
                database_url: settings.database_url.clone(),
                blobs: settings.blobs.clone(),
                limits: settings.limits,
                fanout,
            },
            hub.shutdown_token().clone(),
        )
        .await
        .context("starting the collaboration store")?;
        hub.set_collab(collab);
    } else {
        tracing::warn!(
            "collaboration add-ons are off: a cluster needs --database-url postgres://…"
        );
    }
    // The recorder watches this node's own WHEP endpoint, over loopback when it can.
    let local_ip = if config.bind.is_unspecified() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        config.bind
    };
    hub.set_recording_config(ting_signalling::RecordingConfig {
        dir: config.data_dir.join("recordings"),
        server_url: format!("http://{}", SocketAddr::new(local_ip, http_addr.port())),
        local_ip,
    });
    tokio::spawn(ting_signalling::pump_sfu_events(hub.clone(), events));
    let heartbeats = membership.map(|m| m.spawn_heartbeats(stopped, directory.clone()));
    let task = tokio::spawn(async move {
        let served = ting_signalling::serve(listener, hub, shutdown).await;
        leave_cluster(links.as_ref(), stop_heartbeats, heartbeats).await;
        served?;
        Ok(())
    });
    Ok(Running {
        http_addr,
        media_addrs,
        tcp_media_addrs,
        task,
    })
}

/// After serving: closes the node links (other nodes learn at once that this one is gone, and
/// move its participants there) and deregisters.
async fn leave_cluster(
    links: Option<&NodeLinks>,
    stop_heartbeats: watch::Sender<bool>,
    heartbeats: Option<JoinHandle<()>>,
) {
    if let Some(links) = links {
        links.close();
    }
    let _ = stop_heartbeats.send(true);
    if let Some(heartbeats) = heartbeats {
        let _ = heartbeats.await;
    }
}

/// A media node's SFU events all concern participants whose signalling is on other nodes.
async fn route_media_events(
    links: NodeLinks,
    mut events: tokio::sync::mpsc::UnboundedReceiver<ting_sfu::SfuEvent>,
) {
    while let Some(event) = events.recv().await {
        if let Some(unclaimed) = links.route_event(event) {
            tracing::debug!(?unclaimed, "SFU event for no signalling node");
        }
    }
}

/// The address other nodes reach a node without media sockets at: the bound address, or
/// when bound to every interface, the first non-loopback IPv4 address.
fn advertised_without_media(bound: IpAddr) -> IpAddr {
    if !bound.is_unspecified() {
        return bound;
    }
    if_addrs::get_if_addrs()
        .ok()
        .into_iter()
        .flatten()
        .map(|i| i.ip())
        .find(|ip| ip.is_ipv4() && !ip.is_loopback())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// The first participant id of a node start with this cluster epoch: each start owns 2^32 ids,
/// and ids stay below 2^53 so that JavaScript clients read them exactly (the epoch wraps after
/// two million node starts; a collision would need a node that old still running).
fn participant_id_base(epoch: u64) -> u64 {
    ((epoch % (1 << 21)) << 32) + 1
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
