//! The collab service: loads objects from storage, runs their state machines, stores each
//! change before anyone hears of it, and fans events out to subscribers. One async mutex
//! per object orders its writes; everything else is per call.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use ting_protocol::ServerMessage;
use ting_protocol::collab::{
    Author, Channel, CollabErrorCode, CollabEvent, MAX_COLLAB_BODY_BYTES, ObjectName,
};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::fanout::Fanout;
use crate::model::{Actor, CollabError, Ctx, ObjectState, Stored};
use crate::store::{ObjectKey, Store, StoreError, StoredEvent};

/// Events after which an object's state is written as a snapshot.
const SNAPSHOT_EVERY: u64 = 200;
/// A subscriber further behind than this gets a snapshot instead of the events. Catch-up is
/// queued at once to the socket's outbox (1024 messages), so it must fit there.
const MAX_CATCH_UP_EVENTS: u64 = 500;
/// Nor more than this many bytes of event bodies.
const MAX_CATCH_UP_BYTES: usize = 8 << 20;
const MAX_OP_ID_BYTES: usize = 64;
const MAX_VOLATILE_BYTES: usize = 4096;
/// Writes retried after a conflict with another node (each after catching up and a short
/// random pause, so that two busy nodes do not keep colliding).
const WRITE_ATTEMPTS: u32 = 20;

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

struct Live {
    state: ObjectState,
    seq: u64,
    snapshot_seq: u64,
}

#[derive(Clone)]
struct Subscriber {
    identity: String,
    tx: mpsc::Sender<ServerMessage>,
    lagged: CancellationToken,
}

type Slot = Arc<tokio::sync::Mutex<Option<Live>>>;

pub(crate) struct Objects {
    store: Store,
    live: Mutex<HashMap<ObjectKey, Slot>>,
    subscribers: Mutex<HashMap<ObjectKey, HashMap<u64, Subscriber>>>,
    next_subscriber: AtomicU64,
    fanout: Option<Fanout>,
}

fn unavailable(e: StoreError) -> CollabError {
    warn!("collab storage failed: {e}");
    CollabError::unavailable("storage is unavailable; retry with the same op id")
}

impl Objects {
    pub(crate) fn new(store: Store, fanout: Option<Fanout>) -> Self {
        Self {
            store,
            live: Mutex::new(HashMap::new()),
            subscribers: Mutex::new(HashMap::new()),
            next_subscriber: AtomicU64::new(1),
            fanout,
        }
    }

    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    fn slot(&self, key: &ObjectKey) -> Slot {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.entry(key.clone()).or_default().clone()
    }

    /// Locks an object, loading it from storage first if this node has not yet.
    async fn lock(
        &self,
        key: &ObjectKey,
    ) -> Result<tokio::sync::OwnedMutexGuard<Option<Live>>, CollabError> {
        let mut guard = self.slot(key).lock_owned().await;
        if guard.is_none() {
            *guard = Some(self.load(key).await.map_err(unavailable)?);
        }
        Ok(guard)
    }

    /// As [`Objects::lock`], and in a cluster caught up with what other nodes stored (a
    /// fan-out notice may have been lost), before serving a reader.
    async fn lock_fresh(
        &self,
        key: &ObjectKey,
    ) -> Result<tokio::sync::OwnedMutexGuard<Option<Live>>, CollabError> {
        let mut guard = self.lock(key).await?;
        if self.fanout.is_some()
            && let Some(live) = guard.as_mut()
        {
            self.replay(key, live, true).await.map_err(unavailable)?;
        }
        Ok(guard)
    }

