//! The Node suites (`tests/js`, `tests/mcp`): whether one can run here, and running it
//! under `node --test` against servers named in its environment.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

/// Bounds a whole Node run; it takes seconds.
const SUITE_TIMEOUT: Duration = Duration::from_secs(300);

/// Why the suite in `dir` cannot run here, if it cannot: no `node` 20 or later, or no
/// `package` installed in its `node_modules`.
pub fn missing(dir: &Path, package: &str) -> Option<String> {
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
    if !dir.join("node_modules").join(package).is_dir() {
        return Some(format!(
            "{} has no node_modules; run `npm ci --prefix {}`",
            dir.display(),
            dir.display()
        ));
    }
    None
}

/// Whether the suite `name` in `dir` can run here (see [`missing`]). When it cannot, this
/// prints `<name> suite SKIPPED: <reason>` and the test passes, except under CI (`CI` is
/// set), where every suite must run: there it panics.
pub fn runnable(name: &str, dir: &Path, package: &str) -> bool {
    let Some(reason) = missing(dir, package) else {
        return true;
    };
    if std::env::var_os("CI").is_some() {
        panic!("{name} suite cannot run in CI: {reason}");
    }
    println!("{name} suite SKIPPED: {reason}");
    false
}

/// Runs the suite in `dir` (`node --test`) with `env`, prints its output, and fails unless
/// it ran tests and every one passed.
pub async fn run_suite(dir: &Path, env: &[(&str, &str)]) {
    let mut node = tokio::process::Command::new("node");
    node.arg("--test")
        .current_dir(dir)
        .envs(env.iter().copied())
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
        "the Node suite in {} failed ({}); its output is above",
        dir.display(),
        output.status
    );
    assert!(
        stdout.contains("# fail 0") && !stdout.contains("# pass 0"),
        "the Node suite ran no test or failed one"
    );
}
