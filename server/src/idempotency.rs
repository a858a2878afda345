//! `Idempotency-Key`: a retried request gets the first response and changes nothing.
//!
//! The first request with a key is recorded with its response, in the same storage batch as
//! its write, so "applied" and "recorded" are one atomic fact. A retry with the same key and
//! the same request (method, path, `If-Match`, content type and body) is answered the recorded
//! response, with `Idempotent-Replayed: true`. The same key with another request is 422.
//! While the first request is still being handled, a retry is 409. Keys live for
//! [`crate::Config::idempotency_ttl`] (24 hours by default), then are forgotten.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode};
use concord_core::storage::{IdempotencyRecord, Store};
use sha2::{Digest, Sha256};

use crate::problem::ApiError;
use crate::registry::{IdempotencyDraft, Responder, Written};

/// The request header naming the key.
pub const KEY_HEADER: &str = "idempotency-key";

/// Keys whose first request is still in flight.
#[derive(Default)]
pub struct Idempotency {
    in_flight: Arc<Mutex<HashSet<String>>>,
    ttl_ms: i64,
}

/// Holds a key as "in flight" until dropped.
pub struct InFlight {
    key: String,
    set: Arc<Mutex<HashSet<String>>>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.key);
    }
}

/// What to do with a keyed write that did not come over HTTP ([`Idempotency::begin_keyed`]).
pub enum Keyed {
    /// A new key: run the write and record its outcome with it.
    Record(InFlight, IdempotencyDraft),
    /// A retry: this is what the first attempt recorded.
    Replay(IdempotencyRecord),
}

/// What to do with a request.
pub enum Begin {
    /// No key: just run it.
    Plain,
    /// A new key: run it and record the response.
    Record(InFlight, IdempotencyDraft),
    /// A retry: answer this.
    Replay(Response<Body>),
}

impl Idempotency {
    /// Keys live `ttl_ms` milliseconds.
    pub fn new(ttl_ms: i64) -> Self {
        Idempotency {
            in_flight: Arc::default(),
            ttl_ms,
        }
    }

    /// How long keys live, in milliseconds.
    pub fn ttl_ms(&self) -> i64 {
        self.ttl_ms
    }

    /// Looks at the request's key (if any) and decides.
    #[allow(clippy::too_many_arguments)]
    pub async fn begin(
        &self,
        store: &dyn Store,
        headers: &HeaderMap,
        method: &Method,
        path: &str,
        body: &[u8],
        status: StatusCode,
        now_ms: i64,
    ) -> Result<Begin, ApiError> {
        let Some(key) = headers.get(KEY_HEADER) else {
            return Ok(Begin::Plain);
        };
        let key = key
            .to_str()
            .ok()
            .filter(|k| !k.is_empty() && k.len() <= 255)
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid-idempotency-key",
                    "Idempotency-Key must be 1 to 255 visible ASCII characters",
                )
            })?
            .to_owned();
        let fingerprint = fingerprint(headers, method, path, body);
        Ok(
            match self
                .begin_keyed(store, key, fingerprint, status, now_ms)
                .await?
            {
                Keyed::Record(in_flight, draft) => Begin::Record(in_flight, draft),
                Keyed::Replay(record) => Begin::Replay(replay(&record)),
            },
        )
    }

    /// The entry point for writes that do not come over HTTP (WebSocket messages): the
    /// caller derives the key and the fingerprint of the request itself. The rules are the
    /// HTTP ones: a recorded key with the same fingerprint is replayed, with another one it
    /// is 422, and a key whose first request is still in flight is 409.
    pub async fn begin_keyed(
        &self,
        store: &dyn Store,
        key: String,
        fingerprint: String,
        status: StatusCode,
        now_ms: i64,
    ) -> Result<Keyed, ApiError> {
        // The key is marked in flight BEFORE the store is asked for its record: checked the
        // other way round, a retry could read "no record" while the first request was in
        // flight, then find the key free once it had answered, and apply the write a
        // second time (tests/retries.rs, concurrent_retries_with_one_key_apply_once).
        let in_flight = {
            let mut set = self
                .in_flight
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if !set.insert(key.clone()) {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "idempotency-key-in-flight",
                    "a request with this Idempotency-Key is still being handled; retry when it has answered",
                ));
            }
            InFlight {
                key: key.clone(),
                set: Arc::clone(&self.in_flight),
            }
        };
        // On every return below but the last, dropping `in_flight` frees the key.
        if let Some(record) = store.idempotency(&key).await? {
            if record.created_at_ms + self.ttl_ms > now_ms {
                if record.fingerprint != fingerprint {
                    return Err(ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "idempotency-key-reused",
                        "this Idempotency-Key was used for a different request; use a new key for a new request",
                    ));
                }
                return Ok(Keyed::Replay(record));
            }
        }
        Ok(Keyed::Record(
            in_flight,
            IdempotencyDraft {
                key,
                fingerprint,
                status: status.as_u16(),
                now_ms,
            },
        ))
    }
}

/// What makes two requests "the same" for a key.
fn fingerprint(headers: &HeaderMap, method: &Method, path: &str, body: &[u8]) -> String {
    let mut hash = Sha256::new();
    hash.update(method.as_str());
    hash.update(b"\n");
    hash.update(path);
    for name in [header::IF_MATCH, header::CONTENT_TYPE] {
        hash.update(b"\n");
        // Every line of a header counts: a second If-Match line is part of the request.
        for (i, v) in headers.get_all(&name).iter().enumerate() {
            if i > 0 {
                hash.update(b", ");
            }
            hash.update(v.as_bytes());
        }
    }
    hash.update(b"\n");
    hash.update(body);
    hex::encode(hash.finalize())
}

fn replay(record: &IdempotencyRecord) -> Response<Body> {
    let mut response = Response::new(Body::from(record.body.clone()));
    *response.status_mut() = StatusCode::from_u16(record.status).unwrap_or(StatusCode::OK);
    let headers = response.headers_mut();
    for (name, value) in &record.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(name, value);
        }
    }
    headers.insert(
        HeaderName::from_static("idempotent-replayed"),
        HeaderValue::from_static("true"),
    );
    response
}

/// Turns a recorded-or-live write into its response.
pub fn respond(written: &Written, status: StatusCode, responder: Responder) -> Response<Body> {
    let (headers, body) = responder(written, status.as_u16());
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}
