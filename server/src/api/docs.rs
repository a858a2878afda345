//! Document handlers: create, read, write (PUT, PATCH), delete, history, raw changes (the
//! list is `list.rs`).

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use concord_core::patch::parse_patch;
use concord_core::pointer::Pointer;
use concord_core::storage::DocMeta;
use concord_core::{Document, Schema, Strategy, WriteMeta};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::answer::{idempotent, WriteAnswer};
use super::{agent, check_media, doc_id, if_match, json_body, now_ms, parse_json, parse_version};
use crate::openapi::{BaseHeaders, DocPath, WriteHeaders};
use crate::policy::{etag, IfMatch, LOCK_HEADER};
use crate::problem::ApiError;
use crate::registry::{Edit, IdempotencyDraft, Responder, WriteCommand, Written};
use crate::AppState;

type Shared = State<Arc<AppState>>;

/// The body of `POST /v1/docs` (and the arguments of the MCP `create_document` tool);
/// every field optional (an empty body, or `null`, is all defaults; see `api::media` for
/// the Content-Type an empty body may have).
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateBody {
    /// The document's id; a new one if not given (409 if taken).
    pub(super) id: Option<Uuid>,
    /// Its first value, a JSON object (default `{}`).
    pub(super) value: Option<Value>,
    /// Its write strategy (default `crdt`).
    #[schema(value_type = Option<Strategy>)]
    pub(super) strategy: Option<String>,
    /// JSON Pointers of strings kept as collaborative text (merged character by character).
    #[serde(default)]
    #[schema(value_type = Vec<crate::openapi::PointerPattern>)]
    pub(super) text: Vec<String>,
    /// JSON Pointers of numbers kept as counters (concurrent increments add up).
    #[serde(default)]
    #[schema(value_type = Vec<crate::openapi::PointerPattern>)]
    pub(super) counters: Vec<String>,
    /// Which key identifies the elements of a list, per list: `"/items/*/id"`, say.
    #[serde(default)]
    #[schema(value_type = Vec<crate::openapi::IdsPattern>)]
    pub(super) ids: Vec<String>,
}

/// The `Concord-Lock` token of a request, if any.
pub(super) fn lock_token(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    headers
        .get(LOCK_HEADER)
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|t| t.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid-lock-token",
                        "Concord-Lock must be a lock token (a number)",
                    )
                })
        })
        .transpose()
}

/// What a write request says besides its body: which document, when (the server's clock),
/// who, against which version, with which lease.
pub(super) struct WriteHead {
    id: Uuid,
    now: i64,
    meta: WriteMeta,
    if_match: Option<IfMatch>,
    lock: Option<u64>,
}

impl WriteHead {
    /// A write that names its base and lease in `If-Match` and `Concord-Lock`.
    fn read(id: &str, headers: &HeaderMap) -> Result<WriteHead, ApiError> {
        let now = now_ms();
        Ok(WriteHead {
            id: doc_id(id)?,
            now,
            meta: write_meta(headers, now)?,
            if_match: if_match(headers)?,
            lock: lock_token(headers)?,
        })
    }

    /// A write whose strategy takes neither a base nor a lease (raw changes, a merge).
    pub(super) fn plain(id: &str, headers: &HeaderMap) -> Result<WriteHead, ApiError> {
        let now = now_ms();
        Ok(WriteHead {
            id: doc_id(id)?,
            now,
            meta: write_meta(headers, now)?,
            if_match: None,
            lock: None,
        })
    }

    /// The document written.
    pub(super) fn id(&self) -> Uuid {
        self.id
    }

    /// Runs `edit` as this request's write command, with `Idempotency-Key` handling around
    /// it; `path` and `body` are what a retry with the same key must repeat.
    pub(super) async fn execute(
        &self,
        state: &AppState,
        request: (&Method, &HeaderMap),
        path: &str,
        body: &[u8],
        edit: Edit<'_>,
    ) -> Result<Response<Body>, ApiError> {
        let (method, headers) = request;
        idempotent(
            state,
            headers,
            method,
            path,
            body,
            StatusCode::OK,
            self.now,
            |idempotency| {
                state.registry.execute(WriteCommand {
                    doc: self.id,
                    meta: &self.meta,
                    if_match: self.if_match.as_ref(),
                    lock: self.lock,
                    edit,
                    idempotency,
                    answer: super::prefer::answer(headers),
                })
            },
        )
        .await
    }
}

