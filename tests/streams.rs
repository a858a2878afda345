//! End-to-end tests of the rules every live stream lives by (`concord_server::limits` and
//! `api::live::socket`): every kind of WebSocket (`/ws`, `/sync`, `/v1/repo`) is pinged and
//! closed when its peer is silent past the idle timeout, and closed 1007 for a text frame
//! that is not UTF-8; live streams, WebSocket and Server-Sent Events alike, hold at most
//! their share of the connections, so that plain requests are still answered; and a client
//! that stops reading while data flows to it is dropped after the write timeout, whatever
//! its connection carries.
//!
//! The clients here speak HTTP and WebSocket by hand over TCP, so that they can do what a
//! library would not: never answer a ping, send bytes that are not UTF-8, never read. No
//! test sleeps to wait for something: durations are configured short and each test waits
//! for the event itself (a frame, a close, a reset); [`PATIENCE`] only turns a hang into a
//! failure.

use std::time::Duration;

use concord_tests::{SseStream, TestServer, PATIENCE};
use futures_util::{FutureExt, StreamExt};
use reqwest::{Method, StatusCode};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;

// ---------------------------------------------------------------------------------------
// A client by hand.

const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;

/// The request that opens a WebSocket at `path`.
fn upgrade(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// The request that opens an event stream at `path`.
fn events(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n")
}

/// One masked client frame (the mask is zero, so the payload reads as it is).
fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n => {
            out.push(0x80 | 126);
            out.extend_from_slice(&u16::try_from(n).unwrap().to_be_bytes());
        }
    }
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(payload);
    out
}

/// A connection spoken by hand: it answers nothing it is not told to.
struct Raw {
    stream: TcpStream,
    /// Read and not yet taken.
    buffer: Vec<u8>,
}

/// What the server answered to a request that opens a stream.
enum Opened {
    /// `101` or `200`: the stream is open, its head read and nothing more.
    Open(Raw),
    /// Anything else: the head (lowercase) and the body.
    Refused(String, String),
}

impl Raw {
    /// Connects; `small` asks for a receive buffer as small as the system allows, so that a
    /// client that does not read fills it soon.
    async fn connect(s: &TestServer, small: bool) -> Raw {
        let socket = TcpSocket::new_v4().unwrap();
        if small {
            socket.set_recv_buffer_size(4096).unwrap();
        }
        let stream = socket.connect(s.addr()).await.expect("connects");
        Raw {
            stream,
            buffer: Vec::new(),
        }
    }

    /// Sends `request` on a new connection and reads the answer's head; for a refusal, also
    /// its body, and then waits for the server to close the connection (once it has, the
    /// connection's place is free again).
    async fn open(s: &TestServer, request: &str) -> Opened {
        let mut raw = Raw::connect(s, false).await;
        raw.stream.write_all(request.as_bytes()).await.unwrap();
        let head = raw.head().await;
        if head.starts_with("http/1.1 101") || head.starts_with("http/1.1 200") {
            return Opened::Open(raw);
        }
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        raw.fill(length).await;
        let body = String::from_utf8_lossy(&raw.buffer[..length]).into_owned();
        let mut rest = Vec::new();
        tokio::time::timeout(PATIENCE, raw.stream.read_to_end(&mut rest))
            .await
            .expect("the server closes a refused connection")
            .expect("reads to the end");
        Opened::Refused(head, body)
    }

    /// One request on a connection of its own, answered and closed: the head (lowercase)
    /// and the body.
    async fn request(s: &TestServer, request: &str) -> (String, String) {
        let mut raw = Raw::connect(s, false).await;
        raw.stream.write_all(request.as_bytes()).await.unwrap();
        let head = raw.head().await;
        let mut rest = Vec::new();
        tokio::time::timeout(PATIENCE, raw.stream.read_to_end(&mut rest))
            .await
            .expect("the server answers and closes in time")
            .expect("reads to the end");
        raw.buffer.extend(rest);
        (head, String::from_utf8_lossy(&raw.buffer).into_owned())
    }

