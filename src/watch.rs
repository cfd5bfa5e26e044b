//! Following files other programs write: the kubeconfig (kubectl, kind, k3d) and the config
//! file (an editor, or Porthole's own save). Their directories are watched, not the files, so a
//! replacement by rename (what kubectl, kind and most editors do) is seen, and so is a symlink's
//! target. A burst of writes (write, rename, chmod) is one change.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc;

/// The longest a stream of changes is coalesced before it is reported anyway.
const SETTLE_BOUND: u32 = 10;

/// A watch on some files. Dropping it stops the watch.
pub struct Files {
    _watcher: notify::RecommendedWatcher,
    changes: mpsc::UnboundedReceiver<()>,
    settle: Duration,
}

impl Files {
    /// Watches `files` (each may be missing, or a symlink); a change is reported once `settle`
    /// has passed with no further change.
    pub fn new(files: &[PathBuf], settle: Duration) -> notify::Result<Files> {
        use notify::Watcher;
        let mut watched: Vec<PathBuf> = Vec::new();
        for file in files {
            watched.push(file.clone());
            // A symlinked file changes where its target lives.
            if let Ok(target) = std::fs::canonicalize(file)
                && target != *file
            {
                watched.push(target);
            }
        }
        let names = watched.clone();
        let (tx, changes) = mpsc::unbounded_channel();
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            if event.kind.is_access() {
                return;
            }
            if event.paths.iter().any(|p| names.iter().any(|n| same_file_name(p, n))) {
                let _ = tx.send(());
            }
        })?;
        let mut dirs: Vec<&Path> = watched
            .iter()
            .filter_map(|f| f.parent())
            .filter(|d| d.is_dir())
            .collect();
        dirs.sort();
        dirs.dedup();
        for dir in dirs {
            watcher.watch(dir, notify::RecursiveMode::NonRecursive)?;
        }
        Ok(Files {
            _watcher: watcher,
            changes,
            settle,
        })
    }

    /// Waits for a change, then until the files have been quiet for `settle` (at most ten
    /// times that while they keep changing): one call per burst. `None` if the watch ended.
    pub async fn changed(&mut self) -> Option<()> {
        self.changes.recv().await?;
        for _ in 0..SETTLE_BOUND {
            match tokio::time::timeout(self.settle, self.changes.recv()).await {
                Ok(Some(())) => continue,
                Ok(None) => return None,
                Err(_quiet) => return Some(()),
            }
        }
        while self.changes.try_recv().is_ok() {}
        Some(())
    }
}

fn same_file_name(event: &Path, file: &Path) -> bool {
    event.file_name() == file.file_name() && event.parent().map(normalize) == file.parent().map(normalize)
}

fn normalize(dir: &Path) -> PathBuf {
    std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTLE: Duration = Duration::from_millis(50);

    async fn next_change(files: &mut Files) {
        let bound = Duration::from_secs(10);
        tokio::time::timeout(bound, files.changed())
            .await
            .expect("change seen")
            .expect("watch running");
    }

    #[tokio::test]
    async fn an_in_place_write_is_seen_and_other_files_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config");
        std::fs::write(&file, "a").unwrap();
        let mut files = Files::new(std::slice::from_ref(&file), SETTLE).unwrap();
        std::fs::write(dir.path().join("unrelated"), "x").unwrap();
        std::fs::write(&file, "b").unwrap();
        next_change(&mut files).await;
        // The unrelated write and the burst around ours were one change, not several.
        assert!(
            tokio::time::timeout(SETTLE * 4, files.changed()).await.is_err(),
            "nothing else changed"
        );
    }

    #[tokio::test]
    async fn a_replacement_by_rename_and_a_symlink_target_are_seen() {
        let dir = tempfile::tempdir().unwrap();
        let target_dir = tempfile::tempdir().unwrap();
        let target = target_dir.path().join("real");
        std::fs::write(&target, "a").unwrap();
        let link = dir.path().join("config");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let mut files = Files::new(std::slice::from_ref(&link), SETTLE).unwrap();
        let tmp = target_dir.path().join("real.tmp");
        std::fs::write(&tmp, "c").unwrap();
        std::fs::rename(&tmp, &target).unwrap();
        next_change(&mut files).await;
        assert_eq!(std::fs::read_to_string(&link).unwrap(), "c");
    }

    #[tokio::test]
    async fn a_file_created_later_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        let mut files = Files::new(std::slice::from_ref(&file), SETTLE).unwrap();
        std::fs::write(&file, "new").unwrap();
        next_change(&mut files).await;
    }
}