pub(super) fn write_meta(headers: &HeaderMap, now: i64) -> Result<WriteMeta, ApiError> {
    Ok(WriteMeta {
        agent: agent(headers)?,
        time_ms: now,
        message: None,
    })
}

/// Creates a document.
#[utoipa::path(post, path = "/v1/docs", tag = "documents",
    params(WriteHeaders),
    request_body(content = Option<CreateBody>, content_type = "application/json",
        description = "Every field is optional; an empty body (sent without a Content-Type, or as application/json) or `null` creates `{}` as a crdt document."),
    responses(
        (status = 201, description = "Created.", body = WriteAnswer,
            headers(("ETag" = String, description = "The version, quoted"),
                    ("Location" = String, description = "The document's address"))),
        (status = 409, description = "A document with this id exists."),
        (status = 422, description = "The body is not a valid document or schema."),
    ))]
pub(super) async fn create(
    State(state): Shared,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response<Body>, ApiError> {
    let now = now_ms();
    let meta = write_meta(&headers, now)?;
    // An empty body, or `null`, is all defaults.
    let request: CreateBody = if body.iter().all(u8::is_ascii_whitespace) {
        CreateBody::default()
    } else {
        serde_json::from_value::<Option<CreateBody>>(json_body(
            &headers,
            &body,
            &["application/json"],
        )?)
        .map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-body",
                format!("invalid document: {e}"),
            )
        })?
        .unwrap_or_default()
    };
    let new = NewDocument::from_request(request, now)?;
    idempotent(
        &state,
        &headers,
        &method,
        "/v1/docs",
        &body,
        StatusCode::CREATED,
        now,
        |idem| new.create(&state, &meta, idem),
    )
    .await
}

/// A document to create, checked: its metadata and first value.
pub(super) struct NewDocument {
    doc: DocMeta,
    value: Value,
    /// Whether the id was the client's (then it may already be taken by a stored one).
    client_chose_id: bool,
}

impl NewDocument {
    /// Checks a create request: strategy and schema patterns.
    pub(super) fn from_request(request: CreateBody, now: i64) -> Result<NewDocument, ApiError> {
        let strategy = match request.strategy.as_deref() {
            None => Strategy::Crdt,
            Some(s) => s.parse::<Strategy>().map_err(|e| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid-strategy",
                    e.to_string(),
                )
            })?,
        };
        let schema = Schema {
            text: request.text,
            counters: request.counters,
            ids: request.ids,
        };
        schema.validate()?;
        Ok(NewDocument {
            value: request.value.unwrap_or_else(|| json!({})),
            client_chose_id: request.id.is_some(),
            doc: DocMeta {
                id: request.id.unwrap_or_else(Uuid::new_v4),
                strategy,
                schema,
                created_at_ms: now,
            },
        })
    }

    /// Creates it, as `meta.agent`; returns once durable.
    pub(super) async fn create(
        self,
        state: &AppState,
        meta: &WriteMeta,
        idempotency: Option<(IdempotencyDraft, Responder)>,
    ) -> Result<Written, ApiError> {
        let NewDocument {
            doc,
            value,
            client_chose_id,
        } = self;
        let schema = doc.schema.clone();
        state
            .registry
            .create(
                doc,
                || Ok::<_, ApiError>(Document::create(&value, schema, meta)?),
                meta,
                client_chose_id,
                idempotency,
            )
            .await
    }
}

/// What a read asks for besides the document.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ReadQuery {
    /// A past version to read (a version the document has had), instead of the present.
    #[param(pattern = "^[0-9a-fA-F]{64}(\\.[0-9a-fA-F]{64})*$")]
    at: Option<String>,
    /// A JSON Pointer: read only the value there.
    #[param(pattern = "^(/([^~/]|~[01])*)*$")]
    path: Option<String>,
    /// `true`: list the places where concurrent writes left several values, and the edits
    /// lost to concurrent deletes.
    #[serde(default)]
    #[param(pattern = "^(true|false|)$")]
    conflicts: Option<String>,
}

