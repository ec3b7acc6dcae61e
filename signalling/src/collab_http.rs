//! HTTP side of the collaboration add-ons: the tus 1.0 file drop, downloads (room members
//! or an expiring link), whiteboard export, and a room's records (archive, audit log,
//! retention). Requests carry the join token as `Authorization: Bearer …` (or `?token=`,
//! so that a plain link downloads).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use base64::Engine;
use futures_util::TryStreamExt;
use serde::{Deserialize, Serialize};
use ting_collab::{Actor, Collab, CollabError, FileError, Upload};
use ting_protocol::ErrorCode;
use ting_protocol::collab::{CollabErrorCode, ObjectName};
use tokio_stream::wrappers::ReceiverStream;

use crate::collab_ws;
use crate::http::{ApiError, AppState, TokenQuery, claims, room_id};

const TUS_VERSION: &str = "1.0.0";
const TUS_EXTENSIONS: &str = "creation,expiration,checksum,termination";
/// Longest life of a download link.
const MAX_LINK_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
const DEFAULT_LINK_TTL: Duration = Duration::from_secs(24 * 3600);

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/files/{room}", post(tus_create).options(tus_options))
        .route(
            "/api/files/{room}/uploads/{id}",
            axum::routing::head(tus_head)
                .patch(tus_patch)
                .delete(tus_terminate)
                .options(tus_options),
        )
        .route(
            "/api/files/{room}/{file}",
            get(download).delete(delete_file),
        )
        .route("/api/files/{room}/{file}/link", post(file_link))
        .route(
            "/api/rooms/{room}/whiteboards/{name}",
            get(whiteboard_export),
        )
        .route("/api/rooms/{room}/objects", get(objects))
        .route("/api/rooms/{room}/export", get(export))
        .route("/api/rooms/{room}/audit", get(audit))
        .route(
            "/api/rooms/{room}/retention",
            put(set_retention).get(retention),
        )
}

fn collab(state: &AppState) -> Result<&Collab, ApiError> {
    state.hub.collab().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            "collaboration is not enabled on this server",
        )
    })
}

/// A member's actor (file links are refused here: they only download their file).
fn member(
    state: &AppState,
    headers: &HeaderMap,
    query: &TokenQuery,
    room: &str,
) -> Result<Actor, ApiError> {
    let claims = claims(state, headers, query, room)?;
    if state.hub.is_banned(&claims.room, &claims.sub) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::NotAllowed,
            "a moderator removed you from this room",
        ));
    }
    if claims.file.is_some() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::NotAllowed,
            "a download link grants only its file",
        ));
    }
    collab_ws::actor(&claims).map_err(ApiError::from_hub)
}

fn from_collab(e: CollabError) -> ApiError {
    let (status, code) = match e.code {
        CollabErrorCode::NotAllowed => (StatusCode::FORBIDDEN, ErrorCode::NotAllowed),
        CollabErrorCode::NotFound => (StatusCode::NOT_FOUND, ErrorCode::BadMessage),
        CollabErrorCode::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::MessageTooLarge),
        CollabErrorCode::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable),
        CollabErrorCode::BadOp | CollabErrorCode::NotSubscribed => {
            (StatusCode::BAD_REQUEST, ErrorCode::BadMessage)
        }
    };
    ApiError::new(status, code, e.message)
}

fn tus_error(e: FileError) -> Response {
    let status = match &e {
        FileError::BadRequest(_) => StatusCode::BAD_REQUEST,
        FileError::NotFound => StatusCode::NOT_FOUND,
        FileError::Gone => StatusCode::GONE,
        FileError::Forbidden => StatusCode::FORBIDDEN,
        FileError::OffsetMismatch(_) => StatusCode::CONFLICT,
        FileError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        // tus checksum extension: 460 Checksum Mismatch.
        FileError::ChecksumMismatch => StatusCode::from_u16(460).unwrap_or(StatusCode::BAD_REQUEST),
        FileError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    let code = match status {
        StatusCode::FORBIDDEN => ErrorCode::NotAllowed,
        StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::MessageTooLarge,
        StatusCode::SERVICE_UNAVAILABLE => ErrorCode::Unavailable,
        _ => ErrorCode::BadMessage,
    };
    let mut response = ApiError::new(status, code, e.to_string()).into_response();
    response
        .headers_mut()
        .insert("tus-resumable", HeaderValue::from_static(TUS_VERSION));
    if let FileError::OffsetMismatch(offset) = e {
        response
            .headers_mut()
            .insert("upload-offset", HeaderValue::from(offset));
    }
    response
}

fn http_date(unix_ms: i64) -> String {
    let secs = u64::try_from(unix_ms / 1000).unwrap_or(0);
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs))
}

