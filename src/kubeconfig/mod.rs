//! Reading kubeconfig files the way kubectl does and building a client for one context
//! ([`crate::watch`] notices when the files change).

use std::path::{Path, PathBuf};
use std::time::Duration;

pub mod edit;
pub mod state;
pub mod tools;

use kube::config::{KubeConfigOptions, Kubeconfig, KubeconfigError as KubeError};

use crate::cause::{Cause, CauseId};
use crate::config::ClusterSpec;

#[derive(Debug, thiserror::Error)]
pub enum KubeconfigError {
    #[error("no kubeconfig file found (looked at {})", list(.0))]
    NotFound(Vec<PathBuf>),
    #[error("kubeconfig {path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("context `{context}` is not in the kubeconfig ({})", list(.files))]
    ContextMissing { context: String, files: Vec<PathBuf> },
    #[error("no context given and the kubeconfig has no current-context ({})", list(.0))]
    NoContext(Vec<PathBuf>),
    #[error("context `{context}`: {message}")]
    Client { context: String, message: String },
}

impl KubeconfigError {
    /// The health cause this error stands for.
    pub fn cause(&self) -> Cause {
        match self {
            KubeconfigError::ContextMissing { context, .. } => {
                let fix = match kind_cluster_name(context) {
                    Some(name) => format!("`kind export kubeconfig --name {name}` (or create the cluster)"),
                    None => "correct `cluster.context` in the config (see `kubectl config get-contexts`)".into(),
                };
                Cause::new(CauseId::ContextMissing, self.to_string()).with_fix(fix)
            }
            KubeconfigError::NotFound(_) | KubeconfigError::NoContext(_) => {
                Cause::new(CauseId::ContextMissing, self.to_string())
                    .with_fix("create the cluster, or point `cluster.kubeconfig` / $KUBECONFIG at its kubeconfig")
            }
            KubeconfigError::Invalid { .. } | KubeconfigError::Client { .. } => {
                Cause::new(CauseId::KubeconfigInvalid, self.to_string())
            }
        }
    }
}

fn list(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `kind-NAME` → `NAME`.
pub fn kind_cluster_name(context: &str) -> Option<&str> {
    context.strip_prefix("kind-")
}

/// The kubeconfig files in effect: `cluster.kubeconfig`, else `$KUBECONFIG` (a list), else `~/.kube/config`.
/// Whether the kubeconfig kubectl reads has `context` (for the first run's choice of config).
pub fn has_context(context: &str) -> bool {
    Loaded::for_cluster(&ClusterSpec::default()).is_ok_and(|loaded| loaded.has_context(context))
}

pub fn files(cluster: &ClusterSpec) -> Vec<PathBuf> {
    if let Some(path) = &cluster.kubeconfig {
        return vec![path.clone()];
    }
    if let Some(value) = std::env::var_os("KUBECONFIG") {
        let paths: Vec<PathBuf> = std::env::split_paths(&value)
            .filter(|p| !p.as_os_str().is_empty())
            .collect();
        if !paths.is_empty() {
            return paths;
        }
    }
    let home = directories::BaseDirs::new()
        .map(|d| d.home_dir().to_path_buf())
        .unwrap_or_default();
    vec![home.join(".kube").join("config")]
}

/// The kubeconfig files merged by kubectl's rules: missing files are skipped, the first to set a value wins.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub files: Vec<PathBuf>,
    pub merged: Kubeconfig,
}

impl Loaded {
    pub fn read(files: Vec<PathBuf>) -> Result<Loaded, KubeconfigError> {
        let mut merged: Option<Kubeconfig> = None;
        for path in &files {
            if !path.exists() {
                continue;
            }
            let mut next = Kubeconfig::read_from(path).map_err(|e| invalid(path, e))?;
            // `current-context: ""` (what `kind delete cluster` leaves) sets nothing: kubectl
            // skips empty values when merging, so a later file's value still counts.
            if next.current_context.as_deref() == Some("") {
                next.current_context = None;
            }
            merged = Some(match merged {
                None => next,
                Some(m) => m.merge(next).map_err(|e| invalid(path, e))?,
            });
        }
        let merged = merged.ok_or_else(|| KubeconfigError::NotFound(files.clone()))?;
        Ok(Loaded { files, merged })
    }

    pub fn for_cluster(cluster: &ClusterSpec) -> Result<Loaded, KubeconfigError> {
        Loaded::read(files(cluster))
    }

