//! Interop with the official JavaScript client: starts the real server, then runs the Node
//! suite in `tests/js` (`node --test`) against it, with `CONCORD_URL` set to its address.
//!
//! Needs `node` (20 or later) and `tests/js/node_modules` (`npm ci --prefix tests/js`).
//! Without them the test prints `interop suite SKIPPED: <reason>` and passes, unless `CI` is
//! set: CI must run the suite, so there it fails instead.

use std::path::PathBuf;

use concord_tests::{node, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_automerge_repo_client_interoperates() {
    let js = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("js");
    if !node::runnable("interop", &js, "@automerge/automerge-repo") {
        return;
    }
    let server = TestServer::start().await;
    node::run_suite(&js, &[("CONCORD_URL", &server.url(""))]).await;
}
