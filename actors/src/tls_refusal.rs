//! Why a peer's TLS certificate was refused, in words an operator can act on, from
//! OpenSSL's verify error: one wording for the broker and the database. (OpenSSL's
//! handshake error alone only says "certificate verify failed".)

/// `reason`: OpenSSL's verify error text, e.g. "certificate has expired".
pub(crate) fn certificate_refusal(reason: &str) -> String {
    let lower = reason.to_ascii_lowercase();
    // OpenSSL says "Hostname mismatch", or "IP address mismatch" for an address.
    let cause = if lower.contains("mismatch") {
        "hostname mismatch: the certificate does not name the host"
    } else if lower.contains("expired") {
        "expired"
    } else if lower.contains("not yet valid") {
        "not yet valid (is a clock wrong?)"
    } else {
        "unknown CA or invalid certificate"
    };
    format!("{cause} ({reason})")
}

#[cfg(test)]
mod tests {
    use super::certificate_refusal;

    #[test]
    fn each_refusal_has_its_own_words() {
        for (reason, cause) in [
            ("Hostname mismatch", "hostname mismatch"),
            ("IP address mismatch", "hostname mismatch"),
            ("certificate has expired", "expired"),
            ("certificate is not yet valid", "not yet valid"),
            ("unable to get local issuer certificate", "unknown CA"),
            ("self-signed certificate in certificate chain", "unknown CA"),
        ] {
            let text = certificate_refusal(reason);
            assert!(text.starts_with(cause) && text.ends_with(&format!("({reason})")), "{reason}: {text}");
        }
    }
}
