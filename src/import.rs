//! Forwards people already have, read from where they wrote them: a script of
//! `kubectl port-forward` lines, a quick-start's socat relays to nodePorts, or kftray's JSON
//! export. [`parse`] finds them (and lists every line it did not take, with its number);
//! [`plan`] turns them into forwards for a config, saying why it leaves any out.

mod kftray;
mod script;
mod shell;

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use kube::Api;
use kube::api::ListParams;

use crate::config::edit::ForwardDraft;
use crate::config::{ClusterSpec, Config};
use crate::kubeconfig::Loaded;

/// A forward found in the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The line it was found on, from 1.
    pub line: usize,
    /// The command or config it was found in, as written.
    pub text: String,
    /// The name the source gave it (kftray's alias).
    pub name: Option<String>,
    /// `None`: kubectl's default, `default`.
    pub namespace: Option<String>,
    pub target: Target,
    pub local_port: u16,
    pub remote: Remote,
    /// An address other than loopback to listen on.
    pub bind: Option<String>,
    pub context: Option<String>,
}

/// What a found forward relays to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Service(String),
    /// One pod by name (`pod/NAME`, or a bare name).
    Pod(String),
    /// A workload's pods (`deploy/NAME`, `sts/NAME`, ...).
    Workload {
        kind: String,
        name: String,
    },
    /// Pods by labels (kftray's `pod` configs).
    PodSelector(String),
    /// A host reached through the cluster (kftray's `proxy` configs).
    Proxy(String),
    /// A literal nodePort: whose service it is, only the cluster can tell.
    NodePort,
}

/// The port relayed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Remote {
    /// A service (or pod) port by number or name, as kubectl takes it.
    Port(String),
    /// A nodePort, as a socat relay names it.
    NodePort(NodePortSource),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodePortSource {
    /// Read from the API by the script.
    Query(NodePortRef),
    /// Written in the script.
    Literal(u16),
}

/// `kubectl get svc SERVICE -n NAMESPACE -o jsonpath='{.spec.ports[PORT].nodePort}'`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePortRef {
    pub namespace: Option<String>,
    pub service: String,
    pub port: PortChoice,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortChoice {
    /// `.spec.ports[N]`
    Index(usize),
    /// `.spec.ports[?(@.name=="NAME")]`
    Name(String),
}

/// A line of the source that gave no forward, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Skipped {
    pub line: usize,
    pub text: String,
    pub why: String,
    /// A command that is not about forwarding at all (`set -e`, `sleep 2`, `echo`).
    pub plumbing: bool,
}

impl Skipped {
    fn new(line: usize, text: &str, why: String) -> Skipped {
        Skipped {
            line,
            text: text.to_string(),
            why,
            plumbing: false,
        }
    }

    fn plumbing(command: &shell::Command) -> Skipped {
        Skipped {
            line: command.line,
            text: command.text.clone(),
            why: "not a forward".into(),
            plumbing: true,
        }
    }
}

/// Every forward in `text` (a script, or kftray's JSON when it starts with `[` or `{`), and
/// every line that gave none.
pub fn parse(text: &str) -> (Vec<Found>, Vec<Skipped>) {
    let (mut found, mut skipped) = (Vec::new(), Vec::new());
    if kftray::is_json(text) {
        kftray::parse(text, &mut found, &mut skipped);
    } else {
        script::parse(text, &mut found, &mut skipped);
    }
    (found, skipped)
}

/// A service of the cluster, as far as an import needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInfo {
    pub namespace: String,
    pub name: String,
    /// (name, port, nodePort), in spec order.
    pub ports: Vec<(Option<String>, u16, Option<u16>)>,
}

/// What the cluster could tell, for what only it knows (which service has a nodePort, which
/// port is `.spec.ports[2]`).
#[derive(Debug, Clone)]
pub enum Cluster {
    Services(Vec<ServiceInfo>),
    /// Why there is no answer (not reachable, not asked).
    Unknown(String),
}

/// Bound on asking the cluster what only it knows (a literal nodePort's service).
pub const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// What importing `text` into cluster `into` of `config` would do: [`parse`], then [`plan`]
/// against that cluster's context, the cluster asked (once, within [`ASK_TIMEOUT`]) only when
/// something found needs it. What `porthole import` shows and the settings page previews.
pub async fn preview(text: &str, config: &Config, into: &ClusterSpec) -> Plan {
    let (found, skipped) = parse(text);
    let context = context(into).await;
    let cluster = if needs_cluster(&found) {
        ask(into, ASK_TIMEOUT).await
    } else {
        Cluster::Unknown("the cluster was not asked".into())
    };
    plan(found, skipped, config, (&into.name, context.as_deref()), &cluster)
}

/// Whether some of `found` need the cluster: a literal nodePort, or `.spec.ports[N]` past the
/// first.
pub fn needs_cluster(found: &[Found]) -> bool {
    found.iter().any(|f| match &f.remote {
        Remote::NodePort(NodePortSource::Literal(_)) => true,
        Remote::NodePort(NodePortSource::Query(q)) => matches!(q.port, PortChoice::Index(n) if n > 0),
        Remote::Port(_) => false,
    })
}

