//! One PostgreSQL connection and its prepared statements.
//!
//! Statements are prepared once per connection and cached by their SQL text (as
//! deadpool-postgres does); a new connection starts with an empty cache, which is what
//! makes "prepared statement does not exist" after a server restart impossible here.

use super::error::DbError;
use super::schema;
use super::statements::StatementPolicy;
use super::tls::{self, TlsAttempt};
use crate::logic::{ClosedMinute, RejectedMessage, Timestamp, WrittenMinute};
use crate::messages::Credentials;
use crate::stats::{bump, PipelineStats};
use chrono::{DateTime, Utc};
use fleetagg_config::{DatabaseTlsConfig, Statements, TlsMode};
use futures_util::TryStreamExt;
use rustc_hash::{FxHashMap, FxHashSet};
use secrecy::ExposeSecret;
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Statement};

/// One statement for a whole batch: arrays in, `unnest` out, and the upsert merges each
/// part into its row exactly (counts and sums add, minima and maxima combine). The batch
/// id goes into the ledger in the same statement; when it is already there, no row is
/// touched (see `batch.rs`).
pub(crate) const UPSERT_MINUTES: &str = "
    WITH ledger AS (
        INSERT INTO fleetagg_applied_batch (id) VALUES ($9) ON CONFLICT DO NOTHING RETURNING id
    )
    INSERT INTO loading_rate AS t
        (machine, ts, samples, load_rate_avg, load_rate_min, load_rate_max, load_rate_sum, mileage_min, mileage_max,
         seen)
    SELECT machine, ts, samples, load_rate_sum / samples, load_rate_min, load_rate_max, load_rate_sum,
           mileage_min, mileage_max, seen
    FROM unnest($1::text[], $2::timestamptz[], $3::int4[], $4::float8[], $5::float8[], $6::float8[],
                $7::float8[], $8::float8[], $10::bytea[])
        AS u(machine, ts, samples, load_rate_sum, load_rate_min, load_rate_max, mileage_min, mileage_max, seen)
    WHERE EXISTS (SELECT 1 FROM ledger)
    ON CONFLICT (machine, ts) DO UPDATE SET
        seen          = coalesce(t.seen, ''::bytea) || EXCLUDED.seen,
        samples       = t.samples + EXCLUDED.samples,
        load_rate_sum = t.load_rate_sum + EXCLUDED.load_rate_sum,
        load_rate_avg = (t.load_rate_sum + EXCLUDED.load_rate_sum) / (t.samples + EXCLUDED.samples),
        load_rate_min = least(t.load_rate_min, EXCLUDED.load_rate_min),
        load_rate_max = greatest(t.load_rate_max, EXCLUDED.load_rate_max),
        mileage_min   = least(t.mileage_min, EXCLUDED.mileage_min),
        mileage_max   = greatest(t.mileage_max, EXCLUDED.mileage_max)";

/// The writer's fast path for rows the aggregators know are new (`known_new`): `COPY`
/// straight into the table, in a transaction with the batch's ledger entry. A row that
/// exists after all fails it on the primary key, and the batch is upserted instead.
const COPY_MINUTES: &str = "COPY loading_rate
    (machine, ts, samples, load_rate_avg, load_rate_min, load_rate_max, load_rate_sum, mileage_min, mileage_max, seen)
    FROM STDIN (FORMAT binary)";

const COPY_MINUTES_TYPES: &[Type] = &[
    Type::TEXT,
    Type::TIMESTAMPTZ,
    Type::INT4,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::BYTEA,
];

const INSERT_LEDGER: &str = "INSERT INTO fleetagg_applied_batch (id) VALUES ($1) ON CONFLICT DO NOTHING";

/// After a `COPY` met an existing row, this many batches are upserted before the next
/// try: with two instances on one shared subscription, say, the guess is often wrong,
/// and a failed `COPY` costs its rows twice.
const COPY_PAUSE_BATCHES: u32 = 100;

/// Fewer rows known new than this go by the upsert alone: a `COPY` takes three more
/// round trips (its transaction and ledger insert), which a few rows do not win back.
const COPY_MIN_ROWS: usize = 32;

