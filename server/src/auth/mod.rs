//! Authentication: bearer tokens, each naming an agent and what it may do.
//!
//! Off unless the server is given a token file (`--auth FILE` or `CONCORD_AUTH`; the format
//! is at [`Auth::from_json`]). Off is only allowed on a loopback address unless the
//! operator says `--insecure-no-auth` (see `Server::start`).
//!
//! With it on, every endpoint but `/healthz` and the viewer's static files needs
//! `Authorization: Bearer <token>`. Browsers cannot set headers on a WebSocket or an
//! `EventSource`, so the WebSocket and event-stream endpoints also take `?access_token=`
//! (nothing else does: a token in a URL ends up in logs and histories). A missing or
//! unknown token is answered `401` with `WWW-Authenticate: Bearer`; a known token without
//! the scope the endpoint needs `403`.
//!
//! # Scopes
//! - `admin`: everything.
//! - `write:<id>` / `write:*`: read and write that document (every document).
//! - `read:<id>` / `read:*`: read it.
//!
//! | endpoint | needs |
//! |---|---|
//! | `GET /healthz`, `/`, `/web/*`, `/favicon.ico` | nothing |
//! | `GET /v1/docs/{id}`, `…/history`, `GET …/changes`, `…/events` (SSE) | read |
//! | `PUT`/`PATCH /v1/docs/{id}`, `POST …/changes` (see Attribution), `POST`/`DELETE …/lock`, `POST …/lost/{lost}/restore`, `DELETE …/lost/{lost}` | write |
//! | `POST …/merge` `{"fork"}` | write the document, read the fork |
//! | `POST …/fork` | write the document and `write:*` (the fork is a new document the caller must be able to write), or admin |
//! | `GET …/ws`, `GET …/sync` | read; each message that writes needs write |
//! | `GET /v1/repo` | any token; each document it syncs needs read, each change write; creating a document admin |
//! | `GET`/`POST /v1/docs` (list, create), `DELETE /v1/docs/{id}`, `GET /v1/events` (the feed of every document), `/v1/compare*`, any other route | admin |
//!
//! Unknown routes need a valid token (then answer 404); a route this table does not name
//! (a future `/metrics`, say) needs admin until someone decides otherwise.
//!
//! # Attribution
//! The token decides the agent: the middleware sets `Concord-Agent` to the token's agent
//! before any handler runs (the WebSocket handlers take it from their [`Caller`]), so a
//! header (or `?agent=`) naming someone else is ignored.
//! Raw Automerge changes (`POST …/changes`, `/sync`, `/v1/repo`) carry their own note, which
//! history shows as their agent: from a token without admin, a change whose note names
//! another agent is refused (403, or the connection closes with 1008). On `/sync` and
//! `/v1/repo` only the changes new to the document count: a sync message may carry the
//! whole document, others' changes included. Changes without a note (automerge-repo
//! clients) are taken. Admin may import anyone's changes.
//!
//! # Per message
//! A token that may read a document but not write it may still follow it live. [`guard`]
//! hands every handler its [`Caller`] (the token's [`Principal`]), and each WebSocket
//! handler checks every message from the client against it where the protocol decides to
//! write. Only messages known to read are taken from a token that may not write; anything
//! else (a message type added later included) counts as a write:
//! - `/ws`: `subscribe` reads. Any other message is answered an `error` (403) and not
//!   applied; [`LiveConfig::max_refused`] in a row close the connection (1008).
//! - `/sync`: a sync message without changes reads. One carrying changes closes the
//!   connection (1008) from a token that may not write the document, and from a token
//!   without admin when a change new to the document names another agent (see
//!   Attribution).
//! - `/v1/repo`: a document the token may not read is `doc-unavailable`, as is a document
//!   that does not exist (only admin may create one by offering it), and ephemeral messages
//!   about it are dropped. Changes to a document it may not write, or (without admin) whose
//!   notes name another agent, close the connection (1008).
//!
//! # Secrets
//! Only SHA-256 digests of tokens are kept in memory (the file may hold digests too,
//! `token_sha256`). A presented token is hashed and compared with every digest in constant
//! time.
//!
//! [`LiveConfig::max_refused`]: crate::LiveConfig::max_refused

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use automerge::ChangeHash;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, MatchedPath, RawPathParams, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::RequestExt;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::problem::ApiError;
use crate::registry::Registry;
use crate::AppState;

