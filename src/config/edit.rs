//! Editing the config file in place: one forward added, changed or removed, or the cluster
//! context set, keeping every comment and every other table as the user wrote them. An edit is
//! validated as a whole config before anything is written, and written through [`crate::write`]
//! (lock, backup, atomic replace).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml_edit::{DocumentMut, Item, Table, value};

use super::{Config, ConfigError, Source};
use crate::write::{self, Backups, LockWait, WriteError};

#[derive(Debug, thiserror::Error)]
pub enum EditError {
    /// The edit would make an invalid config; `field` is the key at fault when one is.
    #[error("{message}")]
    Invalid { field: Option<String>, message: String },
    #[error("no forward named `{0}` in the config")]
    UnknownForward(String),
    #[error("config {path} is not valid TOML, so it cannot be edited: {message}")]
    Unreadable { path: PathBuf, message: String },
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("this system has no config directory: start Porthole with --config FILE to save settings")]
    NoConfigDir,
    #[error("cannot create config {path}: {error}")]
    Create { path: PathBuf, error: std::io::Error },
}

impl EditError {
    fn field(field: &str, message: impl Into<String>) -> EditError {
        EditError::Invalid {
            field: Some(field.to_string()),
            message: message.into(),
        }
    }
}

/// A forward as a form edits it: strings where the user types, checked by [`apply`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ForwardDraft {
    pub name: String,
    /// Its cluster's name; empty: the config's only cluster (the key is not written).
    pub cluster: String,
    pub namespace: String,
    pub service: String,
    /// Instead of `service`: pods by their labels, `k=v,k2=v2` (a Deployment's).
    pub pods: String,
    /// Instead of `service`: one pod by name.
    pub pod: String,
    /// Empty: the service's first port. Digits: a port number. Otherwise a port name.
    pub service_port: String,
    pub local_port: String,
    /// Empty: 127.0.0.1.
    pub bind: String,
    /// `tcp`, `tls`, or `http:/path`.
    pub probe: String,
    /// Empty: the cluster's default mode.
    pub mode: String,
    pub enabled: bool,
}

impl ForwardDraft {
    /// What it goes to, as the status shows it: `web`, `pods -l app=worker`, `pod/debug-0`.
    pub fn target_text(&self) -> String {
        match (self.service.trim(), self.pods.trim(), self.pod.trim()) {
            ("", "", pod) if !pod.is_empty() => format!("pod/{pod}"),
            ("", pods, _) if !pods.is_empty() => format!("pods -l {pods}"),
            (service, _, _) => service.to_string(),
        }
    }
}

/// A cluster an import adds: a context of the kubeconfig `kubeconfig` (kubectl's when `None`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewCluster {
    pub context: String,
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
}

/// One change to the config file.
// One is made per user action and consumed at once: a box would save nothing worth its noise.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// Replaces the forward named `replaces` (when given) or appends a new one.
    Forward {
        replaces: Option<String>,
        draft: ForwardDraft,
    },
    RemoveForward(String),
    /// New forwards appended in one write (an import), after the new clusters they name
    /// (each named by its context).
    AddForwards {
        clusters: Vec<NewCluster>,
        forwards: Vec<ForwardDraft>,
    },
    /// The context of the cluster kubectl should point at (`[cluster] context`); `None`
    /// follows kubectl's current-context.
    Context(Option<String>),
    /// A cluster more: a `[[cluster]]` with `context` (and `name`, else the context names it;
    /// `kubeconfig`, the file whose context it is, when not kubectl's default). A lone
    /// `[cluster]` becomes the first `[[cluster]]`, and its forwards say `cluster = "…"`, as
    /// they must once there are two.
    AddCluster {
        context: String,
        name: Option<String>,
        kubeconfig: Option<PathBuf>,
    },
    /// A cluster and every forward in it; the last cluster cannot go.
    RemoveCluster(String),
}

/// Applies `edit` to the config file at `path`, creating it from `base` (the config text in
/// effect, e.g. a preset) when it does not exist. Returns the new config. Blocking.
/// The replaced text is kept in `backups`.
pub fn save(path: &Path, base: &str, edit: &Edit, backups: &Backups) -> Result<Config, EditError> {
    // Created whole, or left alone when someone else made it meanwhile: the edit then applies
    // to theirs.
    if !path.exists() {
        create(path, base)?;
    }
    let source = Source::File(path.to_path_buf());
    let mut config = None;
    let written = write::replace(path, backups, LockWait::default(), |old| {
        let text = apply(old, edit, path)?;
        config = Some(validate(&text, &source)?);
        Ok::<_, EditError>(text)
    })?;
    written?;
    match config {
        Some(config) => Ok(config),
        None => unreachable!("replace runs the edit, which sets the config or fails"),
    }
}

