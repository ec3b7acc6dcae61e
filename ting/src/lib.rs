//! The `ting` binary's library half: configuration and the embedded all-in-one server, so that
//! integration tests can start a real server in-process.

pub mod cluster;
pub mod config;
pub mod server;
