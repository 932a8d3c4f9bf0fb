//! What a failed MQTT connection attempt means, in words an operator can act on. paho's
//! own text is terse ("TCP/TLS connect failure" for a closed port and an untrusted
//! certificate alike) or broken (a refused login prints "(0)").

use crate::tls_refusal::certificate_refusal;
use fleetagg_config::MqttConfig;
use openssl::ssl::{SslConnector, SslFiletype, SslMethod, SslVerifyMode};
use paho_mqtt as mqtt;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// What kind of failure, for the log line's headline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FailureKind {
    /// Nothing answered at the TCP level (down, refused, timed out, no such host).
    Unreachable,
    /// TCP worked, TLS did not: typically the broker's certificate is not trusted.
    Tls,
    /// The broker answered and refused: the login, the client id, the protocol.
    Refused,
}

impl FailureKind {
    pub(super) fn headline(self) -> &'static str {
        match self {
            FailureKind::Unreachable => "MQTT broker unreachable; retrying with back-off",
            FailureKind::Tls => "TLS with the MQTT broker failed; retrying with back-off",
            FailureKind::Refused => "the MQTT broker refused the connection; retrying with back-off",
        }
    }
}

/// The kind and a description of `err` from connecting to `urls` (paho tried each) with
/// `config`'s TLS files.
pub(super) fn describe(err: &mqtt::Error, urls: &[String], config: &MqttConfig) -> (FailureKind, String) {
    use mqtt::ConnectReturnCode as Code;
    let refused = |what: &str| (FailureKind::Refused, what.to_owned());
    match err {
        mqtt::Error::ConnectReturn(Code::BadUserNameOrPassword) => {
            refused("login refused: bad user name or password")
        }
        // What Mosquitto answers to a wrong password, too.
        mqtt::Error::ConnectReturn(Code::NotAuthorized) => {
            refused("login refused: not authorized (wrong user name or password, or not allowed)")
        }
        mqtt::Error::ConnectReturn(Code::IdentifierRejected) => {
            refused("client id rejected by the broker (mqtt.client_id)")
        }
        mqtt::Error::ConnectReturn(Code::UnacceptableProtocolVersion) => {
            refused("protocol version refused by the broker")
        }
        mqtt::Error::ConnectReturn(Code::ServerUnavailable) => refused("the broker says it is unavailable"),
        mqtt::Error::ReasonCode(code, _) => (FailureKind::Refused, format!("refused by the broker: {code}")),
        mqtt::Error::TcpConnectTimeout => (FailureKind::Unreachable, "TCP connect timed out".to_owned()),
        mqtt::Error::TcpTlsConnectFailure => probe_all(urls, config),
        other => (FailureKind::Unreachable, other.to_string()),
    }
}

/// [`probe`] for each URL; with several, TLS wins (it is the one an operator can fix
/// here) and the causes are listed.
fn probe_all(urls: &[String], config: &MqttConfig) -> (FailureKind, String) {
    let probes: Vec<(FailureKind, String)> = urls.iter().map(|url| probe(url, config)).collect();
    let kind = if probes.iter().any(|(kind, _)| *kind == FailureKind::Tls) {
        FailureKind::Tls
    } else {
        FailureKind::Unreachable
    };
    let causes: Vec<String> = probes.into_iter().map(|(_, cause)| cause).collect();
    (kind, causes.join("; "))
}

/// paho does not say whether TCP or TLS failed, nor why TLS did: find out with a TCP
/// connection of our own, and a TLS handshake of our own on it with the same files.
fn probe(url: &str, config: &MqttConfig) -> (FailureKind, String) {
    let tls = url.starts_with("ssl://") || url.starts_with("mqtts://") || url.starts_with("wss://");
    let address = url.split_once("://").map_or(url, |(_, rest)| rest);
    let address = address.split('/').next().unwrap_or(address);
    let resolved = match address.to_socket_addrs() {
        Ok(mut addresses) => addresses.next(),
        Err(err) => return (FailureKind::Unreachable, format!("cannot resolve {address}: {err}")),
    };
    let Some(socket) = resolved else {
        return (FailureKind::Unreachable, format!("{address} resolves to no address"));
    };
    match TcpStream::connect_timeout(&socket, PROBE_TIMEOUT) {
        Ok(stream) if tls => (FailureKind::Tls, tls_probe(stream, host_of(address), config)),
        Ok(_) => (FailureKind::Unreachable, "the broker closed the connection".to_owned()),
        Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => {
            (FailureKind::Unreachable, format!("connection refused by {address}"))
        }
        Err(err) => (FailureKind::Unreachable, format!("{address}: {err}")),
    }
}

const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// `host` of `host:port` or `[v6]:port`.
fn host_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// A handshake as paho makes it (chain and host name verified, the client certificate
/// offered), telling why the broker's certificate was refused.
fn tls_probe(stream: TcpStream, host: &str, config: &MqttConfig) -> String {
    let generic = "TLS handshake failed: the broker's certificate is not trusted (mqtt.ca_file), \
                   names another host, or the broker refused ours";
    let refusal = Arc::new(Mutex::new(None));
    let connector = (|| -> Result<SslConnector, openssl::error::ErrorStack> {
        let mut builder = SslConnector::builder(SslMethod::tls_client())?;
        if let Some(ca) = &config.ca_file {
            builder.set_ca_file(ca)?;
        }
        if let (Some(cert), Some(key)) = (&config.cert_file, &config.key_file) {
            builder.set_certificate_chain_file(cert)?;
            builder.set_private_key_file(key, SslFiletype::PEM)?;
        }
        let noted = refusal.clone();
        builder.set_verify_callback(SslVerifyMode::PEER, move |preverified, context| {
            if !preverified {
                *noted.lock().unwrap_or_else(PoisonError::into_inner) =
                    Some(context.error().error_string().to_owned());
            }
            preverified
        });
        Ok(builder.build())
    })();
    let Ok(connector) = connector else {
        return format!("{generic} (the TLS files could not be read for a test handshake)");
    };
    let _ = stream.set_read_timeout(Some(PROBE_TIMEOUT));
    let _ = stream.set_write_timeout(Some(PROBE_TIMEOUT));
    match connector.connect(host, stream) {
        Ok(_) => "TLS handshake failed in paho, but one made here with the same files works: \
                  a passing fault, or a setting of the broker's"
            .to_owned(),
        Err(err) => match refusal.lock().unwrap_or_else(PoisonError::into_inner).take() {
            Some(reason) => format!("broker certificate not trusted: {}", certificate_refusal(&reason)),
            None => format!("TLS handshake failed: {err} (did the broker refuse our client certificate?)"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn the_host_is_the_address_without_its_port() {
        assert_eq!(host_of("broker.example.com:8883"), "broker.example.com");
        assert_eq!(host_of("127.0.0.1:1883"), "127.0.0.1");
        assert_eq!(host_of("[::1]:8883"), "::1");
    }
}
