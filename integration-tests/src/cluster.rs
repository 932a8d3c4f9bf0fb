//! A private PostgreSQL cluster for tests that need real password authentication.
//!
//! The machine's own PostgreSQL on 127.0.0.1:5432 trusts every local connection, so it
//! never checks a password: a secret-rotation test run against it would pass whatever
//! password the service sent. [`PgCluster::start_scram`] instead runs `initdb` into a
//! temporary directory with `scram-sha-256` for TCP connections in its `pg_hba.conf` and
//! starts it on a leased port of 127.0.0.1 ([`crate::ports`]). Its administrator connects over a unix socket
//! inside that directory (trusted, so the helper needs no password of its own); the
//! service under test connects over TCP and has to present the right password.
//!
//! Tests run as root, and `initdb` (like `postgres`) refuses to run as root: the
//! directory is handed to the `postgres` system user and every PostgreSQL program runs
//! as that user through `runuser` (`scripts/ensure-services.sh` checks it is installed).
//! Run as any other user, the programs run as that user directly.
//!
//! A cluster is stopped and its directory removed when the [`PgCluster`] is dropped,
//! which also happens while a failing test unwinds. Clusters left behind by a test
//! process that was killed outright are stopped and removed by the next
//! [`PgCluster::start_scram`].

use crate::ports::PortLease;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Every cluster directory is `<temp dir>/fleetagg_pg_<pid>_...` ([`crate::unique`]): the
/// pid tells which clusters belong to test processes that no longer exist.
const DIR_PREFIX: &str = "fleetagg_pg";

/// How long `pg_ctl` may take to start or stop a cluster: generous, the machine may be
/// busy compiling.
const PG_CTL_TIMEOUT_SECS: &str = "120";

/// A running private PostgreSQL cluster that checks passwords with SCRAM-SHA-256.
///
/// Dropping it stops the server (`pg_ctl stop -m immediate`) and removes its directory.
#[derive(Debug)]
pub struct PgCluster {
    /// The TCP port on 127.0.0.1 (the unix socket uses the same number).
    pub port: u16,
    /// Held for the cluster's whole life, so a restart after [`PgCluster::stop`] finds its
    /// port free (`None` only for abandoned clusters being reaped).
    lease: Option<PortLease>,
    /// The temporary directory: the data directory `data/`, the unix socket, the log.
    dir: PathBuf,
    /// The directory of `initdb`, `pg_ctl` and `postgres`.
    bindir: PathBuf,
    /// Whether the PostgreSQL programs run as the `postgres` user (we are root).
    as_postgres: bool,
}

impl PgCluster {
    /// Creates, configures and starts a cluster; returns once it accepts connections.
    ///
    /// Panics with the reason (and `initdb`'s or the server's output) when it cannot:
    /// a test that needs a password-checking server must fail, never skip.
    pub async fn start_scram() -> PgCluster {
        Self::start_with_host_auth("scram-sha-256").await
    }

    /// A cluster that trusts TCP logins on 127.0.0.1: for fault tests (restarts, outages)
    /// that need a server of their own but no passwords.
    pub async fn start_trust() -> PgCluster {
        Self::start_with_host_auth("trust").await
    }

    async fn start_with_host_auth(host_auth: &str) -> PgCluster {
        let cluster = Self::in_new_dir();
        cluster.initdb(host_auth);
        cluster.launch("").await;
        cluster
    }

