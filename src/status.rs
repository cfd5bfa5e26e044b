//! What the engine reports: the [`Snapshot`] of every forward and the [`Event`]s between them.
//! Plain data, serializable, so the CLI, the control socket and the tray app share one shape.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::cause::Health;
use crate::discovery::ClusterStatus;
use crate::kubeconfig::state::KubeconfigState;
use crate::route::Route;

mod text;

pub use text::{columns, table};

/// Everything about one forward at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForwardStatus {
    pub name: String,
    /// The name of its cluster ([`Snapshot::clusters`]).
    #[serde(default)]
    pub cluster: String,
    pub namespace: String,
    /// The service name, or its label selector.
    pub service: String,
    /// The address listened on (the bound one, once bound).
    pub local: Option<SocketAddr>,
    pub enabled: bool,
    pub health: Health,
    /// The path new connections take: `nodeport`, `tunnel`, or none (no route).
    pub path: Option<Path>,
    pub route: Option<RouteView>,
    /// Pushed into the watched snapshot within a second of changing; exact from `Engine::status`.
    pub stats: StatsView,
}

/// Which way a route goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Path {
    /// Straight to a node's nodePort.
    Nodeport,
    /// Through the API server's port-forward to a pod.
    Tunnel,
    /// `watch`: the cluster's own port on this host, probed, not relayed.
    Host,
}

/// A route as shown to users.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteView {
    pub path: Path,
    /// `node-address:nodePort` of the first node; for a tunnel, `namespace/pod:port` of the
    /// first ready pod, or `-` when no pod is ready. (Connections start with the node or pod
    /// that answered last.)
    pub target: String,
    /// For a tunnel: `namespace/pod:port` of the first ready pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The node tried first; for a tunnel, the first pod's node.
    pub node: String,
    pub service_type: String,
    pub port: String,
    pub node_port: u16,
    pub ready_nodes: usize,
    pub ready_endpoints: usize,
}

/// `text` with every control character (an escape sequence's ESC, a bell, a line break) shown
/// as `?`: strings from the cluster and the config (an API server's error message, a pod name)
/// are printed to terminals, menus and notifications as they are, never interpreted.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if text.chars().any(char::is_control) {
        text.chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect::<String>()
            .into()
    } else {
        text.into()
    }
}

impl From<&Route> for RouteView {
    fn from(route: &Route) -> RouteView {
        let tunnel = route.is_tunnel();
        let first_pod = route.pods().first();
        let pod = first_pod
            .filter(|_| tunnel)
            .map(|p| format!("{}/{}:{}", route.namespace, p.name, p.port));
        let node = match tunnel {
            true => first_pod.and_then(|p| p.node.clone()),
            false => route.nodes().and_then(|n| n.targets.first()).map(|t| t.node.clone()),
        };
        let nodes = route.nodes().filter(|_| !tunnel);
        RouteView {
            // A chosen route is never `auto`.
            path: match (&route.path, tunnel) {
                (crate::route::RoutePath::Host(_), _) => Path::Host,
                (_, true) => Path::Tunnel,
                (_, false) => Path::Nodeport,
            },
            target: match tunnel {
                true => pod.clone().unwrap_or_else(|| "-".into()),
                false => route.primary(),
            },
            pod,
            node: node.unwrap_or_default(),
            service_type: route.service_type.clone(),
            port: route.port.clone(),
            node_port: nodes.map_or(0, |n| n.node_port),
            ready_nodes: nodes.map_or(0, |n| n.ready),
            ready_endpoints: route.ready_endpoints,
        }
    }
}

impl RouteView {
    /// The route in words: `10.0.0.3:30080`, `tunnel → ns/pod:8080`, `tunnel (no ready pod)`.
    pub fn describe(&self) -> String {
        match (self.path, &self.pod) {
            (Path::Tunnel, Some(pod)) => format!("tunnel → {pod}"),
            (Path::Tunnel, None) => "tunnel (no ready pod)".into(),
            _ => self.target.clone(),
        }
    }
}

