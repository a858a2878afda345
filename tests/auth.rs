//! End-to-end tests of authentication: every endpoint without a token, with a wrong token
//! and with a token lacking the scope (a read-only token for writes), table-driven; the
//! token deciding the agent; `?access_token=` only where browsers need it; and the
//! per-message checks of WebSocket, sync and automerge-repo connections.
//!
//! Every wait is for a message the protocol promises; the timeout around it only turns a
//! hang into a failure.

use std::sync::Arc;

use concord_client::{ClientMessage, Frame, ServerMessage, Socket};
use concord_core::sync::{SyncMessage, SyncState};
use concord_core::{Document, Schema};
use concord_protocol::repo::{document_id, Incoming};
use concord_server::auth::Auth;
use concord_server::{Config, Server, StartError};
use concord_tests::sync::{Replica, RepoPeer};
use concord_tests::ws::{connect_with, next, recv};
use concord_tests::{foreign_change, meta, Reply, SseStream, TestServer, PATIENCE};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::{self, Message};

/// The document most cases act on, one a stranger may use, and one to delete.
const DOC: &str = "11111111-1111-4111-8111-111111111111";
const OTHER: &str = "22222222-2222-4222-8222-222222222222";
const VICTIM: &str = "33333333-3333-4333-8333-333333333333";

const ADMIN: &str = "admin-token-00000000000";
/// alice: write DOC.
const WRITER: &str = "writer-token-0000000000";
/// rita: read DOC.
const READER: &str = "reader-token-0000000000";
/// sam: write OTHER, nothing of DOC.
const STRANGER: &str = "stranger-token-00000000";
/// walt: write every document, not admin.
const EVERYWHERE: &str = "everywhere-token-000000";
/// rex: read every document.
const READ_ALL: &str = "read-all-token-00000000";
/// wendy: read every document, write OTHER.
const MIXED: &str = "mixed-token-00000000000";
/// Not a token of this server.
const WRONG: &str = "wrong-token-00000000000";

fn tokens() -> Auth {
    Auth::from_json(&format!(
        r#"{{"tokens": [
            {{"agent": "ops", "token": "{ADMIN}", "scopes": ["admin"]}},
            {{"agent": "alice", "token": "{WRITER}", "scopes": ["write:{DOC}"]}},
            {{"agent": "rita", "token": "{READER}", "scopes": ["read:{DOC}"]}},
            {{"agent": "sam", "token": "{STRANGER}", "scopes": ["write:{OTHER}"]}},
            {{"agent": "walt", "token": "{EVERYWHERE}", "scopes": ["write:*"]}},
            {{"agent": "rex", "token": "{READ_ALL}", "scopes": ["read:*"]}},
            {{"agent": "wendy", "token": "{MIXED}", "scopes": ["read:*", "write:{OTHER}"]}}
        ]}}"#
    ))
    .expect("the test tokens parse")
}

async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestServer {
    let s = TestServer::start_with(|config| {
        config.auth = Some(Arc::new(tokens()));
        adjust(config);
    })
    .await;
    for id in [DOC, OTHER, VICTIM] {
        let reply = send(&s, ADMIN, Method::POST, "/v1/docs")
            .json(&json!({"id": id, "value": {"n": 1}}))
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), StatusCode::CREATED);
    }
    s
}

async fn start() -> TestServer {
    start_with(|_| {}).await
}

/// A request with a bearer token (none if `token` is empty).
fn send(s: &TestServer, token: &str, method: Method, path: &str) -> reqwest::RequestBuilder {
    let request = s.request(method, path);
    if token.is_empty() {
        request
    } else {
        request.bearer_auth(token)
    }
}

/// The raw bytes of a document's changes, read as admin.
async fn raw(s: &TestServer, id: &str) -> Vec<u8> {
    let reply = s
        .send(send(
            s,
            ADMIN,
            Method::GET,
            &format!("/v1/docs/{id}/changes"),
        ))
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    reply.bytes
}

async fn history_agents(s: &TestServer, id: &str) -> Vec<String> {
    let reply = s
        .send(send(
            s,
            ADMIN,
            Method::GET,
            &format!("/v1/docs/{id}/history"),
        ))
        .await;
    reply.json()["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["agent"].as_str().unwrap_or_default().to_owned())
        .collect()
}

// --- every endpoint, table-driven -----------------------------------------------------------

/// What an endpoint needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// Nothing.
    Public,
    /// Some valid token.
    AnyToken,
    /// A token with this scope; the first token lacks it, the second has it.
    Scope(&'static str, &'static str),
}

struct Case {
    method: Method,
    path: &'static str,
    /// Content type and body.
    body: Option<(&'static str, &'static str)>,
    headers: &'static [(&'static str, &'static str)],
    need: Need,
    /// The status with the right token; `None`: do not run it (a comparison run).
    allowed: Option<u16>,
    /// The answer is a stream: check the status, do not read it to the end.
    stream: bool,
}

fn case(method: Method, path: &'static str, need: Need, allowed: Option<u16>) -> Case {
    Case {
        method,
        path,
        body: None,
        headers: &[],
        need,
        allowed,
        stream: false,
    }
}

