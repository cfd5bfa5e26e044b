//! Showing notifications: the user's preferences (which kinds are muted, saved in `app.json`),
//! the state of the [`Notices`] policy, and the OS's notification service. The tray, the
//! settings window and the engine's followers all tell the user through this one place.

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use tracing::{info, warn};

use crate::lock;
use crate::notices::{Notice, Notices};
use crate::prefs::{self, Prefs, PrefsError};

pub struct Notifier {
    notices: Mutex<Notices>,
    prefs: Mutex<Prefs>,
    /// Where the preferences are saved (`None`: this system has no config directory).
    prefs_path: Option<PathBuf>,
}

impl Notifier {
    /// With the preferences saved at `prefs_path` (the defaults if there are none).
    pub fn new(prefs_path: Option<PathBuf>) -> Notifier {
        Notifier {
            notices: Mutex::new(Notices::default()),
            prefs: Mutex::new(prefs::load(prefs_path.as_deref())),
            prefs_path,
        }
    }

    pub fn prefs(&self) -> Prefs {
        *lock(&self.prefs)
    }

    /// Saves `prefs` (atomically) and uses them from now on.
    pub fn set_prefs(&self, prefs: Prefs) -> Result<(), PrefsError> {
        if let Some(path) = &self.prefs_path {
            prefs::save(path, &prefs)?;
        }
        *lock(&self.prefs) = prefs;
        Ok(())
    }

    /// The policy's state: what was told of each forward, the open batch.
    pub fn notices(&self) -> MutexGuard<'_, Notices> {
        lock(&self.notices)
    }

    /// Shows each notice the preferences do not mute.
    pub fn show(&self, notices: Vec<Notice>) {
        let mutes = self.prefs().mutes;
        for notice in notices {
            if mutes.mutes(notice.kind) {
                info!(summary = %notice.summary, "notification muted");
                continue;
            }
            info!(summary = %notice.summary, body = %notice.body, "notification");
            tauri::async_runtime::spawn(send(notice));
        }
    }
}

#[cfg(not(target_os = "macos"))]
async fn send(notice: Notice) {
    let shown = notify_rust::Notification::new()
        .appname("Porthole")
        .summary(&porthole::status::printable(&notice.summary))
        .body(&crate::notices::markup_escaped(&notice.body))
        .icon("network-wired")
        .show_async()
        .await;
    if let Err(e) = shown {
        warn!(error = %e, "no notification server answered");
    }
}

#[cfg(target_os = "macos")]
async fn send(notice: Notice) {
    // The macOS notification call blocks until the Notification Center takes it.
    let shown = tokio::task::spawn_blocking(move || {
        notify_rust::Notification::new()
            .summary(&notice.summary)
            .body(&notice.body)
            .show()
    })
    .await;
    if let Ok(Err(e)) = shown {
        warn!(error = %e, "notification not shown");
    }
}
