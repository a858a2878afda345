//! WebSocket connections to the test server: raw ones (the binary sync endpoint and
//! automerge-repo's `/v1/repo`, spoken by hand) and the JSON protocol through the client's
//! [`Socket`].
//!
//! Every wait is bounded by [`PATIENCE`], which only turns a hang into a failure.

use concord_client::{Frame, ServerMessage, Socket};
use futures_util::StreamExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::{TestServer, PATIENCE};

/// A raw WebSocket connection, frames as they are.
pub type RawSocket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens a raw WebSocket to `path` on the server, with no headers (as a browser connects);
/// panics if the server refuses.
pub async fn connect(s: &TestServer, path: &str) -> RawSocket {
    let url = format!("ws://{}{}", s.addr(), path);
    let (socket, _) = tokio_tungstenite::connect_async(url)
        .await
        .unwrap_or_else(|e| panic!("connect to {path}: {e}"));
    socket
}

/// Opens a raw WebSocket to `path` with `Authorization: Bearer <token>` and extra headers;
/// a refused upgrade is the error (`tungstenite::Error::Http`, with the server's answer).
pub async fn connect_with(
    s: &TestServer,
    path: &str,
    token: &str,
    headers: &[(&str, &str)],
) -> Result<RawSocket, tungstenite::Error> {
    let mut request = format!("ws://{}{}", s.addr(), path)
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    for (name, value) in headers {
        let name = tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap();
        request.headers_mut().insert(name, value.parse().unwrap());
    }
    tokio_tungstenite::connect_async(request)
        .await
        .map(|(socket, _)| socket)
}

/// The next frame that is not a ping or pong; `None` once the connection ended.
pub async fn next(socket: &mut RawSocket) -> Option<Message> {
    loop {
        let frame = tokio::time::timeout(PATIENCE, socket.next())
            .await
            .expect("the server answers in time");
        match frame {
            None | Some(Err(_)) => return None,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(frame)) => return Some(frame),
        }
    }
}

/// Waits for the close frame; returns its code and reason.
pub async fn closed(socket: &mut RawSocket) -> (u16, String) {
    loop {
        match next(socket).await {
            Some(Message::Close(Some(frame))) => {
                return (u16::from(frame.code), frame.reason.as_str().to_owned())
            }
            Some(Message::Close(None)) | None => panic!("closed without a reason"),
            Some(_) => continue,
        }
    }
}

/// The next message of the JSON protocol; panics on a close frame.
pub async fn recv(socket: &mut Socket) -> ServerMessage {
    match tokio::time::timeout(PATIENCE, socket.recv())
        .await
        .expect("the server answers in time")
        .expect("a frame")
    {
        Frame::Message(message) => message,
        Frame::Close { code, reason } => panic!("closed ({code}): {reason}"),
    }
}
