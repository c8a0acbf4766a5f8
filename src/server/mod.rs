//! The running proxy: binds every listener, serves, reloads on SIGHUP and, with `watch`, when
//! the file changes (`watch.rs`), and drains on stop.
//!
//! `Server::bind` does everything that can fail at start (name resolution, binding) before any
//! traffic is accepted, so a bad start is reported, not half-served. `run` serves until a stop
//! signal, applying reloads as they come (`reload`, and on a change of the file with
//! `watch`) and the addresses of `resolve = true` names as they change (`dns`), then stops
//! accepting, lets requests in progress finish within the drain timeout, and returns. SIGUSR2
//! starts a binary upgrade (`upgrade.rs`): once the new process serves every listener, this
//! one drains the same way and leaves the pid file and ready file to it. Started as that new
//! process (`bind_on_workers` with sockets handed over), it takes over only once it serves
//! (`take_over`).
//!
//! The top: it may import every room, and none imports it (only `main` and `lib`).

mod carried;
mod dns;
mod notify;
mod ready_file;
mod reload;
mod signals;
mod upgrade;
mod watch;

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{AdminState, RebuildRequest, serve_admin};
use crate::config::{Config, ConfigErrors};
use crate::listener::{BindError, Inherited, ListenerSet, Plan, bind};
use crate::metrics::Recorder;
use crate::state::{SharedState, build_snapshot};

pub use signals::{Control, PidFile, SignalError, Signals, send_to_pid_file, signal_for};
pub use watch::fingerprint;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    #[error("{0}")]
    Bind(#[from] BindError),
    #[error("pid file {path}: {source}")]
    PidFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("ready file {path}: {source}")]
    ReadyFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

pub struct Server {
    /// The one swappable runtime state; its `config` is the configuration in force.
    state: SharedState,
    listeners: ListenerSet,
    /// The sockets bound by `bind`, started by `run`.
    first_plan: Option<Plan>,
    stop: CancellationToken,
    connections: TaskTracker,
    /// Stops the health-check tasks of the current snapshot (a reload restarts them).
    checks: CancellationToken,
    admin: Option<(TcpListener, AdminState)>,
    /// Runtime weight changes from the admin API, asking for the pools to be rebuilt.
    rebuilds: Option<tokio::sync::mpsc::Receiver<RebuildRequest>>,

    pid_file: Option<PidFile>,
    /// The `[resolver]`'s client, when some server has `resolve = true`.
    resolver: Option<crate::dns::Resolver>,
    /// Follows those servers' names while serving.
    dns: Option<crate::dns::DnsTask>,
    /// `--ready-file`: written at start, rewritten when a reload changes the bound listeners.
    ready_file: Option<ready_file::ReadyFile>,

    /// `--watch`: follow the file whatever its `watch` says.
    watch_forced: bool,
    /// The watch on the configuration file, while `--watch` or `watch = true` asks for it.
    watch: Option<watch::FileWatch>,
    /// What the file held when it was last read for a load or reload (see `watch::fingerprint`).
    file_seen: Option<u64>,
    /// The admin listener's socket as configured, for a binary upgrade to hand over.
    admin_handover: Option<(SocketAddr, OwnedFd)>,
    /// Started by a binary upgrade: the channel to the old process, until this one serves.
    takeover: Option<upgrade::Takeover>,
    /// Files a new process of an upgrade writes only once it has taken over.
    deferred_pid_file: Option<std::path::PathBuf>,
    deferred_ready_file: Option<std::path::PathBuf>,
    /// A binary upgrade in progress: the new process, until it takes over or fails.
    upgrade: Option<upgrade::Pending>,
}

impl Server {
    /// Builds the runtime state and binds every listen address; connections are served on
    /// this runtime alone.
    pub async fn bind(config: Config) -> Result<Server, StartError> {
        Server::bind_on_workers(config, Inherited::none(), &[]).await
    }

