//! TLS to PostgreSQL with libpq's modes (`[database.tls]`), on OpenSSL: the library
//! paho-mqtt's bundled C client already links, so the broker and the database share one
//! TLS implementation (the AWS SDK keeps its own rustls for HTTPS).
//!
//! A connector is built for every connection attempt, so certificate files are read
//! again each time and can be rotated like the password. Why a certificate was refused
//! is caught in the verify callback, because OpenSSL's handshake error only says
//! "certificate verify failed".

use super::error::DbError;
use crate::tls_refusal::certificate_refusal;
use fleetagg_config::{DatabaseTlsConfig, TlsMode};
use openssl::ssl::{SslConnector, SslFiletype, SslMethod, SslVerifyMode};
use postgres_openssl::MakeTlsConnector;
use std::sync::{Arc, Mutex, PoisonError};
use tokio_postgres::config::SslMode;

/// What one connection attempt needs: the connector, and where it notes why it refused
/// the server's certificate.
pub(crate) struct TlsAttempt {
    pub(crate) connector: MakeTlsConnector,
    refusal: Arc<Mutex<Option<String>>>,
}

impl TlsAttempt {
    /// Builds the connector for `settings`, reading the certificate files now.
    pub(crate) fn new(settings: &DatabaseTlsConfig, target: &str) -> Result<TlsAttempt, DbError> {
        let fail = |what: &str, err: openssl::error::ErrorStack| DbError::Connect {
            target: target.to_owned(),
            message: format!("TLS setup: {what}: {err}"),
            code: None,
        };
        let mut builder =
            SslConnector::builder(SslMethod::tls_client()).map_err(|err| fail("OpenSSL", err))?;
        if let Some(ca_file) = &settings.ca_file {
            builder.set_ca_file(ca_file).map_err(|err| {
                fail(&format!("cannot read database.tls.ca_file {}", ca_file.display()), err)
            })?;
        }
        if let (Some(cert_file), Some(key_file)) = (&settings.cert_file, &settings.key_file) {
            builder.set_certificate_chain_file(cert_file).map_err(|err| {
                fail(&format!("cannot read database.tls.cert_file {}", cert_file.display()), err)
            })?;
            builder.set_private_key_file(key_file, SslFiletype::PEM).map_err(|err| {
                fail(&format!("cannot read database.tls.key_file {}", key_file.display()), err)
            })?;
            builder
                .check_private_key()
                .map_err(|err| fail("the client key does not match its certificate", err))?;
        }
        let verify_chain = match settings.mode {
            TlsMode::VerifyCa | TlsMode::VerifyFull => true,
            // libpq: `require` verifies the chain when a root certificate is given.
            TlsMode::Require => settings.ca_file.is_some(),
            TlsMode::Prefer | TlsMode::Disable => false,
        };
        let refusal = Arc::new(Mutex::new(None));
        if verify_chain {
            let noted = refusal.clone();
            builder.set_verify_callback(SslVerifyMode::PEER, move |preverified, context| {
                if !preverified {
                    let reason = context.error().error_string().to_owned();
                    *noted.lock().unwrap_or_else(PoisonError::into_inner) = Some(reason);
                }
                preverified
            });
        } else {
            builder.set_verify(SslVerifyMode::NONE);
        }
        let mut connector = MakeTlsConnector::new(builder.build());
        let verify_host = settings.mode == TlsMode::VerifyFull;
        connector.set_callback(move |config, _| {
            config.set_verify_hostname(verify_host);
            Ok(())
        });
        Ok(TlsAttempt { connector, refusal })
    }

    /// The message for a failed connection: why the certificate was refused, when it was.
    pub(crate) fn describe_failure(&self, err: &tokio_postgres::Error, target: &str) -> DbError {
        let refused = self.refusal.lock().unwrap_or_else(PoisonError::into_inner).take();
        match refused {
            Some(reason) => DbError::Connect {
                target: target.to_owned(),
                message: format!("server certificate not trusted: {}", certificate_refusal(&reason)),
                code: None,
            },
            None => DbError::connect(target, err),
        }
    }
}

/// tokio-postgres's part of the mode: whether to ask for TLS, and to insist.
pub(crate) fn ssl_mode(mode: TlsMode) -> SslMode {
    match mode {
        TlsMode::Disable => SslMode::Disable,
        TlsMode::Prefer => SslMode::Prefer,
        TlsMode::Require | TlsMode::VerifyCa | TlsMode::VerifyFull => SslMode::Require,
    }
}
