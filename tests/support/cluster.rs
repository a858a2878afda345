//! The PostgreSQL cluster suite's setup: a schema of the test's own on the database named
//! by `CONCORD_TEST_POSTGRES` ([`Db`], dropped with the test), and Concord nodes in this
//! process over their own stores on it ([`Node`]).

use std::io::Write;
use std::sync::{Arc, Once};
use std::time::Duration;

use concord_client::{Change, Client, CreateOptions, Doc, Event, Subscription};
use concord_core::storage::Store;
use concord_server::postgres::PostgresStore;
use concord_server::registry::Tuning;
use concord_server::{AppState, Config, Server};
use serde_json::Value;
use uuid::Uuid;

/// The longest any wait for another node may take before the test is declared hung.
pub const HUNG: Duration = Duration::from_secs(60);

/// The database URL, or `None` (after saying once that the suite is skipped).
pub fn database() -> Option<String> {
    if let Ok(url) = std::env::var("CONCORD_TEST_POSTGRES") {
        if !url.trim().is_empty() {
            return Some(url.trim().to_owned());
        }
    }
    if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
        panic!(
            "CI runs the PostgreSQL suite: set CONCORD_TEST_POSTGRES \
             (for example postgres://postgres@127.0.0.1:5432/test)"
        );
    }
    static SAID: Once = Once::new();
    SAID.call_once(|| {
        // Straight to the process's stderr: the test harness does not capture it.
        let _ = writeln!(
            std::io::stderr(),
            "PostgreSQL suite SKIPPED: set CONCORD_TEST_POSTGRES"
        );
    });
    None
}

/// A schema of the test's own; dropped (with everything in it) when the test ends.
pub struct Db {
    base: String,
    /// The schema's name, for queries behind the nodes' backs.
    pub schema: String,
}

impl Db {
    pub fn new() -> Option<Db> {
        let base = database()?;
        let schema = format!(
            "concord_test_{}",
            &Uuid::new_v4().simple().to_string()[..12]
        );
        Some(Db { base, schema })
    }

    /// The URL every node of the test uses.
    pub fn url(&self) -> String {
        let sep = if self.base.contains('?') { '&' } else { '?' };
        format!("{}{sep}schema={}", self.base, self.schema)
    }

    /// A plain connection to the database, for looking behind the nodes' backs.
    pub async fn admin(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.base, tokio_postgres::NoTls)
            .await
            .expect("the test database accepts connections");
        tokio::spawn(connection);
        client
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let (base, schema) = (self.base.clone(), self.schema.clone());
        // On a thread of its own: this may run while a test's runtime is panicking.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async {
                let (client, connection) =
                    tokio_postgres::connect(&base, tokio_postgres::NoTls).await?;
                tokio::spawn(connection);
                client
                    .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                    .await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test schema {}: {dropped:?}", self.schema);
        }
    }
}

/// Maintenance only when a test calls it.
pub fn manual_maintenance() -> Tuning {
    Tuning {
        maintain_every: Duration::from_secs(3600),
        ..Tuning::default()
    }
}

/// One Concord node in this process, over its own `PostgresStore`.
pub struct Node {
    server: Option<Server>,
    /// Its own store (on the test's schema).
    pub store: Arc<PostgresStore>,
    base: String,
    _dir: tempfile::TempDir,
}

impl Node {
    /// Starts a node on the test's schema, maintaining its documents only when asked.
    pub async fn start(db: &Db) -> Node {
        Self::start_with(db, manual_maintenance()).await
    }

    /// Starts a node on the test's schema with `tuning`.
    pub async fn start_with(db: &Db, tuning: Tuning) -> Node {
        let store = Arc::new(
            PostgresStore::open(&db.url())
                .await
                .expect("the store opens"),
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let config = Config {
            addr: "127.0.0.1:0".parse().unwrap(),
            data: dir.path().to_path_buf(),
            storage: Some(db.url()),
            tuning,
            ..Config::default()
        };
        let server = Server::start_with_store(Arc::clone(&store) as Arc<dyn Store>, config)
            .await
            .expect("the node starts");
        Node {
            base: format!("http://{}", server.addr()),
            server: Some(server),
            store,
            _dir: dir,
        }
    }

    /// A client of this node, writing as `agent`.
    pub fn client(&self, agent: &str) -> Client {
        Client::new(&self.base, agent)
    }

    /// Creates the document a test starts from, as agent `setup`.
    pub async fn create_doc(&self, options: CreateOptions) -> Doc {
        self.client("setup")
            .create(&options)
            .await
            .expect("the document is created")
    }

    /// The node's shared state, for in-process inspection.
    pub fn state(&self) -> &Arc<AppState> {
        self.server.as_ref().expect("running").state()
    }

    /// Graceful shutdown, then the store is closed.
    pub async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await.expect("clean shutdown");
        }
        self.store.close().await;
    }
}

/// `n` nodes on the test's schema.
pub async fn nodes(db: &Db, n: usize) -> Vec<Node> {
    let mut nodes = Vec::with_capacity(n);
    for _ in 0..n {
        nodes.push(Node::start(db).await);
    }
    nodes
}

/// Reads a subscription until it reaches `version`; returns the changes on the way.
pub async fn until_version(subscription: &mut Subscription, version: &str) -> Vec<Change> {
    let mut changes = Vec::new();
    let reached = tokio::time::timeout(HUNG, async {
        loop {
            match subscription.next().await.expect("the subscription lives") {
                Event::Change(change) => {
                    let done = change.version == version;
                    changes.push(change);
                    if done {
                        return;
                    }
                }
                Event::Snapshot { version: v, .. } if v == version => return,
                Event::Snapshot { .. } => {}
                Event::Error(problem) => panic!("the subscription reported {problem:?}"),
            }
        }
    })
    .await;
    assert!(
        reached.is_ok(),
        "the subscriber never saw version {version}"
    );
    changes
}

/// The document as every node sees it: asserts that they agree, returns the value.
pub async fn agreed(nodes: &[Node], id: Uuid) -> Value {
    let mut seen = Vec::new();
    for node in nodes {
        let doc = node.client("reader").get(id).await.expect("readable");
        seen.push((doc.value, doc.version));
    }
    for other in &seen[1..] {
        assert_eq!(other, &seen[0], "two nodes disagree");
    }
    seen.swap_remove(0).0
}
