//! A Mosquitto broker of a test's own, on a leased port, with persistence, so a test can
//! restart it without disturbing the machine's broker or other tests.

use crate::ports::PortLease;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct MosquittoBroker {
    pub port: u16,
    /// Held for the broker's whole life, so a restart after [`MosquittoBroker::stop`]
    /// finds its port free.
    lease: PortLease,
    dir: PathBuf,
    /// Speaks only TLS (`ssl://` URLs).
    tls: bool,
    child: Mutex<Option<Child>>,
}

impl MosquittoBroker {
    pub async fn start() -> MosquittoBroker {
        let dir = new_dir();
        Self::launch(dir, "allow_anonymous true\n").await
    }

    /// A broker that refuses anonymous clients and accepts `user` with `password` only
    /// (a password file written by `mosquitto_passwd`, which comes with mosquitto).
    pub async fn start_with_password(user: &str, password: &str) -> MosquittoBroker {
        let dir = new_dir();
        let password_file = dir.join("passwords");
        let created = Command::new("mosquitto_passwd")
            .args(["-b", "-c"])
            .arg(&password_file)
            .args([user, password])
            .stdin(Stdio::null())
            .output()
            .expect("mosquitto_passwd is not installed (it comes with mosquitto): scripts/test installs it");
        assert!(
            created.status.success(),
            "mosquitto_passwd failed: {}",
            String::from_utf8_lossy(&created.stderr)
        );
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&password_file, std::fs::Permissions::from_mode(0o600))
                .expect("restrict the password file");
        }
        let auth = format!("allow_anonymous false\npassword_file {}\n", password_file.display());
        Self::launch(dir, &auth).await
    }

    /// Sets `user`'s password in the broker's password file (made by
    /// [`MosquittoBroker::start_with_password`]) and tells a running broker to reload it
    /// (SIGHUP). Mosquitto keeps connections that already logged in.
    pub fn change_password(&self, user: &str, password: &str) {
        let changed = Command::new("mosquitto_passwd")
            .arg("-b")
            .arg(self.dir.join("passwords"))
            .args([user, password])
            .stdin(Stdio::null())
            .output()
            .expect("mosquitto_passwd");
        assert!(
            changed.status.success(),
            "mosquitto_passwd failed: {}",
            String::from_utf8_lossy(&changed.stderr)
        );
        if let Some(child) = self.child.lock().expect("broker lock").as_ref() {
            let _ = Command::new("kill").args(["-HUP", &child.id().to_string()]).status();
        }
    }

    /// A broker that speaks only TLS with the server certificate of `certs` and accepts
    /// only clients with a certificate from `certs`' CA, logged in as the certificate's
    /// common name (`require_certificate`, `use_identity_as_username`).
    pub async fn start_tls_with_client_certificates(
        certs: &crate::certs::TestCertificates,
    ) -> MosquittoBroker {
        Self::start_tls_serving(certs, "server").await
    }

    /// [`MosquittoBroker::start_tls_with_client_certificates`] with the server
    /// certificate `<server>.crt` and its key from `certs`.
    pub async fn start_tls_serving(certs: &crate::certs::TestCertificates, server: &str) -> MosquittoBroker {
        let dir = new_dir();
        let auth = format!(
            "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\nuse_identity_as_username true\n\
             allow_anonymous false\n",
            certs.path("ca.crt").display(),
            certs.path(&format!("{server}.crt")).display(),
            certs.path(&format!("{server}.key")).display()
        );
        let mut broker = Self::launch_unstarted(dir, &auth);
        broker.tls = true;
        broker.resume().await;
        broker
    }

    /// Writes the configuration (the common part and `auth`) and starts the broker on a
    /// leased port.
    async fn launch(dir: PathBuf, auth: &str) -> MosquittoBroker {
        let broker = Self::launch_unstarted(dir, auth);
        broker.resume().await;
        broker
    }

    fn launch_unstarted(dir: PathBuf, auth: &str) -> MosquittoBroker {
        let lease = PortLease::acquire();
        let port = lease.port();
        // Unlimited queues: a persistent session must not lose messages while the
        // service is away. `user root` keeps a root-started broker from switching to a
        // user that cannot write the test's directory.
        let as_root = std::env::var("USER").map_or(true, |user| user == "root");
        let config = format!(
            "listener {port} 127.0.0.1\n{auth}persistence true\npersistence_location {dir}/\n\
             max_queued_messages 0\nmax_inflight_messages 100\nlog_dest file {dir}/mosquitto.log\n{user}",
            dir = dir.display(),
            user = if as_root { "user root\n" } else { "" }
        );
        std::fs::write(dir.join("mosquitto.conf"), config).expect("broker config");
        MosquittoBroker { port, lease, dir, tls: false, child: Mutex::new(None) }
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "ssl" } else { "tcp" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Starts the broker again after [`MosquittoBroker::stop`]; waits until it listens.
    ///
    /// Fails at once, with the cause, when the port was taken or mosquitto exits.
    pub async fn resume(&self) {
        self.lease.assert_bindable("the test's Mosquitto");
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto is not installed: scripts/test installs it");
        // In place before any wait, so Drop stops it if the wait below fails the test.
        *self.child.lock().expect("broker lock") = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            let exited = self
                .child
                .lock()
                .expect("broker lock")
                .as_mut()
                .and_then(|child| child.try_wait().ok().flatten());
            if let Some(status) = exited {
                panic!(
                    "mosquitto exited ({status}) instead of listening on {}; its log:\n{}",
                    self.port,
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "mosquitto did not listen on {} within 30 s; its log:\n{}",
                self.port,
                self.log()
            );
            actix_rt::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The broker's log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
    }

    /// Stops the broker cleanly (SIGTERM: it saves its persistence file first).
    pub fn stop(&self) {
        if let Some(mut child) = self.child.lock().expect("broker lock").take() {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let _ = child.wait();
        }
    }
}

fn new_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(crate::unique("fleetagg_mosquitto"));
    std::fs::create_dir_all(&dir).expect("broker dir");
    dir
}

impl Drop for MosquittoBroker {
    fn drop(&mut self) {
        if let Ok(mut child) = self.child.lock() {
            if let Some(mut child) = child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
