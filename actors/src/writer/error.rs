//! Database errors, classified: a retriable error keeps the rows for another attempt
//! (after a reconnect when the connection is unusable); a poison error means PostgreSQL
//! refuses the data itself and retrying the same rows cannot help.

use tokio_postgres::error::SqlState;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid database.url: {0}")]
    Config(String),
    #[error("cannot connect to PostgreSQL at {target}: {message}")]
    Connect { target: String, message: String, code: Option<SqlState> },
    #[error("PostgreSQL {operation} failed: {message}")]
    Statement { operation: &'static str, message: String, code: Option<SqlState>, connection_closed: bool },
    /// `database.statements = "prepared"` where prepared statements do not survive
    /// (a transaction pooler): retrying cannot help, the setting must change.
    #[error(
        "PostgreSQL {operation} failed: {message}; prepared statements do not work here (a \
         transaction pooler hands out another server connection each time): set \
         database.statements = \"auto\" or \"unnamed\""
    )]
    PreparedStatementsRefused { operation: &'static str, message: String },
    /// The batch's intent could not be appended to the journal (a full disk): the batch
    /// is not sent, since a commit without its intent could be counted again by a replay.
    #[error("batch not written: {0}")]
    Journal(String),
}

/// What to do about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Try again later; `reconnect` when the connection (or its prepared statements) can
    /// no longer be trusted.
    Retriable { reconnect: bool },
    /// The rows themselves are refused.
    Poison,
    /// Retrying will not help and nothing is wrong with the rows: a configuration error.
    Fatal,
}

impl DbError {
    pub(crate) fn statement(operation: &'static str, err: &tokio_postgres::Error) -> Self {
        DbError::Statement {
            operation,
            message: describe(err),
            code: err.code().cloned(),
            connection_closed: err.is_closed(),
        }
    }

    pub(crate) fn connect(target: &str, err: &tokio_postgres::Error) -> Self {
        DbError::Connect { target: target.to_owned(), message: describe(err), code: err.code().cloned() }
    }

    /// A row inserted with `COPY` existed already (`23505`): the rows are fine, the guess
    /// that they were new was not.
    pub fn is_unique_violation(&self) -> bool {
        matches!(self, DbError::Statement { code: Some(code), .. } if *code == SqlState::UNIQUE_VIOLATION)
    }

    pub fn class(&self) -> ErrorClass {
        match self {
            DbError::Config(_) | DbError::PreparedStatementsRefused { .. } => ErrorClass::Fatal,
            DbError::Connect { .. } => ErrorClass::Retriable { reconnect: true },
            DbError::Journal(_) => ErrorClass::Retriable { reconnect: false },
            DbError::Statement { connection_closed: true, .. } | DbError::Statement { code: None, .. } => {
                ErrorClass::Retriable { reconnect: true }
            }
            DbError::Statement { code: Some(code), .. } => classify_sqlstate(code),
        }
    }

    /// An established connection broke (as opposed to a new one that could not be opened).
    pub fn broke_connection(&self) -> bool {
        matches!(self, DbError::Statement { .. })
            && self.class() == (ErrorClass::Retriable { reconnect: true })
    }

    /// A refused login: the password may just have been rotated.
    pub fn is_auth_failure(&self) -> bool {
        let code = match self {
            DbError::Connect { code, .. } | DbError::Statement { code, .. } => code.as_ref(),
            DbError::Config(_) | DbError::PreparedStatementsRefused { .. } | DbError::Journal(_) => None,
        };
        code.is_some_and(|code| {
            *code == SqlState::INVALID_PASSWORD || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
        })
    }

    pub fn is_retriable(&self) -> bool {
        matches!(self.class(), ErrorClass::Retriable { .. })
    }
}

fn classify_sqlstate(code: &SqlState) -> ErrorClass {
    let text = code.code();
    let class = &text[..2.min(text.len())];
    match class {
        // Data exception, integrity violation: the rows are refused.
        "22" | "23" => ErrorClass::Poison,
        // Serialization failure, deadlock, out of resources: same connection, later.
        "40" | "53" => ErrorClass::Retriable { reconnect: false },
        // Everything else (connection exceptions, admin shutdown, authentication failures
        // during a password rotation, "prepared statement does not exist" after a server
        // restart, a dropped table that migrations recreate) is cured by a new connection.
        _ => ErrorClass::Retriable { reconnect: true },
    }
}

/// The server's message with its SQLSTATE, or the client-side error with its cause.
fn describe(err: &tokio_postgres::Error) -> String {
    if let Some(db) = err.as_db_error() {
        let mut text = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
        if let Some(detail) = db.detail() {
            text.push_str(&format!(" ({detail})"));
        }
        return text;
    }
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_are_classified() {
        assert_eq!(classify_sqlstate(&SqlState::NUMERIC_VALUE_OUT_OF_RANGE), ErrorClass::Poison);
        assert_eq!(classify_sqlstate(&SqlState::UNIQUE_VIOLATION), ErrorClass::Poison);
        assert_eq!(
            classify_sqlstate(&SqlState::T_R_SERIALIZATION_FAILURE),
            ErrorClass::Retriable { reconnect: false }
        );
        for reconnect in [
            SqlState::ADMIN_SHUTDOWN,
            SqlState::INVALID_PASSWORD,
            SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
            SqlState::INVALID_SQL_STATEMENT_NAME,
            SqlState::CONNECTION_FAILURE,
        ] {
            assert_eq!(
                classify_sqlstate(&reconnect),
                ErrorClass::Retriable { reconnect: true },
                "{reconnect:?}"
            );
        }
    }
}
