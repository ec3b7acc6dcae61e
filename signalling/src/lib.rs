//! Ting's signalling service: HTTP + WebSocket (axum) for join tokens, rooms and rosters, SDP
//! exchange, WHIP/WHEP, metrics and the web client.
//!
//! It decides who is in which room and what they may do; the media plane (`ting-sfu`) moves
//! the packets. Services are constructed with [`app`], not started: the caller binds the
//! listener and passes a shutdown future to [`serve`]. Invariant: room state is only changed
//! under the hub's mutex, and no lock is held across an await.

pub mod cluster;
mod collab_http;
mod collab_ws;
mod http;
mod hub;
mod media;
mod metrics;
mod moderation;
mod recording;
mod recording_http;
mod rooms;
mod roster;
pub mod sdp_summary;
mod session;
pub mod token;
mod whip;

use std::future::Future;
use std::time::Duration;

use axum::serve::ListenerExt;
pub use http::{app, media_node_app};
pub use hub::{Hub, HubError, SignallingConfig};
pub use media::{MediaPlane, Site};
pub use metrics::SignallingMetrics;
pub use recording::RecordingConfig;
use ting_sfu::SfuEvent;
pub use token::{Claims, TokenError, TokenKeys};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// How long shutdown waits for sockets to say goodbye.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves until `shutdown` completes, then tells every client and drains the sockets.
pub async fn serve(
    listener: TcpListener,
    hub: Hub,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    tokio::spawn(hub.clone().flush_rosters_until_shutdown());
    tokio::spawn(hub.clone().sweep_recordings_until_shutdown());
    let drain = hub.clone();
    // Signalling sends small messages back to back (a snapshot, then `synced`): without
    // TCP_NODELAY the second waits for the client's delayed ACK, some 40 ms.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("TCP_NODELAY not set: {e}");
        }
    });
    axum::serve(listener, app(hub.clone()))
        .with_graceful_shutdown(async move {
            shutdown.await;
            drain.shutdown().await;
        })
        .await?;
    hub.sessions().close();
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, hub.sessions().wait()).await;
    Ok(())
}

/// Serves a media-only node's health and metrics until `shutdown` completes.
pub async fn serve_media_node(
    listener: TcpListener,
    registry: prometheus::Registry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, media_node_app(registry))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Feeds this node's SFU events to the hub until the shards stop; in a cluster, events about
/// participants whose signalling is on another node go there.
pub async fn pump_sfu_events(hub: Hub, mut events: mpsc::UnboundedReceiver<SfuEvent>) {
    while let Some(event) = events.recv().await {
        let event = match hub.media_links() {
            Some(links) => links.route_event(event),
            None => Some(event),
        };
        if let Some(event) = event {
            hub.on_sfu_event(event);
        }
    }
}
