//! Following the configuration file (`watch = true` or `--watch`): a change to the file
//! reloads it exactly as SIGHUP does (`reload.rs`: same validation, and nothing changes when
//! the new file is wrong). At the side of the request path, next to the signals.
//!
//! Events only say that something may have changed; the file's content decides. On an event
//! the watcher waits for the burst to settle (an editor's temp file and rename, the several
//! steps of a Kubernetes ConfigMap update), reads the file and reloads only when its content
//! differs from what the last load or reload read. So one change makes one reload, a `touch`
//! makes none, and a SIGHUP that already applied the change is not followed by a second one.
//!
//! The folders watched are those of every link on the way to the file: a mounted ConfigMap is
//! `upstream.toml -> ..data/upstream.toml` with `..data -> ..2026_..`, and an update swaps the
//! `..data` link by a rename, so the file itself never gets an event. The links are followed
//! again after every event, and a folder that cannot be watched (it is gone, or inotify is not
//! available) is retried every second by reading the file: a file removed and put back later
//! is noticed, and nothing stops serving meanwhile.

use std::collections::{BTreeSet, HashSet};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::Server;

/// Quiet time after the last event before the file is read.
const SETTLE: Duration = Duration::from_millis(200);
/// A stream of events never delays the read longer than this.
const SETTLE_MAX: Duration = Duration::from_secs(2);
/// How often the file is read while some folder on its way cannot be watched.
const RETRY: Duration = Duration::from_secs(1);
/// Links followed at most on the way to the file (Linux's own limit).
const MAX_LINKS: usize = 40;

/// What the configuration file held when it was last read: a hash of its bytes, compared
/// within this process only. `None` when it could not be read.
pub fn fingerprint(path: &Path) -> Option<u64> {
    std::fs::read(path).ok().map(|bytes| hash(&bytes))
}

