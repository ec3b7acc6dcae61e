//! In-memory room state of one signalling node: who is in which room, their tracks, and the
//! outbox of each connected participant. Broadcasts are deltas sent to outboxes; nothing here
//! blocks or awaits, so the state sits behind a plain mutex.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use ting_protocol::{
    LeaveReason, ParticipantId, ParticipantInfo, RoomId, RoomSettings, ServerMessage, TrackId,
    TrackInfo, TrackKind,
};
use tokio::sync::mpsc;

use crate::roster::{PendingRoster, listed, roster_order};

pub type Outbox = mpsc::Sender<ServerMessage>;

/// Messages queued for one socket. A client that falls this far behind is disconnected (it
/// may resume and get a fresh roster) instead of making the server buffer without bound.
pub const OUTBOX_CAPACITY: usize = 512;

#[derive(Debug)]
pub struct Member {
    pub info: ParticipantInfo,
    /// Hidden members (WHEP players) are not in the roster and get no broadcasts.
    pub hidden: bool,
    pub resume_token: String,
    outbox: Option<Outbox>,
    /// Incremented on every (re)attached socket, so a stale socket's cleanup does not detach a
    /// newer one.
    generation: u64,
    /// Kinds a moderator muted; unmuting them needs the room's `allow_self_unmute`.
    pub moderator_muted: HashSet<TrackKind>,
    /// Where the participant is, from its token (cluster media placement).
    pub region: Option<String>,
    /// The room's own recorder: not a person, so not in the headcount.
    pub recorder: bool,
}

impl Member {
    pub fn new(info: ParticipantInfo, hidden: bool, resume_token: String) -> Self {
        Self {
            info,
            hidden,
            resume_token,
            outbox: None,
            generation: 0,
            moderator_muted: HashSet::new(),
            region: None,
            recorder: false,
        }
    }

    /// Whether the member had a socket that has gone away.
    pub fn socket_closed(&self) -> bool {
        self.outbox.as_ref().is_some_and(|o| o.is_closed())
    }

    /// Queues a message for this member's socket, if it has one.
    pub fn send(&self, message: ServerMessage) {
        if let Some(outbox) = &self.outbox {
            let _ = outbox.try_send(message);
        }
    }
}

/// A WHEP player following the room's active speaker or one named participant.
#[derive(Debug, Clone)]
pub struct Follower {
    pub participant: ParticipantId,
    /// Identity to follow; `None` follows the active speaker.
    pub target_identity: Option<String>,
    pub audio_mid: Option<String>,
    pub video_mid: Option<String>,
}

#[derive(Debug, Default)]
pub struct Room {
    pub members: BTreeMap<ParticipantId, Member>,
    pub active_speaker: Option<ParticipantId>,
    pub followers: Vec<Follower>,
    pub settings: RoomSettings,
    /// Waiting to be admitted: no media, no roster.
    pub lobby: BTreeMap<ParticipantId, Member>,
    /// Identities a moderator removed; they cannot rejoin this meeting.
    pub banned: HashSet<String>,
    /// Roster changes not sent yet.
    pub pending: PendingRoster,
    /// The recording running now, if any.
    pub recording: Option<crate::recording::ActiveRecording>,
    /// A moderator stopped the recording: automatic recording does not start it again.
    pub recording_stopped: bool,
}

impl Room {
    /// Sends to the room's hosts and moderators.
    pub fn tell_moderators(&self, message: &ServerMessage) {
        for member in self.members.values().filter(|m| m.info.role.moderates()) {
            member.send(message.clone());
        }
    }

    pub fn lobby_list(&self) -> Vec<ParticipantInfo> {
        self.lobby.values().map(|m| m.info.clone()).collect()
    }

    /// The roster as others see it (viewers and hidden members are counted, not listed), in
    /// display order, optionally only names containing `query`.
    /// The listed members (with `viewers`, viewers too; hidden WHEP players never), without
    /// `except`, whose name contains `query`, in roster order.
    pub fn roster(
        &self,
        except: Option<ParticipantId>,
        query: Option<&str>,
        viewers: bool,
    ) -> Vec<ParticipantInfo> {
        let query = query.map(str::to_lowercase);
        let mut roster: Vec<ParticipantInfo> = self
            .members
            .values()
            .filter(|m| listed(m.info.role, m.hidden) || (viewers && !m.hidden))
            .filter(|m| Some(m.info.id) != except)
            .filter(|m| {
                query
                    .as_ref()
                    .is_none_or(|q| m.info.name.to_lowercase().contains(q))
            })
            .map(|m| m.info.clone())
            .collect();
        roster.sort_by(roster_order);
        roster
    }