    /// Opens a WebSocket at `path`; panics if the server refuses.
    async fn websocket(s: &TestServer, path: &str) -> Raw {
        match Raw::open(s, &upgrade(path)).await {
            Opened::Open(raw) => raw,
            Opened::Refused(head, body) => panic!("{path} refused: {head}\n{body}"),
        }
    }

    /// Reads until `buffer` holds at least `n` bytes.
    async fn fill(&mut self, n: usize) {
        let mut chunk = [0u8; 16 * 1024];
        while self.buffer.len() < n {
            let read = tokio::time::timeout(PATIENCE, self.stream.read(&mut chunk))
                .await
                .expect("the server answers in time")
                .expect("reads");
            assert!(read > 0, "the connection ended early: {:?}", self.buffer);
            self.buffer.extend_from_slice(&chunk[..read]);
        }
    }

    /// The head of a response, lowercase; what follows it stays in the buffer.
    async fn head(&mut self) -> String {
        loop {
            if let Some(end) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buffer[..end]).to_ascii_lowercase();
                self.buffer.drain(..end + 4);
                return head;
            }
            let want = self.buffer.len() + 1;
            self.fill(want).await;
        }
    }

    /// The next WebSocket frame: its opcode and payload (server frames are not masked, and
    /// not fragmented).
    async fn frame(&mut self) -> (u8, Vec<u8>) {
        self.fill(2).await;
        let opcode = self.buffer[0] & 0x0f;
        let (length, start) = match self.buffer[1] & 0x7f {
            126 => {
                self.fill(4).await;
                (
                    usize::from(u16::from_be_bytes([self.buffer[2], self.buffer[3]])),
                    4,
                )
            }
            127 => {
                self.fill(10).await;
                let bytes: [u8; 8] = self.buffer[2..10].try_into().unwrap();
                (usize::try_from(u64::from_be_bytes(bytes)).unwrap(), 10)
            }
            n => (usize::from(n), 2),
        };
        self.fill(start + length).await;
        let payload = self.buffer[start..start + length].to_vec();
        self.buffer.drain(..start + length);
        (opcode, payload)
    }

    async fn send(&mut self, opcode: u8, payload: &[u8]) {
        self.stream
            .write_all(&frame(opcode, payload))
            .await
            .unwrap();
    }

    /// Reads frames, answering none, until the close frame: its code and reason, and how
    /// many pings came before it.
    async fn closed(&mut self) -> (u16, String, usize) {
        let mut pings = 0;
        loop {
            match self.frame().await {
                (CLOSE, payload) => {
                    assert!(payload.len() >= 2, "a close frame with a code");
                    let code = u16::from_be_bytes([payload[0], payload[1]]);
                    let reason = String::from_utf8(payload[2..].to_vec()).unwrap();
                    return (code, reason, pings);
                }
                (PING, _) => pings += 1,
                (TEXT | BINARY, _) => {}
                (other, _) => panic!("unexpected frame {other:#x}"),
            }
        }
    }

    /// Whether the server has reset the connection, without reading anything.
    fn is_reset(&self) -> bool {
        matches!(
            self.stream.ready(Interest::ERROR).now_or_never(),
            Some(Ok(ready)) if ready.is_error()
        )
    }

    /// Waits, reading nothing, until the server resets the connection.
    async fn reset(&self, what: &str) {
        let ready = tokio::time::timeout(PATIENCE, self.stream.ready(Interest::ERROR))
            .await
            .unwrap_or_else(|_| panic!("{what}: the server did not drop the connection"))
            .unwrap();
        assert!(ready.is_error(), "{what}");
    }
}

/// The three kinds of WebSocket, on document `id`.
fn websockets(id: &str) -> [String; 3] {
    [
        format!("/v1/docs/{id}/ws"),
        format!("/v1/docs/{id}/sync"),
        "/v1/repo".to_owned(),
    ]
}

// ---------------------------------------------------------------------------------------
// Keep-alive and the idle timeout.

