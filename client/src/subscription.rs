//! Live subscriptions: a document's changes in order, writes over the same connection, and
//! the task that reconnects and resumes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use uuid::Uuid;

use crate::{Ack, Change, Client, ClientError, ClientMessage, Problem, ServerMessage};

impl Client {
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