pub(super) fn hash(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// The watch on one configuration file.
pub(super) struct FileWatch {
    /// The file as the configuration names it, made absolute.
    path: PathBuf,
    /// `None` when inotify could not be set up: the file is then read every `RETRY`.
    watcher: Option<RecommendedWatcher>,
    /// One pending "something may have changed"; more while one waits are the same news.
    pokes: mpsc::Receiver<()>,
    /// The paths whose events matter (every link on the way to the file, the file, and the
    /// watched folders), shared with notify's thread, which filters with it.
    relevant: Arc<Mutex<HashSet<PathBuf>>>,
    watched: BTreeSet<PathBuf>,
    /// Some folder on the way could not be watched: read the file every `RETRY`.
    degraded: bool,
    /// The file could not be read last time (logged once until it is back).
    missing: bool,
    /// News came and the file is to be looked at once the burst settles. True at the start:
    /// the file may have changed between the last read and the moment the folders were
    /// watched.
    pending: bool,
}

impl FileWatch {
    pub(super) fn start(path: &Path) -> FileWatch {
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let (tx, pokes) = mpsc::channel(1);
        let relevant = Arc::new(Mutex::new(HashSet::new()));
        let filter = Arc::clone(&relevant);
        let handler = move |event: notify::Result<Event>| {
            let poke = match &event {
                Ok(event) => matters(event, &filter.lock()),
                Err(e) => {
                    // Lost events (a full inotify queue) or a failed watch: look again.
                    tracing::warn!(error = %e, "config watch: file-system event error");
                    true
                }
            };
            // Full: a poke is already waiting, which says the same. Closed: the watch is
            // being dropped.
            if poke && let Err(mpsc::error::TrySendError::Closed(())) = tx.try_send(()) {
                tracing::debug!("config watch: event after the watch ended");
            }
        };
        let watcher = match notify::recommended_watcher(handler) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    interval = ?RETRY,
                    "config watch: no file-system events; reading the file at an interval instead"
                );
                None
            }
        };
        let mut watch = FileWatch {
            path,
            watcher,
            pokes,
            relevant,
            watched: BTreeSet::new(),
            degraded: false,
            missing: false,
            pending: true,
        };
        watch.follow_links();
        watch
    }

    /// Waits until the file may have changed: an event burst that has settled, or, while
    /// degraded, the retry interval. Cancel-safe: a wait cancelled after news came (by a
    /// signal or an admin request) resumes at settling the next time.
    pub(super) async fn changed(&mut self) {
        if !self.pending {
            let news = if self.degraded || self.watcher.is_none() {
                tokio::select! {
                    poke = self.pokes.recv(), if !self.pokes.is_closed() => poke.is_some(),
                    () = tokio::time::sleep(RETRY) => true,
                }
            } else {
                self.pokes.recv().await.is_some()
            };
            if !news {
                // The sender lives in notify's thread, which has ended.
                tracing::warn!(interval = ?RETRY, "config watch: file-system events stopped; reading the file at an interval instead");
                self.watcher = None;
                self.watched.clear();
            }
            self.pending = true;
        }
        settle(&mut self.pokes).await;
        self.pending = false;
        self.follow_links();
    }

    /// Watches the folders of every link on the way to the file as it is now, and stops
    /// watching folders no longer on the way.
    fn follow_links(&mut self) {
        let chain = link_chain(&self.path);
        let folders: BTreeSet<PathBuf> = chain
            .iter()
            .filter_map(|p| p.parent().map(Path::to_path_buf))
            .collect();
        {
            let mut relevant = self.relevant.lock();
            relevant.clear();
            relevant.extend(chain.iter().cloned());
            relevant.extend(folders.iter().cloned());
        }
        let Some(watcher) = &mut self.watcher else {
            return;
        };
        for gone in self.watched.difference(&folders) {
            // A folder that was removed has lost its watch already.
            if let Err(e) = watcher.unwatch(gone) {
                tracing::debug!(folder = %gone.display(), error = %e, "config watch: unwatch");
            }
        }
        self.watched.retain(|f| folders.contains(f));
        let mut degraded = false;
        for folder in &folders {
            // Again even when watched: a folder removed and made again under the same name
            // is a new one, whose watch the old one's does not carry over. Watching a folder
            // twice is harmless (inotify adds to the watch it has).
            match watcher.watch(folder, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.watched.insert(folder.clone());
                }
                Err(e) => {
                    if !self.degraded {
                        tracing::warn!(folder = %folder.display(), error = %e, "config watch: cannot watch the folder; reading the file every second until it can");
                    }
                    degraded = true;
                }
            }
        }
        if self.degraded && !degraded {
            tracing::info!(file = %self.path.display(), "config watch: watching every folder on the way to the file again");
        }
        self.degraded = degraded;
    }
}

impl Server {
    /// Starts or stops following the file as `--watch` and the file's `watch` now say.
    pub(super) fn sync_watch(&mut self) {
        let config = Arc::clone(&self.state.load().config);
        let wanted = self.watch_forced || config.watch;
        match (&self.watch, wanted) {
            (None, true) => {
                self.watch = Some(FileWatch::start(&config.source));
                tracing::info!(config = %config.source.display(), "watching the configuration file: a change reloads it");
            }
            (Some(_), false) => {
                self.watch = None;
                tracing::info!(config = %config.source.display(), "no longer watching the configuration file (`watch` is off)");
            }
            _ => {}
        }
    }

    /// After a settled event: reloads when the file's content differs from what the last load
    /// read. A file that cannot be read is logged (once) and the running configuration stays.
    pub(super) async fn file_event(&mut self) {
        let Some(watch) = &mut self.watch else {
            return;
        };
        let bytes = match std::fs::read(&watch.path) {
            Ok(bytes) => bytes,
            Err(e) => {
                if !watch.missing {
                    tracing::warn!(config = %watch.path.display(), error = %e, "config watch: cannot read the file; the running configuration stays, and the file is reloaded when it is back");
                }
                watch.missing = true;
                return;
            }
        };
        if bytes.is_empty() {
            // Truncated by a writer that has not written yet (an empty file is never a valid
            // configuration): its write is the next event.
            tracing::debug!("config watch: the file is empty; waiting for its content");
            return;
        }
        if std::mem::take(&mut watch.missing) {
            tracing::info!(config = %watch.path.display(), "config watch: the file is back");
        }
        if self.file_seen == Some(hash(&bytes)) {
            tracing::debug!("config watch: content unchanged; no reload");
            return;
        }
        self.reload("file changed").await;
        self.sync_watch();
    }
}

