//! How the writer's statements reach PostgreSQL (`database.statements`): prepared once
//! per connection and cached, or sent unnamed in one round trip, which every pooler
//! passes through. In `auto` the writer prepares until PostgreSQL says a prepared
//! statement does not exist (26000) or already exists (42P05), the signs of a transaction
//! pooler handing out another server connection, and then sends unnamed statements for
//! the life of the process. A batch that failed so is retried with its id, so the
//! ledger keeps it exactly once.

use super::error::DbError;
use fleetagg_config::Statements;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio_postgres::error::SqlState;

/// Shared by every connection of one writer, so the switch in `auto` outlives them.
#[derive(Debug, Default)]
pub(crate) struct StatementPolicy {
    configured: Statements,
    /// `auto` met a refused prepared statement.
    fell_back: AtomicBool,
}

impl StatementPolicy {
    pub(crate) fn new(configured: Statements) -> Self {
        StatementPolicy { configured, fell_back: AtomicBool::new(false) }
    }

    /// Whether statements go unnamed now.
    pub(crate) fn unnamed(&self) -> bool {
        match self.configured {
            Statements::Unnamed => true,
            Statements::Prepared => false,
            Statements::Auto => self.fell_back.load(Ordering::Relaxed),
        }
    }

    /// The error for a failed statement; a refused prepared statement switches `auto` to
    /// unnamed statements (the error stays retriable on a new connection, which the
    /// supervisor's restart of the writer opens once) and is fatal with `prepared`,
    /// naming the setting to change.
    pub(crate) fn error(&self, operation: &'static str, err: &tokio_postgres::Error) -> DbError {
        let refused = err.code().is_some_and(|code| {
            *code == SqlState::INVALID_SQL_STATEMENT_NAME || *code == SqlState::DUPLICATE_PSTATEMENT
        });
        let error = DbError::statement(operation, err);
        if !refused || self.unnamed() {
            return error;
        }
        match self.configured {
            Statements::Prepared => {
                let message = match error {
                    DbError::Statement { message, .. } => message,
                    other => other.to_string(),
                };
                DbError::PreparedStatementsRefused { operation, message }
            }
            _ => {
                if !self.fell_back.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        error = %error,
                        "PostgreSQL refused a prepared statement (a transaction pooler?); sending \
                         statements unnamed from now on (database.statements = \"auto\")"
                    );
                }
                error
            }
        }
    }
}