/// A document read: its value (or the part at `path`) and version.
#[derive(Serialize, ToSchema)]
pub(super) struct ReadAnswer {
    /// The document.
    id: Uuid,
    /// The version read: send it as `If-Match` with a write made from this value.
    pub(super) version: String,
    /// Its write strategy.
    strategy: Strategy,
    /// The value (at `path`, if one was asked for).
    value: Value,
    /// The document's automerge-repo URL (`automerge:…`), for automerge-repo clients.
    url: String,
    /// The JSON Pointer read, if one was asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    /// Stored records of this document that failed to load (storage damage), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    skipped: Option<Value>,
    /// With `conflicts=true`: the places with several concurrent values.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) conflicts: Option<Vec<concord_core::value::Conflict>>,
    /// With `conflicts=true`, reading the present: edits hidden by a concurrent delete or
    /// move, until restored or dismissed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) lost: Option<Vec<concord_core::LostEdit>>,
}

/// Reads a document: its value and version (`ETag`).
#[utoipa::path(get, path = "/v1/docs/{id}", tag = "documents",
    params(DocPath, ReadQuery),
    responses(
        (status = 200, description = "The value and its version.", body = ReadAnswer,
            headers(("ETag" = String, description = "The version read, quoted"))),
        (status = 404, description = "No such document, version or path."),
    ))]
pub(super) async fn read(
    State(state): Shared,
    Path(id): Path<String>,
    Query(query): Query<ReadQuery>,
) -> Result<Response<Body>, ApiError> {
    let id = doc_id(&id)?;
    let at = query.at.as_deref().map(parse_version).transpose()?;
    let pointer = query.path.as_deref().map(Pointer::parse).transpose()?;
    let conflicts = match query.conflicts.as_deref() {
        None | Some("false") => false,
        Some("true") | Some("") => true,
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid-query",
                format!("conflicts must be true or false, not {other:?}"),
            ))
        }
    };
    let (body, version) = read_doc(&state, id, at, pointer, conflicts).await?;
    let mut response = Json(body).into_response();
    response.headers_mut().insert(header::ETAG, etag(&version));
    Ok(response)
}

/// A document's value now or `at` a version, whole or the subtree at `pointer`, with its
/// conflicts and lost edits if asked: the body of `GET /v1/docs/{id}` and its version.
pub(super) async fn read_doc(
    state: &AppState,
    id: Uuid,
    at: Option<concord_core::Version>,
    pointer: Option<Pointer>,
    conflicts: bool,
) -> Result<(ReadAnswer, concord_core::Version), ApiError> {
    // The present is kept as JSON; a past version is read from the CRDT (CPU work).
    let read = |loaded: &crate::registry::Loaded| {
        let doc = &loaded.doc;
        if let Some(at) = &at {
            doc.check_version(at).map_err(|e| {
                ApiError::new(StatusCode::NOT_FOUND, "unknown-version", e.to_string())
            })?;
        }
        let version = at.clone().unwrap_or_else(|| doc.version());
        let current = at.is_none() && loaded.value_version == version;
        let value = match &pointer {
            // The present is kept as JSON: no conversion from Automerge.
            None if current => Value::clone(loaded.doc.value()),
            Some(p) if current && loaded.doc.value().pointer(&p.to_string()).is_some() => loaded
                .doc
                .value()
                .pointer(&p.to_string())
                .cloned()
                .unwrap_or_default(),
            None => doc.read(at.as_ref())?,
            // Not in the cached value: the document says why (missing, or malformed).
            Some(p) => doc.read_path(at.as_ref(), p)?.ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "path-not-found",
                    format!("no value at {p}"),
                )
            })?,
        };
        // Storage damage (issue 6): stored records that did not load are named here.
        let skipped = state.registry.damage_of(id);
        let body = ReadAnswer {
            id,
            version: version.to_string(),
            strategy: loaded.meta.strategy,
            value,
            // The automerge-repo URL of the document, for `repo.find` (see `crate::repo`).
            url: concord_protocol::repo::automerge_url(id),
            path: pointer.as_ref().map(ToString::to_string),
            skipped: (!skipped.is_empty()).then(|| json!(skipped)),
            // Each value's writer as the server received its change.
            conflicts: conflicts
                .then(|| doc.conflicts(at.as_ref()))
                .transpose()?
                .map(|mut found| {
                    loaded.receipts.attribute(&mut found);
                    found
                }),
            // Edits no longer visible because their object was deleted concurrently,
            // until restored or dismissed (concord_core::lost). Only the present has them.
            lost: (conflicts && at.is_none()).then(|| doc.lost().to_vec()),
        };
        Ok((body, version))
    };
    if at.is_some() {
        state.registry.read_heavy(id, read).await
    } else {
        state.registry.read(id, read).await
    }
}

