//! Ting's media plane: a selective forwarding unit built on str0m.
//!
//! [`Sfu`] is the sans-IO core of one shard: it owns each participant's `str0m::Rtc`, finds the
//! participant a datagram belongs to by ICE ufrag / 5-tuple lookup, forwards media between
//! participants (per-receiver simulcast layer, shared payloads), and detects the active speaker.
//! It never reads the clock or touches a socket. [`shell`] is the thin IO driver that runs a core
//! on a UDP socket and exposes it to the async signalling service through [`SfuHandle`].
//!
//! Invariant: after every call that changes a core, `poll_output` is drained until it returns
//! a timeout.

mod core;
mod demux;
pub mod layer;
mod loss_rate;
pub mod loudest;
mod metrics;
pub mod relay;
pub mod shell;
pub mod speaker;

pub use crate::core::{
    DEFAULT_MAX_SUBSCRIPTIONS, LayerKey, OfferAnswer, PeerOptions, PublishRequest, RelayControl,
    RelayMedia, RelayMessage, RemoteLayer, Sfu, SfuConfig, SfuError, SfuEvent, SfuOutput,
    SubscribeRequest,
};
pub use demux::{Demux, Route};
pub use metrics::SfuMetrics;
pub use relay::{LinkError, LinkHandler, NodeLinks};
pub use shell::{
    RelaySink, SfuHandle, Shard, ShardError, ShardRouter, ShardSockets, shard_of_room, spawn_shard,
};
