//! Secrets on this machine: a file (re-read at every refresh, which is how Kubernetes
//! and Docker deliver rotated secrets) or an environment variable.

use super::{parse_secret_text, Credentials, SecretError, SecretSource};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use std::path::PathBuf;

#[derive(Debug)]
pub struct FileSecretSource {
    path: PathBuf,
}

impl FileSecretSource {
    pub fn new(path: PathBuf) -> Self {
        FileSecretSource { path }
    }
}

impl SecretSource for FileSecretSource {
    fn fetch(&self) -> BoxFuture<'static, Result<Credentials, SecretError>> {
        let path = self.path.clone();
        let name = self.describe();
        async move {
            let text = tokio::fs::read_to_string(&path)
                .await
                .map_err(|err| SecretError::Fetch { source_name: name.clone(), message: err.to_string() })?;
            parse_secret_text(&text, &name)
        }
        .boxed()
    }

    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }
}

#[derive(Debug)]
pub struct EnvSecretSource {
    var: String,
}

impl EnvSecretSource {
    pub fn new(var: String) -> Self {
        EnvSecretSource { var }
    }
}

impl SecretSource for EnvSecretSource {
    fn fetch(&self) -> BoxFuture<'static, Result<Credentials, SecretError>> {
        let name = self.describe();
        // Not `VarError`'s text: for a value that is not UTF-8 it quotes the value.
        let value = std::env::var(&self.var).map_err(|err| SecretError::Fetch {
            source_name: name.clone(),
            message: match err {
                std::env::VarError::NotPresent => "it is not set".to_owned(),
                std::env::VarError::NotUnicode(_) => "its value is not valid UTF-8 (not shown)".to_owned(),
            },
        });
        async move { parse_secret_text(&value?, &name) }.boxed()
    }

    fn describe(&self) -> String {
        format!("environment variable {}", self.var)
    }
}
