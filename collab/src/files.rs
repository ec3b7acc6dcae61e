//! The file drop: tus 1.0 uploads (creation, offset, checksum, expiration, termination) and
//! downloads. Each PATCH is stored as one chunk object in the blob store, so an interrupted
//! upload keeps what arrived and any node of a cluster can continue it; the last chunk turns
//! the upload into a file (one object, SHA-256 computed on the way). A file's name is only
//! metadata: storage paths are made of ids.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, WriteMultipart};
use sha2::{Digest, Sha256};

use crate::drop::FileInfo;
use crate::model::Actor;
use crate::store::{Store, StoreError, Upload};

/// Where file contents live.
#[derive(Debug, Clone)]
pub enum BlobConfig {
    /// A directory on local disk (the embedded default: `<data dir>/files`).
    Local(PathBuf),
    /// An S3-compatible bucket (MinIO, Ceph, Garage, AWS).
    S3 {
        bucket: String,
        endpoint: Option<String>,
        region: String,
        access_key_id: String,
        secret_access_key: String,
    },
}

#[derive(Debug, Clone, Copy)]
pub struct FileLimits {
    /// Largest file (tus `Tus-Max-Size`).
    pub max_file_bytes: u64,
    /// Files plus uploads in progress, per room.
    pub room_quota_bytes: u64,
    /// An upload with no progress for this long expires.
    pub upload_ttl: Duration,
}

impl Default for FileLimits {
    fn default() -> Self {
        Self {
            max_file_bytes: 2 << 30,
            room_quota_bytes: 10 << 30,
            upload_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{0}")]
    BadRequest(String),
    #[error("no such upload or file")]
    NotFound,
    #[error("the upload has expired")]
    Gone,
    #[error("you may not do this with this file")]
    Forbidden,
    #[error("the upload is at offset {0}; resume from there")]
    OffsetMismatch(u64),
    #[error("{0}")]
    TooLarge(String),
    #[error("the checksum does not match the data; the chunk was discarded")]
    ChecksumMismatch,
    #[error("storage failed: {0}")]
    Unavailable(String),
}

impl From<StoreError> for FileError {
    fn from(e: StoreError) -> Self {
        FileError::Unavailable(e.to_string())
    }
}

impl From<object_store::Error> for FileError {
    fn from(e: object_store::Error) -> Self {
        match e {
            object_store::Error::NotFound { .. } => FileError::NotFound,
            e => FileError::Unavailable(e.to_string()),
        }
    }
}

pub(crate) fn open_blobs(config: &BlobConfig) -> Result<Arc<dyn ObjectStore>, FileError> {
    match config {
        BlobConfig::Local(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| FileError::Unavailable(format!("{}: {e}", dir.display())))?;
            let local = object_store::local::LocalFileSystem::new_with_prefix(dir)?;
            Ok(Arc::new(local))
        }
        BlobConfig::S3 {
            bucket,
            endpoint,
            region,
            access_key_id,
            secret_access_key,
        } => {
            let mut builder = object_store::aws::AmazonS3Builder::new()
                .with_bucket_name(bucket)
                .with_region(region)
                .with_access_key_id(access_key_id)
                .with_secret_access_key(secret_access_key);
            if let Some(endpoint) = endpoint {
                builder = builder
                    .with_endpoint(endpoint)
                    .with_allow_http(endpoint.starts_with("http://"))
                    .with_virtual_hosted_style_request(false);
            }
            Ok(Arc::new(builder.build()?))
        }
    }
}

fn chunk_prefix(upload: &str) -> Path {
    Path::from_iter(["uploads", upload])
}

fn chunk_path(upload: &str, offset: u64) -> Path {
    Path::from_iter(["uploads", upload, &format!("{offset:020}")])
}

pub(crate) fn file_path(room: &str, file: &str) -> Path {
    Path::from_iter(["files", room, file])
}

/// Random 128-bit id, hex.
pub(crate) fn random_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// The file drop's storage side; events are written by the caller.
pub(crate) struct FileDrop {
    pub(crate) blobs: Arc<dyn ObjectStore>,
    pub(crate) limits: FileLimits,
}

/// Keeps what a display name may hold: no control characters, at most 255 bytes.
pub(crate) fn clean_name(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .filter(|c| !c.is_control())
        .collect::<String>()
        .trim()
        .to_owned();
    let mut end = cleaned.len().min(255);
    while !cleaned.is_char_boundary(end) {
        end -= 1;
    }
    match &cleaned[..end] {
        "" => "file".to_owned(),
        name => name.to_owned(),
    }
}

impl FileDrop {
    pub(crate) async fn create(
        &self,
        store: &Store,
        actor: &Actor,
        length: u64,
        name: &str,
        mime: &str,
        now_ms: i64,
    ) -> Result<Upload, FileError> {
        if length > self.limits.max_file_bytes {
            return Err(FileError::TooLarge(format!(
                "files are limited to {} bytes",
                self.limits.max_file_bytes
            )));
        }
        let used = store.room_usage(&actor.room).await?;
        if used.saturating_add(length) > self.limits.room_quota_bytes {
            return Err(FileError::TooLarge(format!(
                "the room's quota of {} bytes would be exceeded ({} in use)",
                self.limits.room_quota_bytes, used
            )));
        }
        let mime = if mime.len() <= 100
            && !mime.is_empty()
            && mime.bytes().all(|b| b.is_ascii_graphic())
        {
            mime.to_owned()
        } else {
            "application/octet-stream".to_owned()
        };
        let upload = Upload {
            id: random_id(),
            room: actor.room.clone(),
            name: clean_name(name),
            mime,
            length,
            offset: 0,
            chunks: 0,
            uploader: actor.author(),
            created_ms: now_ms,
            expires_ms: now_ms + self.ttl_ms(),
        };
        store.insert_upload(&upload).await?;
        Ok(upload)
    }

