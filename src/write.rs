//! Replacing a user's file (a kubeconfig, the config) without ever losing it: kubectl's lock,
//! a backup first (in Porthole's private state directory), an atomic replace that keeps mode,
//! owner and symlinks; new files created exclusively.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Backups kept of each file; older ones are removed.
pub const BACKUPS_KEPT: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{path} is locked by another writer ({lock} exists); if no kubectl or kind is running, remove it")]
    Locked { path: PathBuf, lock: PathBuf },
    #[error("{path} is read-only: nothing was written")]
    ReadOnly { path: PathBuf },
    #[error("{path} was not written: Porthole is quitting")]
    Quitting { path: PathBuf },
    #[error("no home directory to keep backups in: nothing was written")]
    NoHome,
    #[error("{path}: {what}: {error}")]
    Io {
        path: PathBuf,
        what: &'static str,
        error: io::Error,
    },
}

/// How long to wait for another writer's lock before giving up.
#[derive(Debug, Clone, Copy)]
pub struct LockWait {
    pub timeout: Duration,
    pub poll: Duration,
}

impl Default for LockWait {
    fn default() -> Self {
        LockWait {
            timeout: Duration::from_secs(5),
            poll: Duration::from_millis(50),
        }
    }
}

/// What a write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The file whose bytes changed (a symlink's target).
    pub target: PathBuf,
    /// The copy of the old contents.
    pub backup: PathBuf,
}