    /// Marks a member's roster entry as changed; it goes out with the next batch.
    pub fn note_updated(&mut self, participant: ParticipantId) {
        if self
            .members
            .get(&participant)
            .is_some_and(|m| listed(m.info.role, m.hidden))
        {
            self.pending.updated(participant);
        }
    }

    /// The people in the room (the recorder is not one).
    pub fn headcount(&self) -> usize {
        self.members.values().filter(|m| !m.recorder).count()
    }

    /// Sends the pending roster batch to listed members and the headcount to the others.
    /// Returns how many messages were queued.
    pub fn flush_roster(&mut self, now: Instant) -> usize {
        let headcount = self.headcount();
        let members = &self.members;
        let flush = self.pending.flush(now, headcount, |id| {
            members.get(&id).map(|m| m.info.clone())
        });
        let mut sent = 0;
        for member in self.members.values_mut() {
            // Listed members get the batch (which carries the count), or else the count.
            let message = match listed(member.info.role, member.hidden) {
                true => flush.changes.as_ref().or(flush.count.as_ref()),
                false => flush.count.as_ref(),
            };
            let Some(message) = message else {
                continue;
            };
            let mut message = message.clone();
            // A newcomer learned the roster from `joined`; it need not hear of itself.
            if let ServerMessage::RosterChanged {
                joined,
                left,
                updated,
                ..
            } = &mut message
            {
                joined.retain(|p| p.id != member.info.id);
                if joined.is_empty() && left.is_empty() && updated.is_empty() {
                    continue;
                }
            }
            let delivered = member.outbox.as_ref().map(|o| o.try_send(message).is_ok());
            match delivered {
                Some(true) => sent += 1,
                // Too far behind: cut off, as in `broadcast`.
                Some(false) => member.outbox = None,
                None => {}
            }
        }
        sent
    }

    pub fn broadcast(&mut self, message: &ServerMessage, except: Option<ParticipantId>) {
        for member in self.members.values_mut() {
            if Some(member.info.id) == except {
                continue;
            }
            let delivered = member
                .outbox
                .as_ref()
                .map(|o| o.try_send(message.clone()).is_ok());
            if delivered == Some(false) {
                // Too far behind, or the socket is going away: dropping the sender ends the
                // session's loop, which starts the resume grace period.
                member.outbox = None;
            }
        }
    }

    pub fn track(&self, track: TrackId) -> Option<&TrackInfo> {
        self.members
            .values()
            .flat_map(|m| &m.info.tracks)
            .find(|t| t.id == track)
    }
}

#[derive(Debug, Default)]
pub struct Rooms {
    rooms: HashMap<RoomId, Room>,
    index: HashMap<ParticipantId, RoomId>,
    lobby_index: HashMap<ParticipantId, RoomId>,
    by_resume_token: HashMap<String, ParticipantId>,
}

impl Rooms {
    /// The room's state, created (empty, default settings) if needed.
    pub fn room_entry(&mut self, room: &RoomId) -> &mut Room {
        self.rooms.entry(room.clone()).or_default()
    }

    /// Puts a member in the room's lobby with its socket and tells the moderators.
    pub fn add_to_lobby(&mut self, room: RoomId, mut member: Member, outbox: Outbox) {
        let id = member.info.id;
        member.outbox = Some(outbox);
        member.generation = 1;
        member.send(ServerMessage::Waiting { room: room.clone() });
        let entry = self.room_entry(&room);
        entry.lobby.insert(id, member);
        let waiting = entry.lobby_list();
        entry.tell_moderators(&ServerMessage::LobbyUpdated { waiting });
        self.lobby_index.insert(id, room);
    }

