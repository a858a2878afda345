//! The HTTP API: [`Client`] and what its calls send and answer.

use std::time::Duration;

use concord_core::Strategy;
use reqwest::{Method, RequestBuilder};
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::{encode, problem_from, protocol, ClientError};

/// A document as the server answered it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Doc {
    /// Its id.
    pub id: Uuid,
    /// Its version (the `ETag`): the base to write against.
    pub version: String,
    /// Its value (after a write: the merged present). `Null` after a write made with
    /// [`WriteOptions::minimal`], whose answer leaves the value out.
    #[serde(default)]
    pub value: Value,
    /// Its write strategy.
    pub strategy: Strategy,
    /// After a write: how many changes it made (0: it changed nothing). `None` on reads.
    #[serde(default)]
    pub new_changes: Option<u64>,
}

/// What [`Client::create`] sends; every field optional.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// The id (a new one if absent).
    pub id: Option<Uuid>,
    /// The first value (a JSON object; `{}` if absent).
    pub value: Option<Value>,
    /// The write strategy (crdt if absent).
    pub strategy: Option<Strategy>,
    /// JSON Pointer patterns of collaborative text strings.
    pub text: Vec<String>,
    /// JSON Pointer patterns of counters.
    pub counters: Vec<String>,
    /// An `Idempotency-Key`: a retried create is applied once.
    pub idempotency_key: Option<String>,
    /// Ask for a minimal answer, as [`WriteOptions::minimal`] does.
    pub minimal: bool,
}

/// Optional headers of a write.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    /// An `Idempotency-Key`: a retry with the same key and request is applied once.
    pub idempotency_key: Option<String>,
    /// A lease token (`Concord-Lock`), for documents of the lock strategy.
    pub lock: Option<String>,
    /// Ask for the version only (`Prefer: return=minimal`): the answer's [`Doc::value`] is
    /// `Null`, and the server neither serializes nor sends the document, which for a large
    /// one is most of a small write's cost.
    pub minimal: bool,
}

impl WriteOptions {
    /// Options with this idempotency key.
    pub fn key(key: impl Into<String>) -> Self {
        WriteOptions {
            idempotency_key: Some(key.into()),
            ..WriteOptions::default()
        }
    }

    /// These options asking for a minimal answer (see [`WriteOptions::minimal`]).
    pub fn minimal_answer(mut self) -> Self {
        self.minimal = true;
        self
    }

    /// These options with a lease token.
    pub fn with_lock(mut self, token: impl Into<String>) -> Self {
        self.lock = Some(token.into());
        self
    }
}

/// A lease of a lock document.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Lease {
    /// The fencing token: send it with writes ([`WriteOptions::lock`]) and to unlock.
    pub token: String,
    /// When the lease ends, milliseconds since the Unix epoch.
    #[serde(rename = "expires_at")]
    pub expires_at_ms: i64,
}

/// A document's change graph.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct History {
    /// The current version.
    pub version: String,
    /// Every change, in causal order.
    pub changes: Vec<HistoryEntry>,
}

/// One change of a history.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct HistoryEntry {
    /// The change hash.
    pub hash: String,
    /// The agent that wrote it, if known.
    #[serde(default)]
    pub agent: Option<String>,
    /// When, seconds since the Unix epoch.
    #[serde(default)]
    pub time: i64,
    /// A message recorded with it.
    #[serde(default)]
    pub message: Option<String>,
    /// The hashes it depends on.
    #[serde(default)]
    pub deps: Vec<String>,
    /// How many operations it holds.
    #[serde(default)]
    pub ops: u64,
}

/// How a [`Subscription`] reconnects after its connection breaks.
#[derive(Debug, Clone)]
pub struct Reconnect {
    /// Failed connection attempts in a row before giving up.
    pub max_attempts: u32,
    /// The wait before the first retry; it doubles with each failure.
    pub first_delay: Duration,
    /// The longest wait between retries.
    pub max_delay: Duration,
}

