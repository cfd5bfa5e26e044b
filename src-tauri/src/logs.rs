//! Logs go to a file in the OS's log directory ("Open logs" in the menu shows it) and to stderr.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::MakeWriterExt;

/// Past this size the log is moved to `porthole.log.1` (replacing the older one) and a new one
/// started, at start and while running: an app that runs for weeks keeps at most twice this.
const ROTATE_AT: u64 = 5 << 20;

/// `~/Library/Logs/Porthole` on macOS; `$XDG_STATE_HOME/porthole` (`~/.local/state/porthole`) on
/// Linux; the local data dir elsewhere.
pub fn dir() -> Option<PathBuf> {
    #[cfg(target_os = "macos")]
    {
        directories::BaseDirs::new().map(|d| d.home_dir().join("Library/Logs/Porthole"))
    }
    #[cfg(not(target_os = "macos"))]
    {
        let dirs = directories::ProjectDirs::from("", "", "porthole")?;
        Some(dirs.state_dir().unwrap_or(dirs.data_local_dir()).to_path_buf())
    }
}

/// Starts logging; returns the log directory. Only the app rotates the log (the settings
/// window's process appends to the same file).
pub fn init(rotate: bool) -> anyhow::Result<PathBuf> {
    let dir = dir().context("no home directory to keep logs in")?;
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join("porthole.log");
    let limit = if rotate { ROTATE_AT } else { u64::MAX };
    let file = Rotating::open(path.clone(), limit).with_context(|| format!("cannot open {}", path.display()))?;
    // kube's own logs are off: the engine reports what they would say as causes.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,kube=off,kube_client=off,kube_runtime=off,tao=warn,wry=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(Mutex::new(file).and(std::io::stderr))
        .init();
    Ok(dir)
}

/// An append-only log file that moves itself to `<name>.1` once it passes its limit. Only the
/// app rotates; the settings window's process appends to whichever file it opened.
pub struct Rotating {
    path: PathBuf,
    file: File,
    len: u64,
    limit: u64,
}

impl Rotating {
    pub fn open(path: PathBuf, limit: u64) -> io::Result<Rotating> {
        let mut log = Rotating {
            file: append(&path)?,
            len: 0,
            path,
            limit,
        };
        log.len = log.file.metadata()?.len();
        if log.len > limit {
            log.rotate()?;
        }
        Ok(log)
    }

    fn rotate(&mut self) -> io::Result<()> {
        let mut old = self.path.as_os_str().to_owned();
        old.push(".1");
        std::fs::rename(&self.path, PathBuf::from(old))?;
        self.file = append(&self.path)?;
        self.len = 0;
        Ok(())
    }
}

fn append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

impl Write for Rotating {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Whole lines stay in one file: rotate before a write that would pass the limit.
        if self.len > 0 && self.len + buf.len() as u64 > self.limit {
            // A log that cannot rotate keeps writing where it is rather than lose lines.
            let _ = self.rotate();
        }
        let n = self.file.write(buf)?;
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_stays_bounded_while_running_and_keeps_the_previous_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("porthole.log");
        let mut log = Rotating::open(path.clone(), 1000).unwrap();
        for i in 0..1000 {
            // As tracing writes an event: one line, formatted first, in one write.
            log.write_all(format!("line {i:04} of a long-running app\n").as_bytes())
                .unwrap();
        }
        let len = |p: &Path| std::fs::metadata(p).unwrap().len();
        let previous = dir.path().join("porthole.log.1");
        assert!(len(&path) <= 1000, "{}", len(&path));
        assert!(len(&previous) <= 1000);
        let last = std::fs::read_to_string(&path).unwrap();
        assert!(last.ends_with("line 0999 of a long-running app\n"), "{last}");
        let before = std::fs::read_to_string(&previous).unwrap();
        assert!(before.lines().all(|l| l.starts_with("line ")), "lines are whole");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2, "two files, no more");

        // Reopened past its limit (the app restarting): rotated at once.
        std::fs::write(&path, "x".repeat(2000)).unwrap();
        Rotating::open(path.clone(), 1000).unwrap();
        assert_eq!(len(&path), 0);
        assert_eq!(len(&previous), 2000);
    }
}
