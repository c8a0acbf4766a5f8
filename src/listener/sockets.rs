//! The set of listening sockets and their accept loops, kept in step with the configuration.
//!
//! At start and on every reload the server asks for a `Plan` (which binds only the addresses
//! the new configuration adds, so a reload that cannot bind fails before anything changed),
//! then applies it once the new snapshot is in place. A socket whose listener and address are
//! unchanged is never closed, so a reload never causes a moment of `connection refused`; its
//! accept loop and open connections go on untouched. A removed listener stops accepting, its
//! connections are asked to finish, and those still open after the drain timeout are closed.
//!
//! Every socket has an accept loop on every worker (`crate::workers`), each on a duplicate of
//! the one socket, and each worker has an idle lot of its own: a connection stays on the
//! worker that accepted it. The kernel wakes every worker's loop when a connection arrives and
//! one takes it, so a busy worker accepts less; the others' wake-up is the price, paid per new
//! connection (measured in `benches/RESULTS.md`: 4-10% more CPU per request when every request
//! comes on a new connection; tokio registers a socket in each worker's epoll, so nginx's
//! `EPOLLEXCLUSIVE` is not available). One socket rather than one per worker with
//! `SO_REUSEPORT`: a binary upgrade hands over one socket per address, and closing one of a
//! `SO_REUSEPORT` group (a reload, an upgrade) drops the connections queued on it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::state::SharedState;

use super::bind::bind;
use super::http::{ConnHolders, ListenerStops, serve_listener};
use super::http1::start_idle_lot;
use super::inherit::Inherited;

/// A listen address that cannot be bound.
#[derive(Debug, thiserror::Error)]
#[error("listener `{listener}`: cannot listen on {addr}: {source}")]
pub struct BindError {
    pub listener: String,
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

/// The running listeners.
#[derive(Debug)]
pub struct ListenerSet {
    /// Cancelled at shutdown; every listener's tokens are its children.
    stop: CancellationToken,
    /// Worker 0 (the runtime that made the set) first: where each socket's accept loops run
    /// and what holds their connections.
    workers: Vec<WorkerSide>,
    accept_loops: TaskTracker,
    sockets: Vec<Running>,
    groups: HashMap<String, Group>,
}

/// One listen socket of one listener.
#[derive(Debug)]
struct Running {
    listener: String,
    /// The address as configured (`127.0.0.1:0` stays that, whatever port it got).
    configured: SocketAddr,
    bound: SocketAddr,
    accept_stop: CancellationToken,
    /// The same socket, for a binary upgrade to hand to the new process (the accept loop owns
    /// the listener itself). `None` if it could not be duplicated (logged).
    handover: Option<OwnedFd>,
}

/// One worker's runtime and what holds the connections it accepts.
#[derive(Debug)]
struct WorkerSide {
    runtime: Handle,
    holders: ConnHolders,
}

/// What the sockets of one listener share (its connection budget is in the snapshot).
#[derive(Debug)]
struct Group {
    drain: CancellationToken,
    kill: CancellationToken,
}

/// The sockets a configuration needs: kept ones and newly bound ones.
#[derive(Debug)]
pub struct Plan {
    wanted: Vec<Wanted>,
}

#[derive(Debug)]
struct Wanted {
    listener: String,
    configured: SocketAddr,
    /// `None`: the running socket for this listener and address stays.
    new_socket: Option<TcpListener>,
}

impl Plan {
    /// `(listener, address)` of every socket this plan binds, with the ports the system chose.
    pub fn new_addresses(&self) -> Vec<(String, SocketAddr)> {
        self.wanted
            .iter()
            .filter_map(|w| {
                let socket = w.new_socket.as_ref()?;
                Some((w.listener.clone(), socket.local_addr().ok()?))
            })
            .collect()
    }
}

impl ListenerSet {
    /// Serves on this runtime (worker 0) and on `other_workers`, the runtimes of workers 1 to
    /// N - 1: each one's connections, those leaving its idle lot too, are spawned on it and
    /// tracked on `connections`.
    pub fn new(
        stop: CancellationToken,
        connections: &TaskTracker,
        other_workers: &[Handle],
    ) -> Self {
        let workers = std::iter::once(Handle::current())
            .chain(other_workers.iter().cloned())
            .map(|runtime| {
                // The lot's task and the connections it gives back run on this runtime.
                let idle_lot = {
                    let _on = runtime.enter();
                    start_idle_lot(connections.clone())
                }
                .inspect_err(|e| {
                    tracing::warn!(error = %e, "no idle-connection lot; idle connections wait in their tasks");
                })
                .ok();
                WorkerSide {
                    runtime,
                    holders: ConnHolders {
                        tasks: connections.clone(),
                        idle_lot,
                    },
                }
            })
            .collect();
        ListenerSet {
            stop,
            workers,
            accept_loops: TaskTracker::new(),
            sockets: Vec::new(),
            groups: HashMap::new(),
        }
    }