impl Default for Reconnect {
    fn default() -> Self {
        Reconnect {
            max_attempts: u32::MAX,
            first_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(5),
        }
    }
}

/// A client of one Concord server, writing as one agent. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    pub(crate) base: String,
    pub(crate) agent: String,
    pub(crate) reconnect: Reconnect,
    /// The bearer token for a server with authentication on.
    pub(crate) token: Option<String>,
}

impl Client {
    /// A client of the server at `base_url` (`http://host:port`), writing as `agent`.
    pub fn new(base_url: impl Into<String>, agent: impl Into<String>) -> Client {
        Client {
            http: reqwest::Client::new(),
            base: base_url.into().trim_end_matches('/').to_owned(),
            agent: agent.into(),
            reconnect: Reconnect::default(),
            token: None,
        }
    }

    /// This client with a bearer token, for a server started with `--auth`: sent as
    /// `Authorization: Bearer` on every request and WebSocket. The server then takes the
    /// agent name from the token.
    pub fn with_token(mut self, token: impl Into<String>) -> Client {
        self.token = Some(token.into());
        self
    }

    /// This client with another reconnect policy for its subscriptions.
    pub fn with_reconnect(mut self, reconnect: Reconnect) -> Client {
        self.reconnect = reconnect;
        self
    }

    /// The server's base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// The agent this client writes as.
    pub fn agent(&self) -> &str {
        &self.agent
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let request = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .header("concord-agent", &self.agent);
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Sends a request; an error status becomes [`ClientError::Problem`].
    async fn call(&self, request: RequestBuilder) -> Result<reqwest::Response, ClientError> {
        let response = request.send().await?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let version = response
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim_matches('"').to_owned());
        let body = response.bytes().await?;
        Err(ClientError::Problem(Box::new(problem_from(
            status.as_u16(),
            &body,
            version,
        ))))
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        request: RequestBuilder,
    ) -> Result<T, ClientError> {
        let bytes = self.call(request).await?.bytes().await?;
        serde_json::from_slice(&bytes).map_err(|e| protocol(format!("unexpected answer: {e}")))
    }

    fn write_request(
        &self,
        method: Method,
        path: &str,
        base: Option<&str>,
        options: &WriteOptions,
    ) -> RequestBuilder {
        let mut request = self.request(method, path);
        if let Some(base) = base {
            let tag = if base == "*" {
                "*".to_owned()
            } else {
                format!("\"{base}\"")
            };
            request = request.header("if-match", tag);
        }
        if let Some(key) = &options.idempotency_key {
            request = request.header("idempotency-key", key);
        }
        if let Some(lock) = &options.lock {
            request = request.header("concord-lock", lock);
        }
        if options.minimal {
            request = request.header("prefer", "return=minimal");
        }
        request
    }

    /// `POST /v1/docs`: creates a document.
    pub async fn create(&self, options: &CreateOptions) -> Result<Doc, ClientError> {
        let mut body = serde_json::Map::new();
        if let Some(id) = options.id {
            body.insert("id".into(), json!(id));
        }
        if let Some(value) = &options.value {
            body.insert("value".into(), value.clone());
        }
        if let Some(strategy) = options.strategy {
            body.insert("strategy".into(), json!(strategy));
        }
        if !options.text.is_empty() {
            body.insert("text".into(), json!(options.text));
        }
        if !options.counters.is_empty() {
            body.insert("counters".into(), json!(options.counters));
        }
        let write = WriteOptions {
            idempotency_key: options.idempotency_key.clone(),
            minimal: options.minimal,
            ..WriteOptions::default()
        };
        let request = self
            .write_request(Method::POST, "/v1/docs", None, &write)
            .json(&Value::Object(body));
        self.json(request).await
    }

    /// `GET /v1/docs/{id}`: the current value and version.
    pub async fn get(&self, id: Uuid) -> Result<Doc, ClientError> {
        self.json(self.request(Method::GET, &format!("/v1/docs/{id}")))
            .await
    }

