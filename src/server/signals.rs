//! Signals: what the operator tells the running process. SIGTERM and SIGINT stop it (a second
//! one exits at once), SIGHUP reloads the configuration, SIGUSR1 reopens the access log file,
//! SIGUSR2 starts a binary upgrade (`upgrade.rs`). `rproxy -s reload|stop|reopen|upgrade` sends
//! them to the pid in the configuration's `pid_file`.

use std::path::Path;

use tokio::signal::unix::{Signal, SignalKind, signal};

/// What the server loop is asked to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Stop,
    Reload,
    /// Start the binary at this one's path and hand it the sockets.
    Upgrade,
}

/// The process's stop and reload signals, caught from the moment this is created: created
/// before anything is bound, so a signal that arrives during start-up is handled (a SIGHUP
/// then would otherwise kill the process, SIGHUP's default action) and waits for the server.
pub struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
    usr1: Signal,
    usr2: Signal,
}

impl Signals {
    /// Installs the handlers. Needs a tokio runtime.
    pub fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
            usr1: signal(SignalKind::user_defined1())?,
            // Caught from the start: SIGUSR2's default action would kill the process.
            usr2: signal(SignalKind::user_defined2())?,
        })
    }

    /// The next stop or reload. SIGUSR1 is handled here (the access log reopens) and waited
    /// past. Several SIGHUPs arriving during one reload count as one more reload.
    pub async fn next(&mut self) -> Control {
        loop {
            tokio::select! {
                _ = self.term.recv() => return Control::Stop,
                _ = self.int.recv() => return Control::Stop,
                _ = self.hup.recv() => return Control::Reload,
                _ = self.usr2.recv() => return Control::Upgrade,
                _ = self.usr1.recv() => crate::access_log::reopen(),
            }
        }
    }

    /// After the first stop: a second SIGTERM or SIGINT exits the process at once.
    pub fn exit_on_second_stop(mut self) {
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

/// `rproxy -s NAME`: the signal for each command, as nginx names them.
pub fn signal_for(command: &str) -> Option<rustix::process::Signal> {
    use rustix::process::Signal;
    match command {
        "reload" => Some(Signal::HUP),
        "stop" => Some(Signal::TERM),
        "reopen" => Some(Signal::USR1),
        "upgrade" => Some(Signal::USR2),
        _ => None,
    }
}

/// Why `rproxy -s` could not signal the running process.
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    #[error("cannot read the pid file {}: {source} (is rproxy running with this configuration?)", path.display())]
    ReadPidFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{}: `{text}` is not a pid", path.display())]
    NotAPid {
        path: std::path::PathBuf,
        text: String,
    },
    #[error("cannot signal process {pid}: {source}")]
    Kill { pid: i32, source: std::io::Error },
}

/// Sends `sig` to the process whose pid is in `pid_file`; returns that pid.
pub fn send_to_pid_file(pid_file: &Path, sig: rustix::process::Signal) -> Result<i32, SignalError> {
    let text = std::fs::read_to_string(pid_file).map_err(|source| SignalError::ReadPidFile {
        path: pid_file.to_path_buf(),
        source,
    })?;
    let pid = text
        .trim()
        .parse::<i32>()
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| SignalError::NotAPid {
            path: pid_file.to_path_buf(),
            text: text.trim().to_string(),
        })?;
    let raw = pid.as_raw_nonzero().get();
    rustix::process::kill_process(pid, sig).map_err(|e| SignalError::Kill {
        pid: raw,
        source: e.into(),
    })?;
    Ok(raw)
}

/// The pid file, written once everything is bound and removed when the server stops.
#[derive(Debug)]
pub struct PidFile {
    path: std::path::PathBuf,
    /// Not removed on drop.
    keep: bool,
}

impl PidFile {
    pub fn write(path: &Path) -> std::io::Result<PidFile> {
        std::fs::write(path, format!("{}\n", std::process::id()))?;
        Ok(PidFile {
            path: path.to_path_buf(),
            keep: false,
        })
    }

    /// Lets go of the file without removing it: after a binary upgrade it names the new
    /// process.
    pub fn keep(mut self) {
        self.keep = true;
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove the pid file");
        }
    }
}
