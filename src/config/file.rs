//! The config file as a running Porthole owns it: where it is, what was last read from or
//! written to it, its changes as validated configs, and saves from the settings page.
//!
//! Both front ends (`porthole up` and the app) follow the file through this one type: a hand
//! edit, a save, or SIGHUP ("reload now") each yield a config the engine applies by diff
//! ([`super::plan`]); runtime on/off toggles survive them by one policy ([`super::Overrides`]).
//! Porthole's own saves are recognised by content, not by timing: the watch reads the file
//! and skips a config equal to the one last read or written.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::edit::{self, Edit, EditError};
use super::{Config, ConfigError, Source, config_path, preset_text};
use crate::write::Backups;

/// How long a burst of writes (an editor's write, rename and chmod) may take before the file is
/// read.
const SETTLE: Duration = Duration::from_millis(100);

/// What the file held when last read or written.
#[derive(Debug, PartialEq)]
enum Seen {
    /// Nothing yet: running a preset, no file.
    Nothing,
    Valid(Config),
    /// Refused, with the error as told.
    Invalid(String),
}

/// What reading the file gave.
#[derive(Debug)]
pub enum Reload {
    /// A valid config, to apply.
    Changed(Config),
    /// The file is not valid: the running config stays, and this is told.
    Invalid(ConfigError),
}

/// The config file of a running Porthole.
#[derive(Debug)]
pub struct ConfigFile {
    /// `None` when this system has no config directory and no file was named.
    path: Option<PathBuf>,
    /// What the running config first came from.
    source: Source,
    /// The text a first save starts from when the file does not exist: the preset in effect.
    base: String,
    /// Held across a save, so a read never sees a half-recorded one.
    seen: Mutex<Seen>,
}

impl ConfigFile {
    /// The file `explicit`, `$PORTHOLE_CONFIG` or the default path names, and the config to
    /// start with: the file's, or the default preset's when there is no file (a save then
    /// creates the file from the preset's text). A broken file gives its error beside a
    /// `ConfigFile` that still follows it, so a front end can start and wait for a fix.
    ///
    /// `has_context` tells whether the kubeconfig has a context (`kubeconfig::has_context`):
    /// the default preset is the first run only for the cluster it is for.
    pub fn open(
        explicit: Option<&Path>,
        has_context: impl FnOnce(&str) -> bool,
    ) -> (ConfigFile, Result<Config, ConfigError>) {
        let path = config_path(explicit);
        let discovered = Config::discover(explicit, has_context);
        let file = ConfigFile::new(
            path,
            discovered
                .as_ref()
                .map(|(config, source)| (config.clone(), source.clone()))
                .map_err(|e| e.to_string()),
        );
        (file, discovered.map(|(config, _)| config))
    }

    /// The file at `path` (if any), given what was discovered there.
    fn new(path: Option<PathBuf>, discovered: Result<(Config, Source), String>) -> ConfigFile {
        let (source, loaded) = match discovered {
            Ok((config, source)) => (source, Ok(config)),
            Err(e) => (Source::File(path.clone().unwrap_or_default()), Err(e)),
        };
        let base = match &source {
            Source::Preset(name) => preset_text(name).unwrap_or_default().to_string(),
            Source::Empty => super::EMPTY.to_string(),
            Source::File(_) => String::new(),
        };
        let seen = match (&source, &loaded) {
            (Source::Preset(_) | Source::Empty, _) => Seen::Nothing,
            (Source::File(_), Ok(config)) => Seen::Valid(config.clone()),
            (Source::File(_), Err(e)) => Seen::Invalid(e.clone()),
        };
        ConfigFile {
            path,
            source,
            base,
            seen: Mutex::new(seen),
        }
    }

    /// Where settings are saved: the file in use, or the one a save creates.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// What the running config first came from.
    pub fn source(&self) -> &Source {
        &self.source
    }