    /// `GET /v1/docs/{id}?at=<version>`: the value at a version the document has had.
    pub async fn get_at(&self, id: Uuid, version: &str) -> Result<Doc, ClientError> {
        let path = format!("/v1/docs/{id}?at={}", encode(version));
        self.json(self.request(Method::GET, &path)).await
    }

    /// `PUT /v1/docs/{id}`: writes a whole value derived from `base` (the version read, or
    /// `*` for the current one).
    pub async fn put(
        &self,
        id: Uuid,
        base: &str,
        value: &Value,
        options: &WriteOptions,
    ) -> Result<Doc, ClientError> {
        let request = self
            .write_request(Method::PUT, &format!("/v1/docs/{id}"), Some(base), options)
            .json(value);
        self.json(request).await
    }

    /// `PATCH /v1/docs/{id}` with JSON Patch operations, against `base` if given.
    pub async fn patch(
        &self,
        id: Uuid,
        base: Option<&str>,
        ops: &Value,
        options: &WriteOptions,
    ) -> Result<Doc, ClientError> {
        let request = self
            .write_request(Method::PATCH, &format!("/v1/docs/{id}"), base, options)
            .header("content-type", "application/json-patch+json")
            .body(ops.to_string());
        self.json(request).await
    }

    /// `PATCH /v1/docs/{id}` with an RFC 7396 merge patch, against `base` if given.
    pub async fn merge_patch(
        &self,
        id: Uuid,
        base: Option<&str>,
        patch: &Value,
        options: &WriteOptions,
    ) -> Result<Doc, ClientError> {
        let request = self
            .write_request(Method::PATCH, &format!("/v1/docs/{id}"), base, options)
            .header("content-type", "application/merge-patch+json")
            .body(patch.to_string());
        self.json(request).await
    }

    /// `DELETE /v1/docs/{id}`.
    pub async fn delete(&self, id: Uuid) -> Result<(), ClientError> {
        self.call(self.request(Method::DELETE, &format!("/v1/docs/{id}")))
            .await?;
        Ok(())
    }

    /// `GET /v1/docs/{id}/history`: the change graph.
    pub async fn history(&self, id: Uuid) -> Result<History, ClientError> {
        self.json(self.request(Method::GET, &format!("/v1/docs/{id}/history")))
            .await
    }

    /// `POST /v1/docs/{id}/lock`: takes the lease of a lock document for `ttl_ms`, waiting
    /// up to `wait_ms` for the current holder.
    pub async fn lock(&self, id: Uuid, ttl_ms: u64, wait_ms: u64) -> Result<Lease, ClientError> {
        let request = self
            .request(Method::POST, &format!("/v1/docs/{id}/lock"))
            .json(&json!({"ttl_ms": ttl_ms, "wait_ms": wait_ms}));
        self.json(request).await
    }

    /// `DELETE /v1/docs/{id}/lock`: releases the lease of `token`.
    pub async fn unlock(&self, id: Uuid, token: &str) -> Result<(), ClientError> {
        let request = self
            .request(Method::DELETE, &format!("/v1/docs/{id}/lock"))
            .header("concord-lock", token);
        self.call(request).await?;
        Ok(())
    }

    /// `POST /v1/docs/{id}/fork`: an isolated copy to edit, merged back with [`Client::merge`].
    pub async fn fork(&self, id: Uuid) -> Result<Doc, ClientError> {
        self.json(self.request(Method::POST, &format!("/v1/docs/{id}/fork")))
            .await
    }

    /// `POST /v1/docs/{id}/merge`: merges the changes of `fork` back into `id`.
    pub async fn merge(
        &self,
        id: Uuid,
        fork: Uuid,
        options: &WriteOptions,
    ) -> Result<Doc, ClientError> {
        let request = self
            .write_request(Method::POST, &format!("/v1/docs/{id}/merge"), None, options)
            .json(&json!({ "fork": fork }));
        self.json(request).await
    }
}
