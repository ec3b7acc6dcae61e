//! Recording over HTTP (moderators): start and stop, the list of a room's recordings, and
//! downloads. The join token is the Bearer (or `?token=` for a plain download link).

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use serde::{Deserialize, Serialize};
use ting_protocol::ErrorCode;

use crate::http::{ApiError, AppState, TokenQuery, claims};
use crate::token::Claims;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/rooms/{room}/recording", put(set_recording))
        .route("/api/rooms/{room}/recordings", get(list))
        .route("/api/rooms/{room}/recordings/{id}/{file}", get(download))
}

/// The token's claims if it is a moderator's for `room`.
fn moderator(
    state: &AppState,
    headers: &HeaderMap,
    query: &TokenQuery,
    room: &str,
) -> Result<Claims, ApiError> {
    let claims = claims(state, headers, query, room)?;
    if !claims.role.moderates()
        || claims.file.is_some()
        || state.hub.is_banned(&claims.room, &claims.sub)
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::NotAllowed,
            "only hosts and moderators manage recordings",
        ));
    }
    Ok(claims)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Switch {
    active: bool,
}

async fn set_recording(
    State(state): State<AppState>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Result<Json<Switch>, axum::extract::rejection::JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let claims = moderator(&state, &headers, &TokenQuery::default(), &room)?;
    let Json(switch) = body.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadMessage,
            e.body_text(),
        )
    })?;
    state
        .hub
        .set_room_recording(&claims.room, switch.active)
        .map_err(ApiError::from_hub)?;
    if let Some(collab) = state.hub.collab() {
        let action = if switch.active {
            "recording started"
        } else {
            "recording stopped"
        };
        collab
            .audit(claims.room.as_str(), &claims.sub, action, "")
            .await;
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize)]
struct RecordingEntry {
    id: String,
    files: Vec<FileEntry>,
}

#[derive(Serialize)]
struct FileEntry {
    name: String,
    size: u64,
    /// A download link for this file alone, valid for an hour: the moderator's own token never
    /// goes into a URL (logs, history, Referer).
    url: String,
}

/// How long the download links in a listing work.
const LINK_TTL: std::time::Duration = std::time::Duration::from_secs(3600);

/// The `file` claim of a recording's download link.
fn link_scope(id: &str, file: &str) -> String {
    format!("recording/{id}/{file}")
}

async fn list(
    State(state): State<AppState>,
    Path(room): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Vec<RecordingEntry>>, ApiError> {
    let claims = moderator(&state, &headers, &TokenQuery::default(), &room)?;
    let Some(config) = state.hub.recording_config() else {
        return Ok(Json(Vec::new()));
    };
    let dir = config.dir.join(claims.room.as_str());
    let mut recordings = Vec::new();
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let id = entry.file_name().to_string_lossy().into_owned();
        let mut files: Vec<FileEntry> = std::fs::read_dir(entry.path())
            .into_iter()
            .flatten()
            .flatten()
            .map(|f| {
                let name = f.file_name().to_string_lossy().into_owned();
                let link = state
                    .hub
                    .keys()
                    .mint_file_link(claims.room.clone(), &link_scope(&id, &name), LINK_TTL)
                    .map(|(token, _)| token)
                    .unwrap_or_default();
                FileEntry {
                    url: format!(
                        "/api/rooms/{}/recordings/{id}/{name}?token={link}",
                        claims.room
                    ),
                    size: f.metadata().map(|m| m.len()).unwrap_or(0),
                    name,
                }
            })
            .collect();
        files.sort_by(|a, b| a.name.cmp(&b.name));
        recordings.push(RecordingEntry { id, files });
    }
    recordings.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(Json(recordings))
}

/// Path parts the recorder made: digits for ids, `[A-Za-z0-9._-]` for files, no leading dot.
fn safe_part(part: &str) -> bool {
    !part.is_empty()
        && !part.starts_with('.')
        && part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

async fn download(
    State(state): State<AppState>,
    Path((room, id, file)): Path<(String, String, String)>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    // A moderator's token, or a link made for this very file.
    let link = claims(&state, &headers, &query, &room)?;
    let claims = if link.file.as_deref() == Some(link_scope(&id, &file).as_str()) {
        link
    } else {
        moderator(&state, &headers, &query, &room)?
    };
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::BadMessage,
            "no such recording",
        )
    };
    if !safe_part(&id) || !safe_part(&file) {
        return Err(not_found());
    }
    let config = state.hub.recording_config().ok_or_else(not_found)?;
    let path = config.dir.join(claims.room.as_str()).join(&id).join(&file);
    let handle = tokio::fs::File::open(&path)
        .await
        .map_err(|_| not_found())?;
    let size = handle.metadata().await.map(|m| m.len()).unwrap_or(0);
    // A recording in progress keeps growing: send the size measured above, no more.
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(
        tokio::io::AsyncReadExt::take(handle, size),
    ));
    Ok((
        [
            (header::CONTENT_TYPE, "video/webm".to_owned()),
            (header::CONTENT_LENGTH, size.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{file}\""),
            ),
        ],
        body,
    )
        .into_response())
}