/// The shortest token accepted in the file: shorter ones can be guessed.
pub const MIN_TOKEN_CHARS: usize = 16;

/// The token file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    tokens: Vec<TokenEntry>,
}

/// One token of the file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    agent: String,
    token: Option<String>,
    token_sha256: Option<String>,
    scopes: Vec<String>,
}

/// Why a token file was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The file could not be read.
    #[error("cannot read the token file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The file is not a valid token file.
    #[error("invalid token file: {0}")]
    Invalid(String),
}

/// Which documents a scope covers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
enum Docs {
    #[default]
    Nothing,
    Every,
    These(BTreeSet<Uuid>),
}

impl Docs {
    /// `doc` is `None` for a path that names no valid document id: only `*` covers it (and
    /// the handler then answers 400).
    fn covers(&self, doc: Option<Uuid>) -> bool {
        match (self, doc) {
            (Docs::Every, _) => true,
            (Docs::These(ids), Some(id)) => ids.contains(&id),
            _ => false,
        }
    }

    fn add(&mut self, target: &str) -> Result<(), String> {
        if target == "*" {
            *self = Docs::Every;
            return Ok(());
        }
        let id = Uuid::parse_str(target)
            .map_err(|_| format!("{target:?} is neither * nor a document id (a UUID)"))?;
        match self {
            Docs::Every => {}
            Docs::These(ids) => {
                ids.insert(id);
            }
            Docs::Nothing => *self = Docs::These(BTreeSet::from([id])),
        }
        Ok(())
    }
}

/// Who a token speaks for, and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    agent: String,
    admin: bool,
    read: Docs,
    write: Docs,
}

impl Principal {
    fn from_scopes(agent: &str, scopes: &[String]) -> Result<Principal, String> {
        if scopes.is_empty() {
            return Err("no scopes: give admin, read:<id>, read:*, write:<id> or write:*".into());
        }
        let mut principal = Principal {
            agent: agent.to_owned(),
            admin: false,
            read: Docs::Nothing,
            write: Docs::Nothing,
        };
        for scope in scopes {
            match scope.trim().split_once(':') {
                None if scope.trim() == "admin" => principal.admin = true,
                Some(("read", target)) => principal.read.add(target.trim())?,
                Some(("write", target)) => principal.write.add(target.trim())?,
                _ => {
                    return Err(format!(
                    "unknown scope {scope:?}: give admin, read:<id>, read:*, write:<id> or write:*"
                ))
                }
            }
        }
        Ok(principal)
    }

    /// The agent every write with this token is recorded under.
    pub fn agent(&self) -> &str {
        &self.agent
    }

    /// True for the `admin` scope.
    pub fn is_admin(&self) -> bool {
        self.admin
    }

    /// May it read this document?
    pub fn can_read(&self, doc: Uuid) -> bool {
        self.reads(Some(doc))
    }

    /// May it write this document?
    pub fn can_write(&self, doc: Uuid) -> bool {
        self.writes(Some(doc))
    }

    fn reads(&self, doc: Option<Uuid>) -> bool {
        self.admin || self.read.covers(doc) || self.write.covers(doc)
    }

    fn writes(&self, doc: Option<Uuid>) -> bool {
        self.admin || self.write.covers(doc)
    }

    fn writes_every_document(&self) -> bool {
        self.admin || self.write == Docs::Every
    }
}

/// The tokens of a server: SHA-256 digests and what each may do.
pub struct Auth {
    tokens: Vec<([u8; 32], Arc<Principal>)>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Agents only: digests are not for logs either.
        f.debug_struct("Auth")
            .field(
                "agents",
                &self
                    .tokens
                    .iter()
                    .map(|(_, p)| p.agent())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

fn digest(token: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(&Sha256::digest(token.as_bytes()));
    out
}

/// Equality that takes the same time wherever the first difference is.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(difference) == 0
}

impl Auth {
    /// Reads a token file (see [`Auth::from_json`]).
    pub fn load(path: &Path) -> Result<Auth, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_json(&text)
    }