    /// Takes a member out of the lobby (to admit or deny it) and tells the moderators.
    pub fn take_from_lobby(&mut self, participant: ParticipantId) -> Option<(RoomId, Member)> {
        let room_id = self.lobby_index.remove(&participant)?;
        let room = self.rooms.get_mut(&room_id)?;
        let member = room.lobby.remove(&participant)?;
        room.tell_moderators(&ServerMessage::LobbyUpdated {
            waiting: room.lobby_list(),
        });
        if room.members.is_empty() && room.lobby.is_empty() {
            self.rooms.remove(&room_id);
        }
        Some((room_id, member))
    }

    pub fn lobby_room_of(&self, participant: ParticipantId) -> Option<&RoomId> {
        self.lobby_index.get(&participant)
    }

    pub fn room(&self, room: &RoomId) -> Option<&Room> {
        self.rooms.get(room)
    }

    pub fn room_mut(&mut self, room: &RoomId) -> Option<&mut Room> {
        self.rooms.get_mut(room)
    }

    pub fn room_of(&self, participant: ParticipantId) -> Option<&RoomId> {
        self.index.get(&participant)
    }

    pub fn member(&self, participant: ParticipantId) -> Option<&Member> {
        let room = self.index.get(&participant)?;
        self.rooms.get(room)?.members.get(&participant)
    }

    pub fn member_mut(&mut self, participant: ParticipantId) -> Option<&mut Member> {
        let room = self.index.get(&participant)?;
        self.rooms.get_mut(room)?.members.get_mut(&participant)
    }

    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    pub fn participant_count(&self) -> usize {
        self.index.len()
    }

    pub fn by_resume_token(&self, token: &str) -> Option<ParticipantId> {
        self.by_resume_token.get(token).copied()
    }

    /// Adds a member and tells the room.
    pub fn add(&mut self, room: RoomId, member: Member) {
        let id = member.info.id;
        self.by_resume_token.insert(member.resume_token.clone(), id);
        self.index.insert(id, room.clone());
        let entry = self.room_entry(&room);
        entry
            .pending
            .joined(id, listed(member.info.role, member.hidden));
        entry.members.insert(id, member);
    }

    /// Removes a member and tells the room (and the member itself, with `bye`).
    pub fn remove(
        &mut self,
        participant: ParticipantId,
        reason: LeaveReason,
    ) -> Option<(RoomId, Member)> {
        let room_id = self.index.remove(&participant)?;
        let room = self.rooms.get_mut(&room_id)?;
        let member = room.members.remove(&participant)?;
        self.by_resume_token.remove(&member.resume_token);
        room.followers.retain(|f| f.participant != participant);
        if room.active_speaker == Some(participant) {
            room.active_speaker = None;
        }
        if let Some(outbox) = &member.outbox {
            let _ = outbox.try_send(ServerMessage::Bye { reason });
        }
        room.pending
            .left(participant, reason, listed(member.info.role, member.hidden));
        if room.members.is_empty() && room.lobby.is_empty() {
            self.rooms.remove(&room_id);
        }
        Some((room_id, member))
    }

    /// Connects a socket's outbox to a member, replacing (and saying `bye` to) an older one.
    /// Returns the new generation.
    pub fn attach(&mut self, participant: ParticipantId, outbox: Outbox) -> Option<u64> {
        let member = self.member_mut(participant)?;
        if let Some(old) = member.outbox.replace(outbox) {
            let _ = old.try_send(ServerMessage::Bye {
                reason: LeaveReason::Replaced,
            });
        }
        member.generation += 1;
        Some(member.generation)
    }

    /// Disconnects a socket, unless a newer one took over. Returns whether it detached.
    pub fn detach(&mut self, participant: ParticipantId, generation: u64) -> bool {
        match self.member_mut(participant) {
            Some(m) if m.generation == generation => {
                m.outbox = None;
                true
            }
            _ => false,
        }
    }

    /// Whether the member is still detached since `generation` (no socket came back).
    pub fn still_detached(&self, participant: ParticipantId, generation: u64) -> bool {
        self.member(participant)
            .is_some_and(|m| m.generation == generation && m.outbox.is_none())
    }

    pub fn send_to(&self, participant: ParticipantId, message: ServerMessage) {
        if let Some(outbox) = self.member(participant).and_then(|m| m.outbox.as_ref()) {
            let _ = outbox.try_send(message);
        }
    }

