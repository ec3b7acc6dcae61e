//! The file drop's object: the list of a room's files. Files arrive through tus uploads and
//! leave by deletion or retention; each change is an event like any other, so subscribers
//! see new files live and catch up by sequence.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use ting_protocol::collab::Author;

use crate::model::Stored;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    pub id: String,
    /// The name the uploader gave, as metadata only: it never becomes a path.
    pub name: String,
    pub mime: String,
    pub size: u64,
    /// Hex SHA-256 of the content.
    pub sha256: String,
    pub uploader: Author,
    /// Upload completion, unix ms.
    pub at: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FilesState {
    files: BTreeMap<String, FileInfo>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum Event {
    Added { file: FileInfo },
    Removed { id: String },
}

/// The event announcing a completed upload.
pub fn added(file: &FileInfo) -> Value {
    json!({"event": "added", "file": file})
}

/// The event of a deleted (or expired) file.
pub fn removed(id: &str) -> Value {
    json!({"event": "removed", "id": id})
}

impl FilesState {
    pub fn apply(&mut self, event: Stored<'_>) {
        match serde_json::from_value::<Event>(event.body.clone()) {
            Ok(Event::Added { file }) => {
                self.files.insert(file.id.clone(), file);
            }
            Ok(Event::Removed { id }) => {
                self.files.remove(&id);
            }
            Err(_) => {}
        }
    }

    pub fn files(&self) -> impl Iterator<Item = &FileInfo> {
        self.files.values()
    }
}
