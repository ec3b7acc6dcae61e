//! Ting's load tester: simulated participants that join a Ting server exactly like the web
//! client — join tokens, the signalling WebSocket, SDP offers — and carry real ICE, DTLS and SRTP
//! (str0m) media: Opus-sized audio with DTX pauses and VP8 simulcast at a browser's layer
//! bitrates. Every frame carries a probe (sender, sequence number, send time), so receivers
//! measure latency, loss, freezes and bitrate. Scenarios are TOML files (see `README.md`).
//!
//! Modules, one job each:
//! - [`scenario`]: scenario files and the per-participant plan;
//! - [`tokens`]: join tokens from the server's secret;
//! - [`signal`]: the signalling WebSocket client;
//! - [`roster`]: remote tracks, receive slots and the subscription list;
//! - [`media`]: synthetic audio/video and the measurement probe;
//! - [`peer`]: the str0m peer on its own UDP socket;
//! - [`participant`]: one participant's life, from join to leave;
//! - [`stats`]: histograms, loss, freezes;
//! - [`health`]: the tester's own load;
//! - [`progress`]: live counters;
//! - [`runner`]: workers, timeline and the report;
//! - [`report`]: JSON report and summary;
//! - [`cli`]: the command line;
//! - [`janus`]: the same participants against Janus' VideoRoom, for comparison;
//! - [`floor`]: the CPU cost of merely sending datagrams (`sendmmsg`), the forwarding floor;
//! - [`ws`]: the JSON WebSocket with a reader task under both signalling clients.

pub mod cli;
pub mod collab;
pub mod floor;
pub mod health;
pub mod janus;
pub mod media;
pub mod participant;
pub mod peer;
pub mod progress;
pub mod report;
pub mod roster;
pub mod runner;
pub mod scenario;
pub mod signal;
pub mod stats;
pub mod tokens;
pub mod ws;

pub use report::Report;
pub use runner::{RunConfig, Target, run};
pub use scenario::Scenario;
