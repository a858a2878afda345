//! The browser suite: the real server on `127.0.0.1:0`, and headless Chromium driving the
//! viewer through `tests/browser/run.mjs` (Node and playwright-core).
//!
//! Needs `/usr/bin/chromium` (Debian's `chromium`; `CHROMIUM` names another), `node`, and
//! `npm ci` run in `tests/browser`. Without them the test says "browser suite SKIPPED" and
//! passes, unless `CI` is set: in CI a missing browser is a failure, never a silent pass.
//! Before the browser starts, this file stores a document whose history holds changes no
//! HTTP write makes (claiming a date 9e12 seconds after 1970, one without an agent), posted
//! as raw changes, and hands its id to the suite (`FAR_FUTURE_DOC`): history shows when the
//! server received them and from whom, the claims beside. Screenshots go to `target/browser-artifacts/`; with `README_IMAGES=docs/img` (a folder
//! relative to the workspace) the document and comparison pages are also saved there, as
//! the README's `document.png` and `compare.png`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use concord_core::{Document, Schema, WriteMeta};
use concord_tests::TestServer;
use reqwest::{Method, StatusCode};
use serde_json::json;
use tokio::process::Command;

/// The whole suite, browser start included, must finish within this.
const SUITE_TIMEOUT: Duration = Duration::from_secs(300);

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

/// Why the suite cannot run here, if it cannot.
fn missing(suite: &Path, chromium: &Path) -> Option<String> {
    if !chromium.exists() {
        return Some(format!(
            "no Chromium at {} (apt-get install chromium, or set CHROMIUM)",
            chromium.display()
        ));
    }
    let node = std::process::Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !node.is_ok_and(|s| s.success()) {
        return Some("no node on PATH".into());
    }
    if !suite.join("node_modules/playwright-core").is_dir() {
        return Some(format!(
            "{} is missing (run npm ci there)",
            suite.join("node_modules").display()
        ));
    }
    None
}

/// A change time in seconds that no JavaScript `Date` can hold (its limit is 8.64e12 s).
const FAR_FUTURE_SECS: i64 = 9_000_000_000_000;

/// Calls `commit` with options made by `set` from the defaults. (This crate does not
/// depend on Automerge, so it cannot name `CommitOptions`: the type is inferred from
/// `commit`, which is checked first.)
fn commit_with<O: Default>(commit: impl FnOnce(O), set: impl FnOnce(O) -> O) {
    commit(set(O::default()));
}

/// A document on the server whose history holds a change by `far-future` dated
/// [`FAR_FUTURE_SECS`], and after it an empty change with no agent (as a raw Automerge
/// client makes them) dated the same: posted as raw changes, the first by `far-future`, the
/// second naming nobody (`anonymous`). History shows the server's times, and the claimed
/// ones beside. Answers its id.
async fn far_future_document(server: &TestServer) -> String {
    let (id, _) = server
        .create(json!({"value": {"note": "the next change is dated 9e12 s"}}))
        .await;
    let meta = WriteMeta {
        agent: "far-future".into(),
        time_ms: FAR_FUTURE_SECS * 1000,
        message: None,
    };
    let (doc, _) = Document::create(&json!({"when": "year 287,000"}), Schema::default(), &meta)
        .expect("a document");
    let dated = doc.changes_since(None).expect("its changes");
    let mut raw = doc.automerge().fork();
    let heads = raw.get_heads();
    commit_with(
        |options| {
            raw.empty_commit(options);
        },
        |options| options.with_time(FAR_FUTURE_SECS),
    );
    let agentless = raw.save_after(&heads);
    for (bytes, sender) in [(dated, Some("far-future")), (agentless, None)] {
        let mut request = server
            .request(Method::POST, &format!("/v1/docs/{id}/changes"))
            .header("content-type", "application/octet-stream")
            .body(bytes);
        if let Some(sender) = sender {
            request = request.header("concord-agent", sender);
        }
        let reply = server.send(request).await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.json());
        assert_eq!(reply.json()["new_changes"], 1);
    }
    let history = server
        .send(server.request(Method::GET, &format!("/v1/docs/{id}/history")))
        .await
        .json();
    let changes = history["changes"].as_array().expect("changes");
    let far: Vec<_> = changes
        .iter()
        .filter(|c| c["claimed_time"] == FAR_FUTURE_SECS)
        .map(|c| (c["agent"].clone(), c["claimed_agent"].clone()))
        .collect();
    assert_eq!(
        far,
        [
            (json!("far-future"), json!("far-future")),
            (json!("anonymous"), json!(null))
        ],
        "{history}"
    );
    assert!(
        changes
            .iter()
            .all(|c| c["time"].as_i64() < Some(FAR_FUTURE_SECS)),
        "{history}"
    );
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_in_headless_chromium() {
    let suite = workspace().join("tests/browser");
    let chromium = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    if let Some(reason) = missing(&suite, &chromium) {
        if std::env::var_os("CI").is_some() {
            panic!("browser suite cannot run in CI: {reason}");
        }
        // Straight to the process's stderr, past the test harness's capture, so that a
        // plain `cargo test` shows it.
        let _ = writeln!(std::io::stderr(), "browser suite SKIPPED: {reason}");
        return;
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|t| {
            if t.is_absolute() {
                t
            } else {
                workspace().join(t)
            }
        })
        .unwrap_or_else(|| workspace().join("target"));
    let artifacts = target.join("browser-artifacts");
    let server = TestServer::start().await;
    let far_future = far_future_document(&server).await;
    let url = server.url("");
    let mut command = Command::new("node");
    command
        .arg("run.mjs")
        .arg(&url)
        .current_dir(&suite)
        .env("CHROMIUM", &chromium)
        .env("ARTIFACTS", &artifacts)
        .env("FAR_FUTURE_DOC", &far_future)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if let Some(images) = std::env::var_os("README_IMAGES") {
        // Relative to the workspace, like the README that shows them.
        command.env("README_IMAGES", workspace().join(images));
    }
    let output = tokio::time::timeout(SUITE_TIMEOUT, command.output())
        .await
        .unwrap_or_else(|_| panic!("the browser suite took over {SUITE_TIMEOUT:?}"))
        .expect("node runs");
    // Printed (not inherited) so that cargo shows it with the failure.
    println!("{}", String::from_utf8_lossy(&output.stdout));
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "the browser suite failed ({}); screenshots in {}",
        output.status,
        artifacts.display()
    );
}
