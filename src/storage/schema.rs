//! The database schema and its migrations: numbered steps, each applied
//! once, in one transaction with the version it brings, under a
//! transaction-scoped advisory lock (replicas starting at the same moment
//! queue behind each other instead of racing to create the same tables).

use super::{Db, StorageError};

/// `pg_advisory_xact_lock` key: "kt schema" in ASCII, as a number.
const LOCK_KEY: i64 = 0x6b74_2073_6368_656d;

/// The migrations, oldest first; a step's index + 1 is its version.
/// Never edit a released step: add one.
const STEPS: &[&str] = &[
    // 1: the shared audit trail, the chain heads of each replica, access keys.
    r#"
    CREATE TABLE kt_events (
        id        bigserial PRIMARY KEY,
        replica   text        NOT NULL,
        seq       bigint      NOT NULL,
        ts        timestamptz NOT NULL,
        hash      text        NOT NULL,
        prev_hash text        NOT NULL,
        -- The event exactly as its replica sealed it: what the hash covers.
        line      text        NOT NULL,
        -- The same, queryable (reports, ad-hoc SQL by the platform team).
        event     jsonb GENERATED ALWAYS AS (line::jsonb) STORED,
        UNIQUE (replica, seq)
    );
    CREATE INDEX kt_events_ts ON kt_events (ts);

    -- Rows are appended; an UPDATE is refused outright (retention deletes
    -- whole old rows, which verification then takes as the new anchor).
    CREATE FUNCTION kt_events_append_only() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'kt_events is append-only';
        END $$;
    CREATE TRIGGER kt_events_no_update BEFORE UPDATE ON kt_events
        FOR EACH ROW EXECUTE FUNCTION kt_events_append_only();

    -- One row per replica chain: where shipping resumes, and what readers
    -- poll to learn that a chain grew (updated in the same transaction as
    -- the rows it counts, so a reader never sees a head before its rows).
    CREATE TABLE kt_replicas (
        replica    text PRIMARY KEY,
        last_seq   bigint      NOT NULL,
        last_hash  text        NOT NULL,
        first_seen timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now()
    );

    CREATE SEQUENCE kt_keys_version;
    CREATE TABLE kt_keys (
        id         text PRIMARY KEY,
        "user"     text    NOT NULL,
        team       text,
        admin      boolean NOT NULL,
        created    text    NOT NULL,
        revoked_at text,
        lookup     text    NOT NULL UNIQUE,
        salt       text    NOT NULL,
        hash       text    NOT NULL,
        -- Bumped on every change, so watchers notice a revocation with
        -- one cheap query.
        version    bigint  NOT NULL DEFAULT nextval('kt_keys_version')
    );
    "#,
    // 2: the queryable copy tolerates NUL. jsonb refuses the escape
    // \u0000, which a sealed line holds when a client sent a NUL (a model
    // name, a prompt), so the generated column failed the insert and the
    // replica's shipping stopped at that event for good. The copy is now
    // set on insert with each \u0000 spelled \ufffd; the line, what the
    // hash covers, stays exact. Replacing the six characters even where
    // they follow an escaped backslash keeps the JSON valid (that text
    // then reads \ufffd in the copy). DROP EXPRESSION keeps existing rows'
    // values, without rewriting the table.
    r#"
    ALTER TABLE kt_events ALTER COLUMN event DROP EXPRESSION;
    CREATE FUNCTION kt_events_queryable() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            NEW.event := replace(NEW.line, E'\\u0000', E'\\ufffd')::jsonb;
            RETURN NEW;
        END $$;
    CREATE TRIGGER kt_events_event BEFORE INSERT ON kt_events
        FOR EACH ROW EXECUTE FUNCTION kt_events_queryable();
    "#,
];

/// The schema version this kt writes.
pub const VERSION: i32 = STEPS.len() as i32;

/// Brings the database up to [`VERSION`].
pub async fn migrate(db: &Db) -> Result<(), StorageError> {
    let mut conn = db.conn().await?;
    let tx = conn.transaction().await.map_err(|e| db.err(e))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
        .await
        .map_err(|e| db.err(e))?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS kt_schema (
             version    integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await
    .map_err(|e| db.err(e))?;
    let row = tx
        .query_one("SELECT coalesce(max(version), 0) FROM kt_schema", &[])
        .await
        .map_err(|e| db.err(e))?;
    let current: i32 = row.get(0);
    if current > VERSION {
        return Err(StorageError::NewerSchema {
            found: current,
            known: VERSION,
        });
    }
    for (i, step) in STEPS.iter().enumerate().skip(current as usize) {
        let version = i as i32 + 1;
        tx.batch_execute(step).await.map_err(|e| db.err(e))?;
        tx.execute("INSERT INTO kt_schema (version) VALUES ($1)", &[&version])
            .await
            .map_err(|e| db.err(e))?;
        tracing::info!(database = %db.shown(), version, "applied a schema migration");
    }
    tx.commit().await.map_err(|e| db.err(e))
}