fn cases() -> Vec<Case> {
    use Need::*;
    const JSON: &str = "application/json";
    let admin = Scope(WRITER, ADMIN);
    let read = Scope(STRANGER, READER);
    // A read-only token for every write.
    let write = Scope(READER, WRITER);
    vec![
        case(Method::GET, "/healthz", Public, Some(200)),
        case(Method::GET, "/openapi.json", Public, Some(200)),
        case(Method::GET, "/metrics", admin, Some(200)),
        case(Method::GET, "/", Public, Some(200)),
        case(Method::GET, "/web/app.js", Public, Some(200)),
        case(Method::GET, "/nope", AnyToken, Some(404)),
        case(Method::GET, "/v1/docs", admin, Some(200)),
        Case {
            body: Some((JSON, "{}")),
            ..case(Method::POST, "/v1/docs", admin, Some(201))
        },
        case(Method::GET, "/v1/docs/{id}", read, Some(200)),
        Case {
            body: Some((JSON, r#"{"n": 2}"#)),
            headers: &[("if-match", "*")],
            ..case(Method::PUT, "/v1/docs/{id}", write, Some(200))
        },
        Case {
            body: Some((
                "application/json-patch+json",
                r#"[{"op": "add", "path": "/p", "value": 1}]"#,
            )),
            ..case(Method::PATCH, "/v1/docs/{id}", write, Some(200))
        },
        Case {
            body: Some(("application/merge-patch+json", r#"{"m": 1}"#)),
            ..case(Method::PATCH, "/v1/docs/{id}", write, Some(200))
        },
        case(Method::DELETE, "/v1/docs/{victim}", admin, Some(204)),
        case(Method::GET, "/v1/docs/{id}/history", read, Some(200)),
        case(Method::GET, "/v1/docs/{id}/changes", read, Some(200)),
        Case {
            // No changes at all: with the scope, the handler says so.
            body: Some(("application/octet-stream", "")),
            ..case(Method::POST, "/v1/docs/{id}/changes", write, Some(400))
        },
        // A crdt document has no leases: with the scope, the strategy refuses.
        Case {
            body: Some((JSON, "{}")),
            ..case(Method::POST, "/v1/docs/{id}/lock", write, Some(409))
        },
        Case {
            headers: &[("concord-lock", "1")],
            ..case(Method::DELETE, "/v1/docs/{id}/lock", write, Some(409))
        },
        // A fork is a new document: write on the original is not enough.
        case(
            Method::POST,
            "/v1/docs/{id}/fork",
            Scope(WRITER, EVERYWHERE),
            Some(201),
        ),
        Case {
            body: Some((JSON, r#"{"fork": "22222222-2222-4222-8222-222222222222"}"#)),
            ..case(
                Method::POST,
                "/v1/docs/{id}/merge",
                Scope(READER, EVERYWHERE),
                Some(409),
            )
        },
        // ...and write on the target is not enough either: the fork must be readable.
        Case {
            body: Some((JSON, r#"{"fork": "22222222-2222-4222-8222-222222222222"}"#)),
            ..case(
                Method::POST,
                "/v1/docs/{id}/merge",
                Scope(WRITER, EVERYWHERE),
                Some(409),
            )
        },
        Case {
            stream: true,
            ..case(Method::GET, "/v1/docs/{id}/events", read, Some(200))
        },
        Case {
            stream: true,
            ..case(Method::GET, "/v1/events", Scope(READ_ALL, ADMIN), Some(200))
        },
        // Without a WebSocket handshake the handler refuses, after the token was checked.
        case(Method::GET, "/v1/docs/{id}/ws", read, Some(400)),
        case(Method::GET, "/v1/docs/{id}/sync", read, Some(426)),
        case(Method::GET, "/v1/repo", AnyToken, Some(426)),
        Case {
            body: Some((JSON, r#"{"nope": 1}"#)),
            ..case(Method::POST, "/v1/compare", admin, Some(422))
        },
        Case {
            body: Some((JSON, r#"{"nope": 1}"#)),
            ..case(Method::POST, "/v1/compare/sweep", admin, Some(422))
        },
        case(Method::GET, "/v1/compare/scenario", admin, None),
    ]
}

async fn attempt(s: &TestServer, c: &Case, token: &str) -> Reply {
    let path = c.path.replace("{id}", DOC).replace("{victim}", VICTIM);
    let mut request = send(s, token, c.method.clone(), &path);
    for (name, value) in c.headers {
        request = request.header(*name, *value);
    }
    if let Some((media, body)) = c.body {
        request = request.header("content-type", media).body(body);
    }
    let response = request.send().await.expect("request sent");
    let status = response.status();
    let headers = response.headers().clone();
    // A stream that was let through is not read to its (never coming) end.
    let bytes = if c.stream && status.is_success() {
        Vec::new()
    } else {
        response.bytes().await.expect("body read").to_vec()
    };
    Reply {
        status,
        headers,
        bytes,
    }
}

fn assert_challenge(reply: &Reply, what: &str) {
    reply.assert_problem(401);
    let challenge = reply.header("www-authenticate").unwrap_or_default();
    assert!(challenge.starts_with("Bearer "), "{what}: {challenge:?}");
}

#[tokio::test]
async fn every_endpoint_refuses_missing_wrong_and_insufficient_tokens() {
    let s = start().await;
    let before: Vec<Vec<u8>> = vec![raw(&s, DOC).await, raw(&s, VICTIM).await];
    for c in cases() {
        let what = format!("{} {}", c.method, c.path);
        match c.need {
            Need::Public => {
                for token in ["", WRONG, READER] {
                    let reply = attempt(&s, &c, token).await;
                    assert_eq!(reply.status.as_u16(), 200, "{what} with {token:?}");
                }
                continue;
            }
            Need::AnyToken | Need::Scope(..) => {
                assert_challenge(&attempt(&s, &c, "").await, &what);
                let wrong = attempt(&s, &c, WRONG).await;
                assert_challenge(&wrong, &what);
                assert!(wrong
                    .header("www-authenticate")
                    .unwrap()
                    .contains("invalid_token"));
            }
        }
        if let Need::Scope(lacking, _) = c.need {
            let reply = attempt(&s, &c, lacking).await;
            let problem = reply.assert_problem(403);
            assert!(
                problem["detail"].as_str().unwrap().contains("may not"),
                "{what}: {problem}"
            );
        }
    }
    // Nothing refused changed anything.
    assert_eq!(vec![raw(&s, DOC).await, raw(&s, VICTIM).await], before);
    // With the scope, each endpoint answers as it would without auth.
    for c in cases() {
        let token = match c.need {
            Need::Public => "",
            Need::AnyToken => READER,
            Need::Scope(_, with) => with,
        };
        let Some(expected) = c.allowed else { continue };
        let reply = attempt(&s, &c, token).await;
        assert_eq!(
            reply.status.as_u16(),
            expected,
            "{} {} with the right token: {}",
            c.method,
            c.path,
            String::from_utf8_lossy(&reply.bytes)
        );
    }
}

#[tokio::test]
async fn a_malformed_authorization_header_is_401() {
    let s = start().await;
    for value in ["Basic dXNlcjpwYXNz", "Bearer", "Bearer   ", READER] {
        let reply = s
            .send(
                s.request(Method::GET, &format!("/v1/docs/{DOC}"))
                    .header("authorization", value),
            )
            .await;
        assert_challenge(&reply, value);
    }
}

// --- attribution ----------------------------------------------------------------------------

#[tokio::test]
async fn the_token_decides_the_agent() {
    let s = start().await;
    // HTTP: the header naming someone else is overridden.
    let reply = s
        .send(
            send(&s, WRITER, Method::PUT, &format!("/v1/docs/{DOC}"))
                .header("if-match", "*")
                .header("concord-agent", "mallory")
                .json(&json!({"n": 2})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(history_agents(&s, DOC).await.last().unwrap(), "alice");

    // WebSocket, the browser way: the token and a forged agent in the query.
    let url = format!(
        "ws://{}/v1/docs/{DOC}/ws?agent=mallory&access_token={WRITER}",
        s.addr()
    );
    let mut socket = Socket::connect(&url).await.expect("connects");
    socket
        .send(&ClientMessage::Subscribe { since: None })
        .await
        .unwrap();
    let patch = ClientMessage::Patch {
        id: json!("w1"),
        base: None,
        ops: json!([{"op": "add", "path": "/ws", "value": true}]),
        lock: None,
    };
    socket.send(&patch).await.unwrap();
    let change = loop {
        match recv(&mut socket).await {
            ServerMessage::Change(change) => break change,
            ServerMessage::Error(p) => panic!("refused: {p:?}"),
            _ => continue,
        }
    };
    assert_eq!(change.agent.as_deref(), Some("alice"));

    // Raw changes carry their own note, which history shows: they may name only the
    // token's agent.
    let (mut replica, _) = Document::load(Schema::default(), None, &[raw(&s, DOC).await]).unwrap();
    let base = replica.version();
    replica
        .put(None, &json!({"n": 2, "forged": true}), &meta("mallory"))
        .unwrap();
    let forged = replica.changes_since(Some(&base)).unwrap();
    let post = |bytes: Vec<u8>| {
        send(&s, WRITER, Method::POST, &format!("/v1/docs/{DOC}/changes"))
            .header("content-type", "application/octet-stream")
            .body(bytes)
    };
    let before = raw(&s, DOC).await;
    let refused = s.send(post(forged)).await.assert_problem(403);
    assert!(
        refused["detail"].as_str().unwrap().contains("mallory"),
        "{refused}"
    );
    assert_eq!(raw(&s, DOC).await, before);
    let (mut replica, _) = Document::load(Schema::default(), None, &[before]).unwrap();
    replica
        .put(None, &json!({"n": 2, "raw": true}), &meta("alice"))
        .unwrap();
    let own = replica.changes_since(Some(&base)).unwrap();
    assert_eq!(s.send(post(own)).await.status, StatusCode::OK);
    assert_eq!(history_agents(&s, DOC).await.last().unwrap(), "alice");

    // Sync, with a forged header: its own changes go through, someone else's close it.
    let mut sync = connect_with(
        &s,
        &format!("/v1/docs/{DOC}/sync"),
        WRITER,
        &[("concord-agent", "mallory")],
    )
    .await
    .expect("connects");
    let mut replica = Replica::new();
    replica.sync(&mut sync).await;
    let mut edited = replica.doc.read(None).unwrap();
    edited["synced"] = json!(true);
    replica.doc.put(None, &edited, &meta("alice")).unwrap();
    replica.sync(&mut sync).await;
    let (value, _) = read_as(&s, ADMIN, DOC).await;
    assert_eq!(value["synced"], json!(true));
    assert_eq!(history_agents(&s, DOC).await.last().unwrap(), "alice");
    let before = raw(&s, DOC).await;
    edited["forged"] = json!(true);
    replica.doc.put(None, &edited, &meta("mallory")).unwrap();
    let (code, reason) = replica.sync_until_closed(&mut sync).await;
    assert_eq!(code, 1008, "{reason}");
    assert!(reason.contains("mallory"), "{reason}");
    assert_eq!(raw(&s, DOC).await, before);
}

/// With authentication on, a lease is bound to its token's agent: another token that knows
/// the holder's lease token (admin's included, and whatever `Concord-Agent` it sends) can
/// neither write with it nor release it, and no refusal shows the holder's token.
#[tokio::test]
async fn a_lease_is_bound_to_the_agent_that_took_it() {
    let s = start().await;
    let created = s
        .send(
            send(&s, ADMIN, Method::POST, "/v1/docs")
                .json(&json!({"value": {"items": []}, "strategy": "lock"})),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let id = created.json()["id"].as_str().unwrap().to_owned();
    let lock_path = format!("/v1/docs/{id}/lock");
    let taken = s
        .send(send(&s, EVERYWHERE, Method::POST, &lock_path).json(&json!({"ttl_ms": 60000})))
        .await;
    assert_eq!(taken.status, StatusCode::OK);
    let token = taken.json()["token"].as_str().unwrap().to_owned();
    let write = |bearer: &str, lock: &str| {
        send(&s, bearer, Method::PATCH, &format!("/v1/docs/{id}"))
            .header("content-type", "application/json-patch+json")
            .header("concord-lock", lock.to_owned())
            // Naming the holder changes nothing: the token decides the agent.
            .header("concord-agent", "walt")
            .body(json!([{"op": "add", "path": "/items/-", "value": bearer}]).to_string())
    };
    let release = |bearer: &str, lock: &str| {
        send(&s, bearer, Method::DELETE, &lock_path)
            .header("concord-lock", lock.to_owned())
            .header("concord-agent", "walt")
    };
    let shows_token = |reply: &Reply| String::from_utf8_lossy(&reply.bytes).contains(&token);
    for refused in [
        s.send(write(ADMIN, &token)).await,
        s.send(release(ADMIN, &token)).await,
        s.send(write(ADMIN, "0")).await,
        s.send(release(ADMIN, "0")).await,
    ] {
        assert_eq!(
            refused.assert_problem(409)["type"],
            "urn:concord:problem:fenced"
        );
        assert!(!shows_token(&refused), "{:?}", refused.json());
    }
    let held = s
        .send(send(&s, ADMIN, Method::POST, &lock_path).json(&json!({"ttl_ms": 1000})))
        .await;
    held.assert_problem(423);
    assert!(!shows_token(&held), "{:?}", held.json());
    assert_eq!(read_as(&s, ADMIN, &id).await.0, json!({"items": []}));
    // The holder writes and releases.
    assert_eq!(
        s.send(write(EVERYWHERE, &token)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        s.send(release(EVERYWHERE, &token)).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        read_as(&s, ADMIN, &id).await.0,
        json!({"items": [EVERYWHERE]})
    );
}

/// With authentication on, a change is recorded as its token's agent and the server's
/// time: a raw change with no note, one whose message names "ops", over HTTP (with a forged
/// `Concord-Agent`) and over `/sync`; history shows alice and keeps the claims beside.
#[tokio::test]
async fn changes_are_recorded_as_the_token_that_sent_them() {
    let s = start().await;
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    };
    let from = now();
    let mut raw = raw(&s, DOC).await;
    let silent = foreign_change(&raw, None, 9_000_000_000_000);
    raw.extend_from_slice(&silent);
    let says_ops = foreign_change(&raw, Some("ops did this"), 1);
    raw.extend_from_slice(&says_ops);
    let posted = s
        .send(
            send(&s, WRITER, Method::POST, &format!("/v1/docs/{DOC}/changes"))
                .header("content-type", "application/octet-stream")
                .header("concord-agent", "ops")
                .body([silent, says_ops].concat()),
        )
        .await;
    assert_eq!(posted.status, StatusCode::OK);
    // Over sync: a change with no note.
    let mut sync = connect_with(&s, &format!("/v1/docs/{DOC}/sync"), WRITER, &[])
        .await
        .expect("connects");
    let mut replica = Replica::new();
    replica.sync(&mut sync).await;
    let synced = foreign_change(&replica.doc.changes_since(None).unwrap(), None, 2);
    replica.doc.apply_changes(&synced).unwrap();
    replica.sync(&mut sync).await;
    let to = now();
    let history = s
        .send(send(
            &s,
            ADMIN,
            Method::GET,
            &format!("/v1/docs/{DOC}/history"),
        ))
        .await
        .json();
    let changes = history["changes"].as_array().unwrap();
    let last: Vec<(Value, Value, Value)> = changes[changes.len() - 3..]
        .iter()
        .map(|c| {
            let time = c["time"].as_i64().unwrap();
            assert!((from..=to).contains(&time), "{c}");
            (
                c["agent"].clone(),
                c["claimed_agent"].clone(),
                c["claimed_time"].clone(),
            )
        })
        .collect();
    assert_eq!(
        last,
        [
            (json!("alice"), json!(null), json!(9_000_000_000_000i64)),
            (json!("alice"), json!(null), json!(1)),
            (json!("alice"), json!(null), json!(2)),
        ]
    );
    // The document was made by the admin token's agent.
    assert_eq!(changes[0]["agent"], "ops");
}

async fn read_as(s: &TestServer, token: &str, id: &str) -> (Value, String) {
    let reply = s
        .send(send(s, token, Method::GET, &format!("/v1/docs/{id}")))
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let json = reply.json();
    (
        json["value"].clone(),
        json["version"].as_str().unwrap().to_owned(),
    )
}

// --- where tokens may come from ---------------------------------------------------------------

#[tokio::test]
async fn access_token_is_taken_only_where_browsers_need_it() {
    let s = start().await;
    // Not on plain requests: a token in a URL ends up in logs.
    let reply = s
        .send(s.request(
            Method::GET,
            &format!("/v1/docs/{DOC}?access_token={READER}"),
        ))
        .await;
    assert_challenge(&reply, "query token on a plain request");
    // On event streams, yes (EventSource cannot set headers).
    let mut events = SseStream::open(
        &s,
        &format!("/v1/docs/{DOC}/events?access_token={READER}"),
        &[],
    )
    .await;
    let first = tokio::time::timeout(PATIENCE, events.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.event, "snapshot");
    let feed = s
        .request(Method::GET, &format!("/v1/events?access_token={READER}"))
        .send()
        .await
        .unwrap();
    assert_eq!(feed.status(), StatusCode::FORBIDDEN);
    let feed = s
        .request(Method::GET, &format!("/v1/events?access_token={ADMIN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(feed.status(), StatusCode::OK);
}

#[tokio::test]
async fn without_auth_an_access_token_is_ignored() {
    let s = TestServer::start().await;
    let (id, _) = s.create(json!({"value": {"n": 1}})).await;
    // The handlers know no access_token parameter; it is taken out before them.
    let mut events =
        SseStream::open(&s, &format!("/v1/docs/{id}/events?access_token=x"), &[]).await;
    let first = tokio::time::timeout(PATIENCE, events.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.event, "snapshot");
    // And the agent is whoever the request says.
    let reply = s
        .put(&id, "mallory", &s.get(&id).await.1, &json!({"n": 2}))
        .await;
    assert_eq!(reply.status, StatusCode::OK);
}

/// A restart keeps the token file: the restarted server still refuses requests without a
/// token and still knows the tokens.
#[tokio::test]
async fn a_restarted_server_still_requires_its_tokens() {
    let mut s = start().await;
    s.restart().await;
    let path = format!("/v1/docs/{DOC}");
    let anonymous = s.send(send(&s, "", Method::GET, &path)).await;
    anonymous.assert_problem(401);
    let reader = s.send(send(&s, READER, Method::GET, &path)).await;
    assert_eq!(reader.status, StatusCode::OK);
    assert_eq!(reader.json()["value"], json!({"n": 1}));
    let write = s
        .send(
            send(&s, READER, Method::PUT, &path)
                .header("if-match", "*")
                .json(&json!({"n": 2})),
        )
        .await;
    write.assert_problem(403);
}

#[tokio::test]
async fn auth_off_is_refused_on_an_address_that_is_not_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let config = |adjust: &dyn Fn(&mut Config)| {
        let mut config = Config {
            addr: "0.0.0.0:0".parse().unwrap(),
            data: dir.path().to_path_buf(),
            ..Config::default()
        };
        adjust(&mut config);
        config
    };
    match Server::start(config(&|_| {})).await {
        Err(e @ StartError::Unprotected { .. }) => {
            assert!(e.to_string().contains("--insecure-no-auth"), "{e}")
        }
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("started without auth on 0.0.0.0"),
    }
    let server = Server::start(config(&|c| c.insecure_no_auth = true))
        .await
        .expect("the operator insisted");
    server.shutdown().await.unwrap();
    let server = Server::start(config(&|c| c.auth = Some(Arc::new(tokens()))))
        .await
        .expect("auth on");
    server.shutdown().await.unwrap();
}

// --- per message: WebSocket JSON -----------------------------------------------------------

#[tokio::test]
async fn a_reader_follows_a_document_live_but_cannot_write_it() {
    let s = start_with(|config| config.live.max_refused = 3).await;
    let before = raw(&s, DOC).await;
    let url = format!("ws://{}/v1/docs/{DOC}/ws?access_token={READER}", s.addr());
    let mut socket = Socket::connect(&url).await.expect("a reader may connect");
    socket
        .send(&ClientMessage::Subscribe { since: None })
        .await
        .unwrap();
    assert!(matches!(
        recv(&mut socket).await,
        ServerMessage::Snapshot { .. }
    ));
    assert!(matches!(
        recv(&mut socket).await,
        ServerMessage::Subscribed { .. }
    ));
    let patch = |id: Value| ClientMessage::Patch {
        id,
        base: None,
        ops: json!([{"op": "replace", "path": "/n", "value": 99}]),
        lock: None,
    };
    socket.send(&patch(json!("w1"))).await.unwrap();
    match recv(&mut socket).await {
        ServerMessage::Error(problem) => {
            assert_eq!(problem.status, 403);
            assert_eq!(problem.id, Some(json!("w1")));
            assert_eq!(problem.kind(), "forbidden");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(raw(&s, DOC).await, before);
    // What others write still arrives.
    let reply = s
        .send(
            send(&s, WRITER, Method::PUT, &format!("/v1/docs/{DOC}"))
                .header("if-match", "*")
                .json(&json!({"n": 2})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    match recv(&mut socket).await {
        ServerMessage::Change(change) => assert_eq!(change.agent.as_deref(), Some("alice")),
        other => panic!("expected the writer's change, got {other:?}"),
    }
    let put = ClientMessage::Put {
        id: json!(2),
        base: Some("*".into()),
        value: json!({"n": 100}),
        lock: None,
    };
    socket.send(&put).await.unwrap();
    match recv(&mut socket).await {
        ServerMessage::Error(problem) => {
            assert_eq!((problem.status, problem.id), (403, Some(json!(2))))
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // The third refusal in a row closes: the client is not listening.
    socket.send(&patch(json!("w3"))).await.unwrap();
    match tokio::time::timeout(PATIENCE, socket.recv())
        .await
        .unwrap()
        .unwrap()
    {
        Frame::Close { code, reason } => {
            assert_eq!(code, 1008, "{reason}");
            assert!(reason.contains("may only read"), "{reason}");
        }
        other => panic!("expected the close, got {other:?}"),
    }
    let reply = s
        .send(send(&s, READER, Method::GET, &format!("/v1/docs/{DOC}")))
        .await;
    assert_eq!(reply.json()["value"], json!({"n": 2}));
}

/// Whether a message writes is decided by its type: only `subscribe` reads. A type the server
/// does not know (one added later, say) is refused to a reader as a write, as is a malformed
/// write; a message with no type at all is no message, and invalid.
#[tokio::test]
async fn a_reader_is_refused_every_message_type_but_subscribe() {
    let s = start().await;
    let before = raw(&s, DOC).await;
    let url = format!("ws://{}/v1/docs/{DOC}/ws?access_token={READER}", s.addr());
    let mut socket = Socket::connect(&url).await.expect("a reader may connect");
    let writes = [
        (r#"{"type": "delete", "id": "d1"}"#, Some(json!("d1"))),
        (
            r#"{"type": "restore", "id": 7, "lost": "x"}"#,
            Some(json!(7)),
        ),
        (r#"{"type": "patch", "id": "p1"}"#, Some(json!("p1"))),
        (r#"{"type": "put", "value": {"n": 5}}"#, None),
    ];
    for (text, id) in &writes {
        socket.send_text(*text).await.unwrap();
        match recv(&mut socket).await {
            ServerMessage::Error(problem) => {
                assert_eq!(
                    (problem.status, &problem.id),
                    (403, id),
                    "{text}: {problem:?}"
                );
                assert!(problem.detail.contains("not write"), "{text}: {problem:?}");
            }
            other => panic!("{text}: expected a refusal, got {other:?}"),
        }
    }
    socket
        .send(&ClientMessage::Subscribe { since: None })
        .await
        .unwrap();
    assert!(matches!(
        recv(&mut socket).await,
        ServerMessage::Snapshot { .. }
    ));
    assert!(matches!(
        recv(&mut socket).await,
        ServerMessage::Subscribed { .. }
    ));
    socket.send_text(r#"{"id": "t"}"#).await.unwrap();
    match recv(&mut socket).await {
        ServerMessage::Error(problem) => assert_eq!(problem.status, 400, "{problem:?}"),
        other => panic!("expected an invalid message, got {other:?}"),
    }
    assert_eq!(raw(&s, DOC).await, before);

    // From a writer, the unknown type is what it is: unknown.
    let url = format!("ws://{}/v1/docs/{DOC}/ws?access_token={WRITER}", s.addr());
    let mut socket = Socket::connect(&url).await.expect("a writer may connect");
    socket.send_text(writes[0].0).await.unwrap();
    match recv(&mut socket).await {
        ServerMessage::Error(problem) => {
            assert_eq!(problem.status, 400, "{problem:?}");
            assert!(problem.detail.contains("unknown variant"), "{problem:?}");
        }
        other => panic!("expected an unknown type, got {other:?}"),
    }
}

// --- per message: binary sync ------------------------------------------------------------------

#[tokio::test]
async fn a_reader_on_sync_gets_the_document_but_cannot_send_changes() {
    let s = start().await;
    let before = raw(&s, DOC).await;
    let mut socket = connect_with(&s, &format!("/v1/docs/{DOC}/sync"), READER, &[])
        .await
        .expect("a reader may sync");
    let mut replica = Replica::new();
    replica.sync(&mut socket).await;
    assert_eq!(replica.doc.read(None).unwrap(), json!({"n": 1}));
    replica
        .doc
        .put(None, &json!({"n": 1, "mine": true}), &meta("rita"))
        .unwrap();
    let (code, reason) = replica.sync_until_closed(&mut socket).await;
    assert_eq!(code, 1008, "{reason}");
    assert!(reason.contains("not write"), "{reason}");
    assert_eq!(raw(&s, DOC).await, before);
}

#[tokio::test]
async fn refusals_before_the_upgrade_pass_through_the_relay() {
    let s = start().await;
    // A reader of every document is relayed; the handler's 404 reaches it unchanged.
    let missing = "44444444-4444-4444-8444-444444444444";
    match connect_with(&s, &format!("/v1/docs/{missing}/sync"), READ_ALL, &[]).await {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 404);
            let body = response.body().clone().unwrap_or_default();
            let problem: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(problem["type"], "urn:concord:problem:not-found");
        }
        other => panic!("expected a 404, got {other:?}"),
    }
    // And a stranger is refused before any of it.
    match connect_with(&s, &format!("/v1/docs/{DOC}/ws"), STRANGER, &[]).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status().as_u16(), 403),
        other => panic!("expected a 403, got {other:?}"),
    }
}

// --- per message: automerge-repo ------------------------------------------------------------

/// A document from its raw changes.
fn load(changes: &[u8]) -> Document {
    Document::load(Schema::default(), None, &[changes.to_vec()])
        .unwrap()
        .0
}

/// `changes` (a document's raw changes) with `edit` made to them.
fn edited(changes: &[u8], edit: impl FnOnce(&mut Document)) -> Document {
    let mut doc = load(changes);
    edit(&mut doc);
    doc
}

/// The first sync message `replica` sends to `server` that carries changes, after the rounds
/// it takes to learn what `server` lacks: given a copy of what the real server has, a message
/// that carries changes from the very first message on.
fn carrying_changes(mut server: Document, mut replica: Document) -> Vec<u8> {
    let (mut on_server, mut on_replica) = (SyncState::new(), SyncState::new());
    for _ in 0..10 {
        let message = replica
            .generate_sync_message(&mut on_replica)
            .expect("the replica has something to say");
        if message.has_changes() {
            return message.encode();
        }
        server
            .receive_sync_message(&mut on_server, message)
            .unwrap();
        if let Some(reply) = server.generate_sync_message(&mut on_server) {
            replica
                .receive_sync_message(&mut on_replica, reply)
                .unwrap();
        }
    }
    panic!("the replica never sent its changes");
}

/// Joins `/v1/repo` as `id`, with `token`.
async fn join(s: &TestServer, token: &str, id: &str) -> RepoPeer {
    let socket = connect_with(s, "/v1/repo", token, &[])
        .await
        .expect("joins");
    RepoPeer::join(socket, id).await.0
}

/// The first sync message of a replica that has nothing.
fn first_request() -> Vec<u8> {
    let mut replica = Replica::new();
    replica
        .doc
        .generate_sync_message(&mut replica.server)
        .unwrap()
        .encode()
}

#[tokio::test]
async fn repo_peers_see_only_what_their_tokens_allow() {
    let s = start().await;
    let doc = document_id(DOC.parse().unwrap());
    let before = raw(&s, DOC).await;

    // A document the token may not read does not exist for it.
    let mut stranger = join(&s, STRANGER, "stranger").await;
    stranger.send_sync("request", &doc, &first_request()).await;
    match stranger.receive().await {
        Incoming::Ignored { kind } => assert_eq!(kind, "doc-unavailable"),
        other => panic!("expected doc-unavailable, got {other:?}"),
    }

    // A reader gets it...
    let mut reader = join(&s, READER, "reader").await;
    let mut replica = Replica::new();
    let data = replica
        .doc
        .generate_sync_message(&mut replica.server)
        .unwrap();
    reader.send_sync("request", &doc, &data.encode()).await;
    loop {
        match reader.receive().await {
            Incoming::Sync { data, .. } => {
                let message = SyncMessage::decode(&data).unwrap();
                replica
                    .doc
                    .receive_sync_message(&mut replica.server, message)
                    .unwrap();
                if replica.doc.read(None).unwrap() == json!({"n": 1}) {
                    break;
                }
                if let Some(reply) = replica.doc.generate_sync_message(&mut replica.server) {
                    reader.send_sync("sync", &doc, &reply.encode()).await;
                }
            }
            other => panic!("expected a sync message, got {other:?}"),
        }
    }
    // ...but sending changes closes its connection.
    replica
        .doc
        .put(None, &json!({"n": 7}), &meta("rita"))
        .unwrap();
    let change = replica
        .doc
        .generate_sync_message(&mut replica.server)
        .unwrap();
    reader.send_sync("sync", &doc, &change.encode()).await;
    // Whether that message carries the change depends on what the server's last message
    // said it has; if it did not, the server asks, and the reader goes on syncing until the
    // change reaches the server and the server closes the connection.
    let (code, reason) = loop {
        match next(&mut reader.socket).await {
            Some(Message::Close(Some(frame))) => {
                break (u16::from(frame.code), frame.reason.as_str().to_owned())
            }
            Some(Message::Binary(bytes)) => {
                if let Ok(Incoming::Sync { data, .. }) = Incoming::decode(&bytes) {
                    let message = SyncMessage::decode(&data).unwrap();
                    replica
                        .doc
                        .receive_sync_message(&mut replica.server, message)
                        .unwrap();
                    if let Some(reply) = replica.doc.generate_sync_message(&mut replica.server) {
                        reader.send_sync("sync", &doc, &reply.encode()).await;
                    }
                }
            }
            Some(_) => continue,
            None => panic!("closed without a reason"),
        }
    };
    assert_eq!(code, 1008, "{reason}");
    assert_eq!(raw(&s, DOC).await, before);

    // Offering a document the server lacks would create it: admin only.
    let new_id = "55555555-5555-4555-8555-555555555555";
    let new_doc = document_id(new_id.parse().unwrap());
    let mut writer = join(&s, EVERYWHERE, "writer").await;
    let (offered, _) =
        Document::create(&json!({"offered": true}), Schema::default(), &meta("walt")).unwrap();
    let mut state = SyncState::new();
    let offer = offered.generate_sync_message(&mut state).unwrap();
    writer.send_sync("sync", &new_doc, &offer.encode()).await;
    match writer.receive().await {
        Incoming::Ignored { kind } => assert_eq!(kind, "doc-unavailable"),
        other => panic!("expected doc-unavailable, got {other:?}"),
    }
    let reply = s
        .send(send(&s, ADMIN, Method::GET, &format!("/v1/docs/{new_id}")))
        .await;
    reply.assert_problem(404);
}

#[tokio::test]
async fn a_reader_on_repo_cannot_offer_changes_to_a_document_it_reads() {
    let s = start().await;
    let before = raw(&s, DOC).await;
    let doc = document_id(DOC.parse().unwrap());
    let mut reader = join(&s, READER, "reader").await;
    // Its very first message about the document carries a change.
    let rita = edited(&before, |doc| {
        doc.put(None, &json!({"n": 7}), &meta("rita")).unwrap();
    });
    let offer = carrying_changes(load(&before), rita);
    reader.send_sync("sync", &doc, &offer).await;
    let (code, reason) = reader.closed().await;
    assert_eq!(code, 1008, "{reason}");
    assert!(reason.contains("not write"), "{reason}");
    assert_eq!(raw(&s, DOC).await, before);
}

/// Write is checked per document: one connection may write one document and only read
/// another.
#[tokio::test]
async fn a_repo_peer_writes_only_the_documents_its_token_writes() {
    let s = start().await;
    let doc = document_id(DOC.parse().unwrap());
    let other = document_id(OTHER.parse().unwrap());
    let before = raw(&s, DOC).await;
    let mut peer = join(&s, MIXED, "mixed").await;
    let mut replica = Replica::new();
    peer.sync(&other, &mut replica, "sync").await;
    replica
        .doc
        .put(None, &json!({"n": 1, "by": "wendy"}), &meta("wendy"))
        .unwrap();
    peer.sync(&other, &mut replica, "sync").await;
    let (value, _) = read_as(&s, ADMIN, OTHER).await;
    assert_eq!(value, json!({"n": 1, "by": "wendy"}));
    assert_eq!(history_agents(&s, OTHER).await.last().unwrap(), "wendy");
    // The same connection's changes to a document the token only reads close it.
    let wendy = edited(&before, |doc| {
        doc.put(None, &json!({"n": 8}), &meta("wendy")).unwrap();
    });
    let offer = carrying_changes(load(&before), wendy);
    peer.send_sync("sync", &doc, &offer).await;
    let (code, reason) = peer.closed().await;
    assert_eq!(code, 1008, "{reason}");
    assert!(
        reason.contains("not write") && reason.contains(DOC),
        "{reason}"
    );
    assert_eq!(raw(&s, DOC).await, before);
}

/// A sync message may carry changes the document has, others' among them (Automerge sends
/// the whole document when that is shorter): sending them back forges nothing. A change new
/// to the document that names another agent does.
#[tokio::test]
async fn a_repo_peer_may_send_back_others_changes_but_not_forge_one() {
    let s = start().await;
    let other = document_id(OTHER.parse().unwrap());
    let before = raw(&s, OTHER).await;
    let mut peer = join(&s, STRANGER, "sam").await;
    // Every change of the document, the admin's included, and one of sam's.
    let sam = edited(&before, |doc| {
        doc.put(None, &json!({"n": 2}), &meta("sam")).unwrap();
    });
    let empty = || Document::empty(Schema::default()).unwrap();
    peer.send_sync("sync", &other, &carrying_changes(empty(), sam))
        .await;
    match peer.receive().await {
        Incoming::Sync { .. } => {}
        other => panic!("expected the server's answer, got {other:?}"),
    }
    assert_eq!(read_as(&s, ADMIN, OTHER).await.0, json!({"n": 2}));
    assert_eq!(history_agents(&s, OTHER).await.last().unwrap(), "sam");
    // The same with a change that names mallory.
    let before = raw(&s, OTHER).await;
    let forged = edited(&before, |doc| {
        doc.put(None, &json!({"n": 3}), &meta("mallory")).unwrap();
    });
    peer.send_sync("sync", &other, &carrying_changes(empty(), forged))
        .await;
    let (code, reason) = peer.closed().await;
    assert_eq!(code, 1008, "{reason}");
    assert!(reason.contains("mallory"), "{reason}");
    assert_eq!(raw(&s, OTHER).await, before);
}

#[tokio::test]
async fn ephemeral_messages_about_a_document_need_read() {
    let s = start().await;
    let doc = document_id(DOC.parse().unwrap());
    let mut reader = join(&s, READER, "reader").await;
    reader.sync(&doc, &mut Replica::new(), "sync").await;
    // A stranger's message about the document is dropped. Its next message is answered
    // only once that one was handled.
    let mut stranger = join(&s, STRANGER, "stranger").await;
    stranger.send_ephemeral(&doc, b"from the stranger").await;
    stranger.send_sync("request", &doc, &first_request()).await;
    match stranger.receive().await {
        Incoming::Ignored { kind } => assert_eq!(kind, "doc-unavailable"),
        other => panic!("expected doc-unavailable, got {other:?}"),
    }
    // So the first ephemeral message the reader gets is the writer's, sent after it.
    let mut writer = join(&s, WRITER, "writer").await;
    writer.send_ephemeral(&doc, b"from the writer").await;
    match reader.receive().await {
        Incoming::Ephemeral(ephemeral) => assert_eq!(ephemeral.data, b"from the writer"),
        other => panic!("expected the writer's ephemeral message, got {other:?}"),
    }
}

/// The Rust agent client carries its token on HTTP and on its WebSocket subscriptions.
#[tokio::test]
async fn the_rust_client_carries_its_token() {
    use concord_client::{Client, ClientError, Event, WriteOptions};
    let s = start().await;
    let doc = uuid::Uuid::parse_str(DOC).unwrap();
    let base = format!("http://{}", s.addr());
    // Without a token: 401.
    let anonymous = Client::new(base.clone(), "nobody");
    match anonymous.get(doc).await {
        Err(ClientError::Problem(problem)) => assert_eq!(problem.status, 401),
        other => panic!("expected a 401, got {other:?}"),
    }
    // With one: it writes, attributed to the token's agent whatever name it claims.
    let client = Client::new(base, "mallory").with_token(WRITER);
    let mut subscription = client.subscribe(doc, None).await.expect("subscribes");
    assert!(matches!(
        subscription.next().await.unwrap(),
        Event::Snapshot { .. }
    ));
    client
        .patch(
            doc,
            None,
            &json!([{"op": "add", "path": "/by_client", "value": 1}]),
            &WriteOptions::default(),
        )
        .await
        .expect("writes");
    match subscription.next().await.unwrap() {
        Event::Change(change) => assert_eq!(change.agent.as_deref(), Some("alice")),
        other => panic!("expected a change, got {other:?}"),
    }
    assert_eq!(history_agents(&s, DOC).await.last().unwrap(), "alice");
}
