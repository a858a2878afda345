//! The listener: one connection that `LISTEN`s on the schema's channel and turns other
//! nodes' notifications into [`Notice`]s, connecting again when it breaks.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use concord_core::storage::{Notice, StoreError};
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, NoTls};
use uuid::Uuid;

use super::schema::quote_ident;
use super::{pg, Inner};

/// How often the listener checks that its connection still answers, and how long it waits.
const PING_EVERY: Duration = Duration::from_secs(10);
const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// The pauses between reconnection attempts grow from the first to the last.
const RECONNECT_FIRST: Duration = Duration::from_millis(50);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

pub(super) async fn listen_loop(inner: Arc<Inner>) {
    let mut pause = RECONNECT_FIRST;
    loop {
        match listen_once(&inner).await {
            Ok(()) => pause = RECONNECT_FIRST,
            Err(e) => {
                tracing::warn!(error = %e, ?pause, "postgres listener lost its connection; reconnecting");
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(RECONNECT_MAX);
    }
}

/// Listens on one connection until it fails; `Ok` if it had been listening.
async fn listen_once(inner: &Inner) -> Result<(), StoreError> {
    let mut config = inner.config.clone();
    config.application_name(format!("concord-listener {}", inner.node));
    let (client, mut connection) = config
        .connect(NoTls)
        .await
        .map_err(|e| pg("connect (listener)", e))?;
    let (tx, mut notes) = mpsc::unbounded_channel();
    // Drives the connection; notifications come out of it, not out of the client.
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(note))) => {
                    if tx.send(note).is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "postgres listener connection failed");
                    return;
                }
                None => return,
            }
        }
    });
    let result = async {
        client
            .batch_execute(&format!("LISTEN {}", quote_ident(&inner.channel)))
            .await
            .map_err(|e| pg("listen", e))?;
        inner.listens.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(channel = %inner.channel, "postgres listener connected");
        // Whatever was stored before LISTEN took effect is read by catching up now.
        inner.emit(Notice::Resync);
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        loop {
            tokio::select! {
                note = notes.recv() => match note {
                    Some(note) => handle(inner, note.payload()),
                    None => return Err(StoreError::Backend("the listener connection closed".into())),
                },
                _ = ping.tick() => {
                    match tokio::time::timeout(PING_TIMEOUT, client.simple_query("")).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return Err(pg("listener ping", e)),
                        Err(_) => return Err(StoreError::Backend("the listener connection stopped answering".into())),
                    }
                }
            }
        }
    }
    .await;
    driver.abort();
    result
}

/// Turns a notification payload (`c|d|r <node> <doc>`) into a notice.
fn handle(inner: &Inner, payload: &str) {
    let mut parts = payload.split(' ');
    let (Some(kind), Some(node), Some(doc)) = (parts.next(), parts.next(), parts.next()) else {
        tracing::debug!(payload, "ignoring a malformed notification");
        return;
    };
    let (Ok(node), Ok(doc)) = (Uuid::parse_str(node), Uuid::parse_str(doc)) else {
        tracing::debug!(payload, "ignoring a malformed notification");
        return;
    };
    if node == inner.node {
        return;
    }
    match kind {
        "c" | "d" => inner.emit(Notice::Changed(doc)),
        "r" => inner.emit(Notice::Released(doc)),
        _ => tracing::debug!(payload, "ignoring an unknown notification"),
    }
}