    /// Reads the file now (SIGHUP): its config even if unchanged; `None` when there is no file
    /// (the preset runs, nothing to reload).
    pub fn reload(&self) -> Option<Reload> {
        self.read(false)
    }

    /// Reads the file; with `skip_seen`, `None` also when it holds what was last read or
    /// written (Porthole's own save, an editor saving twice, a broken file still broken).
    fn read(&self, skip_seen: bool) -> Option<Reload> {
        let path = self.path.as_deref()?;
        if !path.exists() {
            return None;
        }
        let mut seen = self.seen();
        let (now, reload) = match Config::load(path) {
            Ok(config) => (Seen::Valid(config.clone()), Reload::Changed(config)),
            Err(e) => (Seen::Invalid(e.to_string()), Reload::Invalid(e)),
        };
        if skip_seen && *seen == now {
            return None;
        }
        *seen = now;
        Some(reload)
    }

    /// Whether `config` is still what the file was last seen to hold (a save since makes an
    /// older read stale: the saver applies its own).
    pub fn is_latest(&self, config: &Config) -> bool {
        matches!(&*self.seen(), Seen::Valid(seen) if seen == config)
    }

    /// Whether the file was last seen broken (its error is shown until a valid one is read).
    pub fn invalid(&self) -> Option<String> {
        match &*self.seen() {
            Seen::Invalid(e) => Some(e.clone()),
            _ => None,
        }
    }

    /// Applies `edit` to the file (comments kept, a backup in `backups`, written atomically;
    /// created from the preset in effect if absent) and returns the new config, recorded so
    /// that the watch does not report the save back. Blocking.
    pub fn save(&self, edit: &Edit, backups: &Backups) -> Result<Config, EditError> {
        let path = self.path.as_deref().ok_or(EditError::NoConfigDir)?;
        let mut seen = self.seen();
        let config = edit::save(path, &self.base, edit, backups)?;
        *seen = Seen::Valid(config.clone());
        Ok(config)
    }

    /// Follows the file's changes (created, edited, replaced, through a symlink). `None` when
    /// there is no path, or its directory does not exist (nothing can appear there).
    pub fn watch(self: &Arc<Self>) -> Option<notify::Result<Watch>> {
        let path = self.path.clone()?;
        if !path.parent().is_some_and(Path::is_dir) {
            return None;
        }
        Some(crate::watch::Files::new(&[path], SETTLE).map(|files| Watch {
            file: self.clone(),
            files,
        }))
    }

