//! Where each participant's media is: this node's SFU, or in a cluster the SFU of another node,
//! driven over the node link. A room's signalling stays on one node (its home); its
//! participants' media may be spread over several nodes, whose SFUs relay the room's tracks to
//! each other. This plane tells every node (site) of a room about the tracks published on the
//! others, so its receivers can subscribe to them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ting_protocol::{NodeId, ParticipantId, RoomId, TrackId, TrackKind};
use ting_sfu::relay::rpc::MediaCall;
use ting_sfu::{
    NodeLinks, OfferAnswer, PeerOptions, PublishRequest, SfuError, ShardError, ShardRouter,
    SubscribeRequest,
};
use tracing::debug;

/// Which SFU carries a participant's media.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Site {
    Local,
    Remote(NodeId),
}

/// How long telling one site about a track may take.
const DECLARE_TIMEOUT: Duration = Duration::from_secs(2);

/// Telling `site` that `track`, published on `origin`, is there (or gone).
struct Declaration {
    room: RoomId,
    track: RoomTrack,
    origin: Site,
    site: Site,
    present: bool,
}

#[derive(Debug, Clone)]
struct RoomTrack {
    id: TrackId,
    owner: ParticipantId,
    kind: TrackKind,
}

#[derive(Default)]
struct RoomSites {
    /// Sites with participants of the room, in the order they joined, with how many.
    sites: Vec<(Site, usize)>,
    tracks: Vec<RoomTrack>,
}

#[derive(Default)]
struct PlaneState {
    participants: HashMap<ParticipantId, (RoomId, Site)>,
    rooms: HashMap<RoomId, RoomSites>,
}

/// Cheaply cloneable; the calls of [`ShardRouter`], routed to the participant's site.
#[derive(Clone)]
pub struct MediaPlane(Arc<Inner>);

struct Inner {
    /// This node's SFU; `None` on a signalling-only node (`ting signalling`).
    local: Option<ShardRouter>,
    links: Option<NodeLinks>,
    state: Mutex<PlaneState>,
}

impl From<ShardRouter> for MediaPlane {
    fn from(local: ShardRouter) -> Self {
        Self::new(Some(local), None)
    }
}

impl MediaPlane {
    /// `links`: in a cluster, this node's links to the others.
    pub fn new(local: Option<ShardRouter>, links: Option<NodeLinks>) -> Self {
        Self(Arc::new(Inner {
            local,
            links,
            state: Mutex::default(),
        }))
    }

    pub fn links(&self) -> Option<&NodeLinks> {
        self.0.links.as_ref()
    }

    /// This node's SFU, if it has one.
    fn local(&self) -> Result<&ShardRouter, ShardError> {
        self.0
            .local
            .as_ref()
            .ok_or(ShardError::Sfu(SfuError::Unavailable))
    }

    fn state(&self) -> MutexGuard<'_, PlaneState> {
        // Every update is a single map operation: consistent after a panic.
        self.0.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn site_of(&self, participant: ParticipantId) -> Result<Site, ShardError> {
        self.state()
            .participants
            .get(&participant)
            .map(|(_, site)| site.clone())
            .ok_or(ShardError::Sfu(SfuError::UnknownParticipant))
    }

    /// The node id a site stands for, and where it takes node links.
    fn node_of(&self, site: &Site) -> Option<(NodeId, SocketAddr)> {
        let links = self.0.links.as_ref()?;
        match site {
            Site::Local => Some((links.node().clone(), links.local_addr().ok()?)),
            Site::Remote(node) => Some((node.clone(), links.address_of(node)?)),
        }
    }

    async fn call(&self, site: &Site, call: MediaCall) -> Result<Option<OfferAnswer>, ShardError> {
        match (site, &self.0.links) {
            (Site::Remote(node), Some(links)) => links.call(node, call).await,
            _ => Err(ShardError::Sfu(SfuError::Unavailable)),
        }
    }

    /// Whether `site` carries the participant's media.
    pub fn carries(&self, site: &Site, participant: ParticipantId) -> bool {
        self.site_of(participant).is_ok_and(|s| s == *site)
    }

