//! Records management: per-room retention ("keep N days" or keep), the audit log of
//! deletions and moderator actions, and the background sweeps that enforce both.

use std::time::Duration;

use ting_protocol::collab::{Channel, ObjectName};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::Collab;
use crate::drop::{self, FileInfo};
use crate::files::{FileError, file_path};
use crate::model::{Actor, CollabError};
use crate::service::now_ms;
use crate::store::{AuditEntry, ObjectKey};

const DAY_MS: i64 = 24 * 3600 * 1000;
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// Longest rule a moderator may set (ten years).
const MAX_KEEP_DAYS: u32 = 3660;

fn main_object() -> ObjectName {
    // "main" is a valid object name by construction.
    ObjectName::new("main").unwrap_or_else(|e| unreachable!("{e}"))
}

pub(crate) fn chat_key(room: &str) -> ObjectKey {
    ObjectKey {
        room: room.to_owned(),
        channel: Channel::Chat,
        name: main_object(),
    }
}

pub(crate) fn files_key(room: &str) -> ObjectKey {
    ObjectKey {
        room: room.to_owned(),
        channel: Channel::Files,
        name: main_object(),
    }
}

/// What one retention run removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RetentionReport {
    pub messages: usize,
    pub files: usize,
    pub log_events: u64,
}

pub(crate) async fn remove_file(
    collab: &Collab,
    room: &str,
    file: &FileInfo,
    actor: &str,
    action: &str,
) -> Result<(), FileError> {
    collab.store().delete_file(&file.id).await?;
    if let Err(e) = collab.files.blobs.delete(&file_path(room, &file.id)).await {
        warn!(file = %file.id, "file content not removed: {e}");
    }
    let author = ting_protocol::collab::Author {
        identity: actor.to_owned(),
        name: actor.to_owned(),
    };
    if let Err(e) = collab
        .objects
        .write_event(&files_key(room), &author, drop::removed(&file.id))
        .await
    {
        warn!(file = %file.id, "file removal not announced: {e}");
    }
    let detail = format!(
        "{} ({}, {} bytes, sha256 {})",
        file.id, file.name, file.size, file.sha256
    );
    collab
        .store()
        .audit(room, now_ms(), actor, action, &detail)
        .await?;
    Ok(())
}

impl Collab {
    /// Sets a room's rule: keep `Some(days)` days, or `None` to keep everything. Moderators
    /// only; applied at once and then by the sweep.
    pub async fn set_retention(
        &self,
        actor: &Actor,
        keep_days: Option<u32>,
    ) -> Result<RetentionReport, CollabError> {
        if !actor.moderator {
            return Err(CollabError::not_allowed("only moderators set retention"));
        }
        if keep_days.is_some_and(|d| d == 0 || d > MAX_KEEP_DAYS) {
            return Err(CollabError::bad(format!(
                "keep 1-{MAX_KEEP_DAYS} days, or keep all"
            )));
        }
        let now = now_ms();
        let store = self.store();
        let unavailable = |e| CollabError::unavailable(format!("{e}"));
        store
            .set_retention(&actor.room, keep_days, &actor.identity, now)
            .await
            .map_err(unavailable)?;
        let rule = keep_days.map_or("keep everything".to_owned(), |d| format!("keep {d} days"));
        store
            .audit(&actor.room, now, &actor.identity, "retention set", &rule)
            .await
            .map_err(unavailable)?;
        match keep_days {
            Some(days) => self.apply_retention(&actor.room, days, now).await,
            None => Ok(RetentionReport::default()),
        }
    }

    pub async fn retention(&self, room: &str) -> Result<Option<u32>, crate::store::StoreError> {
        self.store().retention(room).await
    }

    /// Removes what is older than `keep_days` before `now_ms`: chat messages (entirely),
    /// files, and the log entries behind them (each object's snapshot is rewritten first, so
    /// boards and whiteboards lose nothing current). Audited.
    pub async fn apply_retention(
        &self,
        room: &str,
        keep_days: u32,
        now_ms: i64,
    ) -> Result<RetentionReport, CollabError> {
        let cutoff = now_ms - i64::from(keep_days) * DAY_MS;
        let unavailable = |e: crate::store::StoreError| CollabError::unavailable(e.to_string());
        let mut report = RetentionReport::default();
        let author = ting_protocol::collab::Author {
            identity: "retention".into(),
            name: "Retention".into(),
        };
        for key in self.store().objects(room).await.map_err(unavailable)? {
            report.messages += self.objects.expire(&key, cutoff, &author).await?;
        }
        for file in self.store().files(room).await.map_err(unavailable)? {
            if file.at < cutoff {
                remove_file(self, room, &file, "retention", "file expired")
                    .await
                    .map_err(|e| CollabError::unavailable(e.to_string()))?;
                report.files += 1;
            }
        }
        report.log_events = self
            .store()
            .prune_events(room, cutoff)
            .await
            .map_err(unavailable)?;
        if report != RetentionReport::default() {
            let detail = format!(
                "{} messages, {} files, {} log events older than {keep_days} days",
                report.messages, report.files, report.log_events
            );
            self.store()
                .audit(room, now_ms, "retention", "retention applied", &detail)
                .await
                .map_err(unavailable)?;
            info!(
                room,
                messages = report.messages,
                files = report.files,
                "retention applied"
            );
        }
        Ok(report)
    }

    /// Objects held in memory now.
    pub fn loaded_objects(&self) -> usize {
        self.objects.loaded()
    }

    /// Records a moderator action of the meeting (mute, remove, lock…) in the room's audit log.
    pub async fn audit(&self, room: &str, actor: &str, action: &str, detail: &str) {
        if let Err(e) = self
            .store()
            .audit(room, now_ms(), actor, action, detail)
            .await
        {
            warn!(room, action, "audit entry not stored: {e}");
        }
    }

    /// The room's audit log, for moderators.
    pub async fn audit_log(&self, actor: &Actor) -> Result<Vec<AuditEntry>, CollabError> {
        if !actor.moderator {
            return Err(CollabError::not_allowed(
                "only moderators read the audit log",
            ));
        }
        self.store()
            .audit_log(&actor.room)
            .await
            .map_err(|e| CollabError::unavailable(e.to_string()))
    }

    /// One pass of the background work: expired uploads go, retention rules apply, objects
    /// nobody follows leave memory.
    pub async fn sweep(&self, now_ms: i64) {
        self.finish_complete_uploads().await;
        match self.store().expired_uploads(now_ms).await {
            Ok(expired) => {
                for id in expired {
                    if let Err(e) = self.store().delete_upload(&id).await {
                        warn!(upload = %id, "expired upload not removed: {e}");
                        continue;
                    }
                    self.files.remove_chunks(&id).await;
                }
            }
            Err(e) => warn!("expired uploads not listed: {e}"),
        }
        match self.store().retention_rules().await {
            Ok(rules) => {
                for (room, days) in rules {
                    if let Err(e) = self.apply_retention(&room, days, now_ms).await {
                        warn!(room, "retention not applied: {e}");
                    }
                }
            }
            Err(e) => warn!("retention rules not read: {e}"),
        }
        let evicted = self.objects.evict_idle();
        if evicted > 0 {
            tracing::debug!(evicted, "idle collab objects unloaded");
        }
    }
}

pub(crate) async fn sweep_until(collab: Collab, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(SWEEP_EVERY) => collab.sweep(now_ms()).await,
            _ = shutdown.cancelled() => return,
        }
    }
}