    /// Parses a token file:
    ///
    /// ```json
    /// {"tokens": [
    ///   {"agent": "ops", "token": "3f9c…(at least 16 characters)", "scopes": ["admin"]},
    ///   {"agent": "planner", "token_sha256": "<64 hex digits>", "scopes": ["write:*"]},
    ///   {"agent": "reviewer", "token": "…", "scopes": ["read:*", "write:7f1c1c9e-3b8e-4c43-9a55-0d6f3f3c2a10"]}
    /// ]}
    /// ```
    ///
    /// Each token names its agent (1 to 128 visible ASCII characters), exactly one of
    /// `token` (visible ASCII, at least [`MIN_TOKEN_CHARS`]) or `token_sha256` (the hex
    /// SHA-256 of the token, so that the file need not hold secrets), and its scopes.
    /// Unknown fields, unknown scopes, an empty list and a token listed twice are errors.
    pub fn from_json(text: &str) -> Result<Auth, AuthError> {
        let file: TokenFile =
            serde_json::from_str(text).map_err(|e| AuthError::Invalid(e.to_string()))?;
        if file.tokens.is_empty() {
            return Err(AuthError::Invalid(
                "the file lists no tokens, so nobody could use the server".into(),
            ));
        }
        let mut tokens: Vec<([u8; 32], Arc<Principal>)> = Vec::new();
        for (i, entry) in file.tokens.into_iter().enumerate() {
            let at = |what: String| AuthError::Invalid(format!("tokens[{i}]: {what}"));
            let agent = entry.agent.trim();
            if agent.is_empty()
                || agent.len() > 128
                || !agent.bytes().all(|b| (0x20..0x7f).contains(&b))
            {
                return Err(at("agent must be 1 to 128 visible ASCII characters".into()));
            }
            let digest = match (entry.token, entry.token_sha256) {
                (Some(token), None) => {
                    if token.len() < MIN_TOKEN_CHARS || !token.bytes().all(|b| b.is_ascii_graphic())
                    {
                        return Err(at(format!(
                            "a token must be at least {MIN_TOKEN_CHARS} visible ASCII characters \
                             without spaces (try `openssl rand -hex 32`)"
                        )));
                    }
                    digest(&token)
                }
                (None, Some(hex)) => {
                    let bytes = hex::decode(hex.trim())
                        .ok()
                        .filter(|b| b.len() == 32)
                        .ok_or_else(|| at("token_sha256 must be 64 hex digits".into()))?;
                    let mut out = [0u8; 32];
                    out.copy_from_slice(&bytes);
                    out
                }
                _ => return Err(at("give exactly one of token and token_sha256".into())),
            };
            if tokens.iter().any(|(d, _)| *d == digest) {
                return Err(at("this token is listed twice".into()));
            }
            let principal = Principal::from_scopes(agent, &entry.scopes).map_err(at)?;
            tokens.push((digest, Arc::new(principal)));
        }
        Ok(Auth { tokens })
    }

    /// Who a presented token speaks for, if it is one of ours.
    pub fn authenticate(&self, token: &str) -> Option<Arc<Principal>> {
        let presented = digest(token);
        let mut found = None;
        // Every digest is compared, found or not.
        for (known, principal) in &self.tokens {
            if same(known, &presented) {
                found = Some(Arc::clone(principal));
            }
        }
        found
    }
}

// ---------------------------------------------------------------------------------------
// The caller, as handlers take it.

/// Who a request speaks for, as its handler takes it (an extractor): the principal of the
/// request's token, which [`guard`] puts in the request's extensions; or, with
/// authentication off, anyone, who may do everything and names its own agent as the
/// endpoint says (`Concord-Agent`, `?agent=` on `/ws`, else the endpoint's default).
///
/// The protocol handlers (`/ws`, `/sync`, `/v1/repo`) check each message against it where
/// they decide to write (see "Per message" in the module docs). A handler that takes it on a
/// route [`guard`] does not pass answers 500: nobody is let through by default.
#[derive(Debug, Clone)]
pub struct Caller {
    /// `None` with authentication off.
    token: Option<Arc<Principal>>,
}

