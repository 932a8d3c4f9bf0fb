//! Versioned schema migrations. Each migration runs once, in order, in one transaction
//! with an advisory lock, so several instances starting together cannot race.

use super::error::DbError;
use tokio_postgres::types::Type;
use tokio_postgres::Client;

/// `(version, description, SQL)`. Append only: never edit a migration that has shipped.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "loading_rate and rejected_message",
        r"
    CREATE TABLE loading_rate (
        machine       text             NOT NULL,
        ts            timestamptz      NOT NULL,
        samples       integer          NOT NULL,
        load_rate_avg double precision NOT NULL,
        load_rate_min double precision NOT NULL,
        load_rate_max double precision NOT NULL,
        load_rate_sum double precision NOT NULL,
        mileage_min   double precision NOT NULL,
        mileage_max   double precision NOT NULL,
        PRIMARY KEY (machine, ts)
    );
    -- Fleet-wide time ranges: rows arrive in time order, so a BRIN index stays tiny.
    CREATE INDEX loading_rate_ts_brin ON loading_rate USING brin (ts);
    CREATE TABLE rejected_message (
        id          bigserial   PRIMARY KEY,
        received_at timestamptz NOT NULL DEFAULT now(),
        topic       text,
        reason      text        NOT NULL,
        detail      text,
        payload     bytea
    );
    CREATE INDEX rejected_message_received_at ON rejected_message USING brin (received_at);
    ",
    ),
    (
        2,
        "ledger of applied write batches",
        r"
    -- A batch's id is recorded in the same statement as its rows: a batch retried after
    -- its commit was lost with the connection is recognised and not applied twice.
    CREATE TABLE fleetagg_applied_batch (
        id         text        PRIMARY KEY,
        applied_at timestamptz NOT NULL DEFAULT now()
    );
    ",
    ),
    (
        3,
        "loading_rate.seen: the sample timestamps each row counts",
        r"
    -- Which sample timestamps the row counts, in fleetagg's compact encoding (a few bytes
    -- a minute, see actors/logic/src/seen.rs): read back at start-up so that a sample
    -- resent after its minute was written is recognised as a duplicate, even across a
    -- restart. Rows written before this column existed have NULL: nothing is known.
    ALTER TABLE loading_rate ADD COLUMN seen bytea;
    COMMENT ON COLUMN loading_rate.seen IS
        'fleetagg: timestamps of the samples counted (duplicate detection); not for queries';
    ",
    ),
];

/// The newest version, for the check that needs no privilege beyond reading.
fn latest_version() -> i32 {
    MIGRATIONS.iter().map(|(version, ..)| *version).max().unwrap_or(0)
}

/// Brings the schema up to date; returns the versions it applied (empty when current).
///
/// A schema already current is only read, so `run` can use a role limited to writing
/// rows (`fleetagg migrate` run once by the tables' owner); only a pending migration
/// needs the right to create tables.
pub async fn migrate(client: &mut Client) -> Result<Vec<i32>, DbError> {
    let fail = |err: tokio_postgres::Error| DbError::statement("migration", &err);
    let exists: bool = client
        .query_typed_one("SELECT to_regclass('fleetagg_schema_migrations') IS NOT NULL", &[])
        .await
        .map_err(fail)?
        .get(0);
    let current: Option<i32> = if exists {
        let row = client
            .query_typed_one("SELECT coalesce(max(version), 0) FROM fleetagg_schema_migrations", &[])
            .await
            .map_err(fail)?;
        Some(row.get(0))
    } else {
        None
    };
    if current.is_some_and(|current| current >= latest_version()) {
        return Ok(Vec::new());
    }
    let transaction = client.transaction().await.map_err(fail)?;
    transaction
        .batch_execute(
            "SET LOCAL client_min_messages = warning;
             SELECT pg_advisory_xact_lock(hashtext('fleetagg.schema'));
             CREATE TABLE IF NOT EXISTS fleetagg_schema_migrations (
                 version     integer     PRIMARY KEY,
                 description text        NOT NULL,
                 applied_at  timestamptz NOT NULL DEFAULT now()
             );",
        )
        .await
        .map_err(fail)?;
    // Unnamed statements (`*_typed`) here: a named one could meet another client's of the
    // same name on a pooler's server connection.
    let current: i32 = transaction
        .query_typed_one("SELECT coalesce(max(version), 0) FROM fleetagg_schema_migrations", &[])
        .await
        .map_err(fail)?
        .get(0);
    let mut applied = Vec::new();
    for (version, description, sql) in MIGRATIONS.iter().filter(|(version, ..)| *version > current) {
        transaction.batch_execute(sql).await.map_err(fail)?;
        transaction
            .execute_typed(
                "INSERT INTO fleetagg_schema_migrations (version, description) VALUES ($1, $2)",
                &[(version, Type::INT4), (description, Type::TEXT)],
            )
            .await
            .map_err(fail)?;
        applied.push(*version);
    }
    transaction.commit().await.map_err(fail)?;
    for version in &applied {
        tracing::info!(version, "schema migration applied");
    }
    Ok(applied)
}
