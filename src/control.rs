//! The control socket: a Unix socket (mode 0600) speaking JSON lines, served by a running engine
//! (`porthole up` or the tray app) and used by `porthole status|wait|enable|disable`.

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::engine::{Engine, Snapshot};
use crate::lines::BoundedLines;

/// Environment variable naming the control socket when `--control` is not given.
pub const CONTROL_ENV: &str = "PORTHOLE_CONTROL";

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("another Porthole is already running (control socket {0})")]
    AlreadyRunning(PathBuf),
    #[error("no Porthole is running (nothing answers on {path}: {error}); start one with `porthole up`")]
    NotRunning { path: PathBuf, error: io::Error },
    #[error("control socket {path}: {error}")]
    Io { path: PathBuf, error: io::Error },
    #[error(
        "{path} is {what}, not a control socket: Porthole replaces only a socket there \
         (did you mean `--config`?)"
    )]
    NotASocket { path: PathBuf, what: &'static str },
    #[error("control socket {path} is not trusted: {error}")]
    Untrusted { path: PathBuf, error: io::Error },
    #[error("control socket: bad message: {0}")]
    Protocol(String),
    #[error("{0}")]
    Refused(String),
}

/// A request, one JSON object per line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    /// One snapshot with live counters.
    Status,
    /// The snapshot now and after every change, until the client hangs up.
    Watch,
    Enable {
        name: String,
    },
    Disable {
        name: String,
    },
}

/// A reply, one JSON object per line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "kebab-case")]
pub enum Reply {
    Snapshot { snapshot: Box<Snapshot> },
    Done,
    Error { message: String },
}

/// The socket path: `explicit`, else `$PORTHOLE_CONTROL`, else `porthole/control.sock` in the
/// user's runtime dir (`$XDG_RUNTIME_DIR`), else in a per-user directory under the temp dir.
pub fn socket_path(explicit: Option<&Path>) -> PathBuf {
    if let Some(path) = explicit {
        return path.to_path_buf();
    }
    if let Some(path) = std::env::var_os(CONTROL_ENV).filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let base = directories::BaseDirs::new().and_then(|d| d.runtime_dir().map(Path::to_path_buf));
    let dir = match base {
        Some(runtime) => runtime.join("porthole"),
        // SAFETY: getuid has no preconditions and cannot fail.
        None => std::env::temp_dir().join(format!("porthole-{}", unsafe { libc::getuid() })),
    };
    dir.join("control.sock")
}

/// Binds the control socket, replacing a stale one; fails if a live engine answers on it.
pub async fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    let io_err = |error| ControlError::Io {
        path: path.to_path_buf(),
        error,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io_err)?;
        }
        check_private(dir).map_err(io_err)?;
    }
    if socket_at(path)? {
        if UnixStream::connect(path).await.is_ok() {
            return Err(ControlError::AlreadyRunning(path.to_path_buf()));
        }
        debug!(path = %path.display(), "removing a stale control socket");
        std::fs::remove_file(path).map_err(io_err)?;
    }
    // Bound under a temporary name, made 0600, then renamed into place: nobody can connect in
    // between.
    let staging = path.with_extension(format!("tmp{}", std::process::id()));
    if socket_at(&staging)? {
        std::fs::remove_file(&staging).map_err(io_err)?;
    }
    let listener = UnixListener::bind(&staging).map_err(io_err)?;
    std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o600)).map_err(io_err)?;
    std::fs::rename(&staging, path).map_err(io_err)?;
    Ok(listener)
}

/// Whether a socket is at `path` (`false`: nothing is); anything else there (a file, a
/// directory, a symlink: a mistyped `--control`) is refused, never removed.
fn socket_at(path: &Path) -> Result<bool, ControlError> {
    use std::os::unix::fs::FileTypeExt;
    let kind = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta.file_type(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(error) => {
            return Err(ControlError::Io {
                path: path.to_path_buf(),
                error,
            });
        }
    };
    let what = match kind {
        k if k.is_socket() => return Ok(true),
        k if k.is_file() => "a file",
        k if k.is_dir() => "a directory",
        k if k.is_symlink() => "a symbolic link",
        _ => "not a socket",
    };
    Err(ControlError::NotASocket {
        path: path.to_path_buf(),
        what,
    })
}

/// Removes the control socket at `path` when the engine stops; anything else found there by
/// then is left alone.
pub fn remove(path: &Path) {
    if matches!(socket_at(path), Ok(true)) {
        let _ = std::fs::remove_file(path);
    }
}