const UPSERT_MINUTES_TYPES: &[Type] = &[
    Type::TEXT_ARRAY,
    Type::TIMESTAMPTZ_ARRAY,
    Type::INT4_ARRAY,
    Type::FLOAT8_ARRAY,
    Type::FLOAT8_ARRAY,
    Type::FLOAT8_ARRAY,
    Type::FLOAT8_ARRAY,
    Type::FLOAT8_ARRAY,
    Type::TEXT,
    Type::BYTEA_ARRAY,
];

pub(crate) const INSERT_REJECTIONS: &str = "
    WITH ledger AS (
        INSERT INTO fleetagg_applied_batch (id) VALUES ($5) ON CONFLICT DO NOTHING RETURNING id
    )
    INSERT INTO rejected_message (topic, reason, detail, payload)
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[])
    WHERE EXISTS (SELECT 1 FROM ledger)";

const INSERT_REJECTIONS_TYPES: &[Type] =
    &[Type::TEXT_ARRAY, Type::TEXT_ARRAY, Type::TEXT_ARRAY, Type::BYTEA_ARRAY, Type::TEXT];

/// Ledger entries older than this are deleted: a batch is retried within the outage it
/// failed in, and a day covers any outage the buffer can ride through.
/// No `ORDER BY`: on a large table, ordering by the primary key could make the planner walk
/// the whole index instead of the BRIN index on `ts`; the caller sorts.
const WRITTEN_SINCE: &str = "SELECT machine, ts, seen FROM loading_rate WHERE ts >= $1 AND seen IS NOT NULL";
const COMMITTED_BATCHES: &str = "SELECT id FROM fleetagg_applied_batch WHERE id = ANY($1)";
const PRUNE_LEDGER: &str =
    "DELETE FROM fleetagg_applied_batch WHERE applied_at < least(now() - interval '1 day', $1)";

/// For the TCP connect and, separately, the start-up handshake, unless the URL sets
/// `connect_timeout`.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How to open a connection. Cloned into each connection attempt.
#[derive(Debug, Clone)]
pub struct Connector {
    config: tokio_postgres::Config,
    /// `host:port/dbname`, for logs: never the full URL.
    target: String,
    /// Prepared or unnamed statements; shared with every session it opens.
    statements: Arc<StatementPolicy>,
    /// `[database.tls]`: the mode and the files read at each connection.
    tls: DatabaseTlsConfig,
}

impl Connector {
    pub fn new(url: &str) -> Result<Self, DbError> {
        let mut config: tokio_postgres::Config =
            url.parse().map_err(|err| DbError::Config(format!("{err}")))?;
        if config.get_application_name().is_none() {
            config.application_name("fleetagg");
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
        }
        // Detect a silently dead server instead of waiting forever on a half-open socket.
        config.keepalives(true).keepalives_idle(Duration::from_secs(30));
        let target = describe_target(&config);
        Ok(Connector {
            config,
            target,
            statements: Arc::new(StatementPolicy::new(Statements::default())),
            tls: DatabaseTlsConfig::default(),
        })
    }

    /// TLS as `[database.tls]` says (`prefer` unless set); it decides over an `sslmode`
    /// in the URL.
    #[must_use]
    pub fn with_tls(mut self, tls: DatabaseTlsConfig) -> Self {
        self.tls = tls;
        self
    }

    /// How statements are sent (`database.statements`; `auto` unless set).
    #[must_use]
    pub fn with_statements(mut self, statements: Statements) -> Self {
        self.statements = Arc::new(StatementPolicy::new(statements));
        self
    }

    pub fn target(&self) -> &str {
        &self.target
    }

    /// The database's name (libpq's default: the user's name): what a journal is bound
    /// to, with the client id. Hosts are left out, so that adding a failover host does not
    /// orphan a journal.
    pub fn database_name(&self) -> &str {
        self.config.get_dbname().or(self.config.get_user()).unwrap_or("postgres")
    }

