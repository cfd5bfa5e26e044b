//! The engine: runs every forward of a config, pushes a snapshot and events, applies config changes
//! by diff, and stops gracefully. It knows nothing of windows, trays or terminals.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, broadcast, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};

use crate::config::{ClusterSpec, Config, ForwardSpec};
use crate::discovery::{self, ClusterStatus, ClusterView};
use crate::forward::{ForwardHandle, StatsView, Tuning};
use crate::health::{Health, State};
use crate::kubeconfig::Loaded;
use crate::route::Route;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("no forward named `{0}`")]
    UnknownForward(String),
    #[error("the engine has stopped")]
    Stopped,
}

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
    /// As of the last state change in the watched snapshot; live from [`Engine::status`].
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
    /// kubectl's current-context started or stopped matching Porthole's context.
    Context {
        expected: Option<String>,
        current: Option<String>,
        matches: bool,
    },
}

/// What forwards share with the engine.
pub(crate) struct Hub {
    pub snapshot: watch::Sender<Snapshot>,
    pub events: broadcast::Sender<Event>,
    pub tuning: Tuning,
    /// Every client connection, so that shutdown can wait for them to drain.
    pub connections: TaskTracker,
}

struct Running {
    config: Config,
    forwards: HashMap<String, ForwardHandle>,
    discovery: (CancellationToken, JoinHandle<()>),
}

/// A running engine. Cheap to clone; every clone controls the same engine.
#[derive(Clone)]
pub struct Engine {
    hub: Arc<Hub>,
    view: watch::Sender<ClusterView>,
    running: Arc<Mutex<Option<Running>>>,
    cancel: CancellationToken,
    connections: CancellationToken,
}

impl Engine {
    /// Starts every forward of `config`. Must be called within a tokio runtime.
    pub fn start(config: Config, tuning: Tuning) -> Engine {
        let (snapshot, _) = watch::channel(Snapshot {
            context: config.cluster.context.clone(),
            kubectl_context: None,
            cluster: (&ClusterStatus::Connecting).into(),
            forwards: Vec::new(),
        });
        let (events, _) = broadcast::channel(1024);
        let hub = Arc::new(Hub {
            snapshot,
            events,
            tuning,
            connections: TaskTracker::new(),
        });
        let (view, _) = watch::channel(ClusterView::new(config.cluster.clone()));
        let cancel = CancellationToken::new();
        let engine = Engine {
            hub,
            view,
            running: Arc::new(Mutex::new(None)),
            cancel: cancel.clone(),
            connections: CancellationToken::new(),
        };
        tokio::spawn(engine.clone().follow_cluster().instrument(info_span!("cluster")));
        let discovery = engine.spawn_discovery(&config.cluster);
        let mut running = Running {
            config: Config {
                cluster: config.cluster.clone(),
                forwards: Vec::new(),
            },
            forwards: HashMap::new(),
            discovery,
        };
        for spec in &config.forwards {
            engine.add_forward(&mut running, spec.clone());
        }
        running.config = config;
        engine.refresh_kubectl_context(&running.config.cluster);
        // Nothing else holds the lock yet: `try_lock` cannot fail here.
        if let Ok(mut slot) = engine.running.try_lock() {
            *slot = Some(running);
        }
        engine
    }

    /// The snapshot, updated on every change.
    pub fn snapshot(&self) -> watch::Receiver<Snapshot> {
        self.hub.snapshot.subscribe()
    }

