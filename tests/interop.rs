//! Interop with the official JavaScript client: starts the real server, then runs the Node
//! suite in `tests/js` (`node --test`) against it, with `CONCORD_URL` set to its address.
//!
//! Needs `node` (20 or later) and `tests/js/node_modules` (`npm ci --prefix tests/js`).
//! Without them the test prints `interop suite SKIPPED: <reason>` and passes, unless `CI` is
//! set: CI must run the suite, so there it fails instead.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use concord_tests::TestServer;

/// Bounds the whole Node run; it takes seconds.
const SUITE_TIMEOUT: Duration = Duration::from_secs(300);

/// Why the suite cannot run here, if it cannot.
fn missing(js: &std::path::Path) -> Option<String> {
    let node = std::process::Command::new("node")
        .arg("--version")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .output();
    match node {
        Err(e) => {
            return Some(format!(
                "`node` cannot be run ({e}); install Node.js 20 or later"
            ))
        }
        Ok(out) if !out.status.success() => return Some("`node --version` failed".into()),
        Ok(out) => {
            let version = String::from_utf8_lossy(&out.stdout);
            let major = version
                .trim()
                .trim_start_matches('v')
                .split('.')
                .next()
                .and_then(|m| m.parse::<u32>().ok());
            if major.is_none_or(|m| m < 20) {
                return Some(format!(
                    "node {} is too old; 20 or later is needed",
                    version.trim()
                ));
            }
        }
    }
    if !js.join("node_modules/@automerge/automerge-repo").is_dir() {
        return Some(format!(
            "{} has no node_modules; run `npm ci --prefix tests/js`",
            js.display()
        ));
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_automerge_repo_client_interoperates() {
    let js = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("js");
    if let Some(reason) = missing(&js) {
        if std::env::var_os("CI").is_some() {
            panic!("interop suite cannot run in CI: {reason}");
        }
        println!("interop suite SKIPPED: {reason}");
        return;
    }
    let server = TestServer::start().await;
    let url = server.url("");
    let mut node = tokio::process::Command::new("node");
    node.arg("--test")
        .current_dir(&js)
        .env("CONCORD_URL", &url)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(SUITE_TIMEOUT, node.output())
        .await
        .expect("the Node suite finishes in time")
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        output.status.success(),
        "the Node interop suite failed ({}); its output is above",
        output.status
    );
    assert!(
        stdout.contains("# fail 0") && !stdout.contains("# pass 0"),
        "the Node suite ran no test or failed one"
    );
}