    /// Every listener's bound addresses once `plan` is applied: its kept sockets' and its new
    /// ones', for the snapshot that goes with the plan.
    pub fn addresses(&self, plan: &Plan) -> HashMap<String, Vec<SocketAddr>> {
        let mut out: HashMap<String, Vec<SocketAddr>> = HashMap::new();
        for w in &plan.wanted {
            let bound = match &w.new_socket {
                Some(socket) => socket.local_addr().ok(),
                None => self
                    .sockets
                    .iter()
                    .find(|s| s.listener == w.listener && s.configured == w.configured)
                    .map(|s| s.bound),
            };
            out.entry(w.listener.clone()).or_default().extend(bound);
        }
        out
    }

    /// Binds every address `config` has that is not already listening; nothing else changes.
    /// A plan that is not applied closes its new sockets when dropped.
    pub fn plan(&self, config: &Config) -> Result<Plan, BindError> {
        self.plan_inheriting(config, &mut Inherited::none())
    }

    /// `plan`, taking a socket handed to this process (`inherited`) instead of binding its
    /// address where there is one.
    pub fn plan_inheriting(
        &self,
        config: &Config,
        inherited: &mut Inherited,
    ) -> Result<Plan, BindError> {
        let mut wanted = Vec::new();
        for (name, l) in &config.listeners {
            for addr in &l.listen {
                let kept = self
                    .sockets
                    .iter()
                    .any(|s| s.listener == *name && s.configured == *addr);
                let new_socket = if kept {
                    None
                } else if let Some(socket) = inherited.take_listener(name, *addr) {
                    let socket = TcpListener::from_std(socket).map_err(|source| BindError {
                        listener: name.clone(),
                        addr: *addr,
                        source,
                    })?;
                    Some(socket)
                } else {
                    let socket = bind(*addr).map_err(|source| BindError {
                        listener: name.clone(),
                        addr: *addr,
                        source,
                    })?;
                    // Port 0 asks the system for a port: report the one it chose.
                    let bound = socket.local_addr().unwrap_or(*addr);
                    tracing::info!(listener = %name, addr = %bound, "listening");
                    Some(socket)
                };
                wanted.push(Wanted {
                    listener: name.clone(),
                    configured: *addr,
                    new_socket,
                });
            }
        }
        Ok(Plan { wanted })
    }

