//! The MCP endpoint with the official TypeScript SDK: starts two real servers (one
//! without authentication, one with tokens), then runs the Node suite in `tests/mcp`
//! (`node --test`) against them, with their addresses and tokens in the environment.
//!
//! Needs `node` (20 or later) and `tests/mcp/node_modules` (`npm ci --prefix tests/mcp`).
//! Without them the test prints `mcp suite SKIPPED: <reason>` and passes, unless `CI` is
//! set: CI must run the suite, so there it fails instead.
//!
//! The Rust tests below it speak the protocol by hand where the SDK would hide what is
//! checked: the HTTP status of an unauthenticated request, the protocol revisions.

use std::path::PathBuf;
use std::sync::Arc;

use concord_server::auth::Auth;
use concord_tests::{node, TestServer};
use serde_json::{json, Value};

/// Agent "ops": admin.
const ADMIN: &str = "mcp-admin-token-0000000";
/// Agent "writer": write every document, not admin.
const WRITER: &str = "mcp-writer-token-000000";
/// Agent "reader": read every document.
const READER: &str = "mcp-reader-token-000000";

fn tokens() -> Auth {
    Auth::from_json(&format!(
        r#"{{"tokens": [
            {{"agent": "ops", "token": "{ADMIN}", "scopes": ["admin"]}},
            {{"agent": "writer", "token": "{WRITER}", "scopes": ["write:*"]}},
            {{"agent": "reader", "token": "{READER}", "scopes": ["read:*"]}}
        ]}}"#
    ))
    .expect("the test tokens parse")
}

async fn with_auth() -> TestServer {
    TestServer::start_with(|config| config.auth = Some(Arc::new(tokens()))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typescript_sdk_client_uses_every_tool() {
    let suite = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("mcp");
    if !node::runnable("mcp", &suite, "@modelcontextprotocol/sdk") {
        return;
    }
    let open = TestServer::start().await;
    let guarded = with_auth().await;
    let env = [
        ("CONCORD_URL", open.url("")),
        ("CONCORD_AUTH_URL", guarded.url("")),
        ("CONCORD_ADMIN_TOKEN", ADMIN.into()),
        ("CONCORD_WRITER_TOKEN", WRITER.into()),
        ("CONCORD_READER_TOKEN", READER.into()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    node::run_suite(&suite, &env).await;
}

/// One JSON-RPC request to `/mcp`, answered as JSON: `(status, body)`.
async fn rpc(server: &TestServer, token: Option<&str>, version: &str, body: Value) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .post(server.url("/mcp"))
        .header("accept", "application/json, text/event-stream")
        .json(&body);
    if !version.is_empty() {
        request = request.header("mcp-protocol-version", version);
    }
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let reply = request.send().await.expect("the server answers");
    let status = reply.status().as_u16();
    let text = reply.text().await.expect("a body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn initialize(version: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": version, "capabilities": {},
        "clientInfo": {"name": "by-hand", "version": "0"}}})
}

/// The revisions with a handshake are each answered as asked; an unknown one gets the
/// newest with a handshake.
#[tokio::test]
async fn the_older_protocol_revisions_are_negotiated() {
    let server = TestServer::start().await;
    for version in ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"] {
        let (status, body) = rpc(&server, None, "", initialize(version)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["result"]["protocolVersion"], version, "{body}");
        assert_eq!(body["result"]["serverInfo"]["name"], "concord");
        assert!(
            body["result"]["capabilities"]["tools"].is_object(),
            "{body}"
        );
    }
    let (_, body) = rpc(&server, None, "", initialize("2023-01-01")).await;
    assert_eq!(body["result"]["protocolVersion"], "2025-11-25", "{body}");
    // A JSON-RPC error keeps its JSON-RPC body (not rewritten as problem+json).
    let (status, body) = rpc(&server, None, "2025-11-25", initialize("2023-01-01")).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], -32600, "{body}");
}

/// A tool call answered in one POST, without a session: its result is the document as
/// HTTP answers it, and the write is attributed as HTTP attributes it.
#[tokio::test]
async fn a_tool_call_is_one_request_and_writes_as_http_does() {
    let server = TestServer::start().await;
    let (id, version) = server.create(json!({"value": {"n": 1}})).await;
    let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
        "name": "write_document",
        "arguments": {"id": id, "base_version": version, "value": {"n": 2}}}});
    let (status, body) = rpc(&server, None, "2025-11-25", call).await;
    assert_eq!(status, 200, "{body}");
    let result = &body["result"];
    assert!(result.is_object(), "{body}");
    assert_eq!(result["isError"], false, "{body}");
    assert_eq!(result["structuredContent"]["value"], json!({"n": 2}));
    let (now, version) = server.get(&id).await;
    assert_eq!(now, json!({"n": 2}));
    assert_eq!(result["structuredContent"]["version"], version);
    // Counted in /metrics (the recorder is the process's: other tests here count too).
    let metrics = server
        .send(server.request(reqwest::Method::GET, "/metrics"))
        .await;
    let page = String::from_utf8(metrics.bytes).unwrap();
    let calls = page
        .lines()
        .find_map(|l| {
            l.strip_prefix(r#"concord_mcp_tool_calls_total{tool="write_document",outcome="ok"} "#)
        })
        .map(|v| v.parse::<f64>().unwrap());
    assert!(calls.is_some_and(|n| n >= 1.0), "{page}");
}

/// With authentication on, `/mcp` needs a token like every API route (401 before any
/// tool runs), and a token is enough to list the tools.
#[tokio::test]
async fn mcp_needs_a_token_when_auth_is_on() {
    let server = with_auth().await;
    let list = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list"});
    let (status, _) = rpc(&server, None, "2025-11-25", initialize("2025-11-25")).await;
    assert_eq!(status, 401);
    let (status, _) = rpc(
        &server,
        Some("not-a-token-of-this-server"),
        "2025-11-25",
        list.clone(),
    )
    .await;
    assert_eq!(status, 401);
    let (status, body) = rpc(&server, Some(READER), "2025-11-25", list).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["result"]["tools"].as_array().map(Vec::len),
        Some(13),
        "{body}"
    );
}
