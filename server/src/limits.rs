//! Limits: what one request, one document and one connection may cost, so that a client
//! that is careless, slow or hostile cannot take the server from everyone else.
//!
//! | limit | default | configured by | over it |
//! |---|---|---|---|
//! | request body | 8 MiB | `Config::body_limit` | `413` problem |
//! | document size (compact JSON of its value) | 16 MiB | [`Limits::max_document_bytes`] | `413` `document-too-large`; the document is unchanged |
//! | a document's history (snapshot and change records, as stored) | 256 MiB | [`Limits::max_history_bytes`] | `413` `history-too-large` before the write; unchanged |
//! | operations in one JSON Patch | 10,000 | fixed (`concord_core::patch::MAX_PATCH_OPS`) | `413` `patch-too-large`; unchanged |
//! | JSON nesting of a body or message | 127 levels | fixed (the JSON parser's limit) | `400` `invalid-json` (`error` over WebSocket) |
//! | nesting of a document | 120 levels | fixed (`concord_core::value::MAX_DEPTH`) | `422` `invalid-value`; unchanged |
//! | WebSocket message size and rate | 8 MiB; 200 at once, 100/s | `LiveConfig` | `error` (413, 429), then close |
//! | WebSocket silence (any kind: `/ws`, `/sync`, `/v1/repo`) | pinged every 20 s, closed after 60 s | `LiveConfig` | closed (1001) |
//! | open connections | 512 | [`Limits::max_connections`] | `503` `too-many-connections`, closed at once |
//! | live streams (WebSocket and Server-Sent Events) | 75 % of the connections (384) | [`Limits::stream_share`] | `503` `too-many-streams` |
//! | request headers (and idle keep-alive) | 30 s | [`Limits::header_timeout`] | the connection is closed |
//! | handling a request, its body included | 90 s | [`Limits::request_timeout`] | `408` (body still arriving) or `503` `handling-timeout`; an edit still running stops and rolls back |
//! | CPU-heavy work at once (edits, loads, snapshots), off the async workers | one per core | [`Limits::cpu_at_once`] | waits its turn |
//! | a write the client does not read | 30 s without progress | [`Limits::write_timeout`] | the connection is dropped (reset) |
//!
//! Excess connections are *refused*, not queued: a client learns at once that the server is
//! full (`Retry-After: 1`) instead of waiting in the kernel's backlog for an unknown time.
//! Every open connection counts, WebSocket connections included, for as long as they stay
//! open.
//!
//! Live streams stay open for long, so they may hold only a share of the connections
//! ([`Streams`], taken by each stream's handler when it accepts the stream): the rest stay
//! for plain requests, which a crowd of streams (or of clients that open them and never
//! read) cannot then starve.
//!
//! The handling timeout covers the time until the response *head* is ready. A WebSocket
//! answers its upgrade at once and a Server-Sent Events stream its head at once, so live
//! streams are not cut by it; they have their own keep-alive and idle rules (`LiveConfig`).
//! The default (90 s) is above the longest lock wait a request may ask for (60 s).
//!
//! The write timeout is the connection's, whatever it carries: a response, an event stream
//! or a WebSocket. A write that the client leaves waiting (its buffers full because it does
//! not read) that long without a byte taken fails, and the connection is reset (not closed
//! gracefully, which would leave the kernel holding the unsent bytes for a peer that does
//! not read them). It is what ends a stream whose client stopped reading while events flow
//! to it; one that receives nothing costs only its place among the streams.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures_util::Stream;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

use crate::problem::{problem_body, ApiError, PROBLEM_JSON};

mod streams;

pub use streams::{StreamSlot, Streams};

/// How deep arrays and objects may nest in a request body or WebSocket message: the JSON
/// parser (`serde_json`, recursion limit 128) refuses the 128th level before anything is
/// applied, so input cannot exhaust the stack.
pub const MAX_JSON_NESTING: usize = 127;

pub use crate::problem::DOCUMENT_TOO_LARGE;

