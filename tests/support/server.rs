//! [`TestServer`]: the real server in this process, on `127.0.0.1:0` over a temporary data
//! folder, with a small HTTP client for it; [`Reply`], a response read whole.

use std::net::SocketAddr;

use concord_server::{Config, Server};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::Value;
use tempfile::TempDir;

/// A running server over its own temporary data folder.
pub struct TestServer {
    /// HTTP client.
    pub client: reqwest::Client,
    server: Option<Server>,
    addr: SocketAddr,
    /// What the server was started with: a restart starts the same server again, with the
    /// same authentication and limits.
    config: Config,
    /// The data folder (unless the test named another), removed when the test ends.
    _dir: TempDir,
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: reqwest::header::HeaderMap,
    /// Body bytes.
    pub bytes: Vec<u8>,
}

impl Reply {
    /// The body as JSON (panics with the body if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.bytes).unwrap_or_else(|e| {
            panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.bytes))
        })
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ascii header").to_owned())
    }

    /// The ETag without quotes.
    pub fn etag(&self) -> String {
        self.header("etag")
            .expect("an ETag")
            .trim_matches('"')
            .to_owned()
    }

    /// Asserts the status and that the body is problem+json with that status.
    pub fn assert_problem(&self, status: u16) -> Value {
        assert_eq!(
            self.status.as_u16(),
            status,
            "body: {}",
            String::from_utf8_lossy(&self.bytes)
        );
        assert_eq!(
            self.header("content-type").as_deref(),
            Some("application/problem+json")
        );
        let problem = self.json();
        assert_eq!(problem["status"], status);
        assert!(problem["type"].is_string() && problem["title"].is_string());
        assert!(
            problem["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{problem}"
        );
        problem
    }
}

impl TestServer {
    /// Starts a server with the default configuration on a free port.
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    /// Starts a server, letting the test adjust the configuration.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config {
            addr: "127.0.0.1:0".parse().unwrap(),
            data: dir.path().to_path_buf(),
            // As the binary serves them: the viewer's `/v1/compare*`.
            extra_routes: concord_compare::routes(),
            ..Config::default()
        };
        adjust(&mut config);
        let server = Server::start(config.clone()).await.expect("server starts");
        TestServer {
            client: reqwest::Client::new(),
            addr: server.addr(),
            server: Some(server),
            config,
            _dir: dir,
        }
    }

    /// Shuts the server down gracefully and starts a new one over the same data folder,
    /// with the configuration the first one was started with (on a new port when that was
    /// port 0).
    pub async fn restart(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await.expect("clean shutdown");
        }
        let server = Server::start(self.config.clone())
            .await
            .expect("server restarts");
        self.addr = server.addr();
        self.server = Some(server);
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The running server's shared state, for in-process inspection.
    pub fn state(&self) -> &std::sync::Arc<concord_server::AppState> {
        self.server.as_ref().expect("server running").state()
    }

    /// An absolute URL for a path.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// A request builder for a path.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, self.url(path))
    }

    /// Sends a request and reads the whole response.
    pub async fn send(&self, request: RequestBuilder) -> Reply {
        let response = request.send().await.expect("request sent");
        Reply {
            status: response.status(),
            headers: response.headers().clone(),
            bytes: response.bytes().await.expect("body read").to_vec(),
        }
    }

    /// Creates a document from a `POST /v1/docs` body; returns `(id, version)`.
    pub async fn create(&self, body: Value) -> (String, String) {
        let reply = self
            .send(self.request(Method::POST, "/v1/docs").json(&body))
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.json());
        let json = reply.json();
        (
            json["id"].as_str().unwrap().to_owned(),
            json["version"].as_str().unwrap().to_owned(),
        )
    }

    /// Reads a document; returns `(value, version)`.
    pub async fn get(&self, id: &str) -> (Value, String) {
        let reply = self
            .send(self.request(Method::GET, &format!("/v1/docs/{id}")))
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.json());
        let json = reply.json();
        (
            json["value"].clone(),
            json["version"].as_str().unwrap().to_owned(),
        )
    }

    /// PUTs a whole value as `agent`, against `base`.
    pub async fn put(&self, id: &str, agent: &str, base: &str, value: &Value) -> Reply {
        self.send(
            self.request(Method::PUT, &format!("/v1/docs/{id}"))
                .header("concord-agent", agent)
                .header("if-match", format!("\"{base}\""))
                .json(value),
        )
        .await
    }

    /// PATCHes with a JSON Patch as `agent`, against `base` (if any).
    pub async fn patch(&self, id: &str, agent: &str, base: Option<&str>, ops: &Value) -> Reply {
        let mut request = self
            .request(Method::PATCH, &format!("/v1/docs/{id}"))
            .header("concord-agent", agent)
            .header("content-type", "application/json-patch+json")
            .body(ops.to_string());
        if let Some(base) = base {
            request = request.header("if-match", format!("\"{base}\""));
        }
        self.send(request).await
    }

    /// The raw bytes of all the document's changes: a byte-for-byte fingerprint of it.
    pub async fn raw(&self, id: &str) -> Vec<u8> {
        let reply = self
            .send(self.request(Method::GET, &format!("/v1/docs/{id}/changes")))
            .await;
        assert_eq!(reply.status, StatusCode::OK);
        reply.bytes
    }
}