    /// kubectl's current-context.
    pub fn current_context(&self) -> Option<&str> {
        self.merged.current_context.as_deref().filter(|c| !c.is_empty())
    }

    pub fn has_context(&self, name: &str) -> bool {
        self.merged.contexts.iter().any(|c| c.name == name)
    }

    /// The context Porthole uses: the configured one, else kubectl's current-context.
    pub fn effective_context(&self, cluster: &ClusterSpec) -> Result<String, KubeconfigError> {
        let context = match &cluster.context {
            Some(c) => c.clone(),
            None => self
                .current_context()
                .ok_or_else(|| KubeconfigError::NoContext(self.files.clone()))?
                .to_string(),
        };
        if !self.has_context(&context) {
            return Err(KubeconfigError::ContextMissing {
                context,
                files: self.files.clone(),
            });
        }
        Ok(context)
    }

    /// The clients for the effective context: `api` for requests and watches, its reads bounded
    /// by `read_timeout` (longer than a watch's server-side timeout, so watches are not cut; a
    /// hung API server is still given up on), and `tunnel` for port-forward streams.
    pub async fn clients(&self, cluster: &ClusterSpec, read_timeout: Duration) -> Result<Clients, KubeconfigError> {
        let context = self.effective_context(cluster)?;
        let options = KubeConfigOptions {
            context: Some(context.clone()),
            ..Default::default()
        };
        let client_err = |message: String| KubeconfigError::Client {
            context: context.clone(),
            message,
        };
        let mut config = kube::Config::from_custom_kubeconfig(self.merged.clone(), &options)
            .await
            .map_err(|e| client_err(e.to_string()))?;
        config.connect_timeout = Some(CONNECT_TIMEOUT);
        config.read_timeout = Some(read_timeout);
        let api = kube::Client::try_from(config.clone()).map_err(|e| client_err(e.to_string()))?;
        let tunnel = stream_client(config).map_err(|e| client_err(e.to_string()))?;
        Ok(Clients { api, tunnel, context })
    }
}

/// Bound on connecting to the API server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle time before TCP keepalive probes start on a port-forward stream's connection, and
/// between them: a dead API server (a sleeping laptop's VM, a pulled cable) is found within
/// about a minute, without cutting a stream that is only quiet.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_RETRIES: u32 = 3;

/// The clients for one context (see [`Loaded::clients`]).
#[derive(Clone)]
pub struct Clients {
    pub api: kube::Client,
    pub tunnel: kube::Client,
    pub context: String,
}

/// A client for port-forward streams. They carry users' connections, which may stay quiet for
/// hours (a database session, an idle WebSocket) and the protocol sends no pings: no read
/// timeout, so quiet is not mistaken for dead; TCP keepalive finds a dead peer instead.
/// `TCP_NODELAY`, so a stream's small first writes (the upgrade, a request) are not held back.
/// kube's own stack is used behind a proxy (it alone speaks to proxies): without the read
/// timeout, with no keepalive of ours.
fn stream_client(mut config: kube::Config) -> Result<kube::Client, kube::Error> {
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::rt::TokioExecutor;
    use kube::client::ConfigExt;
    use tower::{BoxError, ServiceBuilder};

    config.read_timeout = None;
    if config.proxy_url.is_some() {
        return kube::Client::try_from(config);
    }
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(config.connect_timeout);
    http.set_keepalive(Some(KEEPALIVE_IDLE));
    http.set_keepalive_interval(Some(KEEPALIVE_INTERVAL));
    http.set_keepalive_retries(Some(KEEPALIVE_RETRIES));
    // Keepalive only probes an idle connection; with bytes unacknowledged, the kernel would
    // retransmit for about 15 minutes before giving up. Linux bounds that too.
    #[cfg(target_os = "linux")]
    http.set_tcp_user_timeout(Some(KEEPALIVE_IDLE + KEEPALIVE_INTERVAL * KEEPALIVE_RETRIES));
    let https = config.rustls_https_connector_with_connector(http)?;
    let client: hyper_util::client::legacy::Client<_, kube::client::Body> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(https);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(BoxError::from)
        .service(client);
    Ok(kube::Client::new(service, config.default_namespace))
}