/// tus requires `Tus-Resumable: 1.0.0` on every request but OPTIONS. (Handlers return
/// responses as errors; their size does not matter on this path.)
#[allow(clippy::result_large_err)]
fn check_tus(headers: &HeaderMap) -> Result<(), Response> {
    if headers.get("tus-resumable").and_then(|v| v.to_str().ok()) == Some(TUS_VERSION) {
        return Ok(());
    }
    let mut response = (
        StatusCode::PRECONDITION_FAILED,
        "Tus-Resumable: 1.0.0 is required",
    )
        .into_response();
    response
        .headers_mut()
        .insert("tus-version", HeaderValue::from_static(TUS_VERSION));
    Err(response)
}

fn tus_headers(response: &mut Response, upload: &Upload) {
    let h = response.headers_mut();
    h.insert("tus-resumable", HeaderValue::from_static(TUS_VERSION));
    h.insert("upload-offset", HeaderValue::from(upload.offset));
    h.insert("upload-length", HeaderValue::from(upload.length));
    if let Ok(v) = HeaderValue::from_str(&http_date(upload.expires_ms)) {
        h.insert("upload-expires", v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// What every tus request but OPTIONS checks first: the protocol header, the service, the
/// member's token.
#[allow(clippy::result_large_err)]
fn tus_member<'a>(
    state: &'a AppState,
    headers: &HeaderMap,
    room: &str,
) -> Result<(&'a Collab, Actor), Response> {
    check_tus(headers)?;
    let collab = collab(state).map_err(IntoResponse::into_response)?;
    let actor = member(state, headers, &TokenQuery::default(), room)
        .map_err(IntoResponse::into_response)?;
    Ok((collab, actor))
}

async fn tus_options(State(state): State<AppState>) -> Response {
    let limits = state.hub.collab().map(|c| c.limits());
    let mut response = StatusCode::NO_CONTENT.into_response();
    let h = response.headers_mut();
    h.insert("tus-resumable", HeaderValue::from_static(TUS_VERSION));
    h.insert("tus-version", HeaderValue::from_static(TUS_VERSION));
    h.insert("tus-extension", HeaderValue::from_static(TUS_EXTENSIONS));
    h.insert("tus-checksum-algorithm", HeaderValue::from_static("sha256"));
    if let Some(limits) = limits {
        h.insert("tus-max-size", HeaderValue::from(limits.max_file_bytes));
    }
    response
}

/// `Upload-Metadata`: comma-separated `key base64(value)` pairs.
fn metadata(headers: &HeaderMap) -> Result<(String, String), String> {
    let Some(raw) = headers.get("upload-metadata") else {
        return Ok((String::new(), String::new()));
    };
    let raw = raw.to_str().map_err(|_| "Upload-Metadata is not ASCII")?;
    let (mut name, mut mime) = (String::new(), String::new());
    for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once(' ').unwrap_or((pair, ""));
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(value.trim())
            .map_err(|_| format!("Upload-Metadata value of '{key}' is not base64"))?;
        let decoded = String::from_utf8(decoded)
            .map_err(|_| format!("Upload-Metadata '{key}' is not UTF-8"))?;
        match key {
            "filename" | "name" => name = decoded,
            "filetype" | "type" => mime = decoded,
            _ => {}
        }
    }
    Ok((name, mime))
}

async fn tus_create(
    State(state): State<AppState>,
    Path(room): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Response> {
    let (collab, actor) = tus_member(&state, &headers, &room)?;
    let length: u64 = headers
        .get("upload-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| {
            tus_error(FileError::BadRequest(
                "Upload-Length (a number of bytes) is required".into(),
            ))
        })?;
    let (name, mime) = metadata(&headers).map_err(|e| tus_error(FileError::BadRequest(e)))?;
    let upload = collab
        .create_upload(&actor, length, &name, &mime)
        .await
        .map_err(tus_error)?;
    if length == 0 {
        collab
            .finish_empty_upload(&upload)
            .await
            .map_err(tus_error)?;
    }
    let mut response = StatusCode::CREATED.into_response();
    tus_headers(&mut response, &upload);
    let location = format!("/api/files/{room}/uploads/{}", upload.id);
    if let Ok(v) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    Ok(response)
}

async fn tus_head(
    State(state): State<AppState>,
    Path((room, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, Response> {
    let (collab, actor) = tus_member(&state, &headers, &room)?;
    let upload = collab.upload(&actor, &id).await.map_err(tus_error)?;
    let mut response = StatusCode::OK.into_response();
    tus_headers(&mut response, &upload);
    Ok(response)
}

/// `Upload-Checksum: sha256 <base64>`.
fn checksum(headers: &HeaderMap) -> Result<Option<[u8; 32]>, FileError> {
    let Some(raw) = headers.get("upload-checksum") else {
        return Ok(None);
    };
    let raw = raw
        .to_str()
        .map_err(|_| FileError::BadRequest("Upload-Checksum is not ASCII".into()))?;
    let (algorithm, value) = raw.split_once(' ').unwrap_or((raw, ""));
    if algorithm != "sha256" {
        return Err(FileError::BadRequest(format!(
            "checksum algorithm '{algorithm}' is not supported (sha256)"
        )));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .map_err(|_| FileError::BadRequest("Upload-Checksum is not base64".into()))?;
    bytes
        .try_into()
        .map(Some)
        .map_err(|_| FileError::BadRequest("a sha256 checksum is 32 bytes".into()))
}

async fn tus_patch(
    State(state): State<AppState>,
    Path((room, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Response> {
    let (collab, actor) = tus_member(&state, &headers, &room)?;
    if headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        != Some("application/offset+octet-stream")
    {
        return Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/offset+octet-stream",
        )
            .into_response());
    }
    let offset: u64 = headers
        .get("upload-offset")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| tus_error(FileError::BadRequest("Upload-Offset is required".into())))?;
    let checksum = checksum(&headers).map_err(tus_error)?;
    let stream = body.into_data_stream();
    let (upload, _file) = collab
        .append_upload(&actor, &id, offset, checksum, stream)
        .await
        .map_err(tus_error)?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    tus_headers(&mut response, &upload);
    Ok(response)
}

async fn tus_terminate(
    State(state): State<AppState>,
    Path((room, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, Response> {
    let (collab, actor) = tus_member(&state, &headers, &room)?;
    collab
        .terminate_upload(&actor, &id)
        .await
        .map_err(tus_error)?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .insert("tus-resumable", HeaderValue::from_static(TUS_VERSION));
    Ok(response)
}

/// RFC 5987 `filename*` value.
fn encode_filename(name: &str) -> String {
    let mut out = String::from("UTF-8''");
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn download(
    State(state): State<AppState>,
    Path((room, file)): Path<(String, String)>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
) -> Result<Response, Response> {
    let collab = collab(&state).map_err(IntoResponse::into_response)?;
    let claims = claims(&state, &headers, &query, &room).map_err(IntoResponse::into_response)?;
    let actor = collab_ws::actor(&claims).map_err(|e| ApiError::from_hub(e).into_response())?;
    let allowed = match &claims.file {
        Some(linked) => *linked == file,
        None => actor.access.can_read(ting_protocol::collab::Channel::Files),
    };
    if !allowed {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::NotAllowed,
            "this token does not grant this file",
        )
        .into_response());
    }
    let (info, content) = collab.open_file(&room, &file).await.map_err(tus_error)?;
    let body = Body::from_stream(content.map_err(std::io::Error::other));
    let mut response = body.into_response();
    let h = response.headers_mut();
    let mime = HeaderValue::from_str(&info.mime)
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    h.insert(header::CONTENT_TYPE, mime);
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(info.size));
    if let Ok(v) = HeaderValue::from_str(&format!(
        "attachment; filename*={}",
        encode_filename(&info.name)
    )) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    // Uploaded HTML or SVG must not run as this origin's page.
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-cache"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", info.sha256)) {
        h.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&info.sha256) {
        h.insert("x-content-sha256", v);
    }
    Ok(response)
}

async fn delete_file(
    State(state): State<AppState>,
    Path((room, file)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, Response> {
    let collab = collab(&state).map_err(IntoResponse::into_response)?;
    let actor = member(&state, &headers, &TokenQuery::default(), &room)
        .map_err(IntoResponse::into_response)?;
    collab.delete_file(&actor, &file).await.map_err(tus_error)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LinkRequest {
    #[serde(default)]
    ttl_secs: Option<u64>,
}

#[derive(Serialize)]
struct LinkReply {
    url: String,
    expires_at: u64,
}

async fn file_link(
    State(state): State<AppState>,
    Path((room, file)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<LinkReply>, Response> {
    // The body is optional: empty, or `{"ttl_secs": …}`.
    let request: LinkRequest = if body.iter().all(u8::is_ascii_whitespace) {
        LinkRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadMessage,
                format!("link request: {e}"),
            )
            .into_response()
        })?
    };
    let collab = collab(&state).map_err(IntoResponse::into_response)?;
    let claims = claims(&state, &headers, &TokenQuery::default(), &room)
        .map_err(IntoResponse::into_response)?;
    let actor = member(&state, &headers, &TokenQuery::default(), &room)
        .map_err(IntoResponse::into_response)?;
    if !actor.access.can_read(ting_protocol::collab::Channel::Files) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::NotAllowed,
            "you may not share files",
        )
        .into_response());
    }
    // The file must exist in this room.
    let (_info, _content) = collab.open_file(&room, &file).await.map_err(tus_error)?;
    let ttl = request
        .ttl_secs
        .map_or(DEFAULT_LINK_TTL, Duration::from_secs)
        .min(MAX_LINK_TTL)
        // A link does not outlive the token that made it.
        .min(Duration::from_secs(
            claims.exp.saturating_sub(crate::token::unix_now()).max(1),
        ));
    let (token, expires_at) = state
        .hub
        .keys()
        .mint_file_link(
            room_id(&room).map_err(IntoResponse::into_response)?,
            &file,
            ttl,
        )
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Internal,
                e.to_string(),
            )
            .into_response()
        })?;
    Ok(Json(LinkReply {
        url: format!("/api/files/{room}/{file}?token={token}"),
        expires_at,
    }))
}

