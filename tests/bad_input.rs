//! A catalogue of bad requests over every endpoint: each is answered with a 4xx
//! problem+json, the server keeps serving, and the document is unchanged byte for byte.

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
        case("patch: unknown field", M::PATCH, "/v1/docs/{id}", PATCH, r#"[{"op": "remove", "path": "/n", "why": 1}]"#, 400),
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
        case("changes: JSON body", M::POST, "/v1/docs/{id}/changes", &[("content-type", "application/json")], "{}", 415),
        case("changes: malformed since", M::GET, "/v1/docs/{id}/changes?since=abc", NONE, "", 400),
        case("changes: unknown since", M::GET, "/v1/docs/{id}/changes?since=3333333333333333333333333333333333333333333333333333333333333333", NONE, "", 404),
        // Elsewhere.
        case("history: malformed id", M::GET, "/v1/docs/x/history", NONE, "", 400),
        case("delete: unknown document", M::DELETE, "/v1/docs/00000000-0000-4000-8000-000000000000", NONE, "", 404),
        case("unknown route", M::GET, "/v2/everything", NONE, "", 404),
        case("wrong method", M::POST, "/v1/docs/{id}/history", NONE, "", 405),
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
    use concord_core::{Document, Schema, WriteMeta};
    let s = TestServer::start().await;
    let (id, version) = s.create(json!({"value": {"k": 1}})).await;
    let mut deep = json!(1);
    for _ in 0..(concord_core::value::MAX_DEPTH + 10) {
        deep = json!({ "d": deep });
    }
    let bytes = std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(move || {
            let meta = WriteMeta { agent: "deep".into(), time_ms: 0, message: None };
            let (doc, _) = Document::create(&json!({"deep": deep}), Schema::default(), &meta).unwrap();
            doc.changes_since(None).unwrap()
        })
        .unwrap()
        .join()
        .unwrap();
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
    for _ in 0..120 {
        deep = json!({ "d": deep });
    }
    let (id, _) = s.create(json!({ "value": { "deep": deep } })).await;
    assert_eq!(s.get(&id).await.0["deep"], deep);
}
