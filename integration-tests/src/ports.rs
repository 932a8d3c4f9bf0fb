//! TCP ports for the servers tests start (Mosquitto, PostgreSQL clusters, moto, a
//! service's metrics listener), held from the moment they are chosen until the test ends.
//!
//! "Bind port 0, read the port, close it, start the server on it" loses races: between
//! the close and the server's bind, and again while a test has stopped a server it means
//! to restart, the kernel can hand the port to any socket that asks for an ephemeral one,
//! such as a service's metrics listener on `127.0.0.1:0` or an outgoing connection. That
//! happened in CI (issue 16).
//!
//! A [`PortLease`] therefore comes from a range the kernel never hands out by itself:
//! the ports below `net.ipv4.ip_local_port_range` (see [`reserved_range`]). Among the
//! tests, which run in several processes at once, a port belongs to whoever holds an
//! exclusive lock on `<temp dir>/fleetagg-test-ports/<port>.lock`; the lock is released
//! when the lease is dropped or its process dies, so a killed test run strands nothing.
//! A port that something outside the tests already listens on (RabbitMQ's 25672, say) is
//! skipped because binding it fails.

use std::fs::File;
use std::net::TcpListener;
use std::ops::Range;

/// Ports below this are left alone: well-known and registered services live there.
const LOWEST_PORT: u16 = 10_000;

/// A port on 127.0.0.1 that no other test and no ephemeral bind will take while this
/// lease lives.
#[derive(Debug)]
pub struct PortLease {
    port: u16,
    /// Holding the open, locked file is what holds the port.
    _lock: File,
}

impl PortLease {
    /// Leases a port that is free now. Panics when the whole range is in use.
    pub fn acquire() -> PortLease {
        let range = reserved_range();
        let dir = std::env::temp_dir().join("fleetagg-test-ports");
        std::fs::create_dir_all(&dir).unwrap_or_else(|err| panic!("cannot create {}: {err}", dir.display()));
        let span = u32::from(range.end - range.start);
        // Start somewhere different in each process so parallel test binaries rarely
        // contend for the same lock files.
        let offset = start_offset(span);
        for step in 0..span {
            let port = range.start + u16::try_from((offset + step) % span).expect("offset within the range");
            let path = dir.join(format!("{port}.lock"));
            let Ok(lock) = File::create(&path) else { continue };
            if lock.try_lock().is_err() {
                continue; // another test holds it
            }
            if is_bindable(port) {
                return PortLease { port, _lock: lock };
            }
        }
        panic!("no free port in the tests' range {range:?}: every port is leased or in use");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Panics, naming the port and `what`, when something else now listens on the leased
    /// port: call it just before (re)starting a server on it, so a test fails at once with
    /// the cause instead of timing out later with a misleading message.
    pub fn assert_bindable(&self, what: &str) {
        assert!(
            is_bindable(self.port),
            "port {} for {what} was taken by another process (it is outside the kernel's \
             ephemeral range and leased to this test, so something bound it explicitly)",
            self.port
        );
    }
}

/// The ports tests lease: from [`LOWEST_PORT`] up to the start of the kernel's ephemeral
/// range (32768 on Linux by default), or above its end when that leaves more room.
pub fn reserved_range() -> Range<u16> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let mut bounds = text.split_whitespace().filter_map(|value| value.parse::<u16>().ok());
    let (low, high) = match (bounds.next(), bounds.next()) {
        (Some(low), Some(high)) => (low, high),
        _ => (32_768, 60_999),
    };
    let below = LOWEST_PORT..low.max(LOWEST_PORT);
    let above = high.saturating_add(1).max(LOWEST_PORT)..u16::MAX;
    let range = if below.len() >= above.len() { below } else { above };
    assert!(
        range.len() >= 500,
        "the kernel's ephemeral port range ({low}-{high}) leaves fewer than 500 ports for the \
         tests' servers; narrow net.ipv4.ip_local_port_range"
    );
    range
}

fn is_bindable(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

fn start_offset(span: u32) -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.subsec_nanos());
    (std::process::id().wrapping_mul(7919) ^ nanos) % span
}