async fn whiteboard_export(
    State(state): State<AppState>,
    Path((room, name)): Path<(String, String)>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let collab = collab(&state)?;
    let actor = member(&state, &headers, &query, &room)?;
    let (stem, png) = match (name.strip_suffix(".svg"), name.strip_suffix(".png")) {
        (Some(stem), _) => (stem, false),
        (_, Some(stem)) => (stem, true),
        _ => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                ErrorCode::BadMessage,
                "ask for <name>.svg or <name>.png",
            ));
        }
    };
    let object = ObjectName::new(stem)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::BadMessage, e))?;
    if png {
        let bytes = collab
            .whiteboard_png(&actor, &object)
            .await
            .map_err(from_collab)?;
        Ok(([(header::CONTENT_TYPE, "image/png")], bytes).into_response())
    } else {
        let svg = collab
            .whiteboard_svg(&actor, &object)
            .await
            .map_err(from_collab)?;
        Ok((
            [
                (header::CONTENT_TYPE, "image/svg+xml"),
                (header::CONTENT_SECURITY_POLICY, "sandbox"),
            ],
            svg,
        )
            .into_response())
    }
}

#[derive(Serialize)]
struct ObjectEntry {
    channel: ting_protocol::collab::Channel,
    name: String,
}

/// The room's chat rooms, whiteboards and boards that hold data (those the token may read).
async fn objects(
    State(state): State<AppState>,
    Path(room): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Vec<ObjectEntry>>, ApiError> {
    let collab = collab(&state)?;
    let actor = member(&state, &headers, &TokenQuery::default(), &room)?;
    let keys = collab.store().objects(&actor.room).await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            e.to_string(),
        )
    })?;
    Ok(Json(
        keys.into_iter()
            .filter(|k| actor.access.can_read(k.channel))
            .map(|k| ObjectEntry {
                channel: k.channel,
                name: k.name.to_string(),
            })
            .collect(),
    ))
}

