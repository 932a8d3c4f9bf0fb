//! The monitoring listener: hyper's HTTP/1.1 server on a thread and a single-threaded
//! runtime of its own, so that a probe is answered however busy the actor threads are,
//! and a flood of connections costs the data path nothing.
//!
//! Bounded on purpose: at most [`MAX_CONNECTIONS`] are open at once (file descriptors are
//! what the MQTT and database reconnects need), and a connection that sends no complete
//! request head within [`HEADER_TIMEOUT`] of opening or of its last response is closed. A
//! new connection over the cap closes the oldest open one rather than being refused: idle
//! connections are the oldest, while a probe sends its request at once, so a flood of idle
//! connections cannot lock a health check out.

use super::history::SAMPLE_EVERY;
use super::routes::{respond, MonitorState};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// Connections open at once; one more closes the oldest.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a connection may take to send a request head, counted from its opening or
/// from the end of its last response (so it is also the keep-alive idle timeout). The
/// page polls every 2 s, well within it.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// hyper's read buffer per connection: requests here are a line and a few headers.
const MAX_BUFFER: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("cannot listen on {address}: {source}")]
    Bind { address: SocketAddr, source: std::io::Error },
    #[error("cannot start the listener's thread: {0}")]
    Thread(std::io::Error),
}

/// The running listener; stopped (and its thread joined) by [`MonitorServer::stop`] or
/// when dropped.
#[derive(Debug)]
pub struct MonitorServer {
    address: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl MonitorServer {
    /// Binds `address` now (so a port in use fails start-up) and serves on a new thread.
    pub fn start(address: SocketAddr, state: Arc<MonitorState>) -> Result<MonitorServer, ListenError> {
        let listener =
            std::net::TcpListener::bind(address).map_err(|source| ListenError::Bind { address, source })?;
        let bound = listener.local_addr().map_err(|source| ListenError::Bind { address, source })?;
        listener.set_nonblocking(true).map_err(|source| ListenError::Bind { address, source })?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("fleetagg-http")
            .build()
            .map_err(ListenError::Thread)?;
        let (stop, stopped) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("fleetagg-http".to_owned())
            .spawn(move || {
                runtime.block_on(async move {
                    match TcpListener::from_std(listener) {
                        Ok(listener) => {
                            tokio::spawn(sample_history(state.clone()));
                            serve(listener, state, stopped).await;
                        }
                        Err(err) => tracing::error!(error = %err, "monitoring listener cannot start"),
                    }
                });
            })
            .map_err(ListenError::Thread)?;
        Ok(MonitorServer { address: bound, stop: Some(stop), thread: Some(thread) })
    }

    /// The address actually bound (port 0 picks one).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Stops accepting, closes every connection and joins the thread.
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for MonitorServer {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// Accepts until `stopped` fires; each connection runs as a task that ends when it
/// closes, times out, or is evicted as the oldest over the cap.
async fn serve(listener: TcpListener, state: Arc<MonitorState>, mut stopped: oneshot::Receiver<()>) {
    // One eviction handle per open connection, oldest first. A handle whose connection
    // ended is closed (its receiver dropped) and pruned at the next accept.
    let mut open: VecDeque<oneshot::Sender<()>> = VecDeque::with_capacity(MAX_CONNECTIONS + 1);
    loop {
        let accepted = tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(err) => {
                // EMFILE and the like: wait for descriptors to come back.
                tracing::warn!(error = %err, "monitoring listener cannot accept; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        open.retain(|evict| !evict.is_closed());
        while open.len() >= MAX_CONNECTIONS {
            if let Some(oldest) = open.pop_front() {
                let _ = oldest.send(());
            }
        }
        let (evict, evicted) = oneshot::channel();
        open.push_back(evict);
        tokio::spawn(connection(stream, state.clone(), evicted));
    }
}

/// Samples the counters for the charts, on this thread, until the runtime stops.
async fn sample_history(state: Arc<MonitorState>) {
    let mut every = tokio::time::interval(SAMPLE_EVERY);
    loop {
        every.tick().await;
        state.history.record(&state.stats);
    }
}

async fn connection(stream: TcpStream, state: Arc<MonitorState>, evicted: oneshot::Receiver<()>) {
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |request| {
        let response = respond(&state, &request);
        async move { Ok::<_, Infallible>(response) }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_BUFFER)
        .serve_connection(TokioIo::new(stream), service);
    // Dropping the connection closes the socket: on eviction, or when the listener stops
    // (the eviction handle is dropped with it).
    tokio::select! {
        _ = connection => {}
        _ = evicted => {}
    }
}
