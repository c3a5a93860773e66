//! Watching files that may sit behind symlinks: the one watcher of the config file and of
//! the certificates. It follows each path the way the kernel resolves it (a Kubernetes
//! ConfigMap's `autolb.yaml -> ..data/autolb.yaml`, `..data -> ..2026_…`, `current`
//! symlinks, chains of them) and watches the directory of every symlink on the way and of
//! the file it ends at. Every event re-resolves the paths (and moves the watches), and once
//! the events have settled the bytes of the files are hashed: the callback runs once per
//! real change of content, never for a touch, a rewrite with the same bytes, or a file that
//! is missing for a moment (deleted, then recreated).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};

/// Quiet time after the last event before the files are compared (a certificate and its
/// key are often written one after the other; editors write, rename and chmod).
const SETTLE: Duration = Duration::from_millis(250);
/// Longest wait for quiet while events keep coming.
const MAX_SETTLE: Duration = Duration::from_secs(2);
/// Most symlinks followed for one path (the kernel's limit).
const MAX_HOPS: usize = 40;

/// Where a path leads: the directories to watch, and the paths in them whose change may
/// change what the path resolves to or holds.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Trace {
    pub dirs: BTreeSet<PathBuf>,
    pub names: BTreeSet<PathBuf>,
    /// The file the path resolves to now (`None`: it does not exist).
    pub target: Option<PathBuf>,
}

fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .unwrap_or_else(|_| PathBuf::from("/"))
            .join(path)
    }
}

fn parts(path: &Path) -> Vec<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
}

/// Resolve `path` component by component, as the kernel does, noting the directory of
/// every symlink met and of the last existing component.
pub fn trace(path: &Path, into: &mut Trace) {
    let mut pending: Vec<OsString> = parts(&absolute(path));
    pending.reverse();
    let mut cur = PathBuf::from("/");
    let mut hops = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            cur.pop();
            continue;
        }
        let next = cur.join(&part);
        match std::fs::symlink_metadata(&next) {
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > MAX_HOPS {
                    // A loop: nothing to read, but a change of these links may end it.
                    into.dirs.insert(cur);
                    into.names.insert(next);
                    return;
                }
                into.dirs.insert(cur.clone());
                into.names.insert(next.clone());
                let Ok(target) = std::fs::read_link(&next) else {
                    return;
                };
                if target.is_absolute() {
                    cur = PathBuf::from("/");
                }
                pending.extend(parts(&target).into_iter().rev());
            }
            Ok(_) => cur = next,
            Err(_) => {
                // Missing (deleted for a moment, or not there yet): watch for it to appear.
                into.dirs.insert(cur);
                into.names.insert(next);
                return;
            }
        }
    }
    if let Some(dir) = cur.parent() {
        into.dirs.insert(dir.to_path_buf());
    }
    into.names.insert(cur.clone());
    into.target = Some(cur);
}

/// Hash of the files' bytes (`None` when one cannot be read: nothing to compare yet).
pub fn content_hash(files: &[PathBuf]) -> Option<u64> {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for f in files {
        let bytes = std::fs::read(f).ok()?;
        h.update(f.as_os_str().as_encoded_bytes());
        h.update(&(bytes.len() as u64).to_le_bytes());
        h.update(&bytes);
    }
    Some(h.digest())
}

/// What the callback is told.
enum Msg {
    /// Paths named by a file-system event.
    Event(Vec<PathBuf>),
    /// A new set of files (the change is the caller's own: no callback).
    Files(Vec<PathBuf>),
    Stop,
}

/// A running watcher: its thread calls `on_change` once per change of the files' bytes.
/// Dropping it stops the thread.
pub struct FileWatcher {
    tx: Sender<Msg>,
}

/// The watcher thread's view.
struct Worker {
    name: &'static str,
    files: Vec<PathBuf>,
    notify: Option<Arc<Mutex<RecommendedWatcher>>>,
    /// Watched directories and the identity (device, inode) they had when watched.
    dirs: BTreeMap<PathBuf, (u64, u64)>,
    names: BTreeSet<PathBuf>,
    hash: Option<u64>,
    poll: Option<Duration>,
    on_change: Box<dyn FnMut() + Send>,
}

fn relevant(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

fn identity(dir: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(dir).ok().map(|m| (m.dev(), m.ino()))
}

impl FileWatcher {
    /// Watch `files` (named `name` in the log); `poll`: also compare the files this often
    /// without events (network file systems, missed events).
    pub fn start(
        name: &'static str,
        files: Vec<PathBuf>,
        poll: Option<Duration>,
        on_change: Box<dyn FnMut() + Send>,
    ) -> std::io::Result<FileWatcher> {
        let (tx, rx) = mpsc::channel();
        let events = tx.clone();
        let notify = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(event) = res {
                if relevant(&event.kind) {
                    let _ = events.send(Msg::Event(event.paths));
                }
            }
        })
        .map_err(|e| tracing::warn!(watcher = name, error = %e, "file events unavailable"))
        .ok()
        .map(|w| Arc::new(Mutex::new(w)));
        let mut worker = Worker {
            name,
            hash: content_hash(&files),
            files,
            notify,
            dirs: BTreeMap::new(),
            names: BTreeSet::new(),
            poll,
            on_change,
        };
        worker.rewatch();
        std::thread::Builder::new()
            .name(format!("autolb-watch-{name}"))
            .spawn(move || worker.run(rx))?;
        Ok(FileWatcher { tx })
    }

    /// Watch these files instead (their current bytes are the new reference).
    pub fn set_files(&self, files: Vec<PathBuf>) {
        let _ = self.tx.send(Msg::Files(files));
    }
}

impl Drop for FileWatcher {
    fn drop(&mut self) {
        let _ = self.tx.send(Msg::Stop);
    }
}