    async fn load(&self, key: &ObjectKey) -> Result<Live, StoreError> {
        let (mut state, seq) = match self.store.snapshot(key).await? {
            Some((seq, body)) => match serde_json::from_str::<ObjectState>(&body) {
                Ok(state) => (state, seq),
                Err(e) => {
                    warn!(object = %key, "unreadable snapshot, replaying the log: {e}");
                    (ObjectState::empty(key.channel), 0)
                }
            },
            None => (ObjectState::empty(key.channel), 0),
        };
        if let ObjectState::Chat(chat) = &mut state {
            chat.after_restore();
        }
        let mut live = Live {
            state,
            seq,
            snapshot_seq: seq,
        };
        self.replay(key, &mut live, false).await?;
        Ok(live)
    }

    /// Applies the stored events after `live.seq` (written by this node before a restart, or
    /// by other nodes), telling subscribers when `broadcast`.
    async fn replay(
        &self,
        key: &ObjectKey,
        live: &mut Live,
        broadcast: bool,
    ) -> Result<(), StoreError> {
        loop {
            let events = self.store.events_after(key, live.seq, 1000).await?;
            if events.is_empty() {
                return Ok(());
            }
            for event in events {
                let body: Value = serde_json::from_str(&event.body).unwrap_or(Value::Null);
                live.state.apply(Stored {
                    seq: event.seq,
                    at: event.at,
                    author: &event.author,
                    body: &body,
                });
                live.seq = event.seq;
                if broadcast {
                    self.broadcast(key, event_message(key, &event, body), None);
                }
            }
        }
    }

    /// Drops objects nobody follows or uses from memory (they load again from storage on the
    /// next use). Returns how many went.
    pub(crate) fn evict_idle(&self) -> usize {
        // Lock order: the map of objects, then the subscribers (nothing takes them the other
        // way round). Under the map's lock nobody can take a new handle to a slot, so one held
        // only by the map and followed by nobody is idle.
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let subscribers = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        let before = live.len();
        live.retain(|key, slot| subscribers.contains_key(key) || Arc::strong_count(slot) > 1);
        before - live.len()
    }

