//! Moderation: hands, roles, muting others, removal, room settings and the lobby. Every action
//! is checked here, on the server, against the actor's role — the web client's hidden buttons
//! are a convenience, not the protection.

use ting_protocol::{
    ErrorCode, LeaveReason, ModerationAction, ParticipantId, Role, RoomId, ServerMessage, TrackKind,
};
use tracing::info;

use crate::hub::{Hub, HubError};
use crate::rooms::Rooms;
use crate::roster::listed;

fn not_allowed(message: &str) -> HubError {
    HubError::new(ErrorCode::NotAllowed, message)
}

fn unknown_participant() -> HubError {
    HubError::new(ErrorCode::BadMessage, "no such participant in this room")
}

/// Whether `actor` may moderate `target`: hosts moderate everyone but other hosts; moderators
/// moderate everyone who does not moderate.
fn outranks(actor: Role, target: Role) -> bool {
    match actor {
        Role::Host => target != Role::Host,
        Role::Moderator => !target.moderates(),
        _ => false,
    }
}

/// The actor's room and role, if the actor moderates.
fn moderator(rooms: &Rooms, actor: ParticipantId) -> Result<(RoomId, Role), HubError> {
    let member = rooms
        .member(actor)
        .ok_or_else(|| HubError::new(ErrorCode::NotJoined, "this session is not in a room"))?;
    if !member.info.role.moderates() {
        return Err(not_allowed("only hosts and moderators may do this"));
    }
    let room = rooms
        .room_of(actor)
        .cloned()
        .ok_or_else(unknown_participant)?;
    Ok((room, member.info.role))
}

/// The target's role, if it is in the actor's room and the actor outranks it.
fn target_role(
    rooms: &Rooms,
    room: &RoomId,
    actor_role: Role,
    target: ParticipantId,
) -> Result<Role, HubError> {
    if rooms.room_of(target) != Some(room) {
        return Err(unknown_participant());
    }
    let role = rooms
        .member(target)
        .map(|m| m.info.role)
        .ok_or_else(unknown_participant)?;
    if !outranks(actor_role, role) {
        return Err(not_allowed(
            "you cannot moderate someone of equal or higher rank",
        ));
    }
    Ok(role)
}

impl Hub {
    pub fn raise_hand(&self, participant: ParticipantId, raised: bool) -> Result<(), HubError> {
        let mut rooms = self.rooms();
        let room = rooms
            .room_of(participant)
            .cloned()
            .ok_or_else(|| HubError::new(ErrorCode::NotJoined, "this session is not in a room"))?;
        let member = rooms
            .member_mut(participant)
            .ok_or_else(|| HubError::new(ErrorCode::NotJoined, "this session is not in a room"))?;
        member.info.hand_raised = raised;
        if let Some(r) = rooms.room_mut(&room) {
            r.note_updated(participant);
        }
        Ok(())
    }

    /// Changes a participant's role. Nobody becomes host by message (hosts come from tokens);
    /// only hosts appoint moderators. Losing the right to publish unpublishes the tracks.
    pub fn set_role(
        &self,
        actor: ParticipantId,
        target: ParticipantId,
        role: Role,
    ) -> Result<(), HubError> {
        let mut rooms = self.rooms();
        let (room, actor_role) = moderator(&rooms, actor)?;
        target_role(&rooms, &room, actor_role, target)?;
        if role == Role::Host || (role == Role::Moderator && actor_role != Role::Host) {
            return Err(not_allowed(
                "this role can only be given in a join token or by a host",
            ));
        }
        let member = rooms.member_mut(target).ok_or_else(unknown_participant)?;
        let old_role = std::mem::replace(&mut member.info.role, role);
        let hidden = member.hidden;
        member.info.hand_raised = false;
        let gone = if role.may_publish() {
            Vec::new()
        } else {
            std::mem::take(&mut member.info.tracks)
        };
        member.send(ServerMessage::Moderated {
            action: ModerationAction::RoleChanged,
            kind: None,
            role: Some(role),
            by: actor,
        });
        if let Some(r) = rooms.room_mut(&room) {
            for track in &gone {
                r.broadcast(
                    &ServerMessage::TrackUnpublished {
                        track_id: track.id,
                        participant_id: target,
                    },
                    None,
                );
            }
            if role.moderates()
                && let Some(m) = r.members.get(&target)
            {
                m.send(ServerMessage::LobbyUpdated {
                    waiting: r.lobby_list(),
                });
            }
            // Becoming or ceasing to be a viewer moves the participant into or out of the list.
            let was_listed = listed(old_role, hidden);
            match (was_listed, listed(role, hidden)) {
                (true, true) => r.note_updated(target),
                (false, true) => r.pending.joined(target, true),
                (true, false) => r.pending.left(target, LeaveReason::Left, true),
                (false, false) => {}
            }
        }
        if !gone.is_empty() {
            self.sfu().unpublish_all(target);
        }
        info!(room = %room, participant = %target, ?role, by = %actor, "role changed");
        drop(rooms);
        self.refresh_followers(&room);
        Ok(())
    }

