//! Binary upgrade (SIGUSR2, `rproxy -s upgrade`), as nginx does it: the running process starts
//! the binary found at its own path now (a replaced file is picked up) with the same command
//! line, and hands it every listening socket, so no port is ever closed. Beside the request
//! path: the accept loops and connections of this process are not touched until the new one
//! has taken over.
//!
//! How (chosen over SCM_RIGHTS on a Unix socket, which needs the same adoption of raw
//! descriptors in the new process and one more protocol): plain descriptor inheritance in
//! systemd's socket-activation layout, so the new process adopts sockets one way whoever
//! passed them (`listener::Inherited`). The sockets become its descriptors 3, 4, ...
//! (`command-fds` places them between fork and exec), `LISTEN_FDS` counts them and
//! `RPROXY_HANDOVER` names them; the last descriptor is one end of a Unix socket pair, the
//! take-over channel. On it the old process sends the runtime state it carries over (one JSON
//! line: `carried.rs`) and the new one answers `ready` once it serves every listener, its pid
//! file and ready file written. Then the old process drains as on SIGTERM and exits 0.
//!
//! Until that `ready`, nothing changes here: if the new process exits (a bad file, a bad
//! binary), closes the channel or is not ready within [`READY_TIMEOUT`] (then it is killed),
//! the upgrade is logged and counted as failed and this process goes on serving.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use command_fds::{CommandFdExt, FdMapping};

use crate::listener::{HANDOVER_ENV, HandedSocket, Handover};

use super::carried::Carried;
use super::{PidFile, Server};

/// How long the new process may take to serve every listener: reading and checking the file,
/// resolving names, binding new addresses.
pub(super) const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the new process waits for the old one's state at start.
const STATE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the new process says on the channel once it has taken over.
const READY: &str = "ready";

/// One listening socket to hand over.
pub(super) struct Offer<'a> {
    /// `None`: the admin listener.
    pub(super) listener: Option<&'a str>,
    pub(super) configured: SocketAddr,
    pub(super) socket: &'a OwnedFd,
}

/// The new process, until it takes over or fails.
pub(super) struct Pending {
    pub(super) pid: u32,
    outcome: tokio::task::JoinHandle<Result<(), String>>,
}

impl Pending {
    /// Stops the new process before it takes over (this one is stopping); it is reaped by
    /// the waiting task, which sees the channel end.
    pub(super) fn abandon(self) {
        tracing::warn!(
            pid = self.pid,
            "stopping during an upgrade: the new process is stopped too"
        );
        crate::metrics::upgrade_result(Some(false));
        if self.outcome.is_finished() {
            // It has ended its part (took over, or failed and was reaped): its pid may be
            // another process's now.
            return;
        }
        let pid = i32::try_from(self.pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw);
        if let Some(pid) = pid
            && let Err(e) = rustix::process::kill_process(pid, rustix::process::Signal::TERM)
        {
            tracing::warn!(pid = self.pid, error = %e, "cannot stop the new process");
        }
    }

    /// Resolves when the new process has taken over (`Ok`) or failed.
    pub(super) async fn outcome(&mut self) -> Result<(), String> {
        match (&mut self.outcome).await {
            Ok(result) => result,
            Err(e) => Err(format!("the upgrade's waiting task failed: {e}")),
        }
    }
}

