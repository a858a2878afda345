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
//! | `POST /mcp` (MCP tools) | any token; each tool needs what its HTTP route needs (`crate::api` `mcp`) |
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

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, RawPathParams, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::RequestExt;
use uuid::Uuid;

use crate::problem::ApiError;
use crate::AppState;

mod attribution;
mod caller;
mod rules;
mod tokens;

use attribution::{foreign_agent, not_yours};
pub use caller::Caller;
use rules::{rule, takes_query_token, Rule};
pub use tokens::{Auth, AuthError, Principal, MIN_TOKEN_CHARS};

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

/// A token taken out of the query (`?access_token=`) by [`take_query_token`], for [`guard`].
#[derive(Clone)]
struct QueryToken(String);

/// Middleware, outside every other (the request log included, so that no log line holds
/// it): removes `access_token` from the query and keeps its value for [`guard`]. With auth
/// off it is dropped.
pub async fn take_query_token(mut request: Request, next: Next) -> Response {
    if let Some(token) = take_access_token(request.uri_mut()) {
        request.extensions_mut().insert(QueryToken(token));
    }
    next.run(request).await
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
    forbidden_problem(principal, what).into_response()
}

/// `403`: the token is known, its scopes do not allow `what`.
fn forbidden_problem(principal: &Principal, what: &str) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        format!("the token of {} may not {what}", principal.agent()),
    )
    .with_header(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"concord\", error=\"insufficient_scope\""),
    )
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
    // Read as the handler reads it: a body naming `fork` twice names no fork.
    let value = concord_protocol::json::from_slice(body).ok()?;
    Uuid::parse_str(value.get("fork")?.as_str()?).ok()
}

/// Middleware: authenticates the request, checks its scope (see the module docs) and hands
/// the handler its [`Caller`] (the `?access_token=` it may use was taken out of the query
/// by [`take_query_token`]). With auth off the caller is [`Caller::anyone`].
pub async fn guard(
    State(state): State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let query_token = request
        .extensions_mut()
        .remove::<QueryToken>()
        .map(|QueryToken(token)| token);
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
}
