//! Cluster fan-out over a Redis Stream: after storing an event a node appends a notice
//! (object and seq) to one stream; every node reads it and catches the objects it has open
//! up from the database, which stays the source of truth. Local subscribers never wait on
//! Redis: notices are queued and sent by a task.

use std::sync::Arc;
use std::time::Duration;

use redis::AsyncCommands;
use redis::streams::{StreamReadOptions, StreamReadReply};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::service::Objects;
use crate::store::ObjectKey;
use ting_protocol::collab::ObjectName;

const STREAM_MAX_LEN: usize = 10_000;
const QUEUE: usize = 65_536;

#[derive(Clone)]
pub struct Fanout {
    tx: mpsc::Sender<(String, u64)>,
}

#[derive(Clone, Debug)]
pub struct FanoutConfig {
    pub redis_url: String,
    pub prefix: String,
    pub node: String,
}

fn encode(key: &ObjectKey) -> String {
    format!("{}/{}/{}", key.room, key.channel, key.name)
}

fn decode(text: &str) -> Option<ObjectKey> {
    let mut parts = text.rsplitn(3, '/');
    let name = ObjectName::new(parts.next()?).ok()?;
    let channel = parts.next()?.parse().ok()?;
    let room = parts.next()?.to_owned();
    Some(ObjectKey {
        room,
        channel,
        name,
    })
}

impl Fanout {
    /// Connects and starts the writer; the reader starts with [`Fanout::run_reader`].
    pub async fn start(
        config: &FanoutConfig,
        shutdown: CancellationToken,
    ) -> Result<Self, redis::RedisError> {
        let client = redis::Client::open(config.redis_url.as_str())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let (tx, mut rx) = mpsc::channel::<(String, u64)>(QUEUE);
        let stream = format!("{}collab", config.prefix);
        let node = config.node.clone();
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    next = rx.recv() => next,
                    _ = shutdown.cancelled() => None,
                };
                let Some((key, seq)) = next else { return };
                let added: Result<String, _> = redis::cmd("XADD")
                    .arg(&stream)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(STREAM_MAX_LEN)
                    .arg("*")
                    .arg("node")
                    .arg(&node)
                    .arg("key")
                    .arg(&key)
                    .arg("seq")
                    .arg(seq)
                    .query_async(&mut conn)
                    .await;
                if let Err(e) = added {
                    warn!("collab fan-out notice not sent: {e}");
                }
            }
        });
        Ok(Self { tx })
    }

    pub(crate) fn announce(&self, key: &ObjectKey, seq: u64) {
        if self.tx.try_send((encode(key), seq)).is_err() {
            warn!("collab fan-out queue full; other nodes catch up on their next notice");
        }
    }
}

/// Reads other nodes' notices until shutdown and refreshes the named objects.
pub(crate) async fn run_reader(
    config: FanoutConfig,
    objects: Arc<Objects>,
    shutdown: CancellationToken,
) {
    let stream = format!("{}collab", config.prefix);
    let mut last_id = "$".to_owned();
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let conn = match redis::Client::open(config.redis_url.as_str()) {
            Ok(client) => client.get_multiplexed_async_connection().await,
            Err(e) => Err(e),
        };
        let mut conn = match conn {
            Ok(conn) => conn,
            Err(e) => {
                warn!("collab fan-out reader cannot reach Redis: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        loop {
            let options = StreamReadOptions::default().block(1000).count(500);
            let streams = [stream.as_str()];
            let ids = [last_id.as_str()];
            let read = tokio::select! {
                read = conn.xread_options::<_, _, StreamReadReply>(&streams, &ids, &options) => read,
                _ = shutdown.cancelled() => return,
            };
            let reply = match read {
                Ok(reply) => reply,
                Err(e) => {
                    warn!("collab fan-out read failed: {e}");
                    break;
                }
            };
            for key in reply.keys {
                for entry in key.ids {
                    last_id = entry.id.clone();
                    let from: Option<String> = entry.get("node");
                    if from.as_deref() == Some(config.node.as_str()) {
                        continue;
                    }
                    let Some(object) = entry.get::<String>("key").as_deref().and_then(decode)
                    else {
                        continue;
                    };
                    debug!(object = %object, "fan-out notice");
                    objects.refresh(&object).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ting_protocol::collab::Channel;

    #[test]
    fn keys_survive_the_stream() {
        let key = ObjectKey {
            room: "team/with/slashes".into(),
            channel: Channel::Board,
            name: ObjectName::new("sprint-1").unwrap(),
        };
        assert_eq!(decode(&encode(&key)), Some(key));
        assert_eq!(decode("garbage"), None);
        assert_eq!(decode("r/shelf/x"), None);
    }
}
