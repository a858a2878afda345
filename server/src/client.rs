//! A Rust client for agents: the HTTP API, and live subscriptions over the WebSocket JSON
//! protocol with automatic reconnect-and-resume.
//!
//! The message types of the WebSocket protocol ([`ClientMessage`], [`ServerMessage`]) are
//! defined here once; the server speaks them too.
//!
//! # Example
//! ```no_run
//! # async fn demo() -> Result<(), concord_server::client::ClientError> {
//! use concord_server::client::{Client, CreateOptions, Event, WriteOptions};
//! use serde_json::json;
//!
//! let client = Client::new("http://127.0.0.1:7878", "agent-a");
//! let doc = client
//!     .create(&CreateOptions { value: Some(json!({"items": []})), ..Default::default() })
//!     .await?;
//! // HTTP: a write against the version read; concurrent writes merge.
//! let ops = json!([{"op": "add", "path": "/items/-", "value": "hello"}]);
//! client.patch(doc.id, Some(&doc.version), &ops, &WriteOptions::default()).await?;
//! // Live: every change, in order, resumed from the last one seen after a reconnect.
//! let mut live = client.subscribe(doc.id, None).await?;
//! live.patch(None, json!([{"op": "add", "path": "/items/-", "value": "live"}])).await?;
//! while let Ok(event) = live.next().await {
//!     if let Event::Change(change) = event {
//!         println!("{:?} wrote {}", change.agent, change.patch);
//!     }
//! }
//! # Ok(()) }
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use concord_core::Strategy;
use futures_util::{SinkExt, StreamExt};
use reqwest::{Method, RequestBuilder};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use uuid::Uuid;

pub use concord_protocol::live::{Ack, Change, ClientMessage, Problem, ServerMessage};

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server refused: an HTTP error status, or a WebSocket `error` message.
    #[error("refused: {0}")]
    Problem(Box<Problem>),
    /// The HTTP request could not be made or its answer read.
    #[error("HTTP transport: {0}")]
    Http(#[from] reqwest::Error),
    /// The WebSocket could not be opened, or broke.
    #[error("WebSocket transport: {0}")]
    WebSocket(#[from] Box<tokio_tungstenite::tungstenite::Error>),
    /// The server answered something this client does not understand.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The live connection ended for good: closed by the server with a reason that a
    /// reconnect would not fix, out of reconnect attempts, or the subscription was dropped.
    #[error("closed ({code:?}): {reason}")]
    Closed {
        /// The WebSocket close code, if the server sent one.
        code: Option<u16>,
        /// Why.
        reason: String,
    },
}

impl ClientError {
    /// The problem, if the server refused.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            ClientError::Problem(p) => Some(p),
            _ => None,
        }
    }

    /// The HTTP status of a refusal.
    pub fn status(&self) -> Option<u16> {
        self.problem().map(|p| p.status)
    }
}

impl From<tokio_tungstenite::tungstenite::Error> for ClientError {
    fn from(e: tokio_tungstenite::tungstenite::Error) -> Self {
        use tokio_tungstenite::tungstenite::Error as E;
        match e {
            // The upgrade was answered with an HTTP error: its body is a problem.
            E::Http(response) => {
                let status = response.status().as_u16();
                let body = response.body().as_deref().unwrap_or_default();
                ClientError::Problem(Box::new(problem_from(status, body, None)))
            }
            other => ClientError::WebSocket(Box::new(other)),
        }
    }
}

fn problem_from(status: u16, body: &[u8], version: Option<String>) -> Problem {
    match serde_json::from_slice::<Problem>(body) {
        Ok(mut problem) => {
            problem.version = problem.version.or(version);
            problem
        }
        Err(_) => Problem {
            id: None,
            type_uri: "about:blank".into(),
            title: reqwest::StatusCode::from_u16(status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("Error")
                .into(),
            status,
            detail: String::from_utf8_lossy(body).chars().take(500).collect(),
            version,
        },
    }
}

/// Percent-encodes a query value (versions are hex and dots, but callers pass any text).
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

fn protocol(what: impl std::fmt::Display) -> ClientError {
    ClientError::Protocol(what.to_string())
}

// ---------------------------------------------------------------------------------------
// HTTP.

/// A document as the server answered it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Doc {
    /// Its id.
    pub id: Uuid,
    /// Its version (the `ETag`): the base to write against.
    pub version: String,
    /// Its value (after a write: the merged present).
    pub value: Value,
    /// Its write strategy.
    pub strategy: Strategy,
}

