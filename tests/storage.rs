//! Torn and corrupt storage, against the real `concord` binary: the data folder is damaged
//! between two runs (a change record truncated or flipped with rusqlite, the write-ahead
//! log cut mid-frame, garbage over the database file) and the next start must cope.
//!
//! - A damaged change record is skipped: the document loads up to its last good change,
//!   the server says what it skipped (its log, `skipped` in the document's reads, counts in
//!   `/healthz`), and the document takes new writes.
//! - A torn write-ahead log loses only the transaction it tore; everything loads cleanly.
//! - A database file that is not one stops the server with a non-zero exit and a one-line
//!   reason naming the file, never a panic.
//! - A damaged snapshot makes its document fail with problem+json, while the server and
//!   every other document go on.

#[path = "binary.rs"]
mod binary;

use std::path::Path;
use std::time::Duration;

use binary::Binary;
use rusqlite::{params, Connection};
use serde_json::{json, Value};

const DB_FILE: &str = "concord.sqlite3";
const BOUND: Duration = Duration::from_secs(60);

struct Http {
    client: reqwest::Client,
    base: String,
}

impl Http {
    fn new(server: &Binary) -> Http {
        Http {
            client: reqwest::Client::new(),
            base: server.url(""),
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> (u16, Value) {
        let response = request.send().await.expect("the server answers");
        let status = response.status().as_u16();
        let media = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body = response.bytes().await.expect("a body");
        let json = serde_json::from_slice(&body)
            .unwrap_or_else(|_| panic!("not JSON ({media}): {}", String::from_utf8_lossy(&body)));
        if status >= 400 {
            assert_eq!(media, "application/problem+json", "{json}");
        }
        (status, json)
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.send(self.client.get(format!("{}{path}", self.base)))
            .await
    }

    async fn create(&self) -> String {
        let (status, body) = self
            .send(
                self.client
                    .post(format!("{}/v1/docs", self.base))
                    .json(&json!({"value": {"log": []}})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["id"].as_str().expect("an id").to_owned()
    }

    /// Appends `mark` to `/log`: one change.
    async fn append(&self, id: &str, mark: &str) {
        let (status, body) = self
            .send(
                self.client
                    .patch(format!("{}/v1/docs/{id}", self.base))
                    .header("content-type", "application/json-patch+json")
                    .body(json!([{"op": "add", "path": "/log/-", "value": mark}]).to_string()),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }

    async fn log(&self, id: &str) -> (Vec<String>, Value) {
        let (status, body) = self.get(&format!("/v1/docs/{id}")).await;
        assert_eq!(status, 200, "{body}");
        let log = body["value"]["log"]
            .as_array()
            .expect("a log")
            .iter()
            .map(|m| m.as_str().expect("a mark").to_owned())
            .collect();
        (log, body)
    }

    /// What `/healthz` says about storage (null: nothing to report).
    async fn health(&self) -> Value {
        let (status, body) = self.get("/healthz").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["status"], "ok");
        body["storage"].clone()
    }
}

/// Starts a server, makes a document with `n` marks (one change each) and a second,
/// untouched document, and stops it cleanly: `(doc, other)`.
async fn prepare(data: &Path, n: usize) -> (String, String) {
    let server = Binary::start(data, &[]);
    let http = Http::new(&server);
    let id = http.create().await;
    for i in 1..=n {
        http.append(&id, &format!("m{i}")).await;
    }
    let other = http.create().await;
    http.append(&other, "kept").await;
    stop(server).await;
    (id, other)
}

/// SIGTERM; returns everything the server logged.
async fn stop(server: Binary) -> String {
    let (status, stderr) = server.terminate(BOUND).await.expect("a clean stop");
    assert!(status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

/// The stored change records of a document, oldest first: `(seq, bytes)`.
fn records(data: &Path, id: &str) -> Vec<(i64, Vec<u8>)> {
    let conn = Connection::open(data.join(DB_FILE)).expect("the database opens");
    let mut stmt = conn
        .prepare("SELECT seq, bytes FROM changes WHERE doc = ?1 ORDER BY seq")
        .expect("a query");
    stmt.query_map(params![id], |row| Ok((row.get(0)?, row.get(1)?)))
        .expect("rows")
        .map(|r| r.expect("a row"))
        .collect()
}

fn rewrite(data: &Path, seq: i64, bytes: &[u8]) {
    let conn = Connection::open(data.join(DB_FILE)).expect("the database opens");
    let n = conn
        .execute(
            "UPDATE changes SET bytes = ?2 WHERE seq = ?1",
            params![seq, bytes],
        )
        .expect("an update");
    assert_eq!(n, 1);
}

fn marks(range: std::ops::RangeInclusive<usize>) -> Vec<String> {
    range.map(|i| format!("m{i}")).collect()
}

/// Checks a restarted server over damaged storage: the document reads as `expected`
/// with `skipped` records named, `/healthz` counts them, the log warns, the other document
/// is whole, and a new write lands and survives another restart.
async fn check_damaged(data: &Path, id: &str, other: &str, expected: Vec<String>, skipped: usize) {
    let server = Binary::start(data, &[]);
    let http = Http::new(&server);
    let (log, body) = http.log(id).await;
    assert_eq!(log, expected, "{body}");
    let named = body["skipped"]
        .as_array()
        .expect("the read names what was skipped");
    assert_eq!(named.len(), skipped, "{body}");
    assert_eq!(
        http.health().await,
        json!({"damaged_documents": 1, "skipped_records": skipped})
    );
    let (other_log, other_body) = http.log(other).await;
    assert_eq!(other_log, ["kept"]);
    assert!(other_body.get("skipped").is_none(), "{other_body}");

    http.append(id, "after").await;
    let stderr = stop(server).await;
    assert_eq!(
        stderr.matches("skipped a stored record").count(),
        skipped,
        "the log names each skipped record:\n{stderr}"
    );
    let server = Binary::start(data, &[]);
    let http = Http::new(&server);
    let mut expected = expected;
    expected.push("after".into());
    assert_eq!(http.log(id).await.0, expected);
    stop(server).await;
}

#[tokio::test]
async fn truncated_last_change_record_is_skipped_and_reported() {
    let data = tempfile::tempdir().unwrap();
    let (id, other) = prepare(data.path(), 5).await;
    let records = records(data.path(), &id);
    assert_eq!(records.len(), 6, "the create and five appends");
    let (seq, bytes) = records.last().unwrap();
    rewrite(data.path(), *seq, &bytes[..bytes.len() / 2]);
    check_damaged(data.path(), &id, &other, marks(1..=4), 1).await;
}

#[tokio::test]
async fn corrupted_last_change_record_is_skipped_and_reported() {
    let data = tempfile::tempdir().unwrap();
    let (id, other) = prepare(data.path(), 5).await;
    let (seq, mut bytes) = records(data.path(), &id).pop().unwrap();
    // One flipped bit in the middle of the change: its checksum no longer matches.
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    rewrite(data.path(), seq, &bytes);
    check_damaged(data.path(), &id, &other, marks(1..=4), 1).await;
}

#[tokio::test]
async fn garbage_record_in_the_middle_stops_the_history_there() {
    let data = tempfile::tempdir().unwrap();
    let (id, other) = prepare(data.path(), 5).await;
    let records = records(data.path(), &id);
    // The third append is garbage: the two after it depend on it and wait, reported too.
    rewrite(data.path(), records[3].0, b"\x85\x6f\x4a\x83garbage");
    check_damaged(data.path(), &id, &other, marks(1..=2), 2).await;
}

#[tokio::test]
async fn torn_write_ahead_log_loses_only_the_torn_transaction() {
    let data = tempfile::tempdir().unwrap();
    let server = Binary::start(data.path(), &[]);
    let http = Http::new(&server);
    let id = http.create().await;
    for i in 1..=6 {
        http.append(&id, &format!("m{i}")).await;
    }
    // SIGKILL: the write-ahead log keeps every transaction (nothing checkpointed it).
    server.kill();
    let wal = data.path().join(format!("{DB_FILE}-wal"));
    let len = std::fs::metadata(&wal).expect("a write-ahead log").len();
    assert!(len > 4096, "the log holds the writes ({len} bytes)");
    // Cut into the last frame, as a crash in the middle of its write would.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&wal)
        .unwrap()
        .set_len(len - 100)
        .unwrap();

    let server = Binary::start(data.path(), &[]);
    let http = Http::new(&server);
    let (log, body) = http.log(&id).await;
    assert_eq!(log, marks(1..=5), "all but the torn last write: {body}");
    assert!(body.get("skipped").is_none(), "{body}");
    assert_eq!(http.health().await, Value::Null, "nothing to report");
    http.append(&id, "m6 again").await;
    stop(server).await;
}

#[tokio::test]
async fn a_file_that_is_not_a_database_is_a_one_line_error() {
    for (name, bytes) in [
        (
            "garbage",
            (0..20_000u32)
                .map(|i| (i * 7 % 251) as u8)
                .collect::<Vec<u8>>(),
        ),
        ("text", b"this is not a database".to_vec()),
        ("zeroed header", {
            let mut b = vec![0u8; 8192];
            b[100] = 1;
            b
        }),
    ] {
        let data = tempfile::tempdir().unwrap();
        std::fs::write(data.path().join(DB_FILE), &bytes).unwrap();
        let failed = match Binary::try_start(data.path(), &[]) {
            Ok(_) => panic!("{name}: the server started over a file that is not a database"),
            Err(failed) => failed,
        };
        assert!(!failed.status.success(), "{name}: {:?}", failed.status);
        assert!(
            !failed.stderr.contains("panicked"),
            "{name}:\n{}",
            failed.stderr
        );
        let reason: Vec<&str> = failed
            .stderr
            .lines()
            .filter(|l| l.starts_with("concord: "))
            .collect();
        assert_eq!(
            reason.len(),
            1,
            "{name}: one line says why:\n{}",
            failed.stderr
        );
        assert!(
            reason[0].contains(DB_FILE) && reason[0].contains("not a database"),
            "{name}: {}",
            reason[0]
        );
        assert!(
            !failed.stderr.contains("Caused by") && !failed.stderr.contains("backtrace"),
            "{name}:\n{}",
            failed.stderr
        );
        // The file is left for the operator to look at.
        assert_eq!(std::fs::read(data.path().join(DB_FILE)).unwrap(), bytes);
    }
}

#[tokio::test]
async fn a_damaged_page_fails_its_reads_not_the_server() {
    let data = tempfile::tempdir().unwrap();
    let (id, other) = prepare(data.path(), 40).await;
    // Big changes spread the document over many pages; then garbage over the second half
    // of the file (the header and the schema, in the first pages, stay intact).
    let path = data.path().join(DB_FILE);
    let mut bytes = std::fs::read(&path).unwrap();
    let page = 4096;
    let pages = bytes.len() / page;
    assert!(pages >= 4, "{pages} pages");
    for b in &mut bytes[(pages / 2) * page..] {
        *b = 0x5a;
    }
    std::fs::write(&path, &bytes).unwrap();
    match Binary::try_start(data.path(), &[]) {
        Err(failed) => {
            assert!(!failed.stderr.contains("panicked"), "{}", failed.stderr);
            assert!(
                failed.stderr.lines().any(|l| l.starts_with("concord: ")),
                "{}",
                failed.stderr
            );
        }
        Ok(server) => {
            let http = Http::new(&server);
            // Each request is answered (problem+json when it fails), and the server lives.
            // Reads that need a damaged page say so (problem+json, checked by `send`);
            // the rest are answered as usual.
            for path in [
                format!("/v1/docs/{id}"),
                "/v1/docs".into(),
                format!("/v1/docs/{other}"),
            ] {
                let (status, body) = http.get(&path).await;
                assert!(
                    status == 200
                        || (status == 500
                            && body["type"].as_str().unwrap().ends_with("storage-corrupt")),
                    "{path}: {status} {body}"
                );
            }
            let (status, _) = http.get("/healthz").await;
            assert_eq!(status, 200);
            assert!(!server.stderr().contains("panicked"), "{}", server.stderr());
            server.kill();
        }
    }
}

/// Gives document `id` a snapshot that does not load.
fn damage_snapshot(data: &Path, id: &str) {
    let conn = Connection::open(data.join(DB_FILE)).unwrap();
    conn.execute(
        "INSERT INTO snapshots (doc, bytes) VALUES (?1, ?2)",
        params![id, b"\x85\x6f\x4a\x83not a snapshot".to_vec()],
    )
    .unwrap();
}

#[tokio::test]
async fn a_damaged_snapshot_fails_its_document_only() {
    let data = tempfile::tempdir().unwrap();
    let (id, other) = prepare(data.path(), 3).await;
    damage_snapshot(data.path(), &id);

    let server = Binary::start(data.path(), &[]);
    let http = Http::new(&server);
    let (status, problem) = http.get(&format!("/v1/docs/{id}")).await;
    assert_eq!(status, 500, "{problem}");
    assert_eq!(
        http.health().await,
        json!({"damaged_documents": 1, "skipped_records": 1})
    );
    assert_eq!(http.log(&other).await.0, ["kept"]);
    let stderr = stop(server).await;
    assert!(stderr.contains("snapshot"), "the log says why:\n{stderr}");
}

#[tokio::test]
async fn a_document_that_does_not_load_can_still_be_deleted() {
    let data = tempfile::tempdir().unwrap();
    let (id, other) = prepare(data.path(), 3).await;
    damage_snapshot(data.path(), &id);

    let server = Binary::start(data.path(), &[]);
    let http = Http::new(&server);
    assert_eq!(http.get(&format!("/v1/docs/{id}")).await.0, 500);
    let url = format!("{}/v1/docs/{id}", http.base);
    let deleted = http.client.delete(&url).send().await.unwrap();
    assert_eq!(deleted.status(), 204, "{}", deleted.text().await.unwrap());
    let (status, problem) = http.get(&format!("/v1/docs/{id}")).await;
    assert_eq!(status, 404, "{problem}");
    let again = http.client.delete(&url).send().await.unwrap();
    assert_eq!(again.status(), 404, "a second delete finds nothing");
    assert_eq!(http.health().await, Value::Null, "no damage left to report");
    assert_eq!(http.log(&other).await.0, ["kept"]);
    stop(server).await;

    let server = Binary::start(data.path(), &[]);
    let http = Http::new(&server);
    assert_eq!(
        http.get(&format!("/v1/docs/{id}")).await.0,
        404,
        "gone for good"
    );
    assert_eq!(http.log(&other).await.0, ["kept"]);
    stop(server).await;
}
