//! A Mosquitto broker of a test's own, on a free port, with persistence, so a test can
//! restart it without disturbing the machine's broker or other tests.

use crate::cluster::free_port;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct MosquittoBroker {
    pub port: u16,
    dir: PathBuf,
    child: Mutex<Option<Child>>,
}

impl MosquittoBroker {
    pub async fn start() -> MosquittoBroker {
        let dir = std::env::temp_dir().join(crate::unique("fleetagg_mosquitto"));
        std::fs::create_dir_all(&dir).expect("broker dir");
        let port = free_port();
        // Unlimited queues: a persistent session must not lose messages while the
        // service is away. `user root` keeps a root-started broker from switching to a
        // user that cannot write the test's directory.
        let as_root = std::env::var("USER").map_or(true, |user| user == "root");
        let config = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\n\
             max_queued_messages 0\nmax_inflight_messages 100\nlog_dest file {}/mosquitto.log\n{}",
            dir.display(),
            dir.display(),
            if as_root { "user root\n" } else { "" }
        );
        std::fs::write(dir.join("mosquitto.conf"), config).expect("broker config");
        let broker = MosquittoBroker { port, dir, child: Mutex::new(None) };
        broker.resume().await;
        broker
    }

    pub fn url(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    /// Starts the broker again after [`MosquittoBroker::stop`]; waits until it listens.
    pub async fn resume(&self) {
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto is not installed: scripts/test installs it");
        *self.child.lock().expect("broker lock") = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "mosquitto did not listen on {}", self.port);
            actix_rt::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the broker cleanly (SIGTERM: it saves its persistence file first).
    pub fn stop(&self) {
        if let Some(mut child) = self.child.lock().expect("broker lock").take() {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let _ = child.wait();
        }
    }
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
