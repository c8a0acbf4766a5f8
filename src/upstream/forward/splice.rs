//! Layer 4's bulk copy done inside the kernel: splice(2) moves a direction's bytes from one
//! socket into a pipe and from the pipe into the other socket, so they never enter rproxy's
//! memory (the idea of HAProxy's `option splice-auto`). Linux only.
//!
//! Used by `stream::copy` when the listener has `splice = true` (the default), between the
//! client's TCP socket and the backend's, TCP or Unix. It keeps the behaviour of tokio's copy,
//! used otherwise: back-pressure (a direction reads again only once it has written all it
//! read), a half-close passed on, the byte counts, and the activity the idle timer reads.
//!
//! Each direction moves its bytes a chunk at a time, a chunk being what one read returns. A
//! chunk goes through a 64 KiB user-space buffer until one fills it; from then on chunks are
//! spliced, for as long as each moves at least that much. Small messages (a database's queries
//! and answers) so stay with the copy, where they cost less: a 64-byte echo took about 8% more
//! CPU a round trip spliced. Bulk moves without being copied: one 1 GiB stream took 310 to 390
//! ms of rproxy's CPU a GiB, against 563 to 867 copied in the same runs, and 1 MiB pipes
//! matter: with the default 64 KiB ones splice saved little over the copy
//! (`benches/tcp_throughput.sh`, benches/RESULTS.md, "eighth pass").
//!
//! A chunk's pipe or buffer is held only while the chunk is in it: it comes from a small
//! per-thread cache when the socket has something to read and goes back once the chunk is
//! written, so an idle connection holds its two sockets and nothing more. When no pipe of at
//! least 64 KiB can be had (no descriptors left, or the user's pipe allowance,
//! `fs.pipe-user-pages-soft`, spent) the chunk goes through a buffer: slower, never refused.

use std::cell::RefCell;
use std::io;
use std::net::Shutdown;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::pipe::{PipeFlags, SpliceFlags};
use tokio::io::Interest;
use tokio::net::{TcpStream, UnixStream};

use super::stream::{Activity, BUFFER};

/// The capacity a new pipe asks for, and so the most one splice moves: Linux's default
/// `fs.pipe-max-size`, the most an unprivileged process may ask for.
const PIPE_SIZE: usize = 1 << 20;

/// Below this a pipe is not worth a system call per few pages: the kernel gives 8 KiB pipes to
/// a user past its allowance.
const SMALLEST_PIPE: usize = 64 * 1024;

/// Empty pipes and buffers a thread keeps for its next chunks. Few: a chunk usually goes back
/// within the task's turn, and each pipe counts against the user's pipe allowance at its full
/// size while it waits here.
const CACHED: usize = 4;

thread_local! {
    static PIPES: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
    static BUFFERS: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

#[cfg(test)]
thread_local! {
    /// Set by a test: every `Pipe::take` on this thread fails, as when descriptors run out.
    static NO_PIPES: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Both ends of one non-blocking pipe.
#[derive(Debug)]
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    /// A cached pipe, or a new one; `None` when none of a useful size can be had.
    fn take() -> Option<Pipe> {
        #[cfg(test)]
        if NO_PIPES.get() {
            return None;
        }
        if let Some(pipe) = PIPES.with(|p| p.borrow_mut().pop()) {
            return Some(pipe);
        }
        let (read, write) = match rustix::pipe::pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC)
        {
            Ok(ends) => ends,
            Err(e) => {
                tracing::debug!(error = %e, "no pipe for splice; copying this chunk in user space");
                return None;
            }
        };
        // Refused past the user's pipe allowance; the pipe keeps its default size then.
        let size = rustix::pipe::fcntl_setpipe_size(&write, PIPE_SIZE)
            .or_else(|_| rustix::pipe::fcntl_getpipe_size(&write))
            .unwrap_or(0);
        if size < SMALLEST_PIPE {
            tracing::debug!(
                size,
                "pipe too small for splice; copying this chunk in user space"
            );
            return None;
        }
        Some(Pipe { read, write })
    }
}