impl Worker {
    /// Resolve every file again and move the watches to where they lead now.
    fn rewatch(&mut self) {
        let mut t = Trace::default();
        for f in &self.files {
            trace(f, &mut t);
        }
        self.names = t.names;
        let Some(notify) = &self.notify else { return };
        let Ok(mut w) = notify.lock() else { return };
        for gone in self.dirs.keys().filter(|d| !t.dirs.contains(*d)) {
            let _ = w.unwatch(gone);
        }
        let mut dirs = BTreeMap::new();
        for dir in t.dirs {
            let Some(id) = identity(&dir) else { continue };
            // A directory replaced by another one of the same name is watched anew.
            if self.dirs.get(&dir) != Some(&id) {
                if let Err(e) = w.watch(&dir, RecursiveMode::NonRecursive) {
                    tracing::warn!(watcher = self.name, dir = %dir.display(), error = %e, "cannot watch directory");
                    continue;
                }
            }
            dirs.insert(dir, id);
        }
        self.dirs = dirs;
    }

    fn concerns(&self, paths: &[PathBuf]) -> bool {
        paths
            .iter()
            .any(|p| self.names.contains(p) || self.dirs.contains_key(p))
    }

    /// After events: re-resolve, and call back if the bytes changed.
    fn compare(&mut self) {
        self.rewatch();
        let Some(now) = content_hash(&self.files) else {
            tracing::debug!(
                watcher = self.name,
                "a watched file is missing; waiting for it"
            );
            return;
        };
        if self.hash == Some(now) {
            tracing::debug!(watcher = self.name, "files unchanged");
            return;
        }
        self.hash = Some(now);
        tracing::info!(watcher = self.name, "watched files changed");
        (self.on_change)();
    }

    /// Settle: wait until events stop (at most `MAX_SETTLE`). False when told to stop.
    fn settle(&mut self, rx: &Receiver<Msg>) -> bool {
        let started = Instant::now();
        while started.elapsed() < MAX_SETTLE {
            match rx.recv_timeout(SETTLE) {
                Ok(Msg::Event(_)) => {}
                Ok(Msg::Files(files)) => self.replace(files),
                Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => return false,
                Err(RecvTimeoutError::Timeout) => break,
            }
        }
        true
    }

    fn replace(&mut self, files: Vec<PathBuf>) {
        self.files = files;
        self.rewatch();
        self.hash = content_hash(&self.files);
    }

    fn run(mut self, rx: Receiver<Msg>) {
        loop {
            let msg = match self.poll {
                Some(every) => match rx.recv_timeout(every) {
                    Ok(m) => m,
                    Err(RecvTimeoutError::Timeout) => {
                        self.compare();
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => return,
                },
                None => match rx.recv() {
                    Ok(m) => m,
                    Err(_) => return,
                },
            };
            match msg {
                Msg::Event(paths) if self.concerns(&paths) => {
                    if !self.settle(&rx) {
                        return;
                    }
                    self.compare();
                }
                Msg::Event(_) => {}
                Msg::Files(files) => self.replace(files),
                Msg::Stop => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn a_configmap_layout_is_followed_to_its_file() {
        let d = tempfile::tempdir().expect("tempdir");
        let root = d.path().canonicalize().expect("canonical");
        std::fs::create_dir(root.join("..2026_01")).expect("mkdir");
        std::fs::write(root.join("..2026_01/autolb.yaml"), "a").expect("write");
        symlink("..2026_01", root.join("..data")).expect("symlink");
        symlink("..data/autolb.yaml", root.join("autolb.yaml")).expect("symlink");
        let mut t = Trace::default();
        trace(&root.join("autolb.yaml"), &mut t);
        assert_eq!(t.target, Some(root.join("..2026_01/autolb.yaml")));
        assert_eq!(
            t.dirs,
            BTreeSet::from([root.clone(), root.join("..2026_01")])
        );
        assert!(t.names.contains(&root.join("..data")));
        assert!(t.names.contains(&root.join("autolb.yaml")));
        assert!(t.names.contains(&root.join("..2026_01/autolb.yaml")));
    }

    #[test]
    fn missing_files_and_loops_end_the_walk() {
        let d = tempfile::tempdir().expect("tempdir");
        let root = d.path().canonicalize().expect("canonical");
        let mut t = Trace::default();
        trace(&root.join("gone/autolb.yaml"), &mut t);
        assert_eq!(t.target, None);
        assert_eq!(t.dirs, BTreeSet::from([root.clone()]));
        assert!(t.names.contains(&root.join("gone")));
        symlink("b", root.join("a")).expect("symlink");
        symlink("a", root.join("b")).expect("symlink");
        let mut t = Trace::default();
        trace(&root.join("a"), &mut t);
        assert_eq!(t.target, None);
        assert!(content_hash(&[root.join("a")]).is_none());
    }

    #[test]
    fn relative_targets_with_parent_components_resolve_like_the_kernel() {
        let d = tempfile::tempdir().expect("tempdir");
        let root = d.path().canonicalize().expect("canonical");
        std::fs::create_dir_all(root.join("releases/42")).expect("mkdir");
        std::fs::create_dir(root.join("etc")).expect("mkdir");
        std::fs::write(root.join("releases/42/autolb.yaml"), "x").expect("write");
        symlink("../releases/42", root.join("etc/current")).expect("symlink");
        let mut t = Trace::default();
        trace(&root.join("etc/current/autolb.yaml"), &mut t);
        assert_eq!(t.target, Some(root.join("releases/42/autolb.yaml")));
        assert_eq!(
            content_hash(&[root.join("etc/current/autolb.yaml")]),
            content_hash(&[root.join("etc/current/autolb.yaml")])
        );
    }
}
