//! The settings page's commands: each a few lines that call the engine or the config file.

use porthole::Snapshot;
use porthole::catalog::Catalog;
use porthole::config::edit::{self, Edit, EditError, ForwardDraft};
use porthole::config::{Config, Mode, Probe, ServiceTarget};
use serde::Serialize;
use tauri::{AppHandle, State};
use tauri_plugin_autostart::ManagerExt;

use crate::prefs::{self, Prefs};
use crate::shell::{self, Shell, lock};

/// A command's failure, as the page shows it: `field` puts the message next to that input.
#[derive(Debug, thiserror::Error, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum CommandError {
    #[error("{message}")]
    Invalid { field: Option<String>, message: String },
    #[error("{message}")]
    Failed { message: String },
}

impl CommandError {
    fn failed(e: impl std::fmt::Display) -> CommandError {
        CommandError::Failed { message: e.to_string() }
    }
}

impl From<EditError> for CommandError {
    fn from(e: EditError) -> Self {
        match e {
            EditError::Invalid { field, message } => CommandError::Invalid { field, message },
            other => CommandError::failed(other),
        }
    }
}

/// Everything the page shows at open; later changes arrive as `snapshot` events.
#[derive(Debug, Serialize)]
pub struct PageState {
    snapshot: Snapshot,
    forwards: Vec<ForwardDraft>,
    config_path: Option<String>,
    contexts: Vec<String>,
    kubectl_context: Option<String>,
    /// Why the contexts could not be read, when they could not.
    contexts_error: Option<String>,
    prefs: Prefs,
    autostart: bool,
}

fn draft(spec: &porthole::config::ForwardSpec, default_mode: Mode) -> ForwardDraft {
    ForwardDraft {
        name: spec.name.clone(),
        namespace: spec.namespace.clone(),
        service: match &spec.target {
            ServiceTarget::Name(name) => name.clone(),
            ServiceTarget::Selector(_) => String::new(),
        },
        service_port: spec.service_port.as_ref().map(|p| p.to_string()).unwrap_or_default(),
        local_port: spec.local_port.to_string(),
        bind: spec.bind.to_string(),
        probe: match &spec.probe {
            Probe::Tcp => "tcp".into(),
            Probe::Tls => "tls".into(),
            Probe::Http(path) => format!("http:{path}"),
        },
        // Empty follows `[cluster] mode`; only a forward's own mode is written back.
        mode: if spec.mode == default_mode {
            String::new()
        } else {
            serde_json::to_value(spec.mode)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
        },
        enabled: spec.enabled,
    }
}

#[tauri::command]
pub async fn page_state(app: AppHandle, shell: State<'_, Shell>) -> Result<PageState, CommandError> {
    let config = shell
        .engine
        .config()
        .await
        .ok_or_else(|| CommandError::failed("the engine has stopped"))?;
    let (contexts, kubectl_context, contexts_error) = match shell.engine.contexts().await {
        Ok((names, current)) => (names, current, None),
        Err(e) => (Vec::new(), None, Some(e.to_string())),
    };
    Ok(PageState {
        snapshot: shell.engine.snapshot().borrow().clone(),
        forwards: config.forwards.iter().map(|f| draft(f, config.cluster.mode)).collect(),
        config_path: shell.config_path.as_ref().map(|p| p.display().to_string()),
        contexts,
        kubectl_context,
        contexts_error,
        prefs: *lock(&shell.prefs),
        autostart: app.autolaunch().is_enabled().unwrap_or(false),
    })
}

/// Namespaces, services and ports for the picker; an error means "let the user type".
#[tauri::command]
pub fn catalog(shell: State<'_, Shell>) -> Result<Catalog, CommandError> {
    shell.engine.catalog().map_err(CommandError::failed)
}

/// Saves one change to the config file, then the engine applies the new config by diff.
async fn save(shell: &Shell, edit: Edit) -> Result<(), CommandError> {
    let path = shell
        .config_path
        .clone()
        .ok_or_else(|| CommandError::failed("this system has no config directory: start with --config FILE"))?;
    let base = shell.base_text.clone();
    let edited = match &edit {
        Edit::Forward { draft, .. } => Some(draft.name.trim().to_string()),
        _ => None,
    };
    let mut config: Config = tauri::async_runtime::spawn_blocking(move || edit::save(&path, &base, &edit))
        .await
        .map_err(CommandError::failed)??;
    *lock(&shell.file_config) = Some(config.clone());
    // Forwards turned on or off from the menu stay so; only the one just edited takes the form's flag.
    if let Some(running) = shell.engine.config().await {
        for forward in &mut config.forwards {
            if Some(&forward.name) != edited.as_ref()
                && let Some(now) = running.forward(&forward.name)
            {
                forward.enabled = now.enabled;
            }
        }
    }
    shell.engine.apply(config).await.map_err(CommandError::failed)
}

#[tauri::command]
pub async fn save_forward(
    shell: State<'_, Shell>,
    replaces: Option<String>,
    draft: ForwardDraft,
) -> Result<(), CommandError> {
    save(&shell, Edit::Forward { replaces, draft }).await
}

#[tauri::command]
pub async fn remove_forward(shell: State<'_, Shell>, name: String) -> Result<(), CommandError> {
    save(&shell, Edit::RemoveForward(name)).await
}

/// The context Porthole uses (`None`: follow kubectl's).
#[tauri::command]
pub async fn set_context(shell: State<'_, Shell>, context: Option<String>) -> Result<(), CommandError> {
    save(&shell, Edit::Context(context.filter(|c| !c.is_empty()))).await
}

#[tauri::command]
pub async fn set_enabled(shell: State<'_, Shell>, name: String, enabled: bool) -> Result<(), CommandError> {
    shell
        .engine
        .set_enabled(&name, enabled)
        .await
        .map_err(CommandError::failed)
}

#[tauri::command]
pub async fn fix_kubeconfig(app: AppHandle) -> Result<(), CommandError> {
    shell::fix_kubeconfig(&app).await.map_err(CommandError::failed)
}

#[tauri::command]
pub fn set_prefs(shell: State<'_, Shell>, prefs: Prefs) -> Result<(), CommandError> {
    if let Some(path) = &shell.prefs_path {
        prefs::save(path, &prefs).map_err(CommandError::failed)?;
    }
    *lock(&shell.prefs) = prefs;
    Ok(())
}

#[tauri::command]
pub fn set_autostart(app: AppHandle, enabled: bool) -> Result<bool, CommandError> {
    #[cfg(target_os = "linux")]
    if enabled && let Some(home) = directories::BaseDirs::new().map(|d| d.home_dir().to_path_buf()) {
        // auto-launch creates `autostart` but not `~/.config` above it.
        let dir = home.join(".config/autostart");
        std::fs::create_dir_all(&dir).map_err(|e| CommandError::failed(format!("{}: {e}", dir.display())))?;
    }
    let launcher = app.autolaunch();
    let done = if enabled { launcher.enable() } else { launcher.disable() };
    done.map_err(CommandError::failed)?;
    launcher.is_enabled().map_err(CommandError::failed)
}

/// Every command, for the handler and the capability file (`build.rs` lists the same names).
pub fn handler() -> impl Fn(tauri::ipc::Invoke) -> bool + Send + Sync + 'static {
    tauri::generate_handler![
        page_state,
        catalog,
        save_forward,
        remove_forward,
        set_context,
        set_enabled,
        fix_kubeconfig,
        set_prefs,
        set_autostart
    ]
}