impl Caller {
    /// Anyone: every request, with authentication off.
    pub fn anyone() -> Caller {
        Caller { token: None }
    }

    /// The holder of a token.
    pub fn with_token(principal: Arc<Principal>) -> Caller {
        Caller {
            token: Some(principal),
        }
    }

    /// The token's principal; `None` with authentication off.
    pub fn principal(&self) -> Option<&Principal> {
        self.token.as_deref()
    }

    /// The agent every write of the request is recorded under: the token's. `None` with
    /// authentication off, where the request names its agent.
    pub fn agent(&self) -> Option<&str> {
        self.token.as_deref().map(Principal::agent)
    }

    /// True for the `admin` scope, and for anyone with authentication off.
    pub fn is_admin(&self) -> bool {
        self.token.as_deref().is_none_or(Principal::is_admin)
    }

    /// May it read this document?
    pub fn can_read(&self, doc: Uuid) -> bool {
        self.token.as_deref().is_none_or(|p| p.can_read(doc))
    }

    /// May it write this document?
    pub fn can_write(&self, doc: Uuid) -> bool {
        self.token.as_deref().is_none_or(|p| p.can_write(doc))
    }

    /// Why it may not write `doc` (for an `error` message or a close frame); `None` if it may.
    pub fn refuse_write(&self, doc: Uuid) -> Option<String> {
        match self.token.as_deref() {
            Some(p) if !p.can_write(doc) => Some(format!(
                "the token of {} may read document {doc}, not write it",
                p.agent
            )),
            _ => None,
        }
    }

    /// Checks the changes a sync message carries (`message`: its bytes as received) before
    /// they are written to `doc`: the caller must be able to write it, and without admin
    /// the Concord notes of the changes the document lacks may name only the caller's
    /// agent. (A peer may send back changes the document has, others' among them: a sync
    /// message can carry the whole document. Those are not written again.) `Err` says why
    /// not; the connection closes (1008).
    pub async fn check_sync_changes(
        &self,
        registry: &Registry,
        doc: Uuid,
        message: &[u8],
    ) -> Result<(), String> {
        let Some(principal) = self.token.as_deref() else {
            return Ok(());
        };
        if let Some(refused) = self.refuse_write(doc) {
            return Err(refused);
        }
        if principal.is_admin() {
            return Ok(());
        }
        let foreign = foreign_changes_in_sync(message, principal.agent());
        let Some((_, first)) = foreign.first() else {
            return Ok(());
        };
        // A change the document has stays: nothing is known of a document that cannot be
        // read (deleted meanwhile, say), so then every change is new.
        let new = registry
            .read::<_, crate::registry::Error>(doc, |loaded| {
                let automerge = loaded.doc.automerge();
                Ok(foreign
                    .iter()
                    .find(|(hash, _)| automerge.get_change_meta_by_hash(hash).is_none())
                    .map(|(_, named)| named.clone()))
            })
            .await
            .unwrap_or_else(|_| Some(first.clone()));
        match new {
            Some(named) => Err(not_yours(principal, &named)),
            None => Ok(()),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Caller>().cloned().ok_or_else(|| {
            ApiError::internal(
                "a handler takes its caller on a route that auth::guard does not pass",
            )
        })
    }
}

// ---------------------------------------------------------------------------------------
// The middleware.

/// What an endpoint asks of the token (see the table in the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    Public,
    AnyToken,
    Admin,
    Read,
    Write,
    Fork,
    Merge,
    RawChanges,
}

