//! The shell around the engine: engine snapshots become the tray and the settings page's state,
//! engine events become notifications, menu clicks become engine calls. It holds no cluster
//! logic; everything here is a few lines that hand over to the engine.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use porthole::config::{ConfigFile, Reload};
use porthole::kubeconfig::state::FixError;
use porthole::{Engine, Snapshot, Tuning};
use tauri::{AppHandle, Manager};
use tauri_plugin_clipboard_manager::ClipboardExt;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::lock;
use crate::notices::{Kind, Notice};
use crate::notifier::Notifier;
use crate::tray::{Tray, TrayView, ids};
use crate::window;

/// The app's link to the engine: the engine, the config file it runs, and quitting. The other
/// concerns are managed apart: notifications ([`Notifier`]), the tray ([`Tray`]), the settings
/// window ([`window::Windows`]).
pub struct Shell {
    pub engine: Engine,
    /// The config file: where settings are saved, its changes, and whether it is broken.
    pub config: Arc<ConfigFile>,
    /// The log directory, for "Open logs".
    pub log_dir: PathBuf,
    /// Cancelled on quit: stops the event loop and the control socket.
    pub cancel: CancellationToken,
    /// Held from a read or save of the config file until the engine has applied it, so the
    /// engine applies configs in the order the file held them.
    pub applying: tokio::sync::Mutex<()>,
    /// The control socket's server; it removes the socket when it ends.
    pub control: Mutex<Option<tauri::async_runtime::JoinHandle<()>>>,
    /// Set by the first Quit (menu or signal); later ones do nothing.
    pub quitting: AtomicBool,
}

/// Follows the config file: a hand edit is applied as it is saved, by the same policy as a save
/// from the page and SIGHUP ([`porthole::config::Overrides`]); a broken file is refused, logged
/// and told, and the running config stays.
pub async fn follow_config(app: AppHandle) {
    let shell = app.state::<Shell>();
    let mut changes = match shell.config.watch() {
        Some(Ok(watch)) => watch,
        Some(Err(e)) => return warn!(error = %e, "cannot watch the config file: edits apply on SIGHUP only"),
        None => return,
    };
    loop {
        tokio::select! {
            _ = shell.cancel.cancelled() => return,
            reload = changes.next() => match reload {
                Some(reload) => {
                    info!("config file changed");
                    apply_reload(&app, reload).await;
                }
                None => return,
            },
        }
    }
}

/// Applies what reading the config file gave. A broken file is refused, logged and told; the
/// running config stays, and the error is shown atop the menu until a valid file is read.
async fn apply_reload(app: &AppHandle, reload: Reload) {
    let shell = app.state::<Shell>();
    match reload {
        Reload::Changed(config) => {
            let _applying = shell.applying.lock().await;
            // A save from the page after this read has applied its own, newer config.
            if shell.config.is_latest(&config) {
                let forwards = config.forwards.len();
                match shell.engine.apply(config).await {
                    Ok(()) => info!(forwards, "config applied"),
                    Err(e) => warn!(error = %e, "cannot apply the config"),
                }
            }
        }
        Reload::Invalid(e) => {
            error!(error = %e, "config file changed but is invalid: keeping the running config");
            app.state::<Notifier>().show(vec![Notice::new(
                Kind::Config,
                "config file not applied",
                e.to_string(),
            )]);
        }
    }
    // The error line atop the menu comes or goes.
    render(app, &shell.engine.snapshot().borrow().clone());
}

/// The signals a desktop session and a terminal send, installed before the app serves anything:
/// SIGTERM (logout, `kill`, launchd stopping the login item) and SIGINT quit as the menu's Quit
/// does, draining connections and letting a kubeconfig write finish (no `<file>.lock` left
/// behind); SIGHUP (the terminal it was started from closed) reloads the config file instead of
/// killing the app.
pub struct Signals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Must run inside the runtime.
    pub fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    /// Until a quitting signal: reloads on SIGHUP, then quits.
    pub async fn follow(mut self, app: AppHandle) {
        let shell = app.state::<Shell>();
        let name = loop {
            tokio::select! {
                _ = shell.cancel.cancelled() => return,
                _ = self.terminate.recv() => break "SIGTERM",
                _ = self.interrupt.recv() => break "SIGINT",
                _ = self.hangup.recv() => match shell.config.reload() {
                    Some(reload) => {
                        info!(config = %shell.config.path().unwrap_or(std::path::Path::new("?")).display(), "SIGHUP: reloading the config file");
                        apply_reload(&app, reload).await;
                    }
                    None => info!("SIGHUP: no config file to reload (running the preset)"),
                },
            }
        };
        info!(signal = name, "quitting on a signal");
        quit(&app).await;
    }
}