/// Starts the new process with `offers` and the carried state; does not wait for it.
pub(super) fn start(offers: &[Offer<'_>], carried: &Carried) -> Result<Pending, String> {
    let exe = own_path()?;
    let state =
        serde_json::to_string(carried).map_err(|e| format!("cannot write the state: {e}"))?;
    let mut handover = Handover {
        sockets: Vec::new(),
        channel: true,
    };
    let mut mappings = Vec::new();
    for (child_fd, offer) in (3..).zip(offers) {
        // A duplicate for the child's table: the running accept loops keep theirs.
        let parent_fd = rustix::io::fcntl_dupfd_cloexec(offer.socket, 0)
            .map_err(|e| format!("cannot duplicate a listening socket: {e}"))?;
        mappings.push(FdMapping {
            parent_fd,
            child_fd,
        });
        handover.sockets.push(HandedSocket {
            listener: offer.listener.map(str::to_string),
            configured: offer.configured,
        });
    }
    let (ours, theirs) =
        UnixStream::pair().map_err(|e| format!("cannot make the take-over channel: {e}"))?;
    mappings.push(FdMapping {
        parent_fd: theirs.into(),
        child_fd: 3 + i32::try_from(offers.len()).map_err(|e| e.to_string())?,
    });
    let description = serde_json::to_string(&handover)
        .map_err(|e| format!("cannot describe the sockets: {e}"))?;
    let mut command = Command::new(&exe);
    command
        .args(std::env::args_os().skip(1))
        // systemd's variables named this process; the new one gets the layout below.
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES")
        .env_remove("LISTEN_FDS_FIRST_FD")
        .env("LISTEN_FDS", mappings.len().to_string())
        .env(HANDOVER_ENV, description);
    command
        .fd_mappings(mappings)
        .map_err(|e| format!("cannot pass the sockets: {e}"))?;
    let child = command
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    // Closes this process's copies of what was passed: the channel's far end must be the new
    // process's alone, so that its exit reads as the end of the channel here.
    drop(command);
    let pid = child.id();
    tracing::info!(pid, binary = %exe.display(), sockets = offers.len(), "upgrade: started the new binary; it takes over once it serves every listener");
    let outcome = tokio::task::spawn_blocking(move || wait_ready(child, &ours, &state));
    Ok(Pending { pid, outcome })
}

/// This binary's path now. `/proc/self/exe` names the file this process was started from;
/// once a new release is renamed over it, Linux adds ` (deleted)` to that name, and the
/// file at the path is the new binary: the one to start.
fn own_path() -> Result<PathBuf, String> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    Ok(
        match path.as_os_str().as_bytes().strip_suffix(b" (deleted)") {
            Some(live) => PathBuf::from(std::ffi::OsStr::from_bytes(live)),
            None => path,
        },
    )
}

/// Sends the state, then waits for `ready` (blocking: run on the blocking pool). On failure,
/// the new process is stopped if it still runs, reaped, and the error says how it ended.
fn wait_ready(
    mut child: std::process::Child,
    channel: &UnixStream,
    state: &str,
) -> Result<(), String> {
    let heard = (|| -> std::io::Result<String> {
        channel.set_write_timeout(Some(READY_TIMEOUT))?;
        channel.set_read_timeout(Some(READY_TIMEOUT))?;
        (&*channel).write_all(format!("{state}\n").as_bytes())?;
        let mut line = String::new();
        BufReader::new(channel).read_line(&mut line)?;
        Ok(line)
    })();
    let why = match heard {
        Ok(line) if line.trim() == READY => return Ok(()),
        Ok(line) if line.is_empty() => "it ended the take-over channel".to_string(),
        Ok(line) => format!("it said {:?} instead of ready", line.trim()),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            format!("it did not take over within {READY_TIMEOUT:?}; stopped it")
        }
        Err(e) => format!("the take-over channel failed: {e}"),
    };
    let how = match child.try_wait() {
        Ok(Some(status)) => status.to_string(),
        _ => {
            if let Err(e) = child.kill() {
                tracing::warn!(pid = child.id(), error = %e, "upgrade: cannot stop the new process");
            }
            match child.wait() {
                Ok(status) => status.to_string(),
                Err(e) => format!("status unknown: {e}"),
            }
        }
    };
    Err(format!("{why} ({how})"))
}

/// The new process's side of the channel, from start until it has taken over.
pub(super) struct Takeover {
    channel: UnixStream,
    pub(super) carried: Carried,
}