/// Writes a whole value as of the version read (`If-Match`): the server merges the
/// difference between that version and this value into the present.
#[utoipa::path(put, path = "/v1/docs/{id}", tag = "documents",
    params(DocPath, BaseHeaders, WriteHeaders),
    request_body(content = Value, content_type = "application/json",
        description = "The document's new value, a JSON object."),
    responses(
        (status = 200, description = "Written: the merged present.", body = WriteAnswer,
            headers(("ETag" = String, description = "The new version, quoted"))),
        (status = 404, description = "No such document."),
        (status = 409, description = "A lock document's token is not the current lease's (fenced), its lease expired, or another agent took that lease."),
        (status = 412, description = "The `If-Match` version is unknown, or (optimistic) not the current one."),
        (status = 428, description = "The strategy needs `If-Match` or `Concord-Lock`."),
    ))]
pub(super) async fn put(
    State(state): Shared,
    Path(id): Path<String>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response<Body>, ApiError> {
    let head = WriteHead::read(&id, &headers)?;
    let value = json_body(&headers, &body, &["application/json"])?;
    let path = format!("/v1/docs/{}", head.id);
    head.execute(&state, (&method, &headers), &path, &body, Edit::Put(&value))
        .await
}

/// Applies a JSON Patch (RFC 6902, plus `increment` and `splice`) or a JSON Merge Patch
/// (RFC 7396) as of the version read (`If-Match`), merged into the present.
#[utoipa::path(patch, path = "/v1/docs/{id}", tag = "documents",
    params(DocPath, BaseHeaders, WriteHeaders),
    request_body(content(
        (Vec<concord_core::patch::PatchOp> = "application/json-patch+json"),
        (Value = "application/merge-patch+json"),
    ), description = "A JSON Patch (an array of operations) or a merge patch."),
    responses(
        (status = 200, description = "Written: the merged present.", body = WriteAnswer,
            headers(("ETag" = String, description = "The new version, quoted"))),
        (status = 404, description = "No such document."),
        (status = 409, description = "A `test` failed, a path is missing, or a lock document's token is not a current lease of the writer's."),
        (status = 412, description = "The `If-Match` version is unknown, or (optimistic) not the current one."),
        (status = 428, description = "The strategy needs `If-Match` or `Concord-Lock`."),
    ))]
pub(super) async fn patch(
    State(state): Shared,
    Path(id): Path<String>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response<Body>, ApiError> {
    let head = WriteHead::read(&id, &headers)?;
    let accepted = [
        "application/json-patch+json",
        "application/merge-patch+json",
    ];
    let media = check_media(&headers, &accepted)?;
    let document = parse_json(&body)?;
    let merge = media == "application/merge-patch+json";
    let ops = if merge {
        None
    } else {
        Some(parse_patch(&document)?)
    };
    let edit = match &ops {
        Some(ops) => Edit::Patch(ops),
        None => Edit::MergePatch(&document),
    };
    let path = format!("/v1/docs/{}", head.id);
    head.execute(&state, (&method, &headers), &path, &body, edit)
        .await
}

/// Which lost edit a restore or dismiss names, and what it does with it.
#[derive(Clone, Copy)]
enum Settle {
    Restore,
    Dismiss,
}

/// `POST /v1/docs/{id}/lost/{lost}/restore`: writes the lost value back where it was.
#[utoipa::path(post, path = "/v1/docs/{id}/lost/{lost}/restore", tag = "documents",
    params(DocPath, ("lost" = String, Path, description = "The lost edit's `id`"), BaseHeaders, WriteHeaders),
    responses(
        (status = 200, description = "Written: the merged present.", body = WriteAnswer,
            headers(("ETag" = String, description = "The new version, quoted"))),
        (status = 404, description = "No such document or open lost edit."),
    ))]
