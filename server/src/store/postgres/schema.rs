//! Connecting: the URL (with Concord's own `schema=`), one connection, the advisory lock
//! keys, and the schema's versioned migrations.

use std::str::FromStr;
use std::time::Duration;

use concord_core::storage::StoreError;
use sha2::{Digest, Sha256};
use tokio_postgres::{Client, NoTls};

use super::{corrupt, pg};

/// The schema migrations, in order: migration `i + 1` is `MIGRATIONS[i]`.
pub const MIGRATIONS: &[&str] = &[
    // 1: the initial tables.
    "CREATE TABLE docs (
        id            UUID PRIMARY KEY,
        seq           BIGSERIAL NOT NULL UNIQUE,
        strategy      TEXT NOT NULL,
        schema        TEXT NOT NULL,
        created_at_ms BIGINT NOT NULL,
        version       TEXT NOT NULL,
        change_count  BIGINT NOT NULL,
        updated_at_ms BIGINT NOT NULL,
        last_agent    TEXT
    );
    CREATE TABLE changes (
        seq   BIGSERIAL PRIMARY KEY,
        doc   UUID NOT NULL REFERENCES docs (id) ON DELETE CASCADE,
        hash  BYTEA NOT NULL,
        bytes BYTEA NOT NULL,
        UNIQUE (doc, hash)
    );
    CREATE INDEX changes_doc_seq ON changes (doc, seq);
    CREATE TABLE snapshots (
        doc        UUID PRIMARY KEY REFERENCES docs (id) ON DELETE CASCADE,
        bytes      BYTEA NOT NULL,
        covers_seq BIGINT NOT NULL
    );
    CREATE TABLE idempotency (
        key           TEXT PRIMARY KEY,
        fingerprint   TEXT NOT NULL,
        status        INTEGER NOT NULL,
        headers       TEXT NOT NULL,
        body          BYTEA NOT NULL,
        created_at_ms BIGINT NOT NULL
    );
    CREATE INDEX idempotency_created ON idempotency (created_at_ms);
    CREATE SEQUENCE lease_tokens;
    CREATE TABLE leases (
        doc           UUID PRIMARY KEY REFERENCES docs (id) ON DELETE CASCADE,
        token         BIGINT NOT NULL,
        agent         TEXT NOT NULL,
        expires_at_ms BIGINT NOT NULL,
        released      BOOLEAN NOT NULL
    );",
    // 2: who the server received each change from, and when (`seq`: the change's log
    // position), kept when a snapshot replaces the change's row. Changes stored before
    // have none: their history shows what their notes claim.
    "CREATE TABLE receipts (
        doc   UUID NOT NULL REFERENCES docs (id) ON DELETE CASCADE,
        hash  BYTEA NOT NULL,
        seq   BIGINT NOT NULL,
        agent TEXT NOT NULL,
        at_ms BIGINT NOT NULL,
        PRIMARY KEY (doc, hash)
    );
    CREATE INDEX receipts_doc_seq ON receipts (doc, seq);",
];

/// A connection URL split into what `tokio-postgres` reads and Concord's `schema`.
pub(super) fn parse_url(url: &str) -> Result<(tokio_postgres::Config, Option<String>), StoreError> {
    let bad = |why: String| StoreError::Backend(format!("invalid PostgreSQL URL: {why}"));
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(bad("it must start with postgres:// or postgresql://".into()));
    }
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut schema = None;
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("schema", name)) => schema = Some(name.to_owned()),
            _ => rest.push(pair),
        }
    }
    if let Some(name) = &schema {
        let valid = !name.is_empty()
            && name.len() <= 48
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            && !name.as_bytes()[0].is_ascii_digit();
        if !valid {
            return Err(bad(format!(
                "schema {name:?} must be 1 to 48 lowercase letters, digits and _, not starting with a digit"
            )));
        }
    }
    let url = if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    let mut config = tokio_postgres::Config::from_str(&url).map_err(|e| bad(e.to_string()))?;
    if let Some(name) = &schema {
        let options = match config.get_options() {
            Some(options) => format!("{options} -c search_path={name}"),
            None => format!("-c search_path={name}"),
        };
        config.options(options);
    }
    if config.get_application_name().is_none() {
        config.application_name("concord");
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    // Dead peers are noticed in seconds, not the kernel's default two hours.
    config.keepalives_idle(Duration::from_secs(15));
    Ok((config, schema))
}