    /// Every change from now on.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.hub.events.subscribe()
    }

    /// The snapshot with live connection counters and a fresh read of kubectl's current-context.
    pub async fn status(&self) -> Snapshot {
        let running = self.running.lock().await;
        if let Some(running) = running.as_ref() {
            self.refresh_kubectl_context(&running.config.cluster);
        }
        let mut snapshot = self.hub.snapshot.borrow().clone();
        if let Some(running) = running.as_ref() {
            for status in &mut snapshot.forwards {
                if let Some(handle) = running.forwards.get(&status.name) {
                    status.stats = handle.stats.view();
                }
            }
        }
        snapshot
    }

    /// The config in effect (with enable/disable applied).
    pub async fn config(&self) -> Option<Config> {
        self.running.lock().await.as_ref().map(|r| r.config.clone())
    }

    /// Applies a new config by diff: unchanged forwards keep their listeners and connections.
    pub async fn apply(&self, config: Config) -> Result<(), EngineError> {
        let mut guard = self.running.lock().await;
        let running = guard.as_mut().ok_or(EngineError::Stopped)?;
        let drain = self.hub.tuning.drain_timeout;
        if running.config.cluster != config.cluster {
            info!("cluster settings changed: reconnecting");
            let (cancel, task) = std::mem::replace(&mut running.discovery, self.spawn_discovery(&config.cluster));
            cancel.cancel();
            let _ = task.await;
        }
        let wanted: HashMap<&str, &ForwardSpec> = config.forwards.iter().map(|f| (f.name.as_str(), f)).collect();
        let stale: Vec<String> = running
            .forwards
            .iter()
            .filter(|(name, handle)| wanted.get(name.as_str()) != Some(&&handle.spec))
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            if let Some(handle) = running.forwards.remove(&name) {
                info!(forward = %name, "stopping");
                handle.stop(Some(drain)).await;
            }
        }
        for spec in &config.forwards {
            if !running.forwards.contains_key(&spec.name) {
                info!(forward = %spec.name, "starting");
                self.add_forward(running, spec.clone());
            }
        }
        // Keep the snapshot in config order, without forwards that are gone.
        self.hub.snapshot.send_modify(|s| {
            let mut by_name: HashMap<String, ForwardStatus> =
                s.forwards.drain(..).map(|f| (f.name.clone(), f)).collect();
            s.forwards = config.forwards.iter().filter_map(|f| by_name.remove(&f.name)).collect();
            s.context = config.cluster.context.clone();
        });
        running.config = config;
        self.refresh_kubectl_context(&running.config.cluster);
        Ok(())
    }

    /// Turns one forward on or off, leaving the others alone.
    pub async fn set_enabled(&self, name: &str, enabled: bool) -> Result<(), EngineError> {
        let mut config = self.config().await.ok_or(EngineError::Stopped)?;
        let spec = config
            .forwards
            .iter_mut()
            .find(|f| f.name == name)
            .ok_or_else(|| EngineError::UnknownForward(name.to_string()))?;
        spec.enabled = enabled;
        self.apply(config).await
    }

    /// Stops accepting, lets open connections drain for up to `drain`, then closes them.
    pub async fn shutdown(&self, drain: Duration) {
        let Some(running) = self.running.lock().await.take() else {
            return;
        };
        info!("stopping");
        self.cancel.cancel();
        for (_, handle) in running.forwards {
            // Listeners close now; connections are cut below, after the drain.
            handle.stop(None).await;
        }
        let _ = running.discovery.1.await;
        self.hub.connections.close();
        let open = self.hub.connections.len();
        if open > 0 {
            info!(open, "draining connections");
        }
        if tokio::time::timeout(drain, self.hub.connections.wait()).await.is_err() {
            warn!(
                open = self.hub.connections.len(),
                "drain timed out: closing connections"
            );
            self.connections.cancel();
            self.hub.connections.wait().await;
        }
        self.connections.cancel();
        info!("stopped");
    }

    fn spawn_discovery(&self, cluster: &ClusterSpec) -> (CancellationToken, JoinHandle<()>) {
        let cancel = self.cancel.child_token();
        self.view.send_modify(|v| {
            v.cluster = cluster.clone();
            v.status = ClusterStatus::Connecting;
            v.world = None;
            v.context = None;
        });
        let task = tokio::spawn(
            discovery::run(cluster.clone(), self.view.clone(), cancel.clone()).instrument(info_span!("discovery")),
        );
        (cancel, task)
    }

    fn add_forward(&self, running: &mut Running, spec: ForwardSpec) {
        let status = ForwardStatus {
            name: spec.name.clone(),
            namespace: spec.namespace.clone(),
            service: spec.target.to_string(),
            local: Some(SocketAddr::new(spec.bind, spec.local_port)),
            enabled: spec.enabled,
            health: Health::new(if spec.enabled { State::Starting } else { State::Disabled }, None),
            route: None,
            stats: StatsView::default(),
        };
        self.hub
            .snapshot
            .send_modify(|s| match s.forwards.iter_mut().find(|f| f.name == spec.name) {
                Some(existing) => *existing = status,
                None => s.forwards.push(status),
            });
        let handle = ForwardHandle::spawn(
            spec.clone(),
            self.hub.clone(),
            self.view.subscribe(),
            &self.cancel,
            &self.connections,
        );
        running.forwards.insert(spec.name, handle);
    }

    /// Mirrors the cluster view into the snapshot and events.
    async fn follow_cluster(self) {
        let mut view = self.view.subscribe();
        let mut last: ClusterStatusView = (&ClusterStatus::Connecting).into();
        loop {
            let status: ClusterStatusView = (&view.borrow_and_update().status).into();
            if status != last {
                self.hub.snapshot.send_modify(|s| s.cluster = status.clone());
                let _ = self.hub.events.send(Event::Cluster {
                    from: std::mem::replace(&mut last, status.clone()),
                    to: status,
                });
            }
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                changed = view.changed() => if changed.is_err() { return },
            }
        }
    }

    /// Reads kubectl's current-context and reports a change of (mis)match.
    fn refresh_kubectl_context(&self, cluster: &ClusterSpec) {
        let current = Loaded::for_cluster(cluster)
            .ok()
            .and_then(|l| l.current_context().map(String::from));
        let expected = cluster.context.clone();
        let mut event = None;
        self.hub.snapshot.send_if_modified(|s| {
            if s.kubectl_context == current && s.context == expected {
                return false;
            }
            let was = s.context_mismatch();
            s.kubectl_context = current.clone();
            s.context = expected.clone();
            let mismatch = s.context_mismatch();
            if mismatch {
                warn!(
                    expected = expected.as_deref().unwrap_or("-"),
                    current = current.as_deref().unwrap_or("(none)"),
                    "kubectl's current-context is not Porthole's context (Porthole keeps using its own)"
                );
            }
            if was != mismatch || mismatch {
                event = Some(Event::Context {
                    expected: expected.clone(),
                    current: current.clone(),
                    matches: !mismatch,
                });
            }
            true
        });
        if let Some(event) = event {
            let _ = self.hub.events.send(event);
        }
    }
}