fn rule(method: &Method, route: Option<&str>) -> Rule {
    let reads = matches!(*method, Method::GET | Method::HEAD);
    match route {
        None => Rule::AnyToken,
        Some("/healthz" | "/" | "/favicon.ico" | "/web/{name}") => Rule::Public,
        Some("/v1/docs/{id}") if *method == Method::DELETE => Rule::Admin,
        Some("/v1/docs/{id}" | "/v1/docs/{id}/changes") if reads => Rule::Read,
        Some("/v1/docs/{id}/changes") => Rule::RawChanges,
        Some(
            "/v1/docs/{id}"
            | "/v1/docs/{id}/lock"
            | "/v1/docs/{id}/lost/{lost}"
            | "/v1/docs/{id}/lost/{lost}/restore",
        ) => Rule::Write,
        Some("/v1/docs/{id}/history" | "/v1/docs/{id}/events") => Rule::Read,
        Some("/v1/docs/{id}/fork") => Rule::Fork,
        Some("/v1/docs/{id}/merge") => Rule::Merge,
        // Read to connect; the handler checks each message that writes against the caller.
        Some("/v1/docs/{id}/ws" | "/v1/docs/{id}/sync") => Rule::Read,
        // Any token to connect; the handler checks each document it syncs.
        Some("/v1/repo") => Rule::AnyToken,
        Some(_) => Rule::Admin,
    }
}

/// The endpoints a browser reaches without headers: WebSocket and event streams.
fn takes_query_token(route: Option<&str>) -> bool {
    matches!(
        route,
        Some(
            "/v1/docs/{id}/ws"
                | "/v1/docs/{id}/sync"
                | "/v1/repo"
                | "/v1/docs/{id}/events"
                | "/v1/events"
        )
    )
}

/// Decodes `%XX` escapes (a token in a URL); `None` if they are malformed.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Removes `access_token` from the query (handlers do not know it, and it must not reach
/// them or their logs); returns its value.
fn take_access_token(uri: &mut Uri) -> Option<String> {
    let query = uri.query()?;
    if !query
        .split('&')
        .any(|p| p.split('=').next() == Some("access_token"))
    {
        return None;
    }
    let mut token = None;
    let rest: Vec<&str> = query
        .split('&')
        .filter(|pair| match pair.split_once('=') {
            Some(("access_token", value)) => {
                token = percent_decode(value);
                false
            }
            None if *pair == "access_token" => false,
            _ => true,
        })
        .collect();
    let path = uri.path();
    let path_and_query = if rest.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", rest.join("&"))
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = path_and_query.parse().ok();
    if let Ok(stripped) = Uri::from_parts(parts) {
        *uri = stripped;
    }
    token
}

/// The bearer token of `Authorization`, if the request has that header.
fn bearer(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim().to_owned())
        .filter(|token| !token.is_empty());
    match token {
        Some(token) => Ok(Some(token)),
        None => Err(unauthorized(
            "invalid_request",
            "Authorization must be `Bearer <token>`",
        )),
    }
}

/// `401` with the challenge of RFC 6750.
fn unauthorized(error: &str, detail: &str) -> ApiError {
    let challenge = format!("Bearer realm=\"concord\", error=\"{error}\"");
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", detail).with_header(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_str(&challenge).expect("ASCII"),
    )
}

fn missing_token() -> Response {
    let challenge = HeaderValue::from_static("Bearer realm=\"concord\"");
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "this server requires a token: send `Authorization: Bearer <token>` (WebSocket and \
         event-stream endpoints also take `?access_token=<token>`)",
    )
    .with_header(header::WWW_AUTHENTICATE, challenge)
    .into_response()
}

fn forbidden(principal: &Principal, what: &str) -> Response {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        format!("the token of {} may not {what}", principal.agent),
    )
    .with_header(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"concord\", error=\"insufficient_scope\""),
    )
    .into_response()
}

fn named(doc: Option<Uuid>) -> String {
    doc.map_or_else(|| "this document".into(), |id| format!("document {id}"))
}

/// The document of the request's `{id}`: `None` if it is not a valid id.
async fn path_doc(request: &mut Request) -> Option<Uuid> {
    let params = request.extract_parts::<RawPathParams>().await.ok()?;
    let (_, id) = params.iter().find(|(name, _)| *name == "id")?;
    Uuid::parse_str(id).ok()
}

