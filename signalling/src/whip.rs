//! WHIP (RFC 9725) ingest and WHEP playback: one HTTP POST with an SDP offer creates a session,
//! DELETE on its `Location` ends it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{OriginalUri, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use ting_protocol::{
    ErrorCode, LeaveReason, ParticipantId, PublishedTrack, RoomId, ServerMessage, TrackKind,
    TrackSource,
};

use crate::http::{ApiError, AppState};
use crate::rooms::Follower;
use crate::sdp_summary::media_sections;
use crate::token::Claims;

/// Live WHIP/WHEP sessions by their id (the last segment of `Location`).
#[derive(Default, Clone)]
pub struct HttpSessions(Arc<Mutex<HashMap<String, HttpSession>>>);

#[derive(Debug, Clone)]
struct HttpSession {
    room: RoomId,
    participant: ParticipantId,
    identity: String,
}

impl HttpSessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HttpSession>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Debug, Deserialize)]
pub struct WhepQuery {
    /// Identity of the participant to watch; default: the active speaker.
    participant: Option<String>,
}

pub async fn whip_post(
    State(state): State<AppState>,
    Path(room): Path<String>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: String,
) -> Result<Response, ApiError> {
    let (room, claims) = authorize(&state, &room, &headers)?;
    if let Some(moved) = moved_elsewhere(&state, &room, &uri).await {
        return Ok(moved);
    }
    require_sdp(&headers)?;
    if !claims.role.may_publish() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::NotAllowed,
            "this token's role may not publish",
        ));
    }
    let tracks: Vec<PublishedTrack> = media_sections(&body)
        .into_iter()
        .filter(|s| s.sends)
        .filter_map(|s| {
            let source = match s.kind? {
                TrackKind::Audio => TrackSource::Microphone,
                TrackKind::Video => TrackSource::Camera,
            };
            Some(PublishedTrack {
                mid: s.mid?,
                source,
                muted: false,
            })
        })
        .collect();
    if tracks.is_empty() {
        return Err(ApiError::bad_sdp("the offer sends no audio or video"));
    }
    create_session(&state, "whip", room, claims, false, body, tracks, None).await
}

pub async fn whep_post(
    State(state): State<AppState>,
    Path(room): Path<String>,
    OriginalUri(uri): OriginalUri,
    Query(query): Query<WhepQuery>,
    headers: HeaderMap,
    body: String,
) -> Result<Response, ApiError> {
    let (room, claims) = authorize(&state, &room, &headers)?;
    if let Some(moved) = moved_elsewhere(&state, &room, &uri).await {
        return Ok(moved);
    }
    require_sdp(&headers)?;
    let sections = media_sections(&body);
    let receiving = |kind| {
        sections
            .iter()
            .find(|s| s.kind == Some(kind) && s.receives)
            .and_then(|s| s.mid.clone())
    };
    let (audio_mid, video_mid) = (receiving(TrackKind::Audio), receiving(TrackKind::Video));
    if audio_mid.is_none() && video_mid.is_none() {
        return Err(ApiError::bad_sdp("the offer receives no audio or video"));
    }
    let follow = (query.participant, audio_mid, video_mid);
    create_session(
        &state,
        "whep",
        room,
        claims,
        true,
        body,
        Vec::new(),
        Some(follow),
    )
    .await
}

/// In a cluster the room may be served by another node: send the client there with the same
/// request (a 307 keeps the method and body; RFC 9725 §4.5 allows it for load balancing).
async fn moved_elsewhere(state: &AppState, room: &RoomId, uri: &Uri) -> Option<Response> {
    let node = state.hub.placed_elsewhere(room).await?;
    let target = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    let location = format!("{}{target}", node.trim_end_matches('/'));
    Some(
        (
            StatusCode::TEMPORARY_REDIRECT,
            [(header::LOCATION, location)],
        )
            .into_response(),
    )
}

#[allow(clippy::too_many_arguments)]
async fn create_session(
    state: &AppState,
    kind: &str,
    room: RoomId,
    claims: Claims,
    hidden: bool,
    offer: String,
    tracks: Vec<PublishedTrack>,
    follow: Option<(Option<String>, Option<String>, Option<String>)>,
) -> Result<Response, ApiError> {
    let hub = &state.hub;
    let (participant, _) = hub
        .join(&claims, hidden, None)
        .await
        .map_err(ApiError::from_hub)?;
    let answer = match hub.offer(participant, offer, tracks).await {
        Ok(ServerMessage::Answer { sdp, .. }) => sdp,
        Ok(_) => unreachable!("offer answers with an answer"),
        Err(e) => {
            hub.leave(participant, LeaveReason::Left);
            return Err(ApiError::from_hub(e));
        }
    };
    if let Some((target_identity, audio_mid, video_mid)) = follow {
        hub.add_follower(
            &room,
            Follower {
                participant,
                target_identity,
                audio_mid,
                video_mid,
            },
        );
    }
    let id = crate::hub::random_token();
    let location = format!("/{kind}/{room}/{id}");
    let mut sessions = state.http_sessions.lock();
    // Sessions whose participant left without a DELETE (the encoder died, the media timed
    // out, a moderator removed it) end here, so the table holds only live ones.
    sessions.retain(|_, s| hub.room_of(s.participant).is_some());
    sessions.insert(
        id,
        HttpSession {
            room,
            participant,
            identity: claims.sub,
        },
    );
    drop(sessions);
    Ok((
        StatusCode::CREATED,
        [
            (header::LOCATION, location),
            (header::CONTENT_TYPE, "application/sdp".to_owned()),
        ],
        answer,
    )
        .into_response())
}

/// `DELETE /whip/{room}/{session}` and `/whep/...`: the same token (identity) that created it.
pub async fn session_delete(
    State(state): State<AppState>,
    Path((room, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let (room, claims) = authorize(&state, &room, &headers)?;
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::BadMessage,
            "no such session",
        )
    };
    let session = {
        let mut sessions = state.http_sessions.lock();
        let owned = sessions
            .get(&id)
            .is_some_and(|s| s.room == room && s.identity == claims.sub);
        owned.then(|| sessions.remove(&id)).flatten()
    }
    .ok_or_else(not_found)?;
    // The participant may have left already (media failed, removed): then it is over.
    if state.hub.room_of(session.participant).is_none() {
        return Err(not_found());
    }
    state.hub.leave(session.participant, LeaveReason::Left);
    Ok(StatusCode::OK)
}

fn authorize(
    state: &AppState,
    room: &str,
    headers: &HeaderMap,
) -> Result<(RoomId, Claims), ApiError> {
    let room = RoomId::new(room).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadMessage,
            e.to_string(),
        )
    })?;
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                ErrorCode::InvalidToken,
                "a Bearer token is required",
            )
        })?;
    let claims = state
        .hub
        .keys()
        .verify(token.trim(), Some(&room))
        .map_err(|e| {
            let status = match e.code() {
                ErrorCode::WrongRoom => StatusCode::FORBIDDEN,
                _ => StatusCode::UNAUTHORIZED,
            };
            ApiError::new(status, e.code(), e.to_string())
        })?;
    Ok((room, claims))
}

fn require_sdp(headers: &HeaderMap) -> Result<(), ApiError> {
    let is_sdp = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/sdp"))
        });
    if is_sdp {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::BadMessage,
            "the body must be an SDP offer (Content-Type: application/sdp)",
        ))
    }
}