    /// Sends every room's pending roster batch; returns how many messages were queued.
    pub fn flush_rosters(&mut self, now: Instant) -> usize {
        self.rooms.values_mut().map(|r| r.flush_roster(now)).sum()
    }

    /// Every connected outbox, for shutdown.
    /// Every room with the sockets of its members.
    pub fn outboxes_by_room(&self) -> Vec<(RoomId, Vec<Outbox>)> {
        self.rooms
            .iter()
            .map(|(id, r)| {
                let outboxes = r
                    .members
                    .values()
                    .filter_map(|m| m.outbox.clone())
                    .collect();
                (id.clone(), outboxes)
            })
            .collect()
    }

    pub fn all_participants(&self) -> Vec<ParticipantId> {
        self.index.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ting_protocol::{Departure, Role};

    fn info(id: u64) -> ParticipantInfo {
        ParticipantInfo {
            id: ParticipantId(id),
            identity: format!("user{id}"),
            name: format!("User {id}"),
            role: Role::Speaker,
            tracks: vec![],
            hand_raised: false,
        }
    }

    fn room() -> RoomId {
        RoomId::new("r").unwrap_or_else(|_| unreachable!())
    }

    fn member(id: u64, role: Role) -> Member {
        Member::new(
            ParticipantInfo { role, ..info(id) },
            false,
            format!("t{id}"),
        )
    }

    #[test]
    fn joins_and_leaves_go_out_as_one_batch() {
        let mut rooms = Rooms::default();
        let (tx1, mut rx1) = mpsc::channel(OUTBOX_CAPACITY);
        rooms.add(room(), Member::new(info(1), false, "t1".into()));
        rooms.attach(ParticipantId(1), tx1);
        rooms.flush_rosters(Instant::now());
        while rx1.try_recv().is_ok() {}
        rooms.add(room(), Member::new(info(2), false, "t2".into()));
        rooms.add(room(), Member::new(info(3), false, "t3".into()));
        rooms.remove(ParticipantId(3), LeaveReason::Left);
        assert!(rx1.try_recv().is_err(), "nothing before the flush");
        rooms.flush_rosters(Instant::now());
        let Ok(ServerMessage::RosterChanged {
            joined,
            left,
            updated,
            count,
        }) = rx1.try_recv()
        else {
            panic!("a roster batch")
        };
        assert_eq!(
            joined.iter().map(|p| p.id).collect::<Vec<_>>(),
            vec![ParticipantId(2)]
        );
        // 3 came and went within the batch; 2 joined in between and had 3 in its `joined`, so
        // the departure still goes out.
        assert_eq!(
            left,
            vec![Departure {
                participant_id: ParticipantId(3),
                reason: LeaveReason::Left
            }]
        );
        assert!(updated.is_empty());
        assert_eq!(count, 2);
        assert!(rx1.try_recv().is_err(), "one message for three changes");
    }

    #[test]
    fn hidden_members_and_viewers_are_counted_not_listed() {
        let mut rooms = Rooms::default();
        let (tx1, mut rx1) = mpsc::channel(OUTBOX_CAPACITY);
        let (tx3, mut rx3) = mpsc::channel(OUTBOX_CAPACITY);
        rooms.add(room(), Member::new(info(1), false, "t1".into()));
        rooms.attach(ParticipantId(1), tx1);
        rooms.add(room(), Member::new(info(2), true, "t2".into()));
        rooms.add(room(), member(3, Role::Viewer));
        rooms.attach(ParticipantId(3), tx3);
        rooms.add(room(), member(4, Role::Speaker));
        rooms.flush_rosters(Instant::now());
        let Ok(ServerMessage::RosterChanged { joined, count, .. }) = rx1.try_recv() else {
            panic!("a roster batch")
        };
        assert_eq!(
            (joined.iter().map(|p| p.id).collect::<Vec<_>>(), count),
            (vec![ParticipantId(4)], 4),
            "the speaker is listed; the viewer, the hidden member and oneself are not"
        );
        assert_eq!(
            rx3.try_recv().ok(),
            Some(ServerMessage::RosterCount { count: 4 })
        );
        assert_eq!(
            rooms
                .room(&room())
                .map(|r| r.roster(None, None, false).len()),
            Some(2)
        );
    }

    /// 1000 people join within a minute; batches go out every 250 ms. One message per join per
    /// participant would be 1000·999/2 ≈ 500k messages.
    fn join_storm(role_of: impl Fn(u64) -> Role) -> (usize, usize) {
        let mut rooms = Rooms::default();
        let mut receivers = Vec::new();
        let start = Instant::now();
        let mut sent = 0;
        let mut max_per_member = 0;
        for i in 0..1000u64 {
            rooms.add(room(), member(i, role_of(i)));
            let (tx, rx) = mpsc::channel(OUTBOX_CAPACITY);
            rooms.attach(ParticipantId(i), tx);
            receivers.push((rx, 0usize));
            // 60 s / 1000 joins = one join every 60 ms; flush every 250 ms.
            if i % 4 == 3 {
                let now = start + crate::roster::FLUSH_INTERVAL * (i as u32 / 4);
                sent += rooms.flush_rosters(now);
                for (rx, n) in &mut receivers {
                    while rx.try_recv().is_ok() {
                        *n += 1;
                    }
                    max_per_member = max_per_member.max(*n);
                }
            }
        }
        (sent, max_per_member)
    }

    #[test]
    fn a_join_storm_of_a_thousand_stays_within_the_message_budget() {
        // A meeting where everyone is listed: at most one batch per flush per member.
        let (sent, per_member) = join_storm(|_| Role::Attendee);
        assert!(
            per_member <= 250,
            "one batch per flush at most: {per_member}"
        );
        assert!(sent < 130_000, "{sent} messages, against ~500k unbatched");
        // A webinar: ten speakers, everyone else a viewer who only gets the count, once a second.
        let (sent, per_member) = join_storm(|i| if i < 10 { Role::Speaker } else { Role::Viewer });
        assert!(per_member <= 250);
        assert!(sent < 40_000, "{sent} messages in a webinar storm");
    }

    #[test]
    fn a_newer_socket_replaces_the_old_one() {
        let mut rooms = Rooms::default();
        rooms.add(room(), Member::new(info(1), false, "t1".into()));
        let (old_tx, mut old_rx) = mpsc::channel(OUTBOX_CAPACITY);
        let (new_tx, _new_rx) = mpsc::channel(OUTBOX_CAPACITY);
        let first = rooms.attach(ParticipantId(1), old_tx).unwrap_or_default();
        let second = rooms.attach(ParticipantId(1), new_tx).unwrap_or_default();
        assert!(matches!(
            old_rx.try_recv(),
            Ok(ServerMessage::Bye {
                reason: LeaveReason::Replaced
            })
        ));
        assert!(
            !rooms.detach(ParticipantId(1), first),
            "the stale socket cannot detach the new one"
        );
        assert!(rooms.detach(ParticipantId(1), second));
        assert!(rooms.still_detached(ParticipantId(1), second));
    }

    #[test]
    fn a_client_that_stops_reading_is_cut_off_not_buffered_forever() {
        let mut rooms = Rooms::default();
        rooms.add(room(), Member::new(info(1), false, "t1".into()));
        let (slow_tx, mut slow_rx) = mpsc::channel(OUTBOX_CAPACITY);
        let generation = rooms.attach(ParticipantId(1), slow_tx).unwrap_or_default();
        let update = ServerMessage::ActiveSpeaker {
            participant_id: None,
        };
        for _ in 0..OUTBOX_CAPACITY + 10 {
            if let Some(r) = rooms.room_mut(&room()) {
                r.broadcast(&update, None);
            }
        }
        assert!(
            rooms.still_detached(ParticipantId(1), generation),
            "the slow socket was dropped"
        );
        let mut queued = 0;
        while slow_rx.try_recv().is_ok() {
            queued += 1;
        }
        assert_eq!(
            queued, OUTBOX_CAPACITY,
            "it got what fit, in order, then its channel closed"
        );
    }

    #[test]
    fn the_last_member_leaving_removes_the_room() {
        let mut rooms = Rooms::default();
        rooms.add(room(), Member::new(info(1), false, "t1".into()));
        assert_eq!(rooms.room_count(), 1);
        rooms.remove(ParticipantId(1), LeaveReason::Left);
        assert_eq!(rooms.room_count(), 0);
        assert_eq!(rooms.by_resume_token("t1"), None);
    }
}