/// The socket's directory must be ours or root's, and writable by others only if sticky (like
/// /tmp): otherwise another user could swap the socket for their own (say, a
/// `/tmp/porthole-1000` created first by someone else).
///
/// The directory itself must be one, not a symlink to one (whoever owns the link could point it
/// elsewhere later). Checked by the server before it binds and by every client before it trusts
/// what answers there.
fn check_private(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.file_type().is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "unsafe directory: it is a symbolic link or not a directory; it must be a real directory of yours",
        ));
    }
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    let mode = meta.mode();
    let sticky = mode & 0o1000 != 0;
    if (meta.uid() != uid && meta.uid() != 0) || (mode & 0o022 != 0 && !sticky) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "unsafe directory: owner uid {}, mode {:o}; it must be yours and not writable by others",
                meta.uid(),
                mode & 0o7777
            ),
        ));
    }
    Ok(())
}

/// Answers requests until `cancel`; removes the socket file afterwards.
pub async fn serve(engine: Engine, listener: UnixListener, path: PathBuf, cancel: CancellationToken) {
    let mut failed = crate::descriptors::Throttle::new(std::time::Duration::from_secs(10));
    loop {
        let stream = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors, usually: back off instead of spinning.
                    if let Some(unsaid) = failed.note(std::time::Instant::now()) {
                        warn!(error = %e, unsaid, "control socket accept failed");
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (engine, cancel) = (engine.clone(), cancel.clone());
        tokio::spawn(async move {
            if let Err(e) = session(engine, stream, cancel).await {
                debug!(error = %e, "control session ended");
            }
        });
    }
    remove(&path);
}

/// Bound on one request line: requests are a few dozen bytes.
const MAX_REQUEST: usize = 64 << 10;
/// Bound on one reply line: a snapshot of hundreds of forwards is well under this.
const MAX_REPLY: usize = 16 << 20;

async fn session(engine: Engine, stream: UnixStream, cancel: CancellationToken) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BoundedLines::new(read, MAX_REQUEST);
    while let Some(line) = lines.next_line().await? {
        let request = match serde_json::from_str::<Request>(&line) {
            Ok(request) => request,
            Err(e) => {
                send(
                    &mut write,
                    &Reply::Error {
                        message: format!("bad request: {e}"),
                    },
                )
                .await?;
                continue;
            }
        };
        match request {
            Request::Status => {
                let snapshot = Box::new(engine.status().await);
                send(&mut write, &Reply::Snapshot { snapshot }).await?;
            }
            Request::Watch => return watch(engine, write, cancel).await,
            Request::Enable { name } => toggle(&engine, &mut write, &name, true).await?,
            Request::Disable { name } => toggle(&engine, &mut write, &name, false).await?,
        }
    }
    Ok(())
}

async fn toggle(engine: &Engine, write: &mut OwnedWriteHalf, name: &str, enabled: bool) -> io::Result<()> {
    let reply = match engine.set_enabled(name, enabled).await {
        Ok(()) => Reply::Done,
        Err(e) => Reply::Error { message: e.to_string() },
    };
    send(write, &reply).await
}

async fn watch(engine: Engine, mut write: OwnedWriteHalf, cancel: CancellationToken) -> io::Result<()> {
    let mut snapshots = engine.snapshot();
    loop {
        let snapshot = Box::new(snapshots.borrow_and_update().clone());
        send(&mut write, &Reply::Snapshot { snapshot }).await?;
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            changed = snapshots.changed() => if changed.is_err() { return Ok(()) },
        }
    }
}

async fn send(write: &mut OwnedWriteHalf, reply: &Reply) -> io::Result<()> {
    let mut line = serde_json::to_vec(reply).map_err(io::Error::other)?;
    line.push(b'\n');
    write.write_all(&line).await
}

/// A connection to a running engine.
pub struct Client {
    path: PathBuf,
    lines: BoundedLines<OwnedReadHalf>,
    write: OwnedWriteHalf,
}

