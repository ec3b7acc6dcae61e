//! Roster changes are collected per room and sent as one batch a few times a second, so a join
//! storm of N people costs (batches × members) messages instead of N²/2, and viewers only ever
//! get the headcount.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use ting_protocol::{Departure, LeaveReason, ParticipantId, ParticipantInfo, Role, ServerMessage};

/// How often pending roster changes go out.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(250);
/// Viewers learn the headcount at most this often.
const COUNT_INTERVAL: Duration = Duration::from_secs(1);
/// Size of the roster snapshot in `joined`; the rest comes with `roster_page`.
pub const FIRST_PAGE: usize = 100;
/// Largest page a client may ask for.
pub const MAX_PAGE: u32 = 500;

/// Whether others see this participant in the roster. Viewers (and hidden WHEP players) are
/// counted, not listed.
pub fn listed(role: Role, hidden: bool) -> bool {
    !hidden && role != Role::Viewer
}

/// The order rosters are shown in: hosts and moderators, then speakers, then by name.
pub fn roster_order(a: &ParticipantInfo, b: &ParticipantInfo) -> std::cmp::Ordering {
    let rank = |p: &ParticipantInfo| match p.role {
        Role::Host | Role::Moderator => 0,
        Role::Speaker => 1,
        _ => 2,
    };
    (rank(a), a.name.to_lowercase(), a.id).cmp(&(rank(b), b.name.to_lowercase(), b.id))
}

#[derive(Debug, Default)]
pub struct PendingRoster {
    joined: Vec<ParticipantId>,
    left: Vec<Departure>,
    updated: BTreeSet<ParticipantId>,
    count_changed: bool,
    count_sent: Option<Instant>,
}

/// What a flush sends: the batch for listed members, the count for viewers.
pub struct Flush {
    pub changes: Option<ServerMessage>,
    pub count: Option<ServerMessage>,
}

impl PendingRoster {
    pub fn joined(&mut self, id: ParticipantId, listed: bool) {
        self.count_changed = true;
        if listed {
            self.joined.push(id);
        }
    }

    pub fn left(&mut self, id: ParticipantId, reason: LeaveReason, listed: bool) {
        self.count_changed = true;
        if !listed {
            return;
        }
        self.updated.remove(&id);
        self.joined.retain(|j| *j != id);
        // Even when it joined within this batch: whoever joined after it has it in the roster
        // of its `joined`. The others ignore a departure of someone they never saw.
        self.left.push(Departure {
            participant_id: id,
            reason,
        });
    }

    pub fn updated(&mut self, id: ParticipantId) {
        if !self.joined.contains(&id) {
            self.updated.insert(id);
        }
    }

    /// Takes the pending changes. `info` looks up current participant state; `count` is the
    /// room's headcount.
    pub fn flush(
        &mut self,
        now: Instant,
        count: usize,
        info: impl Fn(ParticipantId) -> Option<ParticipantInfo>,
    ) -> Flush {
        let count = count as u32;
        let changes = if self.joined.is_empty() && self.left.is_empty() && self.updated.is_empty() {
            None
        } else {
            Some(ServerMessage::RosterChanged {
                joined: std::mem::take(&mut self.joined)
                    .into_iter()
                    .filter_map(&info)
                    .collect(),
                left: std::mem::take(&mut self.left),
                updated: std::mem::take(&mut self.updated)
                    .into_iter()
                    .filter_map(&info)
                    .collect(),
                count,
            })
        };
        let count_due = self
            .count_sent
            .is_none_or(|t| now.saturating_duration_since(t) >= COUNT_INTERVAL);
        let count = if self.count_changed && count_due {
            self.count_changed = false;
            self.count_sent = Some(now);
            Some(ServerMessage::RosterCount { count })
        } else {
            None
        };
        Flush { changes, count }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quick_join_and_leave_is_reported_as_a_departure_only() {
        let mut p = PendingRoster::default();
        p.joined(ParticipantId(1), true);
        p.left(ParticipantId(1), LeaveReason::Left, true);
        let flush = p.flush(Instant::now(), 0, |_| None);
        // Whoever joined in between saw participant 1 in its `joined` and must hear it left.
        let Some(ServerMessage::RosterChanged { joined, left, .. }) = flush.changes else {
            panic!("a batch: {:?}", flush.changes)
        };
        assert!(joined.is_empty());
        assert_eq!(left.len(), 1);
        assert_eq!(flush.count, Some(ServerMessage::RosterCount { count: 0 }));
    }

    #[test]
    fn viewers_change_the_count_but_are_not_listed() {
        let mut p = PendingRoster::default();
        p.joined(ParticipantId(7), false);
        let flush = p.flush(Instant::now(), 1, |_| None);
        assert!(flush.changes.is_none());
        assert!(flush.count.is_some());
    }

    #[test]
    fn the_count_goes_out_at_most_once_a_second() {
        let mut p = PendingRoster::default();
        let t0 = Instant::now();
        p.joined(ParticipantId(1), false);
        assert!(p.flush(t0, 1, |_| None).count.is_some());
        p.joined(ParticipantId(2), false);
        assert!(p.flush(t0 + FLUSH_INTERVAL, 2, |_| None).count.is_none());
        assert!(p.flush(t0 + COUNT_INTERVAL, 2, |_| None).count.is_some());
        assert!(
            p.flush(t0 + 3 * COUNT_INTERVAL, 2, |_| None)
                .count
                .is_none(),
            "nothing new"
        );
    }
}
