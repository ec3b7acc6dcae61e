//! Prometheus metrics of the signalling service.

use prometheus::{IntCounterVec, IntGauge, Opts, Registry};

#[derive(Clone)]
pub struct SignallingMetrics {
    pub rooms: IntGauge,
    pub participants: IntGauge,
    /// WebSocket messages by direction (`in` / `out`).
    pub messages: IntCounterVec,
    /// Errors sent to clients, by protocol error code.
    pub errors: IntCounterVec,
}

impl SignallingMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let metrics = Self {
            rooms: IntGauge::new("ting_rooms", "Rooms with at least one participant")?,
            participants: IntGauge::new("ting_participants", "Participants in all rooms")?,
            messages: IntCounterVec::new(
                Opts::new(
                    "ting_signalling_messages_total",
                    "WebSocket signalling messages",
                ),
                &["direction"],
            )?,
            errors: IntCounterVec::new(
                Opts::new(
                    "ting_signalling_errors_total",
                    "Errors sent to clients, by code",
                ),
                &["code"],
            )?,
        };
        registry.register(Box::new(metrics.rooms.clone()))?;
        registry.register(Box::new(metrics.participants.clone()))?;
        registry.register(Box::new(metrics.messages.clone()))?;
        registry.register(Box::new(metrics.errors.clone()))?;
        Ok(metrics)
    }
}
