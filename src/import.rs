//! Forwards people already have, read from where they wrote them: a script of
//! `kubectl port-forward` lines, a quick-start's socat relays to nodePorts, or kftray's JSON
//! export. [`parse`] finds them (and lists every line it did not take, with its number);
//! [`plan`] turns them into forwards for a config, saying why it leaves any out.

mod kftray;
mod script;
mod shell;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::Api;
use kube::api::ListParams;

use crate::config::edit::ForwardDraft;
use crate::config::{ClusterSpec, Config, ServiceTarget, labels_text};
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

/// A workload of the cluster: which pods are its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadInfo {
    /// `deployment`, `statefulset`, `daemonset`.
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// Its selector's `matchLabels`; `None` when it also has `matchExpressions`, which a
    /// forward's `pods` cannot say.
    pub labels: Option<BTreeMap<String, String>>,
}

/// What the cluster could tell, for what only it knows (which service has a nodePort, which
/// port is `.spec.ports[2]`, which pods are a Deployment's).
#[derive(Debug, Clone)]
pub enum Cluster {
    Known {
        services: Vec<ServiceInfo>,
        workloads: Vec<WorkloadInfo>,
    },
    /// Why there is no answer (not reachable, not asked).
    Unknown(String),
}

impl Cluster {
    /// What the cluster said of its services only (tests, and a cluster with no workloads).
    pub fn services(services: Vec<ServiceInfo>) -> Cluster {
        Cluster::Known {
            services,
            workloads: Vec::new(),
        }
    }
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
    let contexts = contexts(into).await;
    let destination = Destination {
        cluster: &into.name,
        context: context.as_deref(),
        contexts: &contexts,
    };
    plan(found, skipped, config, &destination, &cluster)
}

/// The one edit that adds `drafts` (chosen from a [`Plan`] of an import into `into`), with the
/// new clusters they name: the clusters of contexts of `into`'s kubeconfig, which the config
/// did not have.
pub fn edit(config: &Config, into: &ClusterSpec, drafts: Vec<ForwardDraft>) -> crate::config::edit::Edit {
    let mut clusters: Vec<crate::config::edit::NewCluster> = Vec::new();
    for draft in &drafts {
        if !draft.cluster.is_empty()
            && config.cluster(&draft.cluster).is_none()
            && !clusters.iter().any(|c| c.context == draft.cluster)
        {
            clusters.push(crate::config::edit::NewCluster {
                context: draft.cluster.clone(),
                kubeconfig: into.kubeconfig.clone(),
            });
        }
    }
    crate::config::edit::Edit::AddForwards {
        clusters,
        forwards: drafts,
    }
}

/// Where an import puts forwards: cluster `cluster` of the config (whose context is
/// `context`), unless a line names another context: the config's cluster of that context, or
/// a new cluster for it when it is one of the kubeconfig's `contexts`.
#[derive(Debug, Clone, Copy)]
pub struct Destination<'a> {
    pub cluster: &'a str,
    pub context: Option<&'a str>,
    pub contexts: &'a [String],
}

/// The contexts of the kubeconfig `spec` reads (none when it cannot be read).
async fn contexts(spec: &ClusterSpec) -> Vec<String> {
    let spec = spec.clone();
    tokio::task::spawn_blocking(move || {
        Loaded::for_cluster(&spec)
            .map(|l| l.merged.contexts.iter().map(|c| c.name.clone()).collect())
            .unwrap_or_default()
    })
    .await
    .unwrap_or_default()
}