/// The next settled change of the watched file; never, while nothing is watched.
pub(super) async fn next_change(watch: &mut Option<FileWatch>) {
    match watch {
        Some(w) => w.changed().await,
        None => std::future::pending().await,
    }
}

/// Whether `event` can change what the file reads: any event on a relevant path but an open,
/// a read or a close after reading (rproxy's own reads of the file make those).
fn matters(event: &Event, relevant: &HashSet<PathBuf>) -> bool {
    if event.need_rescan() {
        return true;
    }
    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => {}
        EventKind::Access(_) => return false,
        _ => {}
    }
    event.paths.iter().any(|p| relevant.contains(p))
}

/// Waits until no poke has come for `SETTLE`, or `SETTLE_MAX` in all.
async fn settle(pokes: &mut mpsc::Receiver<()>) {
    let give_up = tokio::time::Instant::now() + SETTLE_MAX;
    loop {
        let quiet = (tokio::time::Instant::now() + SETTLE).min(give_up);
        match tokio::time::timeout_at(quiet, pokes.recv()).await {
            Ok(Some(())) if tokio::time::Instant::now() < give_up => continue,
            _ => return,
        }
    }
}

/// Every path whose change can change what `path` reads: each symbolic link met on the way
/// (its folder resolved), then the file it ends at. Missing parts end the walk as written.
fn link_chain(path: &Path) -> Vec<PathBuf> {
    let mut chain = Vec::new();
    let mut todo = parts(path);
    let mut at = PathBuf::new();
    let mut links = 0;
    while let Some(part) = todo.pop_front() {
        let name = match part {
            Part::Root(root) => {
                at = root;
                continue;
            }
            Part::Up => {
                at.pop();
                continue;
            }
            Part::Name(name) => name,
        };
        let next = at.join(name);
        let is_link = std::fs::symlink_metadata(&next).is_ok_and(|m| m.file_type().is_symlink());
        let target = match std::fs::read_link(&next) {
            Ok(target) if is_link && links < MAX_LINKS => target,
            // A file, a folder, a missing part, or a loop: taken as written.
            _ => {
                at = next;
                continue;
            }
        };
        links += 1;
        chain.push(next);
        // A relative target goes on from the link's folder, which `at` still is; an absolute
        // one starts with its root.
        let mut front = parts(&target);
        front.extend(todo);
        todo = front;
    }
    chain.push(at);
    chain
}

/// One step of a path, owned so that a link's target can be queued in front of the rest.
enum Part {
    /// `/` (and a Windows prefix): start again from there.
    Root(PathBuf),
    Up,
    Name(std::ffi::OsString),
}

