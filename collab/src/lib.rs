//! Ting's collaboration add-ons: persistent chat, shared whiteboards, kanban boards and the
//! file drop, riding on the meeting's signalling channel.
//!
//! Each shared thing is an object whose state machine takes a command and returns an event
//! (no sockets inside: `chat`, `whiteboard`, `board`, `drop`). [`Collab`] stores every event
//! (sqlx: SQLite by default, PostgreSQL in a cluster) before it tells anyone, numbers them per
//! object, and fans them out to subscribers (and, in a cluster, to other nodes over a Redis
//! Stream). The invariant: a subscriber that saw event `n` of an object has seen `1..n`, and
//! everything it saw is stored.

mod board;
mod chat;
mod drop;
mod export;
mod fanout;
mod files;
pub mod fractional;
mod model;
mod records;
mod search;
mod service;
mod store;
mod svg;
mod whiteboard;

use std::sync::Arc;

use bytes::Bytes;
use futures_util::Stream;
use futures_util::stream::BoxStream;
use serde_json::Value;
use ting_protocol::ServerMessage;
use ting_protocol::collab::{Author, Channel, ObjectName};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use board::{BoardState, Card, Column};
pub use chat::{ChatState, Message};
pub use drop::FileInfo;
pub use fanout::FanoutConfig;
pub use files::{BlobConfig, FileError, FileLimits};
pub use model::{Access, Actor, CollabError, ObjectState};
pub use records::RetentionReport;
pub use store::{AuditEntry, ObjectKey, Store, StoreError, Upload};
pub use whiteboard::{Element, WhiteboardState};

use crate::fanout::Fanout;
use crate::files::FileDrop;
use crate::service::{Objects, check_envelope, key_for, now_ms};

/// How the service is set up.
#[derive(Debug, Clone)]
pub struct CollabConfig {
    /// `sqlite://<path>` (embedded) or `postgres://…` (cluster).
    pub database_url: String,
    pub blobs: BlobConfig,
    pub limits: FileLimits,
    /// Cluster mode: notices of new events go through this Redis Stream.
    pub fanout: Option<FanoutConfig>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("file storage: {0}")]
    Blobs(#[from] FileError),
    #[error("Redis fan-out: {0}")]
    Redis(#[from] redis::RedisError),
}

/// The collaboration service. Cheap to clone.
#[derive(Clone)]
pub struct Collab {
    objects: Arc<Objects>,
    files: Arc<FileDrop>,
}

impl std::fmt::Debug for Collab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collab")
            .field("store", self.objects.store())
            .finish()
    }
}

impl Collab {
    /// Connects storage (running migrations) and, in a cluster, the fan-out. Background
    /// tasks (fan-out reader, expired-upload and retention sweeps) stop with `shutdown`.
    pub async fn start(
        config: CollabConfig,
        shutdown: CancellationToken,
    ) -> Result<Self, StartError> {
        let store = Store::connect(&config.database_url).await?;
        let blobs = files::open_blobs(&config.blobs)?;
        let fanout = match &config.fanout {
            Some(f) => Some(Fanout::start(f, shutdown.clone()).await?),
            None => None,
        };
        let objects = Arc::new(Objects::new(store, fanout));
        if let Some(f) = config.fanout.clone() {
            tokio::spawn(fanout::run_reader(f, objects.clone(), shutdown.clone()));
        }
        let collab = Self {
            objects,
            files: Arc::new(FileDrop {
                blobs,
                limits: config.limits,
            }),
        };
        tokio::spawn(records::sweep_until(collab.clone(), shutdown));
        Ok(collab)
    }

    pub fn store(&self) -> &Store {
        self.objects.store()
    }

    pub fn limits(&self) -> FileLimits {
        self.files.limits
    }

