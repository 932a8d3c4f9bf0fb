//! A real local AWS Secrets Manager for the secret-source tests: `moto_server`.
//!
//! moto implements the Secrets Manager API (CreateSecret, PutSecretValue, GetSecretValue
//! with version stages) over HTTP, so the service's real aws-sdk-secretsmanager code path
//! runs unchanged, only with `endpoint_url` pointing at it and dummy credentials.
//! `scripts/ensure-services.sh` (run by `scripts/test`) installs `moto[server]` into the
//! virtual environment `scripts/.venv`; `$FLEETAGG_MOTO_SERVER` can name another
//! executable. Each [`MotoServer`] is a process of its own on a leased port ([`crate::ports`]), so tests do
//! not see each other's secrets; dropping it kills the process.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::ports::PortLease;

use aws_sdk_secretsmanager::config::{Credentials, Region};
use aws_sdk_secretsmanager::error::DisplayErrorContext;

/// Dummy credentials: moto accepts any, but the SDK refuses to sign without some.
const ACCESS_KEY_ID: &str = "test";
const SECRET_ACCESS_KEY: &str = "test";
const REGION: &str = "us-east-1";

/// A running `moto_server` on 127.0.0.1.
#[derive(Debug)]
pub struct MotoServer {
    /// `http://127.0.0.1:<port>`: the `endpoint_url` for SDK clients and fleetagg's config.
    pub endpoint: String,
    child: Option<Child>,
    /// The port `endpoint` names, held while the server runs.
    _lease: PortLease,
    /// Holds the server's log (moto logs every request to stderr).
    dir: PathBuf,
}

impl MotoServer {
    /// Starts `moto_server` on a free port and returns once it answers HTTP.
    ///
    /// Panics when the executable is missing (with how to install it) or the server does
    /// not come up (with its log): the tests that need it must fail, never skip.
    pub async fn start() -> MotoServer {
        let executable = moto_executable();
        let dir = std::env::temp_dir().join(crate::unique("fleetagg_moto"));
        std::fs::create_dir_all(&dir).unwrap_or_else(|err| panic!("cannot create {}: {err}", dir.display()));
        let lease = PortLease::acquire();
        let port = lease.port();
        let log = std::fs::File::create(dir.join("moto.log")).expect("create the moto log");
        let child = Command::new(&executable)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the moto log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|err| panic!("cannot run {}: {err}", executable.display()));
        let mut server = MotoServer {
            endpoint: format!("http://127.0.0.1:{port}"),
            child: Some(child),
            _lease: lease,
            dir,
        };
        if !server.wait_until_answering(port).await {
            panic!(
                "moto_server ({}) did not start on port {port}; its log:\n{}",
                executable.display(),
                server.log()
            );
        }
        server
    }

    /// A Secrets Manager client for this server, as a test's "operator" side: dummy
    /// static credentials, us-east-1, this endpoint. Nothing comes from the environment.
    pub async fn client(&self) -> aws_sdk_secretsmanager::Client {
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .credentials_provider(Credentials::new(
                ACCESS_KEY_ID,
                SECRET_ACCESS_KEY,
                None,
                None,
                "fleetagg-integration-tests",
            ))
            .region(Region::new(REGION))
            .endpoint_url(&self.endpoint)
            .load()
            .await;
        aws_sdk_secretsmanager::Client::new(&config)
    }

    /// Creates a secret whose `AWSCURRENT` version holds `value`.
    pub async fn create_secret(&self, name: &str, value: &str) {
        self.client().await.create_secret().name(name).secret_string(value).send().await.unwrap_or_else(
            |err| panic!("CreateSecret {name:?} on moto failed: {}", DisplayErrorContext(&err)),
        );
    }

    /// Stores a new version holding `value` and makes it `AWSCURRENT` (what a rotation
    /// does last).
    pub async fn put_secret_value(&self, name: &str, value: &str) {
        self.client()
            .await
            .put_secret_value()
            .secret_id(name)
            .secret_string(value)
            .send()
            .await
            .unwrap_or_else(|err| {
                panic!("PutSecretValue {name:?} on moto failed: {}", DisplayErrorContext(&err))
            });
    }

    /// The environment a fleetagg child process needs to reach this server through the
    /// standard AWS credential chain. The endpoint is not among them: it belongs in
    /// fleetagg's own config (`endpoint_url`), the way an operator would set it.
    pub fn aws_env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID),
            ("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY),
            ("AWS_REGION", REGION),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect()
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("moto.log")
    }

    /// Polls with a raw HTTP request (any HTTP answer will do) until moto answers, has
    /// exited, or a generous deadline passes: importing moto takes
    /// seconds on a busy machine.
    async fn wait_until_answering(&mut self, port: u16) -> bool {
        let deadline = Instant::now() + Duration::from_secs(60);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if !matches!(child.try_wait(), Ok(None)) {
                    return false;
                }
            }
            if answers_http(addr) {
                return true;
            }
            actix_rt::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `$FLEETAGG_MOTO_SERVER`, else the one `scripts/ensure-services.sh` installs.
fn moto_executable() -> PathBuf {
    let executable = std::env::var_os("FLEETAGG_MOTO_SERVER").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("scripts/.venv/bin/moto_server"),
        PathBuf::from,
    );
    assert!(
        executable.is_file(),
        "{} is missing: run scripts/test (its scripts/ensure-services.sh installs \
         moto[server] into scripts/.venv), or set FLEETAGG_MOTO_SERVER",
        executable.display()
    );
    executable
}

/// Whether something on `addr` answers an HTTP request with an HTTP status line.
fn answers_http(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    let request = b"GET /moto-api/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    let mut head = [0_u8; 8];
    stream.write_all(request).is_ok() && stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.")
}