/// Whether some of `found` need the cluster: a literal nodePort, or `.spec.ports[N]` past the
/// first.
pub fn needs_cluster(found: &[Found]) -> bool {
    found.iter().any(|f| {
        matches!(f.target, Target::Workload { .. })
            || match &f.remote {
                Remote::NodePort(NodePortSource::Literal(_)) => true,
                Remote::NodePort(NodePortSource::Query(q)) => matches!(q.port, PortChoice::Index(n) if n > 0),
                Remote::Port(_) => false,
            }
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
    let client = clients.api;
    let lp = ListParams::default();
    let asked = async {
        let services = Api::<Service>::all(client.clone()).list(&lp).await?;
        // Workloads are asked for what a `deploy/NAME` line needs; a kind the server does not
        // serve (or the user may not list) leaves only that kind unknown.
        let mut workloads = Vec::new();
        if let Ok(list) = Api::<Deployment>::all(client.clone()).list(&lp).await {
            let each = list.items.into_iter().map(|d| (d.metadata, d.spec.map(|s| s.selector)));
            workloads.extend(each.map(|(meta, selector)| workload("deployment", meta, selector)));
        }
        if let Ok(list) = Api::<StatefulSet>::all(client.clone()).list(&lp).await {
            let each = list.items.into_iter().map(|d| (d.metadata, d.spec.map(|s| s.selector)));
            workloads.extend(each.map(|(meta, selector)| workload("statefulset", meta, selector)));
        }
        if let Ok(list) = Api::<DaemonSet>::all(client.clone()).list(&lp).await {
            let each = list.items.into_iter().map(|d| (d.metadata, d.spec.map(|s| s.selector)));
            workloads.extend(each.map(|(meta, selector)| workload("daemonset", meta, selector)));
        }
        Ok::<_, kube::Error>(Cluster::Known {
            services: services.items.iter().map(service_info).collect(),
            workloads,
        })
    };
    match tokio::time::timeout(timeout, asked).await {
        Ok(Ok(known)) => known,
        Ok(Err(e)) => Cluster::Unknown(format!(
            "the cluster of context `{context}` did not list its services: {e}"
        )),
        Err(_) => Cluster::Unknown(format!(
            "the cluster of context `{context}` did not answer in {} s",
            timeout.as_secs()
        )),
    }
}

fn workload(
    kind: &str,
    meta: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    selector: Option<LabelSelector>,
) -> WorkloadInfo {
    let selector = selector.unwrap_or_default();
    let plain = selector.match_expressions.as_ref().is_none_or(Vec::is_empty);
    WorkloadInfo {
        kind: kind.to_string(),
        namespace: meta.namespace.unwrap_or_default(),
        name: meta.name.unwrap_or_default(),
        labels: selector.match_labels.filter(|l| plain && !l.is_empty()),
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
    /// New clusters the additions need: contexts of the kubeconfig no cluster of the config
    /// has, named by their context. Added with the forwards that name them.
    pub clusters: Vec<String>,
    /// Found but not added (with why), and the lines that held no forward.
    pub skipped: Vec<Skipped>,
}

/// The forwards of `found` to add to `config`: into the destination's cluster, or, for a line
/// naming another context, into the config's cluster of that context, or a new cluster for it
/// (proposed in [`Plan::clusters`]) when the kubeconfig has it. Forwards of contexts the
/// kubeconfig lacks, already in the config, or on a local port the config uses (in any
/// cluster), and what cannot be forwarded (UDP, proxies), are left out, each with its reason.
pub fn plan(
    found: Vec<Found>,
    mut skipped: Vec<Skipped>,
    config: &Config,
    destination: &Destination<'_>,
    cluster: &Cluster,
) -> Plan {
    let into = destination.cluster;
    // Which cluster each found forward goes to (its name), or why none.
    let goes_to = |f: &Found| -> Result<String, String> {
        let theirs = match (f.context.as_deref(), destination.context) {
            (Some(theirs), Some(ours)) if theirs != ours => theirs,
            _ => return Ok(into.to_string()),
        };
        if let Some(other) = config.clusters.iter().find(|c| c.context.as_deref() == Some(theirs)) {
            return Ok(other.name.clone());
        }
        if destination.contexts.iter().any(|c| c == theirs) {
            return Ok(theirs.to_string());
        }
        Err(format!(
            "context `{theirs}` is in no kubeconfig file (and no cluster of this config): add it (`kind export kubeconfig --name NAME`, `k3d kubeconfig merge NAME`) and import again"
        ))
    };
    let new_clusters: Vec<String> = {
        let mut new: Vec<String> = Vec::new();
        for f in &found {
            if let Ok(name) = goes_to(f)
                && config.cluster(&name).is_none()
                && !new.contains(&name)
            {
                new.push(name);
            }
        }
        new
    };
    // With one cluster and none new, forwards need not name it.
    let several = config.clusters.len() > 1 || !new_clusters.is_empty();
    let mut names: BTreeSet<String> = config.forwards.iter().map(|f| f.name.clone()).collect();
    let mut ports: Vec<(u16, String)> = config.forwards.iter().map(|f| (f.local_port, f.name.clone())).collect();
    // How many forwards of one service the source has: a name per port when more than one.
    let count = |service: &str, namespace: &str, cluster: &str| {
        found
            .iter()
            .filter(|f| {
                matches!(&f.target, Target::Service(s) if s == service)
                    && f.namespace.as_deref().unwrap_or("default") == namespace
                    && goes_to(f).is_ok_and(|c| c == cluster)
            })
            .count()
    };
    let not_asked = Cluster::Unknown("that cluster was not asked (import with its `--cluster`)".into());
    let mut add = Vec::new();
    let mut used_clusters: Vec<String> = Vec::new();
    for f in &found {
        let mut skip = |why: String| skipped.push(Skipped::new(f.line, &f.text, why));
        let cluster_name = match goes_to(f) {
            Ok(name) => name,
            Err(why) => {
                skip(why);
                continue;
            }
        };
        // The cluster was asked about the destination only.
        let known = if cluster_name == into { cluster } else { &not_asked };
        let resolved = match resolve(f, known) {
            Ok(resolved) => resolved,
            Err(why) => {
                skip(why);
                continue;
            }
        };
        let Resolved {
            target,
            namespace,
            port,
        } = resolved;
        if let Some(existing) = config.forwards.iter().find(|e| {
            e.cluster == cluster_name
                && e.namespace == namespace
                && e.target == target
                && e.local_port == f.local_port
                && e.service_port.as_ref().map(ToString::to_string).unwrap_or_default() == port
        }) {
            skip(format!("already in the config as `{}`", existing.name));
            continue;
        }
        if let Some((_, owner)) = ports.iter().find(|(p, _)| *p == f.local_port) {
            skip(format!("local port {} is `{owner}`'s already", f.local_port));
            continue;
        }
        let base = f.name.clone().map(|n| clean_name(&n)).unwrap_or_else(|| match &target {
            ServiceTarget::Name(service) => {
                let base = clean_name(service);
                if count(service, &namespace, &cluster_name) > 1 {
                    format!("{base}-{}", f.local_port)
                } else {
                    base
                }
            }
            ServiceTarget::Pod(pod) => clean_name(pod),
            // A workload's name, else the labels' values.
            _ => match &f.target {
                Target::Workload { name, .. } => clean_name(name),
                _ => match &target {
                    ServiceTarget::Pods(labels) => clean_name(&labels.values().cloned().collect::<Vec<_>>().join("-")),
                    _ => "forward".into(),
                },
            },
        });
        let name = unique(&base, &names);
        names.insert(name.clone());
        ports.push((f.local_port, name.clone()));
        if !used_clusters.contains(&cluster_name) {
            used_clusters.push(cluster_name.clone());
        }
        let (service, pods, pod) = match &target {
            ServiceTarget::Name(service) => (service.clone(), String::new(), String::new()),
            ServiceTarget::Pods(labels) => (String::new(), labels_text(labels), String::new()),
            ServiceTarget::Pod(pod) => (String::new(), String::new(), pod.clone()),
            ServiceTarget::Selector(_) => unreachable!("an import makes no service selectors"),
        };
        add.push(Addition {
            line: f.line,
            draft: ForwardDraft {
                name,
                cluster: if several { cluster_name } else { String::new() },
                namespace,
                service,
                pods,
                pod,
                service_port: port,
                local_port: f.local_port.to_string(),
                bind: f.bind.clone().unwrap_or_default(),
                probe: String::new(),
                mode: String::new(),
                enabled: true,
            },
        });
    }
    skipped.sort_by_key(|s| s.line);
    Plan {
        add,
        clusters: new_clusters.into_iter().filter(|c| used_clusters.contains(c)).collect(),
        skipped,
    }
}

/// What a found forward goes to, in the config's words.
struct Resolved {
    target: ServiceTarget,
    namespace: String,
    /// The service port (or, for pods, the container port), as a draft holds it.
    port: String,
}

/// What a found forward goes to: a service (the cluster asked for a literal nodePort's, or for
/// `.spec.ports[N]`), a pod, or pods (by labels, or a workload's, the cluster asked which).
fn resolve(f: &Found, cluster: &Cluster) -> Result<Resolved, String> {
    let namespace = f.namespace.clone().unwrap_or_else(|| "default".into());
    let (services, workloads) = match cluster {
        Cluster::Known { services, workloads } => (Some(services.as_slice()), Some(workloads.as_slice())),
        Cluster::Unknown(_) => (None, None),
    };
    let unknown = || match cluster {
        Cluster::Unknown(why) => why.clone(),
        Cluster::Known { .. } => String::new(),
    };
    let port = match &f.remote {
        Remote::Port(port) => port.clone(),
        Remote::NodePort(_) => String::new(),
    };
    let service = |name: &str, namespace: String, port: String| Resolved {
        target: ServiceTarget::Name(name.to_string()),
        namespace,
        port,
    };
    match (&f.target, &f.remote) {
        (Target::Service(name), Remote::Port(port)) => Ok(service(name, namespace, port.clone())),
        (Target::Service(name), Remote::NodePort(NodePortSource::Query(query))) => {
            let port = match &query.port {
                PortChoice::Index(0) => String::new(),
                PortChoice::Name(port) => port.clone(),
                PortChoice::Index(n) => {
                    let info = services
                        .ok_or_else(|| format!("`.spec.ports[{n}]` of {namespace}/{name}: which port that is, only the cluster can tell, and {}", unknown()))?
                        .iter()
                        .find(|s| s.namespace == namespace && s.name == *name)
                        .ok_or_else(|| format!("service {namespace}/{name} is not in the cluster"))?;
                    let (port, number, _) = info
                        .ports
                        .get(*n)
                        .ok_or_else(|| format!("service {namespace}/{name} has no port {n} (`.spec.ports[{n}]`)"))?;
                    port.clone().unwrap_or_else(|| number.to_string())
                }
            };
            Ok(service(name, namespace, port))
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
                            service(&s.name, s.namespace.clone(), port)
                        })
                })
                .ok_or_else(|| format!("nodePort {node_port}: no service of the cluster has it"))
        }
        (Target::Pod(pod), Remote::Port(_)) => Ok(Resolved {
            target: ServiceTarget::Pod(pod.clone()),
            namespace,
            port,
        }),
        (Target::PodSelector(text), Remote::Port(_)) => {
            let mut labels = BTreeMap::new();
            for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let (k, v) = pair
                    .split_once('=')
                    .filter(|(k, v)| !k.trim().is_empty() && !v.contains(['!', '(', ' ']))
                    .ok_or_else(|| format!("pods with `{text}`: only `label=value` selectors can be forwarded"))?;
                labels.insert(k.trim().to_string(), v.trim().to_string());
            }
            if labels.is_empty() {
                return Err(format!("pods with `{text}`: an empty selector would take every pod"));
            }
            Ok(Resolved {
                target: ServiceTarget::Pods(labels),
                namespace,
                port,
            })
        }
        (Target::Workload { kind, name }, Remote::Port(_)) => {
            let canonical = match kind.as_str() {
                "deploy" | "deployment" | "deployments" => "deployment",
                "sts" | "statefulset" | "statefulsets" => "statefulset",
                "ds" | "daemonset" | "daemonsets" => "daemonset",
                other => {
                    return Err(format!(
                        "{other}/{name}: Porthole forwards services, pods, and the pods of Deployments, StatefulSets and DaemonSets"
                    ));
                }
            };
            let workloads = workloads.ok_or_else(|| {
                format!(
                    "{kind}/{name}: which pods are its own, only the cluster can tell, and {}",
                    unknown()
                )
            })?;
            let workload = workloads
                .iter()
                .find(|w| w.kind == canonical && w.namespace == namespace && w.name == *name)
                .ok_or_else(|| format!("{canonical} {namespace}/{name} is not in the cluster"))?;
            let labels = workload.labels.clone().ok_or_else(|| {
                format!("{canonical} {namespace}/{name} selects its pods with matchExpressions, which `pods` cannot say: forward a service that selects them")
            })?;
            Ok(Resolved {
                target: ServiceTarget::Pods(labels),
                namespace,
                port,
            })
        }
        (Target::Proxy(host), _) => Err(format!(
            "a proxy to {host}: Porthole forwards services and pods of the cluster"
        )),
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