    /// Opens a connection with `credentials` (when the password comes from a secret) and
    /// brings the schema up to date.
    pub async fn connect(&self, credentials: Option<&Credentials>) -> Result<Session, DbError> {
        let (client, _, encrypted) = self.open_migrated(credentials).await?;
        Ok(Session {
            client,
            prepared: FxHashMap::default(),
            policy: self.statements.clone(),
            encrypted,
            copy_paused: 0,
        })
    }

    /// Applies pending migrations on a fresh connection; returns the versions applied.
    pub async fn migrate(&self, credentials: Option<&Credentials>) -> Result<Vec<i32>, DbError> {
        self.open_migrated(credentials).await.map(|(_, applied, _)| applied)
    }

    /// A migrated connection, the migrations applied, and whether it is encrypted (when
    /// the server says).
    async fn open_migrated(
        &self,
        credentials: Option<&Credentials>,
    ) -> Result<(Client, Vec<i32>, Option<bool>), DbError> {
        // The password is set on a copy that lives only for this attempt, so no
        // long-lived structure (and no Debug output) ever holds it.
        let mut config = self.config.clone();
        let mut target = self.target.clone();
        if let Some(credentials) = credentials {
            if let Some(user) = &credentials.user {
                config.user(user);
                target = describe_target(&config);
            }
            config.password(credentials.password.expose_secret().as_bytes());
        }
        // `connect_timeout` bounds only the TCP connect; a server that accepts and never
        // answers (black-holed, frozen) would hold the start-up handshake forever.
        let handshake = self.config.get_connect_timeout().copied().unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        config.ssl_mode(tls::ssl_mode(self.tls.mode));
        let attempt = TlsAttempt::new(&self.tls, &target)?;
        let (mut client, connection) =
            tokio::time::timeout(handshake, config.connect(attempt.connector.clone()))
                .await
                .map_err(|_| DbError::Connect {
                    target: target.clone(),
                    message: format!("no answer to the start-up handshake within {handshake:?}"),
                    code: None,
                })?
                .map_err(|err| attempt.describe_failure(&err, &target))?;
        let target = self.target.clone();
        actix_rt::spawn(async move {
            if let Err(err) = connection.await {
                tracing::warn!(target = %target, error = %err, "PostgreSQL connection ended");
            }
        });
        let encrypted = self.check_encryption(&client).await;
        let applied = schema::migrate(&mut client).await?;
        Ok((client, applied, encrypted))
    }

    /// Logs whether the connection is encrypted; a warning when `prefer` ended in
    /// plaintext (the server offers no TLS, or something in between stripped it).
    async fn check_encryption(&self, client: &Client) -> Option<bool> {
        let encrypted = client
            .query_typed_opt("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
            .await
            .ok()
            .flatten()
            .map(|row| row.get::<_, bool>(0));
        match (self.tls.mode, encrypted) {
            (TlsMode::Prefer, Some(false)) => tracing::warn!(
                target = %self.target,
                "PostgreSQL connection is not encrypted: database.tls.mode = \"prefer\" and the server \
                 offered no TLS; set \"require\" or stricter to refuse plaintext"
            ),
            (_, encrypted) => tracing::debug!(target = %self.target, ?encrypted, "PostgreSQL connection"),
        }
        encrypted
    }
}

/// `user@host:port/dbname` for logs, every host listed when there are several (a
/// failover list: which one answered is not known here).
fn describe_target(config: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(index, host)| {
            let name = match host {
                Host::Tcp(host) => host.clone(),
                Host::Unix(path) => path.display().to_string(),
            };
            // One port for all hosts, or one per host.
            let port = ports.get(index).or_else(|| ports.first()).copied().unwrap_or(5432);
            format!("{name}:{port}")
        })
        .collect();
    let hosts = if hosts.is_empty() { "localhost:5432".to_owned() } else { hosts.join(",") };
    let user = config.get_user().unwrap_or("(default user)");
    let dbname = config.get_dbname().unwrap_or("(default database)");
    format!("{user}@{hosts}/{dbname}")
}

