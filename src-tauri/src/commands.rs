//! The settings page's commands, run in the app for the window's process ([`crate::window`]):
//! each a few lines that call the engine or the config file.

use porthole::Snapshot;
use porthole::config::edit::{Edit, EditError, ForwardDraft};
use porthole::config::{Mode, Probe, ServiceTarget};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tauri::{AppHandle, Manager};
use tauri_plugin_autostart::ManagerExt;

use crate::prefs::{self, Prefs};
use crate::shell::{self, Shell, lock};

/// A command's failure, as the page shows it: `field` puts the message next to that input.
#[derive(Debug, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum CommandError {
    #[error("{message}")]
    Invalid { field: Option<String>, message: String },
    #[error("{message}")]
    Failed { message: String },
}

impl CommandError {
    pub fn failed(e: impl std::fmt::Display) -> CommandError {
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
    /// The context the config names (`None`: kubectl's current-context, whichever it is).
    context: Option<String>,
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
        // The default (127.0.0.1 and ::1) shows as empty; only an address of the user's is kept.
        bind: if spec.ipv6_loopback {
            String::new()
        } else {
            spec.bind.to_string()
        },
        probe: match &spec.probe {
            Probe::Auto => "auto".into(),
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

/// Runs one of the page's commands; `args` are the page's arguments, by name.
pub async fn call(app: &AppHandle, command: &str, args: Value) -> Result<Value, CommandError> {
    let shell = app.state::<Shell>();
    let shell = shell.inner();
    match command {
        "page_state" => reply(page_state(app, shell).await?),
        // Namespaces, services and ports for the picker; an error means "let the user type".
        "catalog" => reply(shell.engine.catalog().map_err(CommandError::failed)?),
        "save_forward" => {
            #[derive(Deserialize)]
            struct Args {
                replaces: Option<String>,
                draft: ForwardDraft,
            }
            let Args { replaces, draft } = parse(args)?;
            reply(save(shell, Edit::Forward { replaces, draft }).await?)
        }
        "remove_forward" => {
            let Name { name } = parse(args)?;
            reply(save(shell, Edit::RemoveForward(name)).await?)
        }
        // The context Porthole uses (none: follow kubectl's).
        "set_context" => {
            #[derive(Deserialize)]
            struct Args {
                context: Option<String>,
            }
            let Args { context } = parse(args)?;
            reply(save(shell, Edit::Context(context.filter(|c| !c.is_empty()))).await?)
        }
        "set_enabled" => {
            #[derive(Deserialize)]
            struct Args {
                name: String,
                enabled: bool,
            }
            let Args { name, enabled } = parse(args)?;
            let done = shell.engine.set_enabled(&name, enabled).await;
            reply(done.map_err(CommandError::failed)?)
        }
        "fix_kubeconfig" => reply(shell::fix_kubeconfig(app).await.map_err(CommandError::failed)?),
        "set_prefs" => {
            #[derive(Deserialize)]
            struct Args {
                prefs: Prefs,
            }
            let Args { prefs } = parse(args)?;
            reply(set_prefs(shell, prefs)?)
        }
        "set_autostart" => {
            #[derive(Deserialize)]
            struct Args {
                enabled: bool,
            }
            let Args { enabled } = parse(args)?;
            reply(set_autostart(app, enabled)?)
        }
        other => Err(CommandError::failed(format!("unknown command `{other}`"))),
    }
}

#[derive(Deserialize)]
struct Name {
    name: String,
}

fn parse<T: DeserializeOwned>(args: Value) -> Result<T, CommandError> {
    serde_json::from_value(args).map_err(|e| CommandError::failed(format!("bad arguments: {e}")))
}

fn reply(value: impl Serialize) -> Result<Value, CommandError> {
    serde_json::to_value(value).map_err(CommandError::failed)
}

async fn page_state(app: &AppHandle, shell: &Shell) -> Result<PageState, CommandError> {
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
        config_path: shell.config.path().map(|p| p.display().to_string()),
        context: config.cluster.context.clone(),
        contexts,
        kubectl_context,
        contexts_error,
        prefs: *lock(&shell.prefs),
        autostart: app.autolaunch().is_enabled().unwrap_or(false),
    })
}

/// Saves one change to the config file, then the engine applies the new config by diff. A
/// forward saved from the form takes the form's on/off; the others keep theirs
/// ([`porthole::config::Overrides`]).
async fn save(shell: &Shell, edit: Edit) -> Result<(), CommandError> {
    let file = shell.config.clone();
    let backups = porthole::write::Backups::private().map_err(CommandError::failed)?;
    let toggle = match &edit {
        Edit::Forward { draft, .. } => Some((draft.name.trim().to_string(), draft.enabled)),
        _ => None,
    };
    let config = tauri::async_runtime::spawn_blocking(move || file.save(&edit, &backups))
        .await
        .map_err(CommandError::failed)??;
    shell.engine.apply(config).await.map_err(CommandError::failed)?;
    if let Some((name, enabled)) = toggle {
        shell
            .engine
            .set_enabled(&name, enabled)
            .await
            .map_err(CommandError::failed)?;
    }
    Ok(())
}

fn set_prefs(shell: &Shell, prefs: Prefs) -> Result<(), CommandError> {
    if let Some(path) = &shell.prefs_path {
        prefs::save(path, &prefs).map_err(CommandError::failed)?;
    }
    *lock(&shell.prefs) = prefs;
    Ok(())
}

fn set_autostart(app: &AppHandle, enabled: bool) -> Result<bool, CommandError> {
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
