//! The signalling node's shared state and the operations sessions, WHIP/WHEP and SFU events
//! perform on it. Room state changes happen under one short mutex; SFU calls are awaited
//! outside it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use prometheus::Registry;
use rand::Rng;
use ting_protocol::NodeId;
use ting_protocol::{
    ErrorCode, LeaveReason, PROTOCOL_VERSION, ParticipantId, ParticipantInfo, PublishedTrack, Role,
    RoomId, ServerMessage, Subscription, TrackId, TrackInfo, TrackKind, TrackSource,
};
use ting_sfu::{
    LinkHandler, PeerOptions, PublishRequest, SfuError, SfuEvent, ShardError, SubscribeRequest,
};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info};

use crate::cluster::{ClusterLink, websocket_url};
use crate::media::{MediaPlane, Site};
use crate::metrics::SignallingMetrics;
use crate::rooms::{Follower, Member, Outbox, Rooms};
use crate::roster::{FIRST_PAGE, FLUSH_INTERVAL, MAX_PAGE};
use crate::token::{Claims, TokenKeys};

#[derive(Debug, Clone)]
pub struct SignallingConfig {
    /// Let the landing page mint tokens for any room name.
    pub quick_start: bool,
    /// How long a participant whose socket dropped is kept for a resume.
    pub resume_grace: Duration,
    /// How long a new socket may take to send `join`.
    pub join_timeout: Duration,
    /// Lifetime of quick-start tokens.
    pub quick_start_ttl: Duration,
    /// The first participant id this node gives out; in a cluster each node starts in a range
    /// of its own, so that ids are unique across the cluster.
    pub first_participant_id: u64,
    /// Every meeting is recorded from its first publisher on (a moderator may stop it).
    pub auto_record: bool,
}

impl Default for SignallingConfig {
    fn default() -> Self {
        Self {
            quick_start: true,
            resume_grace: Duration::from_secs(30),
            join_timeout: Duration::from_secs(10),
            quick_start_ttl: Duration::from_secs(12 * 3600),
            first_participant_id: 1,
            auto_record: false,
        }
    }
}

/// An error a client can act on: a protocol code and a message to show.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct HubError {
    pub code: ErrorCode,
    pub message: String,
}

impl HubError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl From<ShardError> for HubError {
    fn from(e: ShardError) -> Self {
        let code = match &e {
            ShardError::Stopped | ShardError::Sfu(SfuError::Unavailable) => ErrorCode::Unavailable,
            ShardError::Sfu(SfuError::InvalidSdp(_)) => ErrorCode::InvalidSdp,
            ShardError::Sfu(SfuError::UnknownTrack(_)) => ErrorCode::UnknownTrack,
            ShardError::Sfu(SfuError::UnknownParticipant) => ErrorCode::NotJoined,
            ShardError::Sfu(SfuError::DuplicateParticipant) => ErrorCode::AlreadyJoined,
            ShardError::Sfu(SfuError::InvalidSubscription(_) | SfuError::InvalidCandidate(_)) => {
                ErrorCode::BadMessage
            }
            ShardError::Sfu(SfuError::TooManySubscriptions { .. }) => ErrorCode::TooManyStreams,
        };
        Self::new(code, e.to_string())
    }
}

/// Cheaply cloneable handle to the node's signalling state.
#[derive(Clone)]
pub struct Hub(Arc<Inner>);

struct Inner {
    config: SignallingConfig,
    keys: TokenKeys,
    sfu: MediaPlane,
    rooms: Mutex<Rooms>,
    registry: Registry,
    metrics: SignallingMetrics,
    next_participant: AtomicU64,
    next_track: AtomicU64,
    shutdown: CancellationToken,
    sessions: TaskTracker,
    /// Cluster mode: placement of new participants and the directory of who is here.
    cluster: Option<ClusterLink>,
    /// Chat, whiteboards, boards and files, when this node has a database for them.
    collab: std::sync::OnceLock<ting_collab::Collab>,
    /// Where recordings go, when this node records.
    recording: std::sync::OnceLock<crate::recording::RecordingConfig>,
}

