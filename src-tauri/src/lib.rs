//! Porthole's menu-bar app: the engine runs in-process on Tauri's tokio runtime; this crate only
//! shows it. A map:
//! - [`shell`]: engine snapshots and events to the tray, notifications and the settings page;
//!   menu clicks to engine calls.
//! - [`tray`]: what the tray icon and menu show, drawn from a snapshot.
//! - [`notices`]: which notifications to show (debounced, summarised, mutable);
//!   [`notifier`]: shows them, as the user's preferences allow.
//! - [`window`]: the settings window, in a process of its own so that closing it returns its
//!   memory; [`commands`]: the page's commands, which it hands to the app.
//! - [`icons`], [`prefs`], [`logs`].

pub mod commands;
pub mod icons;
pub mod logs;
pub mod notices;
pub mod notifier;
pub mod prefs;
pub mod shell;
pub mod tray;
pub mod window;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use clap::Parser;
use porthole::config::{Config, ConfigFile};
use porthole::{Engine, Tuning, control};
use tauri::{Manager, RunEvent};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::notices::{Kind, Notice};
use crate::notifier::Notifier;
use crate::prefs::Prefs;
use crate::shell::Shell;
use crate::tray::Tray;
use crate::window::Windows;

/// A poisoned lock only means another thread panicked mid-update of plain data: keep going.
pub fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Porthole's menu-bar app: the forwards of the config, their health in the tray.
#[derive(Debug, Parser)]
#[command(name = "porthole-app", version, about)]
pub struct Args {
    /// Config file [default: $PORTHOLE_CONFIG, else <config dir>/porthole/config.toml, else the built-in preset]
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Control socket served for `porthole status|wait` [default: $PORTHOLE_CONTROL, else <runtime dir>/porthole/control.sock]
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
    /// Open the settings window at start
    #[arg(long)]
    settings: bool,
    /// Be the settings window's process, speaking this link protocol (started by the app itself)
    #[arg(long = "settings-window", hide = true, value_name = "PROTOCOL")]
    settings_window: Option<u32>,
}

/// The app's Tauri context (config, assets, capabilities): one copy for both of its processes.
fn context() -> tauri::Context<tauri::Wry> {
    tauri::generate_context!()
}