    /// A cluster that accepts only TLS on TCP (`hostssl` lines, no `host` ones), with the
    /// server certificate and key of `certs`: `host_auth` for passwords (`trust`,
    /// `scram-sha-256`) or `cert` for client certificates (issued by `certs`' CA).
    pub async fn start_tls_only(certs: &crate::certs::TestCertificates, host_auth: &str) -> PgCluster {
        let cluster = Self::in_new_dir();
        cluster.initdb("trust");
        // The key must belong to the server's user and be private; copies in the data
        // directory get both right.
        for name in ["server.crt", "server.key", "ca.crt"] {
            let copy = cluster.data_dir().join(name);
            std::fs::copy(certs.path(name), &copy).unwrap_or_else(|err| panic!("copy {name}: {err}"));
            if cluster.as_postgres {
                cluster.run_checked(Command::new("chown").arg("postgres:").arg(&copy), "chown a certificate");
            }
        }
        cluster.run_checked(
            Command::new("chmod").arg("600").arg(cluster.data_dir().join("server.key")),
            "make the server key private",
        );
        let hba = format!(
            "local all all trust\nhostssl all all 127.0.0.1/32 {host_auth}\nhostssl replication all 127.0.0.1/32 trust\n"
        );
        let hba_path = cluster.data_dir().join("pg_hba.conf");
        std::fs::write(&hba_path, hba)
            .unwrap_or_else(|err| panic!("cannot write {}: {err}", hba_path.display()));
        cluster
            .launch("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\nssl_ca_file = 'ca.crt'\n")
            .await;
        cluster
    }

    /// A streaming standby of `primary` (`pg_basebackup`, then `primary_conninfo`): for
    /// failover tests, with [`PgCluster::promote`]. It trusts what the primary trusts.
    pub async fn start_standby_of(primary: &PgCluster) -> PgCluster {
        let cluster = Self::in_new_dir();
        let mut command = cluster.program("pg_basebackup");
        command.arg("-D").arg(cluster.data_dir()).args([
            "-h",
            "127.0.0.1",
            "-p",
            &primary.port.to_string(),
            "-U",
            "postgres",
            "-X",
            "stream",
            "--no-sync",
            // An immediate checkpoint: the default spreads it over minutes.
            "--checkpoint=fast",
        ]);
        cluster.run_checked(&mut command, "copy the primary with pg_basebackup");
        let signal = cluster.data_dir().join("standby.signal");
        std::fs::write(&signal, "").unwrap_or_else(|err| panic!("cannot write {}: {err}", signal.display()));
        cluster
            .launch(&format!("primary_conninfo = 'host=127.0.0.1 port={} user=postgres'\n", primary.port))
            .await;
        cluster
    }

    /// Promotes a standby to primary (`pg_ctl promote`, which waits until it is).
    pub fn promote(&self) {
        let output = self.pg_ctl(&["promote"]);
        assert!(
            output.status.success(),
            "pg_ctl promote failed: {}\nserver log:\n{}",
            describe(&output),
            self.log()
        );
    }

    /// A new directory with a leased port; the caller fills `data/` and launches.
    fn in_new_dir() -> PgCluster {
        let bindir = postgres_bindir();
        let as_postgres = running_as_root();
        reap_abandoned_clusters(&bindir, as_postgres);

        let dir = std::env::temp_dir().join(crate::unique(DIR_PREFIX));
        std::fs::create_dir_all(&dir).unwrap_or_else(|err| panic!("cannot create {}: {err}", dir.display()));
        // From here on, Drop removes the directory and stops the server whatever fails.
        let lease = PortLease::acquire();
        let cluster = PgCluster { port: lease.port(), lease: Some(lease), dir, bindir, as_postgres };
        if as_postgres {
            // initdb refuses to run as root; the postgres user must own the directory
            // (the system temp dir is world-traversable, so it can reach it).
            cluster.run_checked(
                Command::new("chown").arg("postgres:").arg(&cluster.dir),
                "chown the cluster directory to the postgres user",
            );
        }
        cluster
    }

    /// Writes the settings (and `extra` ones), starts the server and waits until it
    /// accepts connections.
    async fn launch(&self, extra_settings: &str) {
        self.write_settings(extra_settings);
        if let Err(error) = self.pg_ctl_start() {
            panic!("the test PostgreSQL cluster in {} did not start: {error}", self.dir.display());
        }
        self.wait_until_accepting().await;
    }

