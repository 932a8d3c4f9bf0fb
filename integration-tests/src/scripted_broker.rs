//! A minimal MQTT 3.1.1 server that answers SUBSCRIBE as the test says: granted, or
//! refused with the failure code 0x80, as a broker's ACL refuses a filter. Mosquitto
//! cannot be made to refuse (its `acl_file` grants and then drops what may not be read),
//! so the SUBACK checks are tested against this. It accepts every CONNECT (no session is
//! kept), answers PINGREQ, and never publishes.

use crate::ports::PortLease;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Debug, Default)]
struct Script {
    refuse: AtomicBool,
    granted: AtomicUsize,
    refused: AtomicUsize,
    connections: Mutex<Vec<TcpStream>>,
}

#[derive(Debug)]
pub struct ScriptedBroker {
    lease: PortLease,
    script: Arc<Script>,
}

impl ScriptedBroker {
    /// Listens on a leased port until the process ends; `refuse`: how SUBSCRIBEs are
    /// answered until [`ScriptedBroker::refuse_subscriptions`] says otherwise.
    pub fn start(refuse: bool) -> ScriptedBroker {
        let lease = PortLease::acquire();
        let listener = TcpListener::bind(("127.0.0.1", lease.port())).expect("bind the scripted broker");
        let script = Arc::new(Script { refuse: AtomicBool::new(refuse), ..Script::default() });
        let accepting = script.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Ok(copy) = stream.try_clone() {
                    accepting.connections.lock().expect("connections").push(copy);
                }
                let script = accepting.clone();
                std::thread::spawn(move || serve(stream, &script));
            }
        });
        ScriptedBroker { lease, script }
    }

    pub fn url(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.lease.port())
    }

    pub fn refuse_subscriptions(&self, refuse: bool) {
        self.script.refuse.store(refuse, Ordering::SeqCst);
    }

    /// SUBSCRIBEs answered so far: (granted, refused).
    pub fn subscriptions(&self) -> (usize, usize) {
        (self.script.granted.load(Ordering::SeqCst), self.script.refused.load(Ordering::SeqCst))
    }

    /// Closes every connection, as a broker restart does.
    pub fn drop_connections(&self) {
        for stream in self.script.connections.lock().expect("connections").drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

/// Reads packets until the client or [`ScriptedBroker::drop_connections`] closes the
/// connection.
fn serve(mut stream: TcpStream, script: &Script) {
    while let Some((kind, body)) = read_packet(&mut stream) {
        let answer = match kind >> 4 {
            1 => vec![0x20, 0x02, 0x00, 0x00], // CONNECT → CONNACK, accepted, no session
            8 => suback(&body, script),
            12 => vec![0xD0, 0x00], // PINGREQ → PINGRESP
            14 => return,           // DISCONNECT
            _ => continue,
        };
        if stream.write_all(&answer).is_err() {
            return;
        }
    }
}

/// A SUBACK for the SUBSCRIBE `body`: one code per filter, QoS 1 or 0x80.
fn suback(body: &[u8], script: &Script) -> Vec<u8> {
    let (id, mut rest) = body.split_at(2.min(body.len()));
    let mut filters = 0;
    while rest.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        rest = rest.get(2 + len + 1..).unwrap_or_default();
        filters += 1;
    }
    let refuse = script.refuse.load(Ordering::SeqCst);
    let counter = if refuse { &script.refused } else { &script.granted };
    counter.fetch_add(1, Ordering::SeqCst);
    let code = if refuse { 0x80 } else { 0x01 };
    let mut packet = vec![0x90, u8::try_from(2 + filters).expect("a test subscribes to a few filters")];
    packet.extend_from_slice(id);
    packet.extend(std::iter::repeat_n(code, filters));
    packet
}

/// One packet: its first byte and its body.
fn read_packet(stream: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut byte = [0u8; 1];
    stream.read_exact(&mut byte).ok()?;
    let kind = byte[0];
    let (mut length, mut shift) = (0usize, 0);
    loop {
        stream.read_exact(&mut byte).ok()?;
        length |= usize::from(byte[0] & 0x7F) << shift;
        if byte[0] & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 21 {
            return None;
        }
    }
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).ok()?;
    Some((kind, body))
}