    /// Participants whose media is on `node`.
    pub fn participants_on(&self, node: &NodeId) -> Vec<ParticipantId> {
        let site = Site::Remote(node.clone());
        self.state()
            .participants
            .iter()
            .filter(|(_, (_, s))| *s == site)
            .map(|(p, _)| *p)
            .collect()
    }

    /// Participants whose media this plane put on `site`.
    pub fn count_on(&self, site: &Site) -> usize {
        self.state()
            .participants
            .values()
            .filter(|(_, s)| s == site)
            .count()
    }

    /// Whether room events (the active speaker) from `source` count: each node of a room
    /// detects speakers from the same audio, so one of them — the room's first site — speaks
    /// for the room, and the others cannot make the choice flap.
    pub fn speaks_for_room(&self, room: &RoomId, source: &Site) -> bool {
        self.state()
            .rooms
            .get(room)
            .and_then(|r| r.sites.first())
            .is_none_or(|(first, _)| first == source)
    }

    /// Creates the participant's media connection on `site`. A site new to the room learns
    /// the tracks already published on the room's other sites.
    pub async fn add_peer(
        &self,
        room: RoomId,
        participant: ParticipantId,
        options: PeerOptions,
        site: Site,
    ) -> Result<(), ShardError> {
        match &site {
            Site::Local => {
                self.local()?
                    .add_peer(room.clone(), participant, options)
                    .await?
            }
            Site::Remote(node) => {
                let call = MediaCall::AddPeer {
                    room: room.clone(),
                    participant,
                    options,
                };
                if let Err(e) = self.call(&site, call).await {
                    // It may have been created before the answer was lost: undo it.
                    if let Some(links) = &self.0.links {
                        links.notify(node, MediaCall::RemovePeer { participant });
                    }
                    return Err(e);
                }
            }
        }
        let (new_site, tracks) = {
            let mut state = self.state();
            state
                .participants
                .insert(participant, (room.clone(), site.clone()));
            let r = state.rooms.entry(room.clone()).or_default();
            let new_site = match r.sites.iter_mut().find(|(s, _)| *s == site) {
                Some((_, count)) => {
                    *count += 1;
                    false
                }
                None => {
                    r.sites.push((site.clone(), 1));
                    true
                }
            };
            (new_site, r.tracks.clone())
        };
        if new_site {
            let declarations = tracks
                .into_iter()
                .filter_map(|track| {
                    let origin = self.site_of(track.owner).ok()?;
                    (origin != site).then(|| Declaration {
                        room: room.clone(),
                        track,
                        origin,
                        site: site.clone(),
                        present: true,
                    })
                })
                .collect();
            self.send_declarations(declarations).await;
        }
        Ok(())
    }

    /// Tells `site` about a track published on `origin` (or that it is gone).
    async fn declare(
        &self,
        room: &RoomId,
        track: &RoomTrack,
        origin: &Site,
        site: &Site,
        present: bool,
    ) {
        let Some((origin_node, origin_addr)) = self.node_of(origin) else {
            return;
        };
        match (site, present) {
            (Site::Local, true) => {
                if let Some(local) = &self.0.local {
                    local.add_remote_track(
                        room.clone(),
                        track.id,
                        track.owner,
                        track.kind,
                        origin_node,
                    );
                }
            }
            (Site::Local, false) => {
                if let Some(local) = &self.0.local {
                    local.remove_remote_track(track.id);
                }
            }
            (Site::Remote(_), true) => {
                let call = MediaCall::AddRemoteTrack {
                    room: room.clone(),
                    track: track.id,
                    owner: track.owner,
                    kind: track.kind,
                    origin: origin_node,
                    origin_addr,
                };
                if let Err(e) = self.call(site, call).await {
                    debug!(track = %track.id, ?site, "declaring a remote track: {e}");
                }
            }
            (Site::Remote(_), false) => {
                let call = MediaCall::RemoveRemoteTrack { track: track.id };
                if let Err(e) = self.call(site, call).await {
                    debug!(track = %track.id, ?site, "removing a remote track: {e}");
                }
            }
        }
    }