    pub(crate) fn loaded(&self) -> usize {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Catches an object up with events other nodes stored (called on a fan-out notice).
    pub(crate) async fn refresh(&self, key: &ObjectKey) {
        let slot = {
            let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
            live.get(key).cloned()
        };
        let Some(slot) = slot else { return };
        let mut guard = slot.lock().await;
        if let Some(live) = guard.as_mut()
            && let Err(e) = self.replay(key, live, true).await
        {
            warn!(object = %key, "catching up failed: {e}");
        }
    }

    fn broadcast(&self, key: &ObjectKey, message: ServerMessage, except: Option<u64>) {
        let mut subscribers = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        let Some(subs) = subscribers.get_mut(key) else {
            return;
        };
        let volatile = matches!(&message, ServerMessage::Collab(e) if e.volatile);
        subs.retain(|id, sub| {
            if Some(*id) == except {
                return true;
            }
            match sub.tx.try_send(message.clone()) {
                Ok(()) => true,
                // A droppable frame may be dropped; a stored event may not: the subscriber
                // is told it lagged (its socket closes, it reconnects and catches up).
                Err(TrySendError::Full(_)) if volatile => true,
                Err(_) => {
                    sub.lagged.cancel();
                    false
                }
            }
        });
    }

    /// A stored write. Returns the event's seq and whether the op id had been applied before.
    pub(crate) async fn write(
        &self,
        actor: &Actor,
        key: &ObjectKey,
        op_id: Option<&str>,
        body: Value,
    ) -> Result<(u64, bool), CollabError> {
        self.store_event(key, &actor.author(), op_id, |state, now_ms, seq| {
            state.decide(Ctx { actor, now_ms, seq }, body.clone())
        })
        .await
    }

    /// A write made by the server itself (file drop announcements, retention).
    pub(crate) async fn write_event(
        &self,
        key: &ObjectKey,
        author: &Author,
        event_body: Value,
    ) -> Result<u64, CollabError> {
        let (seq, _) = self
            .store_event(key, author, None, |_, _, _| Ok(event_body.clone()))
            .await?;
        Ok(seq)
    }

    /// The write loop: under the object's lock, `make` turns the state (and the clock and the
    /// next seq) into an event, which is stored, applied and announced. When another node
    /// stored that seq first, catch up, pause at random and make it again.
    async fn store_event(
        &self,
        key: &ObjectKey,
        author: &Author,
        op_id: Option<&str>,
        make: impl Fn(&ObjectState, i64, u64) -> Result<Value, CollabError>,
    ) -> Result<(u64, bool), CollabError> {
        for attempt in 0..WRITE_ATTEMPTS {
            let mut guard = self.lock(key).await?;
            let Some(live) = guard.as_mut() else {
                return Err(CollabError::unavailable("object not loaded"));
            };
            if let Some(op_id) = op_id
                && let Some(seq) = self
                    .store
                    .find_op(key, &author.identity, op_id)
                    .await
                    .map_err(unavailable)?
            {
                return Ok((seq, true));
            }
            let (seq, now) = (live.seq + 1, now_ms());
            let event_body = make(&live.state, now, seq)?;
            match self
                .commit(key, live, seq, now, author, op_id, event_body)
                .await
            {
                Ok(()) => return Ok((seq, false)),
                Err(StoreError::Conflict) => {
                    self.replay(key, live, true).await.map_err(unavailable)?;
                    drop(guard);
                    back_off(attempt).await;
                }
                Err(e) => return Err(unavailable(e)),
            }
        }
        Err(CollabError::unavailable(
            "too many concurrent writes; retry",
        ))
    }

    /// Stores, applies and announces one event.
    #[allow(clippy::too_many_arguments)]
    async fn commit(
        &self,
        key: &ObjectKey,
        live: &mut Live,
        seq: u64,
        at: i64,
        author: &Author,
        op_id: Option<&str>,
        body: Value,
    ) -> Result<(), StoreError> {
        let stored = StoredEvent {
            seq,
            at,
            author: author.clone(),
            op_id: op_id.map(str::to_owned),
            body: body.to_string(),
        };
        self.store.append(key, &stored).await?;
        live.state.apply(Stored {
            seq,
            at,
            author,
            body: &body,
        });
        live.seq = seq;
        self.broadcast(key, event_message(key, &stored, body), None);
        if let Some(fanout) = &self.fanout {
            fanout.announce(key, seq);
        }
        if seq - live.snapshot_seq >= SNAPSHOT_EVERY {
            self.save_snapshot(key, live).await;
        }
        Ok(())
    }

    async fn save_snapshot(&self, key: &ObjectKey, live: &mut Live) {
        match serde_json::to_string(&live.state) {
            Ok(body) => match self.store.save_snapshot(key, live.seq, &body).await {
                Ok(()) => live.snapshot_seq = live.seq,
                Err(e) => warn!(object = %key, "snapshot not saved: {e}"),
            },
            Err(e) => warn!(object = %key, "snapshot not serialised: {e}"),
        }
    }

    pub(crate) fn add_subscriber_id(&self) -> u64 {
        self.next_subscriber.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) async fn subscribe(
        &self,
        actor: &Actor,
        key: &ObjectKey,
        id: u64,
        tx: &mpsc::Sender<ServerMessage>,
        lagged: &CancellationToken,
        since: Option<u64>,
    ) -> Result<(), CollabError> {
        let guard = self.lock_fresh(key).await?;
        let Some(live) = guard.as_ref() else {
            return Err(CollabError::unavailable("object not loaded"));
        };
        // Registered under the object's lock: no event can slip between catch-up and live.
        {
            let mut subscribers = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
            subscribers.entry(key.clone()).or_default().insert(
                id,
                Subscriber {
                    identity: actor.identity.clone(),
                    tx: tx.clone(),
                    lagged: lagged.clone(),
                },
            );
        }
        let (channel, object) = (key.channel, object_name(key));
        let mut messages = Vec::new();
        let events = match since {
            Some(since) if since == live.seq => Some(Vec::new()),
            Some(since) if since < live.seq && live.seq - since <= MAX_CATCH_UP_EVENTS => {
                let events = self
                    .store
                    .events_after(
                        key,
                        since,
                        u32::try_from(live.seq - since).unwrap_or(u32::MAX),
                    )
                    .await
                    .map_err(unavailable)?;
                // Complete only if the log still holds every event after `since`.
                let complete = events.first().is_some_and(|e| e.seq == since + 1)
                    && events.last().is_some_and(|e| e.seq == live.seq);
                let small =
                    events.iter().map(|e| e.body.len()).sum::<usize>() <= MAX_CATCH_UP_BYTES;
                (complete && small).then_some(events)
            }
            _ => None,
        };
        match events {
            Some(events) => {
                for event in events {
                    let body = serde_json::from_str(&event.body).unwrap_or(Value::Null);
                    messages.push(event_message(key, &event, body));
                }
            }
            None => {
                let mut state = live.state.client_snapshot(actor);
                if key.channel == Channel::Chat {
                    let marker = self
                        .store
                        .read_marker(&key.room, key.name.as_str(), &actor.identity)
                        .await
                        .map_err(unavailable)?;
                    state["read_up_to"] = marker.unwrap_or(0).into();
                }
                messages.push(ServerMessage::CollabSnapshot {
                    channel,
                    object: object.clone(),
                    seq: live.seq,
                    state,
                });
            }
        }
        messages.push(ServerMessage::CollabSynced {
            channel,
            object,
            seq: live.seq,
        });
        // Queued without waiting (the socket that reads this queue is the one waiting for
        // us), still under the object's lock so that live events come after.
        for message in messages {
            if tx.try_send(message).is_err() {
                lagged.cancel();
                break;
            }
        }
        drop(guard);
        Ok(())
    }

    pub(crate) fn unsubscribe(&self, key: &ObjectKey, id: u64) {
        let mut subscribers = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(subs) = subscribers.get_mut(key) {
            subs.remove(&id);
            if subs.is_empty() {
                subscribers.remove(key);
            }
        }
    }

    pub(crate) fn is_subscribed(&self, key: &ObjectKey, id: u64) -> bool {
        let subscribers = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        subscribers.get(key).is_some_and(|s| s.contains_key(&id))
    }

    /// A chat read marker: stored outside the log and told only to the reader's own sockets
    /// (its other devices). Returns the marker and the object's current seq.
    pub(crate) async fn mark_read(
        &self,
        actor: &Actor,
        key: &ObjectKey,
        up_to: u64,
    ) -> Result<(u64, u64), CollabError> {
        let (_, seq) = self.with_state(key, |_| ()).await?;
        let marker = self
            .store
            .set_read_marker(
                &key.room,
                key.name.as_str(),
                &actor.identity,
                up_to.min(seq),
            )
            .await
            .map_err(unavailable)?;
        let message = ServerMessage::Collab(CollabEvent {
            channel: key.channel,
            object: object_name(key),
            seq: None,
            op_id: None,
            author: actor.author(),
            at: now_ms(),
            volatile: true,
            body: serde_json::json!({"event": "read", "up_to": marker}),
        });
        let subscribers = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        for sub in subscribers.get(key).into_iter().flat_map(|s| s.values()) {
            if sub.identity == actor.identity {
                let _ = sub.tx.try_send(message.clone());
            }
        }
        Ok((marker, seq))
    }

    pub(crate) fn volatile(&self, actor: &Actor, key: &ObjectKey, from: u64, body: Value) {
        let message = ServerMessage::Collab(CollabEvent {
            channel: key.channel,
            object: object_name(key),
            seq: None,
            op_id: None,
            author: actor.author(),
            at: now_ms(),
            volatile: true,
            body,
        });
        self.broadcast(key, message, Some(from));
    }

    pub(crate) async fn query(
        &self,
        actor: &Actor,
        key: &ObjectKey,
        body: Value,
    ) -> Result<Value, CollabError> {
        let guard = self.lock_fresh(key).await?;
        match guard.as_ref() {
            Some(live) => live.state.query(actor, body),
            None => Err(CollabError::unavailable("object not loaded")),
        }
    }

    /// Runs `f` on an object's state (export, retention, rendering).
    pub(crate) async fn with_state<T>(
        &self,
        key: &ObjectKey,
        f: impl FnOnce(&ObjectState) -> T,
    ) -> Result<(T, u64), CollabError> {
        let guard = self.lock_fresh(key).await?;
        match guard.as_ref() {
            Some(live) => Ok((f(&live.state), live.seq)),
            None => Err(CollabError::unavailable("object not loaded")),
        }
    }

    /// Retention on one object: expired items go through a stored event (so every node and
    /// client drops them too), then the snapshot is brought up to date if events are not
    /// covered by it, so the log before `cutoff_ms` can go. Returns how many items went.
    pub(crate) async fn expire(
        &self,
        key: &ObjectKey,
        cutoff_ms: i64,
        author: &Author,
    ) -> Result<usize, CollabError> {
        let (expiring, _) = self
            .with_state(key, |s| s.expiring_before(cutoff_ms))
            .await?;
        if expiring > 0 {
            let event = serde_json::json!({"event": "expired", "before": cutoff_ms});
            self.write_event(key, author, event).await?;
        }
        let mut guard = self.lock(key).await?;
        let Some(live) = guard.as_mut() else {
            return Err(CollabError::unavailable("object not loaded"));
        };
        if live.snapshot_seq < live.seq {
            let body = serde_json::to_string(&live.state)
                .map_err(|e| CollabError::unavailable(e.to_string()))?;
            self.store
                .save_snapshot(key, live.seq, &body)
                .await
                .map_err(unavailable)?;
            live.snapshot_seq = live.seq;
        }
        debug!(object = %key, expiring, "retention applied");
        Ok(expiring)
    }
}

/// A random pause of up to 2^attempt ms (at most 64 ms) after losing a race for a seq.
async fn back_off(attempt: u32) {
    let ceiling = 1u64 << attempt.min(6);
    let pause = rand::random::<u64>() % ceiling;
    tokio::time::sleep(Duration::from_millis(pause)).await;
}

fn object_name(key: &ObjectKey) -> ObjectName {
    key.name.clone()
}

fn event_message(key: &ObjectKey, event: &StoredEvent, body: Value) -> ServerMessage {
    ServerMessage::Collab(CollabEvent {
        channel: key.channel,
        object: object_name(key),
        seq: Some(event.seq),
        op_id: event.op_id.clone(),
        author: event.author.clone(),
        at: event.at,
        volatile: false,
        body,
    })
}

/// Checks an envelope's size and op id before anything else looks at it.
pub(crate) fn check_envelope(
    op_id: Option<&str>,
    body: &Value,
    volatile: bool,
) -> Result<(), CollabError> {
    if op_id.is_some_and(|o| o.is_empty() || o.len() > MAX_OP_ID_BYTES) {
        return Err(CollabError::bad(format!(
            "op_id is 1-{MAX_OP_ID_BYTES} bytes"
        )));
    }
    let limit = if volatile {
        MAX_VOLATILE_BYTES
    } else {
        MAX_COLLAB_BODY_BYTES
    };
    let size = serde_json::to_string(body)
        .map(|s| s.len())
        .unwrap_or(usize::MAX);
    if size > limit {
        return Err(CollabError::new(
            CollabErrorCode::TooLarge,
            format!("a body is limited to {limit} bytes of JSON"),
        ));
    }
    Ok(())
}

pub(crate) fn key_for(actor: &Actor, channel: Channel, object: &ObjectName) -> ObjectKey {
    ObjectKey {
        room: actor.room.clone(),
        channel,
        name: object.clone(),
    }
}
