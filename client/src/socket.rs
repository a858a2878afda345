//! One raw WebSocket connection to a document: [`Socket`], and how a [`Client`] opens one.

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use uuid::Uuid;

use crate::{protocol, Client, ClientError, ClientMessage, ServerMessage};

impl Client {
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
}

/// One WebSocket connection to a document, speaking the JSON protocol as is.
pub struct Socket {
    pub(crate) ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
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