fn parts(path: &Path) -> std::collections::VecDeque<Part> {
    let mut root = PathBuf::new();
    let mut parts = std::collections::VecDeque::new();
    for c in path.components() {
        match c {
            Component::Prefix(_) | Component::RootDir => root.push(c.as_os_str()),
            Component::CurDir => {}
            Component::ParentDir => parts.push_back(Part::Up),
            Component::Normal(name) => parts.push_back(Part::Name(name.to_os_string())),
        }
    }
    if !root.as_os_str().is_empty() {
        parts.push_front(Part::Root(root));
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Kubernetes ConfigMap volume: `upstream.toml -> ..data/upstream.toml`,
    /// `..data -> ..2026_12_06_01`, and the file in that folder.
    fn configmap(dir: &Path, version: &str) {
        let data = dir.join(version);
        std::fs::create_dir(&data).expect("mkdir");
        std::fs::write(data.join("upstream.toml"), version).expect("write");
        std::os::unix::fs::symlink(version, dir.join("..data_tmp")).expect("symlink");
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).expect("rename");
        if !dir.join("upstream.toml").exists() {
            std::os::unix::fs::symlink("..data/upstream.toml", dir.join("upstream.toml"))
                .expect("symlink");
        }
    }

    #[test]
    fn the_chain_names_every_link_of_a_configmap_and_the_file() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().canonicalize().expect("canonical");
        configmap(&dir, "..2026_12_06_01");
        let file = dir.join("upstream.toml");
        assert_eq!(
            link_chain(&file),
            [
                file.clone(),
                dir.join("..data"),
                dir.join("..2026_12_06_01/upstream.toml")
            ]
        );
        configmap(&dir, "..2026_12_06_02");
        assert_eq!(
            link_chain(&file).last(),
            Some(&dir.join("..2026_12_06_02/upstream.toml"))
        );
        // Followed through `..` and an absolute link, too.
        let elsewhere = dir.join("sub");
        std::fs::create_dir(&elsewhere).expect("mkdir");
        std::os::unix::fs::symlink(&file, elsewhere.join("abs")).expect("symlink");
        std::os::unix::fs::symlink("../upstream.toml", elsewhere.join("rel")).expect("symlink");
        for link in ["abs", "rel"] {
            let chain = link_chain(&elsewhere.join(link));
            assert_eq!(chain.first(), Some(&elsewhere.join(link)));
            assert_eq!(
                chain.last(),
                Some(&dir.join("..2026_12_06_02/upstream.toml"))
            );
        }
    }

    #[test]
    fn a_plain_missing_or_looping_path_ends_as_written() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().canonicalize().expect("canonical");
        let missing = dir.join("gone/upstream.toml");
        assert_eq!(link_chain(&missing), vec![missing]);
        std::os::unix::fs::symlink("loop", dir.join("loop")).expect("symlink");
        let chain = link_chain(&dir.join("loop"));
        assert_eq!(chain.len(), MAX_LINKS + 1, "bounded: {chain:?}");
    }

    #[test]
    fn only_changes_to_relevant_paths_matter() {
        let relevant: HashSet<PathBuf> = [PathBuf::from("/c/..data")].into();
        let event = |kind, path: &str| Event::new(kind).add_path(PathBuf::from(path));
        use notify::event::{CreateKind, ModifyKind, RenameMode};
        let renamed = EventKind::Modify(ModifyKind::Name(RenameMode::To));
        assert!(matters(&event(renamed, "/c/..data"), &relevant));
        assert!(!matters(&event(renamed, "/c/access.log"), &relevant));
        let opened = EventKind::Access(AccessKind::Open(AccessMode::Any));
        assert!(!matters(&event(opened, "/c/..data"), &relevant));
        let written = EventKind::Access(AccessKind::Close(AccessMode::Write));
        assert!(matters(&event(written, "/c/..data"), &relevant));
        let rescan = Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan);
        assert!(matters(&rescan, &relevant));
        let created = EventKind::Create(CreateKind::File);
        assert!(!matters(&event(created, "/c/other"), &relevant));
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_settles_once_quiet_and_a_stream_within_the_maximum() {
        let (tx, mut rx) = mpsc::channel(1);
        let start = tokio::time::Instant::now();
        let poker = tokio::spawn(async move {
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                tx.send(()).await.expect("send");
            }
            tx
        });
        settle(&mut rx).await;
        assert_eq!(start.elapsed(), Duration::from_millis(300) + SETTLE);

        let tx = poker.await.expect("join");
        let start = tokio::time::Instant::now();
        let stream = tokio::spawn(async move {
            for _ in 0..1000 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if tx.send(()).await.is_err() {
                    break;
                }
            }
        });
        settle(&mut rx).await;
        assert_eq!(start.elapsed(), SETTLE_MAX);
        drop(rx);
        stream.await.expect("join");
    }
}