/// The context of `spec`: the one it names, else kubectl's current one (read from the
/// kubeconfig, without asking the cluster anything).
pub async fn context(spec: &ClusterSpec) -> Option<String> {
    if let Some(context) = &spec.context {
        return Some(context.clone());
    }
    let spec = spec.clone();
    tokio::task::spawn_blocking(move || Loaded::for_cluster(&spec).ok()?.effective_context(&spec).ok())
        .await
        .ok()
        .flatten()
}

/// The cluster's services, listed once (bounded by `timeout`), or why not.
pub async fn ask(spec: &ClusterSpec, timeout: Duration) -> Cluster {
    let owned = spec.clone();
    let loaded = match tokio::task::spawn_blocking(move || Loaded::for_cluster(&owned)).await {
        Ok(Ok(loaded)) => loaded,
        Ok(Err(e)) => return Cluster::Unknown(format!("the kubeconfig cannot be used: {e}")),
        Err(e) => return Cluster::Unknown(format!("the kubeconfig cannot be read: {e}")),
    };
    let clients = match loaded.clients(spec, timeout).await {
        Ok(clients) => clients,
        Err(e) => return Cluster::Unknown(format!("the cluster cannot be reached: {e}")),
    };
    let context = clients.context.clone();
    let api: Api<Service> = Api::all(clients.api);
    match tokio::time::timeout(timeout, api.list(&ListParams::default())).await {
        Ok(Ok(list)) => Cluster::Services(list.items.iter().map(service_info).collect()),
        Ok(Err(e)) => Cluster::Unknown(format!(
            "the cluster of context `{context}` did not list its services: {e}"
        )),
        Err(_) => Cluster::Unknown(format!(
            "the cluster of context `{context}` did not answer in {} s",
            timeout.as_secs()
        )),
    }
}

fn service_info(service: &Service) -> ServiceInfo {
    let ports = service
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .map(|ports| {
            ports
                .iter()
                .map(|p| {
                    let node_port = p.node_port.and_then(|n| u16::try_from(n).ok());
                    (p.name.clone(), u16::try_from(p.port).unwrap_or(0), node_port)
                })
                .collect()
        })
        .unwrap_or_default();
    ServiceInfo {
        namespace: service.metadata.namespace.clone().unwrap_or_default(),
        name: service.metadata.name.clone().unwrap_or_default(),
        ports,
    }
}

/// One forward to add, and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Addition {
    pub line: usize,
    pub draft: ForwardDraft,
}

/// What an import would do to a config.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Plan {
    pub add: Vec<Addition>,
    /// Found but not added (with why), and the lines that held no forward.
    pub skipped: Vec<Skipped>,
}

/// The forwards of `found` to add to `config`'s cluster `into` (its name, and its context: the
/// one the config names, or kubectl's current one): forwards of another context (named with
/// the cluster of the config that has it, or proposed as a new one), of pods rather than
/// services, already in the config, or on a local port the config uses (in any cluster) are
/// left out, each with its reason.
pub fn plan(
    found: Vec<Found>,
    mut skipped: Vec<Skipped>,
    config: &Config,
    into: (&str, Option<&str>),
    cluster: &Cluster,
) -> Plan {
    let (into, context) = into;
    // With one cluster, forwards need not name it.
    let cluster_key = if config.clusters.len() > 1 {
        into.to_string()
    } else {
        String::new()
    };
    let mut names: BTreeSet<String> = config.forwards.iter().map(|f| f.name.clone()).collect();
    let mut ports: Vec<(u16, String)> = config.forwards.iter().map(|f| (f.local_port, f.name.clone())).collect();
    // How many forwards of one service the source has: a name per port when more than one.
    let ours = |f: &Found| match (f.context.as_deref(), context) {
        (Some(theirs), Some(ours)) => theirs == ours,
        _ => true,
    };
    let count = |service: &str, namespace: &str| {
        found
            .iter()
            .filter(|f| {
                ours(f)
                    && matches!(&f.target, Target::Service(s) if s == service)
                    && f.namespace.as_deref().unwrap_or("default") == namespace
            })
            .count()
    };
    let mut add = Vec::new();
    for f in &found {
        let mut skip = |why: String| skipped.push(Skipped::new(f.line, &f.text, why));
        if !ours(f) {
            let (theirs, ours) = (f.context.as_deref().unwrap_or_default(), context.unwrap_or_default());
            match config.clusters.iter().find(|c| c.context.as_deref() == Some(theirs)) {
                Some(other) => skip(format!(
                    "context `{theirs}` is cluster `{}`'s: import it with `--cluster {}` (here: `{into}`, context `{ours}`)",
                    other.name, other.name
                )),
                None => skip(format!(
                    "context `{theirs}` is no cluster of this config (here: `{into}`, context `{ours}`): add it as a cluster (`[[cluster]]` with `context = \"{theirs}\"`, or Add cluster in the settings page) and import again with `--cluster`"
                )),
            }
            continue;
        }
        let (service, namespace, service_port) = match resolve(f, cluster) {
            Ok(resolved) => resolved,
            Err(why) => {
                skip(why);
                continue;
            }
        };
        if let Some(existing) = config.forwards.iter().find(|e| {
            e.namespace == namespace
                && e.target.to_string() == service
                && e.local_port == f.local_port
                && e.service_port.as_ref().map(ToString::to_string).unwrap_or_default() == service_port
        }) {
            skip(format!("already in the config as `{}`", existing.name));
            continue;
        }
        if let Some((_, owner)) = ports.iter().find(|(p, _)| *p == f.local_port) {
            skip(format!("local port {} is `{owner}`'s already", f.local_port));
            continue;
        }
        let base = f.name.clone().map(|n| clean_name(&n)).unwrap_or_else(|| {
            let base = clean_name(&service);
            if count(&service, &namespace) > 1 {
                format!("{base}-{}", f.local_port)
            } else {
                base
            }
        });
        let name = unique(&base, &names);
        names.insert(name.clone());
        ports.push((f.local_port, name.clone()));
        add.push(Addition {
            line: f.line,
            draft: ForwardDraft {
                name,
                cluster: cluster_key.clone(),
                namespace,
                service,
                service_port,
                local_port: f.local_port.to_string(),
                bind: f.bind.clone().unwrap_or_default(),
                probe: String::new(),
                mode: String::new(),
                enabled: true,
            },
        });
    }
    skipped.sort_by_key(|s| s.line);
    Plan { add, skipped }
}