/// Whether this process may write the file (the mode bits alone do not say, for other owners).
fn writable(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c_path` is a valid NUL-terminated string for the duration of the call.
    unsafe { libc::access(c_path.as_ptr(), libc::W_OK) == 0 }
}

/// The writes under way in this process, and whether new ones may start: a process that is
/// asked to quit lets them finish ([`finish`]) so that it never leaves a `<file>.lock` behind.
struct InFlight {
    state: Mutex<(usize, bool)>,
    idle: Condvar,
}

static IN_FLIGHT: InFlight = InFlight {
    state: Mutex::new((0, false)),
    idle: Condvar::new(),
};

impl InFlight {
    fn state(&self) -> std::sync::MutexGuard<'_, (usize, bool)> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts a write in; refused once the process is finishing.
    fn enter(&self, path: &Path) -> Result<(), WriteError> {
        let mut state = self.state();
        if state.1 {
            return Err(WriteError::Quitting {
                path: path.to_path_buf(),
            });
        }
        state.0 += 1;
        Ok(())
    }

    fn leave(&self) {
        let mut state = self.state();
        state.0 -= 1;
        if state.0 == 0 {
            self.idle.notify_all();
        }
    }

    fn finish(&self, bound: Duration) -> bool {
        let mut state = self.state();
        state.1 = true;
        let deadline = Instant::now() + bound;
        while state.0 > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = self
                .idle
                .wait_timeout(state, left)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
        true
    }
}

/// Lets the writes under way finish (each has released its lock when this returns) and refuses
/// new ones from now on; for a process about to exit. Waits at most `bound`; false if a write
/// was still under way then. Blocking.
pub fn finish(bound: Duration) -> bool {
    IN_FLIGHT.finish(bound)
}

/// How long [`finish`] may have to wait: another writer's lock, then one write.
pub const FINISH_BOUND: Duration = Duration::from_secs(10);

/// `<path>.lock`, created exclusively, as client-go and kubectl do; removed on drop. A taken
/// lock counts as a write under way until then.
struct Lock {
    path: PathBuf,
    in_flight: &'static InFlight,
}

impl Lock {
    fn take(in_flight: &'static InFlight, path: &Path, wait: LockWait) -> Result<Lock, WriteError> {
        in_flight.enter(path)?;
        match Lock::create(path, wait) {
            Ok(path) => Ok(Lock { path, in_flight }),
            Err(e) => {
                in_flight.leave();
                Err(e)
            }
        }
    }

    fn create(path: &Path, wait: LockWait) -> Result<PathBuf, WriteError> {
        let lock = lock_path(path);
        let deadline = Instant::now() + wait.timeout;
        loop {
            match OpenOptions::new().write(true).create_new(true).open(&lock) {
                Ok(_) => return Ok(lock),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    if Instant::now() >= deadline {
                        return Err(WriteError::Locked {
                            path: path.to_path_buf(),
                            lock,
                        });
                    }
                    // Another writer holds it for the length of a write: the same wait client-go uses.
                    std::thread::sleep(wait.poll);
                }
                Err(error) => return Err(io_error(path, "cannot create its lock file", error)),
            }
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
        self.in_flight.leave();
    }
}

pub fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

fn io_error(path: &Path, what: &'static str, error: io::Error) -> WriteError {
    WriteError::Io {
        path: path.to_path_buf(),
        what,
        error,
    }
}

/// Replaces the contents of `path` with what `edit` makes of its current contents, under the
/// lock, after a backup into `backups`, atomically. `edit` sees the bytes read under the lock,
/// so a concurrent writer's change is never overwritten with a stale copy. Blocking: call it
/// off the runtime.
pub fn replace<E>(
    path: &Path,
    backups: &Backups,
    wait: LockWait,
    edit: impl FnOnce(&str) -> Result<String, E>,
) -> Result<Result<Option<Written>, E>, WriteError> {
    replace_in(&IN_FLIGHT, path, backups, wait, edit)
}

fn replace_in<E>(
    in_flight: &'static InFlight,
    path: &Path,
    backups: &Backups,
    wait: LockWait,
    edit: impl FnOnce(&str) -> Result<String, E>,
) -> Result<Result<Option<Written>, E>, WriteError> {
    let _lock = Lock::take(in_flight, path, wait)?;
    // Through a symlink to the file itself: the link stays a link.
    let target = fs::canonicalize(path).map_err(|e| io_error(path, "cannot resolve it", e))?;
    let meta = fs::metadata(&target).map_err(|e| io_error(&target, "cannot read its metadata", e))?;
    if meta.permissions().mode() & 0o200 == 0 || !writable(&target) {
        return Err(WriteError::ReadOnly { path: target });
    }
    let old = fs::read_to_string(&target).map_err(|e| io_error(&target, "cannot read it", e))?;
    let new = match edit(&old) {
        Ok(new) => new,
        Err(e) => return Ok(Err(e)),
    };
    if new == old {
        return Ok(Ok(None));
    }
    let backup = backups.keep(&target, &old)?;
    write_atomically(&target, new.as_bytes(), &meta)?;
    backups.prune(&target);
    Ok(Ok(Some(Written { target, backup })))
}

/// Where the copies of replaced files go: Porthole's private state directory, never beside the
/// file. A kubeconfig's directory may be a dotfiles repository (the file a symlink into it) or
/// readable by others; its credentials must not be copied there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backups {
    dir: PathBuf,
}

impl Backups {
    /// `backups` in Porthole's state directory: `$XDG_STATE_HOME/porthole/backups`
    /// (`~/.local/state/porthole/backups`) on Linux, `~/Library/Application
    /// Support/Porthole/Backups` on macOS.
    pub fn private() -> Result<Backups, WriteError> {
        state_dir()
            .map(|dir| Backups::at(dir.join(BACKUPS_DIR)))
            .ok_or(WriteError::NoHome)
    }

    /// Backups in `dir` (created 0700 on the first backup).
    pub fn at(dir: impl Into<PathBuf>) -> Backups {
        Backups { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The backups of `target` (a resolved path), oldest first.
    pub fn of(&self, target: &Path) -> Vec<PathBuf> {
        let prefix = backup_prefix(target);
        let mut found: Vec<PathBuf> = fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .map(|e| e.path())
            .collect();
        found.sort();
        found
    }

    /// Writes a copy of `old` (the contents of `target`), readable by its owner only.
    fn keep(&self, target: &Path, old: &str) -> Result<PathBuf, WriteError> {
        let fail = |e| io_error(&self.dir, "cannot keep a backup there", e);
        self.prepare().map_err(fail)?;
        let stamp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        // Nanoseconds, zero-padded: names sort by age.
        let path = self
            .dir
            .join(format!("{}{:020}", backup_prefix(target), stamp.as_nanos()));
        write_new(&path, old.as_bytes(), 0o600).map_err(fail)?;
        Ok(path)
    }

    /// The directory exists, is a directory (not a link to one) of this user's, and is 0700.
    fn prepare(&self) -> io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        match fs::symlink_metadata(&self.dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return fs::DirBuilder::new().recursive(true).mode(0o700).create(&self.dir);
            }
            Err(e) => return Err(e),
            Ok(meta) if !meta.file_type().is_dir() => {
                return Err(io::Error::other(
                    "it is not a directory (a symlink or a file is refused)",
                ));
            }
            // SAFETY: geteuid has no preconditions and cannot fail.
            Ok(meta) if meta.uid() != unsafe { libc::geteuid() } => {
                return Err(io::Error::other(format!(
                    "it belongs to user {}, not to this user: remove it",
                    meta.uid()
                )));
            }
            Ok(meta) if meta.mode() & 0o077 != 0 => {
                fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700))?;
            }
            Ok(_) => {}
        }
        Ok(())
    }

    fn prune(&self, target: &Path) {
        let all = self.of(target);
        for old in all.iter().take(all.len().saturating_sub(BACKUPS_KEPT)) {
            let _ = fs::remove_file(old);
        }
    }
}

