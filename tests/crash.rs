//! Crash safety of the real `concord` binary: writers run against it, each write carrying a
//! unique mark and an `Idempotency-Key`, and every acknowledged write is recorded. The
//! server is killed with SIGKILL at a seeded-random moment (after a random number of
//! acknowledgements, with writes in flight), restarted over the same data folder, and then:
//!
//! 1. every write that was in flight at the kill is retried with its key, and must succeed:
//!    it is replayed if it had become durable, applied now if not;
//! 2. every document loads, nothing stored is skipped, and each holds exactly what the
//!    ledger says: every mark once (acknowledged before the kill or retried after), the
//!    counter equal to the number of patches, every text mark once.
//!
//! So an acknowledged write is never lost, an unacknowledged one is applied at most once,
//! and a retry after a crash applies it exactly once.
//!
//! `CONCORD_SOAK_CYCLES=N` runs N kill/restart cycles instead of the normal 20;
//! `CONCORD_CRASH_SEED=S` changes the seed (printed with every failure).

#[path = "binary.rs"]
mod binary;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use binary::Binary;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use reqwest::Method;
use serde_json::{json, Value};
use uuid::Uuid;

/// Kill/restart cycles in the normal test run.
const CYCLES: usize = 20;
/// Concurrent writers per cycle.
const WRITERS: usize = 4;
/// The most acknowledgements before a kill.
const MAX_ACKS_BEFORE_KILL: usize = 40;
/// Creates stop at this many documents, so that a soak's checks stay bounded.
const MAX_DOCS: usize = 12;
/// Bounds on waits, so that a hung server fails the test instead of hanging it.
const BOUND: Duration = Duration::from_secs(60);

