//! The PostgreSQL schema, as the migrations that build it: entry `i` takes a schema from version
//! `i` to `i + 1` (kept in `meta.schema_version`). Never edit one that has shipped: add the next.
//!
//! Unlike SQLite's, this schema starts with the cluster's shape: every session row carries its
//! shard, and one lease row per shard holds its owner, its epoch (the fencing token) and when the
//! lease runs out, judged by the database's clock. Key-value keys are bytes (`BYTEA`): a guest's
//! key may hold any byte, which `TEXT` would refuse (a NUL).

/// The migrations, in order: entry `i` takes the schema from version `i` to `i + 1`.
pub(super) const MIGRATIONS: &[&str] = &[
    r#"
    CREATE TABLE tenants (name TEXT PRIMARY KEY, config TEXT NOT NULL);
    CREATE TABLE modules (hash TEXT PRIMARY KEY, bytes BYTEA NOT NULL);
    CREATE TABLE apps (
        tenant TEXT NOT NULL, name TEXT NOT NULL, version TEXT NOT NULL REFERENCES modules(hash),
        PRIMARY KEY (tenant, name));
    CREATE TABLE app_versions (
        deployed BIGSERIAL PRIMARY KEY, tenant TEXT NOT NULL, app TEXT NOT NULL,
        version TEXT NOT NULL REFERENCES modules(hash), UNIQUE (tenant, app, version));
    CREATE TABLE tokens (id TEXT PRIMARY KEY, tenant TEXT NOT NULL, hash TEXT NOT NULL UNIQUE);
    CREATE TABLE sessions (
        id BIGINT PRIMARY KEY, shard INTEGER NOT NULL, tenant TEXT NOT NULL, app TEXT NOT NULL,
        snapshot TEXT NOT NULL, fence BIGINT NOT NULL, finished BOOLEAN NOT NULL,
        next_event BIGINT NOT NULL DEFAULT 0);
    CREATE INDEX sessions_by_shard ON sessions (shard, id);
    CREATE INDEX sessions_by_tenant ON sessions (tenant);
    CREATE TABLE inbox (
        session BIGINT NOT NULL, seq BIGINT NOT NULL, event BYTEA NOT NULL, key TEXT,
        unapplied BOOLEAN NOT NULL DEFAULT FALSE, PRIMARY KEY (session, seq));
    CREATE TABLE event_keys (session BIGINT NOT NULL, key TEXT NOT NULL, seq BIGINT NOT NULL, PRIMARY KEY (session, key));
    CREATE TABLE outputs (session BIGINT NOT NULL, seq BIGINT NOT NULL, body TEXT NOT NULL, PRIMARY KEY (session, seq));
    CREATE TABLE kv (tenant TEXT NOT NULL, key BYTEA NOT NULL, value BYTEA NOT NULL, PRIMARY KEY (tenant, key));
    CREATE TABLE quarantine (
        session BIGINT PRIMARY KEY, tenant TEXT NOT NULL, app TEXT NOT NULL, snapshot TEXT NOT NULL,
        reason TEXT NOT NULL);
    CREATE TABLE leases (
        shard INTEGER PRIMARY KEY, owner TEXT, epoch BIGINT NOT NULL DEFAULT 0,
        expires_at TIMESTAMPTZ NOT NULL DEFAULT '-infinity');
    INSERT INTO meta (key, value) VALUES ('purged_up_to', 0) ON CONFLICT DO NOTHING;
"#,
    // Where a shard's holder answers HTTP: a standby forwards requests there.
    r#"
    ALTER TABLE leases ADD COLUMN address TEXT;
"#,
    // Idempotent session starts: the key a session was started under, and a digest of what it
    // was asked to start, kept with it until it is purged.
    r#"
    ALTER TABLE sessions ADD COLUMN start_key TEXT;
    ALTER TABLE sessions ADD COLUMN start_request TEXT;
    CREATE UNIQUE INDEX sessions_by_start_key ON sessions (tenant, start_key) WHERE start_key IS NOT NULL;
"#,
    // What a shard's holder understands of a forwarded request (`leases::PROTOCOL`), stamped
    // with the epoch it took the shard under: a build from before this column takes a shard
    // without writing it, and the stale stamp no longer matches the shard's epoch.
    r#"
    ALTER TABLE leases ADD COLUMN protocol INTEGER;
    ALTER TABLE leases ADD COLUMN protocol_epoch BIGINT;
"#,
    // The epoch made part of a unique key: PostgreSQL then locks a lease row `FOR UPDATE` for
    // any statement that changes its epoch (the takeovers lock so explicitly; this holds for any
    // other, an operator's by hand included), which waits for the group commits holding the row
    // `FOR KEY SHARE` (the fence, `commit.rs`), while renewals, which change no key, do not.
    r#"
    CREATE UNIQUE INDEX leases_fence ON leases (shard, epoch);
"#,
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: usize = MIGRATIONS.len();
