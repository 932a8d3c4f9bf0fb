//! A PgBouncer of a test's own in transaction pooling mode, in front of a private
//! PostgreSQL cluster: what most large deployments (and RDS Proxy, Supavisor) put between
//! a service and its database. Each transaction gets whichever server connection is free,
//! in turn (`server_round_robin`), with several open from the start, so a statement
//! prepared on one connection is unknown on the next.
//!
//! PgBouncer refuses to run as root, so it runs as the `postgres` user, like the
//! clusters ([`crate::cluster`]); it is stopped through its pid file when dropped.

use crate::ports::PortLease;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct PgBouncer {
    lease: PortLease,
    dir: PathBuf,
}

impl PgBouncer {
    /// Starts one that pools connections to database `dbname` on 127.0.0.1:`server_port`
    /// (as `postgres`, trusted), and returns once it accepts connections.
    pub async fn start_transaction_pooling(server_port: u16, dbname: &str) -> PgBouncer {
        let lease = PortLease::acquire();
        let dir = std::env::temp_dir().join(crate::unique("fleetagg_pgbouncer"));
        std::fs::create_dir_all(&dir).unwrap_or_else(|err| panic!("cannot create {}: {err}", dir.display()));
        let config = format!(
            "[databases]\n{dbname} = host=127.0.0.1 port={server_port} dbname={dbname} user=postgres\n\n\
             [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
             auth_type = any\npool_mode = transaction\ndefault_pool_size = 3\nmin_pool_size = 3\n\
             server_round_robin = 1\nignore_startup_parameters = extra_float_digits,options\n\
             logfile = {dir}/pgbouncer.log\npidfile = {dir}/pgbouncer.pid\n",
            port = lease.port(),
            dir = dir.display(),
        );
        std::fs::write(dir.join("pgbouncer.ini"), config).expect("write pgbouncer.ini");
        let bouncer = PgBouncer { lease, dir };
        let as_root =
            Command::new("id").arg("-u").output().map(|out| out.stdout.starts_with(b"0")).unwrap_or(false);
        if as_root {
            let chown = Command::new("chown").args(["-R", "postgres:"]).arg(&bouncer.dir).status();
            assert!(chown.is_ok_and(|status| status.success()), "chown the PgBouncer directory to postgres");
        }
        let mut command = if as_root {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--", &pgbouncer_program()]);
            command
        } else {
            Command::new(pgbouncer_program())
        };
        let output = command
            .arg("-d")
            .arg(bouncer.dir.join("pgbouncer.ini"))
            .current_dir(&bouncer.dir)
            .output()
            .unwrap_or_else(|err| panic!("cannot run pgbouncer ({err}): scripts/test installs it"));
        assert!(
            output.status.success(),
            "pgbouncer did not start: {}{}\nlog:\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            bouncer.log()
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", bouncer.port())).is_err() {
            assert!(Instant::now() < deadline, "pgbouncer did not listen; log:\n{}", bouncer.log());
            actix_rt::time::sleep(Duration::from_millis(50)).await;
        }
        bouncer
    }

    pub fn port(&self) -> u16 {
        self.lease.port()
    }

    /// The URL a service uses to reach `dbname` through the pooler.
    pub fn url_for(&self, dbname: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{dbname}", self.port())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default()
    }
}

fn pgbouncer_program() -> String {
    let installed = Path::new("/usr/sbin/pgbouncer");
    if installed.exists() {
        installed.display().to_string()
    } else {
        "pgbouncer".to_owned()
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("pgbouncer.pid")) {
            let _ = Command::new("kill").args(["-TERM", pid.trim()]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
