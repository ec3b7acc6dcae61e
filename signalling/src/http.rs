//! The HTTP surface: routes, the one error type that maps to a status, static web client.

use axum::Json;
use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use prometheus::{Encoder, TextEncoder};
use rust_embed::RustEmbed;
use serde::{Deserialize, Serialize};
use ting_protocol::{ErrorCode, MAX_MESSAGE_BYTES, PROTOCOL_VERSION, Role, RoomId};
use tracing::{debug, error};

use crate::hub::{Hub, HubError, random_token};
use crate::token::Claims;
use crate::whip::{HttpSessions, session_delete, whep_post, whip_post};

#[derive(Clone)]
pub struct AppState {
    pub hub: Hub,
    pub http_sessions: HttpSessions,
}

/// Builds the service. Nothing is bound or started here.
pub fn app(hub: Hub) -> Router {
    let state = AppState {
        hub,
        http_sessions: HttpSessions::default(),
    };
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route("/api/config", get(config))
        .route("/api/quick-join", post(quick_join))
        .route("/ws", get(websocket))
        .route("/whip/{room}", post(whip_post))
        .route("/whep/{room}", post(whep_post))
        .route("/whip/{room}/{session}", delete(session_delete))
        .route("/whep/{room}/{session}", delete(session_delete))
        .merge(crate::collab_http::routes())
        .merge(crate::recording_http::routes())
        .fallback(get(static_file))
        .layer(DefaultBodyLimit::max(MAX_MESSAGE_BYTES))
        .with_state(state)
}

/// An HTTP error with the protocol's error code and a message for the user.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: ErrorCode,
    message: String,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: ErrorCode,
    message: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_sdp(message: &str) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidSdp, message)
    }

    pub fn from_hub(e: HubError) -> Self {
        let status = match e.code {
            ErrorCode::NotAllowed | ErrorCode::RoomLocked => StatusCode::FORBIDDEN,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        };
        Self::new(status, e.code, e.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // Logged once, here: client mistakes at debug, our failures at error.
        if self.status.is_server_error() {
            error!(status = %self.status, "{}", self.message);
        } else {
            debug!(status = %self.status, "{}", self.message);
        }
        (
            self.status,
            Json(ErrorBody {
                code: self.code,
                message: &self.message,
            }),
        )
            .into_response()
    }
}

/// The HTTP service of a media-only node (`ting sfu`): health and metrics, nothing for clients.
pub fn media_node_app(registry: prometheus::Registry) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move { encode_metrics(&registry) }
            }),
        )
}

async fn metrics(State(state): State<AppState>) -> Response {
    encode_metrics(state.hub.registry())
}

fn encode_metrics(registry: &prometheus::Registry) -> Response {
    let mut buf = Vec::new();
    match TextEncoder::new().encode(&registry.gather(), &mut buf) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                TextEncoder::new().format_type().to_owned(),
            )],
            buf,
        )
            .into_response(),
        Err(e) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            e.to_string(),
        )
        .into_response(),
    }
}

#[derive(Serialize)]
struct PublicConfig {
    quick_start: bool,
    version: u32,
}

async fn config(State(state): State<AppState>) -> Json<PublicConfig> {
    Json(PublicConfig {
        quick_start: state.hub.config().quick_start,
        version: PROTOCOL_VERSION,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QuickJoin {
    room: String,
    name: String,
}

#[derive(Serialize)]
struct QuickJoinReply {
    token: String,
    room: RoomId,
}

async fn quick_join(
    State(state): State<AppState>,
    body: Result<Json<QuickJoin>, JsonRejection>,
) -> Result<Json<QuickJoinReply>, ApiError> {
    let hub = &state.hub;
    if !hub.config().quick_start {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::NotAllowed,
            "quick start is turned off on this server; ask for an invitation link",
        ));
    }
    let Json(request) = body.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadMessage,
            e.body_text(),
        )
    })?;
    let room = RoomId::new(request.room.trim()).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadMessage,
            e.to_string(),
        )
    })?;
    let name = request.name.trim();
    if name.is_empty() || name.chars().count() > 64 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadMessage,
            "a name is 1-64 characters",
        ));
    }
    let identity = format!("guest-{}", &random_token()[..12]);
    let token = hub
        .keys()
        .mint(
            room.clone(),
            &identity,
            name,
            Role::Speaker,
            hub.config().quick_start_ttl,
        )
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Internal,
                e.to_string(),
            )
        })?;
    Ok(Json(QuickJoinReply { token, room }))
}

/// Read buffer per signalling WebSocket.
const WS_READ_BUFFER_BYTES: usize = 8 * 1024;

async fn websocket(State(state): State<AppState>, upgrade: WebSocketUpgrade) -> Response {
    let hub = state.hub.clone();
    // The transport limit is generous so that our own, smaller limit can answer with a
    // protocol error instead of a dropped connection.
    upgrade
        .max_message_size(16 * MAX_MESSAGE_BYTES)
        // Signalling messages are small; the default 128 KiB read buffer per socket was the
        // second largest share of a participant's memory. Bigger messages still assemble.
        .read_buffer_size(WS_READ_BUFFER_BYTES)
        .on_upgrade(move |socket| {
            let tracker = hub.sessions().clone();
            tracker.track_future(crate::session::run(hub, socket))
        })
}

/// The built web client (`web/dist`). In debug builds rust-embed reads it from disk, in release
/// builds it is compiled into the binary.
#[derive(RustEmbed)]
#[folder = "../web/dist"]
#[allow_missing = true]
struct WebClient;

async fn static_file(uri: Uri) -> Response {
    let path = uri.path().trim_start_matches('/');
    let path = if path.is_empty() { "index.html" } else { path };
    match WebClient::get(path) {
        Some(file) => {
            let mime = file.metadata.mimetype().to_owned();
            (
                [
                    (header::CONTENT_TYPE, mime),
                    (header::CACHE_CONTROL, "no-cache".to_owned()),
                ],
                file.data,
            )
                .into_response()
        }
        None if path == "index.html" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "The web client is not built: run `npm --prefix web ci && npm --prefix web run build`.",
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

#[derive(Deserialize, Default)]
pub(crate) struct TokenQuery {
    #[serde(default)]
    pub(crate) token: Option<String>,
}

pub(crate) fn room_id(room: &str) -> Result<RoomId, ApiError> {
    RoomId::new(room).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadMessage,
            e.to_string(),
        )
    })
}

/// The verified claims of the request's token for `room`.
pub(crate) fn claims(
    state: &AppState,
    headers: &HeaderMap,
    query: &TokenQuery,
    room: &str,
) -> Result<Claims, ApiError> {
    let room = room_id(room)?;
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let token = bearer.or(query.token.as_deref()).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::InvalidToken,
            "a token is required",
        )
    })?;
    state.hub.keys().verify(token, Some(&room)).map_err(|e| {
        let status = if e == crate::token::TokenError::WrongRoom {
            StatusCode::FORBIDDEN
        } else {
            StatusCode::UNAUTHORIZED
        };
        ApiError::new(status, e.code(), e.to_string())
    })
}
