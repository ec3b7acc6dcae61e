//! In-memory room state of one signalling node: who is in which room, their tracks, and the
//! outbox of each connected participant. Broadcasts are deltas sent to outboxes; nothing here
//! blocks or awaits, so the state sits behind a plain mutex.

use std::collections::{BTreeMap, HashMap, HashSet};

use ting_protocol::{
    LeaveReason, ParticipantId, ParticipantInfo, RoomId, RoomSettings, ServerMessage, TrackId,
    TrackInfo, TrackKind,
};
use tokio::sync::mpsc;

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

    /// The roster as others see it.
    pub fn roster(&self, except: Option<ParticipantId>) -> Vec<ParticipantInfo> {
        self.members
            .values()
            .filter(|m| !m.hidden && Some(m.info.id) != except)
            .map(|m| m.info.clone())
            .collect()
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
        if !member.hidden {
            entry.broadcast(
                &ServerMessage::ParticipantJoined {
                    participant: member.info.clone(),
                },
                None,
            );
        }
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
        if !member.hidden {
            room.broadcast(
                &ServerMessage::ParticipantLeft {
                    participant_id: participant,
                    reason,
                },
                None,
            );
        }
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

    /// Every connected outbox, for shutdown.
    pub fn all_outboxes(&self) -> Vec<Outbox> {
        self.rooms
            .values()
            .flat_map(|r| r.members.values())
            .filter_map(|m| m.outbox.clone())
            .collect()
    }

    pub fn all_participants(&self) -> Vec<ParticipantId> {
        self.index.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ting_protocol::Role;

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

    #[test]
    fn joins_and_leaves_are_broadcast_as_deltas() {
        let mut rooms = Rooms::default();
        let (tx1, mut rx1) = mpsc::channel(OUTBOX_CAPACITY);
        rooms.add(room(), Member::new(info(1), false, "t1".into()));
        rooms.attach(ParticipantId(1), tx1);
        rooms.add(room(), Member::new(info(2), false, "t2".into()));
        assert!(
            matches!(rx1.try_recv(), Ok(ServerMessage::ParticipantJoined { participant }) if participant.id == ParticipantId(2))
        );
        rooms.remove(ParticipantId(2), LeaveReason::Left);
        assert!(matches!(
            rx1.try_recv(),
            Ok(ServerMessage::ParticipantLeft {
                participant_id: ParticipantId(2),
                ..
            })
        ));
        assert!(rx1.try_recv().is_err(), "nothing else is sent");
        assert_eq!(rooms.participant_count(), 1);
    }

    #[test]
    fn hidden_members_are_not_announced_or_listed() {
        let mut rooms = Rooms::default();
        let (tx1, mut rx1) = mpsc::channel(OUTBOX_CAPACITY);
        rooms.add(room(), Member::new(info(1), false, "t1".into()));
        rooms.attach(ParticipantId(1), tx1);
        rooms.add(room(), Member::new(info(2), true, "t2".into()));
        assert!(rx1.try_recv().is_err());
        assert_eq!(rooms.room(&room()).map(|r| r.roster(None).len()), Some(1));
        rooms.remove(ParticipantId(2), LeaveReason::Left);
        assert!(rx1.try_recv().is_err());
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
        for i in 0..OUTBOX_CAPACITY as u64 + 10 {
            rooms.add(room(), Member::new(info(100 + i), false, format!("t{i}")));
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