fn seed() -> u64 {
    std::env::var("CONCORD_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_C0DE)
}

fn cycles() -> usize {
    std::env::var("CONCORD_SOAK_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(CYCLES)
}

/// A request as sent, kept to be retried byte for byte.
#[derive(Debug, Clone)]
struct Request {
    method: Method,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

/// What a write does once acknowledged, for the ledger.
#[derive(Debug, Clone)]
enum Effect {
    /// Appends `mark` to `/log`, increments `/n`, prepends `mark;` to `/t`.
    Patch { doc: usize, mark: String },
    /// A whole value from an older version, with `mark` appended to `/log`.
    Put { doc: usize, mark: String },
    /// A new document with this id.
    Create { id: String },
}

#[derive(Debug, Clone)]
struct Write {
    request: Request,
    effect: Effect,
}

/// What one document must hold.
#[derive(Debug, Default)]
struct DocLedger {
    id: String,
    /// Every mark in `/log`, each exactly once.
    log: Vec<String>,
    /// The patches' marks: each once in `/t`, and `/n` counts them.
    patches: Vec<String>,
    /// Acknowledged `(version, value)` pairs: durable bases for stale writes.
    bases: Vec<(String, Value)>,
}

/// Every acknowledged write.
#[derive(Debug, Default)]
struct Ledger {
    docs: Vec<DocLedger>,
    acks: usize,
}

impl Ledger {
    fn record(&mut self, effect: &Effect, reply: &Value) {
        self.acks += 1;
        let base = || {
            (
                reply["version"].as_str().expect("a version").to_owned(),
                reply["value"].clone(),
            )
        };
        match effect {
            Effect::Patch { doc, mark } => {
                let d = &mut self.docs[*doc];
                d.log.push(mark.clone());
                d.patches.push(mark.clone());
                d.bases.push(base());
            }
            Effect::Put { doc, mark } => {
                let d = &mut self.docs[*doc];
                d.log.push(mark.clone());
                d.bases.push(base());
            }
            Effect::Create { id } => self.docs.push(DocLedger {
                id: id.clone(),
                bases: vec![base()],
                ..DocLedger::default()
            }),
        }
    }
}

fn create_write(mark: &str) -> Write {
    let id = Uuid::new_v4().to_string();
    let body = json!({
        "id": id,
        "value": {"log": [], "t": "", "n": 0},
        "text": ["/t"],
        "counters": ["/n"],
    });
    Write {
        request: Request {
            method: Method::POST,
            path: "/v1/docs".into(),
            headers: vec![
                ("content-type", "application/json".into()),
                ("idempotency-key", mark.to_owned()),
                ("concord-agent", "crash-writer".into()),
            ],
            body: body.to_string().into_bytes(),
        },
        effect: Effect::Create { id },
    }
}

/// The next write of a writer: mostly patches, some whole-value writes from an older
/// acknowledged version, a few creates.
fn next_write(rng: &mut ChaCha8Rng, ledger: &Ledger, mark: &str) -> Write {
    let roll = rng.random_range(0..100);
    if (roll < 5 && ledger.docs.len() < MAX_DOCS) || ledger.docs.is_empty() {
        return create_write(mark);
    }
    let doc = rng.random_range(0..ledger.docs.len());
    let d = &ledger.docs[doc];
    let path = format!("/v1/docs/{}", d.id);
    if roll < 25 {
        let (version, value) =
            &d.bases[rng.random_range(d.bases.len().saturating_sub(20)..d.bases.len())];
        let mut value = value.clone();
        value["log"]
            .as_array_mut()
            .expect("a log")
            .push(json!(mark));
        return Write {
            request: Request {
                method: Method::PUT,
                path,
                headers: vec![
                    ("content-type", "application/json".into()),
                    ("if-match", format!("\"{version}\"")),
                    ("idempotency-key", mark.to_owned()),
                    ("concord-agent", "crash-writer".into()),
                ],
                body: value.to_string().into_bytes(),
            },
            effect: Effect::Put {
                doc,
                mark: mark.to_owned(),
            },
        };
    }
    let ops = json!([
        {"op": "add", "path": "/log/-", "value": mark},
        {"op": "increment", "path": "/n", "value": 1},
        {"op": "splice", "path": "/t", "pos": 0, "insert": format!("{mark};")},
    ]);
    Write {
        request: Request {
            method: Method::PATCH,
            path,
            headers: vec![
                ("content-type", "application/json-patch+json".into()),
                ("idempotency-key", mark.to_owned()),
                ("concord-agent", "crash-writer".into()),
            ],
            body: ops.to_string().into_bytes(),
        },
        effect: Effect::Patch {
            doc,
            mark: mark.to_owned(),
        },
    }
}

/// Sends a request: `Ok((status, body))`, or `Err` if the connection failed.
async fn send(
    client: &reqwest::Client,
    server: &str,
    request: &Request,
) -> Result<(u16, Vec<u8>), reqwest::Error> {
    let mut builder = client
        .request(
            request.method.clone(),
            format!("http://{server}{}", request.path),
        )
        .body(request.body.clone());
    for (name, value) in &request.headers {
        builder = builder.header(*name, value);
    }
    let response = builder.send().await?;
    let status = response.status().as_u16();
    Ok((status, response.bytes().await?.to_vec()))
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(BOUND)
        .build()
        .expect("an HTTP client")
}

/// One writer: writes until the server goes away. Returns the write in flight then, if
/// any; an unexpected answer is a failure.
async fn writer(
    server: String,
    ledger: Arc<Mutex<Ledger>>,
    acks: Arc<tokio::sync::watch::Sender<usize>>,
    stopping: Arc<AtomicBool>,
    mut rng: ChaCha8Rng,
    name: String,
) -> Result<Option<Write>, String> {
    let client = client();
    for i in 0.. {
        let mark = format!("{name}-{i}");
        let write = next_write(&mut rng, &ledger.lock().unwrap(), &mark);
        match send(&client, &server, &write.request).await {
            Ok((status, body)) if (200..300).contains(&status) => {
                let reply: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
                ledger.lock().unwrap().record(&write.effect, &reply);
                acks.send_modify(|n| *n += 1);
            }
            Ok((status, body)) => {
                return Err(format!(
                    "{mark}: {:?} answered {status}: {}",
                    write.effect,
                    String::from_utf8_lossy(&body)
                ))
            }
            Err(e) if stopping.load(Ordering::SeqCst) => {
                let _ = e;
                return Ok(Some(write));
            }
            Err(e) => return Err(format!("{mark}: request failed before the kill: {e}")),
        }
    }
    unreachable!()
}

/// Retries every write that was in flight at the crash: each must now succeed.
async fn retry(server: &Binary, ledger: &Mutex<Ledger>, pending: Vec<Write>, context: &str) {
    let client = client();
    for write in pending {
        let (status, body) = send(&client, &server.addr, &write.request)
            .await
            .unwrap_or_else(|e| panic!("{context}: retry of {:?} failed: {e}", write.effect));
        assert!(
            (200..300).contains(&status),
            "{context}: retry of {:?} answered {status}: {}",
            write.effect,
            String::from_utf8_lossy(&body)
        );
        let reply: Value = serde_json::from_slice(&body).expect("JSON");
        ledger.lock().unwrap().record(&write.effect, &reply);
    }
}

fn counts(items: impl IntoIterator<Item = String>) -> std::collections::BTreeMap<String, usize> {
    let mut out = std::collections::BTreeMap::new();
    for item in items {
        *out.entry(item).or_insert(0) += 1;
    }
    out
}

/// Checks every document against the ledger.
async fn verify(server: &Binary, ledger: &Mutex<Ledger>, context: &str) {
    // A copy: the lock is not held across the requests.
    let docs: Vec<(String, Vec<String>, Vec<String>)> = ledger
        .lock()
        .unwrap()
        .docs
        .iter()
        .map(|d| (d.id.clone(), d.log.clone(), d.patches.clone()))
        .collect();
    let client = client();
    let get = |path: String| {
        let client = &client;
        async move {
            let response = client
                .get(server.url(&path))
                .send()
                .await
                .unwrap_or_else(|e| panic!("{context}: GET {path}: {e}"));
            let status = response.status().as_u16();
            let body: Value = response.json().await.expect("JSON");
            assert_eq!(status, 200, "{context}: GET {path}: {body}");
            body
        }
    };
    let listed = get("/v1/docs".into()).await;
    let listed: Vec<&str> = listed["docs"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|d| d["id"].as_str().expect("an id"))
        .collect();
    for (id, log, patches) in &docs {
        assert!(
            listed.contains(&id.as_str()),
            "{context}: {id} is not listed"
        );
        let value = get(format!("/v1/docs/{id}")).await["value"].clone();
        let stored = value["log"]
            .as_array()
            .expect("a log")
            .iter()
            .map(|m| m.as_str().expect("a mark").to_owned());
        assert_eq!(
            counts(stored),
            counts(log.iter().cloned()),
            "{context}: /log of {id}"
        );
        assert_eq!(
            value["n"],
            json!(patches.len()),
            "{context}: /n of {id} counts its patches"
        );
        let text = value["t"].as_str().expect("text");
        let marks = text.split(';').filter(|m| !m.is_empty()).map(str::to_owned);
        assert_eq!(
            counts(marks),
            counts(patches.iter().cloned()),
            "{context}: /t of {id}"
        );
        get(format!("/v1/docs/{id}/history")).await;
    }
}

/// The server's log must not mention a skipped record or a panic.
fn assert_clean(stderr: &str, context: &str) {
    assert!(
        !stderr.contains("skipped a stored record") && !stderr.contains("panicked"),
        "{context}: the server reported damage:\n{stderr}"
    );
}

/// Runs writers until `acks_wanted` more acknowledgements (or a failure), then stops the server
/// with `stop`; returns the writes in flight at that moment.
async fn run_writers<F, Fut>(
    server: Binary,
    ledger: &Arc<Mutex<Ledger>>,
    rng: &mut ChaCha8Rng,
    acks_wanted: usize,
    context: &str,
    stop: F,
) -> Vec<Write>
where
    F: FnOnce(Binary) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (acks, mut acked) = tokio::sync::watch::channel(0usize);
    let acks = Arc::new(acks);
    let stopping = Arc::new(AtomicBool::new(false));
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..WRITERS {
        writers.spawn(writer(
            server.addr.clone(),
            Arc::clone(ledger),
            Arc::clone(&acks),
            Arc::clone(&stopping),
            ChaCha8Rng::seed_from_u64(rng.random()),
            format!("{context}-w{w}").replace(' ', "_"),
        ));
    }
    // Until enough acknowledgements, or a writer ended (which is a failure, reported below).
    tokio::select! {
        reached = tokio::time::timeout(BOUND, acked.wait_for(|n| *n >= acks_wanted)) => {
            assert!(reached.is_ok(), "{context}: {acks_wanted} acknowledgements did not come; stderr:\n{}", server.stderr());
        }
        Some(ended) = writers.join_next() => {
            panic!("{context}: a writer ended early: {ended:?}; stderr:\n{}", server.stderr());
        }
    }
    stopping.store(true, Ordering::SeqCst);
    stop(server).await;
    let mut pending = Vec::new();
    while let Some(ended) = writers.join_next().await {
        match ended.expect("a writer does not panic") {
            Ok(Some(write)) => pending.push(write),
            Ok(None) => {}
            Err(failure) => panic!("{context}: {failure}"),
        }
    }
    pending
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_no_acknowledged_write() {
    let seed = seed();
    let cycles = cycles();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let data = tempfile::tempdir().expect("a data folder");
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut pending: Vec<Write> = Vec::new();
    let mut pending_total = 0;
    for cycle in 0..=cycles {
        let context = format!("seed {seed} cycle {cycle}");
        let server = Binary::start(data.path(), &[]);
        retry(&server, &ledger, std::mem::take(&mut pending), &context).await;
        verify(&server, &ledger, &context).await;
        assert_clean(&server.stderr(), &context);
        if cycles > CYCLES && cycle % 10 == 0 {
            // A soak runs for many minutes: say how far it is (seen with --nocapture).
            let acks = ledger.lock().unwrap().acks;
            eprintln!("crash: cycle {cycle} of {cycles}: {acks} acknowledged writes, all present");
        }
        if cycle == cycles {
            // The last restart only checks; then a clean stop.
            let (status, stderr) = server
                .terminate(BOUND)
                .await
                .unwrap_or_else(|| panic!("{context}: no exit after SIGTERM"));
            assert!(
                status.success(),
                "{context}: exit {status}; stderr:\n{stderr}"
            );
            break;
        }
        let acks_wanted = rng.random_range(0..=MAX_ACKS_BEFORE_KILL);
        pending = run_writers(
            server,
            &ledger,
            &mut rng,
            acks_wanted,
            &context,
            |server| async move {
                let stderr = server.kill();
                assert!(
                    !stderr.contains("panicked"),
                    "a panic before the kill:\n{stderr}"
                );
            },
        )
        .await;
        pending_total += pending.len();
    }
    let ledger = ledger.lock().unwrap();
    // The run did what it claims: many writes, several documents, writes cut by kills.
    assert!(
        ledger.acks >= cycles * 5,
        "only {} writes were acknowledged",
        ledger.acks
    );
    assert!(
        ledger.docs.len() >= 2,
        "only {} documents",
        ledger.docs.len()
    );
    assert!(
        pending_total >= cycles / 2,
        "only {pending_total} writes were in flight at the kills"
    );
    eprintln!(
        "crash: seed {seed}: {cycles} kills, {} acknowledged writes, {pending_total} retried after a kill, {} documents",
        ledger.acks,
        ledger.docs.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_nothing_and_exits_within_the_timeout() {
    let seed = seed() ^ 0x7E2E;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let data = tempfile::tempdir().expect("a data folder");
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    const SHUTDOWN_TIMEOUT_SECS: u64 = 5;
    for round in 0..3 {
        let context = format!("seed {seed} SIGTERM round {round}");
        let server = Binary::start(
            data.path(),
            &[
                "--shutdown-timeout-secs",
                &SHUTDOWN_TIMEOUT_SECS.to_string(),
            ],
        );
        verify(&server, &ledger, &context).await;
        let acks_wanted = 30 + rng.random_range(0..30);
        let outcome = Arc::new(Mutex::new(None));
        let seen = Arc::clone(&outcome);
        let pending = run_writers(
            server,
            &ledger,
            &mut rng,
            acks_wanted,
            &context,
            |server| async move {
                // Bounded by the shutdown timeout plus slack for a loaded machine: a server that
                // ignored its timeout would take far longer.
                let exited = server
                    .terminate(Duration::from_secs(SHUTDOWN_TIMEOUT_SECS) + BOUND)
                    .await;
                *seen.lock().unwrap() = Some(exited);
            },
        )
        .await;
        let exited = outcome.lock().unwrap().take().expect("stopped");
        let (status, stderr) = exited.unwrap_or_else(|| panic!("{context}: no exit after SIGTERM"));
        assert!(
            status.success(),
            "{context}: exit {status}; stderr:\n{stderr}"
        );
        assert_clean(&stderr, &context);
        // A graceful stop answers what it accepted; what it did not accept is retried.
        let server = Binary::start(data.path(), &[]);
        retry(&server, &ledger, pending, &context).await;
        verify(&server, &ledger, &context).await;
        assert_clean(&server.stderr(), &context);
        server.kill();
    }
}

/// SIGTERM while an edit runs that would take minutes in a test build (a patch of 10,000
/// removes at a stale base of a 10,000-element list): the server still exits, cleanly,
/// within its shutdown timeout, and the document after a restart holds all of that write
/// or none of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_long_edit_exits_within_the_timeout() {
    const SHUTDOWN_TIMEOUT_SECS: u64 = 2;
    // Started at once, so well within this if the timeout holds; the edit alone takes
    // longer.
    const EXIT_BOUND: Duration = Duration::from_secs(SHUTDOWN_TIMEOUT_SECS + 30);
    const STARTED: &str = "started processing request";
    let data = tempfile::tempdir().expect("a data folder");
    let server = Binary::start_logging(
        data.path(),
        &[
            "--shutdown-timeout-secs",
            &SHUTDOWN_TIMEOUT_SECS.to_string(),
        ],
        "concord_server=warn,tower_http=debug",
    );
    let client = client();
    let items: Vec<u32> = (0..10_000).collect();
    let created: Value = client
        .post(server.url("/v1/docs"))
        .json(&json!({"value": {"items": items}}))
        .send()
        .await
        .expect("created")
        .error_for_status()
        .expect("created")
        .json()
        .await
        .expect("JSON");
    let (id, v1) = (
        created["id"].as_str().unwrap().to_owned(),
        created["version"].as_str().unwrap().to_owned(),
    );
    let doc = server.url(&format!("/v1/docs/{id}"));
    // Someone writes after v1, so that a patch as of v1 is stale.
    client
        .patch(&doc)
        .header("content-type", "application/json-patch+json")
        .body(json!([{"op": "add", "path": "/items/-", "value": -1}]).to_string())
        .send()
        .await
        .expect("answered")
        .error_for_status()
        .expect("applied");
    let removes: Vec<Value> = (0..10_000)
        .map(|_| json!({"op": "remove", "path": "/items/0"}))
        .collect();
    let long = tokio::spawn({
        let client = client.clone();
        let doc = doc.clone();
        async move {
            // Its answer, if any, does not matter: the server is stopping.
            let _ = client
                .patch(&doc)
                .header("content-type", "application/json-patch+json")
                .header("if-match", format!("\"{v1}\""))
                .body(Value::from(removes).to_string())
                .send()
                .await;
        }
    });
    assert!(
        server.wait_for_log(STARTED, 3, BOUND),
        "the long patch never started"
    );
    let (status, stderr) = server
        .terminate(EXIT_BOUND)
        .await
        .expect("exited within the shutdown timeout, though an edit was running");
    assert!(status.success(), "exit {status}; stderr:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    long.await.unwrap();

    let server = Binary::start(data.path(), &[]);
    let now: Value = client
        .get(server.url(&format!("/v1/docs/{id}")))
        .send()
        .await
        .expect("answered")
        .json()
        .await
        .expect("JSON");
    let len = now["value"]["items"].as_array().expect("a list").len();
    assert!(len == 10_001 || len == 1, "all of the write or none: {len}");
    server.kill();
}
