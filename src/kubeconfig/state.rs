//! Is kubectl pointed at the cluster Porthole is configured for, and if not, the one fix that
//! makes it so: what `kind export kubeconfig --name NAME` does, and nothing more.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::edit::{self, EditError, Entries};
use super::tools::{Origin, ToolError, Tools};
use super::{KubeconfigError, Loaded};
use crate::write::{self, Backups, LockWait, WriteError, Written};

/// Bound on asking the API server's address whether it answers, to tell a stale entry from a
/// good one.
const API_CHECK: Duration = Duration::from_secs(3);

/// The kubeconfig as seen from Porthole's configured context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum KubeconfigState {
    Ok {
        context: String,
    },
    /// current-context is another context.
    ContextMismatch {
        expected: String,
        current: String,
    },
    /// No current-context (what `kind delete cluster` leaves).
    ContextUnset {
        expected: String,
    },
    /// The context is in no kubeconfig file.
    ContextMissing {
        expected: String,
    },
    /// The context's API server does not answer, and its tool has a newer definition.
    ContextStale {
        expected: String,
        server: String,
        fresh_server: String,
    },
}

impl KubeconfigState {
    pub fn id(&self) -> &'static str {
        match self {
            KubeconfigState::Ok { .. } => "ok",
            KubeconfigState::ContextMismatch { .. } => "context-mismatch",
            KubeconfigState::ContextUnset { .. } => "context-unset",
            KubeconfigState::ContextMissing { .. } => "context-missing",
            KubeconfigState::ContextStale { .. } => "context-stale",
        }
    }

    pub fn is_ok(&self) -> bool {
        matches!(self, KubeconfigState::Ok { .. })
    }

    /// One sentence for a human.
    pub fn sentence(&self) -> String {
        match self {
            KubeconfigState::Ok { context } => format!("kubectl uses {context}"),
            KubeconfigState::ContextMismatch { expected, current } => {
                format!("kubectl's current-context is {current}, not {expected}")
            }
            KubeconfigState::ContextUnset { expected } => {
                format!("kubectl has no current-context; expected {expected}")
            }
            KubeconfigState::ContextMissing { expected } => format!("context {expected} is in no kubeconfig file"),
            KubeconfigState::ContextStale {
                expected,
                server,
                fresh_server,
            } => format!(
                "context {expected} points at {server}, which does not answer; the cluster now listens at {fresh_server}"
            ),
        }
    }

    /// The fix that `porthole fix-kubeconfig` would apply.
    pub fn fix(&self) -> Option<String> {
        match self {
            KubeconfigState::Ok { .. } => None,
            KubeconfigState::ContextMismatch { expected, .. } | KubeconfigState::ContextUnset { expected } => {
                Some(format!("set current-context to {expected}"))
            }
            KubeconfigState::ContextMissing { expected } | KubeconfigState::ContextStale { expected, .. } => {
                Some(match Origin::of(expected) {
                    Some(origin) => format!("`{}`", origin.export_hint()),
                    None => format!("add the {expected} context to the kubeconfig"),
                })
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FixError {
    #[error(transparent)]
    Kubeconfig(#[from] KubeconfigError),
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error("kubeconfig {path}: {error}")]
    Edit { path: PathBuf, error: EditError },
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("the config sets no `cluster.context`: Porthole follows kubectl's, so there is nothing to fix")]
    NoContext,
}

/// What [`fix`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fixed {
    /// In words: "set current-context to kind-x", "merged kind-x from kind".
    pub summary: String,
    pub file: PathBuf,
    /// `None` when the file was already right by the time it was locked.
    pub backup: Option<PathBuf>,
}

/// Inspects the kubeconfig of `cluster` and, when kubectl's context is not Porthole's, fixes it
/// (see [`plan`]). `Ok(None)`: nothing to fix.
pub async fn fix(
    cluster: &crate::config::ClusterSpec,
    tools: &Tools,
    backups: &Backups,
) -> Result<Option<Fixed>, FixError> {
    let expected = cluster.context.clone().ok_or(FixError::NoContext)?;
    let inspection = inspect(super::files(cluster), &expected, tools).await?;
    let Some(plan) = self::plan(&inspection, tools).await? else {
        return Ok(None);
    };
    let backups = backups.clone();
    let applied = tokio::task::spawn_blocking(move || plan.apply(&backups, LockWait::default()).map(|w| (plan, w)))
        .await
        .map_err(|e| {
            FixError::Write(WriteError::Io {
                path: PathBuf::new(),
                what: "the fix did not finish",
                error: std::io::Error::other(e.to_string()),
            })
        })??;
    let (plan, written) = applied;
    Ok(Some(Fixed {
        summary: plan.summary,
        file: written.as_ref().map(|w| w.target.clone()).unwrap_or(plan.file),
        backup: written.map(|w| w.backup),
    }))
}

/// What was found, and where kubectl keeps it.
#[derive(Debug, Clone)]
pub struct Inspection {
    pub state: KubeconfigState,
    pub files: Vec<PathBuf>,
}

/// Reads the kubeconfig files and compares them with `expected`; asks the API server (boundedly)
/// and the cluster's tool only when the context exists but may be stale.
pub async fn inspect(files: Vec<PathBuf>, expected: &str, tools: &Tools) -> Result<Inspection, KubeconfigError> {
    let loaded = match Loaded::read(files.clone()) {
        Ok(loaded) => loaded,
        Err(KubeconfigError::NotFound(_)) => {
            let state = KubeconfigState::ContextMissing {
                expected: expected.into(),
            };
            return Ok(Inspection { state, files });
        }
        Err(e) => return Err(e),
    };
    // A context whose cluster entry is gone is as good as missing: kubectl cannot connect.
    let state = if !loaded.has_context(expected) || server_of(&loaded.merged, expected).is_none() {
        KubeconfigState::ContextMissing {
            expected: expected.into(),
        }
    } else if let Some(stale) = staleness(&loaded, expected, tools).await {
        stale
    } else {
        match loaded.current_context() {
            Some(current) if current == expected => KubeconfigState::Ok {
                context: current.into(),
            },
            Some(current) => KubeconfigState::ContextMismatch {
                expected: expected.into(),
                current: current.into(),
            },
            None => KubeconfigState::ContextUnset {
                expected: expected.into(),
            },
        }
    };
    Ok(Inspection { state, files })
}

/// `Some(ContextStale)` when the API server of `context` does not answer and the cluster's tool
/// reports another server for it. The tool is asked only then: it may take a while (`kind`
/// reads the file from the control-plane container).
async fn staleness(loaded: &Loaded, context: &str, tools: &Tools) -> Option<KubeconfigState> {
    let server = server_of(&loaded.merged, context)?;
    if answers(&server).await {
        return None;
    }
    let fresh = tools.fresh_kubeconfig(context).await.ok()?;
    let fresh: kube::config::Kubeconfig = serde_saphyr::from_str(&fresh).ok()?;
    let fresh_server = server_of(&fresh, context)?;
    (fresh_server != server).then(|| KubeconfigState::ContextStale {
        expected: context.into(),
        server,
        fresh_server,
    })
}

/// Whether something accepts connections at a server URL's host and port (credentials aside:
/// a stale entry points where nothing listens any more).
async fn answers(server: &str) -> bool {
    let rest = server.split_once("://").map_or(server, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or_default();
    let default_port = if server.starts_with("http://") { 80 } else { 443 };
    let has_port = authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        && !authority.ends_with(']');
    let target = if has_port {
        authority.to_string()
    } else {
        format!("{authority}:{default_port}")
    };
    let target = target.replace(['[', ']'], "");
    let connect = tokio::net::TcpStream::connect(target);
    matches!(tokio::time::timeout(API_CHECK, connect).await, Ok(Ok(_)))
}

fn server_of(kubeconfig: &kube::config::Kubeconfig, context: &str) -> Option<String> {
    let named = kubeconfig.contexts.iter().find(|c| c.name == context)?;
    let cluster = &named.context.as_ref()?.cluster;
    let entry = kubeconfig.clusters.iter().find(|c| c.name == *cluster)?;
    entry.cluster.as_ref()?.server.clone()
}

/// The file kubectl writes a current-context to (client-go's `GetDefaultFilename`): the only
/// file of the list; else the first that exists; else the last.
pub fn current_context_file(files: &[PathBuf]) -> PathBuf {
    first_existing_else_last(files)
}

/// The file kind merges entries into (`pathForMerge`): the same rule.
fn merge_file(files: &[PathBuf]) -> PathBuf {
    first_existing_else_last(files)
}

fn first_existing_else_last(files: &[PathBuf]) -> PathBuf {
    files
        .iter()
        .find(|p| p.is_file())
        .or_else(|| files.last())
        .cloned()
        .unwrap_or_else(|| PathBuf::from("config"))
}

/// A fix ready to apply: the file, its contents now and after.
#[derive(Debug, Clone)]
pub struct Plan {
    pub file: PathBuf,
    pub before: String,
    pub after: String,
    pub summary: String,
    /// For a merge: the fresh document the entries come from.
    fresh: Option<(String, Entries)>,
    context: String,
}

impl Plan {
    /// A unified diff of the change, as `--dry-run` shows it, with credentials masked.
    pub fn diff(&self) -> String {
        let name = self.file.display().to_string();
        let (before, after) = (redact(&self.before), redact(&self.after));
        similar::TextDiff::from_lines(&before, &after)
            .unified_diff()
            .context_radius(3)
            .header(&name, &name)
            .to_string()
    }

    /// Applies the fix under the lock, re-doing the edit on the bytes read there (another
    /// writer's change since the plan is kept, not overwritten). Blocking.
    pub fn apply(&self, backups: &Backups, wait: LockWait) -> Result<Option<Written>, FixError> {
        ensure_exists(&self.file).map_err(|error| write_io(&self.file, error))?;
        let edited = write::replace(&self.file, backups, wait, |current| match &self.fresh {
            Some((fresh, entries)) => edit::merge(current, fresh, entries),
            None => edit::set_current_context(current, &self.context),
        })?;
        edited.map_err(|error| FixError::Edit {
            path: self.file.clone(),
            error,
        })
    }
}

/// Keys whose values are credentials: never shown, not even in a diff.
const SECRET_KEYS: &[&str] = &[
    "token",
    "client-key-data",
    "password",
    "id-token",
    "refresh-token",
    "access-token",
    "client-secret",
    "secret",
];

/// The text with the value of every secret key replaced (block and flow style alike): line by
/// line for `key: value`, then every secret the parsed document holds (a multi-line `token: |`
/// block, an exec plugin's `env` values), wherever and however it is written.
fn redact(text: &str) -> String {
    let mut out: String = text.split_inclusive('\n').map(redact_line).collect();
    let mut found = Vec::new();
    if let Ok(doc) = edit::parse(text) {
        secrets(&doc, false, &mut found);
    }
    // Longest first, so a secret that contains another is replaced whole.
    let mut pieces: Vec<&str> = found
        .iter()
        // By word: a folded (`>`) block is written over lines its value joins with spaces.
        .flat_map(|s| s.split_whitespace())
        .filter(|piece| piece.len() >= MIN_SECRET)
        .collect();
    pieces.sort_by_key(|piece| std::cmp::Reverse(piece.len()));
    for piece in pieces {
        out = out.replace(piece, "<redacted>");
    }
    out
}

/// Shorter values are left to the line-based pass: replacing them everywhere would garble the
/// diff without hiding anything worth hiding.
const MIN_SECRET: usize = 4;

/// Every string under a secret key, and every value of an exec plugin's `env`.
fn secrets(value: &serde_json::Value, secret: bool, out: &mut Vec<String>) {
    use serde_json::Value;
    match value {
        Value::String(s) if secret => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|v| secrets(v, secret, out)),
        Value::Object(map) => {
            for (key, v) in map {
                let env = key == "env" && v.as_array().is_some_and(|a| a.iter().all(|e| e.get("value").is_some()));
                if env {
                    out.extend(
                        v.as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|e| e["value"].as_str().map(String::from)),
                    );
                } else {
                    secrets(v, secret || SECRET_KEYS.contains(&key.as_str()), out);
                }
            }
        }
        _ => {}
    }
}