/// A stable 64-bit key for an advisory lock, scoped to the schema.
pub(super) fn lock_key(scope: &str, name: &str) -> i64 {
    let digest = Sha256::new()
        .chain_update(scope)
        .chain_update(b"\n")
        .chain_update(name)
        .finalize();
    i64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

pub(super) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Connects one client, driving its connection on a task (errors are logged).
pub(super) async fn connect(
    config: &tokio_postgres::Config,
    role: &str,
) -> Result<Client, StoreError> {
    let (client, connection) = config
        .connect(NoTls)
        .await
        .map_err(|e| pg(&format!("connect ({role})"), e))?;
    let role = role.to_owned();
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(role, error = %e, "postgres connection ended");
        }
    });
    Ok(client)
}

/// Creates the schema if asked, then applies the missing migrations, in one transaction
/// under an advisory lock. Returns the schema the tables are in.
pub(super) async fn migrate(client: &Client, schema: Option<&str>) -> Result<String, StoreError> {
    let name = match schema {
        Some(name) => name.to_owned(),
        None => client
            .query_one("SELECT current_schema()", &[])
            .await
            .map_err(|e| pg("read the current schema", e))?
            .get::<_, Option<String>>(0)
            .ok_or_else(|| {
                StoreError::Backend(
                    "no schema to create tables in: add ?schema=NAME to the URL, or a search_path that exists"
                        .into(),
                )
            })?,
    };
    client
        .batch_execute("BEGIN")
        .await
        .map_err(|e| pg("begin migration", e))?;
    let result = async {
        client
            .execute(
                "SELECT pg_advisory_xact_lock($1)",
                &[&lock_key("concord-migrate", &name)],
            )
            .await
            .map_err(|e| pg("lock for migration", e))?;
        if schema.is_some() {
            client
                .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {}", quote_ident(&name)))
                .await
                .map_err(|e| pg(&format!("create schema {name}"), e))?;
        }
        client
            .batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            .await
            .map_err(|e| pg("create schema_version", e))?;
        let row = client
            .query_opt("SELECT version FROM schema_version", &[])
            .await
            .map_err(|e| pg("read schema version", e))?;
        let version = match row {
            Some(row) => row.get::<_, i32>(0),
            None => {
                client
                    .execute("INSERT INTO schema_version (version) VALUES (0)", &[])
                    .await
                    .map_err(|e| pg("start schema version", e))?;
                0
            }
        };
        let latest = MIGRATIONS.len();
        let applied = usize::try_from(version)
            .map_err(|_| corrupt(format_args!("schema {name}: negative schema version {version}")))?;
        if applied > latest {
            return Err(StoreError::Backend(format!(
                "schema {name}: schema version {applied} is newer than this build supports ({latest})"
            )));
        }
        for (i, migration) in MIGRATIONS.iter().enumerate().skip(applied) {
            client
                .batch_execute(migration)
                .await
                .map_err(|e| pg(&format!("apply migration {}", i + 1), e))?;
            tracing::info!(schema = %name, migration = i + 1, "applied postgres migration");
        }
        if applied < latest {
            client
                .execute("UPDATE schema_version SET version = $1", &[&(latest as i32)])
                .await
                .map_err(|e| pg("set schema version", e))?;
        }
        Ok(())
    }
    .await;
    match result {
        Ok(()) => client
            .batch_execute("COMMIT")
            .await
            .map_err(|e| pg("commit migration", e))?,
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(e);
        }
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_keep_concords_schema_apart() {
        let (config, schema) =
            parse_url("postgres://postgres@127.0.0.1:5432/test?schema=concord_a&connect_timeout=3")
                .unwrap();
        assert_eq!(schema.as_deref(), Some("concord_a"));
        assert_eq!(config.get_options(), Some("-c search_path=concord_a"));
        assert_eq!(config.get_dbname(), Some("test"));
        assert_eq!(config.get_connect_timeout(), Some(&Duration::from_secs(3)));
        assert_eq!(config.get_application_name(), Some("concord"));

        let (config, schema) = parse_url("postgresql://u@h/db").unwrap();
        assert_eq!((schema, config.get_options()), (None, None));

        for bad in [
            "mysql://h/db",
            "postgres://h/db?schema=Bad-Name",
            "postgres://h/db?schema=1x",
            "postgres://h/db?schema=",
            "postgres://h/db?nonsense=1",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn lock_keys_depend_on_scope_and_name() {
        assert_eq!(lock_key("a", "x"), lock_key("a", "x"));
        assert_ne!(lock_key("a", "x"), lock_key("b", "x"));
        assert_ne!(lock_key("a", "x"), lock_key("a", "y"));
    }
}
