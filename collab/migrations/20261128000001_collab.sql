-- Collaboration data. Portable SQL: the same file runs on SQLite and PostgreSQL.

-- Every stored change of every object (chat room, whiteboard, board, file list), in order.
CREATE TABLE collab_events (
    room TEXT NOT NULL,
    channel TEXT NOT NULL,
    object TEXT NOT NULL,
    seq BIGINT NOT NULL,
    at_ms BIGINT NOT NULL,
    author_identity TEXT NOT NULL,
    author_name TEXT NOT NULL,
    op_id TEXT,
    body TEXT NOT NULL,
    PRIMARY KEY (room, channel, object, seq)
);
-- A client's op id is applied once (NULL op ids are never equal).
CREATE UNIQUE INDEX collab_events_op ON collab_events (room, channel, object, author_identity, op_id);
CREATE INDEX collab_events_age ON collab_events (room, at_ms);

-- An object's state as of `seq`, so loading it does not replay its whole history.
CREATE TABLE collab_snapshots (
    room TEXT NOT NULL,
    channel TEXT NOT NULL,
    object TEXT NOT NULL,
    seq BIGINT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (room, channel, object)
);

CREATE TABLE collab_files (
    id TEXT PRIMARY KEY,
    room TEXT NOT NULL,
    name TEXT NOT NULL,
    mime TEXT NOT NULL,
    size BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    uploader_identity TEXT NOT NULL,
    uploader_name TEXT NOT NULL,
    at_ms BIGINT NOT NULL
);
CREATE INDEX collab_files_room ON collab_files (room);

-- tus uploads in progress; their bytes are chunk objects in the blob store.
CREATE TABLE collab_uploads (
    id TEXT PRIMARY KEY,
    room TEXT NOT NULL,
    name TEXT NOT NULL,
    mime TEXT NOT NULL,
    length BIGINT NOT NULL,
    upload_offset BIGINT NOT NULL,
    chunks BIGINT NOT NULL,
    uploader_identity TEXT NOT NULL,
    uploader_name TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL
);
CREATE INDEX collab_uploads_room ON collab_uploads (room);

CREATE TABLE collab_retention (
    room TEXT PRIMARY KEY,
    keep_days BIGINT,
    set_by TEXT NOT NULL,
    set_ms BIGINT NOT NULL
);

CREATE TABLE collab_audit (
    room TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX collab_audit_room ON collab_audit (room, at_ms);
