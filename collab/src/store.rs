//! Durable storage of collab data through sqlx: SQLite (one file in the data directory) for a
//! single node, PostgreSQL for a cluster. The same portable SQL runs on both (the Any driver,
//! `$n` placeholders in order). A call returns only after its transaction has committed.

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Row};
use ting_protocol::collab::{Author, Channel, ObjectName};

use crate::drop::FileInfo;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The sequence number or op id is taken (another node wrote first, or a retry).
    #[error("conflict")]
    Conflict,
}

/// Identifies one object: its room, channel and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub room: String,
    pub channel: Channel,
    pub name: ObjectName,
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.room, self.channel, self.name)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub seq: u64,
    pub at: i64,
    pub author: Author,
    pub op_id: Option<String>,
    pub body: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    pub id: String,
    pub room: String,
    pub name: String,
    pub mime: String,
    pub length: u64,
    pub offset: u64,
    pub chunks: u64,
    pub uploader: Author,
    pub created_ms: i64,
    pub expires_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditEntry {
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub detail: String,
}

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    postgres: bool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.postgres {
            "Store(postgres)"
        } else {
            "Store(sqlite)"
        })
    }
}

fn as_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn as_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.is_unique_violation())
}

impl Store {
    /// Connects (creating a SQLite file if needed) and runs the migrations. `url` is
    /// `sqlite://path` or `postgres://…`.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let postgres = url.starts_with("postgres");
        let url = if postgres || url.contains('?') {
            url.to_owned()
        } else {
            format!("{url}?mode=rwc")
        };
        let options = AnyConnectOptions::from_str(&url)?;
        let pool = AnyPoolOptions::new()
            .max_connections(if postgres { 16 } else { 4 })
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if !postgres {
                        // WAL with full sync: a commit is on disk when it returns.
                        for pragma in [
                            "PRAGMA journal_mode = WAL",
                            "PRAGMA synchronous = FULL",
                            "PRAGMA busy_timeout = 5000",
                        ] {
                            sqlx::query(pragma).execute(&mut *conn).await?;
                        }
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Self { pool, postgres })
    }

    pub fn is_postgres(&self) -> bool {
        self.postgres
    }

    /// Appends one event. `Conflict` when `seq` or `(author, op_id)` is taken.
    pub async fn append(&self, key: &ObjectKey, event: &StoredEvent) -> Result<(), StoreError> {
        let result = sqlx::query(
            "INSERT INTO collab_events (room, channel, object, seq, at_ms, author_identity, \
             author_name, op_id, body) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&key.room)
        .bind(key.channel.as_str())
        .bind(key.name.as_str())
        .bind(as_i64(event.seq))
        .bind(event.at)
        .bind(&event.author.identity)
        .bind(&event.author.name)
        .bind(event.op_id.as_deref())
        .bind(&event.body)
        .execute(&self.pool)
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict),
            Err(e) => Err(e.into()),
        }
    }

    /// The seq of an earlier write with this op id, if there was one.
    pub async fn find_op(
        &self,
        key: &ObjectKey,
        author: &str,
        op_id: &str,
    ) -> Result<Option<u64>, StoreError> {
        let row = sqlx::query(
            "SELECT seq FROM collab_events WHERE room = $1 AND channel = $2 AND object = $3 \
             AND author_identity = $4 AND op_id = $5",
        )
        .bind(&key.room)
        .bind(key.channel.as_str())
        .bind(key.name.as_str())
        .bind(author)
        .bind(op_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| as_u64(r.get::<i64, _>(0))))
    }

    /// Events after `seq`, in order (at most `limit`).
    pub async fn events_after(
        &self,
        key: &ObjectKey,
        seq: u64,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, at_ms, author_identity, author_name, op_id, body FROM collab_events \
             WHERE room = $1 AND channel = $2 AND object = $3 AND seq > $4 ORDER BY seq LIMIT $5",
        )
        .bind(&key.room)
        .bind(key.channel.as_str())
        .bind(key.name.as_str())
        .bind(as_i64(seq))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| StoredEvent {
                seq: as_u64(r.get(0)),
                at: r.get(1),
                author: Author {
                    identity: r.get(2),
                    name: r.get(3),
                },
                op_id: r.get(4),
                body: r.get(5),
            })
            .collect())
    }

    /// The first and last seq still in the log.
    pub async fn log_bounds(&self, key: &ObjectKey) -> Result<Option<(u64, u64)>, StoreError> {
        let row = sqlx::query(
            "SELECT MIN(seq), MAX(seq) FROM collab_events WHERE room = $1 AND channel = $2 \
             AND object = $3",
        )
        .bind(&key.room)
        .bind(key.channel.as_str())
        .bind(key.name.as_str())
        .fetch_one(&self.pool)
        .await?;
        let first: Option<i64> = row.get(0);
        let last: Option<i64> = row.get(1);
        Ok(first.zip(last).map(|(f, l)| (as_u64(f), as_u64(l))))
    }

    pub async fn snapshot(&self, key: &ObjectKey) -> Result<Option<(u64, String)>, StoreError> {
        let row = sqlx::query(
            "SELECT seq, body FROM collab_snapshots WHERE room = $1 AND channel = $2 AND object = $3",
        )
        .bind(&key.room)
        .bind(key.channel.as_str())
        .bind(key.name.as_str())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| (as_u64(r.get(0)), r.get(1))))
    }

    /// Stores a snapshot unless a newer one is there already (another node may have written
    /// one meanwhile).
    pub async fn save_snapshot(
        &self,
        key: &ObjectKey,
        seq: u64,
        body: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO collab_snapshots (room, channel, object, seq, body) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (room, channel, object) DO UPDATE \
             SET seq = excluded.seq, body = excluded.body WHERE collab_snapshots.seq < excluded.seq",
        )
        .bind(&key.room)
        .bind(key.channel.as_str())
        .bind(key.name.as_str())
        .bind(as_i64(seq))
        .bind(body)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Objects of a room that have any stored data.
    pub async fn objects(&self, room: &str) -> Result<Vec<ObjectKey>, StoreError> {
        let rows = sqlx::query(
            "SELECT DISTINCT channel, object FROM collab_events WHERE room = $1 \
             UNION SELECT channel, object FROM collab_snapshots WHERE room = $2",
        )
        .bind(room)
        .bind(room)
        .fetch_all(&self.pool)
        .await?;
        let mut keys: Vec<ObjectKey> = rows
            .into_iter()
            .filter_map(|r| {
                let channel: String = r.get(0);
                let name: String = r.get(1);
                Some(ObjectKey {
                    room: room.to_owned(),
                    channel: channel.parse().ok()?,
                    name: ObjectName::new(&name).ok()?,
                })
            })
            .collect();
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    /// Deletes a room's log entries older than `cutoff_ms` (retention; the objects'
    /// snapshots are rewritten first by the caller).
    pub async fn prune_events(&self, room: &str, cutoff_ms: i64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM collab_events WHERE room = $1 AND at_ms < $2")
            .bind(room)
            .bind(cutoff_ms)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// Moves a reader's marker forward (never back); returns where it now is.
    pub async fn set_read_marker(
        &self,
        room: &str,
        object: &str,
        identity: &str,
        up_to: u64,
    ) -> Result<u64, StoreError> {
        sqlx::query(
            "INSERT INTO collab_read_markers (room, object, identity, up_to) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (room, object, identity) DO UPDATE SET up_to = CASE \
             WHEN excluded.up_to > collab_read_markers.up_to THEN excluded.up_to \
             ELSE collab_read_markers.up_to END",
        )
        .bind(room)
        .bind(object)
        .bind(identity)
        .bind(as_i64(up_to))
        .execute(&self.pool)
        .await?;
        Ok(self
            .read_marker(room, object, identity)
            .await?
            .unwrap_or(up_to))
    }

    pub async fn read_marker(
        &self,
        room: &str,
        object: &str,
        identity: &str,
    ) -> Result<Option<u64>, StoreError> {
        let row = sqlx::query(
            "SELECT up_to FROM collab_read_markers WHERE room = $1 AND object = $2 AND identity = $3",
        )
        .bind(room)
        .bind(object)
        .bind(identity)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| as_u64(r.get(0))))
    }

    // --- files ---

    pub async fn insert_upload(&self, upload: &Upload) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO collab_uploads (id, room, name, mime, length, upload_offset, chunks, \
             uploader_identity, uploader_name, created_ms, expires_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(&upload.id)
        .bind(&upload.room)
        .bind(&upload.name)
        .bind(&upload.mime)
        .bind(as_i64(upload.length))
        .bind(as_i64(upload.offset))
        .bind(as_i64(upload.chunks))
        .bind(&upload.uploader.identity)
        .bind(&upload.uploader.name)
        .bind(upload.created_ms)
        .bind(upload.expires_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn upload(&self, id: &str) -> Result<Option<Upload>, StoreError> {
        let row = sqlx::query(
            "SELECT id, room, name, mime, length, upload_offset, chunks, uploader_identity, \
             uploader_name, created_ms, expires_ms FROM collab_uploads WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| Upload {
            id: r.get(0),
            room: r.get(1),
            name: r.get(2),
            mime: r.get(3),
            length: as_u64(r.get(4)),
            offset: as_u64(r.get(5)),
            chunks: as_u64(r.get(6)),
            uploader: Author {
                identity: r.get(7),
                name: r.get(8),
            },
            created_ms: r.get(9),
            expires_ms: r.get(10),
        }))
    }

    /// Records a stored chunk; `Conflict` if the offset moved meanwhile (a parallel PATCH).
    pub async fn advance_upload(
        &self,
        id: &str,
        from: u64,
        to: u64,
        expires_ms: i64,
    ) -> Result<(), StoreError> {
        let done = sqlx::query(
            "UPDATE collab_uploads SET upload_offset = $1, chunks = chunks + 1, expires_ms = $2 \
             WHERE id = $3 AND upload_offset = $4",
        )
        .bind(as_i64(to))
        .bind(expires_ms)
        .bind(id)
        .bind(as_i64(from))
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 1 {
            Ok(())
        } else {
            Err(StoreError::Conflict)
        }
    }

    pub async fn delete_upload(&self, id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM collab_uploads WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Uploads whose bytes are all in (a file still to be made).
    pub async fn complete_uploads(&self) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("SELECT id FROM collab_uploads WHERE upload_offset = length")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(|r| r.get(0)).collect())
    }

    pub async fn expired_uploads(&self, now_ms: i64) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("SELECT id FROM collab_uploads WHERE expires_ms < $1")
            .bind(now_ms)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(|r| r.get(0)).collect())
    }

    /// Bytes a room uses or has reserved: stored files plus declared lengths of uploads.
    pub async fn room_usage(&self, room: &str) -> Result<u64, StoreError> {
        let files: Option<i64> =
            sqlx::query("SELECT CAST(SUM(size) AS BIGINT) FROM collab_files WHERE room = $1")
                .bind(room)
                .fetch_one(&self.pool)
                .await?
                .get(0);
        let uploads: Option<i64> =
            sqlx::query("SELECT CAST(SUM(length) AS BIGINT) FROM collab_uploads WHERE room = $1")
                .bind(room)
                .fetch_one(&self.pool)
                .await?
                .get(0);
        Ok(as_u64(files.unwrap_or(0)) + as_u64(uploads.unwrap_or(0)))
    }

    /// Turns a finished upload into a file, in one transaction.
    pub async fn complete_upload(
        &self,
        upload_id: &str,
        file: &FileInfo,
        room: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let removed = sqlx::query("DELETE FROM collab_uploads WHERE id = $1")
            .bind(upload_id)
            .execute(&mut *tx)
            .await?;
        // Another request finished this upload first: no second file.
        if removed.rows_affected() != 1 {
            tx.rollback().await?;
            return Err(StoreError::Conflict);
        }
        sqlx::query(
            "INSERT INTO collab_files (id, room, name, mime, size, sha256, uploader_identity, \
             uploader_name, at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&file.id)
        .bind(room)
        .bind(&file.name)
        .bind(&file.mime)
        .bind(as_i64(file.size))
        .bind(&file.sha256)
        .bind(&file.uploader.identity)
        .bind(&file.uploader.name)
        .bind(file.at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn file(&self, id: &str) -> Result<Option<(String, FileInfo)>, StoreError> {
        let row = sqlx::query(
            "SELECT room, id, name, mime, size, sha256, uploader_identity, uploader_name, at_ms \
             FROM collab_files WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| (r.get(0), file_from_row(&r, 1))))
    }

    pub async fn files(&self, room: &str) -> Result<Vec<FileInfo>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, name, mime, size, sha256, uploader_identity, uploader_name, at_ms \
             FROM collab_files WHERE room = $1 ORDER BY at_ms, id",
        )
        .bind(room)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| file_from_row(r, 0)).collect())
    }

    pub async fn delete_file(&self, id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM collab_files WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    // --- retention and audit ---

    pub async fn set_retention(
        &self,
        room: &str,
        keep_days: Option<u32>,
        by: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM collab_retention WHERE room = $1")
            .bind(room)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO collab_retention (room, keep_days, set_by, set_ms) VALUES ($1, $2, $3, $4)",
        )
        .bind(room)
        .bind(keep_days.map(i64::from))
        .bind(by)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn retention(&self, room: &str) -> Result<Option<u32>, StoreError> {
        let row = sqlx::query("SELECT keep_days FROM collab_retention WHERE room = $1")
            .bind(room)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row
            .and_then(|r| r.get::<Option<i64>, _>(0))
            .and_then(|d| u32::try_from(d).ok()))
    }

    /// Rooms with a "keep N days" rule.
    pub async fn retention_rules(&self) -> Result<Vec<(String, u32)>, StoreError> {
        let rows =
            sqlx::query("SELECT room, keep_days FROM collab_retention WHERE keep_days IS NOT NULL")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .into_iter()
            .filter_map(|r| {
                let days: i64 = r.get(1);
                Some((r.get(0), u32::try_from(days).ok()?))
            })
            .collect())
    }

    pub async fn audit(
        &self,
        room: &str,
        at_ms: i64,
        actor: &str,
        action: &str,
        detail: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO collab_audit (room, at_ms, actor, action, detail) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(room)
        .bind(at_ms)
        .bind(actor)
        .bind(action)
        .bind(detail)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn audit_log(&self, room: &str) -> Result<Vec<AuditEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT at_ms, actor, action, detail FROM collab_audit WHERE room = $1 ORDER BY at_ms",
        )
        .bind(room)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| AuditEntry {
                at: r.get(0),
                actor: r.get(1),
                action: r.get(2),
                detail: r.get(3),
            })
            .collect())
    }
}

fn file_from_row(r: &sqlx::any::AnyRow, at: usize) -> FileInfo {
    FileInfo {
        id: r.get(at),
        name: r.get(at + 1),
        mime: r.get(at + 2),
        size: as_u64(r.get(at + 3)),
        sha256: r.get(at + 4),
        uploader: Author {
            identity: r.get(at + 5),
            name: r.get(at + 6),
        },
        at: r.get(at + 7),
    }
}
