//! The settings page's commands, run in the app for the window's process ([`crate::window`]):
//! each a few lines that call the engine or the config file.

use porthole::Snapshot;
use porthole::config::edit::{Edit, EditError, ForwardDraft};
use porthole::config::{ClusterSpec, Mode, Probe, ServiceTarget};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tauri::{AppHandle, Manager};
use tauri_plugin_autostart::ManagerExt;

use crate::notifier::Notifier;
use crate::prefs::Prefs;
use crate::shell::{self, Shell};

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

/// A forward as the form shows it; `several`: the config has more than one cluster, so the
/// draft names its own.
fn draft(spec: &porthole::config::ForwardSpec, default_mode: Mode, several: bool) -> ForwardDraft {
    ForwardDraft {
        name: spec.name.clone(),
        cluster: if several { spec.cluster.clone() } else { String::new() },
        namespace: spec.namespace.clone(),
        service: match &spec.target {
            ServiceTarget::Name(name) => name.clone(),
            _ => String::new(),
        },
        pods: match &spec.target {
            ServiceTarget::Pods(labels) => porthole::config::labels_text(labels),
            _ => String::new(),
        },
        pod: match &spec.target {
            ServiceTarget::Pod(name) => name.clone(),
            _ => String::new(),
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

/// One of the page's commands (the names of `commands.list`) with its arguments, as the
/// window's process passes them: `{"command": "set_enabled", "args": {"name": …, "enabled": …}}`.
// One is decoded per call of the page and run at once: a box would save nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "command", content = "args", rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    /// Everything the page shows at open.
    PageState {},
    /// Namespaces, services and ports of a cluster (none: kubectl's) for the picker; an error
    /// means "let the user type".
    Catalog {
        #[serde(default)]
        cluster: Option<String>,
    },
    SaveForward {
        replaces: Option<String>,
        draft: ForwardDraft,
    },
    RemoveForward {
        name: String,
    },
    /// The context Porthole uses (none or empty: follow kubectl's).
    SetContext {
        context: Option<String>,
    },
    SetEnabled {
        name: String,
        enabled: bool,
    },
    FixKubeconfig {},
    SetPrefs {
        prefs: Prefs,
    },
    SetAutostart {
        enabled: bool,
    },
    /// What importing `text` (a script, a kftray export) into a cluster (none: kubectl's)
    /// would add, and what it leaves out.
    PreviewImport {
        text: String,
        #[serde(default)]
        cluster: Option<String>,
    },
    /// A cluster more, from one of the kubeconfig's contexts.
    AddCluster {
        context: String,
        #[serde(default)]
        name: Option<String>,
    },
    /// A cluster and its forwards (the page asks first).
    RemoveCluster {
        name: String,
    },
    /// Adds forwards chosen from a preview into a cluster (none: kubectl's), in one edit,
    /// with the new clusters they name.
    ImportForwards {
        drafts: Vec<ForwardDraft>,
        #[serde(default)]
        cluster: Option<String>,
    },
}

impl Command {
    /// Decodes the page's call of `name` with `args` (an object by argument name).
    pub fn decode(name: &str, args: Value) -> Result<Command, CommandError> {
        let args = if args.is_null() {
            Value::Object(Default::default())
        } else {
            args
        };
        serde_json::from_value(serde_json::json!({ "command": name, "args": args }))
            .map_err(|e| CommandError::failed(format!("`{name}`: {e}")))
    }
}

/// Runs one of the page's commands.
pub async fn call(app: &AppHandle, command: Command) -> Result<Value, CommandError> {
    let shell = app.state::<Shell>();
    let shell = shell.inner();
    match command {
        Command::PageState {} => reply(page_state(app, shell).await?),
        Command::Catalog { cluster } => reply(
            shell
                .engine
                .catalog(cluster.as_deref().filter(|c| !c.is_empty()))
                .await
                .map_err(CommandError::failed)?,
        ),
        Command::SaveForward { replaces, draft } => reply(save(shell, Edit::Forward { replaces, draft }).await?),
        Command::RemoveForward { name } => reply(save(shell, Edit::RemoveForward(name)).await?),
        Command::SetContext { context } => reply(save(shell, Edit::Context(context.filter(|c| !c.is_empty()))).await?),
        Command::SetEnabled { name, enabled } => reply(
            shell
                .engine
                .set_enabled(&name, enabled)
                .await
                .map_err(CommandError::failed)?,
        ),
        Command::FixKubeconfig {} => reply(shell::fix_kubeconfig(app).await.map_err(CommandError::failed)?),
        Command::SetPrefs { prefs } => {
            // The page sets what it shows (the mutes); the rest stays the app's.
            let notifier = app.state::<Notifier>();
            let mut kept = notifier.prefs();
            kept.mutes = prefs.mutes;
            reply(notifier.set_prefs(kept).map_err(CommandError::failed)?)
        }
        Command::SetAutostart { enabled } => reply(set_autostart(app, enabled)?),
        Command::PreviewImport { text, cluster } => reply(preview_import(shell, &text, cluster.as_deref()).await?),
        Command::AddCluster { context, name } => {
            // The contexts listed are those of the kubeconfig the cluster kubectl should point
            // at reads: the new cluster reads the same.
            let config = config(shell).await?;
            let kubeconfig = config.kubectl_cluster().kubeconfig.clone();
            reply(
                save(
                    shell,
                    Edit::AddCluster {
                        context,
                        name,
                        kubeconfig,
                    },
                )
                .await?,
            )
        }
        Command::RemoveCluster { name } => reply(save(shell, Edit::RemoveCluster(name)).await?),
        Command::ImportForwards { drafts, cluster } => {
            let config = config(shell).await?;
            let into = destination(&config, cluster.as_deref())?;
            reply(save(shell, porthole::import::edit(&config, into, drafts)).await?)
        }
    }
}

/// The config in effect.
async fn config(shell: &Shell) -> Result<porthole::Config, CommandError> {
    shell
        .engine
        .config()
        .await
        .ok_or_else(|| CommandError::failed("the engine has stopped"))
}

fn reply(value: impl Serialize) -> Result<Value, CommandError> {
    serde_json::to_value(value).map_err(CommandError::failed)
}

async fn page_state(app: &AppHandle, shell: &Shell) -> Result<PageState, CommandError> {
    let config = config(shell).await?;
    let (contexts, kubectl_context, contexts_error) = match shell.engine.contexts().await {
        Ok((names, current)) => (local_first(names), current, None),
        Err(e) => (Vec::new(), None, Some(e.to_string())),
    };
    Ok(PageState {
        snapshot: shell.engine.snapshot().borrow().clone(),
        forwards: config
            .forwards
            .iter()
            .map(|f| {
                let mode = config.cluster(&f.cluster).map_or(Mode::Auto, |c| c.mode);
                draft(f, mode, config.clusters.len() > 1)
            })
            .collect(),
        config_path: shell.config.path().map(|p| p.display().to_string()),
        context: config.kubectl_cluster().context.clone(),
        contexts,
        kubectl_context,
        contexts_error,
        prefs: app.state::<Notifier>().prefs(),
        autostart: app.autolaunch().is_enabled().unwrap_or(false),
    })
}

/// [`porthole::import::preview`] against the config in effect, into cluster `cluster` (none:
/// kubectl's), as `porthole import --cluster` shows it.
async fn preview_import(
    shell: &Shell,
    text: &str,
    cluster: Option<&str>,
) -> Result<porthole::import::Plan, CommandError> {
    let config = config(shell).await?;
    let into = destination(&config, cluster)?;
    Ok(porthole::import::preview(text, &config, into).await)
}

/// The cluster an import goes into: the one named, else kubectl's.
fn destination<'c>(config: &'c porthole::Config, cluster: Option<&str>) -> Result<&'c ClusterSpec, CommandError> {
    match cluster.filter(|c| !c.is_empty()) {
        Some(name) => config
            .cluster(name)
            .ok_or_else(|| CommandError::failed(format!("no cluster is named `{name}`"))),
        None => Ok(config.kubectl_cluster()),
    }
}

