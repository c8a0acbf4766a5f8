//! The ready file (`rproxy --ready-file PATH`): at start, once every listener and the admin
//! listener are bound, a small JSON document says where, so a supervisor or a test learns the
//! ports the system chose for `127.0.0.1:0` without reading the log:
//!
//! `{"pid":123,"listeners":{"web":["127.0.0.1:41234"]},"admin":"127.0.0.1:40001"}`
//!
//! A reload that changes the bound listeners rewrites it; it is removed when rproxy stops
//! accepting. Each write goes to a temporary file in the same folder that is then renamed over
//! the path, so a reader sees the old document or the new one, never half of one.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Listener name to its bound addresses, in name order.
pub(super) type Bound = BTreeMap<String, Vec<SocketAddr>>;

#[derive(Debug)]
pub(super) struct ReadyFile {
    path: PathBuf,
    /// Read at start only, like the rest of `[admin]`.
    admin: Option<SocketAddr>,
    /// What the file says now.
    written: Bound,
    /// Not removed on drop (a binary upgrade's new process owns it).
    keep: bool,
}

#[derive(serde::Serialize)]
struct Document<'a> {
    pid: u32,
    listeners: &'a Bound,
    admin: Option<SocketAddr>,
}

impl ReadyFile {
    /// Writes the file for the first time.
    pub(super) fn create(
        path: &Path,
        listeners: Bound,
        admin: Option<SocketAddr>,
    ) -> std::io::Result<ReadyFile> {
        let file = ReadyFile {
            path: path.to_path_buf(),
            admin,
            written: listeners,
            keep: false,
        };
        file.write()?;
        Ok(file)
    }

    /// Rewrites the file if `listeners` differ from what it says.
    pub(super) fn update(&mut self, listeners: Bound) -> std::io::Result<()> {
        if listeners == self.written {
            return Ok(());
        }
        self.written = listeners;
        self.write()
    }

    /// Writes the file again as it should be (after a failed upgrade, whose new process may
    /// have written or removed it).
    pub(super) fn rewrite(&self) -> std::io::Result<()> {
        self.write()
    }

    /// Lets go of the file without removing it: after a binary upgrade it is the new
    /// process's.
    pub(super) fn keep(mut self) {
        self.keep = true;
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    fn write(&self) -> std::io::Result<()> {
        let pid = std::process::id();
        let document = Document {
            pid,
            listeners: &self.written,
            admin: self.admin,
        };
        let mut text = serde_json::to_string(&document).map_err(std::io::Error::other)?;
        text.push('\n');
        // Same folder as the file: a rename within one file system replaces it in one step.
        let name = self.path.file_name().unwrap_or_default().to_string_lossy();
        let temp = self.path.with_file_name(format!(".{name}.{pid}.tmp"));
        let written = std::fs::File::create(&temp)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .and_then(|()| std::fs::rename(&temp, &self.path));
        if written.is_err() {
            let _ = std::fs::remove_file(&temp); // Best effort: the error below is what counts.
        }
        written
    }
}

impl Drop for ReadyFile {
    /// rproxy no longer accepts: the addresses are no longer an invitation.
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot remove the ready file");
            }
            _ => {}
        }
    }
}

/// Groups `(listener, address)` pairs by listener.
pub(super) fn bound<'a>(pairs: impl IntoIterator<Item = (&'a str, SocketAddr)>) -> Bound {
    let mut out = Bound::new();
    for (name, addr) in pairs {
        out.entry(name.to_string()).or_default().push(addr);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    fn read(path: &Path) -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(path).expect("ready file")).expect("JSON")
    }

    #[test]
    fn written_at_create_rewritten_on_change_and_removed_on_drop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ready.json");
        let first = bound([
            ("web", addr("127.0.0.1:4000")),
            ("web", addr("[::1]:4000")),
            ("api", addr("127.0.0.1:4001")),
        ]);
        let mut file =
            ReadyFile::create(&path, first.clone(), Some(addr("127.0.0.1:9000"))).expect("write");
        let doc = read(&path);
        assert_eq!(doc["pid"], std::process::id());
        assert_eq!(doc["admin"], "127.0.0.1:9000");
        assert_eq!(
            doc["listeners"],
            serde_json::json!({"api": ["127.0.0.1:4001"], "web": ["127.0.0.1:4000", "[::1]:4000"]})
        );

        // The same listeners: nothing is written (a file removed meanwhile stays away).
        std::fs::remove_file(&path).expect("remove");
        file.update(first).expect("unchanged");
        assert!(!path.exists());

        file.update(bound([("web", addr("127.0.0.1:4000"))]))
            .expect("rewrite");
        assert_eq!(
            read(&path)["listeners"],
            serde_json::json!({"web": ["127.0.0.1:4000"]})
        );
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["ready.json"], "no temporary file left behind");
        drop(file);
        assert!(!path.exists());
    }

    #[test]
    fn a_folder_that_does_not_exist_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("missing").join("ready.json");
        assert!(ReadyFile::create(&path, Bound::new(), None).is_err());
    }
}
