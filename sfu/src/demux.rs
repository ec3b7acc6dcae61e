//! Finds the participant a datagram belongs to without asking every peer.
//!
//! STUN binding requests name the server's ICE ufrag (`USERNAME = server:client`), which is
//! unique per participant. Once a participant's checks arrive from an address, every later
//! datagram (DTLS, SRTP, SRTCP) from that address is routed by a hash lookup of the 5-tuple.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::SocketAddr;

use str0m::ice::StunMessage;

/// The two ends of a datagram as seen by the server (one UDP socket per shard, so the
/// destination disambiguates shards sharing a table in tests).
pub type FiveTuple = (SocketAddr, SocketAddr);

#[derive(Debug)]
pub struct Demux<K> {
    by_ufrag: HashMap<String, K>,
    by_addr: HashMap<FiveTuple, K>,
}

impl<K> Default for Demux<K> {
    fn default() -> Self {
        Self {
            by_ufrag: HashMap::new(),
            by_addr: HashMap::new(),
        }
    }
}

/// What a datagram is, as far as routing needs to know.
#[derive(Debug, PartialEq, Eq)]
pub enum Route<K> {
    /// Known participant.
    Peer(K),
    /// A STUN request for an unknown ufrag, or media from an unknown address.
    Unknown,
}

impl<K: Copy + Eq + Hash> Demux<K> {
    pub fn add_ufrag(&mut self, ufrag: String, key: K) {
        self.by_ufrag.insert(ufrag, key);
    }

    /// Learns that `tuple` belongs to `key` (after the peer accepted a STUN request from it).
    pub fn learn_address(&mut self, tuple: FiveTuple, key: K) {
        self.by_addr.insert(tuple, key);
    }

    pub fn remove(&mut self, key: K) {
        self.by_ufrag.retain(|_, k| *k != key);
        self.by_addr.retain(|_, k| *k != key);
    }

    /// Routes a datagram: STUN by ufrag, everything else by address.
    pub fn route(&self, tuple: FiveTuple, datagram: &[u8]) -> Route<K> {
        if is_stun(datagram)
            && let Some(key) = StunMessage::parse(datagram)
                .ok()
                .as_ref()
                .and_then(StunMessage::split_username)
                .and_then(|(local, _remote)| self.by_ufrag.get(local))
        {
            return Route::Peer(*key);
        }
        match self.by_addr.get(&tuple) {
            Some(key) => Route::Peer(*key),
            None => Route::Unknown,
        }
    }

    pub fn len(&self) -> usize {
        self.by_ufrag.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_ufrag.is_empty()
    }
}

/// RFC 7983 demultiplexing: STUN messages start with a byte in 0..=3.
pub(crate) fn is_stun(datagram: &[u8]) -> bool {
    datagram.len() >= 20 && datagram[0] < 4
}

#[cfg(test)]
mod tests {
    use super::*;
    use str0m::ice::{StunMessageBuilder, TransId};

    fn tuple(port: u16) -> FiveTuple {
        (
            SocketAddr::from(([127, 0, 0, 1], port)),
            SocketAddr::from(([127, 0, 0, 1], 7882)),
        )
    }

    fn binding_request(username: &str) -> Vec<u8> {
        let msg = StunMessageBuilder::new()
            .binding()
            .request()
            .username(username)
            .prio(1)
            .build(TransId::new());
        let mut buf = vec![0; 1500];
        // The HMAC is irrelevant to routing, so a constant stands in for SHA-1.
        let n = msg
            .to_bytes(Some(b"password"), &mut buf, |_, _| [0; 20])
            .expect("fits");
        buf.truncate(n);
        buf
    }

    #[test]
    fn stun_is_routed_by_the_server_ufrag() {
        let mut demux = Demux::default();
        demux.add_ufrag("srv1".into(), 1u32);
        demux.add_ufrag("srv2".into(), 2u32);
        assert_eq!(
            demux.route(tuple(5000), &binding_request("srv2:cli")),
            Route::Peer(2)
        );
        assert_eq!(
            demux.route(tuple(5000), &binding_request("nope:cli")),
            Route::Unknown
        );
    }

    #[test]
    fn media_is_routed_by_learned_address() {
        let mut demux = Demux::default();
        demux.add_ufrag("srv1".into(), 1u32);
        let rtp = [0x80u8, 96, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0xde, 0xad];
        assert_eq!(demux.route(tuple(5000), &rtp), Route::Unknown);
        demux.learn_address(tuple(5000), 1);
        assert_eq!(demux.route(tuple(5000), &rtp), Route::Peer(1));
        demux.remove(1);
        assert_eq!(demux.route(tuple(5000), &rtp), Route::Unknown);
        assert!(demux.is_empty());
    }

    #[test]
    fn garbage_is_unknown_not_a_panic() {
        let demux: Demux<u32> = Demux::default();
        for junk in [&[][..], &[0u8; 3][..], &[1u8; 40][..], &[0xffu8; 1500][..]] {
            assert_eq!(demux.route(tuple(1), junk), Route::Unknown);
        }
    }
}