/// Where one chunk waits between its read and its write.
enum Held {
    Pipe(Pipe),
    Buffer(Box<[u8]>),
}

impl Held {
    /// A pipe when `bulk` asks for one and one can be had, a buffer otherwise.
    fn take(bulk: bool) -> Held {
        if bulk && let Some(pipe) = Pipe::take() {
            return Held::Pipe(pipe);
        }
        let cached = BUFFERS.with(|b| b.borrow_mut().pop());
        Held::Buffer(cached.unwrap_or_else(|| vec![0u8; BUFFER].into_boxed_slice()))
    }

    /// Back to the cache, once the chunk is written: a pipe that still held bytes would hand
    /// them to another connection. (One dropped instead is closed, or freed.)
    fn give_back(self) {
        match self {
            Held::Pipe(pipe) => PIPES.with(|p| keep(&mut p.borrow_mut(), pipe)),
            Held::Buffer(buf) => BUFFERS.with(|b| keep(&mut b.borrow_mut(), buf)),
        }
    }
}

/// Keeps `item` for the thread's next chunk, unless the cache is full (then it is dropped).
fn keep<T>(cache: &mut Vec<T>, item: T) {
    if cache.len() < CACHED {
        cache.push(item);
    }
}

/// A stream socket a chunk is spliced from or to: tokio's readiness and non-blocking I/O,
/// which its TCP and Unix sockets both offer, over a descriptor splice(2) takes.
pub(super) trait Socket: AsFd {
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send + '_;
    fn writable(&self) -> impl Future<Output = io::Result<()>> + Send + '_;
    fn try_io<R>(&self, interest: Interest, f: impl FnOnce() -> io::Result<R>) -> io::Result<R>;
    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize>;
    fn try_write(&self, buf: &[u8]) -> io::Result<usize>;
}

/// `Socket` for a tokio socket type, by its own methods of the same names.
macro_rules! socket {
    ($t:ty) => {
        impl Socket for $t {
            fn readable(&self) -> impl Future<Output = io::Result<()>> + Send + '_ {
                <$t>::readable(self)
            }
            fn writable(&self) -> impl Future<Output = io::Result<()>> + Send + '_ {
                <$t>::writable(self)
            }
            fn try_io<R>(
                &self,
                interest: Interest,
                f: impl FnOnce() -> io::Result<R>,
            ) -> io::Result<R> {
                <$t>::try_io(self, interest, f)
            }
            fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
                <$t>::try_read(self, buf)
            }
            fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
                <$t>::try_write(self, buf)
            }
        }
    };
}
socket!(TcpStream);
socket!(UnixStream);

/// Moves bytes both ways until each side has closed its writing half, or until an error on
/// either (a reset, a write to a closed peer), which ends both as the copy does.
pub(super) async fn both_ways(
    client: &TcpStream,
    backend: &impl Socket,
    up: &AtomicU64,
    down: &AtomicU64,
    activity: &Activity,
) -> io::Result<()> {
    tokio::try_join!(
        one_way(client, backend, up, activity),
        one_way(backend, client, down, activity)
    )
    .map(|_| ())
}

