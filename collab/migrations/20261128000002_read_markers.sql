-- Chat read markers: one row per reader and chat object, outside the event log (a marker moves
-- with every message a reader sees; logging and fanning out each move would cost O(readers²)).
CREATE TABLE collab_read_markers (
    room TEXT NOT NULL,
    object TEXT NOT NULL,
    identity TEXT NOT NULL,
    up_to BIGINT NOT NULL,
    PRIMARY KEY (room, object, identity)
);
