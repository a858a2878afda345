//! A small HTTP client for the parts of Concord's API the comparison's agents use. Every
//! answer is sorted into what the history needs: done, refused (it did not happen), or
//! unknown (it may have happened).

use std::time::Duration;

use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{json, Value};

/// How a request ended.
#[derive(Debug, Clone)]
pub enum Reply {
    /// 2xx, with the JSON body (`null` for none) and the `ETag` without quotes.
    Done {
        /// The status.
        status: StatusCode,
        /// The body.
        body: Value,
        /// The entity tag, if any.
        etag: Option<String>,
    },
    /// 4xx: the server refused; nothing happened.
    Refused {
        /// The status.
        status: StatusCode,
        /// The problem's kind (the end of its `type`), e.g. `stale-version`.
        kind: String,
        /// The problem's detail.
        detail: String,
        /// The `ETag` sent with the refusal (the current version, on a 412).
        etag: Option<String>,
    },
    /// No answer, or a 5xx: it may or may not have happened.
    Unknown(String),
}

impl Reply {
    /// True for 2xx.
    pub fn is_done(&self) -> bool {
        matches!(self, Reply::Done { .. })
    }

    /// The status as a number (0 when unknown).
    pub fn status(&self) -> u16 {
        match self {
            Reply::Done { status, .. } => status.as_u16(),
            Reply::Refused { status, .. } => status.as_u16(),
            Reply::Unknown(_) => 0,
        }
    }

    /// The body of a 2xx.
    pub fn body(&self) -> Option<&Value> {
        match self {
            Reply::Done { body, .. } => Some(body),
            _ => None,
        }
    }

    /// The document value of a 2xx document answer.
    pub fn value(&self) -> Option<&Value> {
        self.body().map(|b| &b["value"])
    }

    /// The document version of a 2xx document answer.
    pub fn version(&self) -> Option<String> {
        self.body()
            .and_then(|b| b["version"].as_str())
            .map(str::to_owned)
    }

    /// One line for people: `200 OK`, `412 stale-version`, `no answer: …`.
    pub fn summary(&self) -> String {
        match self {
            Reply::Done { status, .. } => status.to_string(),
            Reply::Refused { status, kind, .. } => format!("{} {kind}", status.as_u16()),
            Reply::Unknown(why) => format!("no answer: {why}"),
        }
    }
}

/// A client of one Concord server.
#[derive(Clone)]
pub struct Wire {
    http: reqwest::Client,
    base: String,
    /// Writes ask `Prefer: return=minimal`: the answer is the version, not the value.
    minimal: bool,
}

/// Longer than the longest lock wait the agents ask for, so that a wait is not mistaken
/// for a lost answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

impl Wire {
    /// A client of the server at `base` (`http://host:port`).
    pub fn new(base: &str) -> Wire {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .expect("a plain HTTP client builds");
        Wire {
            http,
            base: base.trim_end_matches('/').to_owned(),
            minimal: false,
        }
    }

    /// This client with writes that ask for minimal answers (`Prefer: return=minimal`):
    /// the version, strategy and `new_changes`, never the value. For agents that only
    /// need to know whether a write took, as the comparison's runs do; the step-by-step
    /// scenario shows each write's merged value, so it asks for whole answers.
    pub fn minimal_answers(mut self) -> Wire {
        self.minimal = true;
        self
    }

    fn request(&self, method: Method, path: &str, agent: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .header("concord-agent", agent)
    }

    /// [`Wire::request`] for a write: asks for a minimal answer if this client does.
    fn write(&self, method: Method, path: &str, agent: &str) -> RequestBuilder {
        let request = self.request(method, path, agent);
        if self.minimal {
            request.header("prefer", "return=minimal")
        } else {
            request
        }
    }

