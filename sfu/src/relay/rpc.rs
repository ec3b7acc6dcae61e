//! The media calls a signalling node makes on the SFU of another node (whose media a
//! participant uses), carried over the node link.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use ting_protocol::{NodeId, ParticipantId, RoomId, TrackId, TrackKind};

use crate::core::{OfferAnswer, PeerOptions, PublishRequest, SfuError, SubscribeRequest};
use crate::shell::{ShardError, ShardRouter};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "call", rename_all = "snake_case")]
pub enum MediaCall {
    AddPeer {
        room: RoomId,
        participant: ParticipantId,
        options: PeerOptions,
    },
    Offer {
        participant: ParticipantId,
        sdp: String,
        publish: Vec<PublishRequest>,
    },
    Subscribe {
        participant: ParticipantId,
        subscriptions: Vec<SubscribeRequest>,
    },
    AudioSlots {
        participant: ParticipantId,
        mids: Vec<String>,
    },
    Candidate {
        participant: ParticipantId,
        candidate: String,
    },
    SetMuted {
        track: TrackId,
        muted: bool,
    },
    UnpublishAll {
        participant: ParticipantId,
    },
    RemovePeer {
        participant: ParticipantId,
    },
    /// A track of the room published on `origin` (reachable at `origin_addr`).
    AddRemoteTrack {
        room: RoomId,
        track: TrackId,
        owner: ParticipantId,
        kind: TrackKind,
        origin: NodeId,
        origin_addr: SocketAddr,
    },
    RemoveRemoteTrack {
        track: TrackId,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum MediaReply {
    Done,
    Answer { answer: OfferAnswer },
    Failed { error: SfuError },
}

impl MediaReply {
    pub fn into_result(self) -> Result<Option<OfferAnswer>, ShardError> {
        match self {
            Self::Done => Ok(None),
            Self::Answer { answer } => Ok(Some(answer)),
            Self::Failed { error } => Err(ShardError::Sfu(error)),
        }
    }
}

/// Carries out a call from another node on this node's shards.
pub async fn serve(router: &ShardRouter, call: MediaCall) -> MediaReply {
    let done = |r: Result<(), ShardError>| match r {
        Ok(()) => MediaReply::Done,
        Err(ShardError::Sfu(error)) => MediaReply::Failed { error },
        Err(_) => MediaReply::Failed {
            error: SfuError::Unavailable,
        },
    };
    match call {
        MediaCall::AddPeer {
            room,
            participant,
            options,
        } => done(router.add_peer(room, participant, options).await),
        MediaCall::Offer {
            participant,
            sdp,
            publish,
        } => match router.offer(participant, sdp, publish).await {
            Ok(answer) => MediaReply::Answer { answer },
            Err(e) => done(Err(e)),
        },
        MediaCall::Subscribe {
            participant,
            subscriptions,
        } => done(router.subscribe(participant, subscriptions).await),
        MediaCall::AudioSlots { participant, mids } => {
            done(router.set_audio_slots(participant, mids).await)
        }
        MediaCall::Candidate {
            participant,
            candidate,
        } => done(router.add_candidate(participant, candidate).await),
        MediaCall::SetMuted { track, muted } => {
            router.set_muted(track, muted);
            MediaReply::Done
        }
        MediaCall::UnpublishAll { participant } => {
            router.unpublish_all(participant);
            MediaReply::Done
        }
        MediaCall::RemovePeer { participant } => {
            router.remove_peer(participant);
            MediaReply::Done
        }
        MediaCall::AddRemoteTrack {
            room,
            track,
            owner,
            kind,
            origin,
            origin_addr: _,
        } => {
            router.add_remote_track(room, track, owner, kind, origin);
            MediaReply::Done
        }
        MediaCall::RemoveRemoteTrack { track } => {
            router.remove_remote_track(track);
            MediaReply::Done
        }
    }
}
