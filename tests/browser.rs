//! The browser suite: the real server on `127.0.0.1:0`, and headless Chromium driving the
//! viewer through `tests/browser/run.mjs` (Node and playwright-core).
//!
//! Needs `/usr/bin/chromium` (Debian's `chromium`; `CHROMIUM` names another), `node`, and
//! `npm ci` run in `tests/browser`. Without them the test says "browser suite SKIPPED" and
//! passes, unless `CI` is set: in CI a missing browser is a failure, never a silent pass.
//! Screenshots go to `target/browser-artifacts/`; with `README_IMAGES=docs/img` (a folder
//! relative to the workspace) the document and comparison pages are also saved there, as
//! the README's `document.png` and `compare.png`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use concord_tests::TestServer;
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
    let url = server.url("");
    let mut command = Command::new("node");
    command
        .arg("run.mjs")
        .arg(&url)
        .current_dir(&suite)
        .env("CHROMIUM", &chromium)
        .env("ARTIFACTS", &artifacts)
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