    fn seen(&self) -> MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The config file's changes, as [`ConfigFile::watch`] gives them.
pub struct Watch {
    file: Arc<ConfigFile>,
    files: crate::watch::Files,
}

impl Watch {
    /// The next change that is news: a config not last read or written, or a new error.
    /// `None` if the watch ended.
    pub async fn next(&mut self) -> Option<Reload> {
        loop {
            self.files.changed().await?;
            let file = self.file.clone();
            let read = tokio::task::spawn_blocking(move || file.read(true)).await.ok()?;
            if let Some(reload) = read {
                return Some(reload);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_PRESET;
    use crate::config::edit::ForwardDraft;

    const VALID: &str = "[[forward]]\nname = \"a\"\nnamespace = \"ns\"\nservice = \"a\"\nlocal_port = 3000\n";

    fn opened(dir: &Path, text: &str) -> (Arc<ConfigFile>, Result<Config, ConfigError>) {
        let path = dir.join("config.toml");
        std::fs::write(&path, text).unwrap();
        let (file, config) = ConfigFile::open(Some(&path), |_| true);
        (Arc::new(file), config)
    }

    async fn next(watch: &mut Watch) -> Reload {
        tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .expect("a change told")
            .expect("the watch runs")
    }

    #[tokio::test]
    async fn a_hand_edit_is_told_once_and_an_unchanged_write_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let (file, config) = opened(dir.path(), VALID);
        assert_eq!(config.unwrap().forwards.len(), 1);
        let mut watch = file.watch().unwrap().unwrap();
        let path = file.path().unwrap().to_path_buf();

        // Touched with the same content (an editor's save without a change), then changed.
        std::fs::write(&path, VALID).unwrap();
        std::fs::write(&path, format!("{VALID}\n# a comment\n")).unwrap();
        std::fs::write(&path, VALID.replace("3000", "3001")).unwrap();
        let Reload::Changed(changed) = next(&mut watch).await else {
            panic!("a valid change")
        };
        assert_eq!(changed.forwards[0].local_port, 3001);
        assert!(
            tokio::time::timeout(Duration::from_millis(400), watch.next())
                .await
                .is_err(),
            "told once"
        );
    }

    #[tokio::test]
    async fn a_save_is_not_told_back_but_a_later_edit_is() {
        let dir = tempfile::tempdir().unwrap();
        let (file, _) = opened(dir.path(), VALID);
        let mut watch = file.watch().unwrap().unwrap();
        let backups = Backups::at(dir.path().join("backups"));
        let draft = ForwardDraft {
            name: "a".into(),
            namespace: "ns".into(),
            service: "a".into(),
            local_port: "4000".into(),
            enabled: true,
            ..ForwardDraft::default()
        };
        let saved = file
            .save(
                &Edit::Forward {
                    replaces: Some("a".into()),
                    draft,
                },
                &backups,
            )
            .unwrap();
        assert_eq!(saved.forwards[0].local_port, 4000);
        // Our own save is skipped by content: the next thing told is the hand edit after it.
        let path = file.path().unwrap().to_path_buf();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("4000", "4001")).unwrap();
        let Reload::Changed(changed) = next(&mut watch).await else {
            panic!("a valid change")
        };
        assert_eq!(changed.forwards[0].local_port, 4001);
    }

    #[tokio::test]
    async fn a_broken_file_is_told_once_and_its_fix_after() {
        let dir = tempfile::tempdir().unwrap();
        let (file, _) = opened(dir.path(), VALID);
        let mut watch = file.watch().unwrap().unwrap();
        let path = file.path().unwrap().to_path_buf();
        std::fs::write(&path, "[[forward]\n").unwrap();
        let Reload::Invalid(e) = next(&mut watch).await else {
            panic!("an invalid file")
        };
        assert!(e.to_string().contains("config.toml"), "{e}");
        assert!(file.invalid().is_some());
        // Still broken the same way: not told again. Fixed back to what ran: told, as the
        // running config must be known to be the file's again.
        std::fs::write(&path, "[[forward]\n").unwrap();
        std::fs::write(&path, VALID).unwrap();
        let Reload::Changed(fixed) = next(&mut watch).await else {
            panic!("the fixed file")
        };
        assert_eq!(fixed.forwards[0].local_port, 3000);
        assert!(file.invalid().is_none());
    }

    #[test]
    fn a_broken_file_at_start_gives_its_error_and_a_file_still_followed() {
        let dir = tempfile::tempdir().unwrap();
        let (file, config) = opened(dir.path(), "nonsense = [\n");
        assert!(config.unwrap_err().to_string().contains("config.toml"));
        assert!(file.invalid().is_some());
        assert_eq!(file.path(), Some(dir.path().join("config.toml").as_path()));
    }

    #[test]
    fn with_no_file_the_preset_runs_and_a_save_creates_the_file_from_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        let preset = Config::preset(DEFAULT_PRESET).unwrap();
        let file = ConfigFile::new(Some(path.clone()), Ok((preset.clone(), Source::Preset(DEFAULT_PRESET))));
        assert!(file.reload().is_none(), "nothing to reload");
        let backups = Backups::at(dir.path().join("backups"));
        let saved = file
            .save(&Edit::RemoveForward(preset.forwards[0].name.clone()), &backups)
            .unwrap();
        assert_eq!(saved.forwards.len(), preset.forwards.len() - 1);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("[cluster]"),
            "the preset's text, comments and all:\n{text}"
        );
        assert!(file.reload().is_some(), "the file now exists");
    }
}