impl Client {
    /// Connects to the engine at `path`, after checking that nobody else could have put the
    /// socket there: its directory is private (as the server checks), and the process that
    /// answers runs as this user (or root).
    pub async fn connect(path: &Path) -> Result<Client, ControlError> {
        let untrusted = |error: io::Error| ControlError::Untrusted {
            path: path.to_path_buf(),
            error,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && dir.exists()
        {
            check_private(dir).map_err(|e| untrusted(io::Error::new(e.kind(), format!("{}: {e}", dir.display()))))?;
        }
        let stream = UnixStream::connect(path)
            .await
            .map_err(|error| ControlError::NotRunning {
                path: path.to_path_buf(),
                error,
            })?;
        let peer = stream.peer_cred().map_err(untrusted)?;
        // SAFETY: getuid has no preconditions and cannot fail.
        let uid = unsafe { libc::getuid() };
        if peer.uid() != uid && peer.uid() != 0 {
            return Err(untrusted(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("the process answering runs as user {}, not as you", peer.uid()),
            )));
        }
        let (read, write) = stream.into_split();
        Ok(Client {
            path: path.to_path_buf(),
            lines: BoundedLines::new(read, MAX_REPLY),
            write,
        })
    }

    async fn request(&mut self, request: &Request) -> Result<(), ControlError> {
        let mut line = serde_json::to_vec(request).map_err(|e| ControlError::Protocol(e.to_string()))?;
        line.push(b'\n');
        self.write.write_all(&line).await.map_err(|error| ControlError::Io {
            path: self.path.clone(),
            error,
        })
    }

    async fn reply(&mut self) -> Result<Reply, ControlError> {
        let line = self.lines.next_line().await.map_err(|error| ControlError::Io {
            path: self.path.clone(),
            error,
        })?;
        let line = line.ok_or_else(|| ControlError::Protocol("the engine closed the connection".into()))?;
        serde_json::from_str(&line).map_err(|e| ControlError::Protocol(e.to_string()))
    }

    async fn snapshot(&mut self) -> Result<Snapshot, ControlError> {
        match self.reply().await? {
            Reply::Snapshot { snapshot } => Ok(*snapshot),
            Reply::Error { message } => Err(ControlError::Refused(message)),
            other => Err(ControlError::Protocol(format!("expected a snapshot, got {other:?}"))),
        }
    }

    pub async fn status(&mut self) -> Result<Snapshot, ControlError> {
        self.request(&Request::Status).await?;
        self.snapshot().await
    }

    /// Starts a watch; then call [`Client::next_snapshot`] repeatedly.
    pub async fn watch(&mut self) -> Result<(), ControlError> {
        self.request(&Request::Watch).await
    }

    pub async fn next_snapshot(&mut self) -> Result<Snapshot, ControlError> {
        self.snapshot().await
    }

    pub async fn set_enabled(&mut self, name: &str, enabled: bool) -> Result<(), ControlError> {
        let name = name.to_string();
        let request = if enabled {
            Request::Enable { name }
        } else {
            Request::Disable { name }
        };
        self.request(&request).await?;
        match self.reply().await? {
            Reply::Done => Ok(()),
            Reply::Error { message } => Err(ControlError::Refused(message)),
            other => Err(ControlError::Protocol(format!("unexpected reply {other:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_a_socket_is_ever_replaced() {
        let dir = tempfile::tempdir().unwrap();
        // A mistyped `--control ~/notes.toml`: refused, and the file kept byte for byte.
        let notes = dir.path().join("notes.toml");
        std::fs::write(&notes, "keep me\n").unwrap();
        let refused = bind(&notes).await.unwrap_err();
        assert!(
            matches!(&refused, ControlError::NotASocket { what: "a file", .. }),
            "{refused}"
        );
        assert!(refused.to_string().contains("notes.toml is a file"), "{refused}");
        assert_eq!(std::fs::read_to_string(&notes).unwrap(), "keep me\n");
        // Nor through a symbolic link, nor a directory.
        let link = dir.path().join("link.sock");
        std::os::unix::fs::symlink(&notes, &link).unwrap();
        assert!(matches!(
            bind(&link).await,
            Err(ControlError::NotASocket {
                what: "a symbolic link",
                ..
            })
        ));
        assert_eq!(std::fs::read_to_string(&notes).unwrap(), "keep me\n");
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        assert!(matches!(
            bind(&sub).await,
            Err(ControlError::NotASocket {
                what: "a directory",
                ..
            })
        ));
        // A live socket is another Porthole's; a stale one (its process gone) is replaced.
        let path = dir.path().join("control.sock");
        let live = bind(&path).await.unwrap();
        assert!(matches!(bind(&path).await, Err(ControlError::AlreadyRunning(_))));
        drop(live);
        let again = bind(&path).await.expect("a stale socket is replaced");
        drop(again);
        remove(&path);
        assert!(!path.exists());
        // At exit only a socket is removed: a file put there meanwhile stays.
        std::fs::write(&path, "not ours").unwrap();
        remove(&path);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "not ours");
    }
}
