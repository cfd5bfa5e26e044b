//! Logs go to a file in the OS's log directory ("Open logs" in the menu shows it) and to stderr.

use std::fs::{File, OpenOptions};
use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::Context;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::MakeWriterExt;

/// Past this size the log is moved to `porthole.log.1` at start, so it never grows without bound.
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
    if rotate && std::fs::metadata(&path).is_ok_and(|m| m.len() > ROTATE_AT) {
        let _ = std::fs::rename(&path, dir.join("porthole.log.1"));
    }
    let file: File = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
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
