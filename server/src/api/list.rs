//! `GET /v1/docs`: every document as its last durable write left it, streamed from the
//! store a page at a time, so that a listing holds one page in memory however many
//! documents there are.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderValue, Response};
use concord_core::storage::{DocSummary, ListPage};
use concord_core::Strategy;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::problem::ApiError;
use crate::AppState;

type Shared = State<Arc<AppState>>;

/// Every document.
#[derive(Serialize, ToSchema)]
pub(super) struct DocList {
    /// One entry per document.
    docs: Vec<DocEntry>,
}

/// One document of the list: what its last durable write left.
#[derive(Serialize, ToSchema)]
pub(super) struct DocEntry {
    /// The document.
    id: Uuid,
    /// Its write strategy.
    strategy: Strategy,
    /// Its version.
    version: String,
    /// How many changes it holds.
    changes: u64,
    /// When it was created, milliseconds since the Unix epoch.
    created_at: i64,
    /// When it was last written, milliseconds since the Unix epoch.
    updated_at: i64,
    /// The agent of the last write, if known.
    last_agent: Option<String>,
}

/// Lists the documents.
#[utoipa::path(get, path = "/v1/docs", tag = "documents",
    responses((status = 200, description = "Every document.", body = DocList)))]
pub(super) async fn list(State(state): Shared) -> Result<Response<Body>, ApiError> {
    let store = Arc::clone(state.registry.store());
    // The first page before the answer's head: a store that fails says so as a problem.
    let first = store.list_page(None, LIST_PAGE).await?;
    let pages = futures_util::stream::unfold(Listing::First(first), move |listing| {
        let store = Arc::clone(&store);
        async move {
            let (chunk, then) = match listing {
                Listing::First(page) => {
                    let mut chunk = b"{\"docs\":[".to_vec();
                    write_entries(&mut chunk, page.docs, true);
                    (chunk, page.next.map_or(Listing::Tail, Listing::After))
                }
                Listing::After(after) => match store.list_page(Some(after), LIST_PAGE).await {
                    Ok(page) => {
                        let mut chunk = Vec::new();
                        write_entries(&mut chunk, page.docs, false);
                        (chunk, page.next.map_or(Listing::Tail, Listing::After))
                    }
                    Err(e) => {
                        // The head is sent: the body is cut, so no client takes it whole.
                        tracing::warn!(error = %e, "listing the documents failed midway");
                        return Some((Err(std::io::Error::other(e)), Listing::Done));
                    }
                },
                Listing::Tail => (b"]}".to_vec(), Listing::Done),
                Listing::Done => return None,
            };
            Some((Ok::<_, std::io::Error>(Bytes::from(chunk)), then))
        }
    });
    let mut response = Response::new(Body::from_stream(pages));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// Documents per store read when listing: a listing holds one page in memory, whatever
/// the number of documents.
const LIST_PAGE: usize = 500;

/// Where a streamed listing is.
enum Listing {
    /// The first page, read before the answer began.
    First(ListPage),
    /// The next page starts after this place.
    After(u64),
    /// Every page is sent: the closing brackets.
    Tail,
    /// Sent whole.
    Done,
}

/// Appends `docs` as entries of the `docs` array, each after a comma unless `first`.
fn write_entries(out: &mut Vec<u8>, docs: Vec<DocSummary>, mut first: bool) {
    for doc in docs {
        if !first {
            out.push(b',');
        }
        first = false;
        serde_json::to_writer(&mut *out, &DocEntry::from(doc))
            .expect("a document entry serializes");
    }
}

impl From<DocSummary> for DocEntry {
    fn from(d: DocSummary) -> Self {
        DocEntry {
            id: d.meta.id,
            strategy: d.meta.strategy,
            version: d.state.version,
            changes: d.state.change_count,
            created_at: d.meta.created_at_ms,
            updated_at: d.state.updated_at_ms,
            last_agent: d.state.last_agent,
        }
    }
}

/// Every document, as its last durable write left it, in memory at once (the MCP tool's
/// answer; `GET /v1/docs` streams them).
pub(super) async fn list_docs(state: &AppState) -> Result<DocList, ApiError> {
    let docs = state.registry.store().list().await?;
    Ok(DocList {
        docs: docs.into_iter().map(DocEntry::from).collect(),
    })
}
