//! A server that accepts TCP connections and never answers, as a black-holed or frozen
//! PostgreSQL looks to a client: the connect succeeds, the start-up handshake hangs.

use crate::ports::PortLease;
use std::net::TcpListener;

/// Listens on a leased port until the process ends; connections are held, never read.
#[derive(Debug)]
pub struct BlackHole {
    lease: PortLease,
}

impl BlackHole {
    pub fn start() -> BlackHole {
        let lease = PortLease::acquire();
        let listener = TcpListener::bind(("127.0.0.1", lease.port())).expect("bind the black hole");
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming().flatten() {
                held.push(stream);
            }
        });
        BlackHole { lease }
    }

    /// A PostgreSQL URL pointing at it.
    pub fn database_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/fleet", self.lease.port())
    }
}