    fn ttl_ms(&self) -> i64 {
        i64::try_from(self.limits.upload_ttl.as_millis()).unwrap_or(i64::MAX)
    }

    /// The upload if `actor` may continue it (the uploader, in the same room).
    pub(crate) async fn owned(
        &self,
        store: &Store,
        actor: &Actor,
        id: &str,
        now_ms: i64,
    ) -> Result<Upload, FileError> {
        let upload = store.upload(id).await?.ok_or(FileError::NotFound)?;
        if upload.room != actor.room || upload.uploader.identity != actor.identity {
            return Err(FileError::NotFound);
        }
        if upload.expires_ms < now_ms {
            return Err(FileError::Gone);
        }
        Ok(upload)
    }

    /// Stores one PATCH body as a chunk. Without a checksum, the part of an interrupted body
    /// that arrived is kept; with one, only a complete, matching chunk is.
    pub(crate) async fn append<S, E>(
        &self,
        store: &Store,
        upload: &Upload,
        offset: u64,
        checksum: Option<[u8; 32]>,
        body: S,
        now_ms: i64,
    ) -> Result<u64, FileError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        if offset != upload.offset {
            return Err(FileError::OffsetMismatch(upload.offset));
        }
        let room_left = upload.length - upload.offset;
        let path = chunk_path(&upload.id, offset);
        let mut writer = WriteMultipart::new(self.blobs.put_multipart(&path).await?);
        let mut hasher = Sha256::new();
        let mut received: u64 = 0;
        let mut interrupted = false;
        let mut body = body;
        while let Some(piece) = body.next().await {
            match piece {
                Ok(bytes) => {
                    received += bytes.len() as u64;
                    if received > room_left {
                        writer.abort().await?;
                        return Err(FileError::BadRequest(format!(
                            "the body goes beyond Upload-Length ({} bytes left)",
                            room_left
                        )));
                    }
                    hasher.update(&bytes);
                    writer.wait_for_capacity(4).await?;
                    writer.write(&bytes);
                }
                Err(e) => {
                    tracing::debug!(upload = %upload.id, "upload body interrupted: {e}");
                    interrupted = true;
                    break;
                }
            }
        }
        let keep = received > 0
            && match checksum {
                Some(expected) => !interrupted && hasher.finalize().as_slice() == expected,
                None => true,
            };
        if !keep {
            writer.abort().await?;
            if checksum.is_some() && !interrupted && received > 0 {
                return Err(FileError::ChecksumMismatch);
            }
            return Ok(upload.offset);
        }
        writer.finish().await?;
        let to = offset + received;
        match store
            .advance_upload(&upload.id, offset, to, now_ms + self.ttl_ms())
            .await
        {
            Ok(()) => Ok(to),
            Err(StoreError::Conflict) => {
                let _ = self.blobs.delete(&path).await;
                let current = store
                    .upload(&upload.id)
                    .await?
                    .map(|u| u.offset)
                    .unwrap_or(0);
                Err(FileError::OffsetMismatch(current))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Joins a finished upload's chunks into the file and records it; `None` when another
    /// request finished the upload first.
    pub(crate) async fn finish(
        &self,
        store: &Store,
        upload: &Upload,
        now_ms: i64,
    ) -> Result<Option<FileInfo>, FileError> {
        let file_id = random_id();
        let target = file_path(&upload.room, &file_id);
        let mut chunks: Vec<Path> = self
            .blobs
            .list(Some(&chunk_prefix(&upload.id)))
            .map_ok(|meta| meta.location)
            .try_collect()
            .await?;
        chunks.sort();
        let mut writer = WriteMultipart::new(self.blobs.put_multipart(&target).await?);
        let mut hasher = Sha256::new();
        let mut size: u64 = 0;
        for chunk in &chunks {
            let mut stream = self.blobs.get(chunk).await?.into_stream();
            while let Some(bytes) = stream.next().await {
                let bytes = bytes?;
                size += bytes.len() as u64;
                hasher.update(&bytes);
                writer.wait_for_capacity(4).await?;
                writer.write(&bytes);
            }
        }
        if size != upload.length {
            writer.abort().await?;
            return Err(FileError::Unavailable(format!(
                "stored chunks hold {size} of {} bytes",
                upload.length
            )));
        }
        writer.finish().await?;
        let file = FileInfo {
            id: file_id,
            name: upload.name.clone(),
            mime: upload.mime.clone(),
            size,
            sha256: hex::encode(hasher.finalize()),
            uploader: upload.uploader.clone(),
            at: now_ms,
        };
        match store.complete_upload(&upload.id, &file, &upload.room).await {
            Ok(()) => {}
            Err(StoreError::Conflict) => {
                // Finished by another request meanwhile: this copy is not needed.
                let _ = self.blobs.delete(&target).await;
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        }
        self.remove_chunks(&upload.id).await;
        Ok(Some(file))
    }

    pub(crate) async fn remove_chunks(&self, upload: &str) {
        let chunks: Vec<Path> = self
            .blobs
            .list(Some(&chunk_prefix(upload)))
            .map_ok(|meta| meta.location)
            .try_collect()
            .await
            .unwrap_or_default();
        for chunk in chunks {
            if let Err(e) = self.blobs.delete(&chunk).await {
                tracing::warn!(upload, "chunk not removed: {e}");
            }
        }
    }

    pub(crate) async fn read(
        &self,
        room: &str,
        file: &str,
    ) -> Result<BoxStream<'static, Result<Bytes, FileError>>, FileError> {
        let stream = self.blobs.get(&file_path(room, file)).await?.into_stream();
        Ok(stream.map_err(FileError::from).boxed())
    }
}
