//! Following the other nodes of a shared store: the store's [`Notice`]s turned into
//! catch-ups of the documents this node has in memory, so that their subscribers see every
//! change, wherever it was written.
//!
//! Notices are coalesced: while one round of catch-ups runs, the documents named by new
//! notices are collected, and the next round catches each of them up once. A document named
//! while its catch-up was already reading is caught up again in the next round, so a change
//! committed during a catch-up is never left behind. [`Notice::Resync`] (the store's
//! listener connected again, and may have missed notices) catches up every document in
//! memory.

use std::collections::HashSet;
use std::sync::Arc;

use concord_core::storage::Notice;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use uuid::Uuid;

use crate::AppState;

/// How many documents one round catches up at once.
const PARALLEL: usize = 16;

/// Starts following the store's notices, if the store is shared; the task runs until it is
/// aborted (at shutdown).
pub fn follow(state: Arc<AppState>) -> Option<JoinHandle<()>> {
    let store = state.registry.store();
    if !store.shared() {
        return None;
    }
    let (sender, notices) = mpsc::unbounded_channel();
    store.on_notice(Box::new(move |notice| {
        // The follower is gone only at shutdown.
        let _ = sender.send(notice);
    }));
    Some(tokio::spawn(run(state, notices)))
}

async fn run(state: Arc<AppState>, mut notices: mpsc::UnboundedReceiver<Notice>) {
    let registry = &state.registry;
    while let Some(first) = notices.recv().await {
        let mut docs = HashSet::new();
        let mut everything = false;
        let mut next = Some(first);
        while let Some(notice) = next {
            match notice {
                Notice::Changed(id) => {
                    docs.insert(id);
                }
                Notice::Released(id) => registry.notify_released(id),
                Notice::Resync => everything = true,
            }
            next = notices.try_recv().ok();
        }
        if everything {
            docs.extend(registry.loaded_ids());
            tracing::debug!(
                documents = docs.len(),
                "catching up every document in memory"
            );
        }
        catch_up(&state, docs).await;
    }
}

/// Catches up `docs`, [`PARALLEL`] at a time.
async fn catch_up(state: &Arc<AppState>, docs: HashSet<Uuid>) {
    let mut running = JoinSet::new();
    for id in docs {
        if running.len() >= PARALLEL {
            running.join_next().await;
        }
        let state = Arc::clone(state);
        running.spawn(async move { state.registry.catch_up_loaded(id).await });
    }
    while running.join_next().await.is_some() {}
}
