//! A catalogue of bad requests over every endpoint: each is answered with a 4xx
//! problem+json, the server keeps serving, and the document is unchanged byte for byte.

#[path = "binary.rs"]
mod binary;

use concord_tests::TestServer;
use reqwest::Method;
use serde_json::json;

/// One bad request: method, path (`{id}` is the test document, `{v}` its version), headers,
/// body, and the expected status.
struct Case {
    name: &'static str,
    method: Method,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    body: Vec<u8>,
    status: u16,
}

fn case(
    name: &'static str,
    method: Method,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    body: impl Into<Vec<u8>>,
    status: u16,
) -> Case {
    Case {
        name,
        method,
        path,
        headers,
        body: body.into(),
        status,
    }
}

const JSON: &[(&str, &str)] = &[("content-type", "application/json"), ("if-match", "*")];
const PATCH: &[(&str, &str)] = &[("content-type", "application/json-patch+json")];
const MERGE: &[(&str, &str)] = &[("content-type", "application/merge-patch+json")];
const RAW: &[(&str, &str)] = &[("content-type", "application/octet-stream")];
const NONE: &[(&str, &str)] = &[];
const FORM: &[(&str, &str)] = &[("content-type", "application/x-www-form-urlencoded")];

/// One operation more than a JSON Patch may hold, each of which alone would apply.
fn too_long_patch() -> Vec<u8> {
    let op = json!({"op": "add", "path": "/l/-", "value": 1});
    serde_json::to_vec(&vec![op; concord_core::patch::MAX_PATCH_OPS + 1]).unwrap()
}

