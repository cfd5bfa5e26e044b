//! Replacing a user's file (a kubeconfig, the config) without ever losing it: kubectl's lock,
//! a backup first, an atomic replace that keeps mode, owner and symlinks.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// Backups kept next to a file; older ones are removed.
pub const BACKUPS_KEPT: usize = 5;
/// The infix of backup file names: `config.porthole-backup.<timestamp>`.
const BACKUP_INFIX: &str = ".porthole-backup.";

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{path} is locked by another writer ({lock} exists); if no kubectl or kind is running, remove it")]
    Locked { path: PathBuf, lock: PathBuf },
    #[error("{path} is read-only: nothing was written")]
    ReadOnly { path: PathBuf },
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

/// `<path>.lock`, created exclusively, as client-go and kubectl do; removed on drop.
struct Lock(PathBuf);

impl Lock {
    fn take(path: &Path, wait: LockWait) -> Result<Lock, WriteError> {
        let lock = lock_path(path);
        let deadline = Instant::now() + wait.timeout;
        loop {
            match OpenOptions::new().write(true).create_new(true).open(&lock) {
                Ok(_) => return Ok(Lock(lock)),
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
        let _ = fs::remove_file(&self.0);
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
/// lock, after a backup, atomically. `edit` sees the bytes read under the lock, so a concurrent
/// writer's change is never overwritten with a stale copy. Blocking: call it off the runtime.
pub fn replace<E>(
    path: &Path,
    wait: LockWait,
    edit: impl FnOnce(&str) -> Result<String, E>,
) -> Result<Result<Option<Written>, E>, WriteError> {
    let _lock = Lock::take(path, wait)?;
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
    let backup = backup(&target, &old, &meta)?;
    write_atomically(&target, new.as_bytes(), &meta)?;
    prune_backups(&target);
    Ok(Ok(Some(Written { target, backup })))
}

fn backup(target: &Path, old: &str, meta: &fs::Metadata) -> Result<PathBuf, WriteError> {
    let stamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let mut name = target.as_os_str().to_owned();
    // Nanoseconds, zero-padded: names sort by age.
    name.push(format!("{BACKUP_INFIX}{:020}", stamp.as_nanos()));
    let path = PathBuf::from(name);
    write_new(&path, old.as_bytes(), meta.mode() & 0o777).map_err(|e| io_error(target, "cannot write a backup", e))?;
    // The backup belongs to whoever owns the file (`sudo` must not leave root-owned copies).
    let _ = std::os::unix::fs::chown(&path, Some(meta.uid()), Some(meta.gid()));
    Ok(path)
}

/// The backups of `target`, oldest first.
pub fn backups(target: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (target.parent(), target.file_name()) else {
        return Vec::new();
    };
    let prefix = format!("{}{BACKUP_INFIX}", name.to_string_lossy());
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect();
    found.sort();
    found
}

fn prune_backups(target: &Path) {
    let all = backups(target);
    for old in all.iter().take(all.len().saturating_sub(BACKUPS_KEPT)) {
        let _ = fs::remove_file(old);
    }
}

/// Writes a file that is ours alone (no lock, no backup: a new config, the app's preferences):
/// parent directories created, the bytes written beside it and renamed into place, so a crash
/// never leaves half a file.
pub fn create(path: &Path, bytes: &[u8]) -> io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = fs::remove_file(&tmp);
    write_new(&tmp, bytes, 0o644)?;
    fs::rename(&tmp, path)
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = OpenOptions::new().write(true).create_new(true).mode(mode).open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Temp file beside the target, same mode and owner, fsync, rename over, fsync the directory.
fn write_atomically(target: &Path, bytes: &[u8], meta: &fs::Metadata) -> Result<(), WriteError> {
    let dir = target.parent().unwrap_or(Path::new("."));
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.porthole-tmp.{}", std::process::id()));
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
        let _ = File::open(dir).and_then(|d| d.sync_all());
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
        let path = dir.path().join("config");
        fs::write(&path, "old\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let written = replace(&path, LockWait::default(), |old| Ok::<_, ()>(format!("{old}new\n")))
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
            replace(&path, LockWait::default(), no_edit).unwrap().unwrap(),
            None,
            "no change, no write"
        );
    }

    #[test]
    fn keeps_the_last_few_backups() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        fs::write(&path, "0").unwrap();
        for i in 1..=BACKUPS_KEPT + 3 {
            replace(&path, LockWait::default(), |_| Ok::<_, ()>(i.to_string()))
                .unwrap()
                .unwrap();
        }
        let kept = backups(&path);
        assert_eq!(kept.len(), BACKUPS_KEPT);
        assert_eq!(
            fs::read_to_string(kept.last().unwrap()).unwrap(),
            (BACKUPS_KEPT + 2).to_string()
        );
    }

    #[test]
    fn writes_through_a_symlink_and_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real-config");
        let link = dir.path().join("config");
        fs::write(&real, "a").unwrap();
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let written = replace(&link, LockWait::default(), |_| Ok::<_, ()>("b".into()))
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
        let path = dir.path().join("config");
        fs::write(&path, "a").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        let err = replace(&path, LockWait::default(), |_| Ok::<_, ()>("b".into())).unwrap_err();
        assert!(matches!(err, WriteError::ReadOnly { .. }), "{err}");
        assert!(err.to_string().contains("read-only"));
        assert_eq!(fs::read_to_string(&path).unwrap(), "a");
        assert!(backups(&path).is_empty());
    }

    #[test]
    fn waits_for_another_writers_lock_then_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        fs::write(&path, "a").unwrap();
        fs::write(lock_path(&path), "").unwrap();
        let wait = LockWait {
            timeout: Duration::from_millis(200),
            poll: Duration::from_millis(10),
        };
        let err = replace(&path, wait, |_| Ok::<_, ()>("b".into())).unwrap_err();
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
        replace(&path, wait, |_| Ok::<_, ()>("b".into())).unwrap().unwrap();
        releaser.join().unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "b");
    }
}