    /// `bind`, with connections served on this runtime and on `other_workers`, the runtimes
    /// of workers 1 to N - 1 (`crate::workers`), and taking the sockets handed to this
    /// process (a binary upgrade's or systemd's) for the addresses they are bound to; the
    /// ones no listener needs are closed. Started by a binary upgrade, the old process's
    /// runtime state is set before anything serves, and the pid file waits until this process
    /// takes over.
    pub async fn bind_on_workers(
        config: Config,
        mut inherited: Inherited,
        other_workers: &[tokio::runtime::Handle],
    ) -> Result<Server, StartError> {
        check_fd_limit(&config);
        let config = Arc::new(config);
        let takeover = match inherited.channel.take() {
            Some(channel) => Some(upgrade::Takeover::receive(channel).await),
            None => None,
        };
        // A `resolve = true` name that does not resolve yet is no reason not to start.
        let (resolver, answers) = crate::dns::prepare(&config, None, None).await?;
        let answers = Arc::new(answers);
        let mut snapshot = build_snapshot(Arc::clone(&config), None, Arc::clone(&answers)).await?;
        if let Some(t) = &takeover
            && t.carried.apply(&snapshot)
        {
            // Runtime weights are read when the pools are built.
            snapshot = build_snapshot(Arc::clone(&config), Some(&snapshot), answers).await?;
        }
        let stop = CancellationToken::new();
        let connections = TaskTracker::new();
        let listeners = ListenerSet::new(stop.clone(), &connections, other_workers);
        let first_plan = listeners.plan_inheriting(&config, &mut inherited)?;
        snapshot.set_addresses(listeners.addresses(&first_plan));
        let state = Arc::new(ArcSwap::from_pointee(snapshot));
        let mut rebuilds = None;
        let mut admin_handover = None;
        let admin = match &config.admin {
            Some(a) => {
                let bind_error = |source| BindError {
                    listener: "admin".to_string(),
                    addr: a.listen,
                    source,
                };
                let socket = match inherited.take_admin(a.listen) {
                    Some(socket) => TcpListener::from_std(socket).map_err(bind_error)?,
                    None => bind(a.listen).map_err(bind_error)?,
                };
                admin_handover = rustix::io::fcntl_dupfd_cloexec(&socket, 0)
                    .inspect_err(|e| {
                        tracing::warn!(error = %e, "cannot duplicate the admin socket; a binary upgrade will bind it again");
                    })
                    .ok()
                    .map(|fd| (a.listen, fd));
                let addr = socket.local_addr().unwrap_or(a.listen);
                tracing::info!(addr = %addr, "admin listening");
                let (rebuild, requests) = tokio::sync::mpsc::channel(16);
                rebuilds = Some(requests);
                let admin = AdminState {
                    rebuild,
                    token: a.token.as_deref().map(Arc::from),
                    metrics: None,
                    ready: Arc::new(AtomicBool::new(false)),
                    state: Arc::clone(&state),
                    started: std::time::SystemTime::now(),
                };
                Some((socket, admin))
            }
            None => None,
        };
        inherited.close_unused();
        // Last: a start that fails above leaves no pid file behind. The new process of an
        // upgrade writes it only once it has taken over (the old one is in charge until then).
        let mut deferred_pid_file = None;
        let pid_file = match &config.pid_file {
            Some(path) if takeover.is_some() => {
                deferred_pid_file = Some(path.clone());
                None
            }
            Some(path) => Some(PidFile::write(path).map_err(|source| StartError::PidFile {
                path: path.clone(),
                source,
            })?),
            None => None,
        };
        Ok(Server {
            checks: stop.child_token(),
            state,
            listeners,
            first_plan: Some(first_plan),
            stop,
            connections,
            admin,
            rebuilds,
            pid_file,
            resolver,
            dns: None,
            ready_file: None,
            watch_forced: false,
            watch: None,
            // Read after the load, so a change in between could be missed: `with_watch` gives
            // the reading taken before it.
            file_seen: fingerprint(&config.source),
            admin_handover,
            takeover,
            deferred_pid_file,
            deferred_ready_file: None,
            upgrade: None,
        })
    }