/// What [`Client::create`] sends; every field optional.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// The id (a new one if absent).
    pub id: Option<Uuid>,
    /// The first value (a JSON object; `{}` if absent).
    pub value: Option<Value>,
    /// The write strategy (crdt if absent).
    pub strategy: Option<Strategy>,
    /// JSON Pointer patterns of collaborative text strings.
    pub text: Vec<String>,
    /// JSON Pointer patterns of counters.
    pub counters: Vec<String>,
    /// An `Idempotency-Key`: a retried create is applied once.
    pub idempotency_key: Option<String>,
}

/// Optional headers of a write.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    /// An `Idempotency-Key`: a retry with the same key and request is applied once.
    pub idempotency_key: Option<String>,
    /// A lease token (`Concord-Lock`), for documents of the lock strategy.
    pub lock: Option<String>,
}

impl WriteOptions {
    /// Options with this idempotency key.
    pub fn key(key: impl Into<String>) -> Self {
        WriteOptions {
            idempotency_key: Some(key.into()),
            lock: None,
        }
    }

    /// These options with a lease token.
    pub fn with_lock(mut self, token: impl Into<String>) -> Self {
        self.lock = Some(token.into());
        self
    }
}

/// A lease of a lock document.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Lease {
    /// The fencing token: send it with writes ([`WriteOptions::lock`]) and to unlock.
    pub token: String,
    /// When the lease ends, milliseconds since the Unix epoch.
    #[serde(rename = "expires_at")]
    pub expires_at_ms: i64,
}

/// A document's change graph.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct History {
    /// The current version.
    pub version: String,
    /// Every change, in causal order.
    pub changes: Vec<HistoryEntry>,
}

/// One change of a history.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct HistoryEntry {
    /// The change hash.
    pub hash: String,
    /// The agent that wrote it, if known.
    #[serde(default)]
    pub agent: Option<String>,
    /// When, seconds since the Unix epoch.
    #[serde(default)]
    pub time: i64,
    /// A message recorded with it.
    #[serde(default)]
    pub message: Option<String>,
    /// The hashes it depends on.
    #[serde(default)]
    pub deps: Vec<String>,
    /// How many operations it holds.
    #[serde(default)]
    pub ops: u64,
}

/// How a [`Subscription`] reconnects after its connection breaks.
#[derive(Debug, Clone)]
pub struct Reconnect {
    /// Failed connection attempts in a row before giving up.
    pub max_attempts: u32,
    /// The wait before the first retry; it doubles with each failure.
    pub first_delay: Duration,
    /// The longest wait between retries.
    pub max_delay: Duration,
}

impl Default for Reconnect {
    fn default() -> Self {
        Reconnect {
            max_attempts: u32::MAX,
            first_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(5),
        }
    }
}

/// A client of one Concord server, writing as one agent. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    agent: String,
    reconnect: Reconnect,
    /// The bearer token for a server with authentication on.
    token: Option<String>,
}

impl Client {
    /// A client of the server at `base_url` (`http://host:port`), writing as `agent`.
    pub fn new(base_url: impl Into<String>, agent: impl Into<String>) -> Client {
        Client {
            http: reqwest::Client::new(),
            base: base_url.into().trim_end_matches('/').to_owned(),
            agent: agent.into(),
            reconnect: Reconnect::default(),
            token: None,
        }
    }

    /// This client with a bearer token, for a server started with `--auth`: sent as
    /// `Authorization: Bearer` on every request and WebSocket. The server then takes the
    /// agent name from the token.
    pub fn with_token(mut self, token: impl Into<String>) -> Client {
        self.token = Some(token.into());
        self
    }

    /// This client with another reconnect policy for its subscriptions.
    pub fn with_reconnect(mut self, reconnect: Reconnect) -> Client {
        self.reconnect = reconnect;
        self
    }

