//! One participant's Janus API connection: a WebSocket (subprotocol `janus-protocol`) with a
//! reader task, numbered transactions, and request/reply calls for the setup steps.

use std::collections::VecDeque;

use anyhow::{Context, bail};
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use super::api::JanusMessage;
use crate::ws::{Incoming, JsonSocket};

pub struct JanusClient {
    socket: JsonSocket<JanusMessage>,
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
        Ok(Self {
            socket: JsonSocket::connect(request, url).await?,
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
        self.socket.send_json(message).await
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
        loop {
            match self.socket.recv().await {
                Incoming::Message(m) => return Ok(*m),
                // Janus only sends JSON objects; anything else is skipped.
                Incoming::Unreadable(text) => tracing::debug!("unreadable Janus message: {text}"),
                Incoming::Failed(e) => bail!("WebSocket receive: {e}"),
                Incoming::Closed => bail!("Janus closed the WebSocket"),
            }
        }
    }

    /// Closes the socket politely; errors do not matter any more.
    pub async fn close(&mut self) {
        self.socket.close().await;
    }
}