    async fn send(request: RequestBuilder) -> Reply {
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => return Reply::Unknown(e.to_string()),
        };
        let status = response.status();
        let etag = response
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim_matches('"').to_owned());
        let bytes = match response.bytes().await {
            Ok(b) => b,
            Err(e) => return Reply::Unknown(format!("{status}, body lost: {e}")),
        };
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        if status.is_success() {
            Reply::Done { status, body, etag }
        } else if status.is_client_error() {
            let kind = body["type"]
                .as_str()
                .and_then(|t| t.rsplit(':').next())
                .unwrap_or("error")
                .to_owned();
            let detail = body["detail"].as_str().unwrap_or_default().to_owned();
            Reply::Refused {
                status,
                kind,
                detail,
                etag,
            }
        } else {
            let detail = body["detail"].as_str().unwrap_or("server error").to_owned();
            Reply::Unknown(format!("{}: {detail}", status.as_u16()))
        }
    }

    /// `POST /v1/docs`.
    pub async fn create(&self, body: &Value) -> Reply {
        Self::send(self.request(Method::POST, "/v1/docs", "compare").json(body)).await
    }

    /// `GET /v1/docs/{id}`.
    pub async fn read(&self, id: &str, agent: &str) -> Reply {
        Self::send(self.request(Method::GET, &format!("/v1/docs/{id}"), agent)).await
    }

    /// `GET /v1/docs/{id}?conflicts=true`.
    pub async fn read_with_conflicts(&self, id: &str) -> Reply {
        let path = format!("/v1/docs/{id}?conflicts=true");
        Self::send(self.request(Method::GET, &path, "compare")).await
    }

    /// `PUT /v1/docs/{id}` with `If-Match: "<base>"` and, for lock documents, the token.
    pub async fn put(
        &self,
        id: &str,
        agent: &str,
        base: &str,
        lock: Option<&str>,
        value: &Value,
    ) -> Reply {
        let mut request = self
            .write(Method::PUT, &format!("/v1/docs/{id}"), agent)
            .header("if-match", format!("\"{base}\""))
            .json(value);
        if let Some(token) = lock {
            request = request.header("concord-lock", token);
        }
        Self::send(request).await
    }

    /// `PATCH /v1/docs/{id}` with JSON Patch and no `If-Match`: an intent.
    pub async fn patch(&self, id: &str, agent: &str, ops: &Value) -> Reply {
        let request = self
            .write(Method::PATCH, &format!("/v1/docs/{id}"), agent)
            .header("content-type", "application/json-patch+json")
            .body(ops.to_string());
        Self::send(request).await
    }

    /// `POST /v1/docs/{id}/lock`; the token is in `body["token"]`.
    pub async fn lock(&self, id: &str, agent: &str, ttl_ms: u64, wait_ms: u64) -> Reply {
        let body = json!({"ttl_ms": ttl_ms, "wait_ms": wait_ms});
        let path = format!("/v1/docs/{id}/lock");
        Self::send(self.request(Method::POST, &path, agent).json(&body)).await
    }

    /// `DELETE /v1/docs/{id}/lock` with the token.
    pub async fn unlock(&self, id: &str, agent: &str, token: &str) -> Reply {
        let path = format!("/v1/docs/{id}/lock");
        Self::send(
            self.request(Method::DELETE, &path, agent)
                .header("concord-lock", token),
        )
        .await
    }

    /// `POST /v1/docs/{id}/fork`; the fork's id is in `body["id"]`.
    pub async fn fork(&self, id: &str, agent: &str) -> Reply {
        Self::send(self.write(Method::POST, &format!("/v1/docs/{id}/fork"), agent)).await
    }

    /// `POST /v1/docs/{id}/merge` `{"fork": fork}`.
    pub async fn merge(&self, id: &str, fork: &str, agent: &str) -> Reply {
        let path = format!("/v1/docs/{id}/merge");
        Self::send(
            self.write(Method::POST, &path, agent)
                .json(&json!({"fork": fork})),
        )
        .await
    }

    /// `DELETE /v1/docs/{id}`.
    pub async fn delete(&self, id: &str) -> Reply {
        Self::send(self.request(Method::DELETE, &format!("/v1/docs/{id}"), "compare")).await
    }
}