    /// The server's base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// The agent this client writes as.
    pub fn agent(&self) -> &str {
        &self.agent
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let request = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .header("concord-agent", &self.agent);
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Sends a request; an error status becomes [`ClientError::Problem`].
    async fn call(&self, request: RequestBuilder) -> Result<reqwest::Response, ClientError> {
        let response = request.send().await?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let version = response
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim_matches('"').to_owned());
        let body = response.bytes().await?;
        Err(ClientError::Problem(Box::new(problem_from(
            status.as_u16(),
            &body,
            version,
        ))))
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        request: RequestBuilder,
    ) -> Result<T, ClientError> {
        let bytes = self.call(request).await?.bytes().await?;
        serde_json::from_slice(&bytes).map_err(|e| protocol(format!("unexpected answer: {e}")))
    }

    fn write_request(
        &self,
        method: Method,
        path: &str,
        base: Option<&str>,
        options: &WriteOptions,
    ) -> RequestBuilder {
        let mut request = self.request(method, path);
        if let Some(base) = base {
            let tag = if base == "*" {
                "*".to_owned()
            } else {
                format!("\"{base}\"")
            };
            request = request.header("if-match", tag);
        }
        if let Some(key) = &options.idempotency_key {
            request = request.header("idempotency-key", key);
        }
        if let Some(lock) = &options.lock {
            request = request.header("concord-lock", lock);
        }
        request
    }

    /// `POST /v1/docs`: creates a document.
    pub async fn create(&self, options: &CreateOptions) -> Result<Doc, ClientError> {
        let mut body = serde_json::Map::new();
        if let Some(id) = options.id {
            body.insert("id".into(), json!(id));
        }
        if let Some(value) = &options.value {
            body.insert("value".into(), value.clone());
        }
        if let Some(strategy) = options.strategy {
            body.insert("strategy".into(), json!(strategy));
        }
        if !options.text.is_empty() {
            body.insert("text".into(), json!(options.text));
        }
        if !options.counters.is_empty() {
            body.insert("counters".into(), json!(options.counters));
        }
        let write = WriteOptions {
            idempotency_key: options.idempotency_key.clone(),
            lock: None,
        };
        let request = self
            .write_request(Method::POST, "/v1/docs", None, &write)
            .json(&Value::Object(body));
        self.json(request).await
    }

    /// `GET /v1/docs/{id}`: the current value and version.
    pub async fn get(&self, id: Uuid) -> Result<Doc, ClientError> {
        self.json(self.request(Method::GET, &format!("/v1/docs/{id}")))
            .await
    }

    /// `GET /v1/docs/{id}?at=<version>`: the value at a version the document has had.
    pub async fn get_at(&self, id: Uuid, version: &str) -> Result<Doc, ClientError> {
        let path = format!("/v1/docs/{id}?at={}", encode(version));
        self.json(self.request(Method::GET, &path)).await
    }

    /// `PUT /v1/docs/{id}`: writes a whole value derived from `base` (the version read, or
    /// `*` for the current one).
    pub async fn put(
        &self,
        id: Uuid,
        base: &str,
        value: &Value,
        options: &WriteOptions,
    ) -> Result<Doc, ClientError> {
        let request = self
            .write_request(Method::PUT, &format!("/v1/docs/{id}"), Some(base), options)
            .json(value);
        self.json(request).await
    }

    /// `PATCH /v1/docs/{id}` with JSON Patch operations, against `base` if given.
    pub async fn patch(
        &self,
        id: Uuid,
        base: Option<&str>,
        ops: &Value,
        options: &WriteOptions,
    ) -> Result<Doc, ClientError> {
        let request = self
            .write_request(Method::PATCH, &format!("/v1/docs/{id}"), base, options)
            .header("content-type", "application/json-patch+json")
            .body(ops.to_string());
        self.json(request).await
    }

    /// `PATCH /v1/docs/{id}` with an RFC 7396 merge patch, against `base` if given.
    pub async fn merge_patch(
        &self,
        id: Uuid,
        base: Option<&str>,
        patch: &Value,
        options: &WriteOptions,
    ) -> Result<Doc, ClientError> {
        let request = self
            .write_request(Method::PATCH, &format!("/v1/docs/{id}"), base, options)
            .header("content-type", "application/merge-patch+json")
            .body(patch.to_string());
        self.json(request).await
    }