    /// Mutes (or, with `muted: false`, allows to unmute) one participant's audio or video.
    pub fn mute_participant(
        &self,
        actor: ParticipantId,
        target: ParticipantId,
        kind: TrackKind,
        muted: bool,
    ) -> Result<(), HubError> {
        let mut rooms = self.rooms();
        let (room, actor_role) = moderator(&rooms, actor)?;
        target_role(&rooms, &room, actor_role, target)?;
        self.apply_moderator_mute(&mut rooms, &room, actor, target, kind, muted);
        Ok(())
    }

    /// Mutes everybody's audio (or video) except hosts and moderators.
    pub fn mute_all(&self, actor: ParticipantId, kind: TrackKind) -> Result<(), HubError> {
        let mut rooms = self.rooms();
        let (room, actor_role) = moderator(&rooms, actor)?;
        let targets: Vec<ParticipantId> = rooms
            .room(&room)
            .map(|r| {
                r.members
                    .values()
                    .filter(|m| {
                        !m.hidden && !m.info.role.moderates() && outranks(actor_role, m.info.role)
                    })
                    .map(|m| m.info.id)
                    .collect()
            })
            .unwrap_or_default();
        for target in targets {
            self.apply_moderator_mute(&mut rooms, &room, actor, target, kind, true);
        }
        Ok(())
    }

    fn apply_moderator_mute(
        &self,
        rooms: &mut Rooms,
        room: &RoomId,
        actor: ParticipantId,
        target: ParticipantId,
        kind: TrackKind,
        muted: bool,
    ) {
        let Some(member) = rooms.member_mut(target) else {
            return;
        };
        let action = if muted {
            member.moderator_muted.insert(kind);
            ModerationAction::Muted
        } else {
            member.moderator_muted.remove(&kind);
            ModerationAction::UnmuteAllowed
        };
        let mut updates = Vec::new();
        if muted {
            for track in member
                .info
                .tracks
                .iter_mut()
                .filter(|t| t.kind == kind && !t.muted)
            {
                track.muted = true;
                self.sfu().set_muted(track.id, true);
                updates.push(ServerMessage::TrackUpdated {
                    track: track.clone(),
                });
            }
        }
        let notice = ServerMessage::Moderated {
            action,
            kind: Some(kind),
            by: actor,
            role: None,
        };
        // Track states first, so the notice finds the client's state already updated.
        if let Some(r) = rooms.room_mut(room) {
            for update in &updates {
                r.broadcast(update, None);
            }
        }
        if let Some(member) = rooms.member(target) {
            member.send(notice);
        }
    }

    /// Removes a participant; its identity cannot rejoin this meeting.
    pub fn remove_participant(
        &self,
        actor: ParticipantId,
        target: ParticipantId,
    ) -> Result<(), HubError> {
        {
            let mut rooms = self.rooms();
            let (room, actor_role) = moderator(&rooms, actor)?;
            target_role(&rooms, &room, actor_role, target)?;
            let identity = rooms
                .member(target)
                .map(|m| m.info.identity.clone())
                .unwrap_or_default();
            rooms.room_entry(&room).banned.insert(identity);
            info!(room = %room, participant = %target, by = %actor, "removed");
        }
        self.leave(target, LeaveReason::Removed);
        Ok(())
    }