    /// Records what the participant publishes now (after an offer) and tells the room's other
    /// sites what appeared and what went. Returns once they know, so that receivers told of a
    /// new track find it on their node.
    pub async fn set_tracks(&self, participant: ParticipantId, tracks: &[(TrackId, TrackKind)]) {
        let (room, origin, added, removed, sites) = {
            let mut state = self.state();
            let Some((room, origin)) = state.participants.get(&participant).cloned() else {
                return;
            };
            let Some(r) = state.rooms.get_mut(&room) else {
                return;
            };
            let removed: Vec<RoomTrack> = r
                .tracks
                .iter()
                .filter(|t| t.owner == participant && !tracks.iter().any(|(id, _)| *id == t.id))
                .cloned()
                .collect();
            let added: Vec<RoomTrack> = tracks
                .iter()
                .filter(|(id, _)| !r.tracks.iter().any(|t| t.id == *id))
                .map(|(id, kind)| RoomTrack {
                    id: *id,
                    owner: participant,
                    kind: *kind,
                })
                .collect();
            r.tracks
                .retain(|t| !removed.iter().any(|gone| gone.id == t.id));
            r.tracks.extend(added.iter().cloned());
            let sites: Vec<Site> = r
                .sites
                .iter()
                .map(|(s, _)| s.clone())
                .filter(|s| *s != origin)
                .collect();
            (room, origin, added, removed, sites)
        };
        let mut declarations = Vec::new();
        for site in &sites {
            for (track, present) in removed
                .iter()
                .map(|t| (t, false))
                .chain(added.iter().map(|t| (t, true)))
            {
                declarations.push(Declaration {
                    room: room.clone(),
                    track: track.clone(),
                    origin: origin.clone(),
                    site: site.clone(),
                    present,
                });
            }
        }
        self.send_declarations(declarations).await;
    }

    /// Tells the sites, all at once: a site that does not answer delays the others by at most
    /// [`DECLARE_TIMEOUT`].
    async fn send_declarations(&self, declarations: Vec<Declaration>) {
        let sends = declarations.into_iter().map(|d| async move {
            let declared = self.declare(&d.room, &d.track, &d.origin, &d.site, d.present);
            if tokio::time::timeout(DECLARE_TIMEOUT, declared)
                .await
                .is_err()
            {
                debug!(track = %d.track.id, site = ?d.site, "declaring a track timed out");
            }
        });
        futures_util::future::join_all(sends).await;
    }

    pub async fn offer(
        &self,
        participant: ParticipantId,
        sdp: String,
        publish: Vec<PublishRequest>,
    ) -> Result<OfferAnswer, ShardError> {
        match self.site_of(participant)? {
            Site::Local => self.local()?.offer(participant, sdp, publish).await,
            site => {
                let call = MediaCall::Offer {
                    participant,
                    sdp,
                    publish,
                };
                self.call(&site, call)
                    .await?
                    .ok_or(ShardError::Sfu(SfuError::Unavailable))
            }
        }
    }

    pub async fn subscribe(
        &self,
        participant: ParticipantId,
        subscriptions: Vec<SubscribeRequest>,
    ) -> Result<(), ShardError> {
        match self.site_of(participant)? {
            Site::Local => self.local()?.subscribe(participant, subscriptions).await,
            site => {
                let call = MediaCall::Subscribe {
                    participant,
                    subscriptions,
                };
                self.call(&site, call).await.map(|_| ())
            }
        }
    }

    pub async fn set_audio_slots(
        &self,
        participant: ParticipantId,
        mids: Vec<String>,
    ) -> Result<(), ShardError> {
        match self.site_of(participant)? {
            Site::Local => self.local()?.set_audio_slots(participant, mids).await,
            site => {
                let call = MediaCall::AudioSlots { participant, mids };
                self.call(&site, call).await.map(|_| ())
            }
        }
    }