    /// `DELETE /v1/docs/{id}`.
    pub async fn delete(&self, id: Uuid) -> Result<(), ClientError> {
        self.call(self.request(Method::DELETE, &format!("/v1/docs/{id}")))
            .await?;
        Ok(())
    }

    /// `GET /v1/docs/{id}/history`: the change graph.
    pub async fn history(&self, id: Uuid) -> Result<History, ClientError> {
        self.json(self.request(Method::GET, &format!("/v1/docs/{id}/history")))
            .await
    }

    /// `POST /v1/docs/{id}/lock`: takes the lease of a lock document for `ttl_ms`, waiting
    /// up to `wait_ms` for the current holder.
    pub async fn lock(&self, id: Uuid, ttl_ms: u64, wait_ms: u64) -> Result<Lease, ClientError> {
        let request = self
            .request(Method::POST, &format!("/v1/docs/{id}/lock"))
            .json(&json!({"ttl_ms": ttl_ms, "wait_ms": wait_ms}));
        self.json(request).await
    }

    /// `DELETE /v1/docs/{id}/lock`: releases the lease of `token`.
    pub async fn unlock(&self, id: Uuid, token: &str) -> Result<(), ClientError> {
        let request = self
            .request(Method::DELETE, &format!("/v1/docs/{id}/lock"))
            .header("concord-lock", token);
        self.call(request).await?;
        Ok(())
    }

    /// `POST /v1/docs/{id}/fork`: an isolated copy to edit, merged back with [`Client::merge`].
    pub async fn fork(&self, id: Uuid) -> Result<Doc, ClientError> {
        self.json(self.request(Method::POST, &format!("/v1/docs/{id}/fork")))
            .await
    }

    /// `POST /v1/docs/{id}/merge`: merges the changes of `fork` back into `id`.
    pub async fn merge(
        &self,
        id: Uuid,
        fork: Uuid,
        options: &WriteOptions,
    ) -> Result<Doc, ClientError> {
        let request = self
            .write_request(Method::POST, &format!("/v1/docs/{id}/merge"), None, options)
            .json(&json!({ "fork": fork }));
        self.json(request).await
    }

    // -----------------------------------------------------------------------------------
    // WebSocket.

    /// The WebSocket URL of a document.
    pub fn ws_url(&self, id: Uuid) -> String {
        let base = if let Some(rest) = self.base.strip_prefix("https://") {
            format!("wss://{rest}")
        } else if let Some(rest) = self.base.strip_prefix("http://") {
            format!("ws://{rest}")
        } else {
            self.base.clone()
        };
        format!("{base}/v1/docs/{id}/ws")
    }

    /// Opens one WebSocket connection to a document, as this agent: the raw protocol, with
    /// no reconnect (see [`Client::subscribe`] for that).
    pub async fn connect(&self, id: Uuid) -> Result<Socket, ClientError> {
        let mut request = self.ws_url(id).into_client_request()?;
        let agent = HeaderValue::from_str(&self.agent)
            .map_err(|_| protocol("the agent name is not a valid header value"))?;
        request.headers_mut().insert("concord-agent", agent);
        if let Some(token) = &self.token {
            let bearer = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| protocol("the token is not a valid header value"))?;
            request.headers_mut().insert("authorization", bearer);
        }
        let (ws, _) = tokio_tungstenite::connect_async(request).await?;
        Ok(Socket { ws })
    }

    /// Subscribes to a document's changes from `since` (or from a snapshot), returning once
    /// the server has confirmed. The subscription reconnects by itself when its connection
    /// breaks and resumes from the last version it delivered: nothing missed, nothing twice.
    /// Writes made through it are retried on the new connection with the same id, so each
    /// is applied once.
    pub async fn subscribe(
        &self,
        id: Uuid,
        since: Option<&str>,
    ) -> Result<Subscription, ClientError> {
        let (events_tx, events) = mpsc::channel(256);
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let (ready_tx, ready) = oneshot::channel();
        let shared = Arc::new(Shared {
            version: Mutex::new(since.map(str::to_owned)),
            reconnects: AtomicU64::new(0),
        });
        let live = Live {
            client: self.clone(),
            doc: id,
            events: events_tx,
            commands: commands_rx,
            shared: Arc::clone(&shared),
            ready: Some(ready_tx),
            pending: Vec::new(),
        };
        let task = tokio::spawn(live.run());
        let subscription = Subscription {
            events,
            writer: Writer { commands },
            shared,
            task,
        };
        match ready.await {
            Ok(Ok(())) => Ok(subscription),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ClientError::Closed {
                code: None,
                reason: "the subscription ended before it started".into(),
            }),
        }
    }
}