pub(super) async fn restore_lost(
    state: Shared,
    Path((id, lost)): Path<(String, String)>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response<Body>, ApiError> {
    settle_lost(state, id, lost, method, headers, Settle::Restore).await
}

/// `DELETE /v1/docs/{id}/lost/{lost}`: closes the record, leaving the value deleted.
#[utoipa::path(delete, path = "/v1/docs/{id}/lost/{lost}", tag = "documents",
    params(DocPath, ("lost" = String, Path, description = "The lost edit's `id`"), BaseHeaders, WriteHeaders),
    responses(
        (status = 200, description = "Written: the merged present.", body = WriteAnswer,
            headers(("ETag" = String, description = "The new version, quoted"))),
        (status = 404, description = "No such document or open lost edit."),
    ))]
pub(super) async fn dismiss_lost(
    state: Shared,
    Path((id, lost)): Path<(String, String)>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response<Body>, ApiError> {
    settle_lost(state, id, lost, method, headers, Settle::Dismiss).await
}

async fn settle_lost(
    State(state): Shared,
    id: String,
    lost: String,
    method: Method,
    headers: HeaderMap,
    how: Settle,
) -> Result<Response<Body>, ApiError> {
    let head = WriteHead::read(&id, &headers)?;
    let id = head.id;
    let (path, edit) = match how {
        Settle::Restore => (
            format!("/v1/docs/{id}/lost/{lost}/restore"),
            Edit::RestoreLost(&lost),
        ),
        Settle::Dismiss => (
            format!("/v1/docs/{id}/lost/{lost}"),
            Edit::DismissLost(&lost),
        ),
    };
    head.execute(&state, (&method, &headers), &path, &[], edit)
        .await
}

/// Deletes a document and its history.
#[utoipa::path(delete, path = "/v1/docs/{id}", tag = "documents",
    params(DocPath),
    responses(
        (status = 204, description = "Deleted."),
        (status = 404, description = "No such document."),
    ))]
pub(super) async fn delete(
    State(state): Shared,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = doc_id(&id)?;
    state.registry.delete(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A document's history.
#[derive(Serialize, ToSchema)]
pub(super) struct History {
    /// The document.
    id: Uuid,
    /// Its current version.
    version: String,
    /// Every change, in the order the server received them (changes received together in
    /// causal order): who sent each and when, as the server recorded it, and what the
    /// change itself claims.
    changes: Vec<concord_core::doc::HistoryEntry>,
}

/// Every change of a document: who sent it and when (the server's record), what it
/// claims, what it depends on.
#[utoipa::path(get, path = "/v1/docs/{id}/history", tag = "documents",
    params(DocPath),
    responses(
        (status = 200, description = "The history.", body = History),
        (status = 404, description = "No such document."),
    ))]
pub(super) async fn history(
    State(state): Shared,
    Path(id): Path<String>,
) -> Result<Json<History>, ApiError> {
    history_of(&state, doc_id(&id)?).await.map(Json)
}

/// A document's change graph.
pub(super) async fn history_of(state: &AppState, id: Uuid) -> Result<History, ApiError> {
    state
        .registry
        .read_heavy(id, |loaded| {
            Ok(History {
                id,
                version: loaded.doc.version().to_string(),
                changes: loaded.history(),
            })
        })
        .await
}

/// Which changes to send.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ChangesQuery {
    /// Only the changes made after this version (default: all of them).
    #[param(pattern = "^[0-9a-fA-F]{64}(\\.[0-9a-fA-F]{64})*$")]
    since: Option<String>,
}