/// The state of every forward, and of every cluster and the kubeconfig.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// kubectl's current-context; differing from the context of the cluster kubectl should
    /// point at is reported, never acted on.
    pub kubectl_context: Option<String>,
    /// The kubeconfig as seen from the context of the cluster kubectl should point at (when the
    /// config names one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<KubeconfigReport>,
    /// Every cluster, in config order.
    pub clusters: Vec<ClusterReport>,
    pub forwards: Vec<ForwardStatus>,
}

/// One cluster: its name, the context used and its API connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterReport {
    pub name: String,
    /// The context Porthole uses: the one configured, else kubectl's current one once read.
    pub context: Option<String>,
    /// Whether this is the cluster kubectl should point at (the kubeconfig guard's).
    pub kubectl: bool,
    pub status: ClusterStatusView,
}

impl Snapshot {
    /// The cluster kubectl should point at.
    pub fn kubectl_cluster(&self) -> Option<&ClusterReport> {
        self.clusters.iter().find(|c| c.kubectl).or(self.clusters.first())
    }

    /// The context of the cluster kubectl should point at.
    pub fn context(&self) -> Option<&str> {
        self.kubectl_cluster().and_then(|c| c.context.as_deref())
    }

    pub fn context_mismatch(&self) -> bool {
        self.context().is_some() && self.kubectl_context.as_deref() != self.context()
    }

    pub fn cluster(&self, name: &str) -> Option<&ClusterReport> {
        self.clusters.iter().find(|c| c.name == name)
    }

    pub fn forward(&self, name: &str) -> Option<&ForwardStatus> {
        self.forwards.iter().find(|f| f.name == name)
    }
}

/// The kubeconfig's state and the sentence every front end shows for it (the CLI, the tray,
/// notifications and the settings page say the same words).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubeconfigReport {
    #[serde(flatten)]
    pub state: KubeconfigState,
    pub sentence: String,
    /// The command that fixes it, when one does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl From<KubeconfigState> for KubeconfigReport {
    fn from(state: KubeconfigState) -> KubeconfigReport {
        KubeconfigReport {
            sentence: state.sentence(),
            fix: state.fix(),
            state,
        }
    }
}

/// [`ClusterStatus`] in a form that survives a round trip through JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatusView {
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl From<&ClusterStatus> for ClusterStatusView {
    fn from(status: &ClusterStatus) -> Self {
        let (state, detail) = match status {
            ClusterStatus::Connecting => ("connecting", None),
            ClusterStatus::Connected => ("connected", None),
            ClusterStatus::Unreachable(d) => ("unreachable", Some(d.clone())),
            ClusterStatus::Unauthorized(d) => ("unauthorized", Some(d.clone())),
            ClusterStatus::Unusable(cause) => (cause.id.as_str(), Some(cause.message.clone())),
        };
        ClusterStatusView {
            state: state.into(),
            detail,
        }
    }
}

/// Something that changed. Pushed to every subscriber; nobody polls.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// A forward's state or cause changed.
    Forward { name: String, from: Health, to: Health },
    /// New connections of a forward go somewhere else now.
    Route {
        name: String,
        from: Option<String>,
        to: Option<String>,
    },
    /// The connection to a cluster's API server changed.
    Cluster {
        /// The cluster's name.
        #[serde(default)]
        name: String,
        from: ClusterStatusView,
        to: ClusterStatusView,
    },
    /// A forward was taken out of the config.
    Removed { name: String },
    /// The kubeconfig's state changed, in either direction (a context switched elsewhere, and
    /// back; a context gone stale, and fixed). `fixed`: Porthole's own fix changed it
    /// ([`crate::Engine::fix_kubeconfig`]), which reports itself.
    Kubeconfig {
        from: Option<KubeconfigState>,
        to: KubeconfigState,
        #[serde(default)]
        fixed: bool,
    },
}

/// A forward's connection counters at one moment (`forward::Stats::view`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsView {
    pub active: u64,
    pub total: u64,
    pub failed: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    #[serde(default)]
    pub held: u64,
    #[serde(default)]
    pub refused: u64,
}
