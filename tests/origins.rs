//! DNS rebinding and cross-site requests, over raw HTTP: a request naming another host is
//! refused whatever it asks; a request from another origin may read but not write or open
//! a WebSocket; the server's own origin, IP addresses, `localhost` and the configured names
//! and origins pass. Nothing refused changes anything.

use concord_server::origins::Allowed;
use concord_tests::TestServer;
use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends one request with exactly these headers (and `Connection: close`); answers the
/// status and the body.
async fn raw(
    s: &TestServer,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut stream = TcpStream::connect(s.addr()).await.expect("connect");
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.expect("read");
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"));
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

fn kind(body: &str) -> String {
    let problem: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    problem["type"].as_str().unwrap_or("").to_owned()
}

const JSON: (&str, &str) = ("content-type", "application/json");

async fn doc_count(s: &TestServer) -> usize {
    let list = s.send(s.request(Method::GET, "/v1/docs")).await.json();
    list["docs"].as_array().unwrap().len()
}

#[tokio::test]
async fn a_page_on_another_host_name_is_refused_whatever_it_asks() {
    let s = TestServer::start().await;
    let (id, _) = s.create(json!({"value": {"n": 1}})).await;
    let port = s.addr().port();
    let rebound = format!("rebind.attacker.example:{port}");
    for (method, path, body) in [
        ("GET", "/v1/docs".to_owned(), ""),
        ("GET", format!("/v1/docs/{id}"), ""),
        ("POST", "/v1/docs".to_owned(), "{}"),
        ("DELETE", format!("/v1/docs/{id}"), ""),
        ("GET", "/".to_owned(), ""),
    ] {
        let (status, answer) = raw(&s, method, &path, &[("host", &rebound), JSON], body).await;
        assert_eq!(status, 403, "{method} {path}: {answer}");
        assert_eq!(kind(&answer), "urn:concord:problem:host-not-allowed");
    }
    // Without `Host` (a program: browsers always send it) a request passes.
    let (status, _) = raw(&s, "GET", "/v1/docs", &[], "").await;
    assert_eq!(status, 200, "a request without Host");
    // Nothing changed; the server's own names pass.
    assert_eq!(doc_count(&s).await, 1);
    assert_eq!(s.get(&id).await.0, json!({"n": 1}));
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
    ] {
        let (status, answer) = raw(&s, "GET", "/v1/docs", &[("host", &host)], "").await;
        assert_eq!(status, 200, "{host}: {answer}");
    }
}

#[tokio::test]
async fn configured_host_names_pass() {
    let s = TestServer::start_with(|c| c.allowed = Allowed::new(&["concord.internal".into()], &[]))
        .await;
    let host = format!("concord.internal:{}", s.addr().port());
    let (status, answer) = raw(&s, "POST", "/v1/docs", &[("host", &host), JSON], "{}").await;
    assert_eq!(status, 201, "{answer}");
    let (status, _) = raw(&s, "GET", "/v1/docs", &[("host", "other.internal")], "").await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn another_origin_may_not_write_nor_open_a_websocket() {
    let s =
        TestServer::start_with(|c| c.allowed = Allowed::new(&[], &["https://app.example".into()]))
            .await;
    let (id, version) = s.create(json!({"value": {"n": 1}})).await;
    let host = format!("127.0.0.1:{}", s.addr().port());
    let own = format!("http://{host}");
    let if_match = format!("\"{version}\"");
    let put = format!("/v1/docs/{id}");
    let upgrade: &[(&str, &str)] = &[
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    for origin in ["http://evil.example", "null", "http://127.0.0.1:1"] {
        let h = |extra: &[(&'static str, &str)]| {
            let mut v: Vec<(&str, String)> =
                vec![("host", host.clone()), ("origin", origin.to_owned())];
            v.extend(extra.iter().map(|(k, val)| (*k, (*val).to_owned())));
            v
        };
        for (method, path, headers, body) in [
            ("POST", "/v1/docs".to_owned(), h(&[JSON]), "{}"),
            (
                "POST",
                "/v1/docs".to_owned(),
                h(&[("content-type", "text/plain")]),
                "",
            ),
            (
                "PUT",
                put.clone(),
                h(&[JSON, ("if-match", &if_match)]),
                r#"{"n": 2}"#,
            ),
            ("DELETE", put.clone(), h(&[]), ""),
            (
                "POST",
                format!("/v1/docs/{id}/changes"),
                h(&[("content-type", "application/octet-stream")]),
                "",
            ),
            ("POST", "/v1/compare".to_owned(), h(&[JSON]), "{}"),
            ("GET", format!("/v1/docs/{id}/ws"), h(upgrade), ""),
            ("GET", "/v1/repo".to_owned(), h(upgrade), ""),
        ] {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let (status, answer) = raw(&s, method, &path, &headers, body).await;
            assert_eq!(status, 403, "{origin}: {method} {path}: {answer}");
            assert_eq!(kind(&answer), "urn:concord:problem:origin-not-allowed");
        }
    }
    assert_eq!(doc_count(&s).await, 1);
    assert_eq!(s.get(&id).await.0, json!({"n": 1}));
    // A read from another origin passes (the browser keeps its answer from the page).
    let (status, _) = raw(
        &s,
        "GET",
        &put,
        &[("host", &host), ("origin", "http://evil.example")],
        "",
    )
    .await;
    assert_eq!(status, 200);
    // The server's own origin (the viewer) and a configured one may write.
    for origin in [own.as_str(), "https://app.example"] {
        let (status, answer) = raw(
            &s,
            "POST",
            "/v1/docs",
            &[("host", &host), ("origin", origin), JSON],
            "{}",
        )
        .await;
        assert_eq!(status, 201, "{origin}: {answer}");
    }
}
