//! Room recording: while a moderator has it on, every participant who publishes is recorded
//! to a WebM file of its own by `ting-recorder`, which watches them over WHEP like a player.
//! Everyone in the room sees `settings.recording`. Files go to
//! `<recordings dir>/<room>/<recording id>/<identity>[-n].webm`.

use std::collections::{HashMap, HashSet};
use std::fs::OpenOptions;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ting_protocol::{ErrorCode, ParticipantId, Role, RoomId, ServerMessage};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::hub::{Hub, HubError};

/// Where recordings go and how the recorder reaches this node.
#[derive(Debug, Clone)]
pub struct RecordingConfig {
    pub dir: PathBuf,
    /// This node's HTTP base, for the recorder's WHEP sessions.
    pub server_url: String,
    /// The address the recorder's media sockets bind to.
    pub local_ip: IpAddr,
}

/// A room's running recording.
#[derive(Debug)]
pub struct ActiveRecording {
    pub id: String,
    dir: PathBuf,
    epoch: Instant,
    /// Child of the server's shutdown: stopping the server finishes every file.
    stop: CancellationToken,
    /// Identities being recorded now, with their recorder's number and stop.
    recorders: HashMap<String, (u64, CancellationToken)>,
    next_recorder: u64,
}

/// A file name from an identity: letters, digits, `-`, `_`, `.` kept; the rest `_`.
fn file_stem(identity: &str) -> String {
    let stem: String = identity
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    match stem.trim_start_matches('.') {
        "" => "participant".to_owned(),
        s => s.to_owned(),
    }
}

/// The identity the recorder's WHEP sessions join as (not counted as a person).
pub(crate) const RECORDER_IDENTITY: &str = "ting-recorder";

/// How often recordings are checked against their room's retention rule.
const RETENTION_SWEEP: Duration = Duration::from_secs(600);