fn redact_line(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    'scan: while !rest.is_empty() {
        for key in SECRET_KEYS {
            let at_key = rest.starts_with(key)
                && rest[key.len()..]
                    .trim_start_matches([' ', '\t', '"', '\''])
                    .starts_with(':');
            let boundary = out.is_empty() || out.ends_with([' ', '\t', '{', ',', '-', '"', '\'']);
            if at_key && boundary {
                let colon = key.len() + rest[key.len()..].find(':').unwrap_or(0);
                out.push_str(&rest[..=colon]);
                let value = &rest[colon + 1..];
                let end = value.find([',', '}', '\n', '\r']).unwrap_or(value.len());
                if value[..end].trim().is_empty() {
                    rest = value;
                } else {
                    out.push_str(" <redacted>");
                    rest = &value[end..];
                }
                continue 'scan;
            }
        }
        let mut chars = rest.chars();
        if let Some(c) = chars.next() {
            out.push(c);
        }
        rest = chars.as_str();
    }
    out
}

/// The fix for what `inspection` found; `None` when there is nothing to fix.
pub async fn plan(inspection: &Inspection, tools: &Tools) -> Result<Option<Plan>, FixError> {
    let files = &inspection.files;
    let (file, fresh, context) = match &inspection.state {
        KubeconfigState::Ok { .. } => return Ok(None),
        KubeconfigState::ContextMismatch { expected, .. } | KubeconfigState::ContextUnset { expected } => {
            (current_context_file(files), None, expected.clone())
        }
        KubeconfigState::ContextMissing { expected } | KubeconfigState::ContextStale { expected, .. } => {
            let fresh = tools.fresh_kubeconfig(expected).await?;
            let entries = entries_of(&fresh, expected).map_err(|error| FixError::Edit {
                path: PathBuf::from(format!(
                    "<output of {}>",
                    Origin::of(expected).map_or(String::new(), |o| o.export_hint())
                )),
                error,
            })?;
            (merge_file(files), Some((fresh, entries)), expected.clone())
        }
    };
    let before = read_or_empty(&file)?;
    let after = match &fresh {
        Some((fresh, entries)) => edit::merge(&before, fresh, entries),
        None => edit::set_current_context(&before, &context),
    }
    .map_err(|error| FixError::Edit {
        path: file.clone(),
        error,
    })?;
    let summary = match &fresh {
        Some(_) => format!("merged the {context} cluster, user and context from its tool and set current-context"),
        None => format!("set current-context to {context}"),
    };
    Ok(Some(Plan {
        file,
        before,
        after,
        summary,
        fresh,
        context,
    }))
}