impl Loaded {
    /// A fingerprint of what a client for `context` is built from: its context, cluster and
    /// user entries. Compared in memory only (it covers credentials; it is never shown).
    pub fn fingerprint(&self, context: &str) -> Option<u64> {
        use std::hash::{Hash, Hasher};
        let named = self.merged.contexts.iter().find(|c| c.name == context)?;
        let inner = named.context.as_ref()?;
        let cluster = self.merged.clusters.iter().find(|c| c.name == inner.cluster);
        let user = inner
            .user
            .as_ref()
            .and_then(|u| self.merged.auth_infos.iter().find(|a| a.name == *u));
        let text = serde_json::to_string(&(named, cluster, user)).ok()?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        text.hash(&mut hasher);
        Some(hasher.finish())
    }
}

fn invalid(path: &Path, e: KubeError) -> KubeconfigError {
    let message = match e {
        // The read error repeats the path; keep only the cause.
        KubeError::ReadConfig(io, _) => io.to_string(),
        // The parser adds a source excerpt on further lines; the first names line and column.
        other => other.to_string().lines().next().unwrap_or_default().to_string(),
    };
    KubeconfigError::Invalid {
        path: path.to_path_buf(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, current: Option<&str>, contexts: &[&str]) -> PathBuf {
        let mut text = String::from("apiVersion: v1\nkind: Config\nclusters:\n");
        for c in contexts {
            text += &format!("- name: {c}\n  cluster:\n    server: https://127.0.0.1:6443\n");
        }
        text += "contexts:\n";
        for c in contexts {
            text += &format!("- name: {c}\n  context:\n    cluster: {c}\n    user: {c}\n");
        }
        text += "users:\n";
        for c in contexts {
            text += &format!("- name: {c}\n  user:\n    token: secret\n");
        }
        if let Some(current) = current {
            text += &format!("current-context: {current}\n");
        }
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn fingerprint_follows_the_context_entries_only() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(dir.path(), "a", Some("kind-a"), &["kind-a", "other"]);
        let before = Loaded::read(vec![a.clone()]).unwrap();
        let text = std::fs::read_to_string(&a).unwrap();
        std::fs::write(
            &a,
            text.replacen("current-context: kind-a", "current-context: other", 1),
        )
        .unwrap();
        let switched = Loaded::read(vec![a.clone()]).unwrap();
        assert_eq!(
            before.fingerprint("kind-a"),
            switched.fingerprint("kind-a"),
            "current-context is not part of it"
        );
        let text = std::fs::read_to_string(&a).unwrap();
        std::fs::write(&a, text.replacen("127.0.0.1:6443", "127.0.0.1:7443", 1)).unwrap();
        let moved = Loaded::read(vec![a]).unwrap();
        assert_ne!(
            before.fingerprint("kind-a"),
            moved.fingerprint("kind-a"),
            "a new server address is"
        );
        assert_eq!(before.fingerprint("nope"), None);
    }

    #[test]
    fn list_skips_missing_and_first_current_context_wins() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(dir.path(), "a", None, &["kind-a"]);
        let b = write(dir.path(), "b", Some("rancher-desktop"), &["rancher-desktop"]);
        let c = write(dir.path(), "c", Some("kind-a"), &[]);
        let loaded = Loaded::read(vec![dir.path().join("missing"), a, b, c]).unwrap();
        assert_eq!(loaded.current_context(), Some("rancher-desktop"));
        assert!(loaded.has_context("kind-a") && loaded.has_context("rancher-desktop"));
    }

    #[test]
    fn errors_name_the_file_and_context() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad");
        std::fs::write(&bad, "clusters: [\n").unwrap();
        let err = Loaded::read(vec![bad.clone()]).unwrap_err().to_string();
        assert!(err.contains(&bad.display().to_string()), "{err}");

        let err = Loaded::read(vec![dir.path().join("none")]).unwrap_err();
        assert!(matches!(err, KubeconfigError::NotFound(_)));

        let a = write(dir.path(), "a", Some("kind-a"), &["kind-a"]);
        let loaded = Loaded::read(vec![a]).unwrap();
        let cluster = ClusterSpec {
            context: Some("kind-openchoreo-local".into()),
            ..Default::default()
        };
        let err = loaded.effective_context(&cluster).unwrap_err();
        let cause = err.cause();
        assert_eq!(cause.id, CauseId::ContextMissing);
        assert!(cause.message.contains("kind-openchoreo-local"));
        assert_eq!(
            cause.fix.as_deref(),
            Some("`kind export kubeconfig --name openchoreo-local` (or create the cluster)")
        );
    }
}
