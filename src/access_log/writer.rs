//! The access log's writer: where formatted lines go, off the request path.
//!
//! Request threads append their line to one shared buffer under a mutex held for a copy; a
//! writer thread takes the whole buffer every 100 ms (sooner when it holds 256 KB, on a
//! reopen or a flush) and writes it in one call. A line therefore costs no system call and
//! no thread wake-up, which a channel to the writer did: waking it per line cost more CPU
//! than proxying the request. If the disk cannot keep up, the buffer stops growing at 16 MB
//! and further lines are counted and reported as dropped rather than held without bound.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::Duration;

use crate::config::AccessTarget;

const WRITE_EVERY: Duration = Duration::from_millis(100);
const WRITE_AT: usize = 256 * 1024;
const MAX_PENDING: usize = 16 * 1024 * 1024;

pub(super) struct Writer {
    shared: Arc<Shared>,
}

struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
}

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    dropped: u64,
    reopen: bool,
    flushed: Vec<mpsc::Sender<()>>,
}

impl Pending {
    fn wants_writer(&self) -> bool {
        self.bytes.len() >= WRITE_AT || self.reopen || !self.flushed.is_empty()
    }
}

impl Writer {
    /// Starts the writer thread on `out`; `target` is opened again on a reopen.
    pub(super) fn start(out: Box<dyn Write + Send>, target: AccessTarget) -> io::Result<Writer> {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
        });
        let thread_shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("rproxy-access-log".into())
            .spawn(move || run(&thread_shared, out, &target))?;
        Ok(Writer { shared })
    }

    pub(super) fn push(&self, line: &str) {
        // A poisoned lock means the writer panicked: nothing would write the line anyway.
        let Ok(mut pending) = self.shared.pending.lock() else {
            return;
        };
        if pending.bytes.len() + line.len() > MAX_PENDING {
            pending.dropped += 1;
            return;
        }
        let was_below = pending.bytes.len() < WRITE_AT;
        pending.bytes.extend_from_slice(line.as_bytes());
        if was_below && pending.bytes.len() >= WRITE_AT {
            self.shared.wake.notify_one();
        }
    }

    /// Closes and opens the file again (after logrotate moved it).
    pub(super) fn reopen(&self) {
        if let Ok(mut pending) = self.shared.pending.lock() {
            pending.reopen = true;
            self.shared.wake.notify_one();
        }
    }

    /// Returns once every line pushed so far is written (or after a second).
    pub(super) fn flush(&self) {
        let (done, wait) = mpsc::channel();
        if let Ok(mut pending) = self.shared.pending.lock() {
            pending.flushed.push(done);
            self.shared.wake.notify_one();
        } else {
            return;
        }
        let _ = wait.recv_timeout(Duration::from_secs(1));
    }
}

fn run(shared: &Shared, mut out: Box<dyn Write + Send>, target: &AccessTarget) {
    // A failing disk (full, gone) is reported once, and again only after a write succeeded:
    // not every 100 ms while it lasts.
    let mut failing = false;
    // Swapped with the shared buffer each round, so both keep their capacity.
    let mut taken = Vec::new();
    loop {
        let (reopen, flushed, dropped) = {
            let Ok(mut pending) = shared.pending.lock() else {
                return;
            };
            if !pending.wants_writer() {
                pending = match shared.wake.wait_timeout(pending, WRITE_EVERY) {
                    Ok((pending, _)) => pending,
                    Err(_) => return,
                };
            }
            std::mem::swap(&mut pending.bytes, &mut taken);
            (
                std::mem::take(&mut pending.reopen),
                std::mem::take(&mut pending.flushed),
                std::mem::take(&mut pending.dropped),
            )
        };
        if dropped > 0 {
            crate::metrics::access_log_lines_lost(dropped);
            tracing::error!(
                dropped,
                "access log: lines dropped, the log could not be written fast enough"
            );
        }
        if !taken.is_empty() {
            match out.write_all(&taken).and_then(|()| out.flush()) {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!("access log: writing again");
                }
                Ok(()) => {}
                Err(e) => {
                    if !failing {
                        failing = true;
                        tracing::error!(error = %e, "access log: cannot write; lines are lost until it can");
                    }
                    // Counted whole: how much of a failed write reached the file is unknown.
                    let lines = memchr::memchr_iter(b'\n', &taken).count();
                    crate::metrics::access_log_lines_lost(lines as u64);
                }
            }
            taken.clear();
        }
        if reopen {
            match super::open(target) {
                Ok(new) => {
                    out = new;
                    tracing::info!("access log reopened");
                }
                Err(e) => {
                    tracing::error!(error = %e, "access log: cannot reopen; still writing to the old file");
                }
            }
        }
        for done in flushed {
            let _ = done.send(());
        }
    }
}
