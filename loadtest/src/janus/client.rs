//! One participant's Janus API connection: a WebSocket (subprotocol `janus-protocol`) with a
//! reader task, numbered transactions, and request/reply calls for the setup steps.

use std::collections::VecDeque;

use anyhow::{Context, bail};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::api::JanusMessage;

/// Messages read ahead by the reader task.
const READ_AHEAD: usize = 1024;
/// Janus' SDP offers for many subscriptions are large; the rest is small.
const BUFFER_BYTES: usize = 16 * 1024;

type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

enum Incoming {
    Message(Box<JanusMessage>),
    Closed,
    Failed(String),
}

pub struct JanusClient {
    sink: SplitSink<WsStream, Message>,
    incoming: mpsc::Receiver<Incoming>,
    reader: tokio::task::JoinHandle<()>,
    next_transaction: u64,
    /// What arrived while a call waited for its reply, in order.
    backlog: VecDeque<JanusMessage>,
}

impl JanusClient {
    /// Connects to `ws://host:port[/path]`; needs a tokio runtime (the reader is a task on it).
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let mut request = url
            .into_client_request()
            .with_context(|| format!("bad Janus URL {url:?}"))?;
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static("janus-protocol"),
        );
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
            next_transaction: 0,
            backlog: VecDeque::new(),
        })
    }

    /// A fresh transaction id.
    pub fn transaction(&mut self) -> String {
        self.next_transaction += 1;
        format!("t{}", self.next_transaction)
    }

    pub async fn send(&mut self, message: &Value) -> anyhow::Result<()> {
        let text = serde_json::to_string(message)?;
        self.sink
            .send(Message::Text(text.into()))
            .await
            .context("WebSocket send")
    }

    /// Sends a request built for `transaction` and waits for its reply: `success` or `error`
    /// for synchronous requests, the plugin's `event` for asynchronous ones (their `ack` is
    /// skipped). Whatever else arrives meanwhile is kept for [`JanusClient::recv`].
    pub async fn call(
        &mut self,
        transaction: &str,
        request: &Value,
    ) -> anyhow::Result<JanusMessage> {
        self.send(request).await?;
        loop {
            let message = self.next_from_socket().await?;
            if message.transaction.as_deref() == Some(transaction) && message.janus != "ack" {
                return Ok(message);
            }
            if message.janus != "ack" {
                self.backlog.push_back(message);
            }
        }
    }

    /// The next message (acks to keepalives and plugin requests are dropped). Cancel-safe.
    pub async fn recv(&mut self) -> anyhow::Result<JanusMessage> {
        if let Some(message) = self.backlog.pop_front() {
            return Ok(message);
        }
        loop {
            let message = self.next_from_socket().await?;
            if message.janus != "ack" {
                return Ok(message);
            }
        }
    }

    async fn next_from_socket(&mut self) -> anyhow::Result<JanusMessage> {
        match self.incoming.recv().await {
            Some(Incoming::Message(m)) => Ok(*m),
            Some(Incoming::Failed(e)) => bail!("WebSocket receive: {e}"),
            Some(Incoming::Closed) | None => bail!("Janus closed the WebSocket"),
        }
    }

    /// Closes the socket politely; errors do not matter any more.
    pub async fn close(&mut self) {
        let _ = self.sink.close().await;
        self.reader.abort();
    }
}

impl Drop for JanusClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// The reader task: parses every text frame until the socket ends or the client goes away.
/// Frames that are not Janus messages are skipped (Janus only sends JSON objects).
async fn read(mut stream: SplitStream<WsStream>, tx: mpsc::Sender<Incoming>) {
    use tokio_tungstenite::tungstenite::Error;
    loop {
        let incoming = match stream.next().await {
            None | Some(Ok(Message::Close(_))) => Incoming::Closed,
            Some(Err(Error::ConnectionClosed | Error::AlreadyClosed)) => Incoming::Closed,
            Some(Err(e)) => Incoming::Failed(e.to_string()),
            Some(Ok(Message::Text(text))) => match serde_json::from_str::<JanusMessage>(&text) {
                Ok(m) => Incoming::Message(Box::new(m)),
                Err(e) => {
                    tracing::debug!("unreadable Janus message: {e}");
                    continue;
                }
            },
            Some(Ok(_)) => continue,
        };
        let last = matches!(incoming, Incoming::Closed | Incoming::Failed(_));
        if tx.send(incoming).await.is_err() || last {
            return;
        }
    }
}