    /// A tokio-postgres connection string for the `postgres` superuser over the unix
    /// socket, which `pg_hba.conf` trusts: tests set roles and passwords up with it.
    pub fn admin_url(&self) -> String {
        format!("host='{}' port={} user=postgres dbname=postgres", self.dir.display(), self.port)
    }

    /// Runs SQL as the superuser (see [`PgCluster::admin_url`]); panics with the SQL and
    /// the error when it fails.
    pub async fn admin_execute(&self, sql: &str) {
        let client = crate::connect(&self.admin_url()).await;
        client.batch_execute(sql).await.unwrap_or_else(|err| {
            panic!("SQL {sql:?} on the test cluster failed: {}", crate::describe(&err))
        });
    }

    /// The URL the service under test uses: TCP on 127.0.0.1, so the server asks for a
    /// SCRAM password, and no password in it: the service must get it from its secret
    /// source.
    pub fn url_for(&self, user: &str, dbname: &str) -> String {
        format!("postgres://{user}@127.0.0.1:{}/{dbname}", self.port)
    }

    /// The server's log (connections are logged), for assertions and failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Stops the server cleanly (`pg_ctl stop -m fast`: sessions are terminated, the
    /// service sees its connection drop); [`PgCluster::start`] brings it back. For
    /// fault-tolerance tests.
    pub fn stop(&self) {
        let output = self.pg_ctl(&["stop", "-m", "fast"]);
        assert!(
            output.status.success(),
            "pg_ctl stop failed: {}\nserver log:\n{}",
            describe(&output),
            self.log()
        );
    }