/// `from` to `to` until `from`'s end of stream, which is passed on as a half-close.
async fn one_way(
    from: &impl Socket,
    to: &impl Socket,
    moved: &AtomicU64,
    activity: &Activity,
) -> io::Result<()> {
    // Whether the last chunk was bulk, so the next one is spliced.
    let mut bulk = false;
    loop {
        from.readable().await?;
        let mut held = Held::take(bulk);
        let read = match &mut held {
            // The pipe is empty, so a would-block here is the socket's and clears its readiness.
            Held::Pipe(pipe) => {
                from.try_io(Interest::READABLE, || splice(from, &pipe.write, PIPE_SIZE))
            }
            Held::Buffer(buf) => from.try_read(buf),
        };
        let n = match read {
            Ok(0) => {
                held.give_back();
                break;
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                held.give_back();
                continue;
            }
            Err(e) => return Err(e),
        };
        moved.fetch_add(n as u64, Ordering::Relaxed);
        activity.touch();
        bulk = n >= BUFFER;
        let mut written = 0;
        while written < n {
            to.writable().await?;
            let wrote = match &held {
                // The pipe holds bytes, so a would-block here is the socket's too.
                Held::Pipe(pipe) => {
                    to.try_io(Interest::WRITABLE, || splice(&pipe.read, to, n - written))
                }
                Held::Buffer(buf) => to.try_write(&buf[written..n]),
            };
            match wrote {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(k) => {
                    written += k;
                    activity.touch();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        held.give_back();
    }
    socket2::SockRef::from(to).shutdown(Shutdown::Write)
}

/// Up to `len` bytes from `from` to `to`, one of them a pipe, without blocking.
fn splice(from: impl AsFd, to: impl AsFd, len: usize) -> io::Result<usize> {
    // MOVE: the pages are handed over where the kernel can, not copied.
    let flags = SpliceFlags::NONBLOCK | SpliceFlags::MOVE;
    Ok(rustix::pipe::splice(from, None, to, None, len, flags)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A connected pair of TCP sockets on 127.0.0.1.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (near, far) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (near.expect("connect"), far.expect("accept").0)
    }

    /// Bytes both ways between a client and a backend (rproxy's end of it and the far end)
    /// through `both_ways`, with or without pipes: each side gets all the other sent, then the
    /// half-close.
    async fn carry<B>(pipes: bool, (proxy_backend, backend): (B, B))
    where
        B: Socket + AsyncRead + AsyncWrite,
    {
        NO_PIPES.set(!pipes);
        let (mut client, proxy_client) = pair().await;
        let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
        let activity = Activity::new();
        let up_bytes: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let down_bytes: Vec<u8> = (0..2_000_000u32).map(|i| (i % 241) as u8).collect();
        let ends = async {
            let (mut c_read, mut c_write) = client.split();
            let (mut b_read, mut b_write) = tokio::io::split(backend);
            let (mut at_client, mut at_backend) = (Vec::new(), Vec::new());
            let (sent_up, sent_down, read_c, read_b) = tokio::join!(
                async {
                    c_write.write_all(&up_bytes).await?;
                    c_write.shutdown().await
                },
                async {
                    b_write.write_all(&down_bytes).await?;
                    b_write.shutdown().await
                },
                c_read.read_to_end(&mut at_client),
                b_read.read_to_end(&mut at_backend),
            );
            sent_up.and(sent_down).expect("send");
            read_c.and(read_b).expect("read");
            (at_client, at_backend)
        };
        let proxy = async {
            let moved = both_ways(&proxy_client, &proxy_backend, &up, &down, &activity).await;
            // Closed as rproxy closes them, so a failure ends the test rather than hangs it.
            drop((proxy_client, proxy_backend));
            moved
        };
        let (moved, (at_client, at_backend)) = tokio::join!(proxy, ends);
        moved.expect("both ways");
        assert!(
            at_backend == up_bytes,
            "pipes {pipes}: the backend got what was sent"
        );
        assert!(
            at_client == down_bytes,
            "pipes {pipes}: the client got what was sent"
        );
        assert_eq!(up.load(Ordering::Relaxed), up_bytes.len() as u64);
        assert_eq!(down.load(Ordering::Relaxed), down_bytes.len() as u64);
        // This thread's cache holds the pipes the chunks went through, and only then.
        let cached = PIPES.with(|p| p.borrow().len());
        assert_eq!(cached > 0, pipes, "pipes {pipes}: {cached} pipes cached");
        NO_PIPES.set(false);
    }

    #[tokio::test]
    async fn bytes_go_through_pipes() {
        carry(true, pair().await).await;
    }

    #[tokio::test]
    async fn without_a_pipe_bytes_go_through_a_buffer() {
        carry(false, pair().await).await;
    }

    #[tokio::test]
    async fn a_unix_backend_is_spliced_too() {
        carry(true, UnixStream::pair().expect("a Unix socket pair")).await;
    }
}