/// Limits on documents, connections and slow clients. (The body limit is
/// `Config::body_limit`; WebSocket limits are in `LiveConfig`.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// The largest a document's value may be, as compact JSON, in bytes. A write that would
    /// make it larger is refused and changes nothing: memory and every read of the document
    /// grow with it, and an agent should not be able to grow one without bound.
    pub max_document_bytes: usize,
    /// A document whose history, as stored (its snapshot and change records), holds this
    /// many bytes takes no more writes: `413` `history-too-large`, nothing applied. The
    /// history of a document is in memory while the document is, so this bounds what one
    /// document's writers can make the server hold.
    pub max_history_bytes: u64,
    /// The most connections open at once; more are answered `503` and closed. Each costs a
    /// file descriptor and memory, and WebSocket connections stay open for long.
    pub max_connections: usize,
    /// A connection that has not sent a request's headers this long after it opened, or
    /// after its previous response, is closed (slow or idle clients hold a connection slot).
    pub header_timeout: Duration,
    /// A request whose response is not ready this long after its headers arrived is
    /// answered `408` if its body was still arriving, else `503`; an edit still running
    /// then stops and rolls back (`503` `handling-timeout`, nothing applied).
    pub request_timeout: Duration,
    /// A connection whose write has waited this long without the client taking a byte (it
    /// does not read) is reset, whatever it carries: buffers full of unread events or
    /// responses cost memory, and the connection holds a place. Zero: no write timeout.
    pub write_timeout: Duration,
    /// The share of [`max_connections`](Self::max_connections), in percent, that live
    /// streams (WebSocket and Server-Sent Events) may hold at once; more are answered `503`
    /// `too-many-streams`. They stay open for long: without a share of their own they could
    /// take every place and leave none for requests. At least one stream is allowed unless
    /// this is 0 (no streams); over 100 counts as 100.
    pub stream_share: u8,
    /// How many pieces of CPU-heavy work (edits, document loads, snapshots) run at once,
    /// each on a thread of its own so that the async workers keep answering; more wait
    /// their turn. At least one.
    pub cpu_at_once: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_document_bytes: crate::registry::DEFAULT_MAX_DOCUMENT_BYTES,
            max_history_bytes: crate::registry::DEFAULT_MAX_HISTORY_BYTES,
            max_connections: 512,
            header_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(90),
            write_timeout: Duration::from_secs(30),
            // A quarter of the places stays for requests.
            stream_share: 75,
            cpu_at_once: crate::registry::default_cpu_at_once(),
        }
    }
}

impl Limits {
    /// How many live streams may be open at once: [`stream_share`](Self::stream_share) of
    /// the connection limit, rounded down, but at least one unless the share is 0.
    pub fn max_streams(&self) -> usize {
        let share = usize::from(self.stream_share.min(100));
        if share == 0 {
            return 0;
        }
        (self.max_connections.max(1).saturating_mul(share) / 100).max(1)
    }
}

// ---------------------------------------------------------------------------------------
// The handling timeout.

/// A request body that records whether its reader is waiting for the client.
struct Watched {
    inner: axum::body::BodyDataStream,
    waiting: Arc<AtomicBool>,
}

impl Stream for Watched {
    type Item = Result<Bytes, axum::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let poll = Pin::new(&mut self.inner).poll_next(cx);
        self.waiting.store(poll.is_pending(), Ordering::Relaxed);
        poll
    }
}

/// Middleware: answers a request that is not handled within `timeout` with `408` (its body
/// was still arriving: a slow client, and the connection is closed) or `503` (the server
/// was slow: retry, with the same `Idempotency-Key` for a write). Only the time until the
/// response head is limited: live streams are not affected (see the module docs).
pub async fn deadline(State(timeout): State<Duration>, request: Request, next: Next) -> Response {
    let waiting = Arc::new(AtomicBool::new(false));
    let watched = Arc::clone(&waiting);
    let request = request.map(|body| {
        Body::from_stream(Watched {
            inner: body.into_data_stream(),
            waiting: watched,
        })
    });
    // The registry stops an edit still running at the deadline (registry/budget.rs): the
    // timeout below can only act between the awaits of a request, not inside an edit.
    let handled = crate::registry::within(
        std::time::Instant::now() + timeout,
        tokio::time::timeout(timeout, next.run(request)),
    );
    match handled.await {
        Ok(response) => response,
        Err(_) if waiting.load(Ordering::Relaxed) => {
            let mut response = ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body-timeout",
                format!(
                    "the request body did not arrive within {} ms; nothing was applied",
                    timeout.as_millis()
                ),
            )
            .into_response();
            // The rest of the body may still come: this connection cannot be reused.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            response
        }
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "handling-timeout",
            format!(
                "the request was not handled within {} ms; a write may or may not have been \
                 applied (retry with the same Idempotency-Key)",
                timeout.as_millis()
            ),
        )
        .with_header(header::RETRY_AFTER, HeaderValue::from_static("1"))
        .into_response(),
    }
}

// ---------------------------------------------------------------------------------------
// The serve loop: connection limit and header timeout.

/// How many refusals may be in progress at once; past that an excess connection is closed
/// without an answer (a flood must not turn refusals into the new way to exhaust us).
const REFUSALS_AT_ONCE: usize = 64;

/// How long a refusal may take (writing the answer, reading what the client sent).
const REFUSAL_TIME: Duration = Duration::from_secs(5);