impl Hub {
    pub fn new(
        config: SignallingConfig,
        keys: TokenKeys,
        sfu: impl Into<MediaPlane>,
        registry: Registry,
        cluster: Option<ClusterLink>,
    ) -> prometheus::Result<Self> {
        let metrics = SignallingMetrics::new(&registry)?;
        let first_participant = config.first_participant_id.max(1);
        let sfu = sfu.into();
        let hub = Self(Arc::new(Inner {
            cluster,
            config,
            keys,
            sfu,
            rooms: Mutex::new(Rooms::default()),
            registry,
            metrics,
            next_participant: AtomicU64::new(first_participant),
            // Tracks of rooms from several nodes meet in one SFU: their ids come from the
            // node's cluster-unique range too.
            next_track: AtomicU64::new(first_participant),
            shutdown: CancellationToken::new(),
            sessions: TaskTracker::new(),
            collab: std::sync::OnceLock::new(),
            recording: std::sync::OnceLock::new(),
        }));
        if let Some(links) = hub.0.sfu.links() {
            links.set_handler(Arc::new(hub.clone()));
        }
        Ok(hub)
    }

    pub fn config(&self) -> &SignallingConfig {
        &self.0.config
    }

    /// Turns the collaboration add-ons on (once, at start).
    pub fn set_collab(&self, collab: ting_collab::Collab) {
        let _ = self.0.collab.set(collab);
    }

    pub fn collab(&self) -> Option<&ting_collab::Collab> {
        self.0.collab.get()
    }

    /// Turns recording on for this node (once, at start).
    pub fn set_recording_config(&self, config: crate::recording::RecordingConfig) {
        let _ = self.0.recording.set(config);
    }

    pub fn recording_config(&self) -> Option<&crate::recording::RecordingConfig> {
        self.0.recording.get()
    }

    pub fn keys(&self) -> &TokenKeys {
        &self.0.keys
    }

    pub fn registry(&self) -> &Registry {
        &self.0.registry
    }

