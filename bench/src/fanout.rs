//! Fan-out: one writer, many WebSocket subscribers; how long until the last subscriber
//! has each change.

use std::time::Instant;

use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use super::{fetch_json, percentile, BenchError, LocalConcord};

/// One measured subscriber count.
#[derive(Debug, Clone, Serialize)]
pub struct FanoutRow {
    /// Subscribers.
    pub subscribers: usize,
    /// Writes measured.
    pub writes: usize,
    /// From the writer's acknowledgement to the last subscriber's receipt: median, ms
    /// (0 when every subscriber had it before the writer's answer arrived).
    pub from_ack_p50_ms: f64,
    /// Same, 99th percentile.
    pub from_ack_p99_ms: f64,
    /// From sending the write to the last receipt: median, ms.
    pub from_send_p50_ms: f64,
    /// Same, 99th percentile.
    pub from_send_p99_ms: f64,
}

/// For each count, connects that many subscribers, then makes `writes` writes one after
/// another, waiting each time until every subscriber has the change.
pub async fn run(
    concord: &LocalConcord,
    counts: &[usize],
    writes: usize,
) -> Result<Vec<FanoutRow>, BenchError> {
    let client = reqwest::Client::new();
    let mut rows = Vec::new();
    for &subscribers in counts {
        let url = concord
            .create_docs(&client, 1, "crdt", json!({"n": 0}))
            .await?
            .remove(0);
        let id = url.rsplit('/').next().unwrap_or_default().to_owned();
        let ws_url = format!("ws://{}/v1/docs/{id}/ws?agent=subscriber", concord.addr);
        let (receipts, mut received) = mpsc::unbounded_channel::<(String, Instant)>();
        let mut readers = Vec::with_capacity(subscribers);
        for _ in 0..subscribers {
            let (mut socket, _) = tokio_tungstenite::connect_async(ws_url.as_str())
                .await
                .map_err(|e| BenchError::Io(format!("subscriber connect: {e}")))?;
            socket
                .send(Message::text(json!({"type": "subscribe"}).to_string()))
                .await
                .map_err(|e| BenchError::Io(e.to_string()))?;
            // Wait until the subscription is in place before the first write.
            loop {
                let frame = socket
                    .next()
                    .await
                    .ok_or_else(|| BenchError::Io("subscriber closed".into()))?;
                let frame = frame.map_err(|e| BenchError::Io(e.to_string()))?;
                if let Message::Text(text) = frame {
                    let message: Value = serde_json::from_str(&text).unwrap_or_default();
                    if message["type"] == "subscribed" {
                        break;
                    }
                }
            }
            let receipts = receipts.clone();
            readers.push(tokio::spawn(async move {
                while let Some(Ok(frame)) = socket.next().await {
                    if let Message::Text(text) = frame {
                        let message: Value = serde_json::from_str(&text).unwrap_or_default();
                        if message["type"] == "change" {
                            let version =
                                message["version"].as_str().unwrap_or_default().to_owned();
                            if receipts.send((version, Instant::now())).is_err() {
                                break;
                            }
                        }
                    }
                }
            }));
        }
        let (mut from_ack, mut from_send) = (Vec::new(), Vec::new());
        for i in 0..writes {
            let sent = Instant::now();
            let body: Value = fetch_json(
                client
                    .patch(&url)
                    .header("content-type", "application/json-patch+json")
                    .body(json!([{"op": "replace", "path": "/n", "value": i + 1}]).to_string()),
            )
            .await?;
            let acked = Instant::now();
            let version = body["version"].as_str().unwrap_or_default().to_owned();
            let mut seen = 0;
            let mut last = sent;
            while seen < subscribers {
                let (v, at) =
                    tokio::time::timeout(std::time::Duration::from_secs(30), received.recv())
                        .await
                        .map_err(|_| {
                            BenchError::Invalid("a subscriber missed a change for 30 s".into())
                        })?
                        .ok_or_else(|| BenchError::Io("subscribers closed".into()))?;
                if v == version {
                    seen += 1;
                    last = last.max(at);
                }
            }
            from_send.push(last.duration_since(sent).as_secs_f64() * 1000.0);
            from_ack.push(last.saturating_duration_since(acked).as_secs_f64() * 1000.0);
        }
        for reader in readers {
            reader.abort();
        }
        rows.push(FanoutRow {
            subscribers,
            writes,
            from_ack_p50_ms: percentile(&from_ack, 0.5),
            from_ack_p99_ms: percentile(&from_ack, 0.99),
            from_send_p50_ms: percentile(&from_send, 0.5),
            from_send_p99_ms: percentile(&from_send, 0.99),
        });
    }
    Ok(rows)
}