/// Porthole's state directory: `$XDG_STATE_HOME/porthole` on Linux, `~/Library/Application
/// Support/Porthole` on macOS.
pub fn state_dir() -> Option<PathBuf> {
    let base = directories::BaseDirs::new()?;
    #[cfg(target_os = "macos")]
    {
        Some(base.data_local_dir().join("Porthole"))
    }
    #[cfg(not(target_os = "macos"))]
    {
        Some(base.state_dir().unwrap_or(base.data_local_dir()).join("porthole"))
    }
}

#[cfg(target_os = "macos")]
const BACKUPS_DIR: &str = "Backups";
#[cfg(not(target_os = "macos"))]
const BACKUPS_DIR: &str = "backups";

/// `config.<hash of the full path>.`: two files called `config` in different directories keep
/// their backups apart, and the name still says which file it was.
fn backup_prefix(target: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    // FNV-1a: stable across releases, unlike std's hasher, so old backups are still pruned.
    let hash = target
        .as_os_str()
        .as_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
        });
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("{name}.{:08x}.", hash as u32)
}

/// A temp file's name beside `path`, unique to this process and call: two writers never share
/// one.
fn temp_beside(path: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    dir.join(format!(".{name}.porthole-tmp.{}.{n}", std::process::id()))
}

fn sync_dir(path: &Path) {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let _ = File::open(dir).and_then(|d| d.sync_all());
}

/// Creates a new file (parent directories too) with `bytes`, never replacing one: the bytes are
/// written beside it and linked into place, so the file appears whole or not at all, and a file
/// created meanwhile by anyone else is left alone. `Ok(false)`: the file exists, untouched (the
/// caller decides whether to [`replace`] it).
pub fn create(path: &Path, bytes: &[u8]) -> io::Result<bool> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir)?;
    }
    let tmp = temp_beside(path);
    // Only a crashed process with this pid could have left it.
    let _ = fs::remove_file(&tmp);
    write_new(&tmp, bytes, 0o644)?;
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    let created = match linked {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
        // A file system without hard links: still exclusive, written in place.
        Err(_) => match write_new(path, bytes, 0o644) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(e),
        },
    };
    if created {
        sync_dir(path);
    }
    Ok(created)
}

