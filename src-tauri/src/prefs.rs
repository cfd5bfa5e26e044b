//! The app's own preferences (which notifications to show), in `app.json` beside the config
//! file. Start at login is not kept here: the OS's login items are the truth for it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::notices::Mutes;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Prefs {
    pub mutes: Mutes,
    /// The settings window opened by itself on a first run (no config file, no forwards);
    /// it does so once.
    pub welcomed: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum PrefsError {
    #[error("cannot write preferences {path}: {error}")]
    Write { path: PathBuf, error: std::io::Error },
}

/// `app.json` in the directory of the config file.
pub fn path(config_path: Option<&Path>) -> Option<PathBuf> {
    Some(config_path?.parent()?.join("app.json"))
}

/// The saved preferences; a missing or unreadable file gives the defaults (and says so in the log).
pub fn load(path: Option<&Path>) -> Prefs {
    let Some(path) = path else { return Prefs::default() };
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).unwrap_or_else(|e| {
            tracing::warn!(path = %path.display(), error = %e, "preferences unreadable: using the defaults");
            Prefs::default()
        }),
        Err(_) => Prefs::default(),
    }
}

/// Writes atomically ([`porthole::write::overwrite`]).
pub fn save(path: &Path, prefs: &Prefs) -> Result<(), PrefsError> {
    let fail = |error| PrefsError::Write {
        path: path.to_path_buf(),
        error,
    };
    let text = serde_json::to_string_pretty(prefs).map_err(|e| fail(e.into()))?;
    porthole::write::overwrite(path, text.as_bytes()).map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_preferences_load_back_and_a_broken_file_gives_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("porthole/app.json");
        let mut prefs = Prefs::default();
        prefs.mutes.recovered = true;
        save(&path, &prefs).unwrap();
        assert_eq!(load(Some(&path)), prefs);
        std::fs::write(&path, "{").unwrap();
        assert_eq!(load(Some(&path)), Prefs::default());
    }
}
