//! The database credentials and where they come from.
//!
//! A [`SecretSource`] fetches [`Credentials`] (AWS Secrets Manager, a file, an environment
//! variable); the [`SecretKeeper`] actor refreshes them in the background and tells the
//! writer when they change. Passwords live in `secrecy` types from the moment they are
//! read: they never appear in logs, errors or `Debug` output.

mod aws;
mod keeper;
mod local;

pub use aws::AwsSecretSource;
pub use keeper::SecretKeeper;
pub use local::{EnvSecretSource, FileSecretSource};

use crate::backoff::{self, Retries};
use fleetagg_config::{PasswordConfig, SecretSourceKind};
use futures_util::future::BoxFuture;
use secrecy::{ExposeSecret, SecretString};
use std::sync::Arc;

/// Defined with the messages that carry it (`CredentialsChanged`), so that they import
/// nothing from the layers above them.
pub use crate::messages::Credentials;

/// Why a secret could not be had. Messages name the source and the problem, never the
/// secret's content.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read {source_name}: {message}")]
    Fetch { source_name: String, message: String },
    #[error("{source_name} holds no usable password: {message}")]
    Invalid { source_name: String, message: String },
}

/// Something that can produce the current credentials.
pub trait SecretSource: Send + Sync + std::fmt::Debug {
    /// Reads the secret as it is now.
    fn fetch(&self) -> BoxFuture<'static, Result<Credentials, SecretError>>;

    /// Where the secret is, for logs: never what it is.
    fn describe(&self) -> String;
}

/// Builds the source a `[database.password]` section names.
pub async fn build_source(config: &PasswordConfig) -> Arc<dyn SecretSource> {
    match config.source {
        SecretSourceKind::AwsSecretsManager => Arc::new(AwsSecretSource::new(config).await),
        SecretSourceKind::File => Arc::new(FileSecretSource::new(config.path.clone().unwrap_or_default())),
        SecretSourceKind::Env => Arc::new(EnvSecretSource::new(config.var.clone().unwrap_or_default())),
    }
}

/// Fetches with [`backoff::STARTUP_ATTEMPTS`] tries, for start-up: a service that cannot
/// log in at all should say so soon, not after a long silent wait.
pub async fn fetch_at_start(source: &dyn SecretSource) -> Result<Credentials, SecretError> {
    let mut retries = Retries::new(backoff::SECRET_AT_START);
    loop {
        match source.fetch().await {
            Ok(credentials) => return Ok(credentials),
            Err(err) if retries.failures() + 1 >= backoff::STARTUP_ATTEMPTS => return Err(err),
            Err(err) => {
                let delay = retries.failed();
                tracing::warn!(error = %err, attempt = retries.failures(), "fetching the secret failed; retrying");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Reads a secret's text: either the plain password, or the JSON that AWS's PostgreSQL
/// rotation functions write (`{"username": …, "password": …, "host": …}`).
pub fn parse_secret_text(text: &str, source_name: &str) -> Result<Credentials, SecretError> {
    let invalid = |message: &str| SecretError::Invalid {
        source_name: source_name.to_owned(),
        message: message.to_owned(),
    };
    let trimmed = text.trim();
    if trimmed.starts_with('{') {
        if let Ok(json) = serde_json::from_str::<RotationSecret>(trimmed) {
            let password = json.password.ok_or_else(|| invalid("the JSON secret has no \"password\" key"))?;
            if password.expose_secret().is_empty() {
                return Err(invalid("the \"password\" key is empty"));
            }
            return Ok(Credentials { user: json.username.filter(|user| !user.is_empty()), password });
        }
    }
    // A plain password: only the line break that files and `echo` add is not part of it.
    let password =
        text.strip_suffix('\n').map(|rest| rest.strip_suffix('\r').unwrap_or(rest)).unwrap_or(text);
    if password.is_empty() {
        return Err(invalid("the secret is empty"));
    }
    Ok(Credentials { user: None, password: SecretString::from(password.to_owned()) })
}

#[derive(serde::Deserialize)]
struct RotationSecret {
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<SecretString>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_rotation_json_secrets() {
        let plain = parse_secret_text("s3cret\n", "t").unwrap();
        assert_eq!((plain.user.as_deref(), plain.password.expose_secret()), (None, "s3cret"));
        let json = parse_secret_text(
            r#"{"engine":"postgres","host":"db","username":"app_b","password":"p2","port":5432}"#,
            "t",
        )
        .unwrap();
        assert_eq!((json.user.as_deref(), json.password.expose_secret()), (Some("app_b"), "p2"));
        // A password that merely starts with a brace is still a password.
        assert_eq!(parse_secret_text("{not-json", "t").unwrap().password.expose_secret(), "{not-json");
    }

    #[test]
    fn unusable_secrets_are_errors_without_their_content() {
        for text in ["", "\n", r#"{"username":"app","pass":"hunter2"}"#, r#"{"password":""}"#] {
            let err = parse_secret_text(text, "file /x").unwrap_err().to_string();
            assert!(err.contains("file /x") && !err.contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn debug_output_redacts_the_password() {
        let credentials = parse_secret_text(r#"{"username":"app","password":"hunter2"}"#, "t").unwrap();
        let debug = format!("{credentials:?}");
        assert!(debug.contains("app") && !debug.contains("hunter2"), "{debug}");
    }
}
