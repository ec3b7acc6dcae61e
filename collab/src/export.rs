//! A room's records as one tar archive: chat, whiteboards (JSON and SVG), boards, the file
//! list with every file's content, retention rule and audit log. Streamed as it is built, so
//! a room with gigabytes of files does not sit in memory.

use std::io::Write;

use bytes::Bytes;
use futures_util::TryStreamExt;
use serde_json::{Value, json};
use ting_protocol::collab::{Channel, ObjectName};
use tokio::sync::mpsc;
use tokio_util::io::{StreamReader, SyncIoBridge};

use crate::Collab;
use crate::model::{Actor, CollabError, ObjectState};
use crate::service::now_ms;
use crate::svg::{self, Images};

/// Channel capacity of the archive stream, in blocks.
const ARCHIVE_QUEUE: usize = 16;
/// Largest image embedded into an SVG export, and most bytes of images in one export.
const MAX_EMBEDDED_IMAGE: u64 = 10 << 20;
const MAX_EMBEDDED_TOTAL: u64 = 50 << 20;
/// PNG renders at once (each may take a large canvas).
static RENDERS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// Writes into the response stream from the blocking archive thread.
struct ChannelWriter {
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
}

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tx
            .blocking_send(Ok(Bytes::copy_from_slice(buf)))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A file name safe inside an archive: no separators, no leading dots.
fn archive_name(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    cleaned.trim_start_matches('.').chars().take(100).collect()
}

fn json_bytes(value: &Value) -> Vec<u8> {
    serde_json::to_vec_pretty(value).unwrap_or_default()
}

impl Collab {
    /// Renders a whiteboard as SVG (images from the file drop embedded).
    pub async fn whiteboard_svg(
        &self,
        actor: &Actor,
        name: &ObjectName,
    ) -> Result<String, CollabError> {
        let (scene, _) = self
            .read(actor, Channel::Whiteboard, name, |state| match state {
                ObjectState::Whiteboard(scene) => Some(scene.clone()),
                _ => None,
            })
            .await?;
        let scene = scene.ok_or_else(|| CollabError::not_found("not a whiteboard"))?;
        // Pictures come from the file drop: only for those who may read files, only images,
        // within a budget.
        let mut images = Images::new();
        let mut budget = MAX_EMBEDDED_TOTAL;
        let may_read_files = actor.access.can_read(Channel::Files);
        for element in scene.ordered() {
            let Some(file_id) = element.file_id.as_deref() else {
                continue;
            };
            if !may_read_files || element.is_deleted || images.contains_key(file_id) {
                continue;
            }
            if let Ok((info, stream)) = self.open_file(&actor.room, file_id).await
                && info.mime.starts_with("image/")
                && info.size <= MAX_EMBEDDED_IMAGE.min(budget)
                && let Ok(chunks) = stream.try_collect::<Vec<Bytes>>().await
            {
                budget -= info.size;
                images.insert(file_id.to_owned(), (info.mime, chunks.concat()));
            }
        }
        Ok(svg::render_svg(&scene, &images))
    }

    pub async fn whiteboard_png(
        &self,
        actor: &Actor,
        name: &ObjectName,
    ) -> Result<Vec<u8>, CollabError> {
        let svg = self.whiteboard_svg(actor, name).await?;
        let _permit = RENDERS
            .acquire()
            .await
            .map_err(|e| CollabError::unavailable(e.to_string()))?;
        tokio::task::spawn_blocking(move || svg::render_png(&svg))
            .await
            .map_err(|e| CollabError::unavailable(e.to_string()))?
            .map_err(|e| CollabError::unavailable(e.to_string()))
    }

    /// The room's archive as a stream of tar bytes. Moderators only; audited.
    pub async fn export(
        &self,
        actor: &Actor,
    ) -> Result<mpsc::Receiver<Result<Bytes, std::io::Error>>, CollabError> {
        if !actor.moderator {
            return Err(CollabError::not_allowed("only moderators export a room"));
        }
        let unavailable = |e: crate::store::StoreError| CollabError::unavailable(e.to_string());
        let room = actor.room.clone();
        // Everything but file contents is gathered first (small), then streamed.
        let mut documents: Vec<(String, Vec<u8>)> = Vec::new();
        documents.push((
            "manifest.json".into(),
            json_bytes(&json!({"format": 1, "room": room, "exported_at": now_ms(), "exported_by": actor.identity})),
        ));
        for key in self.store().objects(&room).await.map_err(unavailable)? {
            let (state, seq) = self.objects.with_state(&key, |s| s.clone()).await?;
            let name = archive_name(key.name.as_str());
            let (folder, body) = match &state {
                ObjectState::Chat(chat) => (
                    "chat",
                    json!({"seq": seq, "messages": chat.messages().collect::<Vec<_>>()}),
                ),
                ObjectState::Whiteboard(scene) => {
                    documents.push((
                        format!("whiteboards/{name}.svg"),
                        self.whiteboard_svg(actor, &key.name).await?.into_bytes(),
                    ));
                    (
                        "whiteboards",
                        json!({"seq": seq, "elements": scene.ordered()}),
                    )
                }
                ObjectState::Board(board) => ("boards", json!({"seq": seq, "board": board})),
                ObjectState::Files(_) => continue,
            };
            documents.push((format!("{folder}/{name}.json"), json_bytes(&body)));
        }
        let files = self.store().files(&room).await.map_err(unavailable)?;
        documents.push(("files/index.json".into(), json_bytes(&json!(files))));
        let retention = self.store().retention(&room).await.map_err(unavailable)?;
        documents.push((
            "retention.json".into(),
            json_bytes(&json!({"keep_days": retention})),
        ));
        self.store()
            .audit(
                &room,
                now_ms(),
                &actor.identity,
                "export",
                &format!("{} files", files.len()),
            )
            .await
            .map_err(unavailable)?;
        let audit = self.store().audit_log(&room).await.map_err(unavailable)?;
        documents.push(("audit.json".into(), json_bytes(&json!(audit))));

        let (tx, rx) = mpsc::channel(ARCHIVE_QUEUE);
        let collab = self.clone();
        let handle = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let error_tx = tx.clone();
            let mut archive = tar::Builder::new(ChannelWriter { tx });
            let result = (|| -> std::io::Result<()> {
                for (path, bytes) in documents {
                    let mut header = tar::Header::new_gnu();
                    header.set_size(bytes.len() as u64);
                    header.set_mode(0o644);
                    archive.append_data(&mut header, path, bytes.as_slice())?;
                }
                for file in files {
                    let stream = handle
                        .block_on(collab.files.read(&room, &file.id))
                        .map_err(std::io::Error::other)?
                        .map_err(std::io::Error::other);
                    let reader =
                        SyncIoBridge::new_with_handle(StreamReader::new(stream), handle.clone());
                    let mut header = tar::Header::new_gnu();
                    header.set_size(file.size);
                    header.set_mode(0o644);
                    let path = format!("files/{}-{}", file.id, archive_name(&file.name));
                    archive.append_data(&mut header, path, reader)?;
                }
                archive.finish()
            })();
            if let Err(e) = result {
                let _ = error_tx.blocking_send(Err(e));
            }
        });
        Ok(rx)
    }
}
