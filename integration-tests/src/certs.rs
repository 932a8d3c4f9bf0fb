//! Certificates made with the `openssl` command at test time: a CA, a server certificate
//! it signs (for `127.0.0.1` and `localhost`, or for another name), and a client
//! certificate; a second, unrelated CA for "not trusted" cases.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A directory of PEM files; removed when dropped.
#[derive(Debug)]
pub struct TestCertificates {
    pub dir: PathBuf,
}

impl TestCertificates {
    /// A CA (`ca.crt`), a server certificate it signs for `server_names` (`server.crt`,
    /// `server.key`: e.g. `IP:127.0.0.1,DNS:localhost`), a client certificate for the user
    /// `client_user` (`client.crt`, `client.key`), and another CA (`other-ca.crt`).
    pub fn make(server_names: &str, client_user: &str) -> TestCertificates {
        let dir = std::env::temp_dir().join(crate::unique("fleetagg_certs"));
        std::fs::create_dir_all(&dir).unwrap_or_else(|err| panic!("cannot create {}: {err}", dir.display()));
        let certs = TestCertificates { dir };
        certs.self_signed_ca("ca");
        certs.self_signed_ca("other-ca");
        certs.signed("server", "fleetagg test server", Some(server_names), 2);
        certs.signed("client", client_user, None, 2);
        certs
    }

    /// A server certificate like `server.crt`, signed by the same CA, that has expired
    /// (`expired-server.crt`, `expired-server.key`).
    pub fn with_expired_server(self, server_names: &str) -> TestCertificates {
        // Valid until the second it was made.
        self.signed("expired-server", "fleetagg test server", Some(server_names), 0);
        std::thread::sleep(std::time::Duration::from_millis(1_100));
        self
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn self_signed_ca(&self, name: &str) {
        openssl(
            &self.dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN=fleetagg test {name}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.crt"),
            ],
        );
    }

    fn signed(&self, name: &str, common_name: &str, alt_names: Option<&str>, days: u32) {
        openssl(
            &self.dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN={common_name}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ],
        );
        let extensions = alt_names.map(|names| format!("subjectAltName={names}\n")).unwrap_or_default();
        std::fs::write(self.dir.join(format!("{name}.ext")), extensions).expect("write the extensions");
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                &days.to_string(),
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}.crt"),
            ],
        );
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|err| panic!("cannot run openssl ({err}): scripts/test installs it"));
    assert!(output.status.success(), "openssl {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
}

impl Drop for TestCertificates {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