fn catalogue() -> Vec<Case> {
    use Method as M;
    let deep = format!("{}1{}", "[".repeat(200_000), "]".repeat(200_000));
    let huge = format!(
        "{{\"value\": {{\"s\": \"{}\"}}}}",
        "x".repeat(9 * 1024 * 1024)
    );
    vec![
        // Create.
        case("create: malformed JSON", M::POST, "/v1/docs", JSON, "{not json", 400),
        case("create: truncated JSON", M::POST, "/v1/docs", JSON, r#"{"value": {"a": "#, 400),
        case("create: invalid UTF-8", M::POST, "/v1/docs", JSON, vec![b'{', 0xff, 0xfe, b'}'], 400),
        case("create: wrong content type", M::POST, "/v1/docs", &[("content-type", "text/plain")], "{}", 415),
        case("create: value is an array", M::POST, "/v1/docs", JSON, r#"{"value": [1]}"#, 422),
        case("create: value is a string", M::POST, "/v1/docs", JSON, r#"{"value": "x"}"#, 422),
        case("create: body is an array", M::POST, "/v1/docs", JSON, "[]", 422),
        case("create: unknown field", M::POST, "/v1/docs", JSON, r#"{"valeu": {}}"#, 422),
        case("create: unknown strategy", M::POST, "/v1/docs", JSON, r#"{"strategy": "yolo"}"#, 422),
        case("create: strategy of wrong type", M::POST, "/v1/docs", JSON, r#"{"strategy": 3}"#, 422),
        case("create: malformed id", M::POST, "/v1/docs", JSON, r#"{"id": "not-a-uuid"}"#, 422),
        case("create: existing id", M::POST, "/v1/docs", JSON, r#"{"id": "{id}"}"#, 409),
        case("create: bad text pattern", M::POST, "/v1/docs", JSON, r#"{"text": ["no-slash"]}"#, 400),
        case("create: bad counter pattern", M::POST, "/v1/docs", JSON, r#"{"counters": ["/a~9"]}"#, 400),
        case("create: counter not an integer", M::POST, "/v1/docs", JSON, r#"{"value": {"n": 1.5}, "counters": ["/n"]}"#, 422),
        case("create: deep nesting", M::POST, "/v1/docs", JSON, deep.clone(), 400),
        case("create: body over the limit", M::POST, "/v1/docs", JSON, huge, 413),
        // Edit: a patch longer than one write may make (concord_core::patch::MAX_PATCH_OPS).
        case("patch: more operations than the limit", M::PATCH, "/v1/docs/{id}", PATCH, too_long_patch(), 413),
        // Read.
        case("read: malformed id", M::GET, "/v1/docs/not-a-uuid", NONE, "", 400),
        case("read: path trick in id", M::GET, "/v1/docs/..%2F..%2Fetc%2Fpasswd", NONE, "", 400),
        case("read: unknown document", M::GET, "/v1/docs/00000000-0000-4000-8000-000000000000", NONE, "", 404),
        case("read: malformed version", M::GET, "/v1/docs/{id}?at=xyz", NONE, "", 400),
        case("read: unknown version", M::GET, "/v1/docs/{id}?at=0000000000000000000000000000000000000000000000000000000000000000", NONE, "", 404),
        case("read: malformed pointer", M::GET, "/v1/docs/{id}?path=a/b", NONE, "", 400),
        case("read: missing path", M::GET, "/v1/docs/{id}?path=/nope", NONE, "", 404),
        case("read: bad conflicts flag", M::GET, "/v1/docs/{id}?conflicts=maybe", NONE, "", 400),
        case("read: unknown query parameter", M::GET, "/v1/docs/{id}?colour=red", NONE, "", 400),
        // PUT.
        case("put: no If-Match", M::PUT, "/v1/docs/{id}", &[("content-type", "application/json")], "{}", 428),
        case("put: malformed If-Match", M::PUT, "/v1/docs/{id}", &[("content-type", "application/json"), ("if-match", "\"zz\"")], "{}", 400),
        case("put: unknown If-Match", M::PUT, "/v1/docs/{id}", &[("content-type", "application/json"), ("if-match", "\"1111111111111111111111111111111111111111111111111111111111111111\"")], "{}", 412),
        case("put: malformed JSON", M::PUT, "/v1/docs/{id}", JSON, "{\"a\":", 400),
        case("put: root not an object", M::PUT, "/v1/docs/{id}", JSON, "[1, 2]", 422),
        case("put: null root", M::PUT, "/v1/docs/{id}", JSON, "null", 422),
        case("put: wrong content type", M::PUT, "/v1/docs/{id}", &[("content-type", "text/csv"), ("if-match", "*")], "a,b", 415),
        case("put: deep nesting", M::PUT, "/v1/docs/{id}", JSON, format!("{{\"a\": {deep}}}"), 400),
        case("put: unknown document", M::PUT, "/v1/docs/00000000-0000-4000-8000-000000000000", JSON, "{}", 404),
        case("put: bad agent header", M::PUT, "/v1/docs/{id}", &[("content-type", "application/json"), ("if-match", "*"), ("concord-agent", "")], "{}", 400),
        case("put: agent header with a tab", M::PUT, "/v1/docs/{id}", &[("content-type", "application/json"), ("if-match", "*"), ("concord-agent", "ann\tbob")], "{}", 400),
        case("put: counter gets a float", M::PUT, "/v1/docs/{id}", JSON, r#"{"n": 1.5, "l": [], "t": "", "o": {"k": "v"}}"#, 422),
        // PATCH.
        case("patch: test fails", M::PATCH, "/v1/docs/{id}", PATCH, r#"[{"op": "add", "path": "/x", "value": 1}, {"op": "test", "path": "/o/k", "value": "other"}]"#, 409),
        case("patch: path does not exist", M::PATCH, "/v1/docs/{id}", PATCH, r#"[{"op": "replace", "path": "/missing", "value": 1}]"#, 409),
        case("patch: remove missing", M::PATCH, "/v1/docs/{id}", PATCH, r#"[{"op": "remove", "path": "/l/7"}]"#, 409),
        case("patch: index past the end", M::PATCH, "/v1/docs/{id}", PATCH, r#"[{"op": "add", "path": "/l/5", "value": 1}]"#, 409),
        case("patch: not an index", M::PATCH, "/v1/docs/{id}", PATCH, r#"[{"op": "add", "path": "/l/x", "value": 1}]"#, 422),
        case("patch: child of a scalar", M::PATCH, "/v1/docs/{id}", PATCH, r#"[{"op": "add", "path": "/n/x", "value": 1}]"#, 422),
        case("patch: unknown op", M::PATCH, "/v1/docs/{id}", PATCH, r#"[{"op": "frobnicate", "path": "/n"}]"#, 400),
        case("patch: missing value", M::PATCH, "/v1/docs/{id}", PATCH, r#"[{"op": "add", "path": "/n"}]"#, 400),
        // RFC 6902 §4: unknown members are ignored (tests/exact.rs), a missing one is not.
        case("patch: missing path beside an unknown member", M::PATCH, "/v1/docs/{id}", PATCH, r#"[{"op": "remove", "why": 1}]"#, 400),
        case("patch: not an array", M::PATCH, "/v1/docs/{id}", PATCH, r#"{"op": "remove", "path": "/n"}"#, 400),
        case("patch: bad pointer", M::PATCH, "/v1/docs/{id}", PATCH, r#"[{"op": "remove", "path": "n"}]"#, 400),
        case("patch: remove the root", M::PATCH, "/v1/docs/{id}", PATCH, r#"[{"op": "remove", "path": ""}]"#, 400),
        case("patch: increment a plain number", M::PATCH, "/v1/docs/{id}", PATCH, r#"[{"op": "increment", "path": "/o/k", "value": 1}]"#, 422),
        case("patch: increment by a float", M::PATCH, "/v1/docs/{id}", PATCH, r#"[{"op": "increment", "path": "/n", "value": 0.5}]"#, 400),
        case("patch: splice outside the text", M::PATCH, "/v1/docs/{id}", PATCH, r#"[{"op": "splice", "path": "/t", "pos": 99, "insert": "x"}]"#, 422),
        case("patch: splice an atomic string", M::PATCH, "/v1/docs/{id}", PATCH, r#"[{"op": "splice", "path": "/o/k", "pos": 0, "insert": "x"}]"#, 422),
        case("patch: negative splice position", M::PATCH, "/v1/docs/{id}", PATCH, r#"[{"op": "splice", "path": "/t", "pos": -1, "insert": "x"}]"#, 400),
        case("patch: no content type", M::PATCH, "/v1/docs/{id}", NONE, r#"[]"#, 415),
        case("patch: plain JSON content type", M::PATCH, "/v1/docs/{id}", &[("content-type", "application/json")], r#"[]"#, 415),
        case("patch: malformed JSON", M::PATCH, "/v1/docs/{id}", PATCH, "[{", 400),
        case("patch: unknown If-Match", M::PATCH, "/v1/docs/{id}", &[("content-type", "application/json-patch+json"), ("if-match", "\"2222222222222222222222222222222222222222222222222222222222222222\"")], "[]", 412),
        case("merge patch: not an object", M::PATCH, "/v1/docs/{id}", MERGE, "[1]", 422),
        case("merge patch: counter gets a float", M::PATCH, "/v1/docs/{id}", MERGE, r#"{"n": 2.5}"#, 422),
        // Raw changes.
        case("changes: garbage bytes", M::POST, "/v1/docs/{id}/changes", RAW, b"\x00\x01garbage".to_vec(), 400),
        case("changes: magic then garbage", M::POST, "/v1/docs/{id}/changes", RAW, vec![0x85, 0x6f, 0x4a, 0x83, 1, 2, 3, 4, 1, 0xff, 0xff], 400),
        case("changes: empty body", M::POST, "/v1/docs/{id}/changes", RAW, "", 400),
        // Found by fuzzing: an op counter past 32 bits made Automerge's decoder panic (500).
        case("changes: op counter past u32", M::POST, "/v1/docs/{id}/changes", RAW, include_bytes!("fuzz-regressions/stored_bytes/op-counter-past-u32").to_vec(), 400),
        case("changes: JSON body", M::POST, "/v1/docs/{id}/changes", &[("content-type", "application/json")], "{}", 415),
        case("changes: malformed since", M::GET, "/v1/docs/{id}/changes?since=abc", NONE, "", 400),
        case("changes: unknown since", M::GET, "/v1/docs/{id}/changes?since=3333333333333333333333333333333333333333333333333333333333333333", NONE, "", 404),
        // Elsewhere.
        case("history: malformed id", M::GET, "/v1/docs/x/history", NONE, "", 400),
        case("delete: unknown document", M::DELETE, "/v1/docs/00000000-0000-4000-8000-000000000000", NONE, "", 404),
        case("unknown route", M::GET, "/v2/everything", NONE, "", 404),
        case("wrong method", M::POST, "/v1/docs/{id}/history", NONE, "", 405),
        // No body type is guessed, and none is taken that the operation does not name.
        case("create: a body without a content type", M::POST, "/v1/docs", NONE, r#"{"value": {"a": 1}}"#, 415),
        case("create: an empty form", M::POST, "/v1/docs", FORM, "", 415),
        case("create: a form", M::POST, "/v1/docs", FORM, "value=1", 415),
        case("create: an empty text/plain body", M::POST, "/v1/docs", &[("content-type", "text/plain")], "", 415),
        case("create: two content types", M::POST, "/v1/docs", &[("content-type", "application/json"), ("content-type", "application/json")], "{}", 415),
        case("put: no content type", M::PUT, "/v1/docs/{id}", &[("if-match", "*")], r#"{"n": 1, "l": [], "t": "", "o": {}}"#, 415),
        case("put: multipart", M::PUT, "/v1/docs/{id}", &[("content-type", "multipart/form-data; boundary=x"), ("if-match", "*")], "--x--", 415),
        case("changes: no content type", M::POST, "/v1/docs/{id}/changes", NONE, b"\x00\x01garbage".to_vec(), 415),
        case("merge patch: text/plain", M::PATCH, "/v1/docs/{id}", &[("content-type", "text/plain")], r#"{"x": 1}"#, 415),
        // If-Match is entity-tag syntax (RFC 9110): quoted, terminated, every line of it.
        case("put: unquoted If-Match", M::PUT, "/v1/docs/{id}", &[("content-type", "application/json"), ("if-match", "1111111111111111111111111111111111111111111111111111111111111111")], "{}", 400),
        case("put: unterminated If-Match", M::PUT, "/v1/docs/{id}", &[("content-type", "application/json"), ("if-match", "\"1111111111111111111111111111111111111111111111111111111111111111")], "{}", 400),
        case("put: a second, unquoted If-Match line", M::PUT, "/v1/docs/{id}", &[("content-type", "application/json"), ("if-match", "\"1111111111111111111111111111111111111111111111111111111111111111\""), ("if-match", "2222222222222222222222222222222222222222222222222222222222222222")], "{}", 400),
        // A key given twice in one object.
        case("create: a key twice", M::POST, "/v1/docs", JSON, r#"{"value": {"a": 1}, "value": {"b": 2}}"#, 400),
        case("put: a key twice, deep", M::PUT, "/v1/docs/{id}", JSON, r#"{"n": 1, "l": [], "t": "", "o": {"k": "v", "k": "w"}}"#, 400),
        case("patch: an op member twice", M::PATCH, "/v1/docs/{id}", PATCH, r#"[{"op": "add", "path": "/x", "value": 1, "path": "/o/y"}]"#, 400),
        case("merge patch: a key twice", M::PATCH, "/v1/docs/{id}", MERGE, r#"{"o": {"k": "w"}, "o": null}"#, 400),
        // An integer literal outside the 64-bit range (a float literal is a float).
        case("create: an integer out of range", M::POST, "/v1/docs", JSON, r#"{"value": {"big": 120000000000000000000000000000}}"#, 422),
        case("put: an integer past u64", M::PUT, "/v1/docs/{id}", JSON, r#"{"n": 1, "l": [18446744073709551616], "t": "", "o": {"k": "v"}}"#, 422),
        case("patch: an integer below i64", M::PATCH, "/v1/docs/{id}", PATCH, r#"[{"op": "add", "path": "/x", "value": -9223372036854775809}]"#, 422),
        case("merge patch: an integer out of range", M::PATCH, "/v1/docs/{id}", MERGE, r#"{"x": 99999999999999999999}"#, 422),
        case("idempotency key too long", M::PATCH, "/v1/docs/{id}", &[("content-type", "application/json-patch+json"), ("idempotency-key", "kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk")], "[]", 400),
    ]
}

#[tokio::test]
async fn every_bad_input_is_refused_cleanly() {
    let s = TestServer::start().await;
    let (id, version) = s
        .create(json!({
            "value": {"n": 1, "l": [], "t": "", "o": {"k": "v"}},
            "text": ["/t"],
            "counters": ["/n"],
        }))
        .await;
    let cases = catalogue();
    assert!(cases.len() >= 40, "the catalogue covers at least 40 cases");
    for case in cases {
        let before = s.raw(&id).await;
        let path = case.path.replace("{id}", &id).replace("{v}", &version);
        let body = String::from_utf8(case.body.clone())
            .map(|b| b.replace("{id}", &id).into_bytes())
            .unwrap_or(case.body);
        let mut request = s.request(case.method.clone(), &path).body(body);
        for (name, value) in case.headers {
            request = request.header(*name, *value);
        }
        let reply = s.send(request).await;
        assert_eq!(
            reply.status.as_u16(),
            case.status,
            "{}: {}",
            case.name,
            String::from_utf8_lossy(&reply.bytes)
        );
        reply.assert_problem(case.status);
        assert_nosniff(&reply, case.name);
        assert_eq!(
            s.raw(&id).await,
            before,
            "{} changed the document",
            case.name
        );
        assert_eq!(s.get(&id).await.1, version, "{}", case.name);
    }
    // Still serving, and still writable.
    let reply = s
        .patch(
            &id,
            "after",
            None,
            &json!([{"op": "increment", "path": "/n", "value": 1}]),
        )
        .await;
    assert_eq!(reply.json()["value"]["n"], 2);
}

/// Raw changes may build nesting no JSON body could; reading it back must not crash the
/// server. Such changes are refused and the document stays as it was.
#[tokio::test]
async fn raw_changes_nesting_too_deep_are_refused() {
    use automerge::transaction::Transactable;
    let s = TestServer::start().await;
    let (id, version) = s.create(json!({"value": {"k": 1}})).await;
    // A peer's copy of the document, nested past the limit by raw Automerge operations
    // (Concord itself refuses to make such a document).
    let mut peer = automerge::Automerge::load(&s.raw(&id).await).unwrap();
    let start = peer.get_heads();
    let mut tx = peer.transaction();
    let mut obj = automerge::ROOT;
    for _ in 0..(concord_core::value::MAX_DEPTH + 10) {
        obj = tx.put_object(&obj, "d", automerge::ObjType::Map).unwrap();
    }
    tx.commit();
    let bytes: Vec<u8> = peer
        .get_changes(&start)
        .iter()
        .flat_map(|c| c.raw_bytes().to_vec())
        .collect();
    let before = s.raw(&id).await;
    let reply = s
        .send(
            s.request(Method::POST, &format!("/v1/docs/{id}/changes"))
                .header("content-type", "application/octet-stream")
                .body(bytes),
        )
        .await;
    reply.assert_problem(422);
    assert_eq!(s.raw(&id).await, before);
    assert_eq!(s.get(&id).await, (json!({"k": 1}), version));
}

/// The deepest body the JSON parser accepts is stored and read back intact.
#[tokio::test]
async fn deepest_legal_json_round_trips() {
    let s = TestServer::start().await;
    let mut deep = json!("bottom");
    for _ in 0..(concord_core::value::MAX_DEPTH - 2) {
        deep = json!({ "d": deep });
    }
    let (id, _) = s.create(json!({ "value": { "deep": deep } })).await;
    assert_eq!(s.get(&id).await.0["deep"], deep);
}

// ---------------------------------------------------------------------------------------
// The rest of the surface: leases, forks and merges, history, raw changes that decode but
// must not apply, Server-Sent Events, the WebSocket endpoints' upgrade requests, the
// comparison. Placeholders: `{id}` a crdt document, `{lock}` a lock document, `{other}` an
// unrelated crdt document, `{v}` the crdt document's version. Every document is checked
// byte for byte after every case, and so is the list of documents (nothing created).

/// One bad request of the wider catalogue (bodies are owned: some are built at run time).
struct Wide {
    name: &'static str,
    method: Method,
    path: String,
    headers: Vec<(&'static str, Vec<u8>)>,
    body: Vec<u8>,
    status: u16,
}

fn wide(
    name: &'static str,
    method: Method,
    path: &str,
    headers: &[(&'static str, &str)],
    body: impl Into<Vec<u8>>,
    status: u16,
) -> Wide {
    Wide {
        name,
        method,
        path: path.to_owned(),
        headers: headers
            .iter()
            .map(|(n, v)| (*n, v.as_bytes().to_vec()))
            .collect(),
        body: body.into(),
        status,
    }
}

/// The headers of a WebSocket handshake, so that the endpoint itself (not the upgrade
/// extractor) judges the request.
const UPGRADE: &[(&str, &str)] = &[
    ("connection", "upgrade"),
    ("upgrade", "websocket"),
    ("sec-websocket-version", "13"),
    ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
];
const JSON_ONLY: &[(&str, &str)] = &[("content-type", "application/json")];
const UNKNOWN: &str = "00000000-0000-4000-8000-000000000000";

/// Raw changes that decode as Automerge but must not apply: `(missing dependency, torn,
/// one flipped bit)`, all built on the document's real history.
async fn bad_changes(s: &TestServer, id: &str) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    use concord_core::patch::parse_patch;
    use concord_core::{Document, Schema, WriteMeta};
    let mut replica = Document::empty(Schema::default()).unwrap();
    replica.apply_changes(&s.raw(id).await).unwrap();
    let meta = WriteMeta {
        agent: "replica".into(),
        time_ms: 0,
        message: None,
    };
    let add = |v: &str| parse_patch(&json!([{"op": "add", "path": "/o/r", "value": v}])).unwrap();
    let first = replica.patch(None, &add("first"), &meta).unwrap();
    let second = replica.patch(None, &add("second"), &meta).unwrap();
    let first = first.changes[0].raw_bytes().to_vec();
    let missing_dep = second.changes[0].raw_bytes().to_vec();
    let torn = first[..first.len() - 5].to_vec();
    let mut flipped = first.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x04;
    (missing_dep, torn, flipped)
}

// One case per line: a table.
#[rustfmt::skip]
async fn wide_catalogue(s: &TestServer, id: &str) -> Vec<Wide> {
    use Method as M;
    let (missing_dep, torn, flipped) = bad_changes(s, id).await;
    let doc = |suffix: &str| format!("/v1/docs/{{id}}{suffix}");
    let lock = |suffix: &str| format!("/v1/docs/{{lock}}{suffix}");
    let raw = &[("content-type", "application/octet-stream")];
    vec![
        // Leases.
        wide("lock: malformed id", M::POST, "/v1/docs/nope/lock", NONE, "", 400),
        wide("lock: unknown document", M::POST, &format!("/v1/docs/{UNKNOWN}/lock"), NONE, "", 404),
        wide("lock: a crdt document", M::POST, &doc("/lock"), NONE, "", 409),
        wide("lock: ttl_ms zero", M::POST, &lock("/lock"), JSON_ONLY, r#"{"ttl_ms": 0}"#, 422),
        wide("lock: ttl_ms too long", M::POST, &lock("/lock"), JSON_ONLY, r#"{"ttl_ms": 99999999999}"#, 422),
        wide("lock: wait_ms too long", M::POST, &lock("/lock"), JSON_ONLY, r#"{"wait_ms": 99999999}"#, 422),
        wide("lock: negative ttl_ms", M::POST, &lock("/lock"), JSON_ONLY, r#"{"ttl_ms": -5}"#, 422),
        wide("lock: ttl_ms a string", M::POST, &lock("/lock"), JSON_ONLY, r#"{"ttl_ms": "10"}"#, 422),
        wide("lock: unknown field", M::POST, &lock("/lock"), JSON_ONLY, r#"{"ttl": 10}"#, 422),
        wide("lock: malformed JSON", M::POST, &lock("/lock"), JSON_ONLY, "{", 400),
        wide("lock: wrong content type", M::POST, &lock("/lock"), &[("content-type", "text/plain")], "ttl=5", 415),
        wide("lock: a body without a content type", M::POST, &lock("/lock"), NONE, r#"{"ttl_ms": 5}"#, 415),
        wide("lock: an empty form", M::POST, &lock("/lock"), FORM, "", 415),
        wide("lock: a key twice", M::POST, &lock("/lock"), JSON_ONLY, r#"{"ttl_ms": 5, "ttl_ms": 0}"#, 400),
        wide("unlock: no token", M::DELETE, &lock("/lock"), NONE, "", 400),
        wide("unlock: token not a number", M::DELETE, &lock("/lock"), &[("concord-lock", "abc")], "", 400),
        wide("unlock: nobody's token", M::DELETE, &lock("/lock"), &[("concord-lock", "12345")], "", 409),
        wide("lock doc: write without a token", M::PATCH, &lock(""), PATCH, r#"[{"op": "add", "path": "/x", "value": 1}]"#, 428),
        wide("lock doc: write with a stale token", M::PATCH, &lock(""), &[("content-type", "application/json-patch+json"), ("concord-lock", "1")], r#"[{"op": "add", "path": "/x", "value": 1}]"#, 409),
        wide("lock doc: raw changes bypass the lease", M::POST, &lock("/changes"), raw, missing_dep.clone(), 428),
        // Forks and merges.
        wide("fork: malformed id", M::POST, "/v1/docs/x/fork", NONE, "", 400),
        wide("fork: unknown document", M::POST, &format!("/v1/docs/{UNKNOWN}/fork"), NONE, "", 404),
        wide("fork: a lock document", M::POST, &lock("/fork"), NONE, "", 409),
        wide("fork: bad agent header", M::POST, &doc("/fork"), &[("concord-agent", "   ")], "", 400),
        wide("merge: malformed JSON", M::POST, &doc("/merge"), JSON_ONLY, "{\"fork\":", 400),
        wide("merge: fork not a uuid", M::POST, &doc("/merge"), JSON_ONLY, r#"{"fork": "x"}"#, 422),
        wide("merge: missing fork", M::POST, &doc("/merge"), JSON_ONLY, "{}", 422),
        wide("merge: unknown fork", M::POST, &doc("/merge"), JSON_ONLY, format!(r#"{{"fork": "{UNKNOWN}"}}"#), 422),
        wide("merge: into itself", M::POST, &doc("/merge"), JSON_ONLY, r#"{"fork": "{id}"}"#, 422),
        wide("merge: not a fork", M::POST, &doc("/merge"), JSON_ONLY, r#"{"fork": "{other}"}"#, 409),
        wide("merge: into a lock document", M::POST, &lock("/merge"), JSON_ONLY, r#"{"fork": "{id}"}"#, 409),
        wide("merge: wrong content type", M::POST, &doc("/merge"), &[("content-type", "text/plain")], r#"{"fork": "{other}"}"#, 415),
        wide("merge: no content type", M::POST, &doc("/merge"), NONE, r#"{"fork": "{other}"}"#, 415),
        wide("merge: the fork named twice", M::POST, &doc("/merge"), JSON_ONLY, r#"{"fork": "{other}", "fork": "{id}"}"#, 400),
        wide("merge: unknown field", M::POST, &doc("/merge"), JSON_ONLY, r#"{"fork": "{other}", "force": true}"#, 422),
        // History and raw changes.
        wide("history: unknown document", M::GET, &format!("/v1/docs/{UNKNOWN}/history"), NONE, "", 404),
        wide("history: wrong method", M::DELETE, &doc("/history"), NONE, "", 405),
        wide("changes: a change without its dependency", M::POST, &doc("/changes"), raw, missing_dep, 400),
        wide("changes: a torn change", M::POST, &doc("/changes"), raw, torn, 400),
        wide("changes: a change with a flipped bit", M::POST, &doc("/changes"), raw, flipped, 400),
        wide("changes: malformed id", M::POST, "/v1/docs/1/changes", raw, "x", 400),
        wide("changes: unknown query parameter", M::GET, &doc("/changes?from=x"), NONE, "", 400),
        // Server-Sent Events.
        wide("events: malformed id", M::GET, "/v1/docs/nope/events", NONE, "", 400),
        wide("events: unknown document", M::GET, &format!("/v1/docs/{UNKNOWN}/events"), NONE, "", 404),
        wide("events: malformed since", M::GET, &doc("/events?since=zzz"), NONE, "", 400),
        wide("events: unknown since", M::GET, &doc("/events?since=4444444444444444444444444444444444444444444444444444444444444444"), NONE, "", 404),
        wide("events: malformed Last-Event-ID", M::GET, &doc("/events"), &[("last-event-id", "not-a-version")], "", 400),
        wide("events: unknown query parameter", M::GET, &doc("/events?sinse=x"), NONE, "", 400),
        // WebSocket endpoints: a plain request, and handshakes the endpoint refuses.
        wide("ws: not a WebSocket request", M::GET, &doc("/ws"), NONE, "", 400),
        wide("ws: malformed id", M::GET, "/v1/docs/x/ws", UPGRADE, "", 400),
        wide("ws: bad agent in the query", M::GET, &doc("/ws?agent="), UPGRADE, "", 400),
        wide("ws: agent in the query with a tab", M::GET, &doc("/ws?agent=ann%09bob"), UPGRADE, "", 400),
        wide("ws: unknown query parameter", M::GET, &doc("/ws?colour=red"), UPGRADE, "", 400),
        wide("sync: not a WebSocket request", M::GET, &doc("/sync"), NONE, "", 426),
        wide("sync: malformed id", M::GET, "/v1/docs/x/sync", UPGRADE, "", 400),
        wide("sync: unknown document", M::GET, &format!("/v1/docs/{UNKNOWN}/sync"), UPGRADE, "", 404),
        wide("sync: a lock document", M::GET, &lock("/sync"), UPGRADE, "", 409),
        wide("repo: not a WebSocket request", M::GET, "/v1/repo", NONE, "", 426),
        wide("repo: bad agent header", M::GET, "/v1/repo", &[UPGRADE[0], UPGRADE[1], UPGRADE[2], UPGRADE[3], ("concord-agent", "")], "", 400),
        // The comparison.
        wide("compare: malformed JSON", M::POST, "/v1/compare", JSON_ONLY, "{", 400),
        wide("compare: unknown field", M::POST, "/v1/compare", JSON_ONLY, r#"{"agentz": 2}"#, 422),
        wide("compare: zero agents", M::POST, "/v1/compare", JSON_ONLY, r#"{"agents": 0}"#, 422),
        wide("compare: unknown strategy", M::POST, "/v1/compare", JSON_ONLY, r#"{"strategies": ["magic"]}"#, 422),
        wide("compare: think_ms backwards", M::POST, "/v1/compare", JSON_ONLY, r#"{"think_ms": [9, 1]}"#, 422),
        wide("compare: wrong content type", M::POST, "/v1/compare", &[("content-type", "text/plain")], "{}", 415),
        wide("compare: a body without a content type", M::POST, "/v1/compare", NONE, r#"{"agents": 0}"#, 415),
        wide("compare: an empty form", M::POST, "/v1/compare", FORM, "", 415),
        wide("compare: a key twice", M::POST, "/v1/compare", JSON_ONLY, r#"{"agents": 0, "agents": 0}"#, 400),
        wide("sweep: no agents", M::POST, "/v1/compare/sweep", JSON_ONLY, r#"{"agents": []}"#, 422),
        wide("sweep: unknown field", M::POST, "/v1/compare/sweep", JSON_ONLY, r#"{"points": 3}"#, 422),
        wide("scenario: wrong method", M::POST, "/v1/compare/scenario", NONE, "", 405),
        // Headers, methods, paths.
        wide("agent header not UTF-8", M::PATCH, &doc(""), &[("content-type", "application/json-patch+json")], "[]", 400),
        wide("agent header too long", M::PATCH, &doc(""), &[("content-type", "application/json-patch+json"), ("concord-agent", &"a".repeat(200))], "[]", 400),
        wide("weak garbage If-Match", M::PUT, &doc(""), &[("content-type", "application/json"), ("if-match", "W/\"nope\"")], "{}", 400),
        wide("If-Match with one unknown head", M::PUT, &doc(""), &[("content-type", "application/json"), ("if-match", "\"{v}.5555555555555555555555555555555555555555555555555555555555555555\"")], "{}", 412),
        wide("read: pointer with a bad escape", M::GET, &doc("?path=/o/~2"), NONE, "", 400),
        wide("read: empty version", M::GET, &doc("?at="), NONE, "", 400),
        wide("delete: malformed id", M::DELETE, "/v1/docs/%00", NONE, "", 400),
        wide("list: wrong method", M::PUT, "/v1/docs", JSON_ONLY, "{}", 405),
        wide("healthz: wrong method", M::POST, "/healthz", NONE, "", 405),
        wide("dot segments in the path", M::GET, &doc("/../../etc/passwd"), NONE, "", 404),
        wide("encoded slash in the id", M::GET, "/v1/docs/a%2Fb/history", NONE, "", 400),
    ]
}

/// Everything that identifies the store's content: each document's raw changes and the
/// list of documents (ids and versions).
async fn fingerprint(s: &TestServer, ids: &[&str]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for id in ids {
        out.push(s.raw(id).await);
    }
    let list = s.send(s.request(Method::GET, "/v1/docs")).await.json();
    let mut docs: Vec<String> = list["docs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| format!("{} {}", d["id"], d["version"]))
        .collect();
    docs.sort();
    out.push(docs.join("\n").into_bytes());
    out
}

#[tokio::test]
async fn every_endpoint_refuses_bad_input_cleanly() {
    let s = TestServer::start().await;
    let (id, version) = s
        .create(json!({
            "value": {"n": 1, "l": [], "t": "", "o": {"k": "v"}},
            "text": ["/t"],
            "counters": ["/n"],
        }))
        .await;
    let (lock, _) = s
        .create(json!({"value": {"x": 0}, "strategy": "lock"}))
        .await;
    let (other, _) = s.create(json!({"value": {"stranger": true}})).await;
    let cases = wide_catalogue(&s, &id).await;
    assert!(cases.len() >= 60, "{} cases", cases.len());
    let ids = [id.as_str(), lock.as_str(), other.as_str()];
    let fill = |text: &str| {
        text.replace("{id}", &id)
            .replace("{lock}", &lock)
            .replace("{other}", &other)
            .replace("{v}", &version)
    };
    let mut failures = Vec::new();
    for case in cases {
        let before = fingerprint(&s, &ids).await;
        let body = match String::from_utf8(case.body.clone()) {
            Ok(text) => fill(&text).into_bytes(),
            Err(_) => case.body,
        };
        let mut request = s.request(case.method.clone(), &fill(&case.path)).body(body);
        for (name, value) in &case.headers {
            let value = fill(&String::from_utf8_lossy(value));
            request = request.header(*name, value);
        }
        if case.name == "agent header not UTF-8" {
            request = request.header(
                "concord-agent",
                reqwest::header::HeaderValue::from_bytes(b"caf\xe9").unwrap(),
            );
        }
        let reply = s.send(request).await;
        // Every case runs; the failures are listed together at the end.
        if reply.status.as_u16() != case.status {
            failures.push(format!(
                "{}: expected {}, got {}: {}",
                case.name,
                case.status,
                reply.status,
                String::from_utf8_lossy(&reply.bytes)
            ));
        } else {
            reply.assert_problem(case.status);
            assert_nosniff(&reply, case.name);
        }
        assert_eq!(
            fingerprint(&s, &ids).await,
            before,
            "{} changed the store",
            case.name
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Still serving, and still writable.
    let health = s.send(s.request(Method::GET, "/healthz")).await;
    assert_eq!(health.status, 200);
    let reply = s
        .patch(
            &id,
            "after",
            None,
            &json!([{"op": "increment", "path": "/n", "value": 1}]),
        )
        .await;
    assert_eq!(reply.json()["value"]["n"], 2);
}

/// Every answer tells browsers not to guess another type than its `Content-Type`.
fn assert_nosniff(reply: &concord_tests::Reply, what: &str) {
    assert_eq!(
        reply.header("x-content-type-options").as_deref(),
        Some("nosniff"),
        "{what}"
    );
}

// ---------------------------------------------------------------------------------------
// What the strict refusals say: their kind, and enough to correct the request.

/// One refusal: (method, path, headers, body, status, kind, what the detail names, the
/// `Accept-*` header and its value).
type Refusal<'a> = (
    Method,
    String,
    &'a [(&'a str, &'a str)],
    &'a str,
    u16,
    &'a str,
    &'a [&'a str],
    Option<(&'a str, &'a str)>,
);

async fn check_refusals(s: &TestServer, cases: Vec<Refusal<'_>>) {
    for (method, path, headers, body, status, kind, names, advertised) in cases {
        let mut request = s.request(method.clone(), &path).body(body.to_owned());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let reply = s.send(request).await;
        let problem = reply.assert_problem(status);
        let what = format!("{method} {path} {body}");
        assert_eq!(
            problem["type"],
            format!("urn:concord:problem:{kind}"),
            "{what}"
        );
        let detail = problem["detail"].as_str().unwrap();
        for name in names {
            assert!(detail.contains(name), "{what}: {detail}");
        }
        if let Some((header, value)) = advertised {
            assert_eq!(reply.header(header).as_deref(), Some(value), "{what}");
        }
    }
}

/// A body of a type the operation does not take, or without a type, is `415` naming the
/// types it takes; an optional body left out is the defaults, with no type or the right one.
#[rustfmt::skip]
#[tokio::test]
async fn typed_bodies_say_what_they_take() {
    let s = TestServer::start().await;
    let (id, version) = s.create(json!({"value": {"n": 1}})).await;
    let (lock, _) = s.create(json!({"value": {}, "strategy": "lock"})).await;
    let doc = format!("/v1/docs/{id}");
    check_refusals(&s, vec![
        (Method::POST, "/v1/docs".into(), NONE, r#"{"value": {}}"#, 415, "unsupported-media-type",
            &["application/json", "no Content-Type"], Some(("accept-post", "application/json"))),
        (Method::PATCH, doc.clone(), &[("content-type", "application/json")], "[]", 415, "unsupported-media-type",
            &["application/json-patch+json", "application/merge-patch+json", "\"application/json\""],
            Some(("accept-patch", "application/json-patch+json, application/merge-patch+json"))),
        (Method::PUT, doc.clone(), &[("if-match", "*"), ("content-type", "application/x-www-form-urlencoded")], "a=1", 415,
            "unsupported-media-type", &["application/json", "x-www-form-urlencoded"], None),
        (Method::POST, format!("{doc}/changes"), FORM, "", 415, "unsupported-media-type", &["application/octet-stream"], None),
    ]).await;
    assert_eq!(s.get(&id).await, (json!({"n": 1}), version));

    // Where a body is optional, leaving it out is the defaults: no body and no type, or an
    // empty body of the type the operation takes, or `null`.
    for (headers, body) in [(NONE, ""), (&[("content-type", "application/json")][..], ""),
                            (&[("content-type", "application/json; charset=utf-8")][..], "null")] {
        let mut create = s.request(Method::POST, "/v1/docs").body(body);
        let mut lease = s.request(Method::POST, &format!("/v1/docs/{lock}/lock")).body(body);
        for (name, value) in headers {
            create = create.header(*name, *value);
            lease = lease.header(*name, *value);
        }
        let created = s.send(create).await;
        assert_eq!(created.status, 201, "{headers:?} {body:?}: {:?}", created.json());
        assert_eq!(created.json()["value"], json!({}));
        let leased = s.send(lease).await;
        assert_eq!(leased.status, 200, "{headers:?} {body:?}: {:?}", leased.json());
        let release = s.request(Method::DELETE, &format!("/v1/docs/{lock}/lock"))
            .header("concord-lock", leased.json()["token"].as_str().unwrap());
        assert_eq!(s.send(release).await.status, 204);
    }
}

/// A key given twice is `400` `invalid-json` naming the key, an integer out of range `422`
/// `invalid-value` naming it, in every JSON body (`/mcp`'s JSON-RPC too); numbers written
/// as floats stay floats.
#[rustfmt::skip]
#[tokio::test]
async fn strict_json_names_the_key_and_the_number() {
    let s = TestServer::start().await;
    let (id, version) = s.create(json!({"value": {"n": 1}})).await;
    let (lock, _) = s.create(json!({"value": {}, "strategy": "lock"})).await;
    let doc = format!("/v1/docs/{id}");
    check_refusals(&s, vec![
        (Method::POST, "/v1/docs".into(), JSON, r#"{"value": {"a": 1, "b": {"c": 1, "c": 2}}}"#, 400, "invalid-json",
            &["\"c\"", "twice"], None),
        (Method::POST, format!("/v1/docs/{lock}/lock"), JSON, r#"{"wait_ms": 0, "wait_ms": 1}"#, 400, "invalid-json",
            &["\"wait_ms\""], None),
        (Method::PUT, doc.clone(), JSON, r#"{"n": 120000000000000000000000000000}"#, 422, "invalid-value",
            &["120000000000000000000000000000", "64-bit", "float"], None),
    ]).await;
    // The MCP endpoint's JSON-RPC bodies too: a parse error (-32700), as JSON-RPC says.
    for (body, names) in [
        (r#"{"jsonrpc": "2.0", "id": 1, "method": "tools/list", "method": "ping"}"#, "\"method\""),
        (r#"{"jsonrpc": "2.0", "id": 18446744073709551616, "method": "ping"}"#, "18446744073709551616"),
    ] {
        let reply = s
            .send(s.request(Method::POST, "/mcp").header("content-type", "application/json")
                .header("accept", "application/json, text/event-stream").body(body))
            .await;
        assert_eq!(reply.status, 400, "{body}: {}", String::from_utf8_lossy(&reply.bytes));
        let answer = reply.json();
        assert_eq!(answer["error"]["code"], -32700, "{answer}");
        assert!(answer["error"]["message"].as_str().unwrap().contains(names), "{answer}");
    }
    assert_eq!(s.get(&id).await, (json!({"n": 1}), version));
    // Numbers written as floats stay floats, however large; integers in range stay exact.
    let written = s.send(s.request(Method::PUT, &doc).header("if-match", "*")
        .header("content-type", "application/json")
        .body(r#"{"f": 1.2e29, "g": 1E20, "max": 18446744073709551615, "min": -9223372036854775808}"#)).await;
    assert_eq!(written.status, 200, "{:?}", written.json());
    assert_eq!(s.get(&id).await.0, json!({"f": 1.2e29, "g": 1e20, "max": u64::MAX, "min": i64::MIN}));
}

/// The WebSocket JSON protocol reads its messages as strictly as HTTP reads bodies: a key
/// twice is `invalid-json`, an integer out of range `invalid-value`; nothing is applied
/// and the connection goes on.
#[tokio::test]
async fn websocket_messages_are_read_strictly() {
    use concord_tests::ws::{connect, next};
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let s = TestServer::start().await;
    let (id, version) = s.create(json!({"value": {"n": 1}})).await;
    let before = s.raw(&id).await;
    let mut socket = connect(&s, &format!("/v1/docs/{id}/ws")).await;
    let cases = [
        (
            format!(r#"{{"type": "put", "id": 1, "base": "{version}", "value": {{"n": 2}}, "value": {{"n": 3}}}}"#),
            400,
            "invalid-json",
            "\"value\"",
        ),
        (
            format!(r#"{{"type": "put", "id": 2, "base": "{version}", "base": "*", "value": {{"n": 2}}}}"#),
            400,
            "invalid-json",
            "\"base\"",
        ),
        (
            r#"{"type": "patch", "id": 3, "ops": [{"op": "add", "path": "/big", "value": 120000000000000000000000000000}]}"#.to_owned(),
            422,
            "invalid-value",
            "120000000000000000000000000000",
        ),
    ];
    for (text, status, kind, names) in cases {
        socket.send(Message::text(text.clone())).await.unwrap();
        let Some(Message::Text(answer)) = next(&mut socket).await else {
            panic!("{text}: no answer")
        };
        let answer: serde_json::Value = serde_json::from_str(answer.as_str()).unwrap();
        assert_eq!(answer["type"], "error", "{text}: {answer}");
        assert_eq!(answer["status"], status, "{text}: {answer}");
        let uri = format!("urn:concord:problem:{kind}");
        assert_eq!(answer["type_uri"], uri, "{text}: {answer}");
        assert!(
            answer["detail"].as_str().unwrap().contains(names),
            "{text}: {answer}"
        );
        assert_eq!(s.raw(&id).await, before, "{text}");
    }
    // Still listening, and a float is a float.
    let text =
        r#"{"type": "patch", "id": 4, "ops": [{"op": "add", "path": "/f", "value": 1.2e29}]}"#;
    socket.send(Message::text(text)).await.unwrap();
    let Some(Message::Text(answer)) = next(&mut socket).await else {
        panic!("no ack")
    };
    assert!(answer.as_str().contains("\"ack\""), "{}", answer.as_str());
    assert_eq!(s.get(&id).await.0, json!({"n": 1, "f": 1.2e29}));
}

/// Every answer carries `X-Content-Type-Options: nosniff`: pages, files, JSON, streams,
/// errors of every layer.
#[tokio::test]
async fn every_answer_says_nosniff() {
    let s = TestServer::start().await;
    let (id, _) = s.create(json!({"value": {}})).await;
    let created = s
        .send(s.request(Method::POST, "/v1/docs").json(&json!({})))
        .await;
    assert_eq!(created.status, 201);
    assert_nosniff(&created, "a create");
    for path in [
        "/",
        "/favicon.ico",
        "/web/app.js",
        "/healthz",
        "/openapi.json",
        "/metrics",
        "/v1/docs",
        &format!("/v1/docs/{id}"),
        &format!("/v1/docs/{id}/changes"),
        "/nowhere",
    ] {
        let reply = s.send(s.request(Method::GET, path)).await;
        assert_nosniff(&reply, path);
    }
    // Refused before routing is done with it: another host name (crate::origins).
    let refused = s
        .send(
            s.request(Method::GET, "/v1/docs")
                .header("host", "evil.example"),
        )
        .await;
    refused.assert_problem(403);
    assert_nosniff(&refused, "another host");
    // A stream's head.
    let events = s
        .client
        .get(s.url(&format!("/v1/docs/{id}/events")))
        .send()
        .await
        .unwrap();
    assert_eq!(
        events.headers().get("x-content-type-options").unwrap(),
        "nosniff"
    );
}

/// No token reaches the server's log, at any level: not `?access_token=` (taken out of the
/// URI before the request log sees it), not the viewer's `/?token=`, not `Authorization`,
/// not a wrong token. The real binary runs with `RUST_LOG=trace`, and the requests are
/// logged (their paths are in the log), only without the tokens.
#[tokio::test]
async fn tokens_never_reach_the_log() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    const SECRET: &str = "s3cr3t-token-0123456789abcdef";
    const WRONG: &str = "wr0ng-token-fedcba9876543210";
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.json");
    let file = json!({"tokens": [{"agent": "ops", "token": SECRET, "scopes": ["admin"]}]});
    std::fs::write(&tokens, file.to_string()).unwrap();
    let server = binary::Binary::start_logging(
        &dir.path().join("data"),
        &["--auth", tokens.to_str().unwrap()],
        "trace",
    );
    let client = reqwest::Client::new();
    let bearer = format!("Bearer {SECRET}");
    let created = client
        .post(server.url("/v1/docs"))
        .header("authorization", &bearer)
        .json(&json!({"value": {"n": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let id = created.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // In the query, where the streams take it: an event stream (its head), a WebSocket.
    let events = client
        .get(server.url(&format!("/v1/docs/{id}/events?access_token={SECRET}")))
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);
    drop(events);
    let ws = format!(
        "ws://{}/v1/docs/{id}/ws?agent=a&access_token={SECRET}",
        server.addr
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(ws).await.unwrap();
    socket
        .send(Message::text(r#"{"type": "subscribe"}"#))
        .await
        .unwrap();
    let snapshot = tokio::time::timeout(
        concord_tests::PATIENCE,
        futures_util::StreamExt::next(&mut socket),
    )
    .await
    .expect("a snapshot in time");
    assert!(
        matches!(snapshot, Some(Ok(Message::Text(_)))),
        "{snapshot:?}"
    );
    socket.close(None).await.unwrap();
    // The viewer's link, tokens refused, a token where it is not taken.
    let requests = [
        (format!("/?token={SECRET}"), None, 200),
        ("/v1/docs".to_owned(), Some(format!("Bearer {WRONG}")), 401),
        (format!("/v1/docs?access_token={SECRET}"), None, 401),
        (format!("/v1/events?access_token={WRONG}"), None, 401),
        (
            format!("/v1/docs/{id}"),
            Some(format!("bearer {SECRET}")),
            200,
        ),
    ];
    for (path, authorization, status) in requests {
        let mut request = client.get(server.url(&path));
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        let reply = request.send().await.unwrap();
        assert_eq!(reply.status(), status, "{path}");
    }
    let (_, log) = server
        .terminate(std::time::Duration::from_secs(20))
        .await
        .expect("the server stops");
    for secret in [SECRET, WRONG] {
        let line = log.lines().find(|line| line.contains(secret));
        assert!(line.is_none(), "a token in the log: {line:?}");
    }
    // The requests were logged, without their tokens.
    for path in [
        format!("/v1/docs/{id}/events"),
        format!("/v1/docs/{id}/ws?agent=a"),
        "/?token=[redacted]".into(),
    ] {
        assert!(log.contains(&path), "{path} is not in the log");
    }
}
