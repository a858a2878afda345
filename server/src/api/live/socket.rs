//! One open WebSocket, of any of the three kinds (`/v1/docs/{id}/ws`, `/v1/docs/{id}/sync`,
//! `/v1/repo`), kept alive and ended the same way: [`LiveSocket`].
//!
//! - It pings the peer every `LiveConfig::ping_interval` (at least twice per idle timeout);
//!   any frame from the peer, a pong included, proves it is there.
//! - A peer silent for `LiveConfig::idle_timeout` is closed (1001), and so is every socket
//!   when the server shuts down (1001).
//! - A text frame that is not UTF-8 is closed 1007, a message over the size the upgrade
//!   allowed 1009 (the reader stops there, so that close is sent but may be lost).
//! - A write the peer does not take is cut by the connection's write timeout
//!   ([`crate::limits::Limits::write_timeout`]): the send fails and the socket ends.
//! - It holds its [`StreamSlot`] for as long as it lives.
//!
//! What the frames mean is the protocol's business: each endpoint reads them with
//! [`LiveSocket::recv`] and answers with [`LiveSocket::send`].

use std::pin::Pin;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::ws::{close_code, CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::SinkExt;
use tokio::sync::watch;
use tokio::time::{Instant, Interval, Sleep};
use tokio_tungstenite::tungstenite;

use super::closed;
use crate::limits::StreamSlot;
use crate::AppState;

/// How long a closing socket waits for the peer to answer its close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// A WebSocket with its keep-alive, idle timeout and place among the live streams.
pub(crate) struct LiveSocket {
    /// Its place among the live streams, given back when the socket ends (before the
    /// connection closes: fields drop in order).
    _slot: StreamSlot,
    socket: WebSocket,
    /// When the next ping is due.
    ping: Interval,
    /// Pushed back by every frame the peer sends; firing means the peer is gone or stuck.
    idle: Pin<Box<Sleep>>,
    idle_after: Duration,
    /// Turns true when the server shuts down.
    closing: watch::Receiver<bool>,
}

/// What the peer sent, or why the socket must end.
#[derive(Debug)]
pub(crate) enum Received {
    /// A text message (valid UTF-8).
    Text(Utf8Bytes),
    /// A binary message.
    Binary(Bytes),
    /// The peer closed the connection, or it broke: there is nobody to tell.
    Gone,
    /// The socket must be closed with this code and reason ([`LiveSocket::close`]).
    Close(u16, String),
}

impl LiveSocket {
    /// Takes over an upgraded socket, with the live limits of `state`'s configuration.
    pub(crate) fn new(socket: WebSocket, state: &AppState, slot: StreamSlot) -> Self {
        let live = &state.config.live;
        let idle_after = live.idle_timeout;
        // A peer that answers every ping must never look idle.
        let ping_every = live
            .ping_interval
            .min(idle_after / 2)
            .max(Duration::from_millis(1));
        let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        LiveSocket {
            _slot: slot,
            socket,
            ping,
            idle: Box::pin(tokio::time::sleep(idle_after)),
            idle_after,
            closing: state.registry.closing(),
        }
    }

    /// The peer's next message, pinging it meanwhile; or why the socket must end.
    /// Cancel-safe: a message is never lost to a cancelled call (a ping may be).
    pub(crate) async fn recv(&mut self) -> Received {
        loop {
            tokio::select! {
                // A frame that arrived counts before the idle timer it would have reset, and
                // a ping due goes out before that timer is looked at.
                biased;
                frame = self.socket.recv() => {
                    self.idle.as_mut().reset(Instant::now() + self.idle_after);
                    match frame {
                        Some(Ok(Message::Text(text))) => return Received::Text(text),
                        Some(Ok(Message::Binary(bytes))) => return Received::Binary(bytes),
                        // Pongs to pings are queued by the WebSocket layer.
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                        Some(Ok(Message::Close(_))) => {
                            // Sends the answer to the peer's close frame, queued when it
                            // was read.
                            let _ = self.socket.flush().await;
                            return Received::Gone;
                        }
                        Some(Err(e)) => return broken(e),
                        None => return Received::Gone,
                    }
                }
                _ = self.ping.tick() => {
                    if self.socket.send(Message::Ping(Bytes::new())).await.is_err() {
                        return Received::Gone;
                    }
                }
                () = &mut self.idle => {
                    return Received::Close(
                        close_code::AWAY,
                        format!("idle: no frame (nor pong) for {} ms", self.idle_after.as_millis()),
                    )
                }
                () = closed(&mut self.closing) => {
                    return Received::Close(close_code::AWAY, "the server is shutting down".into())
                }
            }
        }
    }

    /// Sends a message; an error means the peer is gone (or does not read).
    pub(crate) async fn send(&mut self, message: Message) -> Result<(), axum::Error> {
        self.socket.send(message).await
    }

    /// Sends a close frame (the reason cut to the 123 bytes a frame can carry), then reads
    /// until the peer answers it, for a while: closing the socket with unread input would
    /// reset the connection, and the peer could lose the close frame.
    pub(crate) async fn close(&mut self, code: u16, reason: &str) {
        if self.socket.send(close_frame(code, reason)).await.is_ok() {
            self.drain().await;
        }
    }

    /// Reads and drops what the peer still sends until it closes, for a while.
    pub(crate) async fn drain(&mut self) {
        let _ = tokio::time::timeout(CLOSE_WAIT, async {
            while let Some(Ok(_)) = self.socket.recv().await {}
        })
        .await;
    }
}

/// Why reading failed, as what to do: frames that break the protocol's rules are closed
/// with their code (the reader has stopped; the close frame can still be sent), anything
/// else means the connection is gone.
fn broken(error: axum::Error) -> Received {
    let Ok(error) = error.into_inner().downcast::<tungstenite::Error>() else {
        return Received::Gone;
    };
    match *error {
        tungstenite::Error::Utf8(detail) => Received::Close(
            close_code::INVALID,
            format!("a text frame must be UTF-8: {detail}"),
        ),
        tungstenite::Error::Capacity(e) => Received::Close(close_code::SIZE, e.to_string()),
        _ => Received::Gone,
    }
}

/// A close frame; the reason is cut, on a character boundary, to 123 bytes.
fn close_frame(code: u16, reason: &str) -> Message {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from(&reason[..end]),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reasons_fit_a_frame() {
        for reason in ["é".repeat(200), "x".repeat(124), "short".to_owned()] {
            let Message::Close(Some(frame)) = close_frame(1007, &reason) else {
                panic!("a close frame");
            };
            assert!(frame.reason.as_str().len() <= 123);
            assert!(reason.starts_with(frame.reason.as_str()));
        }
    }
}
