//! Where the database password comes from. The configuration names a source, never the
//! password itself: the value lives in AWS Secrets Manager, a mounted file or an
//! environment variable, and is re-read while the service runs so it can be rotated.

use crate::duration::human;
use crate::ConfigError;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// The kind of secret source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SecretSourceKind {
    /// AWS Secrets Manager (or a local stand-in such as moto or LocalStack).
    AwsSecretsManager,
    /// A file, re-read at every refresh (Kubernetes and Docker mount rotated secrets so).
    File,
    /// An environment variable.
    Env,
}

/// `[database.password]`: one source and the fields it takes.
///
/// `expecting` is what an error says when something else stands here, typically the
/// password itself (`password = "…"`): it says what belongs here, and the error never
/// shows what was found (see `crate::de`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a section naming a secret source (`source = \"aws-secrets-manager\"`, `\"file\"` or \
                 `\"env\"`, see docs/operations.md), never the password itself"
)]
pub struct PasswordConfig {
    pub source: SecretSourceKind,
    /// aws-secrets-manager: the secret's name or ARN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_id: Option<String>,
    /// aws-secrets-manager: region; the standard AWS chain decides when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// aws-secrets-manager: another endpoint (a local Secrets Manager in tests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_url: Option<String>,
    /// aws-secrets-manager: which version to read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_stage: Option<String>,
    /// file: the path to read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// env: the variable to read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub var: Option<String>,
    /// How often the secret is fetched again in the background. A failed login makes
    /// the service fetch it at once as well, so this only bounds how stale it may get.
    #[serde(with = "human", default = "default_refresh_interval")]
    pub refresh_interval: Duration,
}

fn default_refresh_interval() -> Duration {
    Duration::from_secs(300)
}

/// The default of `version_stage`.
pub const AWS_CURRENT: &str = "AWSCURRENT";

impl PasswordConfig {
    pub fn version_stage(&self) -> &str {
        self.version_stage.as_deref().unwrap_or(AWS_CURRENT)
    }

    /// Checks the fields against the source; `section` names it in errors.
    pub(crate) fn validate_as(&self, section: &str) -> Result<(), ConfigError> {
        let key = |field: &str| format!("{section}.{field}");
        let given = [
            ("secret_id", self.secret_id.is_some()),
            ("region", self.region.is_some()),
            ("endpoint_url", self.endpoint_url.is_some()),
            ("version_stage", self.version_stage.is_some()),
            ("path", self.path.is_some()),
            ("var", self.var.is_some()),
        ];
        let (required, allowed): (&str, &[&str]) = match self.source {
            SecretSourceKind::AwsSecretsManager => {
                ("secret_id", &["secret_id", "region", "endpoint_url", "version_stage"])
            }
            SecretSourceKind::File => ("path", &["path"]),
            SecretSourceKind::Env => ("var", &["var"]),
        };
        let source = serde_name(self.source);
        for (field, present) in given {
            if present && !allowed.contains(&field) {
                return Err(ConfigError::key(key(field), format!("does not apply to source = \"{source}\"")));
            }
        }
        if !given.iter().any(|(field, present)| *present && *field == required) {
            return Err(ConfigError::key(key(required), format!("is required with source = \"{source}\"")));
        }
        if self.refresh_interval.is_zero() {
            return Err(ConfigError::key(key("refresh_interval"), "must be longer than zero"));
        }
        Ok(())
    }
}

fn serde_name(kind: SecretSourceKind) -> &'static str {
    match kind {
        SecretSourceKind::AwsSecretsManager => "aws-secrets-manager",
        SecretSourceKind::File => "file",
        SecretSourceKind::Env => "env",
    }
}

impl std::fmt::Display for PasswordConfig {
    /// Names the source for logs and errors: where the secret is, never what it is.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.source {
            SecretSourceKind::AwsSecretsManager => write!(
                f,
                "AWS Secrets Manager secret {:?} ({})",
                self.secret_id.as_deref().unwrap_or_default(),
                self.version_stage()
            ),
            SecretSourceKind::File => {
                write!(f, "file {}", self.path.as_deref().unwrap_or(std::path::Path::new("")).display())
            }
            SecretSourceKind::Env => {
                write!(f, "environment variable {}", self.var.as_deref().unwrap_or_default())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::load_from_str;

    fn load(password_section: &str) -> Result<crate::Config, crate::ConfigError> {
        load_from_str(
            &format!("[database.password]\n{password_section}"),
            "test",
            Vec::<(String, String)>::new(),
        )
    }

    #[test]
    fn each_source_loads_with_its_fields() {
        let aws = load("source = \"aws-secrets-manager\"\nsecret_id = \"prod/db\"\nregion = \"eu-west-1\"\n")
            .unwrap();
        let password = aws.database.password.unwrap();
        assert_eq!(password.version_stage(), "AWSCURRENT");
        assert_eq!(password.refresh_interval, std::time::Duration::from_secs(300));
        assert_eq!(password.to_string(), "AWS Secrets Manager secret \"prod/db\" (AWSCURRENT)");
        let file =
            load("source = \"file\"\npath = \"/run/secrets/db\"\nrefresh_interval = \"30s\"\n").unwrap();
        assert_eq!(file.database.password.unwrap().to_string(), "file /run/secrets/db");
        let env = load("source = \"env\"\nvar = \"DB_PASSWORD\"\n").unwrap();
        assert_eq!(env.database.password.unwrap().to_string(), "environment variable DB_PASSWORD");
    }

    #[test]
    fn missing_and_foreign_fields_are_named() {
        let err = load("source = \"file\"\n").unwrap_err().to_string();
        assert!(err.contains("database.password.path") && err.contains("required"), "{err}");
        let err = load("source = \"env\"\nvar = \"X\"\nsecret_id = \"y\"\n").unwrap_err().to_string();
        assert!(err.contains("database.password.secret_id") && err.contains("does not apply"), "{err}");
        let err = load("source = \"vault\"\n").unwrap_err().to_string();
        assert!(err.contains("database.password.source"), "{err}");
        let err = load("source = \"env\"\nvar = \"X\"\npassword = \"hunter2\"\n").unwrap_err().to_string();
        assert!(err.contains("unknown field") && !err.contains("hunter2"), "{err}");
    }
}