/// The entries a context uses in a fresh document: kind names all three `kind-NAME`, k3d
/// names its user `admin@k3d-NAME`.
fn entries_of(fresh: &str, context: &str) -> Result<Entries, EditError> {
    // Only the first line of a parse error: the rest quotes the document, which holds keys.
    let doc: kube::config::Kubeconfig = serde_saphyr::from_str(fresh)
        .map_err(|e| EditError::Parse(e.to_string().lines().next().unwrap_or_default().to_string()))?;
    let named = doc.contexts.iter().find(|c| c.name == context);
    let inner = named
        .and_then(|c| c.context.as_ref())
        .ok_or_else(|| EditError::Unexpected(format!("the cluster's tool printed no context named {context}")))?;
    Ok(Entries {
        cluster: inner.cluster.clone(),
        user: inner.user.clone().unwrap_or_else(|| context.to_string()),
        context: context.to_string(),
    })
}

fn read_or_empty(path: &Path) -> Result<String, FixError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(error) => Err(write_io(path, error)),
    }
}

/// kind creates the file when there is none; so does the fix, private, right before writing.
fn ensure_exists(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if path.exists() {
        return Ok(());
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new().recursive(true).create(dir)?;
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(()),
    }
}

fn write_io(path: &Path, error: std::io::Error) -> FixError {
    FixError::Write(WriteError::Io {
        path: path.to_path_buf(),
        what: "cannot read it",
        error,
    })
}

#[cfg(test)]
mod tests;
