//! End-to-end tests of the rules every live stream lives by (`concord_server::limits`): a
//! client that stops reading while data flows to it is dropped after the write timeout,
//! whatever its connection carries.
//!
//! The clients here speak HTTP and WebSocket by hand over TCP, so that they can do what a
//! library would not: never read. No test sleeps to wait for something: durations are
//! configured short and each test waits for the event itself (a reset); [`PATIENCE`] only
//! turns a hang into a failure.

use std::time::Duration;

use concord_tests::{SseStream, TestServer, PATIENCE};
use futures_util::FutureExt;
use reqwest::{Method, StatusCode};
use serde_json::json;
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::{TcpSocket, TcpStream};

// ---------------------------------------------------------------------------------------
// A client by hand.

const TEXT: u8 = 0x1;
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
        Raw { stream }
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

// ---------------------------------------------------------------------------------------
// The write timeout.

/// Clients that stop reading while data flows to them, an event stream, a WebSocket
/// subscriber and plain responses, are reset after the write timeout; a client that reads
/// the same events keeps its stream.
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

    // The reader still gets what is written.
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
    let health = s.send(s.request(Method::GET, "/healthz")).await;
    assert_eq!(health.status, StatusCode::OK);
    reading.abort();
}