    /// A socket's handle: its subscriptions end when it is dropped.
    pub fn session(&self, actor: Actor, tx: mpsc::Sender<ServerMessage>) -> CollabSession {
        CollabSession {
            collab: self.clone(),
            id: self.objects.add_subscriber_id(),
            actor: std::sync::Mutex::new(actor),
            tx,
            lagged: CancellationToken::new(),
            subscribed: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// A stored write on behalf of `actor` (also used by the HTTP API).
    pub async fn write(
        &self,
        actor: &Actor,
        channel: Channel,
        object: &ObjectName,
        op_id: Option<&str>,
        body: Value,
    ) -> Result<(u64, bool), CollabError> {
        if !actor.access.can_write(channel) {
            return Err(CollabError::not_allowed(format!(
                "your access does not let you write to {channel}"
            )));
        }
        check_envelope(op_id, &body, false)?;
        let key = key_for(actor, channel, object);
        if channel == Channel::Chat && body.get("op").and_then(Value::as_str) == Some("read") {
            let read: ReadMarker = serde_json::from_value(body)
                .map_err(|e| CollabError::bad(format!("invalid op: {e}")))?;
            let (_, seq) = self.objects.mark_read(actor, &key, read.up_to).await?;
            return Ok((seq, false));
        }
        self.objects.write(actor, &key, op_id, body).await
    }

    /// Runs `f` on an object's current state, checking read access.
    pub async fn read<T>(
        &self,
        actor: &Actor,
        channel: Channel,
        object: &ObjectName,
        f: impl FnOnce(&ObjectState) -> T,
    ) -> Result<(T, u64), CollabError> {
        if !actor.access.can_read(channel) {
            return Err(CollabError::not_allowed(format!(
                "your access does not let you read {channel}"
            )));
        }
        self.objects
            .with_state(&key_for(actor, channel, object), f)
            .await
    }

    // --- file drop ---

    pub async fn create_upload(
        &self,
        actor: &Actor,
        length: u64,
        name: &str,
        mime: &str,
    ) -> Result<Upload, FileError> {
        if !actor.access.can_write(Channel::Files) {
            return Err(FileError::Forbidden);
        }
        self.files
            .create(self.store(), actor, length, name, mime, now_ms())
            .await
    }

    /// An upload's state (tus HEAD). An upload whose bytes are all in but whose file was not
    /// made (a failure or crash in between) is finished here.
    pub async fn upload(&self, actor: &Actor, id: &str) -> Result<Upload, FileError> {
        let upload = self.files.owned(self.store(), actor, id, now_ms()).await?;
        if upload.offset == upload.length {
            self.finish(&upload).await?;
        }
        Ok(upload)
    }

    /// Appends a PATCH body at `offset`; the last chunk completes the file, which is then
    /// listed in the room's files and announced in its chat. Returns the new offset.
    pub async fn append_upload<S, E>(
        &self,
        actor: &Actor,
        id: &str,
        offset: u64,
        checksum: Option<[u8; 32]>,
        body: S,
    ) -> Result<(Upload, Option<FileInfo>), FileError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let mut upload = self.files.owned(self.store(), actor, id, now_ms()).await?;
        let to = self
            .files
            .append(self.store(), &upload, offset, checksum, body, now_ms())
            .await?;
        upload.offset = to;
        if to < upload.length {
            return Ok((upload, None));
        }
        let file = self.finish(&upload).await?;
        Ok((upload, file))
    }

    /// A zero-length upload is complete at creation.
    pub async fn finish_empty_upload(&self, upload: &Upload) -> Result<(), FileError> {
        self.finish(upload).await.map(|_| ())
    }

    /// Makes the file of a complete upload and announces it; `None` when another request
    /// finished it first.
    async fn finish(&self, upload: &Upload) -> Result<Option<FileInfo>, FileError> {
        let file = self.files.finish(self.store(), upload, now_ms()).await?;
        if let Some(file) = &file {
            self.announce_file(&upload.room, &upload.uploader, file)
                .await;
        }
        Ok(file)
    }

    async fn announce_file(&self, room: &str, uploader: &Author, file: &FileInfo) {
        let files_key = records::files_key(room);
        if let Err(e) = self
            .objects
            .write_event(&files_key, uploader, drop::added(file))
            .await
        {
            tracing::warn!("file {} not listed: {e}", file.id);
        }
        let chat_key = records::chat_key(room);
        let announcement = chat::file_announcement(serde_json::to_value(file).unwrap_or_default());
        if let Err(e) = self
            .objects
            .write_event(&chat_key, uploader, announcement)
            .await
        {
            tracing::warn!("file {} not announced in chat: {e}", file.id);
        }
    }

    /// Finishes uploads whose bytes are all in (the sweep).
    async fn finish_complete_uploads(&self) {
        let ids = match self.store().complete_uploads().await {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!("complete uploads not listed: {e}");
                return;
            }
        };
        for id in ids {
            if let Ok(Some(upload)) = self.store().upload(&id).await
                && let Err(e) = self.finish(&upload).await
            {
                tracing::warn!(upload = %id, "upload not finished: {e}");
            }
        }
    }

    pub async fn terminate_upload(&self, actor: &Actor, id: &str) -> Result<(), FileError> {
        let upload = self.upload(actor, id).await?;
        self.store().delete_upload(&upload.id).await?;
        self.files.remove_chunks(&upload.id).await;
        Ok(())
    }

    /// A file of `room` and its content.
    pub async fn open_file(
        &self,
        room: &str,
        id: &str,
    ) -> Result<(FileInfo, BoxStream<'static, Result<Bytes, FileError>>), FileError> {
        let (file_room, file) = self.store().file(id).await?.ok_or(FileError::NotFound)?;
        if file_room != room {
            return Err(FileError::NotFound);
        }
        let content = self.files.read(room, id).await?;
        Ok((file, content))
    }

