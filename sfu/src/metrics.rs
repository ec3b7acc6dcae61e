//! Prometheus metrics of the media plane. Counters are atomics, so the sans-IO core may bump
//! them without doing IO.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

#[derive(Clone)]
pub struct SfuMetrics {
    pub peers: IntGauge,
    pub tracks: IntGauge,
    /// UDP datagrams and bytes, by direction (`in` / `out`).
    pub datagrams: IntCounterVec,
    pub bytes: IntCounterVec,
    /// `datagrams` and `bytes` resolved once: they are counted per packet, where a label
    /// lookup would cost a hash each time.
    pub datagrams_in: IntCounter,
    pub datagrams_out: IntCounter,
    pub bytes_in: IntCounter,
    pub bytes_out: IntCounter,
    /// Datagrams no participant claims (unknown ufrag or address) or that do not parse.
    pub unroutable: IntCounter,
    /// Media packets forwarded to subscribers (one per subscriber).
    pub packets_forwarded: IntCounter,
    /// NACKs and PLIs/FIRs, by direction: `in` = received from subscribers, `out` = sent to
    /// publishers.
    pub nacks: IntCounterVec,
    pub keyframe_requests: IntCounterVec,
    /// Loss fraction per stream and stats interval, by direction (`in`: publisher → node,
    /// `out`: node → subscriber, as reported back by the subscriber).
    pub loss_ratio: HistogramVec,
    pub layer_switches: IntCounter,
    /// Datagrams the kernel would not take (full send buffer) or refused.
    pub send_dropped: IntCounter,
    /// Peer timers handled: str0m's pacing, BWE, RTCP and ICE work that is paid per peer, not
    /// per packet.
    pub peer_timeouts: IntCounter,
    /// Time spent per iteration of a shard's loop, in seconds.
    pub loop_seconds: Histogram,
    /// Media relayed between nodes, by direction and peer node: what crosses each node pair.
    pub relay_packets: IntCounterVec,
    pub relay_bytes: IntCounterVec,
    /// Relayed packets asked for again after loss between nodes.
    pub relay_nacks: IntCounter,
    /// Relayed packets dropped: no link to the node yet, too large, or the shard behind.
    pub relay_dropped: IntCounter,
    /// From a packet's arrival at its origin node to its arrival in the far node's shard.
    pub relay_hop_seconds: Histogram,
}

impl SfuMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let by_direction =
            |name: &str, help: &str| IntCounterVec::new(Opts::new(name, help), &["direction"]);
        let datagrams = by_direction("ting_sfu_datagrams_total", "UDP datagrams")?;
        let bytes = by_direction("ting_sfu_bytes_total", "UDP payload bytes")?;
        let metrics = Self {
            datagrams_in: datagrams.with_label_values(&["in"]),
            datagrams_out: datagrams.with_label_values(&["out"]),
            bytes_in: bytes.with_label_values(&["in"]),
            bytes_out: bytes.with_label_values(&["out"]),
            datagrams,
            bytes,
            peers: IntGauge::new("ting_sfu_peers", "Peer connections on this node")?,
            tracks: IntGauge::new("ting_sfu_tracks", "Published tracks on this node")?,
            unroutable: IntCounter::new(
                "ting_sfu_unroutable_datagrams_total",
                "Datagrams dropped: unknown sender or unparseable",
            )?,
            packets_forwarded: IntCounter::new(
                "ting_sfu_packets_forwarded_total",
                "Media RTP packets written to subscribers",
            )?,
            nacks: by_direction("ting_sfu_nacks_total", "RTCP NACKs")?,
            keyframe_requests: by_direction(
                "ting_sfu_keyframe_requests_total",
                "RTCP PLI/FIR keyframe requests",
            )?,
            loss_ratio: HistogramVec::new(
                HistogramOpts::new("ting_sfu_loss_ratio", "Packet loss fraction per stream")
                    .buckets(vec![0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5]),
                &["direction"],
            )?,
            layer_switches: IntCounter::new(
                "ting_sfu_layer_switches_total",
                "Simulcast layer switches for subscribers",
            )?,
            send_dropped: IntCounter::new(
                "ting_sfu_send_dropped_total",
                "Outgoing datagrams the kernel refused (full send buffer, unreachable)",
            )?,
            peer_timeouts: IntCounter::new(
                "ting_sfu_peer_timeouts_total",
                "Peer connection timers handled",
            )?,
            loop_seconds: Histogram::with_opts(
                HistogramOpts::new("ting_sfu_loop_seconds", "Time per shard loop iteration")
                    .buckets(vec![1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2]),
            )?,
            relay_packets: IntCounterVec::new(
                Opts::new(
                    "ting_relay_packets_total",
                    "Media packets relayed between nodes",
                ),
                &["direction", "peer"],
            )?,
            relay_bytes: IntCounterVec::new(
                Opts::new(
                    "ting_relay_bytes_total",
                    "Bytes of relayed media datagrams between nodes",
                ),
                &["direction", "peer"],
            )?,
            relay_nacks: IntCounter::new(
                "ting_relay_nacks_total",
                "Relayed packets lost between nodes and asked for again",
            )?,
            relay_dropped: IntCounter::new(
                "ting_relay_dropped_total",
                "Relayed packets dropped: no link to the node, too large, or the shard's queue full",
            )?,
            relay_hop_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "ting_relay_hop_seconds",
                    "Time from the origin node to the far node's shard per relayed packet",
                )
                .buckets(vec![1e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1]),
            )?,
        };
        registry.register(Box::new(metrics.relay_packets.clone()))?;
        registry.register(Box::new(metrics.relay_bytes.clone()))?;
        registry.register(Box::new(metrics.relay_nacks.clone()))?;
        registry.register(Box::new(metrics.relay_dropped.clone()))?;
        registry.register(Box::new(metrics.relay_hop_seconds.clone()))?;
        registry.register(Box::new(metrics.peers.clone()))?;
        registry.register(Box::new(metrics.tracks.clone()))?;
        registry.register(Box::new(metrics.datagrams.clone()))?;
        registry.register(Box::new(metrics.bytes.clone()))?;
        registry.register(Box::new(metrics.unroutable.clone()))?;
        registry.register(Box::new(metrics.packets_forwarded.clone()))?;
        registry.register(Box::new(metrics.nacks.clone()))?;
        registry.register(Box::new(metrics.keyframe_requests.clone()))?;
        registry.register(Box::new(metrics.loss_ratio.clone()))?;
        registry.register(Box::new(metrics.layer_switches.clone()))?;
        registry.register(Box::new(metrics.peer_timeouts.clone()))?;
        registry.register(Box::new(metrics.send_dropped.clone()))?;
        registry.register(Box::new(metrics.loop_seconds.clone()))?;
        Ok(metrics)
    }

    /// Metrics registered nowhere, for tests and tools.
    pub fn unregistered() -> Self {
        // Registering into a throwaway registry cannot fail: the names are fixed and unique.
        #[allow(clippy::expect_used)]
        Self::new(&Registry::new()).expect("metric definitions are valid")
    }
}
