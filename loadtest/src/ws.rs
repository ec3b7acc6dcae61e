//! A JSON WebSocket with a reader task, under both the Ting signalling client and the Janus API
//! client: the reader parses what the server sends ahead of time, so waiting for the next
//! message costs a channel poll, not a socket read per wake-up.

use anyhow::Context;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Messages read ahead per socket.
const READ_AHEAD: usize = 1024;
/// Socket buffers: signalling messages are small (tungstenite's default is 128 KiB each way,
/// which for 1000 participants is a quarter of a gigabyte); bigger messages still assemble.
const BUFFER_BYTES: usize = 16 * 1024;

type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What the socket delivered.
#[derive(Debug)]
pub enum Incoming<T> {
    Message(Box<T>),
    /// Text that is not a message this client understands at all (its start).
    Unreadable(String),
    Closed,
    /// The socket failed.
    Failed(String),
}

pub struct JsonSocket<T> {
    sink: SplitSink<WsStream, Message>,
    incoming: mpsc::Receiver<Incoming<T>>,
    reader: tokio::task::JoinHandle<()>,
}

impl<T: DeserializeOwned + Send + 'static> JsonSocket<T> {
    /// Connects; needs a tokio runtime (the reader is a task on it). `url` names the server in
    /// errors.
    pub async fn connect(
        request: impl IntoClientRequest + Unpin,
        url: &str,
    ) -> anyhow::Result<Self> {
        let config = WebSocketConfig::default()
            .read_buffer_size(BUFFER_BYTES)
            .write_buffer_size(0);
        let (ws, _) = tokio_tungstenite::connect_async_with_config(request, Some(config), true)
            .await
            .with_context(|| format!("WebSocket connect to {url}"))?;
        let (sink, stream) = ws.split();
        let (tx, incoming) = mpsc::channel(READ_AHEAD);
        let reader = tokio::spawn(read(stream, tx));
        Ok(Self {
            sink,
            incoming,
            reader,
        })
    }

    pub async fn send_json(&mut self, message: &serde_json::Value) -> anyhow::Result<()> {
        let text = serde_json::to_string(message)?;
        self.sink
            .send(Message::Text(text.into()))
            .await
            .context("WebSocket send")
    }

    /// The next thing the socket delivered; `Closed` once it ended. Cancel-safe.
    pub async fn recv(&mut self) -> Incoming<T> {
        self.incoming.recv().await.unwrap_or(Incoming::Closed)
    }

    /// Closes the socket politely; errors do not matter any more.
    pub async fn close(&mut self) {
        let _ = self.sink.close().await;
        self.reader.abort();
    }
}

impl<T> Drop for JsonSocket<T> {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// The reader task: parses every text frame until the socket ends or the client goes away.
async fn read<T: DeserializeOwned>(
    mut stream: SplitStream<WsStream>,
    tx: mpsc::Sender<Incoming<T>>,
) {
    use tokio_tungstenite::tungstenite::Error;
    loop {
        let incoming = match stream.next().await {
            None | Some(Ok(Message::Close(_))) => Incoming::Closed,
            Some(Err(Error::ConnectionClosed | Error::AlreadyClosed)) => Incoming::Closed,
            Some(Err(e)) => Incoming::Failed(e.to_string()),
            Some(Ok(Message::Text(text))) => match serde_json::from_str::<T>(&text) {
                Ok(m) => Incoming::Message(Box::new(m)),
                Err(_) => Incoming::Unreadable(text.as_str().chars().take(200).collect()),
            },
            // Pings are answered by tungstenite; binary frames are not part of either protocol.
            Some(Ok(_)) => continue,
        };
        let last = matches!(incoming, Incoming::Closed | Incoming::Failed(_));
        if tx.send(incoming).await.is_err() || last {
            return;
        }
    }
}