// ---------------------------------------------------------------------------------------
// One raw connection.

/// One WebSocket connection to a document, speaking the JSON protocol as is.
pub struct Socket {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// What [`Socket::recv`] read.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A protocol message.
    Message(ServerMessage),
    /// The server closed the connection, with a code and a reason.
    Close {
        /// The close code (1005 if none was given).
        code: u16,
        /// The reason.
        reason: String,
    },
}

impl Socket {
    /// Connects to a WebSocket URL as is, naming no agent in a header: the way a browser
    /// connects (`ws://host/v1/docs/{id}/ws?agent=name`).
    pub async fn connect(url: &str) -> Result<Socket, ClientError> {
        let (ws, _) = tokio_tungstenite::connect_async(url).await?;
        Ok(Socket { ws })
    }

    /// Sends a protocol message.
    pub async fn send(&mut self, message: &ClientMessage) -> Result<(), ClientError> {
        let text = serde_json::to_string(message).map_err(protocol)?;
        self.send_text(text).await
    }

    /// Sends any text (for testing the server with malformed messages).
    pub async fn send_text(&mut self, text: impl Into<String>) -> Result<(), ClientError> {
        self.ws
            .send(Message::text(text.into()))
            .await
            .map_err(ClientError::from)
    }

    /// Sends a binary message (which the JSON protocol refuses).
    pub async fn send_binary(&mut self, bytes: Vec<u8>) -> Result<(), ClientError> {
        self.ws
            .send(Message::binary(bytes))
            .await
            .map_err(ClientError::from)
    }

    /// The next message or close frame (pings and pongs are handled and skipped).
    pub async fn recv(&mut self) -> Result<Frame, ClientError> {
        loop {
            match self.ws.next().await {
                None => {
                    return Err(ClientError::Closed {
                        code: None,
                        reason: "the connection ended".into(),
                    })
                }
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(Message::Text(text))) => {
                    return serde_json::from_str(text.as_str())
                        .map(Frame::Message)
                        .map_err(|e| protocol(format!("{e}: {}", text.as_str())))
                }
                Some(Ok(Message::Close(frame))) => {
                    return Ok(match frame {
                        Some(frame) => Frame::Close {
                            code: frame.code.into(),
                            reason: frame.reason.as_str().to_owned(),
                        },
                        None => Frame::Close {
                            code: 1005,
                            reason: String::new(),
                        },
                    })
                }
                Some(Ok(Message::Binary(_))) => {
                    return Err(protocol("the server sent a binary message"))
                }
                Some(Ok(_)) => {}
            }
        }
    }

    /// Closes the connection normally.
    pub async fn close(mut self) -> Result<(), ClientError> {
        self.ws
            .close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "bye".into(),
            }))
            .await
            .map_err(ClientError::from)
    }
}

// ---------------------------------------------------------------------------------------
// Subscriptions.

/// What a [`Subscription`] delivers.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The whole value (at the start, or after falling too far behind): replace what you have.
    Snapshot {
        /// Its version.
        version: String,
        /// The value.
        value: Value,
    },
    /// One change, in order.
    Change(Change),
    /// The server reported a problem not tied to one of this subscription's writes.
    Error(Problem),
}