/// Reads a request's body (bounded by the body limit outside), and puts it back. `Err` is
/// the response when it cannot be read.
async fn read_body(request: Request) -> Result<(Request, Bytes), Response> {
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            "the request body is over the size limit",
        )
        .into_response()
    })?;
    Ok((Request::from_parts(parts, Body::from(bytes.clone())), bytes))
}

/// The fork a merge body names, if it names a valid one.
fn merge_fork(body: &[u8]) -> Option<Uuid> {
    let value = serde_json::from_slice::<Value>(body).ok()?;
    Uuid::parse_str(value.get("fork")?.as_str()?).ok()
}

/// The changes among raw changes whose Concord notes name an agent other than `agent`: each
/// change's hash and the agent it names. Bytes that do not decode name nobody (whoever
/// takes them refuses them).
fn foreign_changes(changes: &[u8], agent: &str) -> Vec<(ChangeHash, String)> {
    let Ok(changes) = concord_core::doc::parse_changes(changes) else {
        return Vec::new();
    };
    changes
        .iter()
        .filter_map(|change| {
            let (named, _) = concord_core::doc::decode_note(change.message());
            named
                .filter(|named| named != agent)
                .map(|named| (change.hash(), named))
        })
        .collect()
}

/// The first agent other than `agent` that the Concord notes of raw changes name.
fn foreign_agent(changes: &[u8], agent: &str) -> Option<String> {
    foreign_changes(changes, agent)
        .into_iter()
        .next()
        .map(|(_, named)| named)
}

/// The same as [`foreign_changes`], for the changes a sync message carries.
fn foreign_changes_in_sync(message: &[u8], agent: &str) -> Vec<(ChangeHash, String)> {
    let Ok(message) = automerge::sync::Message::decode(message) else {
        return Vec::new();
    };
    message
        .changes
        .iter()
        .flat_map(|chunk| foreign_changes(chunk, agent))
        .collect()
}

fn not_yours(principal: &Principal, named: &str) -> String {
    format!(
        "these changes are recorded as {named:?}; with the token of {agent} they may name only \
         {agent:?} (or no agent)",
        agent = principal.agent
    )
}