fn create(path: &Path, text: &str) -> Result<bool, EditError> {
    write::create(path, text.as_bytes()).map_err(|error| EditError::Create {
        path: path.to_path_buf(),
        error,
    })
}

fn validate(text: &str, source: &Source) -> Result<Config, EditError> {
    Config::parse(text, source).map_err(|e| match e {
        ConfigError::Invalid { key, message, .. } => EditError::Invalid {
            field: Some(key),
            message,
        },
        other => EditError::Invalid {
            field: None,
            message: other.to_string(),
        },
    })
}

/// The text of the config after `edit`; comments and untouched tables are kept byte for byte.
pub fn apply(text: &str, edit: &Edit, path: &Path) -> Result<String, EditError> {
    // An import's new clusters first: its forwards name them.
    if let Edit::AddForwards { clusters, forwards } = edit
        && !clusters.is_empty()
    {
        let mut text = text.to_string();
        for cluster in clusters {
            let add = Edit::AddCluster {
                context: cluster.context.clone(),
                name: None,
                kubeconfig: cluster.kubeconfig.clone(),
            };
            text = apply(&text, &add, path)?;
        }
        let forwards = Edit::AddForwards {
            clusters: Vec::new(),
            forwards: forwards.clone(),
        };
        return apply(&text, &forwards, path);
    }
    let mut doc: DocumentMut = text.parse().map_err(|e: toml_edit::TomlError| EditError::Unreadable {
        path: path.to_path_buf(),
        message: e.message().to_string(),
    })?;
    match edit {
        Edit::Forward { replaces, draft } => {
            let table = forward_table(draft)?;
            let forwards = forwards(&mut doc)?;
            match replaces {
                Some(name) => {
                    let index = position(forwards, name).ok_or_else(|| EditError::UnknownForward(name.clone()))?;
                    let old = forwards.get_mut(index).expect("position is in range");
                    merge(old, table);
                }
                None => {
                    let mut tables = vec![table];
                    append(&mut doc, &mut tables)?;
                }
            }
        }
        Edit::AddForwards { forwards: drafts, .. } => {
            let tables = drafts
                .iter()
                .map(|draft| {
                    forward_table(draft).map_err(|e| match e {
                        EditError::Invalid { field, message } => EditError::Invalid {
                            field,
                            message: format!("{}: {message}", draft.name),
                        },
                        other => other,
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let mut tables = tables;
            append(&mut doc, &mut tables)?;
        }
        Edit::RemoveForward(name) => {
            let forwards = forwards(&mut doc)?;
            let index = position(forwards, name).ok_or_else(|| EditError::UnknownForward(name.clone()))?;
            forwards.remove(index);
        }
        Edit::Context(context) => {
            let config = parsed(text, path)?;
            let several = config.clusters.len() > 1;
            let index = config.clusters.iter().position(|c| c.kubectl).unwrap_or(0);
            let kubectl = config.kubectl_cluster();
            let cluster: &mut dyn toml_edit::TableLike =
                match doc.entry("cluster").or_insert_with(|| Item::Table(Table::new())) {
                    Item::ArrayOfTables(clusters) => clusters
                        .get_mut(index)
                        .ok_or_else(|| EditError::field("context", "no such `[[cluster]]`"))?,
                    item => item
                        .as_table_like_mut()
                        .ok_or_else(|| EditError::field("context", "`cluster` is not a table"))?,
                };
            // Its forwards name it: a name that came from the old context must stay.
            if several && !cluster.contains_key("name") {
                cluster.insert("name", value(kubectl.name.as_str()));
            }
            match context {
                Some(context) => set_keeping_comments(cluster, "context", value(context.as_str())),
                None => {
                    cluster.remove("context");
                }
            }
        }
        Edit::AddCluster {
            context,
            name,
            kubeconfig,
        } => {
            let config = parsed(text, path)?;
            let context = context.trim();
            if context.is_empty() {
                return Err(EditError::field("cluster", "choose the context of the cluster to add"));
            }
            let mut clusters = match doc.remove("cluster") {
                Some(Item::ArrayOfTables(clusters)) => clusters,
                Some(Item::Table(table)) => {
                    let mut clusters = toml_edit::ArrayOfTables::new();
                    clusters.push(table);
                    clusters
                }
                None => {
                    let mut clusters = toml_edit::ArrayOfTables::new();
                    clusters.push(Table::new());
                    clusters
                }
                Some(_) => return Err(EditError::field("cluster", "`cluster` is not a table")),
            };
            let mut table = Table::new();
            if let Some(name) = name.as_deref().map(str::trim).filter(|n| !n.is_empty()) {
                table.insert("name", value(name));
            }
            table.insert("context", value(context));
            if let Some(kubeconfig) = kubeconfig {
                table.insert("kubeconfig", value(kubeconfig.display().to_string()));
            }
            clusters.push(table);
            doc.insert("cluster", Item::ArrayOfTables(clusters));
            // Every forward must say its cluster once there are two.
            if config.clusters.len() == 1
                && let Some(Item::ArrayOfTables(forwards)) = doc.get_mut("forward")
            {
                for forward in forwards.iter_mut() {
                    if !forward.contains_key("cluster") {
                        forward.insert("cluster", value(config.clusters[0].name.as_str()));
                    }
                }
            }
        }
        Edit::RemoveCluster(name) => {
            let config = parsed(text, path)?;
            let index = config
                .clusters
                .iter()
                .position(|c| c.name == *name)
                .ok_or_else(|| EditError::field("cluster", format!("no cluster is named `{name}`")))?;
            if config.clusters.len() == 1 {
                return Err(EditError::field(
                    "cluster",
                    "the last cluster cannot be removed: choose another context for it instead",
                ));
            }
            let Some(Item::ArrayOfTables(clusters)) = doc.get_mut("cluster") else {
                return Err(EditError::field(
                    "cluster",
                    "`cluster` is not written as [[cluster]] tables",
                ));
            };
            clusters.remove(index);
            if let Some(Item::ArrayOfTables(forwards)) = doc.get_mut("forward") {
                // The parsed forwards are the tables, in order.
                let mut theirs = config.forwards.iter().map(|f| f.cluster == *name);
                forwards.retain(|_| !theirs.next().unwrap_or(false));
            }
        }
    }
    Ok(doc.to_string())
}

/// The config `text` says, for an edit that must know what it means (which forwards are in
/// which cluster).
fn parsed(text: &str, path: &Path) -> Result<Config, EditError> {
    validate(text, &Source::File(path.to_path_buf()))
}

fn forwards(doc: &mut DocumentMut) -> Result<&mut toml_edit::ArrayOfTables, EditError> {
    doc.entry("forward")
        .or_insert_with(|| Item::ArrayOfTables(Default::default()))
        .as_array_of_tables_mut()
        .ok_or_else(|| {
            EditError::field(
                "name",
                "`forward` must be written as [[forward]] tables to be edited here",
            )
        })
}

/// Appends `tables` as `[[forward]]`s. Comments at the end of the file (after the last table's
/// keys, such as `# context = …` under `[cluster]`) stay where they were, above the new ones,
/// rather than end up below them.
fn append(doc: &mut DocumentMut, tables: &mut Vec<Table>) -> Result<(), EditError> {
    let trailing = doc.trailing().as_str().unwrap_or_default().to_string();
    if let Some(first) = tables.first_mut()
        && !trailing.trim().is_empty()
    {
        doc.set_trailing("");
        first.decor_mut().set_prefix(format!("{}\n\n", trailing.trim_end()));
    }
    let forwards = forwards(doc)?;
    for table in tables.drain(..) {
        forwards.push(table);
    }
    Ok(())
}

fn position(forwards: &toml_edit::ArrayOfTables, name: &str) -> Option<usize> {
    forwards
        .iter()
        .position(|t| t.get("name").and_then(|n| n.as_str()) == Some(name))
}

/// Sets `key`, keeping the comment and spacing around its old value.
fn set_keeping_comments(table: &mut dyn toml_edit::TableLike, key: &str, item: Item) {
    let decor = table.get(key).and_then(|i| i.as_value()).map(|v| v.decor().clone());
    table.insert(key, item);
    if let (Some(decor), Some(v)) = (decor, table.get_mut(key).and_then(|i| i.as_value_mut())) {
        *v.decor_mut() = decor;
    }
}

/// Sets the form's keys on an existing table, so its comments and the keys the form does not
/// show (a selector, say) stay; keys the form leaves empty are removed.
fn merge(old: &mut Table, new: Table) {
    const FORM_KEYS: [&str; 11] = [
        "name",
        "namespace",
        "service",
        "pods",
        "pod",
        "service_port",
        "local_port",
        "bind",
        "probe",
        "mode",
        "enabled",
    ];
    for key in FORM_KEYS {
        match new.get(key) {
            Some(item) => set_keeping_comments(old, key, item.clone()),
            None => {
                old.remove(key);
            }
        }
    }
    if new.contains_key("service") || new.contains_key("pods") || new.contains_key("pod") {
        old.remove("selector");
    }
    // A form that does not choose a cluster (a config with one) leaves the key as it is.
    if let Some(cluster) = new.get("cluster") {
        set_keeping_comments(old, "cluster", cluster.clone());
    }
}

/// The `[[forward]]` table for a draft; errors name the field.
fn forward_table(draft: &ForwardDraft) -> Result<Table, EditError> {
    let mut table = Table::new();
    let name = draft.name.trim();
    if name.is_empty() {
        return Err(EditError::field("name", "a forward needs a name"));
    }
    table.insert("name", value(name));
    if !draft.cluster.trim().is_empty() {
        table.insert("cluster", value(draft.cluster.trim()));
    }
    let namespace = draft.namespace.trim();
    if namespace.is_empty() {
        return Err(EditError::field("namespace", "choose or type a namespace"));
    }
    table.insert("namespace", value(namespace));
    match (draft.service.trim(), draft.pods.trim(), draft.pod.trim()) {
        (service, "", "") if !service.is_empty() => {
            table.insert("service", value(service));
        }
        ("", pods, "") if !pods.is_empty() => {
            let mut labels = toml_edit::InlineTable::new();
            for pair in pods.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let (k, v) = pair
                    .split_once('=')
                    .filter(|(k, _)| !k.trim().is_empty())
                    .ok_or_else(|| EditError::field("pods", format!("`{pair}` is not `label=value`")))?;
                labels.insert(k.trim(), v.trim().into());
            }
            table.insert("pods", value(labels));
        }
        ("", "", pod) if !pod.is_empty() => {
            table.insert("pod", value(pod));
        }
        ("", "", "") => return Err(EditError::field("service", "choose or type a service")),
        _ => {
            return Err(EditError::field(
                "service",
                "a forward goes to a service, pods or a pod: keep one",
            ));
        }
    }
    match draft.service_port.trim() {
        "" => {}
        port => match port.parse::<i64>() {
            Ok(n) if (1..=65535).contains(&n) => {
                table.insert("service_port", value(n));
            }
            Ok(n) => return Err(EditError::field("service_port", format!("{n} is not a port (1-65535)"))),
            Err(_) => {
                table.insert("service_port", value(port));
            }
        },
    }
    let local_port = draft.local_port.trim();
    let port = local_port
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| EditError::field("local_port", format!("`{local_port}` is not a port (1-65535)")))?;
    table.insert("local_port", value(i64::from(port)));
    match draft.bind.trim() {
        // The default: 127.0.0.1 and ::1.
        "" | "localhost" => {}
        bind => {
            bind.parse::<std::net::IpAddr>()
                .map_err(|_| EditError::field("bind", format!("`{bind}` is not an IP address or `localhost`")))?;
            table.insert("bind", value(bind));
        }
    }
    match draft.probe.trim() {
        "" | "auto" => {}
        kind @ ("tcp" | "tls") => {
            table.insert("probe", value(kind));
        }
        probe => {
            let path = probe.strip_prefix("http:").unwrap_or(probe);
            if !path.starts_with('/') {
                return Err(EditError::field(
                    "probe",
                    "an http probe needs a path starting with `/`",
                ));
            }
            let mut http = toml_edit::InlineTable::new();
            http.insert("http", path.into());
            table.insert("probe", value(http));
        }
    }
    match draft.mode.trim() {
        "" => {}
        mode @ ("auto" | "nodeport" | "tunnel" | "watch") => {
            table.insert("mode", value(mode));
        }
        other => {
            return Err(EditError::field(
                "mode",
                format!("`{other}` is not auto, nodeport, tunnel or watch"),
            ));
        }
    }
    if !draft.enabled {
        table.insert("enabled", value(false));
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# my forwards\n[cluster]\ncontext = \"kind-a\"   # the cluster\n\n[[forward]]\nname = \"console\"   # the UI\nnamespace = \"web\"\nservice = \"console\"\nlocal_port = 3000\n\n# the API\n[[forward]]\nname = \"api\"\nnamespace = \"web\"\nservice = \"api\"\nlocal_port = 8080\n";

    fn draft(name: &str, port: &str) -> ForwardDraft {
        ForwardDraft {
            name: name.into(),
            namespace: "web".into(),
            service: "gateway".into(),
            local_port: port.into(),
            enabled: true,
            ..Default::default()
        }
    }

    fn edited(edit: &Edit) -> String {
        apply(TEXT, edit, Path::new("/c.toml")).unwrap()
    }

    #[test]
    fn adding_a_forward_appends_a_table_and_keeps_the_rest() {
        let mut d = draft("gateway", "8443");
        d.probe = "http:/healthz".into();
        d.service_port = "https".into();
        let text = edited(&Edit::Forward {
            replaces: None,
            draft: d,
        });
        assert!(text.starts_with(TEXT), "{text}");
        let config = Config::parse(&text, &Source::Preset("t")).unwrap();
        let gateway = config.forward("gateway").unwrap();
        assert_eq!(gateway.local_port, 8443);
        assert_eq!(gateway.probe, super::super::Probe::Http("/healthz".into()));
        assert_eq!(gateway.service_port, Some(super::super::PortRef::Name("https".into())));
    }

    #[test]
    fn adding_a_second_cluster_names_the_first_and_its_forwards_say_which() {
        let text = edited(&Edit::AddCluster {
            context: "k3d-lab".into(),
            name: Some("lab".into()),
            kubeconfig: None,
        });
        // The comments and values stay; `[cluster]` became the first `[[cluster]]`, the new one
        // follows it.
        assert_eq!(
            text,
            "# my forwards\n[[cluster]]\ncontext = \"kind-a\"   # the cluster\n\n[[cluster]]\nname = \"lab\"\ncontext = \"k3d-lab\"\n\n[[forward]]\nname = \"console\"   # the UI\nnamespace = \"web\"\nservice = \"console\"\nlocal_port = 3000\ncluster = \"kind-a\"\n\n# the API\n[[forward]]\nname = \"api\"\nnamespace = \"web\"\nservice = \"api\"\nlocal_port = 8080\ncluster = \"kind-a\"\n"
        );
        let config = Config::parse(&text, &Source::Preset("t")).unwrap();
        let names: Vec<&str> = config.clusters.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["kind-a", "lab"]);
        assert_eq!(config.kubectl_cluster().name, "kind-a");

        // A forward for the new cluster, then the page changes the kubectl context: the first
        // cluster keeps its name, so its forwards still find it.
        let mut d = draft("lab-api", "9000");
        d.cluster = "lab".into();
        let text = apply(
            &text,
            &Edit::Forward {
                replaces: None,
                draft: d,
            },
            Path::new("/c.toml"),
        )
        .unwrap();
        let text = apply(&text, &Edit::Context(Some("kind-b".into())), Path::new("/c.toml")).unwrap();
        let config = Config::parse(&text, &Source::Preset("t")).unwrap();
        assert_eq!(config.clusters[0].name, "kind-a");
        assert_eq!(config.clusters[0].context.as_deref(), Some("kind-b"));
        assert_eq!(config.forward("lab-api").unwrap().cluster, "lab");

        // Removing it takes its forwards, and only them.
        let text = apply(&text, &Edit::RemoveCluster("lab".into()), Path::new("/c.toml")).unwrap();
        let config = Config::parse(&text, &Source::Preset("t")).unwrap();
        assert_eq!(config.clusters.len(), 1);
        let names: Vec<&str> = config.forwards.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["console", "api"]);
        assert!(text.contains("# the API\n") && text.contains("# the UI\n"), "{text}");
        let last = apply(&text, &Edit::RemoveCluster("kind-a".into()), Path::new("/c.toml"));
        assert!(matches!(last, Err(EditError::Invalid { .. })), "{last:?}");
        // A name that is taken is refused by validation, naming both.
        let taken = apply(
            TEXT,
            &Edit::AddCluster {
                context: "kind-b".into(),
                name: Some("kind-a".into()),
                kubeconfig: Some("/home/me/.kube/other".into()),
            },
            Path::new("/c.toml"),
        )
        .and_then(|t| validate(&t, &Source::Preset("t")).map(|_| t));
        assert!(
            matches!(&taken, Err(EditError::Invalid { message, .. }) if message.contains("two clusters are named `kind-a`")),
            "{taken:?}"
        );
    }

    #[test]
    fn forwards_added_to_a_file_ending_in_comments_go_below_them() {
        let text = crate::config::EMPTY;
        let one = apply(
            text,
            &Edit::Forward {
                replaces: None,
                draft: draft("a", "1"),
            },
            Path::new("/c.toml"),
        )
        .unwrap();
        assert!(one.starts_with(text), "{one}");
        assert!(one[text.len()..].starts_with("\n[[forward]]\nname = \"a\""), "{one}");
        let two = apply(
            &one,
            &Edit::AddForwards {
                clusters: Vec::new(),
                forwards: vec![draft("b", "2"), draft("c", "3")],
            },
            Path::new("/c.toml"),
        )
        .unwrap();
        assert!(two.starts_with(&one), "{two}");
        assert_eq!(two.matches("[[forward]]").count(), 3);
        // A bad one among several: nothing is applied, and its name is said.
        let error = apply(
            &one,
            &Edit::AddForwards {
                clusters: Vec::new(),
                forwards: vec![draft("b", "2"), draft("d", "x")],
            },
            Path::new("/c.toml"),
        )
        .unwrap_err();
        assert!(error.to_string().starts_with("d: "), "{error}");
    }

    #[test]
    fn changing_a_forward_keeps_its_comments_and_place() {
        let mut d = draft("console", "3001");
        d.service = "console".into();
        let text = edited(&Edit::Forward {
            replaces: Some("console".into()),
            draft: d,
        });
        assert_eq!(text, TEXT.replace("local_port = 3000", "local_port = 3001"));
    }

    #[test]
    fn removing_a_forward_leaves_the_others() {
        let text = edited(&Edit::RemoveForward("console".into()));
        let config = Config::parse(&text, &Source::Preset("t")).unwrap();
        assert_eq!(config.forwards.len(), 1);
        assert!(text.contains("# my forwards") && text.contains("name = \"api\""));
    }

    #[test]
    fn setting_the_context_keeps_its_comment() {
        let text = edited(&Edit::Context(Some("kind-b".into())));
        assert_eq!(text, TEXT.replace("\"kind-a\"", "\"kind-b\""));
    }

    #[test]
    fn form_errors_name_their_field() {
        for (field, d) in [
            ("name", draft("", "1")),
            ("local_port", draft("x", "http")),
            ("local_port", draft("x", "70000")),
            (
                "bind",
                ForwardDraft {
                    bind: "my-laptop".into(),
                    ..draft("x", "1")
                },
            ),
            (
                "probe",
                ForwardDraft {
                    probe: "http:healthz".into(),
                    ..draft("x", "1")
                },
            ),
            (
                "mode",
                ForwardDraft {
                    mode: "fast".into(),
                    ..draft("x", "1")
                },
            ),
            (
                "namespace",
                ForwardDraft {
                    namespace: " ".into(),
                    ..draft("x", "1")
                },
            ),
        ] {
            match apply(
                TEXT,
                &Edit::Forward {
                    replaces: None,
                    draft: d,
                },
                Path::new("/c.toml"),
            ) {
                Err(EditError::Invalid { field: Some(f), .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_duplicate_port_is_refused_by_validation_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("porthole.toml");
        std::fs::write(&path, TEXT).unwrap();
        let backups = Backups::at(dir.path().join("backups"));
        let err = save(
            &path,
            "",
            &Edit::Forward {
                replaces: None,
                draft: draft("twin", "3000"),
            },
            &backups,
        )
        .unwrap_err();
        match err {
            EditError::Invalid { field, message } => {
                assert_eq!(field.as_deref(), Some("local_port"));
                assert!(message.contains("3000"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(std::fs::read_to_string(&path).unwrap(), TEXT);
        assert!(backups.of(&std::fs::canonicalize(&path).unwrap()).is_empty());
    }

    #[test]
    fn saving_without_a_file_starts_from_the_base_and_backs_it_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/porthole.toml");
        let backups = Backups::at(dir.path().join("backups"));
        let config = save(
            &path,
            TEXT,
            &Edit::Forward {
                replaces: None,
                draft: draft("gateway", "8443"),
            },
            &backups,
        )
        .unwrap();
        assert_eq!(config.forwards.len(), 3);
        assert!(std::fs::read_to_string(&path).unwrap().starts_with(TEXT));
        assert_eq!(backups.of(&std::fs::canonicalize(&path).unwrap()).len(), 1);
    }
}