/// A connection's socket, holding its place among the open connections until it is shut
/// down or dropped (for a WebSocket: when the socket closes), and failing a write that the
/// client has left waiting past the write timeout. The place is given back before the
/// socket closes, so a client that saw its connection end can count on it.
struct Counted {
    place: Option<OwnedSemaphorePermit>,
    stream: TcpStream,
    /// How long a write may wait for the client to take a byte.
    write_timeout: Duration,
    /// Ends the current wait of a write: armed when a write waits, disarmed when one makes
    /// progress. Allocated at the first wait (most connections never wait).
    stall: Option<Pin<Box<Sleep>>>,
    /// Whether a write is waiting (`stall` is armed).
    stalled: bool,
    /// Set once a write timed out: the connection is dead both ways, and is reset when
    /// dropped.
    timed_out: bool,
    /// Counts it in `concord_connections` while it lives.
    _held: crate::metrics::Held,
}

impl Counted {
    fn new(stream: TcpStream, place: OwnedSemaphorePermit, write_timeout: Duration) -> Self {
        Counted {
            place: Some(place),
            stream,
            write_timeout,
            stall: None,
            stalled: false,
            timed_out: false,
            _held: crate::metrics::Held::new(crate::metrics::CONNECTIONS),
        }
    }

    /// The error every operation returns once a write timed out.
    fn dead(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "the client took nothing written to it for {} ms: connection dropped",
                self.write_timeout.as_millis()
            ),
        )
    }

    /// A write's outcome, timed: a write that waits arms the timer (or keeps it running),
    /// one that does anything else disarms it; the timer firing fails the write.
    fn timed<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if poll.is_ready() || self.write_timeout.is_zero() {
            self.stalled = false;
            return poll;
        }
        if !self.stalled {
            let deadline = Instant::now() + self.write_timeout;
            match &mut self.stall {
                Some(stall) => stall.as_mut().reset(deadline),
                None => self.stall = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            self.stalled = true;
        }
        let stall = self.stall.as_mut().expect("armed above");
        if stall.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.timed_out = true;
        // Reset rather than close: a graceful close would leave the kernel retrying the
        // unsent bytes to a client that does not read them.
        let _ = self.stream.set_zero_linger();
        tracing::info!(
            timeout_ms = self.write_timeout.as_millis() as u64,
            "dropping a connection whose client does not read"
        );
        Poll::Ready(Err(self.dead()))
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.timed_out {
            return Poll::Ready(Err(this.dead()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.timed_out {
            return Poll::Ready(Err(this.dead()));
        }
        let poll = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.timed(cx, poll)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.timed_out {
            return Poll::Ready(Err(this.dead()));
        }
        let poll = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.timed(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.timed_out {
            return Poll::Ready(Err(this.dead()));
        }
        let poll = Pin::new(&mut this.stream).poll_flush(cx);
        this.timed(cx, poll)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.place = None;
        if this.timed_out {
            // No FIN after the unsent bytes: the drop resets the connection.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_shutdown(cx)
    }
}

/// Errors of one connection's accept that say nothing about the listener.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Serves `router` on `listener` (HTTP/1.1 with upgrades) until `stop` turns true, then
/// stops accepting, lets every connection finish its request in flight, and returns once
/// they have all closed.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let places = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let refusals = Arc::new(Semaphore::new(REFUSALS_AT_ONCE));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    // Every connection task holds a sender: when all are dropped, all connections are done.
    let (open, mut all_closed) = mpsc::channel::<()>(1);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of file descriptors, say: wait rather than spin.
                    tracing::error!(error = %e, "cannot accept connections; retrying in a second");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
            () = stopped(&mut stop) => break,
        };
        let _ = stream.set_nodelay(true);
        let Ok(place) = Arc::clone(&places).try_acquire_owned() else {
            if let Ok(turn) = Arc::clone(&refusals).try_acquire_owned() {
                tokio::spawn(refuse(stream, limits.max_connections, turn));
            }
            continue;
        };
        let router = router.clone();
        let service =
            hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                router.clone().oneshot(request.map(Body::new))
            });
        let io = TokioIo::new(Counted::new(stream, place, limits.write_timeout));
        let connection = http.serve_connection(io, service).with_upgrades();
        let mut stop = stop.clone();
        let open = open.clone();
        tokio::spawn(async move {
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = stopped(&mut stop) => {
                    // Finish the request in flight, accept no other on this connection.
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "a connection ended with an error");
            }
            drop(open);
        });
    }
    drop(listener);
    drop(open);
    let _ = all_closed.recv().await;
    Ok(())
}

/// Returns once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Answers a connection over the limit `503` problem+json and closes it.
async fn refuse(mut stream: TcpStream, limit: usize, _turn: OwnedSemaphorePermit) {
    let body = problem_body(
        StatusCode::SERVICE_UNAVAILABLE,
        "too-many-connections",
        &format!("the server has its limit of {limit} connections open; retry shortly"),
    );
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: {PROBLEM_JSON}\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = tokio::time::timeout(REFUSAL_TIME, async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(&body).await?;
        stream.shutdown().await?;
        // Read what the client sent until it closes: closing with unread input would
        // reset the connection, and the client could lose the answer.
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, io::Error>(())
    })
    .await;
}