/// Middleware: authenticates the request, checks its scope (see the module docs) and hands
/// the handler its [`Caller`]. With auth off it only removes `access_token` from the query,
/// and the caller is [`Caller::anyone`].
pub async fn guard(
    State(state): State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let query_token = take_access_token(request.uri_mut());
    let Some(auth) = state.config.auth.clone() else {
        request.extensions_mut().insert(Caller::anyone());
        return next.run(request).await;
    };
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let rule = rule(request.method(), route.as_deref());
    if rule == Rule::Public {
        return next.run(request).await;
    }
    let token = match bearer(request.headers()) {
        Err(e) => return e.into_response(),
        Ok(Some(token)) => Some(token),
        Ok(None) if takes_query_token(route.as_deref()) => query_token,
        Ok(None) => None,
    };
    let Some(token) = token else {
        return missing_token();
    };
    let Some(principal) = auth.authenticate(&token) else {
        return unauthorized("invalid_token", "the token is not valid on this server")
            .into_response();
    };
    request
        .extensions_mut()
        .insert(Caller::with_token(Arc::clone(&principal)));
    let headers = request.headers_mut();
    headers.remove(header::AUTHORIZATION);
    headers.insert(
        "concord-agent",
        HeaderValue::from_str(principal.agent()).expect("agents are checked when tokens load"),
    );
    let doc = path_doc(&mut request).await;
    match rule {
        Rule::Public | Rule::AnyToken => next.run(request).await,
        Rule::Admin if principal.is_admin() => next.run(request).await,
        Rule::Admin => forbidden(&principal, "do this (it needs the admin scope)"),
        Rule::Read if principal.reads(doc) => next.run(request).await,
        Rule::Read => forbidden(&principal, &format!("read {}", named(doc))),
        Rule::Write if principal.writes(doc) => next.run(request).await,
        Rule::Write => forbidden(&principal, &format!("write {}", named(doc))),
        Rule::Fork if principal.writes(doc) && principal.writes_every_document() => {
            next.run(request).await
        }
        Rule::Fork => forbidden(
            &principal,
            &format!(
                "fork {}: a fork is a new document, which needs write:* (and write on the original)",
                named(doc)
            ),
        ),
        Rule::Merge if !principal.writes(doc) => {
            forbidden(&principal, &format!("write {}", named(doc)))
        }
        Rule::Merge => match read_body(request).await {
            Err(response) => response,
            Ok((request, body)) => match merge_fork(&body) {
                Some(fork) if !principal.can_read(fork) => {
                    forbidden(&principal, &format!("read document {fork}, the fork to merge"))
                }
                // An invalid body goes on: the handler says what is wrong with it.
                _ => next.run(request).await,
            },
        },
        Rule::RawChanges if !principal.writes(doc) => {
            forbidden(&principal, &format!("write {}", named(doc)))
        }
        Rule::RawChanges if principal.is_admin() => next.run(request).await,
        Rule::RawChanges => match read_body(request).await {
            Err(response) => response,
            Ok((request, body)) => match foreign_agent(&body, principal.agent()) {
                Some(named) => ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    not_yours(&principal, &named),
                )
                .into_response(),
                // Undecodable changes go on: the handler says what is wrong with them.
                None => next.run(request).await,
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "7f1c1c9e-3b8e-4c43-9a55-0d6f3f3c2a10";

    fn file(entries: &str) -> String {
        format!("{{\"tokens\": [{entries}]}}")
    }

    #[test]
    fn tokens_and_scopes_are_parsed() {
        let digest_hex = hex::encode(Sha256::digest(b"hashed-token-0123456789"));
        let auth = Auth::from_json(&file(&format!(
            r#"{{"agent": "ops", "token": "admin-token-0123456789", "scopes": ["admin"]}},
               {{"agent": "reader", "token_sha256": "{digest_hex}", "scopes": ["read:{DOC}"]}},
               {{"agent": "writer", "token": "writer-token-0123456789", "scopes": ["read:*", "write:{DOC}"]}}"#
        )))
        .unwrap();
        let doc = Uuid::parse_str(DOC).unwrap();
        let other = Uuid::new_v4();
        let admin = auth.authenticate("admin-token-0123456789").unwrap();
        assert!(admin.is_admin() && admin.can_write(other));
        let reader = auth.authenticate("hashed-token-0123456789").unwrap();
        assert_eq!(reader.agent(), "reader");
        assert!(reader.can_read(doc) && !reader.can_write(doc) && !reader.can_read(other));
        let writer = auth.authenticate("writer-token-0123456789").unwrap();
        assert!(writer.can_write(doc) && !writer.can_write(other) && writer.can_read(other));
        assert!(!writer.writes_every_document());
        assert!(auth.authenticate("writer-token-012345678").is_none());
        assert!(auth.authenticate("").is_none());
        // Debug output names agents, never digests.
        let debug = format!("{auth:?}");
        assert!(debug.contains("reader") && !debug.contains(&digest_hex));
    }

    #[test]
    fn bad_token_files_are_refused_with_a_reason() {
        let t = "token-0123456789abcdef";
        let cases = [
            ("{}".to_owned(), "missing field"),
            (file(""), "no tokens"),
            (
                file(r#"{"agent": "a", "token": "short", "scopes": ["admin"]}"#),
                "at least 16",
            ),
            (
                file(&format!(
                    r#"{{"agent": "a", "token": "{t} x", "scopes": ["admin"]}}"#
                )),
                "at least 16",
            ),
            (
                file(&format!(
                    r#"{{"agent": "", "token": "{t}", "scopes": ["admin"]}}"#
                )),
                "agent",
            ),
            (
                file(&format!(
                    r#"{{"agent": "a", "token": "{t}", "scopes": []}}"#
                )),
                "no scopes",
            ),
            (
                file(&format!(
                    r#"{{"agent": "a", "token": "{t}", "scopes": ["root"]}}"#
                )),
                "unknown scope",
            ),
            (
                file(&format!(
                    r#"{{"agent": "a", "token": "{t}", "scopes": ["read:doc-1"]}}"#
                )),
                "neither * nor",
            ),
            (
                file(&format!(
                    r#"{{"agent": "a", "token": "{t}", "scopes": ["delete:*"]}}"#
                )),
                "unknown scope",
            ),
            (
                file(r#"{"agent": "a", "scopes": ["admin"]}"#),
                "exactly one",
            ),
            (
                file(&format!(
                    r#"{{"agent": "a", "token": "{t}", "token_sha256": "00", "scopes": ["admin"]}}"#
                )),
                "exactly one",
            ),
            (
                file(r#"{"agent": "a", "token_sha256": "abc", "scopes": ["admin"]}"#),
                "64 hex",
            ),
            (
                file(&format!(
                    r#"{{"agent": "a", "token": "{t}", "scopes": ["admin"], "role": 1}}"#
                )),
                "unknown field",
            ),
            (
                file(&format!(
                    r#"{{"agent": "a", "token": "{t}", "scopes": ["admin"]}}, {{"agent": "b", "token": "{t}", "scopes": ["read:*"]}}"#
                )),
                "listed twice",
            ),
        ];
        for (text, expected) in cases {
            let e = Auth::from_json(&text).unwrap_err().to_string();
            assert!(e.contains(expected), "{text}: {e}");
        }
    }

    #[test]
    fn routes_map_to_rules() {
        let cases = [
            (Method::GET, Some("/healthz"), Rule::Public),
            (Method::GET, Some("/web/{name}"), Rule::Public),
            (Method::GET, None, Rule::AnyToken),
            (Method::GET, Some("/v1/docs"), Rule::Admin),
            (Method::POST, Some("/v1/docs"), Rule::Admin),
            (Method::GET, Some("/v1/docs/{id}"), Rule::Read),
            (Method::HEAD, Some("/v1/docs/{id}"), Rule::Read),
            (Method::PUT, Some("/v1/docs/{id}"), Rule::Write),
            (Method::PATCH, Some("/v1/docs/{id}"), Rule::Write),
            (Method::DELETE, Some("/v1/docs/{id}"), Rule::Admin),
            (Method::GET, Some("/v1/docs/{id}/changes"), Rule::Read),
            (
                Method::POST,
                Some("/v1/docs/{id}/changes"),
                Rule::RawChanges,
            ),
            (Method::DELETE, Some("/v1/docs/{id}/lock"), Rule::Write),
            (Method::GET, Some("/v1/events"), Rule::Admin),
            (Method::POST, Some("/v1/compare"), Rule::Admin),
            (Method::GET, Some("/metrics"), Rule::Admin),
            (Method::GET, Some("/v1/repo"), Rule::AnyToken),
            (Method::GET, Some("/v1/docs/{id}/ws"), Rule::Read),
            (Method::GET, Some("/v1/docs/{id}/sync"), Rule::Read),
        ];
        for (method, route, expected) in cases {
            assert_eq!(rule(&method, route), expected, "{method} {route:?}");
        }
    }

    #[test]
    fn access_token_is_taken_out_of_the_query() {
        let cases = [
            ("/v1/events?access_token=abc", "/v1/events", Some("abc")),
            (
                "/x/ws?agent=a&access_token=a%2Bb&since=1",
                "/x/ws?agent=a&since=1",
                Some("a+b"),
            ),
            ("/x/ws?agent=a", "/x/ws?agent=a", None),
            ("/x/ws?access_token", "/x/ws", None),
        ];
        for (before, after, token) in cases {
            let mut uri: Uri = before.parse().unwrap();
            assert_eq!(take_access_token(&mut uri).as_deref(), token, "{before}");
            assert_eq!(uri.to_string(), after);
        }
    }

    #[test]
    fn comparison_is_constant_time_shaped() {
        let a = digest("one");
        let mut b = a;
        assert!(same(&a, &b));
        b[31] ^= 1;
        assert!(!same(&a, &b));
    }
}