impl Takeover {
    /// Reads the state the old process carries over. Missing or unreadable state is logged
    /// and the file's state is used: the upgrade itself goes on.
    pub(super) async fn receive(channel: UnixStream) -> Takeover {
        let reader = channel.try_clone();
        let read = tokio::task::spawn_blocking(move || {
            let reader = reader?;
            reader.set_read_timeout(Some(STATE_TIMEOUT))?;
            let mut line = String::new();
            BufReader::new(&reader).read_line(&mut line)?;
            Ok::<_, std::io::Error>(line)
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|read| read.map_err(|e| e.to_string()));
        let carried = match read.map(|l| serde_json::from_str::<Carried>(&l)) {
            Ok(Ok(carried)) => carried,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "upgrade: the previous process's runtime state is unreadable; starting from the file's");
                Carried::default()
            }
            Err(e) => {
                tracing::warn!(error = %e, "upgrade: no runtime state from the previous process; starting from the file's");
                Carried::default()
            }
        };
        Takeover { channel, carried }
    }

    /// Tells the old process that this one serves every listener.
    pub(super) fn announce(self) {
        match (&self.channel).write_all(format!("{READY}\n").as_bytes()) {
            Ok(()) => tracing::info!("upgrade: took over from the previous process"),
            Err(e) => {
                tracing::warn!(error = %e, "upgrade: cannot tell the previous process; it may go on serving beside this one");
            }
        }
    }
}

impl Server {
    /// SIGUSR2: starts the new binary with every listening socket. One upgrade at a time.
    pub(super) fn start_upgrade(&mut self) {
        if let Some(p) = &self.upgrade {
            tracing::warn!(
                pid = p.pid,
                "SIGUSR2: an upgrade is already in progress; ignored"
            );
            return;
        }
        tracing::info!("SIGUSR2: upgrading the binary");
        let mut offers: Vec<Offer<'_>> = self
            .listeners
            .handover_sockets()
            .into_iter()
            .map(|(listener, configured, socket)| Offer {
                listener: Some(listener),
                configured,
                socket,
            })
            .collect();
        if let Some((configured, socket)) = &self.admin_handover {
            offers.push(Offer {
                listener: None,
                configured: *configured,
                socket,
            });
        }
        let carried = Carried::collect(&self.state.load());
        match start(&offers, &carried) {
            Ok(pending) => self.upgrade = Some(pending),
            Err(e) => {
                tracing::error!(error = %e, "upgrade failed; this process goes on serving");
                crate::metrics::upgrade_result(Some(false));
            }
        }
    }

    /// The new process took over (true: this one drains and exits) or failed (logged and
    /// counted; this one goes on, its pid file and ready file written again in case the new
    /// process wrote or removed them before it failed).
    pub(super) fn upgrade_done(&mut self, pid: u32, outcome: Result<(), String>) -> bool {
        match outcome {
            Ok(()) => {
                tracing::info!(
                    pid,
                    "upgrade: the new process serves every listener; this one stops accepting and drains"
                );
                crate::metrics::upgrade_result(Some(true));
                true
            }
            Err(e) => {
                tracing::error!(pid, error = %e, "upgrade failed: the new process did not take over; this process goes on serving");
                crate::metrics::upgrade_result(Some(false));
                if let Some(old) = self.pid_file.take() {
                    let path = old.path().to_path_buf();
                    old.keep();
                    match PidFile::write(&path) {
                        Ok(file) => self.pid_file = Some(file),
                        Err(e) => {
                            tracing::error!(path = %path.display(), error = %e, "cannot write the pid file again");
                        }
                    }
                }
                if let Some(file) = &self.ready_file
                    && let Err(e) = file.rewrite()
                {
                    tracing::error!(path = %file.path().display(), error = %e, "cannot write the ready file again");
                }
                false
            }
        }
    }

    /// The new process of an upgrade, serving every listener: writes the pid file and ready
    /// file, then tells the old process, which then drains.
    pub(super) fn take_over(&mut self, takeover: Takeover, admin: Option<SocketAddr>) {
        if let Some(path) = self.deferred_pid_file.take() {
            match PidFile::write(&path) {
                Ok(file) => self.pid_file = Some(file),
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "cannot write the pid file");
                }
            }
        }
        if let Some(path) = self.deferred_ready_file.take() {
            let listeners = self.state.load();
            let listeners = super::ready_file::bound(
                listeners
                    .listeners
                    .values()
                    .flat_map(|l| l.addresses.iter().map(|a| (&*l.name, *a))),
            );
            match super::ready_file::ReadyFile::create(&path, listeners, admin) {
                Ok(file) => self.ready_file = Some(file),
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "cannot write the ready file");
                }
            }
        }
        // systemd (Type=notify, NotifyAccess=all) follows this process from now on.
        super::notify::notify(&format!("MAINPID={}\nREADY=1", std::process::id()));
        takeover.announce();
    }
}
