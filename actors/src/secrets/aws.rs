//! AWS Secrets Manager. AWS credentials come from the standard provider chain
//! (environment, profile, container or instance role), never from fleetagg's config.

use super::{parse_secret_text, Credentials, SecretError, SecretSource};
use aws_sdk_secretsmanager::error::DisplayErrorContext;
use fleetagg_config::PasswordConfig;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use std::time::Duration;

pub struct AwsSecretSource {
    client: aws_sdk_secretsmanager::Client,
    secret_id: String,
    version_stage: String,
    name: String,
}

impl std::fmt::Debug for AwsSecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsSecretSource").field("secret", &self.name).finish_non_exhaustive()
    }
}

impl AwsSecretSource {
    pub async fn new(config: &PasswordConfig) -> Self {
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(5))
            .operation_timeout(Duration::from_secs(15))
            .build();
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest()).timeout_config(timeouts);
        if let Some(region) = &config.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        if let Some(endpoint) = &config.endpoint_url {
            loader = loader.endpoint_url(endpoint.clone());
        }
        let client = aws_sdk_secretsmanager::Client::new(&loader.load().await);
        AwsSecretSource {
            client,
            secret_id: config.secret_id.clone().unwrap_or_default(),
            version_stage: config.version_stage().to_owned(),
            name: config.to_string(),
        }
    }
}

impl SecretSource for AwsSecretSource {
    fn fetch(&self) -> BoxFuture<'static, Result<Credentials, SecretError>> {
        let request =
            self.client.get_secret_value().secret_id(&self.secret_id).version_stage(&self.version_stage);
        let name = self.name.clone();
        async move {
            let fail = |message: String| SecretError::Fetch { source_name: name.clone(), message };
            let output = request.send().await.map_err(|err| fail(DisplayErrorContext(&err).to_string()))?;
            let text = match (output.secret_string(), output.secret_binary()) {
                (Some(text), _) => text.to_owned(),
                (None, Some(binary)) => String::from_utf8(binary.as_ref().to_vec())
                    .map_err(|_| fail("the binary secret is not UTF-8".to_owned()))?,
                (None, None) => return Err(fail("the secret version has no value".to_owned())),
            };
            parse_secret_text(&text, &name)
        }
        .boxed()
    }

    fn describe(&self) -> String {
        self.name.clone()
    }
}