    pub async fn add_candidate(
        &self,
        participant: ParticipantId,
        candidate: String,
    ) -> Result<(), ShardError> {
        match self.site_of(participant)? {
            Site::Local => self.local()?.add_candidate(participant, candidate).await,
            site => {
                let call = MediaCall::Candidate {
                    participant,
                    candidate,
                };
                self.call(&site, call).await.map(|_| ())
            }
        }
    }

    /// Calls that need no answer go to remote sites in order, without waiting.
    fn send(&self, site: Site, call: MediaCall) {
        if let (Site::Remote(node), Some(links)) = (&site, &self.0.links) {
            links.notify(node, call);
        }
    }

    pub fn set_muted(&self, track: TrackId, muted: bool) {
        let owner = {
            let state = self.state();
            state
                .rooms
                .values()
                .flat_map(|r| r.tracks.iter())
                .find(|t| t.id == track)
                .map(|t| t.owner)
        };
        match owner.and_then(|o| self.site_of(o).ok()) {
            Some(Site::Remote(node)) => {
                self.send(Site::Remote(node), MediaCall::SetMuted { track, muted })
            }
            _ => {
                if let Some(local) = &self.0.local {
                    local.set_muted(track, muted);
                }
            }
        }
    }

    pub fn unpublish_all(&self, participant: ParticipantId) {
        match self.site_of(participant) {
            Ok(Site::Local) => {
                if let Some(local) = &self.0.local {
                    local.unpublish_all(participant);
                }
            }
            Ok(site) => self.send(site, MediaCall::UnpublishAll { participant }),
            Err(_) => return,
        }
        let plane = self.clone();
        tokio::spawn(async move { plane.set_tracks(participant, &[]).await });
    }

    /// Removes the participant's media, and its tracks from the room's other sites. The
    /// bookkeeping changes at once (a participant arriving next on a site this one left empty
    /// finds it new and is told the room's tracks); the other sites are told in the
    /// background. A site left empty has forgotten the room: it is told to drop the room's
    /// remote tracks too.
    pub fn remove_peer(&self, participant: ParticipantId) {
        let mut declarations = Vec::new();
        let site = {
            let mut state = self.state();
            let Some((room, site)) = state.participants.remove(&participant) else {
                drop(state);
                // Never placed (or already removed): the local router ignores unknown ids.
                if let Some(local) = &self.0.local {
                    local.remove_peer(participant);
                }
                return;
            };
            let site_of: HashMap<ParticipantId, Site> = state
                .participants
                .iter()
                .map(|(p, (_, s))| (*p, s.clone()))
                .collect();
            if let Some(r) = state.rooms.get_mut(&room) {
                let (gone, kept): (Vec<RoomTrack>, Vec<RoomTrack>) =
                    r.tracks.drain(..).partition(|t| t.owner == participant);
                r.tracks = kept;
                if let Some(entry) = r.sites.iter_mut().find(|(s, _)| *s == site) {
                    entry.1 = entry.1.saturating_sub(1);
                }
                let emptied = r.sites.iter().any(|(s, n)| *s == site && *n == 0);
                r.sites.retain(|(_, count)| *count > 0);
                for other in r.sites.iter().map(|(s, _)| s).filter(|s| **s != site) {
                    for track in &gone {
                        declarations.push(Declaration {
                            room: room.clone(),
                            track: track.clone(),
                            origin: site.clone(),
                            site: other.clone(),
                            present: false,
                        });
                    }
                }
                if emptied {
                    for track in &r.tracks {
                        let Some(origin) = site_of.get(&track.owner) else {
                            continue;
                        };
                        declarations.push(Declaration {
                            room: room.clone(),
                            track: track.clone(),
                            origin: origin.clone(),
                            site: site.clone(),
                            present: false,
                        });
                    }
                }
                if r.sites.is_empty() {
                    state.rooms.remove(&room);
                }
            }
            site
        };
        match &site {
            Site::Local => {
                if let Some(local) = &self.0.local {
                    local.remove_peer(participant);
                }
            }
            remote => self.send(remote.clone(), MediaCall::RemovePeer { participant }),
        }
        if !declarations.is_empty() {
            let plane = self.clone();
            tokio::spawn(async move { plane.send_declarations(declarations).await });
        }
    }
}
