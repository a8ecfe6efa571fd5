//! The SQLite schema, as the migrations that build it: entry `i` takes a database from schema
//! version `i` to `i + 1` (kept in `PRAGMA user_version`). Never edit one that has shipped: add
//! the next (`tests/fixtures/schema-3.db` checks that old databases still open).

/// The migrations, in order: entry `i` takes the schema from version `i` to `i + 1`.
pub(super) const MIGRATIONS: &[&str] = &[
    r#"
    CREATE TABLE tenants (name TEXT PRIMARY KEY, config TEXT NOT NULL);
    CREATE TABLE modules (hash TEXT PRIMARY KEY, bytes BLOB NOT NULL);
    CREATE TABLE apps (
        tenant TEXT NOT NULL, name TEXT NOT NULL, version TEXT NOT NULL REFERENCES modules(hash),
        PRIMARY KEY (tenant, name));
    CREATE TABLE sessions (
        id INTEGER PRIMARY KEY, tenant TEXT NOT NULL, app TEXT NOT NULL, snapshot TEXT NOT NULL,
        owner TEXT, fence INTEGER NOT NULL DEFAULT 0, lease_until_ms INTEGER,
        next_event INTEGER NOT NULL DEFAULT 0);
    CREATE TABLE inbox (
        session INTEGER NOT NULL REFERENCES sessions(id), seq INTEGER NOT NULL, event BLOB NOT NULL,
        PRIMARY KEY (session, seq));
    CREATE TABLE event_keys (
        session INTEGER NOT NULL REFERENCES sessions(id), key TEXT NOT NULL, seq INTEGER NOT NULL,
        PRIMARY KEY (session, key));
    CREATE TABLE outputs (
        session INTEGER NOT NULL REFERENCES sessions(id), seq INTEGER NOT NULL, body TEXT NOT NULL,
        PRIMARY KEY (session, seq));
    CREATE TABLE kv (tenant TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL, PRIMARY KEY (tenant, key));
"#,
    r#"
    CREATE TABLE tokens (id TEXT PRIMARY KEY, tenant TEXT NOT NULL, hash TEXT NOT NULL UNIQUE);
    CREATE TABLE app_versions (
        tenant TEXT NOT NULL, app TEXT NOT NULL, version TEXT NOT NULL REFERENCES modules(hash),
        deployed INTEGER PRIMARY KEY AUTOINCREMENT, UNIQUE (tenant, app, version));
    INSERT INTO app_versions (tenant, app, version) SELECT tenant, name, version FROM apps;
"#,
    // Grouped ingest and "acknowledged means applied": a session knows it has finished (events
    // for it are refused in the same transaction that would add them), the inbox keeps each
    // event's key and reports the events a finished session never took, and rows that do not
    // decode are set aside.
    r#"
    ALTER TABLE sessions ADD COLUMN finished INTEGER NOT NULL DEFAULT 0;
    UPDATE sessions SET finished = 1 WHERE json_valid(snapshot) AND (
        json_extract(snapshot, '$.status') = 'cancelled'
        OR json_type(snapshot, '$.status.done') IS NOT NULL
        OR json_type(snapshot, '$.status.failed') IS NOT NULL);
    ALTER TABLE inbox ADD COLUMN key TEXT;
    ALTER TABLE inbox ADD COLUMN unapplied INTEGER NOT NULL DEFAULT 0;
    UPDATE inbox SET key = (SELECT k.key FROM event_keys k WHERE k.session = inbox.session AND k.seq = inbox.seq);
    UPDATE inbox SET unapplied = 1 WHERE session IN (SELECT id FROM sessions WHERE finished = 1);
    CREATE TABLE quarantine (
        session INTEGER PRIMARY KEY, tenant TEXT NOT NULL, app TEXT NOT NULL, snapshot TEXT NOT NULL,
        reason TEXT NOT NULL);
"#,
    // Retention: finished sessions are purged; the highest id purged is kept so that no id is
    // ever used twice.
    r#"
    CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
    INSERT INTO meta (key, value) VALUES ('purged_up_to', 0);
"#,
    // Idempotent session starts: the key a session was started under, and a digest of what it
    // was asked to start, kept with it until it is purged.
    r#"
    ALTER TABLE sessions ADD COLUMN start_key TEXT;
    ALTER TABLE sessions ADD COLUMN start_request TEXT;
    CREATE UNIQUE INDEX sessions_by_start_key ON sessions (tenant, start_key) WHERE start_key IS NOT NULL;
"#,
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: usize = MIGRATIONS.len();
