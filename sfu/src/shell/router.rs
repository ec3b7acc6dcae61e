//! Several shards, one per core: rooms are spread over them by a stable hash of the room id, so
//! all of a room's media stays on one shard (one thread, no locks on the hot path) while a node's
//! rooms use all its cores. The router sends each call to the shard of the participant's room.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};

use ting_protocol::{NodeId, ParticipantId, RoomId, TrackId, TrackKind};

use super::{RelaySink, SfuHandle, ShardError};
use crate::core::{
    OfferAnswer, PeerOptions, PublishRequest, RelayControl, RelayMedia, SfuError, SubscribeRequest,
};

/// The shard (of `shards`) that carries `room`. Stable across runs and nodes.
pub fn shard_of_room(room: &RoomId, shards: usize) -> usize {
    // `DefaultHasher::new()` uses fixed keys, so the placement does not change between runs.
    let mut hasher = DefaultHasher::new();
    room.hash(&mut hasher);
    (hasher.finish() % shards.max(1) as u64) as usize
}

/// Cheap, cloneable access to all shards of a node, with the same calls as [`SfuHandle`].
#[derive(Clone)]
pub struct ShardRouter {
    shards: Arc<[SfuHandle]>,
    placement: Arc<Mutex<HashMap<ParticipantId, usize>>>,
    /// The shard of each remote track (relayed media goes where its room is).
    remote_tracks: Arc<Mutex<HashMap<TrackId, usize>>>,
}

impl ShardRouter {
    /// `None` without shards.
    pub fn new(shards: Vec<SfuHandle>) -> Option<Self> {
        (!shards.is_empty()).then(|| Self {
            shards: shards.into(),
            placement: Arc::default(),
            remote_tracks: Arc::default(),
        })
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    fn placement(&self) -> MutexGuard<'_, HashMap<ParticipantId, usize>> {
        // Every update is a single insert or remove: the map stays consistent after a panic.
        self.placement.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn shard(&self, participant: ParticipantId) -> Result<&SfuHandle, ShardError> {
        let index = self
            .placement()
            .get(&participant)
            .copied()
            .ok_or(ShardError::Sfu(SfuError::UnknownParticipant))?;
        self.shards
            .get(index)
            .ok_or(ShardError::Sfu(SfuError::UnknownParticipant))
    }

    pub async fn add_peer(
        &self,
        room: RoomId,
        participant: ParticipantId,
        options: PeerOptions,
    ) -> Result<(), ShardError> {
        let index = shard_of_room(&room, self.shards.len());
        self.placement().insert(participant, index);
        let result = match self.shards.get(index) {
            Some(shard) => shard.add_peer(room, participant, options).await,
            None => Err(ShardError::Stopped),
        };
        if result.is_err() {
            self.placement().remove(&participant);
        }
        result
    }

    pub async fn offer(
        &self,
        participant: ParticipantId,
        sdp: String,
        publish: Vec<PublishRequest>,
    ) -> Result<OfferAnswer, ShardError> {
        self.shard(participant)?
            .offer(participant, sdp, publish)
            .await
    }

    pub async fn subscribe(
        &self,
        participant: ParticipantId,
        subscriptions: Vec<SubscribeRequest>,
    ) -> Result<(), ShardError> {
        self.shard(participant)?
            .subscribe(participant, subscriptions)
            .await
    }

    pub async fn set_audio_slots(
        &self,
        participant: ParticipantId,
        mids: Vec<String>,
    ) -> Result<(), ShardError> {
        self.shard(participant)?
            .set_audio_slots(participant, mids)
            .await
    }

    pub async fn add_candidate(
        &self,
        participant: ParticipantId,
        candidate: String,
    ) -> Result<(), ShardError> {
        self.shard(participant)?
            .add_candidate(participant, candidate)
            .await
    }

    /// Mutes are rare and tracks do not say their shard: every shard is told, the one with
    /// the track acts.
    pub fn set_muted(&self, track: TrackId, muted: bool) {
        for shard in self.shards.iter() {
            shard.set_muted(track, muted);
        }
    }

    pub fn unpublish_all(&self, participant: ParticipantId) {
        if let Ok(shard) = self.shard(participant) {
            shard.unpublish_all(participant);
        }
    }

    pub fn remove_peer(&self, participant: ParticipantId) {
        let index = self.placement().remove(&participant);
        if let Some(shard) = index.and_then(|i| self.shards.get(i)) {
            shard.remove_peer(participant);
        }
    }

    fn remote_tracks(&self) -> MutexGuard<'_, HashMap<TrackId, usize>> {
        self.remote_tracks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where every shard's messages for other nodes go.
    pub fn set_relay(&self, sink: Arc<dyn RelaySink>) {
        for shard in self.shards.iter() {
            shard.set_relay(sink.clone());
        }
    }

    /// Declares a track published on node `origin` to the shard of its room here.
    pub fn add_remote_track(
        &self,
        room: RoomId,
        track: TrackId,
        owner: ParticipantId,
        kind: TrackKind,
        origin: NodeId,
    ) {
        let index = shard_of_room(&room, self.shards.len());
        self.remote_tracks().insert(track, index);
        if let Some(shard) = self.shards.get(index) {
            shard.add_remote_track(room, track, owner, kind, origin);
        }
    }

    pub fn remove_remote_track(&self, track: TrackId) {
        let index = self.remote_tracks().remove(&track);
        if let Some(shard) = index.and_then(|i| self.shards.get(i)) {
            shard.remove_remote_track(track);
        }
    }

    /// A relayed packet, for the shard of its track's room; dropped for unknown tracks.
    /// `false` when its shard's queue was full and the packet was dropped.
    pub fn relay_media(&self, from: NodeId, media: RelayMedia) -> bool {
        let index = self.remote_tracks().get(&media.track).copied();
        match index.and_then(|i| self.shards.get(i)) {
            Some(shard) => shard.relay_media(from, media),
            None => true,
        }
    }

    /// Relay control is rare (a few messages per track and second): every shard is told, the
    /// one with the track acts.
    pub fn relay_control(&self, from: NodeId, control: RelayControl) {
        for shard in self.shards.iter() {
            shard.relay_control(from.clone(), control.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(name: &str) -> RoomId {
        RoomId::new(name).unwrap()
    }

    #[test]
    fn rooms_spread_over_the_shards_and_stay_put() {
        let names: Vec<String> = (0..64).map(|i| format!("room-{i}")).collect();
        let placed: Vec<usize> = names.iter().map(|n| shard_of_room(&room(n), 4)).collect();
        assert!(placed.iter().all(|&s| s < 4));
        for shard in 0..4 {
            assert!(
                placed.contains(&shard),
                "shard {shard} gets rooms: {placed:?}"
            );
        }
        // Same answer every time.
        let again: Vec<usize> = names.iter().map(|n| shard_of_room(&room(n), 4)).collect();
        assert_eq!(placed, again);
        assert_eq!(shard_of_room(&room("x"), 1), 0);
        assert_eq!(shard_of_room(&room("x"), 0), 0);
    }

    #[test]
    fn a_router_needs_a_shard() {
        assert!(ShardRouter::new(Vec::new()).is_none());
    }
}
