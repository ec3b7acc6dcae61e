//! ICE-TCP (RFC 6544) transport for the shard: accepts connections on the TCP media port and
//! carries RFC 4571 frames (a 16-bit length before each STUN/DTLS/RTP packet) to and from the
//! core. Each connection has a reader task and a writer task on the shard's runtime.

use std::collections::HashMap;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing::debug;

/// Frames queued per connection before new ones are dropped (as UDP would drop them).
const WRITE_QUEUE: usize = 512;
/// The connection's (local, remote) addresses, as the core sees them.
pub type ConnKey = (SocketAddr, SocketAddr);

pub enum TcpEvent {
    Opened {
        key: ConnKey,
        writer: mpsc::Sender<Vec<u8>>,
    },
    Frame {
        key: ConnKey,
        data: Vec<u8>,
    },
    Closed {
        key: ConnKey,
    },
}

/// Writers of the open connections, owned by the shard loop.
#[derive(Default)]
pub struct TcpConnections {
    writers: HashMap<ConnKey, mpsc::Sender<Vec<u8>>>,
}

impl TcpConnections {
    pub fn opened(&mut self, key: ConnKey, writer: mpsc::Sender<Vec<u8>>) {
        self.writers.insert(key, writer);
    }

    pub fn closed(&mut self, key: ConnKey) {
        self.writers.remove(&key);
    }

    /// Queues a packet; a full queue or closed connection drops it.
    pub fn send(&self, local: SocketAddr, remote: SocketAddr, packet: &[u8]) {
        if let Some(writer) = self.writers.get(&(local, remote)) {
            let _ = writer.try_send(packet.to_vec());
        }
    }
}

/// Accepts connections forever, spawning a reader and a writer per connection.
pub async fn accept_loop(listener: TcpListener, events: mpsc::Sender<TcpEvent>) {
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                debug!("tcp accept: {e}");
                continue;
            }
        };
        let Ok(local) = stream.local_addr() else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let key = (local, remote);
        let (writer_tx, writer_rx) = mpsc::channel(WRITE_QUEUE);
        if events
            .send(TcpEvent::Opened {
                key,
                writer: writer_tx,
            })
            .await
            .is_err()
        {
            return;
        }
        tokio::spawn(serve_connection(stream, key, events.clone(), writer_rx));
    }
}

async fn serve_connection(
    stream: TcpStream,
    key: ConnKey,
    events: mpsc::Sender<TcpEvent>,
    mut outgoing: mpsc::Receiver<Vec<u8>>,
) {
    let (mut read, write) = stream.into_split();
    let writer = tokio::spawn(async move {
        let mut write = BufWriter::new(write);
        while let Some(packet) = outgoing.recv().await {
            let Ok(len) = u16::try_from(packet.len()) else {
                continue;
            };
            let written = async {
                write.write_all(&len.to_be_bytes()).await?;
                write.write_all(&packet).await?;
                if outgoing.is_empty() {
                    write.flush().await?;
                }
                std::io::Result::Ok(())
            };
            if written.await.is_err() {
                return;
            }
        }
    });
    let mut buf = vec![0u8; usize::from(u16::MAX)];
    while let Ok(len) = read.read_u16().await {
        let frame = &mut buf[..usize::from(len)];
        if read.read_exact(frame).await.is_err() {
            break;
        }
        if events
            .send(TcpEvent::Frame {
                key,
                data: frame.to_vec(),
            })
            .await
            .is_err()
        {
            break;
        }
    }
    writer.abort();
    let _ = events.send(TcpEvent::Closed { key }).await;
}