/// Each kind of WebSocket is pinged; a peer that answers nothing is closed (1001) after the
/// idle timeout, one whose library answers the pings stays open well past it.
#[tokio::test]
async fn every_websocket_is_pinged_and_closed_when_silent() {
    let idle = Duration::from_millis(600);
    let ping = Duration::from_millis(60);
    let s = TestServer::start_with(|c| {
        c.live.idle_timeout = idle;
        c.live.ping_interval = ping;
    })
    .await;
    let (id, _) = s.create(json!({"value": {"n": 1}})).await;
    let silent = websockets(&id).map(|path| {
        let s = &s;
        async move {
            let mut socket = Raw::websocket(s, &path).await;
            let (code, reason, pings) = socket.closed().await;
            assert!(pings > 0, "{path}: closed without a ping");
            assert_eq!(code, 1001, "{path}: {reason}");
            assert!(reason.contains("idle"), "{path}: {reason}");
        }
    });
    // Pings come at least `ping` apart, so this many prove twice the idle timeout passed.
    let enough = (2 * idle.as_millis() / ping.as_millis()) as usize + 1;
    let answering = websockets(&id).map(|path| {
        let s = &s;
        async move {
            let mut socket = concord_tests::ws::connect(s, &path).await;
            let mut pings = 0;
            while pings < enough {
                let frame = tokio::time::timeout(PATIENCE, socket.next())
                    .await
                    .expect("a frame in time");
                match frame {
                    Some(Ok(Message::Ping(_))) => pings += 1,
                    Some(Ok(Message::Binary(_) | Message::Pong(_))) => {}
                    other => panic!("{path}: after {pings} pings: {other:?}"),
                }
            }
        }
    });
    futures_util::future::join(
        futures_util::future::join_all(silent),
        futures_util::future::join_all(answering),
    )
    .await;
}

/// A text frame that is not UTF-8 closes each kind of WebSocket with 1007 and a reason; the
/// server goes on serving.
#[tokio::test]
async fn invalid_utf8_in_a_text_frame_closes_1007() {
    let s = TestServer::start().await;
    let (id, version) = s.create(json!({"value": {"n": 1}})).await;
    for path in websockets(&id) {
        let mut socket = Raw::websocket(&s, &path).await;
        socket.send(TEXT, b"{\"type\": \"\xff\xfe\"}").await;
        let (code, reason, _) = socket.closed().await;
        assert_eq!(code, 1007, "{path}: {reason}");
        assert!(reason.contains("UTF-8"), "{path}: {reason}");
    }
    assert_eq!(s.get(&id).await.1, version);
    let health = s.send(s.request(Method::GET, "/healthz")).await;
    assert_eq!(health.status, StatusCode::OK);
}

// ---------------------------------------------------------------------------------------
// The streams' share of the connections.