async fn export(
    State(state): State<AppState>,
    Path(room): Path<String>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let collab = collab(&state)?;
    let actor = member(&state, &headers, &query, &room)?;
    let archive = collab.export(&actor).await.map_err(from_collab)?;
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let disposition = format!("attachment; filename=\"ting-{room}-{stamp}.tar\"");
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-tar".to_owned()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        Body::from_stream(ReceiverStream::new(archive)),
    )
        .into_response())
}

async fn audit(
    State(state): State<AppState>,
    Path(room): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let collab = collab(&state)?;
    let actor = member(&state, &headers, &TokenQuery::default(), &room)?;
    let entries = collab.audit_log(&actor).await.map_err(from_collab)?;
    Ok(Json(entries).into_response())
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Retention {
    /// `null`: keep everything.
    keep_days: Option<u32>,
}

async fn set_retention(
    State(state): State<AppState>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Result<Json<Retention>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let collab = collab(&state)?;
    let actor = member(&state, &headers, &TokenQuery::default(), &room)?;
    let Json(rule) = body.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadMessage,
            e.body_text(),
        )
    })?;
    let report = collab
        .set_retention(&actor, rule.keep_days)
        .await
        .map_err(from_collab)?;
    let recordings = match rule.keep_days {
        Some(days) => state.hub.expire_recordings(&actor.room, days).await,
        None => 0,
    };
    let mut body = serde_json::to_value(report).unwrap_or_default();
    body["recordings"] = recordings.into();
    Ok(Json(body).into_response())
}

async fn retention(
    State(state): State<AppState>,
    Path(room): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Retention>, ApiError> {
    let collab = collab(&state)?;
    member(&state, &headers, &TokenQuery::default(), &room)?;
    let keep_days = collab.retention(&room).await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            e.to_string(),
        )
    })?;
    Ok(Json(Retention { keep_days }))
}