/// Follows the engine until quit: snapshots to the tray and the settings window, snapshots and
/// events to notifications.
///
/// Notices are level-triggered: each snapshot gives every forward's state, so a transition the
/// engine published before this loop subscribed (a forward down at start) is still told, and
/// the events between snapshots give the states a coalesced snapshot skipped. Events are taken
/// before snapshots, so the last state seen of a forward is never older than one already seen.
pub async fn follow(app: AppHandle) {
    let shell = app.state::<Shell>();
    let notifier = app.state::<Notifier>();
    let mut snapshots = shell.engine.snapshot();
    let mut events = shell.engine.events();
    let first = snapshots.borrow_and_update().clone();
    notifier.notices().observe_snapshot(&first, Instant::now());
    render(&app, &first);
    loop {
        let deadline = notifier.notices().deadline();
        let flush = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = shell.cancel.cancelled() => return,
            event = events.recv() => match event {
                Ok(event) => {
                    let snapshot = snapshots.borrow().clone();
                    let out = notifier.notices().observe(&event, &snapshot, Instant::now());
                    notifier.show(out);
                    window::emit(&app, "engine-event", &event);
                }
                // The next snapshot carries every forward's state: nothing is lost for notices.
                Err(RecvError::Lagged(missed)) => warn!(missed, "fell behind the engine's events"),
                Err(RecvError::Closed) => return,
            },
            changed = snapshots.changed() => {
                if changed.is_err() {
                    return;
                }
                let snapshot = snapshots.borrow_and_update().clone();
                notifier.notices().observe_snapshot(&snapshot, Instant::now());
                render(&app, &snapshot);
            }
            _ = flush => {
                let out = notifier.notices().flush();
                notifier.show(out);
            }
        }
    }
}

fn render(app: &AppHandle, snapshot: &Snapshot) {
    let shell = app.state::<Shell>();
    let view = TrayView::of(snapshot).with_config_error(shell.config.invalid().as_deref());
    if let Some(tray) = app.try_state::<Mutex<Tray>>()
        && let Err(e) = lock(&tray).show(app, view)
    {
        error!(error = %e, "cannot update the tray");
    }
    window::emit(app, "snapshot", snapshot);
}

/// A tray menu click.
pub fn on_menu(app: &AppHandle, id: &str) {
    let app = app.clone();
    let id = id.to_string();
    tauri::async_runtime::spawn(async move {
        let shell = app.state::<Shell>();
        let snapshot = shell.engine.snapshot().borrow().clone();
        if let Some(name) = id.strip_prefix(ids::FORWARD_PREFIX) {
            let enabled = snapshot.forward(name).is_some_and(|f| f.enabled);
            if let Err(e) = shell.engine.set_enabled(name, !enabled).await {
                warn!(forward = name, error = %e, "cannot toggle");
            }
            return;
        }
        match id.as_str() {
            ids::START_ALL | ids::STOP_ALL => {
                for forward in &snapshot.forwards {
                    let _ = shell.engine.set_enabled(&forward.name, id == ids::START_ALL).await;
                }
            }
            ids::FIX_KUBECONFIG => {
                let _ = fix_kubeconfig(&app).await;
            }
            ids::SETTINGS | ids::FIRST_FORWARD => window::open(&app),
            ids::COPY_STATUS => {
                if let Err(e) = app.clipboard().write_text(snapshot.to_string()) {
                    warn!(error = %e, "cannot copy the status");
                }
            }
            ids::OPEN_LOGS => open_path(&shell.log_dir),
            ids::QUIT => quit(&app).await,
            other => warn!(id = other, "unknown menu item"),
        }
    });
}

/// Runs the engine's kubeconfig fix and tells the user how it went.
pub async fn fix_kubeconfig(app: &AppHandle) -> Result<(), FixError> {
    let shell = app.state::<Shell>();
    let outcome = shell.engine.fix_kubeconfig().await;
    match &outcome {
        Ok(fixed) => info!(?fixed, "kubeconfig fix"),
        Err(e) => error!(error = %e, "kubeconfig fix failed"),
    }
    let notifier = app.state::<Notifier>();
    let notice = notifier.notices().fixed(&outcome);
    notifier.show(vec![notice]);
    outcome.map(|_| ())
}

/// Opens a folder in the file manager: a program and one argument, no shell, waited for so
/// that no exited opener is left behind as a zombie.
fn open_path(path: &std::path::Path) {
    let opener = if cfg!(target_os = "macos") { "open" } else { "xdg-open" };
    match tokio::process::Command::new(opener).arg(path).spawn() {
        Ok(mut child) => drop(tauri::async_runtime::spawn(async move {
            match child.wait().await {
                Ok(status) if !status.success() => warn!(opener, %status, "the opener failed"),
                Ok(_) => {}
                Err(e) => warn!(opener, error = %e, "cannot wait for the opener"),
            }
        })),
        Err(e) => warn!(opener, path = %path.display(), error = %e, "cannot open"),
    }
}

/// Graceful exit: forwards drain and a file write under way finishes (both bounded), the control
/// socket is removed, then the process exits.
pub async fn quit(app: &AppHandle) {
    let shell = app.state::<Shell>();
    if shell.quitting.swap(true, Ordering::SeqCst) {
        return;
    }
    info!("quitting");
    let writes = tauri::async_runtime::spawn_blocking(|| porthole::write::finish(porthole::write::FINISH_BOUND));
    let (_, finished) = tokio::join!(shell.engine.shutdown(Tuning::default().drain_timeout), writes);
    if !matches!(finished, Ok(true)) {
        warn!("a file write was still under way at exit");
    }
    shell.cancel.cancel();
    let control = lock(&shell.control).take();
    if let Some(control) = control {
        let _ = control.await;
    }
    app.exit(0);
}