    pub fn metrics(&self) -> &SignallingMetrics {
        &self.0.metrics
    }

    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.0.shutdown
    }

    pub fn sessions(&self) -> &TaskTracker {
        &self.0.sessions
    }

    pub fn media_links(&self) -> Option<&ting_sfu::NodeLinks> {
        self.0.sfu.links()
    }

    pub(crate) fn sfu(&self) -> &MediaPlane {
        &self.0.sfu
    }

    /// Which SFU takes a new participant's media (in `region`, if given and a node there has
    /// room): this node's unless it is full or elsewhere (cluster).
    pub(crate) async fn place_media(&self, region: Option<&str>) -> Site {
        let (Some(cluster), Some(links)) = (&self.0.cluster, self.0.sfu.links()) else {
            return Site::Local;
        };
        let plane = &self.0.sfu;
        let local = plane.count_on(&Site::Local) as u32;
        let placed_on = |node: &NodeId| {
            if *node == cluster.node {
                local
            } else {
                plane.count_on(&Site::Remote(node.clone())) as u32
            }
        };
        match cluster.media_node(placed_on, region).await {
            Some(status) => {
                if let Some(addr) = status.relay_addr {
                    links.learn(&status.id, addr);
                }
                Site::Remote(status.id)
            }
            None => Site::Local,
        }
    }

    /// In cluster mode, the base URL of the node a new participant of `room` should join
    /// instead of this one.
    pub async fn placed_elsewhere(&self, room: &RoomId) -> Option<String> {
        match &self.0.cluster {
            Some(cluster) => cluster.elsewhere(room).await,
            None => None,
        }
    }

    /// Tells the cluster (if any) that the participant's media is on this node now.
    pub(crate) fn publish_placement(&self, participant: ParticipantId, room: &RoomId) {
        if let Some(cluster) = &self.0.cluster {
            cluster.directory.joined(participant, room.clone());
        }
    }

    pub(crate) fn rooms(&self) -> MutexGuard<'_, Rooms> {
        // A panic while holding the lock would be a bug elsewhere; the state itself stays
        // consistent because every update is a single insert/remove.
        self.0
            .rooms
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn update_gauges(&self, rooms: &Rooms) {
        self.0.metrics.rooms.set(rooms.room_count() as i64);
        self.0
            .metrics
            .participants
            .set(rooms.participant_count() as i64);
    }

    /// Adds a participant to its room and creates its media connection — or, when the room's
    /// lobby is on, puts it in the lobby until a moderator admits it. `outbox` is `None` for
    /// WHIP/WHEP sessions, which have no socket (they are set up by token holders and skip the
    /// lobby).
    pub async fn join(
        &self,
        claims: &Claims,
        hidden: bool,
        outbox: Option<Outbox>,
    ) -> Result<(ParticipantId, u64), HubError> {
        if self.0.shutdown.is_cancelled() {
            return Err(HubError::new(
                ErrorCode::Unavailable,
                "the server is shutting down",
            ));
        }
        if claims.file.is_some() {
            return Err(HubError::new(
                ErrorCode::NotAllowed,
                "a file download link cannot join a meeting",
            ));
        }
        let id = ParticipantId(self.0.next_participant.fetch_add(1, Ordering::Relaxed));
        let info = ParticipantInfo {
            id,
            identity: claims.sub.clone(),
            name: claims.name.clone(),
            role: claims.role,
            tracks: Vec::new(),
            hand_raised: false,
        };
        let mut member = Member::new(info, hidden, random_token());
        member.recorder = hidden && claims.sub == crate::recording::RECORDER_IDENTITY;
        member.region = claims.region.clone();
        {
            let mut rooms = self.rooms();
            let settings = rooms
                .room(&claims.room)
                .map(|r| (r.settings, r.banned.contains(&claims.sub)));
            let (settings, banned) = settings.unwrap_or_default();
            if banned {
                return Err(HubError::new(
                    ErrorCode::NotAllowed,
                    "you were removed from this meeting",
                ));
            }
            if settings.locked && !claims.role.moderates() {
                return Err(HubError::new(
                    ErrorCode::RoomLocked,
                    "the meeting is locked",
                ));
            }
            if let Some(outbox) = outbox
                .clone()
                .filter(|_| settings.lobby && !claims.role.moderates())
            {
                rooms.add_to_lobby(claims.room.clone(), member, outbox);
                info!(room = %claims.room, participant = %id, "waiting in the lobby");
                return Ok((id, 1));
            }
        }
        let site = self.place_media(claims.region.as_deref()).await;
        self.0
            .sfu
            .add_peer(claims.room.clone(), id, media_options(claims.role), site)
            .await?;
        self.publish_placement(id, &claims.room);
        let mut rooms = self.rooms();
        rooms.add(claims.room.clone(), member);
        let generation = match outbox {
            Some(outbox) => {
                let generation = rooms.attach(id, outbox).unwrap_or_default();
                self.send_joined(&rooms, id, false);
                generation
            }
            None => 0,
        };
        self.update_gauges(&rooms);
        info!(room = %claims.room, participant = %id, "joined");
        Ok((id, generation))
    }

    /// Re-attaches a socket to a participant whose earlier socket dropped.
    pub fn resume(
        &self,
        resume_token: &str,
        claims: &Claims,
        outbox: Outbox,
    ) -> Result<(ParticipantId, u64), HubError> {
        let mut rooms = self.rooms();
        let failed = || {
            HubError::new(
                ErrorCode::ResumeFailed,
                "that session has ended; join again",
            )
        };
        let id = rooms.by_resume_token(resume_token).ok_or_else(failed)?;
        let same_user = rooms
            .member(id)
            .is_some_and(|m| m.info.identity == claims.sub)
            && rooms.room_of(id) == Some(&claims.room);
        if !same_user {
            return Err(failed());
        }
        let generation = rooms.attach(id, outbox).ok_or_else(failed)?;
        self.send_joined(&rooms, id, true);
        info!(participant = %id, "resumed");
        Ok((id, generation))
    }

    /// Queues `joined` for a member that was just added or attached.
    pub(crate) fn send_joined(&self, rooms: &Rooms, id: ParticipantId, resumed: bool) {
        let Some(room_id) = rooms.room_of(id) else {
            return;
        };
        let (Some(room), Some(member)) = (rooms.room(room_id), rooms.member(id)) else {
            return;
        };
        let joined = ServerMessage::Joined {
            version: PROTOCOL_VERSION,
            room: room_id.clone(),
            participant: member.info.clone(),
            resumed,
            resume_token: member.resume_token.clone(),
            resume_grace_secs: self.0.config.resume_grace.as_secs() as u32,
            participants: room
                .roster(Some(id), None, false)
                .into_iter()
                .take(FIRST_PAGE)
                .collect(),
            participant_count: room.headcount() as u32,
            active_speaker: room.active_speaker,
            settings: room.settings,
            lobby: if member.info.role.moderates() {
                room.lobby_list()
            } else {
                Vec::new()
            },
        };
        rooms.send_to(id, joined);
    }

    /// The socket of `participant` went away without `leave`: keep the participant for the grace
    /// period, then remove it unless a socket came back.
    pub fn socket_lost(&self, participant: ParticipantId, generation: u64) {
        {
            let mut rooms = self.rooms();
            if rooms.lobby_room_of(participant).is_some() {
                // Nobody waits in a lobby without a socket.
                rooms.take_from_lobby(participant);
                return;
            }
            if !rooms.detach(participant, generation) {
                return;
            }
        }
        debug!(participant = %participant, "socket lost; waiting for a resume");
        let hub = self.clone();
        let grace = self.0.config.resume_grace;
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            let expired = hub.rooms().still_detached(participant, generation);
            if expired {
                hub.leave(participant, LeaveReason::Disconnected);
            }
        });
    }

    /// Removes a participant (telling the room) and its media.
    pub fn leave(&self, participant: ParticipantId, reason: LeaveReason) {
        let removed = {
            let mut rooms = self.rooms();
            if let Some((_, member)) = rooms.take_from_lobby(participant) {
                member.send(ServerMessage::Bye { reason });
                return;
            }
            let removed = rooms.remove(participant, reason);
            self.update_gauges(&rooms);
            removed
        };
        self.0.sfu.remove_peer(participant);
        if let Some((room, _)) = removed {
            if let Some(cluster) = &self.0.cluster {
                cluster.directory.left(participant);
            }
            info!(room = %room, participant = %participant, ?reason, "left");
            self.refresh_followers(&room);
            self.recording_after_departure(&room);
        }
    }

    /// Applies an SDP offer; `tracks` is the full list of what the participant publishes.
    pub async fn offer(
        &self,
        participant: ParticipantId,
        sdp: String,
        tracks: Vec<PublishedTrack>,
    ) -> Result<ServerMessage, HubError> {
        let (role, existing, forced_mute) = {
            let rooms = self.rooms();
            let member = rooms.member(participant).ok_or_else(not_joined)?;
            let allow_self_unmute = rooms
                .room_of(participant)
                .and_then(|r| rooms.room(r))
                .is_none_or(|r| r.settings.allow_self_unmute);
            // New tracks of a kind a moderator muted start muted when the room forbids unmuting.
            let forced = if allow_self_unmute {
                Default::default()
            } else {
                member.moderator_muted.clone()
            };
            (member.info.role, member.info.tracks.clone(), forced)
        };
        if !tracks.is_empty() && !role.may_publish() {
            return Err(HubError::new(
                ErrorCode::NotAllowed,
                format!("the role {role:?} may not publish; ask a moderator"),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = tracks.iter().find(|t| !seen.insert(&t.mid)) {
            return Err(HubError::new(
                ErrorCode::BadMessage,
                format!("m-line {} listed twice", dup.mid),
            ));
        }
        let mut next: Vec<TrackInfo> = tracks
            .iter()
            .map(|t| {
                let kept = existing
                    .iter()
                    .find(|e| e.mid == t.mid && e.source == t.source);
                TrackInfo {
                    id: kept.map(|e| e.id).unwrap_or_else(|| self.new_track_id()),
                    participant_id: participant,
                    mid: t.mid.clone(),
                    kind: t.source.kind(),
                    source: t.source,
                    // A kept track keeps its state; a new one starts muted if a moderator
                    // muted its kind and the room forbids unmuting.
                    muted: match kept {
                        Some(e) => e.muted,
                        None => t.muted || forced_mute.contains(&t.source.kind()),
                    },
                }
            })
            .collect();
        let publish = next
            .iter()
            .map(|t| PublishRequest {
                mid: t.mid.clone(),
                track_id: t.id,
                kind: t.kind,
                muted: t.muted,
            })
            .collect();
        let answer = self.0.sfu.offer(participant, sdp, publish).await?;
        next.retain(|t| !answer.rejected_tracks.iter().any(|(mid, _)| *mid == t.mid));
        // The room's other nodes learn the tracks before anyone is told to subscribe to them.
        let published: Vec<(TrackId, TrackKind)> = next.iter().map(|t| (t.id, t.kind)).collect();
        self.0.sfu.set_tracks(participant, &published).await;

        let room = {
            let mut rooms = self.rooms();
            let room = rooms.room_of(participant).cloned().ok_or_else(not_joined)?;
            let member = rooms.member_mut(participant).ok_or_else(not_joined)?;
            let old = std::mem::replace(&mut member.info.tracks, next.clone());
            let hidden = member.hidden;
            if let Some(r) = rooms.room_mut(&room).filter(|_| !hidden) {
                for gone in old.iter().filter(|o| !next.iter().any(|n| n.id == o.id)) {
                    r.broadcast(
                        &ServerMessage::TrackUnpublished {
                            track_id: gone.id,
                            participant_id: participant,
                        },
                        Some(participant),
                    );
                }
                for new in next.iter().filter(|n| !old.iter().any(|o| o.id == n.id)) {
                    r.broadcast(
                        &ServerMessage::TrackPublished { track: new.clone() },
                        Some(participant),
                    );
                }
            }
            room
        };
        self.refresh_followers(&room);
        if !next.is_empty() {
            let publisher = self
                .rooms()
                .member(participant)
                .filter(|m| !m.hidden)
                .map(|m| m.info.identity.clone());
            if let Some(identity) = publisher {
                let auto_start = self.0.config.auto_record
                    && self
                        .rooms()
                        .room(&room)
                        .is_some_and(|r| r.recording.is_none() && !r.recording_stopped);
                if auto_start {
                    if let Err(e) = self.set_room_recording(&room, true) {
                        tracing::warn!(%room, "automatic recording not started: {}", e.message);
                    }
                } else {
                    self.record_participant(&room, &identity);
                }
            }
        }
        if let Some((mid, why)) = answer.rejected_tracks.first() {
            // The answer still applies; the client learns which declared track was ignored.
            let rooms = self.rooms();
            rooms.send_to(
                participant,
                ServerMessage::Error {
                    code: ErrorCode::BadMessage,
                    message: format!("track on m-line {mid} not published: {why}"),
                },
            );
        }
        Ok(ServerMessage::Answer {
            sdp: answer.sdp,
            tracks: next,
        })
    }

    /// A page of the roster as the participant sees it, optionally filtered by name.
    pub fn roster_page(
        &self,
        participant: ParticipantId,
        offset: u32,
        limit: u32,
        query: Option<String>,
        viewers: bool,
    ) -> Result<ServerMessage, HubError> {
        let rooms = self.rooms();
        let room = rooms
            .room_of(participant)
            .and_then(|r| rooms.room(r))
            .ok_or_else(not_joined)?;
        if viewers
            && !rooms
                .member(participant)
                .is_some_and(|m| m.info.role.moderates())
        {
            return Err(HubError::new(
                ErrorCode::NotAllowed,
                "only hosts and moderators may list viewers",
            ));
        }
        let all = room.roster(Some(participant), query.as_deref(), viewers);
        let participants = all
            .iter()
            .skip(offset as usize)
            .take(limit.min(MAX_PAGE) as usize)
            .cloned()
            .collect();
        Ok(ServerMessage::RosterPage {
            participants,
            total: all.len() as u32,
            offset,
        })
    }

    /// Sends pending roster batches every `FLUSH_INTERVAL` until shutdown.
    pub async fn flush_rosters_until_shutdown(self) {
        let mut ticks = tokio::time::interval(FLUSH_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = self.0.shutdown.cancelled() => return,
            }
            self.rooms().flush_rosters(std::time::Instant::now());
        }
    }

    /// Lets the server fill these audio m-lines with the room's loudest speakers.
    pub async fn set_audio_slots(
        &self,
        participant: ParticipantId,
        mids: Vec<String>,
    ) -> Result<(), HubError> {
        if self.rooms().member(participant).is_none() {
            return Err(not_joined());
        }
        Ok(self.0.sfu.set_audio_slots(participant, mids).await?)
    }

    /// Applies the subscriptions to tracks of the participant's room; unknown tracks (for
    /// example one unpublished a moment ago) are reported but do not stop the others.
    pub async fn subscribe(
        &self,
        participant: ParticipantId,
        subscriptions: Vec<Subscription>,
    ) -> Result<(), HubError> {
        let (known, unknown): (Vec<Subscription>, Vec<Subscription>) = {
            let rooms = self.rooms();
            let room_id = rooms.room_of(participant).ok_or_else(not_joined)?;
            let room = rooms.room(room_id).ok_or_else(not_joined)?;
            subscriptions
                .into_iter()
                .partition(|s| room.track(s.track_id).is_some())
        };
        let requests = known
            .into_iter()
            .map(|s| SubscribeRequest {
                track_id: s.track_id,
                mid: s.mid,
                max_height: s.max_height,
            })
            .collect();
        self.0.sfu.subscribe(participant, requests).await?;
        match unknown.first() {
            None => Ok(()),
            Some(s) => Err(HubError::new(
                ErrorCode::UnknownTrack,
                format!(
                    "no track {} in this room; the other subscriptions apply",
                    s.track_id.0
                ),
            )),
        }
    }

    pub fn mute(
        &self,
        participant: ParticipantId,
        track: TrackId,
        muted: bool,
    ) -> Result<(), HubError> {
        let mut rooms = self.rooms();
        let room = rooms.room_of(participant).cloned().ok_or_else(not_joined)?;
        let allow_self_unmute = rooms
            .room(&room)
            .is_none_or(|r| r.settings.allow_self_unmute);
        let member = rooms.member_mut(participant).ok_or_else(not_joined)?;
        let info = member
            .info
            .tracks
            .iter_mut()
            .find(|t| t.id == track)
            .ok_or_else(|| HubError::new(ErrorCode::UnknownTrack, "you have no such track"))?;
        if !muted && !allow_self_unmute && member.moderator_muted.contains(&info.kind) {
            return Err(HubError::new(
                ErrorCode::NotAllowed,
                "a moderator muted you; raise your hand to ask to speak",
            ));
        }
        info.muted = muted;
        let update = ServerMessage::TrackUpdated {
            track: info.clone(),
        };
        self.0.sfu.set_muted(track, muted);
        if let Some(r) = rooms.room_mut(&room) {
            r.broadcast(&update, None);
        }
        Ok(())
    }

    pub async fn add_candidate(
        &self,
        participant: ParticipantId,
        candidate: String,
    ) -> Result<(), HubError> {
        if candidate.trim().is_empty() {
            // End of candidates: nothing to do.
            return Ok(());
        }
        Ok(self.0.sfu.add_candidate(participant, candidate).await?)
    }

    /// Reacts to this node's SFU.
    pub fn on_sfu_event(&self, event: SfuEvent) {
        self.on_media_event(&Site::Local, event);
    }

    /// Reacts to the SFU of `source`.
    fn on_media_event(&self, source: &Site, event: SfuEvent) {
        if let SfuEvent::ActiveSpeaker { room, .. } = &event
            && !self.0.sfu.speaks_for_room(room, source)
        {
            return;
        }
        match event {
            SfuEvent::Connected { participant } => {
                debug!(participant = %participant, "media connected")
            }
            SfuEvent::Closed { participant } => self.leave(participant, LeaveReason::MediaFailed),
            SfuEvent::LayersWanted {
                participant,
                track,
                active,
            } => {
                self.rooms().send_to(
                    participant,
                    ServerMessage::PublishLayers {
                        track_id: track,
                        active,
                    },
                );
            }
            SfuEvent::ActiveSpeaker { room, participant } => {
                {
                    let mut rooms = self.rooms();
                    let Some(r) = rooms.room_mut(&room) else {
                        return;
                    };
                    if r.active_speaker == participant {
                        return;
                    }
                    r.active_speaker = participant;
                    r.broadcast(
                        &ServerMessage::ActiveSpeaker {
                            participant_id: participant,
                        },
                        None,
                    );
                }
                self.refresh_followers(&room);
            }
        }
    }

    /// Adds a WHEP player that follows `target_identity` (or the active speaker).
    pub fn add_follower(&self, room: &RoomId, follower: Follower) {
        if let Some(r) = self.rooms().room_mut(room) {
            r.followers.push(follower);
        }
        self.refresh_followers(room);
    }

    /// Points every WHEP player of the room at what it should show now.
    pub(crate) fn refresh_followers(&self, room: &RoomId) {
        let plans: Vec<(ParticipantId, Vec<SubscribeRequest>)> = {
            let rooms = self.rooms();
            let Some(r) = rooms.room(room) else {
                return;
            };
            r.followers
                .iter()
                .map(|f| {
                    let visible = |m: &&Member| !m.hidden && !m.info.tracks.is_empty();
                    let target = match &f.target_identity {
                        Some(identity) => r
                            .members
                            .values()
                            .filter(visible)
                            .find(|m| &m.info.identity == identity),
                        None => r
                            .active_speaker
                            .and_then(|s| r.members.get(&s))
                            .filter(visible)
                            .or_else(|| r.members.values().find(visible)),
                    };
                    let mut subs = Vec::new();
                    if let Some(target) = target {
                        let pick = |kind: TrackKind, preferred: TrackSource| {
                            let of_kind =
                                || target.info.tracks.iter().filter(move |t| t.kind == kind);
                            of_kind()
                                .find(|t| t.source == preferred)
                                .or_else(|| of_kind().next())
                        };
                        if let (Some(mid), Some(t)) = (
                            &f.audio_mid,
                            pick(TrackKind::Audio, TrackSource::Microphone),
                        ) {
                            subs.push(SubscribeRequest {
                                track_id: t.id,
                                mid: mid.clone(),
                                max_height: None,
                            });
                        }
                        if let (Some(mid), Some(t)) =
                            (&f.video_mid, pick(TrackKind::Video, TrackSource::Screen))
                        {
                            subs.push(SubscribeRequest {
                                track_id: t.id,
                                mid: mid.clone(),
                                max_height: None,
                            });
                        }
                    }
                    (f.participant, subs)
                })
                .collect()
        };
        for (participant, subs) in plans {
            let sfu = self.0.sfu.clone();
            tokio::spawn(async move {
                if let Err(e) = sfu.subscribe(participant, subs).await {
                    debug!(participant = %participant, "follower subscription: {e}");
                }
            });
        }
    }

    /// Stops accepting joins and tells every client the server is going away. In a cluster each
    /// meeting is handed over to another node first and its participants get `moved` (they
    /// rejoin there); meetings no node can take end with `bye`.
    pub async fn shutdown(&self) {
        self.0.shutdown.cancel();
        let rooms = self.rooms().outboxes_by_room();
        if let Some(cluster) = &self.0.cluster {
            cluster.draining.store(true, Ordering::Relaxed);
        }
        let sizes: Vec<(RoomId, u32)> = rooms
            .iter()
            .map(|(room, outboxes)| (room.clone(), outboxes.len() as u32))
            .collect();
        let targets = match &self.0.cluster {
            Some(cluster) => cluster.hand_over(&sizes).await,
            None => vec![None; rooms.len()],
        };
        for ((room, outboxes), moved) in rooms.into_iter().zip(targets) {
            let message = match moved {
                Some(url) => {
                    info!(room = %room, %url, "meeting handed over to another node");
                    ServerMessage::Moved { url }
                }
                None => ServerMessage::Bye {
                    reason: LeaveReason::ServerShutdown,
                },
            };
            for outbox in outboxes {
                let _ = outbox.try_send(message.clone());
            }
        }
        let participants = self.rooms().all_participants();
        for participant in participants {
            self.0.sfu.remove_peer(participant);
        }
    }

    pub fn room_of(&self, participant: ParticipantId) -> Option<RoomId> {
        self.rooms().room_of(participant).cloned()
    }

    /// Whether a moderator removed `identity` from the meeting in `room` (while the room
    /// lives).
    pub fn is_banned(&self, room: &RoomId, identity: &str) -> bool {
        self.rooms()
            .room(room)
            .is_some_and(|r| r.banned.contains(identity))
    }

    /// Whether the participant waits in the lobby.
    pub fn in_lobby(&self, participant: ParticipantId) -> bool {
        self.rooms().lobby_room_of(participant).is_some()
    }

    /// A participant's current role (it may have changed since the token was issued).
    pub fn role_of(&self, participant: ParticipantId) -> Option<Role> {
        self.rooms().member(participant).map(|m| m.info.role)
    }

    /// A participant's identity and name (for the audit log).
    pub fn who(&self, participant: ParticipantId) -> Option<String> {
        let rooms = self.rooms();
        let member = rooms.member(participant)?;
        Some(format!("{} ({})", member.info.identity, member.info.name))
    }

    fn new_track_id(&self) -> TrackId {
        TrackId(self.0.next_track.fetch_add(1, Ordering::Relaxed))
    }
}

impl LinkHandler for Hub {
    fn event(&self, from: &NodeId, event: SfuEvent) {
        let source = Site::Remote(from.clone());
        // A node speaks only for the participants whose media it carries.
        let about = match &event {
            SfuEvent::Connected { participant }
            | SfuEvent::Closed { participant }
            | SfuEvent::LayersWanted { participant, .. } => Some(*participant),
            SfuEvent::ActiveSpeaker { .. } => None,
        };
        if let Some(participant) = about
            && !self.0.sfu.carries(&source, participant)
        {
            debug!(%from, participant = %participant, "event from a node that does not carry the participant");
            return;
        }
        self.on_media_event(&source, event);
    }

    /// The node carrying some participants' media is gone: they rejoin (here, and are placed
    /// on a node that works), as after a `moved`.
    fn link_lost(&self, node: &NodeId) {
        let stranded = self.0.sfu.participants_on(node);
        if stranded.is_empty() {
            return;
        }
        let url = self.0.cluster.as_ref().map(|c| websocket_url(&c.http_url));
        info!(%node, participants = stranded.len(), "media node lost; its participants rejoin");
        for participant in stranded {
            if let Some(url) = &url {
                self.rooms()
                    .send_to(participant, ServerMessage::Moved { url: url.clone() });
            }
            self.leave(participant, LeaveReason::MediaFailed);
        }
    }
}

fn not_joined() -> HubError {
    HubError::new(ErrorCode::NotJoined, "this session is not in a room")
}

/// 128 random bits, hex encoded.
pub fn random_token() -> String {
    let bytes: [u8; 16] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// How a participant's media connection is set up, by role: viewers, the receive-only crowd
/// of a webinar, go without send-side bandwidth estimation (see `PeerOptions`).
pub(crate) fn media_options(role: Role) -> PeerOptions {
    PeerOptions {
        estimate_bandwidth: role != Role::Viewer,
    }
}