    /// Starts the server again after [`PgCluster::stop`], on the same port and with the
    /// same data; returns once it accepts connections.
    pub fn start(&self) {
        if let Some(lease) = &self.lease {
            lease.assert_bindable("the test PostgreSQL cluster");
        }
        if let Err(error) = self.pg_ctl_start() {
            panic!("the test PostgreSQL cluster on port {} did not start again: {error}", self.port);
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    /// A command for one of PostgreSQL's programs, run as the postgres user if we are
    /// root, from the cluster's directory (the postgres user may not be allowed into the
    /// test's working directory, and initdb complains when it cannot return there).
    fn program(&self, name: &str) -> Command {
        let path = self.bindir.join(name);
        let mut command = if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            Command::new(path)
        };
        command.current_dir(&self.dir).stdin(Stdio::null());
        command
    }

    fn run_checked(&self, command: &mut Command, what: &str) -> Output {
        let output =
            command.output().unwrap_or_else(|err| panic!("cannot {what}: {command:?} did not run: {err}"));
        assert!(output.status.success(), "cannot {what}: {command:?} {}", describe(&output));
        output
    }

    fn initdb(&self, host_auth: &str) {
        let mut command = self.program("initdb");
        command.arg("-D").arg(self.data_dir()).args([
            "-U",
            "postgres",
            // The admin helper connects over the unix socket without a password;
            // TCP logins use `host_auth` (scram-sha-256, or trust for fault tests).
            "--auth-local=trust",
            &format!("--auth-host={host_auth}"),
            // Independent of the machine's locales; no fsync of a throwaway cluster.
            "--locale=C",
            "--encoding=UTF8",
            "--no-sync",
        ]);
        self.run_checked(&mut command, "initialise the test PostgreSQL cluster");
    }

    /// Writes the server settings into the data directory, so that a plain `pg_ctl start`
    /// (first start, or [`PgCluster::start`] after a stop) always uses the same port.
    fn write_settings(&self, extra: &str) {
        let settings = format!(
            "# Written by fleetagg's integration tests (integration-tests/src/cluster.rs).\n\
             port = {port}\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{socket_dir}'\n\
             password_encryption = 'scram-sha-256'\n\
             log_connections = on\n\
             fsync = off\n\
             shared_buffers = 16MB\n\
             max_connections = 50\n{extra}",
            port = self.port,
            socket_dir = self.dir.display(),
        );
        // postgresql.auto.conf is read last and overrides postgresql.conf. Writing the
        // existing file (owned by postgres) keeps its owner.
        let path = self.data_dir().join("postgresql.auto.conf");
        std::fs::write(&path, settings)
            .unwrap_or_else(|err| panic!("cannot write {}: {err}", path.display()));
    }

    /// `pg_ctl start -w`: returns once the server accepts connections (pg_ctl waits for
    /// postmaster.pid to say "ready"). `-l` matters beyond logging: without it the server
    /// would inherit pg_ctl's stdout/stderr pipes and `Command::output` would never return.
    fn pg_ctl_start(&self) -> Result<(), String> {
        let log = self.log_path();
        let log = log.to_str().expect("temp dir path is UTF-8");
        let output = self.pg_ctl(&["start", "-l", log]);
        if output.status.success() {
            Ok(())
        } else {
            Err(format!("{}\nserver log:\n{}", describe(&output), self.log()))
        }
    }

    fn pg_ctl(&self, args: &[&str]) -> Output {
        let mut command = self.program("pg_ctl");
        command.arg("-D").arg(self.data_dir()).args(["-w", "-t", PG_CTL_TIMEOUT_SECS]).args(args);
        command.output().unwrap_or_else(|err| panic!("{command:?} did not run: {err}"))
    }

    /// pg_ctl has already waited for "ready"; this proves the socket and the trust rule
    /// work before a test relies on them.
    async fn wait_until_accepting(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match tokio_postgres::connect(&self.admin_url(), tokio_postgres::NoTls).await {
                Ok((client, connection)) => {
                    drop(client);
                    let _ = connection.await;
                    return;
                }
                Err(err) if Instant::now() > deadline => panic!(
                    "the test PostgreSQL cluster does not accept connections ({err}); \
                     server log:\n{}",
                    self.log()
                ),
                Err(_) => actix_rt::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        // Immediate: nothing in a test cluster needs a clean shutdown, and Drop also runs
        // while a failed test unwinds. A cluster already stopped only makes pg_ctl fail.
        if self.data_dir().join("postmaster.pid").exists() {
            let _ = self.pg_ctl(&["stop", "-m", "immediate"]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The directory of `initdb` and `pg_ctl`: `pg_config --bindir` when it has them, else
/// the newest `/usr/lib/postgresql/<version>/bin` (Debian keeps them off the PATH).
fn postgres_bindir() -> PathBuf {
    let has_programs = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Ok(output) = Command::new("pg_config").arg("--bindir").output() {
        if output.status.success() {
            let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
            if has_programs(&dir) {
                return dir;
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            has_programs(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    match versions.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "no PostgreSQL server programs (initdb, pg_ctl) found: neither `pg_config \
             --bindir` nor /usr/lib/postgresql/*/bin has them; install the `postgresql` \
             package (scripts/ensure-services.sh does)"
        ),
    }
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|meta| meta.uid() == 0)
        .expect("read /proc/self to find the user the tests run as")
}

/// Stops and removes clusters whose test process died without dropping them (killed by a
/// signal or a timeout). Clusters of live processes, including parallel test binaries,
/// are left alone.
fn reap_abandoned_clusters(bindir: &Path, as_postgres: bool) {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(owner) = name
            .to_str()
            .and_then(|name| name.strip_prefix(DIR_PREFIX)?.strip_prefix('_'))
            .and_then(|rest| rest.split('_').next()?.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new("/proc").join(owner.to_string()).exists() {
            continue;
        }
        // Dropping a PgCluster for it stops the server if it runs and removes the dir.
        drop(PgCluster { port: 0, lease: None, dir: entry.path(), bindir: bindir.to_owned(), as_postgres });
    }
}

fn describe(output: &Output) -> String {
    format!(
        "exited with {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}