impl Hub {
    /// Deletes `room`'s recordings older than `keep_days` (their id is their start time in
    /// unix ms), auditing each; returns how many went.
    pub async fn expire_recordings(&self, room: &str, keep_days: u32) -> usize {
        let Some(config) = self.recording_config() else {
            return 0;
        };
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let cutoff = now_ms.saturating_sub(u128::from(keep_days) * 24 * 3600 * 1000);
        let mut removed = 0;
        let dir = config.dir.join(room);
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let id = entry.file_name().to_string_lossy().into_owned();
            let Ok(started) = id.parse::<u128>() else {
                continue;
            };
            if started >= cutoff {
                continue;
            }
            // A recording may be gigabytes: removed off the async workers.
            let path = entry.path();
            let removal = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(path))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)));
            match removal {
                Ok(()) => {
                    removed += 1;
                    if let Some(collab) = self.collab() {
                        let detail = format!("recording {id}, older than {keep_days} days");
                        collab
                            .audit(room, "retention", "recording expired", &detail)
                            .await;
                    }
                }
                Err(e) => warn!(room, %id, "expired recording not removed: {e}"),
            }
        }
        removed
    }

    /// Applies every room's retention rule to its recordings, every ten minutes, until the
    /// server stops.
    pub async fn sweep_recordings_until_shutdown(self) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(RETENTION_SWEEP) => {}
                _ = self.shutdown_token().cancelled() => return,
            }
            let Some(collab) = self.collab() else {
                continue;
            };
            let rules = match collab.store().retention_rules().await {
                Ok(rules) => rules,
                Err(e) => {
                    warn!("retention rules not read: {e}");
                    continue;
                }
            };
            for (room, days) in rules {
                self.expire_recordings(&room, days).await;
            }
        }
    }

    /// A moderator turns the room's recording on or off.
    pub fn set_recording(&self, actor: ParticipantId, active: bool) -> Result<(), HubError> {
        let room = {
            let rooms = self.rooms();
            let member = rooms.member(actor).ok_or_else(|| {
                HubError::new(ErrorCode::NotJoined, "this session is not in a room")
            })?;
            if !member.info.role.moderates() {
                return Err(HubError::new(
                    ErrorCode::NotAllowed,
                    "only hosts and moderators record",
                ));
            }
            rooms
                .room_of(actor)
                .cloned()
                .ok_or_else(|| HubError::new(ErrorCode::NotJoined, "no room"))?
        };
        self.set_room_recording(&room, active)
    }

    /// Turns a room's recording on or off (the caller checked the rights).
    pub fn set_room_recording(&self, room: &RoomId, active: bool) -> Result<(), HubError> {
        let Some(config) = self.recording_config() else {
            return Err(HubError::new(
                ErrorCode::Unavailable,
                "recording is not enabled on this server",
            ));
        };
        let publishers: Vec<String> = {
            let mut rooms = self.rooms();
            let Some(r) = rooms.room_mut(room) else {
                return Err(HubError::new(
                    ErrorCode::NotJoined,
                    "nobody is in this room",
                ));
            };
            match (&r.recording, active) {
                (Some(_), true) => return Ok(()),
                (None, false) => {
                    // Under --auto-record, a stop before anyone publishes holds too.
                    r.recording_stopped = true;
                    return Ok(());
                }
                (Some(_), false) => {
                    if let Some(recording) = r.recording.take() {
                        recording.stop.cancel();
                        info!(%room, id = %recording.id, "recording stopped");
                    }
                }
                (None, true) => {
                    let stamp = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map(|d| d.as_millis())
                        .unwrap_or(0);
                    let id = format!("{stamp}");
                    let dir = config.dir.join(room.as_str()).join(&id);
                    if let Err(e) = std::fs::create_dir_all(&dir) {
                        return Err(HubError::new(
                            ErrorCode::Internal,
                            format!("recording folder: {e}"),
                        ));
                    }
                    info!(%room, %id, "recording started");
                    r.recording = Some(ActiveRecording {
                        id,
                        dir,
                        epoch: Instant::now(),
                        stop: self.shutdown_token().child_token(),
                        recorders: HashMap::new(),
                        next_recorder: 0,
                    });
                }
            }
            r.settings.recording = active;
            r.recording_stopped = !active;
            let settings = r.settings;
            r.broadcast(&ServerMessage::RoomUpdated { settings }, None);
            r.members
                .values()
                .filter(|m| !m.hidden && !m.info.tracks.is_empty())
                .map(|m| m.info.identity.clone())
                .collect()
        };
        for identity in publishers {
            self.record_participant(room, &identity);
        }
        Ok(())
    }

    /// Starts recording `identity` if the room records and it is not recorded yet.
    pub(crate) fn record_participant(&self, room: &RoomId, identity: &str) {
        let Some(config) = self.recording_config().cloned() else {
            return;
        };
        let (file, epoch, stop, number, recording_id) = {
            let mut rooms = self.rooms();
            let Some(recording) = rooms.room_mut(room).and_then(|r| r.recording.as_mut()) else {
                return;
            };
            if recording.recorders.contains_key(identity) {
                return;
            }
            // Reserved here, under the lock: two identities with one file name, or a
            // participant who comes back, get files of their own.
            let stem = file_stem(identity);
            let mut file = None;
            for n in 1..1000 {
                let name = if n == 1 {
                    format!("{stem}.webm")
                } else {
                    format!("{stem}-{n}.webm")
                };
                let path = recording.dir.join(name);
                if OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .is_ok()
                {
                    file = Some(path);
                    break;
                }
            }
            let Some(file) = file else {
                warn!(%room, "no file name left for a recording");
                return;
            };
            let stop = recording.stop.child_token();
            let number = recording.next_recorder;
            recording.next_recorder += 1;
            recording
                .recorders
                .insert(identity.to_owned(), (number, stop.clone()));
            (file, recording.epoch, stop, number, recording.id.clone())
        };
        let token = match self.keys().mint(
            room.clone(),
            RECORDER_IDENTITY,
            "Recorder",
            // A moderator's rights let the recorder into locked rooms and past the lobby; its
            // WHEP session cannot use them for anything else.
            Role::Moderator,
            Duration::from_secs(24 * 3600),
        ) {
            Ok(token) => token,
            Err(e) => {
                warn!("recorder token: {e}");
                self.forget_recorder(room, identity, &recording_id, number);
                return;
            }
        };
        let hub = self.clone();
        let (room, identity) = (room.clone(), identity.to_owned());
        // On the sessions' tracker: a graceful shutdown waits for the files to be finished.
        self.sessions().spawn(async move {
            let result = ting_recorder::record(
                ting_recorder::WhepRecording {
                    server: config.server_url.clone(),
                    room: room.to_string(),
                    participant: identity.clone(),
                    token,
                    file: file.clone(),
                    local_ip: config.local_ip,
                    epoch,
                },
                stop,
            )
            .await;
            match result {
                Ok(counts) => {
                    info!(%room, file = %file.display(), video = counts.video_frames, audio = counts.audio_packets, "participant recorded")
                }
                Err(e) => warn!(%room, "recording a participant failed: {e}"),
            }
            hub.forget_recorder(&room, &identity, &recording_id, number);
        });
    }

    /// Drops a finished recorder from its recording (not from a newer one).
    fn forget_recorder(&self, room: &RoomId, identity: &str, recording_id: &str, number: u64) {
        let mut rooms = self.rooms();
        if let Some(recording) = rooms.room_mut(room).and_then(|r| r.recording.as_mut())
            && recording.id == recording_id
            && recording
                .recorders
                .get(identity)
                .is_some_and(|(n, _)| *n == number)
        {
            recording.recorders.remove(identity);
        }
    }

    /// After somebody left: recorders of identities nobody publishes as any more stop (their
    /// files are finished), and a recording with nobody left but its own recorders ends.
    pub(crate) fn recording_after_departure(&self, room: &RoomId) {
        let mut rooms = self.rooms();
        let Some(r) = rooms.room_mut(room) else {
            return;
        };
        let publishing: HashSet<&str> = r
            .members
            .values()
            .filter(|m| !m.hidden && !m.info.tracks.is_empty())
            .map(|m| m.info.identity.as_str())
            .collect();
        let nobody = r.members.values().all(|m| m.hidden);
        let Some(recording) = r.recording.as_mut() else {
            return;
        };
        recording.recorders.retain(|identity, (_, stop)| {
            let keep = publishing.contains(identity.as_str());
            if !keep {
                stop.cancel();
            }
            keep
        });
        if nobody && let Some(recording) = r.recording.take() {
            recording.stop.cancel();
            r.settings.recording = false;
            info!(%room, id = %recording.id, "recording ended: everybody left");
        }
    }
}
