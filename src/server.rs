//! The running proxy: binds every listener, serves until told to stop, then drains.
//!
//! `Server::bind` does everything that can fail at start (name resolution, binding) before any
//! traffic is accepted, so a bad start is reported, not half-served. `run` waits for the
//! shutdown signal, stops accepting, lets requests in progress finish within the drain
//! timeout, and returns.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{AdminState, ListenerSockets, serve_admin};
use crate::config::{Config, ConfigErrors};
use crate::listener::{ConnectionLimit, bind, serve_listener};
use crate::state::{SharedState, build_snapshot};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    #[error("listener `{listener}`: cannot listen on {addr}: {source}")]
    Bind {
        listener: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

pub struct Server {
    state: SharedState,
    listeners: Vec<BoundListener>,
    drain_timeout: Duration,
    admin: Option<(TcpListener, AdminState)>,
}

struct BoundListener {
    name: Arc<str>,
    socket: TcpListener,
    addr: SocketAddr,
    /// Shared by every socket of the same listener.
    limit: ConnectionLimit,
}

impl Server {
    /// Builds the runtime state and binds every listen address.
    pub async fn bind(config: Config) -> Result<Server, StartError> {
        check_fd_limit(&config);
        let drain_timeout = config.drain_timeout;
        let config = Arc::new(config);
        let snapshot = build_snapshot(Arc::clone(&config)).await?;
        let mut listeners = Vec::new();
        let mut sockets = Vec::new();
        for (name, l) in &config.listeners {
            let limit = ConnectionLimit::new(l.max_connections);
            let mut addresses = Vec::new();
            for addr in &l.listen {
                let socket = bind(*addr).map_err(|source| StartError::Bind {
                    listener: name.clone(),
                    addr: *addr,
                    source,
                })?;
                // Port 0 asks the system for a port: report the one it chose.
                let addr = socket.local_addr().unwrap_or(*addr);
                tracing::info!(listener = %name, addr = %addr, "listening");
                addresses.push(addr);
                listeners.push(BoundListener {
                    name: Arc::from(name.as_str()),
                    socket,
                    addr,
                    limit: limit.clone(),
                });
            }
            sockets.push(ListenerSockets {
                name: name.clone(),
                addresses,
                connections: limit,
            });
        }
        let state = Arc::new(ArcSwap::from_pointee(snapshot));
        let admin = match &config.admin {
            Some(a) => {
                let socket = bind(a.listen).map_err(|source| StartError::Bind {
                    listener: "admin".to_string(),
                    addr: a.listen,
                    source,
                })?;
                let addr = socket.local_addr().unwrap_or(a.listen);
                tracing::info!(addr = %addr, "admin listening");
                let admin = AdminState {
                    token: a.token.as_deref().map(Arc::from),
                    metrics: None,
                    ready: Arc::new(AtomicBool::new(false)),
                    state: Arc::clone(&state),
                    listeners: sockets,
                    started: std::time::SystemTime::now(),
                };
                Some((socket, admin))
            }
            None => None,
        };
        Ok(Server {
            state,
            listeners,
            drain_timeout,
            admin,
        })
    }

    /// Serves this recorder's metrics on the admin listener's `/metrics`.
    pub fn with_metrics(mut self, handle: PrometheusHandle) -> Self {
        if let Some((_, state)) = &mut self.admin {
            state.metrics = Some(handle.clone());
        }
        // The exporter compacts its histograms only when asked to.
        tokio::spawn(async move {
            let mut every = tokio::time::interval(crate::metrics::UPKEEP_INTERVAL);
            loop {
                every.tick().await;
                handle.run_upkeep();
            }
        });
        self
    }

    /// The admin listener's bound address, if there is one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|(s, _)| s.local_addr().ok())
    }

    /// `(listener name, bound address)` for every socket.
    pub fn local_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.listeners
            .iter()
            .map(|l| (l.name.to_string(), l.addr))
            .collect()
    }

    /// Serves until `shutdown` resolves, then drains. Returns the number of connections that
    /// were still open when the drain timeout ran out (0 after a clean drain).
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> usize {
        let stop = CancellationToken::new();
        let connections = TaskTracker::new();
        let accept_loops = TaskTracker::new();
        for l in self.listeners {
            accept_loops.spawn(serve_listener(
                l.socket,
                l.name,
                Arc::clone(&self.state),
                l.limit,
                stop.clone(),
                connections.clone(),
            ));
        }
        crate::health::spawn_checks(self.state.load().pools.values(), &stop);
        let ready = self.admin.as_ref().map(|(_, a)| Arc::clone(&a.ready));
        if let Some((socket, admin)) = self.admin {
            accept_loops.spawn(serve_admin(socket, admin, stop.clone()));
        }
        if let Some(ready) = &ready {
            ready.store(true, Ordering::Release);
        }
        accept_loops.close();
        shutdown.await;
        if let Some(ready) = &ready {
            ready.store(false, Ordering::Release);
        }

        tracing::info!(drain_timeout = ?self.drain_timeout, "shutting down: no new connections, finishing requests in progress");
        stop.cancel();
        accept_loops.wait().await;
        connections.close();
        if tokio::time::timeout(self.drain_timeout, connections.wait())
            .await
            .is_err()
        {
            let left = connections.len();
            tracing::warn!(
                connections = left,
                "drain timeout reached; closing the connections still open"
            );
            return left;
        }
        tracing::info!("all connections drained");
        0
    }
}

/// Raises the open-file limit to the hard limit (each client connection needs a descriptor,
/// and one more for its backend), and warns when the listeners' connection limits could still
/// run past it. Past the limit accept fails with EMFILE; the listener logs that and retries.
fn check_fd_limit(config: &Config) {
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the open-file limit");
            return;
        }
    };
    let wanted: u64 = config
        .listeners
        .values()
        .map(|l| l.max_connections as u64 * 2 * l.listen.len() as u64)
        .sum();
    if wanted > limit {
        tracing::warn!(
            open_file_limit = limit,
            needed = wanted,
            "the listeners' max_connections may need more file descriptors than allowed; raise the hard limit (ulimit -Hn) or lower max_connections"
        );
    } else {
        tracing::debug!(open_file_limit = limit, "open-file limit");
    }
}

/// The process's stop and reload signals, caught from the moment this is created: created
/// before anything is bound, so a signal that arrives during start-up is handled (a SIGHUP
/// then would otherwise kill the process, SIGHUP's default action).
pub struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
    usr1: Signal,
}

impl Signals {
    /// Installs the handlers. Needs a tokio runtime.
    pub fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
            usr1: signal(SignalKind::user_defined1())?,
        })
    }

    /// Resolves on the first SIGTERM or SIGINT. SIGUSR1 reopens the access log file. SIGHUP is
    /// logged and ignored for now (reload comes with its own issue). After the first stop
    /// signal, a second one exits the process at once.
    pub async fn stopped(mut self) {
        loop {
            tokio::select! {
                _ = self.term.recv() => break,
                _ = self.int.recv() => break,
                _ = self.hup.recv() => tracing::warn!("SIGHUP received: configuration reload is not supported yet; configuration unchanged"),
                _ = self.usr1.recv() => crate::access_log::reopen(),
            }
        }
        tokio::spawn(async move {
            tokio::select! {
                _ = self.term.recv() => {}
                _ = self.int.recv() => {}
            }
            tracing::warn!(
                "second stop signal: exiting now without waiting for requests in progress"
            );
            std::process::exit(1);
        });
    }
}
