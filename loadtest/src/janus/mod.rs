//! The Janus target: the same scenarios, media and measurements as against Ting, driven
//! through the Janus API (WebSocket transport) and its multistream VideoRoom plugin, so that
//! the two servers can be compared under the same load (`ting loadtest run --target janus`).
//!
//! - [`api`]: the Janus API and VideoRoom messages, built and parsed (pure);
//! - [`client`]: the WebSocket connection with transactions;
//! - [`participant`]: one simulated participant's life.

pub mod api;
pub mod client;
pub mod participant;

use std::net::IpAddr;

use anyhow::{Context, bail};

use crate::signal::ServerUrl;

/// Janus' WebSocket URL, `ws://HOST:PORT[/PATH]`; the host, if an address, keeps media on it.
pub fn server_url(server: &str) -> anyhow::Result<ServerUrl> {
    let trimmed = server.trim();
    let Some(rest) = trimmed.strip_prefix("ws://") else {
        bail!(
            "the Janus server URL must start with ws:// (got {server:?}), e.g. ws://127.0.0.1:8188"
        );
    };
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() || authority.contains('@') {
        bail!("the Janus server URL must be ws://HOST[:PORT][/PATH] (got {server:?})");
    }
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((host, tail)) => (host, tail.strip_prefix(':')),
            None => bail!("unclosed '[' in server URL {server:?}"),
        },
        None => match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    if let Some(port) = port {
        port.parse::<u16>()
            .with_context(|| format!("bad port in server URL {server:?}"))?;
    }
    Ok(ServerUrl {
        http: trimmed.to_owned(),
        ws: trimmed.to_owned(),
        ip: host.parse::<IpAddr>().ok(),
    })
}

/// The numeric VideoRoom id of a scenario room: a stable hash of its name (FNV-1a), kept below
/// 2^53 so that every JSON implementation reads it exactly, and never 0.
pub fn room_id(name: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in name.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash & ((1 << 53) - 1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn janus_urls_are_websocket_urls() {
        let u = server_url("ws://127.0.0.1:8188").unwrap();
        assert_eq!(u.ws, "ws://127.0.0.1:8188");
        assert_eq!(u.ip, Some(IpAddr::from([127, 0, 0, 1])));
        let u = server_url("ws://[::1]:8188/janus").unwrap();
        assert_eq!(u.ip, Some("::1".parse().unwrap()));
        assert_eq!(server_url("ws://localhost:8188").unwrap().ip, None);
        assert!(server_url("http://127.0.0.1:8188").is_err());
        assert!(server_url("ws://host:port").is_err());
        assert!(server_url("ws://").is_err());
    }

    #[test]
    fn room_ids_are_stable_and_distinct() {
        assert_eq!(room_id("bench"), room_id("bench"));
        assert_ne!(room_id("bench-1"), room_id("bench-2"));
        assert!(room_id("x") < 1 << 53);
    }
}