    pub fn update_room(
        &self,
        actor: ParticipantId,
        locked: Option<bool>,
        lobby: Option<bool>,
        allow_self_unmute: Option<bool>,
    ) -> Result<(), HubError> {
        let waiting: Vec<ParticipantId> = {
            let mut rooms = self.rooms();
            let (room, _) = moderator(&rooms, actor)?;
            let r = rooms.room_entry(&room);
            let settings = &mut r.settings;
            settings.locked = locked.unwrap_or(settings.locked);
            settings.lobby = lobby.unwrap_or(settings.lobby);
            settings.allow_self_unmute = allow_self_unmute.unwrap_or(settings.allow_self_unmute);
            let settings = r.settings;
            r.broadcast(&ServerMessage::RoomUpdated { settings }, None);
            // Turning the lobby off lets everybody waiting in.
            if settings.lobby {
                Vec::new()
            } else {
                r.lobby.keys().copied().collect()
            }
        };
        for participant in waiting {
            self.admit_unchecked(participant);
        }
        Ok(())
    }

    /// Lets a participant in from the lobby: it gets its media connection and `joined`.
    pub fn admit(&self, actor: ParticipantId, target: ParticipantId) -> Result<(), HubError> {
        self.check_lobby_action(actor, target)?;
        self.admit_unchecked(target);
        Ok(())
    }

    pub fn deny(&self, actor: ParticipantId, target: ParticipantId) -> Result<(), HubError> {
        self.check_lobby_action(actor, target)?;
        if let Some((_, member)) = self.rooms().take_from_lobby(target) {
            member.send(ServerMessage::Bye {
                reason: LeaveReason::Denied,
            });
        }
        Ok(())
    }

    fn check_lobby_action(
        &self,
        actor: ParticipantId,
        target: ParticipantId,
    ) -> Result<(), HubError> {
        let rooms = self.rooms();
        let (room, _) = moderator(&rooms, actor)?;
        if rooms.lobby_room_of(target) != Some(&room) {
            return Err(HubError::new(
                ErrorCode::BadMessage,
                "nobody with that id waits in the lobby",
            ));
        }
        Ok(())
    }

    fn admit_unchecked(&self, target: ParticipantId) {
        let hub = self.clone();
        // Creating the media connection is a call to the shard; do it off the caller's path.
        tokio::spawn(async move {
            let Some((room, member)) = hub.rooms().take_from_lobby(target) else {
                return;
            };
            let options = crate::hub::media_options(member.info.role);
            let site = hub.place_media(member.region.as_deref()).await;
            if let Err(e) = hub
                .sfu()
                .add_peer(room.clone(), target, options, site)
                .await
            {
                member.send(ServerMessage::Error {
                    code: ErrorCode::Unavailable,
                    message: e.to_string(),
                });
                return;
            }
            hub.publish_placement(target, &room);
            let socket_gone = member.socket_closed();
            {
                let mut rooms = hub.rooms();
                rooms.add(room.clone(), member);
                hub.send_joined(&rooms, target, false);
                hub.update_gauges(&rooms);
            }
            info!(room = %room, participant = %target, "admitted");
            if socket_gone {
                // The socket dropped while being admitted; nothing would ever clean this up.
                hub.leave(target, LeaveReason::Disconnected);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_decides_who_may_moderate_whom() {
        assert!(outranks(Role::Host, Role::Moderator));
        assert!(!outranks(Role::Host, Role::Host));
        assert!(outranks(Role::Moderator, Role::Attendee));
        assert!(!outranks(Role::Moderator, Role::Moderator));
        assert!(!outranks(Role::Moderator, Role::Host));
        assert!(!outranks(Role::Speaker, Role::Attendee));
        assert!(!outranks(Role::Attendee, Role::Viewer));
    }
}