/// A client opens as many streams of every kind as there are connections and never reads
/// them: the streams get their share (three quarters), the others are refused `503`
/// `too-many-streams` and closed, and plain requests are still answered.
#[tokio::test]
async fn streams_never_hold_the_places_kept_for_requests() {
    let s = TestServer::start_with(|c| c.limits.max_connections = 8).await;
    let (id, _) = s.create(json!({"value": {"n": 1}})).await;
    let [ws, sync, repo] = websockets(&id);
    let kinds = [
        events(&format!("/v1/docs/{id}/events")),
        upgrade(&ws),
        events("/v1/events"),
        upgrade(&sync),
        upgrade(&repo),
    ];
    let mut open = Vec::new();
    let mut refused = Vec::new();
    for request in kinds.iter().cycle().take(8) {
        match Raw::open(&s, request).await {
            Opened::Open(raw) => open.push(raw),
            Opened::Refused(head, body) => refused.push((head, body)),
        }
    }
    assert_eq!((open.len(), refused.len()), (6, 2), "{refused:?}");
    for (head, body) in &refused {
        assert!(head.starts_with("http/1.1 503"), "{head}");
        assert!(head.contains("application/problem+json"), "{head}");
        assert!(head.contains("retry-after: 1"), "{head}");
        assert!(head.contains("connection: close"), "{head}");
        assert!(body.contains("too-many-streams"), "{body}");
    }
    assert_eq!(s.state().streams.open(), 6);
    // The places left are for requests: a read and a write, each on a new connection, are
    // answered.
    let (head, body) = Raw::request(
        &s,
        "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("http/1.1 200"), "{head}\n{body}");
    let ops = json!([{"op": "replace", "path": "/n", "value": 2}]).to_string();
    let write = format!(
        "PATCH /v1/docs/{id} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Content-Type: application/json-patch+json\r\nContent-Length: {}\r\n\r\n{ops}",
        ops.len()
    );
    let (head, body) = Raw::request(&s, &write).await;
    assert!(head.starts_with("http/1.1 200"), "{head}\n{body}");
    assert_eq!(s.get(&id).await.0, json!({"n": 2}));
}

// ---------------------------------------------------------------------------------------
// The write timeout.

/// Clients that stop reading while data flows to them, an event stream, a WebSocket
/// subscriber and plain responses, are reset after the write timeout; a client that reads
/// the same events keeps its stream, and the stream places of the dropped are given back.
#[tokio::test]
async fn a_client_that_does_not_read_is_dropped_after_the_write_timeout() {
    let s = TestServer::start_with(|c| c.limits.write_timeout = Duration::from_millis(500)).await;
    let big = "x".repeat(256 * 1024);
    let (id, _) = s.create(json!({"value": {"big": big}})).await;

    // A reader of the document's events, read as they come.
    let mut reader = SseStream::open(&s, &format!("/v1/docs/{id}/events"), &[]).await;
    let (seen, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    let reading = tokio::spawn(async move {
        while let Some(event) = reader.next().await {
            if seen.send(event.data).is_err() {
                break;
            }
        }
    });

    // Three clients that never read what they asked for.
    let events_victim = Raw::connect(&s, true).await;
    let request = events(&format!("/v1/docs/{id}/events"));
    let mut victims = vec![("an event stream", events_victim, request.into_bytes())];
    let mut subscribe = upgrade(&format!("/v1/docs/{id}/ws")).into_bytes();
    subscribe.extend(frame(TEXT, br#"{"type": "subscribe"}"#));
    victims.push(("a WebSocket", Raw::connect(&s, true).await, subscribe));
    // Reads of the document, pipelined: more than the buffers hold (the server's grows to
    // a few MiB).
    let read = format!("GET /v1/docs/{id} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").repeat(40);
    victims.push(("responses", Raw::connect(&s, true).await, read.into_bytes()));
    for (_, victim, request) in &mut victims {
        victim.stream.write_all(request).await.unwrap();
    }

    // Events flow until every victim is dropped (a bound, far above the buffers' size).
    for i in 0..48 {
        if victims.iter().all(|(_, victim, _)| victim.is_reset()) {
            break;
        }
        let value = format!("{i}{big}");
        let write = s
            .patch(
                &id,
                "writer",
                None,
                &json!([{"op": "replace", "path": "/big", "value": value}]),
            )
            .await;
        assert_eq!(write.status, StatusCode::OK);
    }
    for (what, victim, _) in &victims {
        victim.reset(what).await;
    }

    // The reader still gets what is written, and only its stream holds a place.
    let write = s
        .patch(
            &id,
            "writer",
            None,
            &json!([{"op": "replace", "path": "/big", "value": "the end"}]),
        )
        .await;
    assert_eq!(write.status, StatusCode::OK);
    loop {
        let data = tokio::time::timeout(PATIENCE, seen_rx.recv())
            .await
            .expect("the reader keeps receiving")
            .expect("the reader's stream is open");
        if data.contains("the end") {
            break;
        }
    }
    assert_eq!(s.state().streams.open(), 1);
    let health = s.send(s.request(Method::GET, "/healthz")).await;
    assert_eq!(health.status, StatusCode::OK);
    reading.abort();
}