/// (service, namespace, service port) of a found forward.
fn resolve(f: &Found, cluster: &Cluster) -> Result<(String, String, String), String> {
    let namespace = f.namespace.clone().unwrap_or_else(|| "default".into());
    let services = match cluster {
        Cluster::Services(services) => Some(services.as_slice()),
        Cluster::Unknown(_) => None,
    };
    let unknown = || match cluster {
        Cluster::Unknown(why) => why.clone(),
        Cluster::Services(_) => String::new(),
    };
    match (&f.target, &f.remote) {
        (Target::Service(service), Remote::Port(port)) => Ok((service.clone(), namespace, port.clone())),
        (Target::Service(service), Remote::NodePort(NodePortSource::Query(query))) => {
            let port = match &query.port {
                PortChoice::Index(0) => String::new(),
                PortChoice::Name(name) => name.clone(),
                PortChoice::Index(n) => {
                    let info = services
                        .ok_or_else(|| format!("`.spec.ports[{n}]` of {namespace}/{service}: which port that is, only the cluster can tell, and {}", unknown()))?
                        .iter()
                        .find(|s| s.namespace == namespace && s.name == *service)
                        .ok_or_else(|| format!("service {namespace}/{service} is not in the cluster"))?;
                    let (name, number, _) = info
                        .ports
                        .get(*n)
                        .ok_or_else(|| format!("service {namespace}/{service} has no port {n} (`.spec.ports[{n}]`)"))?;
                    name.clone().unwrap_or_else(|| number.to_string())
                }
            };
            Ok((service.clone(), namespace, port))
        }
        (Target::NodePort, Remote::NodePort(NodePortSource::Literal(node_port))) => {
            let services = services.ok_or_else(|| {
                format!(
                    "nodePort {node_port}: which service has it, only the cluster can tell, and {}",
                    unknown()
                )
            })?;
            services
                .iter()
                .find_map(|s| {
                    s.ports
                        .iter()
                        .find(|(_, _, np)| *np == Some(*node_port))
                        .map(|(name, number, _)| {
                            let port = name.clone().unwrap_or_else(|| number.to_string());
                            (s.name.clone(), s.namespace.clone(), port)
                        })
                })
                .ok_or_else(|| format!("nodePort {node_port}: no service of the cluster has it"))
        }
        (Target::Pod(pod), _) => Err(format!(
            "pod/{pod}: Porthole forwards services, which outlive their pods; forward the service that selects it"
        )),
        (Target::Workload { kind, name }, _) => Err(format!(
            "{kind}/{name}: Porthole forwards services, not workloads; forward the service that selects its pods"
        )),
        (Target::PodSelector(labels), _) => Err(format!(
            "pods with {labels}: Porthole forwards services; forward the service that selects them"
        )),
        (Target::Proxy(host), _) => Err(format!("a proxy to {host}: Porthole forwards services of the cluster")),
        (target, remote) => Err(format!("{target:?} to {remote:?}: not a forward Porthole can make")),
    }
}

/// A forward name from anything: letters, digits, `.`, `_` and `-`, at most 63.
fn clean_name(raw: &str) -> String {
    let name: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(56)
        .collect();
    let name = name.trim_matches('-').to_string();
    if name.is_empty() { "forward".into() } else { name }
}

/// `base`, or `base-2`, `base-3`, ... whichever no forward has.
fn unique(base: &str, names: &BTreeSet<String>) -> String {
    if !names.contains(base) {
        return base.to_string();
    }
    (2..)
        .map(|n| format!("{base}-{n}"))
        .find(|n| !names.contains(n))
        .expect("a free name")
}

#[cfg(test)]
mod tests;