/// A live subscription to one document: events in order, and writes over the same
/// connection. Dropping it closes the connection.
pub struct Subscription {
    events: mpsc::Receiver<Result<Event, ClientError>>,
    writer: Writer,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

struct Shared {
    /// The version of the last event delivered: where a reconnect resumes.
    version: Mutex<Option<String>>,
    reconnects: AtomicU64,
}

impl Shared {
    fn version(&self) -> Option<String> {
        self.version
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set_version(&self, version: Option<String>) {
        *self.version.lock().unwrap_or_else(PoisonError::into_inner) = version;
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Subscription {
    /// The next event. An error ends the subscription (the document was deleted, the
    /// server closed the connection for a reason a reconnect would not fix, or reconnecting
    /// failed); every later call returns [`ClientError::Closed`].
    pub async fn next(&mut self) -> Result<Event, ClientError> {
        match self.events.recv().await {
            Some(result) => result,
            None => Err(ClientError::Closed {
                code: None,
                reason: "the subscription has ended".into(),
            }),
        }
    }

    /// The version of the last event delivered (or the `since` it started from).
    pub fn version(&self) -> Option<String> {
        self.shared.version()
    }

    /// How many times the connection was re-established after breaking.
    pub fn reconnects(&self) -> u64 {
        self.shared.reconnects.load(Ordering::Relaxed)
    }

    /// A handle for writing over this subscription's connection from another task.
    pub fn writer(&self) -> Writer {
        self.writer.clone()
    }

    /// Sends JSON Patch operations (against `base`, if given) and waits for the `ack`.
    pub async fn patch(&self, base: Option<&str>, ops: Value) -> Result<Ack, ClientError> {
        self.writer.patch(base, ops).await
    }

    /// Sends a whole value derived from `base` and waits for the `ack`.
    pub async fn put(&self, base: &str, value: Value) -> Result<Ack, ClientError> {
        self.writer.put(base, value).await
    }

    /// Sends a write and waits for its `ack`.
    pub async fn send(&self, write: Write) -> Result<Ack, ClientError> {
        self.writer.send(write).await
    }
}

/// A write to send over a subscription.
#[derive(Debug, Clone)]
pub struct Write {
    id: Option<String>,
    base: Option<String>,
    lock: Option<String>,
    body: WriteBody,
}

#[derive(Debug, Clone)]
enum WriteBody {
    Patch(Value),
    Put(Value),
}

impl Write {
    /// JSON Patch operations.
    pub fn patch(ops: Value) -> Write {
        Write {
            id: None,
            base: None,
            lock: None,
            body: WriteBody::Patch(ops),
        }
    }

    /// A whole new value.
    pub fn put(value: Value) -> Write {
        Write {
            id: None,
            base: None,
            lock: None,
            body: WriteBody::Put(value),
        }
    }

    /// Against this version (the one read).
    pub fn base(mut self, version: impl Into<String>) -> Write {
        self.base = Some(version.into());
        self
    }

    /// With this message id (a new random one otherwise). Reusing an id on purpose makes
    /// a retry across program restarts apply once.
    pub fn id(mut self, id: impl Into<String>) -> Write {
        self.id = Some(id.into());
        self
    }

    /// With a lease token (lock documents).
    pub fn lock(mut self, token: impl Into<String>) -> Write {
        self.lock = Some(token.into());
        self
    }
}

/// Writes over a subscription's connection; cheap to clone.
#[derive(Clone)]
pub struct Writer {
    commands: mpsc::UnboundedSender<Command>,
}

struct Command {
    id: String,
    message: ClientMessage,
    reply: oneshot::Sender<Result<Ack, ClientError>>,
}

impl Writer {
    /// Sends JSON Patch operations (against `base`, if given) and waits for the `ack`.
    pub async fn patch(&self, base: Option<&str>, ops: Value) -> Result<Ack, ClientError> {
        let mut write = Write::patch(ops);
        write.base = base.map(str::to_owned);
        self.send(write).await
    }

    /// Sends a whole value derived from `base` and waits for the `ack`.
    pub async fn put(&self, base: &str, value: Value) -> Result<Ack, ClientError> {
        self.send(Write::put(value).base(base)).await
    }

    /// Sends a write and waits for its `ack` (across reconnects, if need be).
    pub async fn send(&self, write: Write) -> Result<Ack, ClientError> {
        let id = write
            .id
            .unwrap_or_else(|| Uuid::new_v4().simple().to_string());
        let message = match write.body {
            WriteBody::Patch(ops) => ClientMessage::Patch {
                id: Value::String(id.clone()),
                base: write.base,
                ops,
                lock: write.lock,
            },
            WriteBody::Put(value) => ClientMessage::Put {
                id: Value::String(id.clone()),
                base: write.base,
                value,
                lock: write.lock,
            },
        };
        let (reply, answer) = oneshot::channel();
        let ended = || ClientError::Closed {
            code: None,
            reason: "the subscription has ended".into(),
        };
        self.commands
            .send(Command { id, message, reply })
            .map_err(|_| ended())?;
        answer.await.map_err(|_| ended())?
    }
}

/// A write sent but not yet answered.
struct Pending {
    id: String,
    text: String,
    reply: oneshot::Sender<Result<Ack, ClientError>>,
    /// Set when the server said the first attempt is still in flight: send again then.
    retry_at: Option<Instant>,
}

/// How one connection ended.
enum Ended {
    /// It broke: connect again and resume.
    Broken(String),
    /// For good.
    Final(ClientError),
    /// Nobody is listening any more.
    Dropped,
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The task behind a [`Subscription`].
struct Live {
    client: Client,
    doc: Uuid,
    events: mpsc::Sender<Result<Event, ClientError>>,
    commands: mpsc::UnboundedReceiver<Command>,
    shared: Arc<Shared>,
    /// Answers [`Client::subscribe`] once the first connection is subscribed (or failed).
    ready: Option<oneshot::Sender<Result<(), ClientError>>>,
    pending: Vec<Pending>,
}

/// Close codes after which reconnecting cannot help.
fn is_final(code: u16) -> bool {
    matches!(code, 1003 | 1007 | 1008 | 1009) || (4000..5000).contains(&code)
}

impl Live {
    async fn run(mut self) {
        let mut failures = 0u32;
        let mut connections = 0u64;
        let error = loop {
            let ended = match self.client.connect(self.doc).await {
                Ok(socket) => {
                    connections += 1;
                    self.session(socket.ws, connections > 1, &mut failures)
                        .await
                }
                Err(e @ ClientError::Problem(_)) => Ended::Final(e),
                // The first connection is not retried: `subscribe` answers its error.
                Err(e) if self.ready.is_some() => Ended::Final(e),
                Err(e) => Ended::Broken(e.to_string()),
            };
            match ended {
                Ended::Dropped => return,
                Ended::Final(e) => break e,
                Ended::Broken(reason) => {
                    failures += 1;
                    if self.ready.is_some() || failures > self.client.reconnect.max_attempts {
                        break ClientError::Closed {
                            code: None,
                            reason: format!("cannot connect: {reason}"),
                        };
                    }
                    tracing::debug!(doc = %self.doc, %reason, failures, "reconnecting");
                    let policy = &self.client.reconnect;
                    let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(16));
                    let delay = policy
                        .first_delay
                        .saturating_mul(factor)
                        .min(policy.max_delay);
                    tokio::time::sleep(delay).await;
                }
            }
        };
        for pending in self.pending.drain(..) {
            let _ = pending.reply.send(Err(ClientError::Closed {
                code: None,
                reason: format!("the subscription ended: {error}"),
            }));
        }
        match self.ready.take() {
            Some(ready) => {
                let _ = ready.send(Err(error));
            }
            None => {
                let _ = self.events.send(Err(error)).await;
            }
        }
    }

    /// One connection: subscribe from the last version delivered, send the writes not yet
    /// answered, then relay until it ends.
    async fn session(&mut self, mut ws: Ws, reconnected: bool, failures: &mut u32) -> Ended {
        let subscribe = ClientMessage::Subscribe {
            since: self.shared.version(),
        };
        let mut texts = vec![serde_json::to_string(&subscribe).expect("serializes")];
        texts.extend(self.pending.iter().map(|p| p.text.clone()));
        for text in texts {
            if let Err(e) = ws.send(Message::text(text)).await {
                return Ended::Broken(e.to_string());
            }
        }
        let mut subscribed = false;
        loop {
            let retry_at = self.pending.iter().filter_map(|p| p.retry_at).min();
            let retry = async {
                match retry_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                frame = ws.next() => {
                    let text = match frame {
                        None => return Ended::Broken("the connection ended".into()),
                        Some(Err(e)) => return Ended::Broken(e.to_string()),
                        Some(Ok(Message::Text(text))) => text,
                        Some(Ok(Message::Close(frame))) => {
                            let (code, reason) = frame
                                .map(|f| (u16::from(f.code), f.reason.as_str().to_owned()))
                                .unwrap_or((1005, String::new()));
                            if is_final(code) {
                                return Ended::Final(ClientError::Closed { code: Some(code), reason });
                            }
                            return Ended::Broken(format!("closed ({code}): {reason}"));
                        }
                        Some(Ok(_)) => continue,
                    };
                    let message = match serde_json::from_str::<ServerMessage>(text.as_str()) {
                        Ok(message) => message,
                        Err(e) => {
                            tracing::warn!(error = %e, "ignoring a message this client does not understand");
                            continue;
                        }
                    };
                    let event = match message {
                        ServerMessage::Snapshot { version, value } => {
                            self.shared.set_version(Some(version.clone()));
                            Event::Snapshot { version, value }
                        }
                        ServerMessage::Change(change) => {
                            self.shared.set_version(Some(change.version.clone()));
                            Event::Change(change)
                        }
                        ServerMessage::Subscribed { version } => {
                            self.shared.set_version(Some(version));
                            subscribed = true;
                            *failures = 0;
                            if let Some(ready) = self.ready.take() {
                                let _ = ready.send(Ok(()));
                            }
                            if reconnected {
                                self.shared.reconnects.fetch_add(1, Ordering::Relaxed);
                            }
                            continue;
                        }
                        ServerMessage::Ack(ack) => {
                            if let Some(i) = self.pending_index(&ack.id) {
                                let _ = self.pending.remove(i).reply.send(Ok(ack));
                            }
                            continue;
                        }
                        ServerMessage::Error(problem) => {
                            match self.on_problem(&mut ws, problem, subscribed).await {
                                Ok(None) => continue,
                                Ok(Some(event)) => event,
                                Err(ended) => return ended,
                            }
                        }
                    };
                    if self.events.send(Ok(event)).await.is_err() {
                        return Ended::Dropped;
                    }
                }
                command = self.commands.recv() => {
                    let Some(command) = command else { return Ended::Dropped };
                    let text = serde_json::to_string(&command.message).expect("serializes");
                    self.pending.push(Pending {
                        id: command.id,
                        text: text.clone(),
                        reply: command.reply,
                        retry_at: None,
                    });
                    if let Err(e) = ws.send(Message::text(text)).await {
                        return Ended::Broken(e.to_string());
                    }
                }
                () = retry => {
                    let now = Instant::now();
                    let due: Vec<String> = self
                        .pending
                        .iter_mut()
                        .filter(|p| p.retry_at.is_some_and(|at| at <= now))
                        .map(|p| {
                            p.retry_at = None;
                            p.text.clone()
                        })
                        .collect();
                    for text in due {
                        if let Err(e) = ws.send(Message::text(text)).await {
                            return Ended::Broken(e.to_string());
                        }
                    }
                }
            }
        }
    }

    fn pending_index(&self, id: &Value) -> Option<usize> {
        let id = id.as_str()?;
        self.pending.iter().position(|p| p.id == id)
    }

    /// Handles an `error`: the answer to a pending write, a `since` the server lost, or a
    /// problem to report.
    async fn on_problem(
        &mut self,
        ws: &mut Ws,
        problem: Problem,
        subscribed: bool,
    ) -> Result<Option<Event>, Ended> {
        if let Some(i) = problem.id.as_ref().and_then(|id| self.pending_index(id)) {
            if problem.kind() == "idempotency-key-in-flight" {
                // The first attempt (on the connection that broke) is still being handled.
                self.pending[i].retry_at = Some(Instant::now() + Duration::from_millis(100));
            } else {
                let _ = self
                    .pending
                    .remove(i)
                    .reply
                    .send(Err(ClientError::Problem(Box::new(problem))));
            }
            return Ok(None);
        }
        if !subscribed && problem.kind() == "unknown-version" && self.shared.version().is_some() {
            // The server no longer knows our version: start over from a snapshot.
            self.shared.set_version(None);
            let text = serde_json::to_string(&ClientMessage::Subscribe { since: None })
                .expect("serializes");
            if let Err(e) = ws.send(Message::text(text)).await {
                return Err(Ended::Broken(e.to_string()));
            }
            return Ok(None);
        }
        if let Some(ready) = self.ready.take() {
            let _ = ready.send(Err(ClientError::Problem(Box::new(problem))));
            return Err(Ended::Dropped);
        }
        Ok(Some(Event::Error(problem)))
    }
}