/// An open connection with its statement cache.
#[derive(Debug)]
pub struct Session {
    client: Client,
    /// Statements prepared on this connection, by SQL text.
    prepared: FxHashMap<&'static str, Statement>,
    policy: Arc<StatementPolicy>,
    /// Whether the connection is encrypted, when the server said (`pg_stat_ssl`).
    encrypted: Option<bool>,
    /// Batches still to upsert before `COPY` is tried again (after one met an existing row).
    copy_paused: u32,
}

impl Session {
    pub fn encrypted(&self) -> Option<bool> {
        self.encrypted
    }

    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Runs one of the writer's statements: prepared (cached by SQL text) or unnamed, as
    /// the policy says now; returns the rows touched.
    async fn execute(
        &mut self,
        operation: &'static str,
        sql: &'static str,
        types: &[Type],
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, DbError> {
        if self.policy.unnamed() {
            let typed: Vec<(&(dyn ToSql + Sync), Type)> =
                params.iter().zip(types).map(|(param, kind)| (*param, kind.clone())).collect();
            return self
                .client
                .execute_typed(sql, &typed)
                .await
                .map_err(|err| self.policy.error(operation, &err));
        }
        let statement = self.prepare_cached(sql, types).await?;
        self.client.execute(&statement, params).await.map_err(|err| self.policy.error(operation, &err))
    }

    /// The statement prepared on this connection for `sql`, prepared now the first time.
    async fn prepare_cached(&mut self, sql: &'static str, types: &[Type]) -> Result<Statement, DbError> {
        if let Some(statement) = self.prepared.get(sql) {
            return Ok(statement.clone());
        }
        let statement =
            self.client.prepare_typed(sql, types).await.map_err(|err| self.policy.error("prepare", &err))?;
        self.prepared.insert(sql, statement.clone());
        Ok(statement)
    }

    /// Writes one batch of minutes (each (machine, minute) at most once): the rows known
    /// new by `COPY` where it is worth it, the rest by the upsert. False when the ledger
    /// shows the batch was already applied. A `COPY` that meets an existing row counts in
    /// `stats.copy_conflicts`.
    pub async fn write_minutes(
        &mut self,
        batch_id: &str,
        rows: &[ClosedMinute],
        stats: &PipelineStats,
    ) -> Result<bool, DbError> {
        let known_new = rows.iter().filter(|row| row.known_new).count();
        if known_new < COPY_MIN_ROWS || self.copy_paused > 0 {
            self.copy_paused = self.copy_paused.saturating_sub(1);
            return self.upsert_minutes(batch_id, rows).await;
        }
        match self.copy_minutes(batch_id, rows).await {
            Err(err) if err.is_unique_violation() => {
                tracing::info!(
                    batch = batch_id,
                    upserted_batches = COPY_PAUSE_BATCHES,
                    "rows known new existed already (another instance wrote them, or the start-up read of written minutes failed): batch upserted instead, and the next ones too"
                );
                self.copy_paused = COPY_PAUSE_BATCHES;
                bump(&stats.copy_conflicts, 1);
                self.upsert_minutes(batch_id, rows).await
            }
            other => other,
        }
    }

    /// One transaction: the batch id into the ledger, `COPY` of the rows known new, the
    /// upsert of the others (under a second ledger id: its statement inserts one). Nothing
    /// of it stays when any step fails.
    async fn copy_minutes(&mut self, batch_id: &str, rows: &[ClosedMinute]) -> Result<bool, DbError> {
        self.client.batch_execute("BEGIN").await.map_err(|err| self.policy.error("begin", &err))?;
        let written = self.copy_minutes_in_transaction(batch_id, rows).await;
        let end = if matches!(written, Ok(true)) { "COMMIT" } else { "ROLLBACK" };
        match self.client.batch_execute(end).await {
            Ok(()) => written,
            // A lost COMMIT may have committed: the retry asks the ledger.
            Err(err) if written.is_ok() && end == "COMMIT" => Err(self.policy.error("commit", &err)),
            Err(_) => written,
        }
    }

    async fn copy_minutes_in_transaction(
        &mut self,
        batch_id: &str,
        rows: &[ClosedMinute],
    ) -> Result<bool, DbError> {
        if self.execute("insert into the batch ledger", INSERT_LEDGER, &[Type::TEXT], &[&batch_id]).await?
            == 0
        {
            return Ok(false);
        }
        let (fresh, merged): (Vec<&ClosedMinute>, Vec<&ClosedMinute>) =
            rows.iter().partition(|row| row.known_new);
        let operation = "copy into loading_rate";
        let sink = if self.policy.unnamed() {
            self.client.copy_in(COPY_MINUTES).await
        } else {
            let statement = self.prepare_cached(COPY_MINUTES, &[]).await?;
            self.client.copy_in(&statement).await
        };
        let sink = sink.map_err(|err| self.policy.error(operation, &err))?;
        let writer = tokio_postgres::binary_copy::BinaryCopyInWriter::new(sink, COPY_MINUTES_TYPES);
        futures_util::pin_mut!(writer);
        for row in fresh {
            let start = row.minute.start().to_chrono();
            let samples = i32::try_from(row.aggregate.samples).unwrap_or(i32::MAX);
            let aggregate = &row.aggregate;
            // As the upsert computes it: float8 / int4.
            let average = aggregate.load_rate_sum / f64::from(samples);
            let values: [&(dyn ToSql + Sync); 10] = [
                &&*row.machine,
                &start,
                &samples,
                &average,
                &aggregate.load_rate_min,
                &aggregate.load_rate_max,
                &aggregate.load_rate_sum,
                &aggregate.mileage_min,
                &aggregate.mileage_max,
                &row.seen.as_slice(),
            ];
            writer.as_mut().write(&values).await.map_err(|err| self.policy.error(operation, &err))?;
        }
        writer.finish().await.map_err(|err| self.policy.error(operation, &err))?;
        if !merged.is_empty() {
            self.upsert_rows(&format!("{batch_id}+upsert"), &merged).await?;
        }
        Ok(true)
    }

    /// Upserts one batch of minutes (each (machine, minute) at most once). False when the
    /// ledger shows the batch was already applied.
    pub async fn upsert_minutes(&mut self, batch_id: &str, rows: &[ClosedMinute]) -> Result<bool, DbError> {
        let rows: Vec<&ClosedMinute> = rows.iter().collect();
        self.upsert_rows(batch_id, &rows).await
    }

    async fn upsert_rows(&mut self, batch_id: &str, rows: &[&ClosedMinute]) -> Result<bool, DbError> {
        let machines: Vec<&str> = rows.iter().map(|row| &*row.machine).collect();
        let starts: Vec<DateTime<Utc>> = rows.iter().map(|row| row.minute.start().to_chrono()).collect();
        let samples: Vec<i32> =
            rows.iter().map(|row| i32::try_from(row.aggregate.samples).unwrap_or(i32::MAX)).collect();
        let column = |pick: fn(&ClosedMinute) -> f64| rows.iter().map(|row| pick(row)).collect::<Vec<f64>>();
        let sums = column(|row| row.aggregate.load_rate_sum);
        let load_min = column(|row| row.aggregate.load_rate_min);
        let load_max = column(|row| row.aggregate.load_rate_max);
        let mileage_min = column(|row| row.aggregate.mileage_min);
        let mileage_max = column(|row| row.aggregate.mileage_max);
        let seen: Vec<&[u8]> = rows.iter().map(|row| row.seen.as_slice()).collect();
        let touched = self
            .execute(
                "upsert into loading_rate",
                UPSERT_MINUTES,
                UPSERT_MINUTES_TYPES,
                &[
                    &machines,
                    &starts,
                    &samples,
                    &sums,
                    &load_min,
                    &load_max,
                    &mileage_min,
                    &mileage_max,
                    &batch_id,
                    &seen,
                ],
            )
            .await?;
        Ok(touched > 0 || rows.is_empty())
    }

    /// Stores one batch of rejected messages; false when it was already applied.
    pub async fn insert_rejections(
        &mut self,
        batch_id: &str,
        rows: &[RejectedMessage],
    ) -> Result<bool, DbError> {
        let topics: Vec<&str> = rows.iter().map(|row| row.topic.as_str()).collect();
        let reasons: Vec<&str> = rows.iter().map(|row| row.reason.as_str()).collect();
        let details: Vec<&str> = rows.iter().map(|row| row.detail.as_str()).collect();
        let payloads: Vec<&[u8]> = rows.iter().map(|row| row.payload.as_slice()).collect();
        let touched = self
            .execute(
                "insert into rejected_message",
                INSERT_REJECTIONS,
                INSERT_REJECTIONS_TYPES,
                &[&topics, &reasons, &details, &payloads, &batch_id],
            )
            .await?;
        Ok(touched > 0 || rows.is_empty())
    }

    /// A round trip, to know an idle connection still works.
    pub async fn ping(&mut self) -> Result<(), DbError> {
        self.client.simple_query("SELECT 1").await.map(drop).map_err(|err| DbError::statement("ping", &err))
    }

    /// Which of `ids` the ledger holds: the batches a crashed run committed (the journal's
    /// replay asks, see `crate::journal::ReplayFilter`).
    pub async fn committed_batches(&mut self, ids: &[String]) -> Result<FxHashSet<String>, DbError> {
        let mut committed = FxHashSet::default();
        // In slices: one statement's array stays small whatever the journal held.
        for chunk in ids.chunks(10_000) {
            let rows = self
                .client
                .query_typed(COMMITTED_BATCHES, &[(&chunk, Type::TEXT_ARRAY)])
                .await
                .map_err(|err| DbError::statement("ledger lookup", &err))?;
            committed.extend(rows.iter().filter_map(|row| row.try_get::<_, String>(0).ok()));
        }
        Ok(committed)
    }

    /// The `seen` values of the rows from `since` on (see [`crate::logic::seen`]), by
    /// machine; a malformed one is left out with a warning (it only costs the duplicate
    /// check of that minute). Streamed: 100,000 machines over ten minutes are about a
    /// million rows.
    pub async fn written_since(
        &mut self,
        since: DateTime<Utc>,
    ) -> Result<Vec<(String, WrittenMinute)>, DbError> {
        let fail = |err: tokio_postgres::Error| DbError::statement("reading written minutes", &err);
        let stream = self
            .client
            .query_typed_raw(WRITTEN_SINCE, [(&since as &(dyn ToSql + Sync), Type::TIMESTAMPTZ)])
            .await
            .map_err(fail)?;
        let mut stream = std::pin::pin!(stream);
        let mut written = Vec::new();
        let mut malformed = 0u64;
        while let Some(row) = stream.try_next().await.map_err(fail)? {
            let (machine, start, seen): (String, DateTime<Utc>, Vec<u8>) =
                (row.try_get(0).map_err(fail)?, row.try_get(1).map_err(fail)?, row.try_get(2).map_err(fail)?);
            if crate::logic::seen::check_chunks(&seen).is_err() {
                malformed += 1;
                continue;
            }
            let minute = Timestamp::from_chrono(start).minute();
            written.push((machine, WrittenMinute { minute, seen: seen.into_boxed_slice() }));
        }
        if malformed > 0 {
            tracing::warn!(rows = malformed, "loading_rate rows with a malformed `seen` value; resends of their samples are not recognised");
        }
        Ok(written)
    }

    /// Forgets ledger entries old enough that no retry can refer to them: older than a
    /// day, and older than `keep_since` (when the oldest journal segment still on disk
    /// was started: its intents may name batches committed since, and a replay must find
    /// them in the ledger).
    pub async fn prune_ledger(&mut self, keep_since: DateTime<Utc>) -> Result<u64, DbError> {
        // Unnamed, whatever the policy: once an hour, not worth a prepared statement.
        self.client
            .execute_typed(PRUNE_LEDGER, &[(&keep_since, Type::TIMESTAMPTZ)])
            .await
            .map_err(|err| DbError::statement("ledger pruning", &err))
    }
}