pub fn run() -> anyhow::Result<()> {
    #[cfg(target_os = "linux")]
    if std::env::var_os("GDK_GL").is_none() {
        // GTK 3 probes GLX when it opens the display, which maps the whole GL driver (Mesa's
        // links LLVM: ~45 MiB resident) into an app that mostly sits in the tray. The settings
        // page renders fine without GL in this process (WebKit's web process draws it).
        // SAFETY: the first thing the program does, before any thread exists.
        unsafe { std::env::set_var("GDK_GL", "disable") };
    }
    let args = Args::parse();
    if let Some(protocol) = args.settings_window {
        return window::run(protocol);
    }
    let log_dir = logs::init(true)?;
    // Started by launchd or a desktop session, the app may get 256 descriptors: about 100
    // connections. Lift it as the CLI does.
    porthole::relay::raise_fd_limit();
    // A broken config file does not keep the app from starting: it shows the error in the tray
    // and a notification, serves nothing, and applies the file once it is fixed.
    let (file, loaded) = ConfigFile::open(args.config.as_deref(), porthole::kubeconfig::has_context);
    let (config, config_error) = match loaded {
        Ok(config) => (config, None),
        Err(e) => {
            error!(error = %e, "the config file is not valid: starting with no forwards until it is fixed");
            (Config::default(), Some(e.to_string()))
        }
    };
    let file = Arc::new(file);
    let control_path = control::socket_path(args.control.as_deref());
    info!(config = %file.source(), forwards = config.forwards.len(), control = %control_path.display(), "starting");
    let notifier = Notifier::new(prefs::path(file.path()));
    // A first run (no config file, and no quick-start cluster for the preset): the settings
    // window opens by itself, once, to choose a context and add the first forward.
    let first_run = matches!(file.source(), porthole::config::Source::Empty) && !notifier.prefs().welcomed;
    let open_settings = args.settings || first_run;

    let app = tauri::Builder::default()
        // First: a second launch hands over to this one and exits.
        .plugin(tauri_plugin_single_instance::init(|app, _argv, _cwd| window::open(app)))
        .plugin(tauri_plugin_autostart::init(
            tauri_plugin_autostart::MacosLauncher::LaunchAgent,
            None,
        ))
        .plugin(tauri_plugin_clipboard_manager::init())
        .setup(move |app| {
            #[cfg(target_os = "macos")]
            {
                app.set_activation_policy(tauri::ActivationPolicy::Accessory);
                // Notifications come from Porthole (its name and icon in the Notification
                // Center), not from the default sender, Finder.
                if let Err(e) = notify_rust::set_application(&app.config().identifier) {
                    tracing::warn!(error = %e, "notifications are sent as another application");
                }
            }
            let cancel = CancellationToken::new();
            // The engine spawns onto the runtime it is started in: Tauri's.
            let (engine, signals) = tauri::async_runtime::block_on(async {
                (Engine::start(config, Tuning::default()), shell::Signals::install())
            });
            app.manage(notifier);
            app.manage(Windows::new(log_dir.join("porthole.log")));
            app.manage(Shell {
                engine: engine.clone(),
                config: file.clone(),
                log_dir,
                cancel: cancel.clone(),
                applying: tokio::sync::Mutex::new(()),
                control: Mutex::new(None),
                quitting: AtomicBool::new(false),
            });
            let handle = app.handle().clone();
            match signals {
                Ok(signals) => drop(tauri::async_runtime::spawn(signals.follow(handle.clone()))),
                Err(e) => error!(error = %e, "no signal handlers: SIGTERM will not drain"),
            }
            app.manage(Mutex::new(Tray::create(&handle, shell::on_menu)?));
            let control = serve_control(&handle, engine, control_path, cancel);
            *lock(&app.state::<Shell>().control) = Some(control);
            tauri::async_runtime::spawn(shell::follow(handle.clone()));
            // So that a config saved later (from the preset) is watched too.
            if let Some(dir) = file.path().and_then(std::path::Path::parent) {
                let _ = std::fs::create_dir_all(dir);
            }
            tauri::async_runtime::spawn(shell::follow_config(handle.clone()));
            if let Some(error) = config_error {
                app.state::<Notifier>()
                    .show(vec![Notice::new(Kind::Config, "config file not applied", error)]);
            }
            if open_settings {
                window::open(&handle);
            }
            if first_run {
                let notifier = app.state::<Notifier>();
                let prefs = Prefs {
                    welcomed: true,
                    ..notifier.prefs()
                };
                if let Err(e) = notifier.set_prefs(prefs) {
                    warn!(error = %e, "the settings window will open by itself again next time");
                }
            }
            Ok(())
        })
        .build(context())
        .context("cannot start the app")?;
    app.run(|_app, event| {
        // The app has no window of its own, but a plugin's may close: only Quit (an explicit
        // exit code) ends it.
        if let RunEvent::ExitRequested { code: None, api, .. } = event {
            api.prevent_exit();
        }
    });
    Ok(())
}

/// Serves the control socket `porthole status|wait|enable|disable` use, as `porthole up` does.
fn serve_control(
    app: &tauri::AppHandle,
    engine: Engine,
    path: PathBuf,
    cancel: CancellationToken,
) -> tauri::async_runtime::JoinHandle<()> {
    let app = app.clone();
    tauri::async_runtime::spawn(async move {
        match control::bind(&path).await {
            Ok(listener) => control::serve(engine, listener, path, cancel).await,
            Err(e) => {
                error!(error = %e, "no control socket: `porthole status` cannot reach this app");
                app.state::<Notifier>().show(vec![Notice::new(
                    Kind::App,
                    "Porthole's control socket is taken",
                    format!("{e}. Is `porthole up` running too?"),
                )]);
            }
        }
    })
}
