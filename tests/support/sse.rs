//! Server-Sent Events, read event by event.

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::TestServer;

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field (`message` if none).
    pub event: String,
    /// The `id:` field.
    pub id: Option<String>,
    /// The `data:` lines, joined by newlines.
    pub data: String,
}

impl SseEvent {
    /// The data as JSON (panics if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("SSE data is not JSON ({e}): {:?}", self.data))
    }
}

/// A Server-Sent Events stream, read event by event (keep-alive comments skipped).
pub struct SseStream {
    response: reqwest::Response,
    buffer: String,
}

impl SseStream {
    /// Opens `path` with optional extra headers; asserts a 200 `text/event-stream`. The
    /// server has subscribed by the time this returns.
    pub async fn open(server: &TestServer, path: &str, headers: &[(&str, &str)]) -> SseStream {
        let mut request = server.request(Method::GET, path);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("SSE request sent");
        assert_eq!(response.status(), StatusCode::OK);
        let media = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(media.starts_with("text/event-stream"), "{media}");
        SseStream {
            response,
            buffer: String::new(),
        }
    }

    /// The next event; `None` when the stream ends.
    pub async fn next(&mut self) -> Option<SseEvent> {
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = SseEvent {
                    event: "message".into(),
                    id: None,
                    data: String::new(),
                };
                let mut has_data = false;
                for line in block.lines() {
                    let (field, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    match field {
                        "event" => event.event = value.to_owned(),
                        "id" => event.id = Some(value.to_owned()),
                        "data" => {
                            if has_data {
                                event.data.push('\n');
                            }
                            event.data.push_str(value);
                            has_data = true;
                        }
                        _ => {}
                    }
                }
                if has_data {
                    return Some(event);
                }
            }
            let chunk = self.response.chunk().await.expect("SSE stream read")?;
            self.buffer
                .push_str(&String::from_utf8_lossy(&chunk).replace("\r\n", "\n"));
        }
    }
}