    /// Writes the ready file at `path` now (every listener and the admin listener are bound),
    /// and keeps it up to date on reloads until rproxy stops accepting.
    pub fn with_ready_file(mut self, path: &std::path::Path) -> Result<Self, StartError> {
        if self.takeover.is_some() {
            // Written when this process takes over: until then the old one's stands.
            self.deferred_ready_file = Some(path.to_path_buf());
            return Ok(self);
        }
        let listeners = self.local_addrs();
        let listeners = ready_file::bound(listeners.iter().map(|(n, a)| (n.as_str(), *a)));
        let file = ready_file::ReadyFile::create(path, listeners, self.admin_addr()).map_err(
            |source| StartError::ReadyFile {
                path: path.to_path_buf(),
                source,
            },
        )?;
        self.ready_file = Some(file);
        Ok(self)
    }

    /// Follows the configuration file even when it does not say `watch = true` (`--watch`).
    /// `before_load`: the file's `fingerprint` read before it was loaded, so that a change
    /// made while rproxy started is reloaded (at worst once too often, never missed).
    pub fn with_watch(mut self, forced: bool, before_load: Option<u64>) -> Self {
        self.watch_forced = forced;
        self.file_seen = before_load;
        self
    }

    /// Serves this recorder's metrics on the admin listener's `/metrics`.
    pub fn with_metrics(mut self, recorder: Recorder) -> Self {
        if let Some((_, state)) = &mut self.admin {
            state.metrics = Some(recorder);
        }
        self
    }