/// The kubeconfig's contexts for the page's choice: local clusters first (kind's `kind-*`, then
/// k3d's `k3d-*`), then the rest, each group in the kubeconfig's order.
fn local_first(mut names: Vec<String>) -> Vec<String> {
    names.sort_by_key(|name| match name {
        n if n.starts_with("kind-") => 0,
        n if n.starts_with("k3d-") => 1,
        _ => 2,
    });
    names
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
    // Until the engine has it: a hand edit read before this save is not applied after it.
    let _applying = shell.applying.lock().await;
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

fn set_autostart(app: &AppHandle, enabled: bool) -> Result<bool, CommandError> {
    // A login item names this executable: one in a build directory goes with the next
    // `cargo clean` (or is replaced by whatever is built next), so only an installed app may.
    if enabled
        && let Ok(exe) = std::env::current_exe()
        && let Some(dir) = build_dir(&exe)
    {
        return Err(CommandError::Invalid {
            field: Some("autostart".into()),
            message: format!(
                "start at login needs the installed app: this one runs from the build directory {} \
                 (install the .deb or the .app, or `cargo install --path src-tauri`)",
                dir.display()
            ),
        });
    }
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

/// The cargo build directory `exe` lies in, if it does: a profile's output (`target/debug`,
/// `target/<triple>/release`, whatever `CARGO_TARGET_DIR` says), which cargo fills with
/// `.fingerprint` and `deps`; a bundle made inside it counts too.
fn build_dir(exe: &std::path::Path) -> Option<&std::path::Path> {
    exe.ancestors()
        .skip(1)
        .find(|dir| dir.join(".fingerprint").is_dir() && dir.join("deps").is_dir())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_executable_under_a_cargo_target_dir_is_in_a_build_directory() {
        let root = tempfile::tempdir().unwrap();
        let release = root.path().join("elsewhere/target/release");
        std::fs::create_dir_all(release.join("bundle/macos/Porthole.app/Contents/MacOS")).unwrap();
        std::fs::create_dir_all(release.join(".fingerprint")).unwrap();
        std::fs::create_dir_all(release.join("deps")).unwrap();
        let exe = release.join("porthole-app");
        assert_eq!(build_dir(&exe), Some(release.as_path()));
        let bundled = release.join("bundle/macos/Porthole.app/Contents/MacOS/porthole-app");
        assert_eq!(build_dir(&bundled), Some(release.as_path()));
        assert_eq!(build_dir(&root.path().join("usr/bin/porthole-app")), None);
        // A directory that only looks a little like one is not a build directory.
        std::fs::remove_dir(release.join(".fingerprint")).unwrap();
        assert_eq!(build_dir(&exe), None);
    }

    #[test]
    fn local_clusters_come_first_in_the_kubeconfigs_order() {
        let names = ["minikube", "k3d-b", "docker-desktop", "kind-z", "k3d-a", "kind-a"].map(String::from);
        assert_eq!(
            local_first(names.to_vec()),
            ["kind-z", "kind-a", "k3d-b", "k3d-a", "minikube", "docker-desktop"]
        );
    }

    /// The names of `commands.list`.
    fn listed() -> Vec<String> {
        include_str!("../commands.list")
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn every_listed_name_is_a_command_and_nothing_else_is() {
        let samples = [
            ("page_state", serde_json::json!({})),
            ("catalog", Value::Null),
            (
                "save_forward",
                serde_json::json!({ "replaces": null, "draft": { "name": "a", "enabled": true } }),
            ),
            ("remove_forward", serde_json::json!({ "name": "a" })),
            ("set_context", serde_json::json!({ "context": "kind-a" })),
            ("set_enabled", serde_json::json!({ "name": "a", "enabled": false })),
            ("fix_kubeconfig", serde_json::json!({})),
            ("set_prefs", serde_json::json!({ "prefs": {} })),
            ("set_autostart", serde_json::json!({ "enabled": true })),
            (
                "preview_import",
                serde_json::json!({ "text": "kubectl port-forward svc/a 1:1" }),
            ),
            (
                "import_forwards",
                serde_json::json!({ "drafts": [{ "name": "a", "enabled": true }] }),
            ),
            ("add_cluster", serde_json::json!({ "context": "k3d-lab" })),
            ("remove_cluster", serde_json::json!({ "name": "k3d-lab" })),
        ];
        let names: Vec<String> = samples.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(names, listed(), "one sample per listed command, in the list's order");
        for (name, args) in samples {
            Command::decode(name, args).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let unknown = Command::decode("delete_everything", Value::Null).unwrap_err();
        assert!(unknown.to_string().contains("delete_everything"), "{unknown}");
        assert_eq!(
            Command::decode("set_enabled", serde_json::json!({ "name": "a", "enabled": "yes" }))
                .unwrap_err()
                .to_string()
                .split(':')
                .next(),
            Some("`set_enabled`"),
            "a bad argument names its command"
        );
        assert!(
            Command::decode(
                "set_enabled",
                serde_json::json!({ "name": "a", "enabled": true, "more": 1 })
            )
            .is_err(),
            "an unexpected argument is refused, not ignored"
        );
    }

    #[test]
    fn the_page_invokes_only_listed_commands() {
        let page = include_str!("../../ui/app.js");
        let listed = listed();
        let mut invoked = Vec::new();
        for call in page.split("invoke(").skip(1) {
            if let Some(name) = call.strip_prefix('"').and_then(|rest| rest.split('"').next()) {
                invoked.push(name.to_string());
            }
        }
        // The page's `call(name, …)` helper invokes its first argument.
        for call in page.split("call(\"").skip(1) {
            invoked.extend(call.split('"').next().map(str::to_string));
        }
        assert!(invoked.len() >= 8, "the page's calls were found: {invoked:?}");
        for name in &invoked {
            assert!(
                listed.contains(name),
                "ui/app.js invokes `{name}`, which commands.list lacks"
            );
        }
    }
}
