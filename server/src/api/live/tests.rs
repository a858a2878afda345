//! The document feed alone, on the in-memory store: lagging, deletion, resuming.

use std::sync::Arc;

use concord_core::storage::{DocMeta, MemoryStore};
use concord_core::{Document, Schema, Strategy, WriteMeta};
use serde_json::json;
use uuid::Uuid;

use super::{DocFeed, Item};
use crate::problem::ApiError;
use crate::registry::{Edit, WriteCommand};
use crate::{AppState, Config};

fn meta(agent: &str) -> WriteMeta {
    WriteMeta {
        agent: agent.into(),
        time_ms: 1_700_000_000_000,
        message: None,
    }
}

async fn setup() -> (Arc<AppState>, Uuid) {
    let state = AppState::new(Arc::new(MemoryStore::new()), Config::default());
    let id = Uuid::new_v4();
    let doc = DocMeta {
        id,
        strategy: Strategy::Crdt,
        schema: Schema::default(),
        created_at_ms: 0,
    };
    state
        .registry
        .create(
            doc,
            || {
                Ok::<_, ApiError>(Document::create(
                    &json!({"n": 0}),
                    Schema::default(),
                    &meta("setup"),
                )?)
            },
            &meta("setup"),
            false,
            None,
        )
        .await
        .unwrap();
    (state, id)
}

async fn set(state: &AppState, id: Uuid, n: usize) {
    state
        .registry
        .execute(WriteCommand {
            doc: id,
            meta: &meta("w"),
            if_match: Some(&crate::policy::IfMatch::Any),
            lock: None,
            edit: Edit::Put(&json!({ "n": n })),
            idempotency: None,
            answer: crate::registry::Answer::Minimal,
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn a_lagging_subscriber_gets_a_fresh_snapshot() {
    let (state, id) = setup().await;
    let mut feed = DocFeed::start(Arc::clone(&state), id, None).await.unwrap();
    assert!(matches!(feed.queued(), Some(Item::Snapshot { .. })));
    let writes = crate::registry::EVENT_BUFFER + 10;
    for n in 1..=writes {
        set(&state, id, n).await;
    }
    let current = state
        .registry
        .read::<_, ApiError>(id, |l| Ok(l.doc.version()))
        .await
        .unwrap();
    match feed.next().await {
        Item::Snapshot { version, value } => {
            assert_eq!(version, current.to_string());
            assert_eq!(value, json!({ "n": writes }));
        }
        other => panic!("expected a snapshot, got {other:?}"),
    }
    // And then the changes after it, nothing twice.
    set(&state, id, 0).await;
    match feed.next().await {
        Item::Change(event) => assert_eq!(event.previous, current.to_string()),
        other => panic!("expected a change, got {other:?}"),
    }
}

#[tokio::test]
async fn a_deleted_document_ends_the_feed() {
    let (state, id) = setup().await;
    let mut feed = DocFeed::start(Arc::clone(&state), id, None).await.unwrap();
    feed.queued();
    state.registry.delete(id).await.unwrap();
    match feed.next().await {
        Item::Ended(e) => assert_eq!(e.kind, "not-found"),
        other => panic!("expected the end, got {other:?}"),
    }
}

#[tokio::test]
async fn a_resume_replays_exactly_the_missed_changes() {
    let (state, id) = setup().await;
    let v0 = state
        .registry
        .read::<_, ApiError>(id, |l| Ok(l.doc.version()))
        .await
        .unwrap();
    for n in 1..=3 {
        set(&state, id, n).await;
    }
    let mut feed = DocFeed::start(Arc::clone(&state), id, Some(&v0))
        .await
        .unwrap();
    let mut previous = v0.to_string();
    for n in 1..=3 {
        match feed.queued() {
            Some(Item::Change(event)) => {
                assert_eq!(event.previous, previous);
                assert_eq!(
                    event.patch,
                    json!([{"op": "replace", "path": "/n", "value": n}])
                );
                previous.clone_from(&event.version);
            }
            other => panic!("expected change {n}, got {other:?}"),
        }
    }
    assert!(feed.queued().is_none());
    assert_eq!(feed.version(), previous);
}
