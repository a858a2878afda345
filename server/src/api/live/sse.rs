//! Server-Sent Events: the changes of one document, and the global feed of every document.
//!
//! `/v1/docs/{id}/events`: a `snapshot` event (id = version, data `{type, version, value}`),
//! then one `change` event per change (id = version, data as the WebSocket `change`).
//! `Last-Event-ID` (or `?since=`) resumes after that version: exactly the missed changes. A
//! `deleted` event ends the stream when the document is deleted.
//!
//! `/v1/events`: `created`, `changed` and `deleted` events for every document (data: a
//! [`FeedEvent`]); `lagged` (`{missed}`) when a slow viewer lost some: re-read the list.
//!
//! Both send a keep-alive comment every [`LiveConfig::sse_keep_alive`](crate::LiveConfig)
//! and end at shutdown. Each stream holds a place among the live streams while it is open
//! (`503` `too-many-streams` when their share of the connections is taken); a client that
//! stops reading while events flow is dropped by the connection's write timeout
//! ([`crate::limits::Limits::write_timeout`]).

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use concord_protocol::live::ServerMessage;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

use super::{change_message, closed, error_message, DocFeed, Item, Shared};
use crate::api::{doc_id, parse_version};
use crate::problem::ApiError;
use crate::registry::FeedEvent;

/// Where a stream starts.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(in crate::api) struct EventsQuery {
    /// Resume after this version: the changes since it instead of a snapshot
    /// (`Last-Event-ID` says the same, and wins).
    #[param(pattern = "^[0-9a-fA-F]{64}(\\.[0-9a-fA-F]{64})*$")]
    since: Option<String>,
}

fn sse_event(kind: &str, id: Option<&str>, data: &impl serde::Serialize) -> SseEvent {
    let event = SseEvent::default().event(kind);
    let event = match id {
        Some(id) => event.id(id),
        None => event,
    };
    event
        .json_data(data)
        .unwrap_or_else(|_| SseEvent::default().comment("an event could not be serialized"))
}

/// One SSE event for a feed item, and whether the stream ends after it.
fn doc_sse_event(doc: Uuid, item: Item) -> (SseEvent, bool) {
    match item {
        Item::Snapshot { version, value } => {
            let data = ServerMessage::Snapshot {
                version: version.clone(),
                value,
            };
            (sse_event("snapshot", Some(&version), &data), false)
        }
        Item::Change(event) => (
            sse_event("change", Some(&event.version), &change_message(&event)),
            false,
        ),
        Item::Ended(e) if e.kind == "not-found" => (
            sse_event("deleted", None, &json!({"type": "deleted", "id": doc})),
            true,
        ),
        Item::Ended(e) => (sse_event("error", None, &error_message(&e, None)), true),
    }
}

/// `GET /v1/docs/{id}/events`: a snapshot then every change; `Last-Event-ID` (or `?since=`)
/// resumes after a version.
#[utoipa::path(get, path = "/v1/docs/{id}/events", tag = "live",
    params(crate::openapi::DocPath, EventsQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "The last version seen: resume after it")),
    responses(
        (status = 200, description = "Server-Sent Events: `snapshot`, then `change` per write (each with the version as its id); `deleted` or `error` ends the stream.",
            content_type = "text/event-stream", body = String),
        (status = 404, description = "No such document or version."),
        (status = 503, description = "The live streams' share of the connections is taken (`too-many-streams`): retry after `Retry-After`."),
    ))]
pub(in crate::api) async fn doc_events(
    State(state): Shared,
    Path(id): Path<String>,
    Query(query): Query<EventsQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = doc_id(&id)?;
    let since = match headers.get("last-event-id") {
        Some(value) => Some(value.to_str().map(str::to_owned).map_err(|_| {
            ApiError::bad_request("invalid-version", "Last-Event-ID is not visible ASCII")
        })?),
        None => query.since,
    };
    let since = since
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(parse_version)
        .transpose()?;
    let slot = state.streams.admit()?;
    let feed = DocFeed::start(Arc::clone(&state), id, since.as_ref()).await?;
    let closing = state.registry.closing();
    let keep_alive = state.config.live.sse_keep_alive;
    let stream = futures_util::stream::unfold(
        (feed, closing, false, slot),
        move |(mut feed, mut closing, done, slot)| async move {
            if done {
                return None;
            }
            let item = tokio::select! {
                item = feed.next() => item,
                () = closed(&mut closing) => return None,
            };
            let (event, done) = doc_sse_event(id, item);
            Some((Ok::<_, Infallible>(event), (feed, closing, done, slot)))
        },
    );
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(keep_alive))
        .into_response())
}

/// `GET /v1/events`: `created`, `changed` and `deleted` for every document.
#[utoipa::path(get, path = "/v1/events", tag = "live",
    responses(
        (status = 200, description = "Server-Sent Events: `created`, `changed` and `deleted`, for every document.",
            content_type = "text/event-stream", body = String),
        (status = 503, description = "The live streams' share of the connections is taken (`too-many-streams`): retry after `Retry-After`."),
    ))]
pub(in crate::api) async fn feed(State(state): Shared) -> Result<Response, ApiError> {
    let slot = state.streams.admit()?;
    let receiver = state.registry.feed();
    let closing = state.registry.closing();
    let stream = futures_util::stream::unfold(
        (receiver, closing, slot),
        |(mut receiver, mut closing, slot)| async move {
            let event = tokio::select! {
                received = receiver.recv() => match received {
                    Ok(event) => {
                        let kind = match &*event {
                            FeedEvent::Created { .. } => "created",
                            FeedEvent::Changed { .. } => "changed",
                            FeedEvent::Deleted { .. } => "deleted",
                        };
                        sse_event(kind, None, &*event)
                    }
                    Err(RecvError::Lagged(missed)) => {
                        sse_event("lagged", None, &json!({"type": "lagged", "missed": missed}))
                    }
                    Err(RecvError::Closed) => return None,
                },
                () = closed(&mut closing) => return None,
            };
            Some((Ok::<_, Infallible>(event), (receiver, closing, slot)))
        },
    );
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(state.config.live.sse_keep_alive))
        .into_response())
}