    /// Deletes a file (its uploader or a moderator); the deletion is audited.
    pub async fn delete_file(&self, actor: &Actor, id: &str) -> Result<(), FileError> {
        let (room, file) = self.store().file(id).await?.ok_or(FileError::NotFound)?;
        if room != actor.room {
            return Err(FileError::NotFound);
        }
        if file.uploader.identity != actor.identity && !actor.moderator {
            return Err(FileError::Forbidden);
        }
        records::remove_file(self, &room, &file, &actor.identity, "file deleted").await
    }
}

/// `{"op": "read", "up_to": N}`: a chat read marker (kept outside the event log).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadMarker {
    #[serde(rename = "op")]
    _op: String,
    up_to: u64,
}

/// One socket's collab side: its identity, its subscriptions, its outbox.
pub struct CollabSession {
    collab: Collab,
    id: u64,
    /// Changes when a moderator changes the participant's role.
    actor: std::sync::Mutex<Actor>,
    tx: mpsc::Sender<ServerMessage>,
    lagged: CancellationToken,
    subscribed: std::sync::Mutex<Vec<ObjectKey>>,
}

impl CollabSession {
    /// Cancelled when a stored event could not be queued for this socket: close it; the
    /// client reconnects and catches up by sequence.
    pub fn lagged(&self) -> &CancellationToken {
        &self.lagged
    }

    pub fn actor(&self) -> Actor {
        self.actor.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The participant's rights changed (a new role in the meeting).
    pub fn set_actor(&self, actor: Actor) {
        *self.actor.lock().unwrap_or_else(|p| p.into_inner()) = actor;
    }

    pub async fn subscribe(
        &self,
        channel: Channel,
        object: &ObjectName,
        since: Option<u64>,
    ) -> Result<(), CollabError> {
        let actor = self.actor();
        if !actor.access.can_read(channel) {
            return Err(CollabError::not_allowed(format!(
                "your access does not let you read {channel}"
            )));
        }
        let key = key_for(&actor, channel, object);
        {
            let mut subscribed = self.subscribed.lock().unwrap_or_else(|p| p.into_inner());
            if !subscribed.contains(&key) {
                if subscribed.len() >= 64 {
                    return Err(CollabError::too_large(
                        "at most 64 subscriptions per socket",
                    ));
                }
                subscribed.push(key.clone());
            }
        }
        self.collab
            .objects
            .subscribe(&actor, &key, self.id, &self.tx, &self.lagged, since)
            .await
    }

    pub fn unsubscribe(&self, channel: Channel, object: &ObjectName) {
        let key = key_for(&self.actor(), channel, object);
        self.collab.objects.unsubscribe(&key, self.id);
        let mut subscribed = self.subscribed.lock().unwrap_or_else(|p| p.into_inner());
        subscribed.retain(|k| *k != key);
    }

    pub async fn write(
        &self,
        channel: Channel,
        object: &ObjectName,
        op_id: Option<&str>,
        body: Value,
    ) -> Result<(u64, bool), CollabError> {
        self.collab
            .write(&self.actor(), channel, object, op_id, body)
            .await
    }

    /// A droppable frame (cursor, typing) for the object's other subscribers.
    pub fn volatile(
        &self,
        channel: Channel,
        object: &ObjectName,
        body: Value,
    ) -> Result<(), CollabError> {
        check_envelope(None, &body, true)?;
        let actor = self.actor();
        let key = key_for(&actor, channel, object);
        if !self.collab.objects.is_subscribed(&key, self.id) {
            return Err(CollabError::new(
                ting_protocol::collab::CollabErrorCode::NotSubscribed,
                "subscribe to the object first",
            ));
        }
        if !actor.access.can_write(channel) {
            return Err(CollabError::not_allowed(format!(
                "your access does not let you write to {channel}"
            )));
        }
        self.collab.objects.volatile(&actor, &key, self.id, body);
        Ok(())
    }

    pub async fn query(
        &self,
        channel: Channel,
        object: &ObjectName,
        body: Value,
    ) -> Result<Value, CollabError> {
        let actor = self.actor();
        if !actor.access.can_read(channel) {
            return Err(CollabError::not_allowed(format!(
                "your access does not let you read {channel}"
            )));
        }
        check_envelope(None, &body, false)?;
        let key = key_for(&actor, channel, object);
        self.collab.objects.query(&actor, &key, body).await
    }
}

impl Drop for CollabSession {
    fn drop(&mut self) {
        let subscribed = self.subscribed.lock().unwrap_or_else(|p| p.into_inner());
        for key in subscribed.iter() {
            self.collab.objects.unsubscribe(key, self.id);
        }
    }
}
