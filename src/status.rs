//! What the engine reports: the [`Snapshot`] of every forward and the [`Event`]s between them.
//! Plain data, serializable, so the CLI, the control socket and the tray app share one shape.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::discovery::ClusterStatus;
use crate::forward::StatsView;
use crate::health::Health;
use crate::kubeconfig::state::KubeconfigState;
use crate::route::Route;

/// Everything about one forward at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForwardStatus {
    pub name: String,
    pub namespace: String,
    /// The service name, or its label selector.
    pub service: String,
    /// The address listened on (the bound one, once bound).
    pub local: Option<SocketAddr>,
    pub enabled: bool,
    pub health: Health,
    pub route: Option<RouteView>,
    /// Pushed into the watched snapshot within a second of changing; exact from `Engine::status`.
    pub stats: StatsView,
}

/// A route as shown to users.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteView {
    /// `node-address:nodePort` of the node tried first.
    pub target: String,
    pub node: String,
    pub service_type: String,
    pub port: String,
    pub node_port: u16,
    pub ready_nodes: usize,
    pub ready_endpoints: usize,
}

impl From<&Route> for RouteView {
    fn from(route: &Route) -> RouteView {
        RouteView {
            target: route.primary(),
            node: route.targets.first().map(|t| t.node.clone()).unwrap_or_default(),
            service_type: route.service_type.clone(),
            port: route.port.clone(),
            node_port: route.node_port,
            ready_nodes: route.ready_nodes,
            ready_endpoints: route.ready_endpoints,
        }
    }
}

/// The state of every forward, and of the cluster and kubeconfig.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The context Porthole uses.
    pub context: Option<String>,
    /// kubectl's current-context; differing from `context` is reported, never acted on.
    pub kubectl_context: Option<String>,
    /// The kubeconfig as seen from Porthole's context (when the config names one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<KubeconfigState>,
    pub cluster: ClusterStatusView,
    pub forwards: Vec<ForwardStatus>,
}

impl Snapshot {
    pub fn context_mismatch(&self) -> bool {
        self.context.is_some() && self.kubectl_context != self.context
    }

    pub fn forward(&self, name: &str) -> Option<&ForwardStatus> {
        self.forwards.iter().find(|f| f.name == name)
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
    /// The connection to the API server changed.
    Cluster {
        from: ClusterStatusView,
        to: ClusterStatusView,
    },
    /// A forward was taken out of the config.
    Removed { name: String },
    /// The kubeconfig's state changed, in either direction (a context switched elsewhere, and
    /// back; a context gone stale, and fixed).
    Kubeconfig {
        from: Option<KubeconfigState>,
        to: KubeconfigState,
    },
}