    /// The admin listener's bound address, if there is one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|(s, _)| s.local_addr().ok())
    }

    /// `(listener name, bound address)` for every socket, before `run`.
    pub fn local_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.first_plan
            .as_ref()
            .map(Plan::new_addresses)
            .unwrap_or_default()
    }

    /// Serves until a stop signal, reloading on each SIGHUP, then drains. Returns the number
    /// of connections that were still open when the drain timeout ran out (0 after a clean
    /// drain).
    pub async fn run(self, signals: Signals) -> usize {
        self.run_until(signals, std::future::pending()).await
    }

    /// `run`, also stopping when `stop` resolves (for embedding, as the demo does).
    pub async fn run_until(
        mut self,
        mut signals: Signals,
        stop: impl Future<Output = ()>,
    ) -> usize {
        if let Some(plan) = self.first_plan.take() {
            let drain_timeout = self.state.load().config.drain_timeout;
            self.listeners.apply(plan, drain_timeout, &self.state);
        }
        publish_gauges(&self.state.load());
        start_checks(&self.state.load(), &self.checks);
        self.restart_dns();
        let ready = self.admin.as_ref().map(|(_, a)| Arc::clone(&a.ready));
        let admin_addr = self.admin_addr();
        let admin_loop = TaskTracker::new();
        if let Some((socket, admin)) = self.admin.take() {
            admin_loop.spawn(serve_admin(socket, admin, self.stop.clone()));
        }
        admin_loop.close();
        if let Some(ready) = &ready {
            ready.store(true, Ordering::Release);
        }
        crate::metrics::reload_result(true);
        self.sync_watch();
        crate::metrics::upgrade_result(None);
        match self.takeover.take() {
            Some(takeover) => self.take_over(takeover, admin_addr),
            None => notify::notify("READY=1"),
        }
        let mut handed_over = false;
        tokio::pin!(stop);
        loop {
            let control = tokio::select! {
                c = signals.next() => c,
                () = &mut stop => Control::Stop,
                outcome = next_upgrade(&mut self.upgrade) => {
                    let pid = self.upgrade.take().map_or(0, |p| p.pid);
                    if self.upgrade_done(pid, outcome) {
                        handed_over = true;
                        Control::Stop
                    } else {
                        continue;
                    }
                }
                Some(request) = next_rebuild(&mut self.rebuilds) => {
                    // Serialised with reloads: both build from the snapshot in force.
                    let result = self.rebuild().await;
                    // The admin client may have gone; the change is in place either way.
                    if request.send(result).is_err() {
                        tracing::debug!("admin client left before its change was applied");
                    }
                    continue;
                }
                answers = dns::next_change(&mut self.dns) => {
                    self.apply_dns(answers).await;
                    continue;
                }
                () = watch::next_change(&mut self.watch) => {
                    self.file_event().await;
                    continue;
                }
            };
            match control {
                Control::Stop => break,
                Control::Reload => {
                    self.reload("SIGHUP").await;
                    self.sync_watch();
                }
                Control::Upgrade => self.start_upgrade(),
            }
        }
        if let Some(pending) = self.upgrade.take() {
            // Stopping wins over an upgrade that has not taken over yet.
            pending.abandon();
        }
        signals.exit_on_second_stop();
        if let Some(ready) = &ready {
            ready.store(false, Ordering::Release);
        }
        if !handed_over {
            // After a hand-over the service goes on, in the new process.
            notify::notify("STOPPING=1");
        }
        if handed_over {
            // The new process's now: it rewrote both with its own pid.
            if let Some(file) = self.ready_file.take() {
                file.keep();
            }
            if let Some(file) = self.pid_file.take() {
                file.keep();
            }
        }
        drop(self.ready_file.take());
        drop(self.watch.take());

        let drain_timeout = self.state.load().config.drain_timeout;
        tracing::info!(
            ?drain_timeout,
            "shutting down: no new connections, finishing requests in progress"
        );
        self.stop.cancel();
        // Closed with the admin listener (see `ListenerSet::stopped`).
        self.admin_handover = None;
        self.listeners.stopped().await;
        admin_loop.wait().await;
        self.connections.close();
        // WebSocket tunnels have left their connections' tasks: they are waited for apart.
        let tunnels = crate::upstream::tunnels();
        let drained = async {
            tokio::join!(self.connections.wait(), tunnels.wait());
        };
        let left = if tokio::time::timeout(drain_timeout, drained).await.is_err() {
            let left = self.connections.len() + tunnels.len();
            tracing::warn!(
                connections = self.connections.len(),
                websockets = tunnels.len(),
                "drain timeout reached; closing the connections still open"
            );
            // A WebSocket gets a close frame each way rather than a bare end of its stream.
            tunnels.close_all();
            if tokio::time::timeout(TUNNEL_CLOSE_WAIT, tunnels.wait())
                .await
                .is_err()
            {
                tracing::warn!(
                    websockets = tunnels.len(),
                    "websockets did not close in time"
                );
            }
            left
        } else {
            tracing::info!("all connections drained");
            0
        };
        drop(self.pid_file.take());
        left
    }
}

/// How long the WebSocket tunnels still open at the drain timeout may take to close (each
/// waits at most a second for a frame boundary and its peers' answers).
const TUNNEL_CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

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

/// The outcome of the upgrade in progress; never, while there is none.
async fn next_upgrade(pending: &mut Option<upgrade::Pending>) -> Result<(), String> {
    match pending {
        Some(p) => p.outcome().await,
        None => std::future::pending().await,
    }
}

/// The next rebuild the admin API asks for; never, without an admin listener or once it has
/// stopped.
async fn next_rebuild(
    requests: &mut Option<tokio::sync::mpsc::Receiver<RebuildRequest>>,
) -> Option<RebuildRequest> {
    match requests {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

/// Starts the active health checks of every pool of `snapshot`; they stop with `stop`.
fn start_checks(snapshot: &crate::state::Snapshot, stop: &CancellationToken) {
    for pool in snapshot.pools.values() {
        crate::health::spawn_checks(pool.health_check.as_ref(), pool.check_targets(), stop);
    }
}

/// Sets every backend's `up` and admin-state gauges from the snapshot now in force.
fn publish_gauges(snapshot: &crate::state::Snapshot) {
    for pool in snapshot.pools.values() {
        for backend in pool.backends() {
            backend.publish_gauges();
        }
    }
}