/// The document's raw Automerge changes, concatenated (all of them, or those since a
/// version): load them with any Automerge implementation. Streamed a batch at a time, so
/// that sending a long history holds one batch of it (and the changes' hashes).
#[utoipa::path(get, path = "/v1/docs/{id}/changes", tag = "documents",
    params(DocPath, ChangesQuery),
    responses(
        (status = 200, description = "The changes.", body = [u8], content_type = "application/octet-stream",
            headers(("ETag" = String, description = "The version the changes lead to, quoted"))),
        (status = 404, description = "No such document or version."),
    ))]
pub(super) async fn get_changes(
    State(state): Shared,
    Path(id): Path<String>,
    Query(query): Query<ChangesQuery>,
) -> Result<Response<Body>, ApiError> {
    let id = doc_id(&id)?;
    let since = query.since.as_deref().map(parse_version).transpose()?;
    // The first batch before the answer's head: what fails here is a problem.
    let (version, mut cursor) = state
        .registry
        .read_heavy(id, |loaded| {
            let cursor = loaded
                .doc
                .changes_since_cursor(since.as_ref())
                .map_err(|e| match e {
                    concord_core::Error::UnknownVersion(_) => {
                        ApiError::new(StatusCode::NOT_FOUND, "unknown-version", e.to_string())
                    }
                    e => e.into(),
                })?;
            Ok::<_, ApiError>((loaded.doc.version(), cursor))
        })
        .await?;
    let first = next_changes(&state, id, &mut cursor).await?;
    let batches = futures_util::stream::unfold(
        (Ok(first), cursor, state),
        move |(batch, mut cursor, state)| async move {
            match batch {
                Ok(Some(batch)) => {
                    let next = next_changes(&state, id, &mut cursor).await;
                    Some((Ok(Bytes::from(batch)), (next, cursor, state)))
                }
                Ok(None) => None,
                Err(e) => {
                    // The head is sent: the body is cut, so no client takes it whole.
                    tracing::warn!(doc = %id, error = ?e, "sending the changes failed midway");
                    let cut = std::io::Error::other("the changes could not be read");
                    Some((Err(cut), (Ok(None), cursor, state)))
                }
            }
        },
    );
    let mut response = Response::new(Body::from_stream(batches));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::ETAG, etag(&version));
    Ok(response)
}

/// Bytes of raw changes sent at a time by `GET …/changes`.
const CHANGES_BATCH_BYTES: usize = 1 << 20;

/// The next batch of `cursor`'s changes, read on a CPU permit (`None`: all are sent).
async fn next_changes(
    state: &AppState,
    id: Uuid,
    cursor: &mut concord_core::doc::ChangesSince,
) -> Result<Option<Vec<u8>>, ApiError> {
    if cursor.remaining() == 0 {
        return Ok(None);
    }
    state
        .registry
        .read_heavy(id, |loaded| {
            Ok(cursor.next_batch(&loaded.doc, CHANGES_BATCH_BYTES)?)
        })
        .await
}

/// Applies raw Automerge changes (concatenated, as `GET …/changes` gives them).
#[utoipa::path(post, path = "/v1/docs/{id}/changes", tag = "documents",
    params(DocPath, WriteHeaders),
    request_body(content = [u8], content_type = "application/octet-stream",
        description = "Automerge changes, concatenated."),
    responses(
        (status = 200, description = "Written: the merged present.", body = WriteAnswer,
            headers(("ETag" = String, description = "The new version, quoted"))),
        (status = 404, description = "No such document."),
        (status = 422, description = "The bytes are not Automerge changes, or they lack their dependencies."),
    ))]
pub(super) async fn post_changes(
    State(state): Shared,
    Path(id): Path<String>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response<Body>, ApiError> {
    let head = WriteHead::plain(&id, &headers)?;
    check_media(&headers, &["application/octet-stream"])?;
    let path = format!("/v1/docs/{}/changes", head.id);
    head.execute(
        &state,
        (&method, &headers),
        &path,
        &body,
        Edit::Changes(&body),
    )
    .await
}