    /// Makes the running sockets those of `plan`: starts the new ones, stops the removed ones
    /// and drains the connections of removed listeners, closing what is left of them after
    /// `drain_timeout`. `state` has just been given the snapshot that goes with the plan: new
    /// accept loops serve from it, and each listener's connection limit is set from it.
    pub fn apply(&mut self, plan: Plan, drain_timeout: Duration, state: &SharedState) {
        let snapshot = state.load();
        let keep = |s: &Running| {
            plan.wanted
                .iter()
                .any(|w| w.listener == s.listener && w.configured == s.configured)
        };
        for gone in self.sockets.iter().filter(|s| !keep(s)) {
            tracing::info!(listener = %gone.listener, addr = %gone.bound, "reload: stopped listening");
            gone.accept_stop.cancel();
        }
        self.sockets.retain(keep);
        let names: Vec<&str> = plan.wanted.iter().map(|w| w.listener.as_str()).collect();
        let removed: Vec<String> = self
            .groups
            .keys()
            .filter(|n| !names.contains(&n.as_str()))
            .cloned()
            .collect();
        for name in removed {
            if let Some(group) = self.groups.remove(&name) {
                tracing::info!(listener = %name, ?drain_timeout, "reload: listener removed; its connections finish their requests");
                group.drain.cancel();
                // Idle connections close at once, as they do when they wait in their tasks.
                for lot in self.idle_lots() {
                    lot.close_drained();
                }
                tokio::spawn(async move {
                    tokio::time::sleep(drain_timeout).await;
                    group.kill.cancel();
                });
            }
        }
        for w in plan.wanted {
            let Some(listener) = snapshot.listener(&w.listener) else {
                // The plan is made from the snapshot's own configuration.
                continue;
            };
            let group = self
                .groups
                .entry(w.listener.clone())
                .or_insert_with(|| Group {
                    drain: self.stop.child_token(),
                    kill: CancellationToken::new(),
                });
            let limit = &listener.connections;
            if limit.limit() != listener.settings.max_connections {
                limit.set_limit(listener.settings.max_connections);
            }
            let Some(socket) = w.new_socket else {
                continue;
            };
            let bound = socket.local_addr().unwrap_or(w.configured);
            let handover = rustix::io::fcntl_dupfd_cloexec(&socket, 0)
                .inspect_err(|e| {
                    tracing::warn!(listener = %w.listener, addr = %bound, error = %e, "cannot duplicate the socket; a binary upgrade will bind it again");
                })
                .ok();
            let accept_stop = self.stop.child_token();
            let stops = ListenerStops {
                accept: accept_stop.clone(),
                drain: group.drain.clone(),
                kill: group.kill.clone(),
            };
            let name: Arc<str> = Arc::from(w.listener.as_str());
            // The other workers' loops first, each on a duplicate registered with its own
            // runtime; this runtime's loop keeps the socket itself.
            for worker in &self.workers[1..] {
                let dup = match rustix::io::fcntl_dupfd_cloexec(&socket, 0) {
                    Ok(fd) => std::net::TcpListener::from(fd),
                    Err(e) => {
                        tracing::warn!(listener = %w.listener, addr = %bound, error = %e, "cannot duplicate the socket for a worker; the others accept its connections");
                        continue;
                    }
                };
                let (name, state, limit, stops, holders) = (
                    Arc::clone(&name),
                    Arc::clone(state),
                    limit.clone(),
                    stops.clone(),
                    worker.holders.clone(),
                );
                let accept = self.accept_loops.track_future(async move {
                    match TcpListener::from_std(dup) {
                        Ok(socket) => {
                            serve_listener(socket, name, state, limit, stops, holders).await;
                        }
                        Err(e) => {
                            tracing::warn!(listener = %name, error = %e, "a worker cannot accept on this socket; the others do");
                        }
                    }
                });
                worker.runtime.spawn(accept);
            }
            self.accept_loops.spawn(serve_listener(
                socket,
                name,
                Arc::clone(state),
                limit.clone(),
                stops,
                self.workers[0].holders.clone(),
            ));
            self.sockets.push(Running {
                listener: w.listener,
                configured: w.configured,
                bound,
                accept_stop,
                handover,
            });
        }
    }

    /// Every running socket, for a binary upgrade: (listener, address as configured, the
    /// socket). Sockets of a listener a reload removed are not among them.
    pub fn handover_sockets(&self) -> Vec<(&str, SocketAddr, &OwnedFd)> {
        self.sockets
            .iter()
            .filter(|s| !s.accept_stop.is_cancelled())
            .filter_map(|s| Some((s.listener.as_str(), s.configured, s.handover.as_ref()?)))
            .collect()
    }

    /// Waits until every accept loop has stopped (after the stop token was cancelled), and
    /// closes the connections waiting in the idle lot.
    pub async fn stopped(&mut self) {
        // The duplicates kept for an upgrade would keep the sockets listening: connections
        // would queue where nobody accepts them any more, instead of being refused.
        for s in &mut self.sockets {
            s.handover = None;
        }
        self.close_idle();
        self.accept_loops.close();
        self.accept_loops.wait().await;
    }

    fn close_idle(&self) {
        for lot in self.idle_lots() {
            lot.close();
        }
    }

    fn idle_lots(&self) -> impl Iterator<Item = &Arc<super::http1::Lot>> {
        self.workers
            .iter()
            .filter_map(|w| w.holders.idle_lot.as_ref())
    }
}

impl Drop for ListenerSet {
    /// Ends the idle lot's task.
    fn drop(&mut self) {
        self.close_idle();
    }
}