/// Writes a file that is Porthole's alone (the app's preferences): whole or not at all, through
/// a temp file of its own renamed into place.
pub fn overwrite(path: &Path, bytes: &[u8]) -> io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir)?;
    }
    let tmp = temp_beside(path);
    let _ = fs::remove_file(&tmp);
    let result = write_new(&tmp, bytes, 0o644).and_then(|()| fs::rename(&tmp, path));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    } else {
        sync_dir(path);
    }
    result
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = OpenOptions::new().write(true).create_new(true).mode(mode).open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Temp file beside the target, same mode and owner, fsync, rename over, fsync the directory.
fn write_atomically(target: &Path, bytes: &[u8], meta: &fs::Metadata) -> Result<(), WriteError> {
    let tmp = temp_beside(target);
    let _ = fs::remove_file(&tmp);
    let result = (|| {
        write_new(&tmp, bytes, meta.mode() & 0o777)?;
        // Keep the owner. If it is not ours and we cannot give it back, stop: replacing the file
        // would hand another user's kubeconfig to us.
        if let Err(e) = std::os::unix::fs::chown(&tmp, Some(meta.uid()), Some(meta.gid()))
            && tmp.metadata().map(|m| (m.uid(), m.gid())).ok() != Some((meta.uid(), meta.gid()))
        {
            return Err(e);
        }
        fs::set_permissions(&tmp, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
        fs::rename(&tmp, target)
    })();
    // Durability of the rename itself; the file is already replaced either way.
    if result.is_ok() {
        sync_dir(target);
    }
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io_error(target, "cannot replace it", e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_edit(text: &str) -> Result<String, ()> {
        Ok(text.to_string())
    }

    #[test]
    fn replaces_atomically_keeping_mode_with_a_backup() {
        let dir = tempfile::tempdir().unwrap();
        let backups = Backups::at(dir.path().join("state/backups"));
        let path = dir.path().join("config");
        fs::write(&path, "old\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let written = replace(&path, &backups, LockWait::default(), |old| {
            Ok::<_, ()>(format!("{old}new\n"))
        })
        .unwrap()
        .unwrap()
        .unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "old\nnew\n");
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::read_to_string(&written.backup).unwrap(), "old\n");
        assert_eq!(
            fs::metadata(&written.backup).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(!lock_path(&path).exists(), "the lock is released");
        assert_eq!(
            replace(&path, &backups, LockWait::default(), no_edit).unwrap().unwrap(),
            None,
            "no change, no write"
        );
    }

    #[test]
    fn keeps_the_last_few_backups() {
        let dir = tempfile::tempdir().unwrap();
        let backups = Backups::at(dir.path().join("state/backups"));
        let path = dir.path().join("config");
        fs::write(&path, "0").unwrap();
        for i in 1..=BACKUPS_KEPT + 3 {
            replace(&path, &backups, LockWait::default(), |_| Ok::<_, ()>(i.to_string()))
                .unwrap()
                .unwrap();
        }
        let kept = backups.of(&fs::canonicalize(&path).unwrap());
        assert_eq!(kept.len(), BACKUPS_KEPT);
        assert_eq!(
            fs::read_to_string(kept.last().unwrap()).unwrap(),
            (BACKUPS_KEPT + 2).to_string()
        );
    }

    #[test]
    fn writes_through_a_symlink_and_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let backups = Backups::at(dir.path().join("state/backups"));
        let real = dir.path().join("real-config");
        let link = dir.path().join("config");
        fs::write(&real, "a").unwrap();
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let written = replace(&link, &backups, LockWait::default(), |_| Ok::<_, ()>("b".into()))
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(written.target, fs::canonicalize(&real).unwrap());
        assert!(fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert_eq!(fs::read_to_string(&real).unwrap(), "b");
    }

    #[test]
    fn a_read_only_file_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let backups = Backups::at(dir.path().join("state/backups"));
        let path = dir.path().join("config");
        fs::write(&path, "a").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        let err = replace(&path, &backups, LockWait::default(), |_| Ok::<_, ()>("b".into())).unwrap_err();
        assert!(matches!(err, WriteError::ReadOnly { .. }), "{err}");
        assert!(err.to_string().contains("read-only"));
        assert_eq!(fs::read_to_string(&path).unwrap(), "a");
        assert!(backups.of(&path).is_empty());
    }

    #[test]
    fn waits_for_another_writers_lock_then_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let backups = Backups::at(dir.path().join("state/backups"));
        let path = dir.path().join("config");
        fs::write(&path, "a").unwrap();
        fs::write(lock_path(&path), "").unwrap();
        let wait = LockWait {
            timeout: Duration::from_millis(200),
            poll: Duration::from_millis(10),
        };
        let err = replace(&path, &backups, wait, |_| Ok::<_, ()>("b".into())).unwrap_err();
        assert!(matches!(err, WriteError::Locked { .. }));
        assert!(err.to_string().contains("config.lock exists"), "{err}");
        assert_eq!(fs::read_to_string(&path).unwrap(), "a");
        assert!(lock_path(&path).exists(), "someone else's lock is left alone");

        // Released while we wait: the write goes ahead.
        let lock = lock_path(&path);
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            fs::remove_file(lock).unwrap();
        });
        let wait = LockWait {
            timeout: Duration::from_secs(10),
            poll: Duration::from_millis(10),
        };
        replace(&path, &backups, wait, |_| Ok::<_, ()>("b".into()))
            .unwrap()
            .unwrap();
        releaser.join().unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "b");
    }

    #[test]
    fn backups_are_private_and_never_beside_a_linked_file() {
        let dir = tempfile::tempdir().unwrap();
        let (dotfiles, kube, state) = (
            dir.path().join("dotfiles"),
            dir.path().join(".kube"),
            dir.path().join("state"),
        );
        fs::create_dir_all(&dotfiles).unwrap();
        fs::create_dir_all(&kube).unwrap();
        let real = dotfiles.join("kubeconfig");
        fs::write(&real, "token: secret\n").unwrap();
        fs::set_permissions(&real, fs::Permissions::from_mode(0o644)).unwrap();
        let link = kube.join("config");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let backups = Backups::at(state.join("porthole/backups"));

        let written = replace(&link, &backups, LockWait::default(), |_| {
            Ok::<_, ()>("token: new\n".into())
        })
        .unwrap()
        .unwrap()
        .unwrap();
        let names = |d: &Path| {
            let mut n: Vec<String> = fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            n.sort();
            n
        };
        assert_eq!(
            names(&dotfiles),
            ["kubeconfig"],
            "no copy of the credentials in the dotfiles"
        );
        assert_eq!(names(&kube), ["config"]);
        assert_eq!(written.backup.parent(), Some(backups.dir()));
        assert_eq!(fs::read_to_string(&written.backup).unwrap(), "token: secret\n");
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(backups.dir()), 0o700);
        assert_eq!(mode(&written.backup), 0o600, "not the original's 0644");
        assert_eq!(
            backups.of(&fs::canonicalize(&real).unwrap()),
            std::slice::from_ref(&written.backup)
        );

        // A backup directory opened up by someone is closed again.
        fs::set_permissions(backups.dir(), fs::Permissions::from_mode(0o755)).unwrap();
        replace(&link, &backups, LockWait::default(), |_| {
            Ok::<_, ()>("token: newer\n".into())
        })
        .unwrap()
        .unwrap();
        assert_eq!(mode(backups.dir()), 0o700);

        // Two files with the same name in different directories keep their backups apart.
        let other = dir.path().join("elsewhere/config");
        fs::create_dir_all(other.parent().unwrap()).unwrap();
        fs::write(&other, "x").unwrap();
        replace(&other, &backups, LockWait::default(), |_| Ok::<_, ()>("y".into()))
            .unwrap()
            .unwrap();
        assert_eq!(backups.of(&fs::canonicalize(&other).unwrap()).len(), 1);
        assert_eq!(backups.of(&fs::canonicalize(&real).unwrap()).len(), 2);
    }

    #[test]
    fn a_backup_directory_that_is_a_symlink_is_refused_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = dir.path().join("shared");
        fs::create_dir_all(&elsewhere).unwrap();
        let backups_dir = dir.path().join("backups");
        std::os::unix::fs::symlink(&elsewhere, &backups_dir).unwrap();
        let path = dir.path().join("config");
        fs::write(&path, "a").unwrap();
        let err = replace(&path, &Backups::at(&backups_dir), LockWait::default(), |_| {
            Ok::<_, ()>("b".into())
        })
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("backups") && text.contains("not a directory"), "{text}");
        assert_eq!(fs::read_to_string(&path).unwrap(), "a", "no edit without its backup");
        assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0);
    }

    #[test]
    fn create_never_replaces_a_file_and_leaves_no_temp_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/porthole.toml");
        assert!(create(&path, b"first").unwrap());
        assert!(!create(&path, b"second").unwrap(), "the existing file is reported");
        assert_eq!(fs::read_to_string(&path).unwrap(), "first");

        // Writers racing for a new file: exactly one creates it, whole; nobody's bytes are lost
        // to a rename over it.
        let racing = dir.path().join("race.toml");
        let winners: Vec<(usize, bool)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|i| {
                    let racing = &racing;
                    s.spawn(move || (i, create(racing, format!("writer {i}").as_bytes()).unwrap()))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let created: Vec<usize> = winners.iter().filter(|(_, c)| *c).map(|(i, _)| *i).collect();
        assert_eq!(created.len(), 1, "{winners:?}");
        assert_eq!(fs::read_to_string(&racing).unwrap(), format!("writer {}", created[0]));
        let mut left: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["race.toml", "sub"], "no temp files");
    }

    #[test]
    fn overwrite_replaces_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app/prefs.json");
        overwrite(&path, b"{}").unwrap();
        overwrite(&path, b"{\"a\":1}").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "{\"a\":1}");
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn finishing_lets_a_write_under_way_complete_and_release_its_lock_then_refuses_new_ones() {
        static WRITES: InFlight = InFlight {
            state: Mutex::new((0, false)),
            idle: Condvar::new(),
        };
        let dir = tempfile::tempdir().unwrap();
        let backups = Backups::at(dir.path().join("backups"));
        let path = dir.path().join("config");
        fs::write(&path, "old").unwrap();
        let (editing, in_edit) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        std::thread::scope(|s| {
            let (path, backups) = (&path, &backups);
            let writer = s.spawn(move || {
                replace_in(&WRITES, path, backups, LockWait::default(), move |_| {
                    editing.send(()).unwrap();
                    released.recv().unwrap();
                    Ok::<_, ()>("new".into())
                })
            });
            in_edit.recv().unwrap();
            assert!(lock_path(path).exists(), "the write holds its lock");
            let finisher = s.spawn(move || {
                let done = WRITES.finish(Duration::from_secs(30));
                (done, lock_path(path).exists(), fs::read_to_string(path).unwrap())
            });
            // Once new writes are refused, the finisher is waiting for ours.
            while !WRITES.state().1 {
                std::thread::yield_now();
            }
            release.send(()).unwrap();
            let (done, locked, text) = finisher.join().unwrap();
            assert!(done);
            assert!(!locked, "finish returns only once the lock is gone");
            assert_eq!(text, "new", "and the write is complete");
            writer.join().unwrap().unwrap().unwrap();
        });
        let refused = replace_in(&WRITES, &path, &backups, LockWait::default(), |_| {
            Ok::<_, ()>("newer".into())
        });
        assert!(matches!(refused, Err(WriteError::Quitting { .. })), "{refused:?}");
        assert_eq!(fs::read_to_string(&path).unwrap(), "new");
        assert!(!lock_path(&path).exists());
    }

    #[test]
    fn finishing_gives_up_at_its_bound() {
        static WRITES: InFlight = InFlight {
            state: Mutex::new((0, false)),
            idle: Condvar::new(),
        };
        WRITES.enter(Path::new("x")).unwrap();
        assert!(!WRITES.finish(Duration::from_millis(10)), "a write still under way");
        WRITES.leave();
        assert!(WRITES.finish(Duration::from_millis(10)));
    }
}
