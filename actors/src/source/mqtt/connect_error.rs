//! What a failed MQTT connection attempt means, in words an operator can act on. paho's
//! own text is terse ("TCP/TLS connect failure" for a closed port and an untrusted
//! certificate alike) or broken (a refused login prints "(0)").

use paho_mqtt as mqtt;
use std::net::{TcpStream, ToSocketAddrs};
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

/// The kind and a description of `err` from connecting to `urls` (paho tried each).
pub(super) fn describe(err: &mqtt::Error, urls: &[String]) -> (FailureKind, String) {
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
        mqtt::Error::TcpTlsConnectFailure => probe_all(urls),
        other => (FailureKind::Unreachable, other.to_string()),
    }
}

/// [`probe`] for each URL; with several, TLS wins (it is the one an operator can fix
/// here) and the causes are listed.
fn probe_all(urls: &[String]) -> (FailureKind, String) {
    let probes: Vec<(FailureKind, String)> = urls.iter().map(|url| probe(url)).collect();
    let kind = if probes.iter().any(|(kind, _)| *kind == FailureKind::Tls) {
        FailureKind::Tls
    } else {
        FailureKind::Unreachable
    };
    let causes: Vec<String> = probes.into_iter().map(|(_, cause)| cause).collect();
    (kind, causes.join("; "))
}

/// paho does not say whether TCP or TLS failed: find out with a TCP connection of our own.
fn probe(url: &str) -> (FailureKind, String) {
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
    match TcpStream::connect_timeout(&socket, Duration::from_secs(2)) {
        Ok(_) if tls => (
            FailureKind::Tls,
            "TLS handshake failed: the broker's certificate is not trusted (mqtt.ca_file), names \
             another host, or the broker refused ours"
                .to_owned(),
        ),
        Ok(_) => (FailureKind::Unreachable, "the broker closed the connection".to_owned()),
        Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => {
            (FailureKind::Unreachable, format!("connection refused by {address}"))
        }
        Err(err) => (FailureKind::Unreachable, format!("{address}: {err}")),
    }
}
