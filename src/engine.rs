//! The engine: runs every forward of a config, pushes a snapshot and events, applies config changes
//! by diff, and stops gracefully. It knows nothing of windows, trays or terminals.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, broadcast, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};

use crate::catalog::{Catalog, CatalogError};
use crate::cause::{Health, State};
use crate::config::{Change, ClusterSpec, Config, ForwardSpec, Overrides};
use crate::discovery::{self, ClusterStatus, ClusterView};
use crate::forward::{ForwardHandle, Hub, Parent};
use crate::kubeconfig::state::{FixError, Fixed};
use crate::kubeconfig::tools::Tools;
use crate::kubeconfig::{self, KubeconfigError, Loaded};
use crate::status::StatsView;
pub use crate::status::{ClusterReport, ClusterStatusView, Event, ForwardStatus, Path, RouteView, Snapshot};
use crate::tuning::Tuning;

mod follow;

use follow::fingerprint;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("no forward named `{0}`")]
    UnknownForward(String),
    #[error("the engine has stopped")]
    Stopped,
}

/// Bound on a discovery task noticing its cancellation.
const DISCOVERY_STOP: Duration = Duration::from_secs(2);

struct Running {
    /// The config as the file (or the caller of [`Engine::apply`]) gives it.
    file: Config,
    /// Forwards turned on or off at run time, kept apart from `file`.
    overrides: Overrides,
    /// What runs: `file` with `overrides` applied.
    config: Config,
    forwards: HashMap<String, ForwardHandle>,
    /// One per cluster of `config`, in its order.
    clusters: Vec<ClusterRun>,
}

impl Running {
    fn cluster(&mut self, name: &str) -> Option<&mut ClusterRun> {
        self.clusters.iter_mut().find(|c| c.spec.name == name)
    }
}

/// One cluster at run time: its view (what its forwards resolve against) and the discovery
/// that publishes it. Routes never cross clusters: a forward holds its own cluster's view.
struct ClusterRun {
    spec: ClusterSpec,
    view: watch::Sender<ClusterView>,
    discovery: Discovery,
}

/// The discovery task, and what its client was built from.
struct Discovery {
    cancel: CancellationToken,
    task: JoinHandle<()>,
    /// Of the context's kubeconfig entries: a change means the client must be rebuilt.
    fingerprint: Option<u64>,
}

impl Discovery {
    /// Cancels the task and waits (boundedly) until it can no longer publish.
    async fn stop(self) {
        self.cancel.cancel();
        let mut task = self.task;
        if tokio::time::timeout(DISCOVERY_STOP, &mut task).await.is_err() {
            warn!("discovery did not stop in time: aborting it");
            task.abort();
            let _ = task.await;
        }
    }
}

/// A running engine. Cheap to clone; every clone controls the same engine. Call
/// [`Engine::shutdown`] to stop it gracefully; if the last clone is dropped instead, everything
/// stops at once (listeners, connections, watches).
#[derive(Clone)]
pub struct Engine {
    core: Core,
    _stop: Arc<StopOnDrop>,
}

/// Cancels everything when the last [`Engine`] handle goes.
struct StopOnDrop {
    cancel: CancellationToken,
    cut: CancellationToken,
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.cancel.cancel();
        self.cut.cancel();
    }
}

impl Engine {
    /// Starts every forward of `config`. Must be called within a tokio runtime.
    pub fn start(config: Config, tuning: Tuning) -> Engine {
        Engine::start_on(config, tuning, Arc::new(crate::host::System))
    }

    /// [`Engine::start`] on a given [`Host`](crate::host::Host): its clocks and addresses tell
    /// when the machine slept or changed networks.
    pub fn start_on(config: Config, tuning: Tuning, host: Arc<dyn crate::host::Host>) -> Engine {
        crate::install_tls_provider();
        let core = Core::start(config, tuning, host);
        let stop = StopOnDrop {
            cancel: core.cancel.clone(),
            cut: core.cut.clone(),
        };
        Engine {
            core,
            _stop: Arc::new(stop),
        }
    }

    /// The snapshot, updated on every change.
    pub fn snapshot(&self) -> watch::Receiver<Snapshot> {
        self.core.hub.snapshot.subscribe()
    }

    /// Every change from now on.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.core.hub.events.subscribe()
    }

    /// The snapshot with exact connection counters (kubectl's context is kept current by the
    /// kubeconfig watcher, not re-read here).
    pub async fn status(&self) -> Snapshot {
        self.core.status().await
    }

    /// The config in effect (with enable/disable applied).
    pub async fn config(&self) -> Option<Config> {
        self.core.running.lock().await.as_ref().map(|r| r.config.clone())
    }

    /// Applies a new config (the file's) by diff: unchanged forwards keep their listeners and
    /// connections; a forward whose service, port or probe changed is retargeted in place. A
    /// forward turned on or off with [`Engine::set_enabled`] stays so unless `config` changes
    /// that forward ([`Overrides`] states the policy).
    pub async fn apply(&self, config: Config) -> Result<(), EngineError> {
        self.core.apply(config).await
    }

    /// Turns one forward on or off at run time, leaving the others and the config alone.
    pub async fn set_enabled(&self, name: &str, enabled: bool) -> Result<(), EngineError> {
        self.core.set_enabled(name, enabled).await
    }

    /// Stops accepting, lets open connections drain for up to `drain`, then closes them.
    pub async fn shutdown(&self, drain: Duration) {
        self.core.shutdown(drain).await
    }

    /// A cluster's namespaces, services and ports as last watched (no API call): the one named,
    /// else the one kubectl should point at.
    pub async fn catalog(&self, cluster: Option<&str>) -> Result<Catalog, CatalogError> {
        let view = {
            let running = self.core.running.lock().await;
            let running = running
                .as_ref()
                .ok_or(CatalogError::Unavailable("the engine has stopped".into()))?;
            let name = cluster.unwrap_or(&running.config.kubectl_cluster().name);
            let run = running.clusters.iter().find(|c| c.spec.name == name);
            run.ok_or_else(|| CatalogError::Unavailable(format!("no cluster is named `{name}`")))?
                .view
                .subscribe()
        };
        let view = view.borrow();
        match &view.world {
            Some(world) => Ok(Catalog::of(world)),
            None => Err(CatalogError::Unavailable(match view.status.cause() {
                Some(cause) => cause.message,
                None => "still connecting".into(),
            })),
        }
    }

    /// The contexts of the kubeconfig Porthole reads, and kubectl's current one.
    pub async fn contexts(&self) -> Result<(Vec<String>, Option<String>), KubeconfigError> {
        let cluster = self.core.cluster().await.ok_or(KubeconfigError::NotFound(Vec::new()))?;
        let loaded = tokio::task::spawn_blocking(move || Loaded::for_cluster(&cluster))
            .await
            .map_err(|_| KubeconfigError::NotFound(Vec::new()))??;
        let names = loaded.merged.contexts.iter().map(|c| c.name.clone()).collect();
        Ok((names, loaded.current_context().map(str::to_string)))
    }

    /// Makes kubectl's current-context Porthole's (or merges the cluster's fresh entry), with a
    /// backup; the snapshot's kubeconfig state follows at once. `Ok(None)`: nothing to fix.
    pub async fn fix_kubeconfig(&self) -> Result<Option<Fixed>, FixError> {
        let cluster = self.core.cluster().await.ok_or(FixError::NoContext)?;
        let inspecting = self.core.kubeconfig.lock().await;
        let fixed = match crate::write::Backups::private() {
            Ok(backups) => kubeconfig::state::fix(&cluster, &Tools::from_env(), &backups).await,
            Err(e) => Err(e.into()),
        };
        self.core
            .inspect_kubeconfig(&cluster, matches!(fixed, Ok(Some(_))))
            .await;
        drop(inspecting);
        if let Some(running) = self.core.running.lock().await.as_ref() {
            self.core.refresh_kubectl_context(running.config.kubectl_cluster());
        }
        fixed
    }
}

/// The engine's state, shared by its handles and its own tasks (which must not keep it alive:
/// they hold this, not an [`Engine`]).
#[derive(Clone)]
struct Core {
    hub: Arc<Hub>,
    running: Arc<Mutex<Option<Running>>>,
    /// Held while the kubeconfig is inspected (and across a fix and its inspection).
    kubeconfig: Arc<Mutex<()>>,
    cancel: CancellationToken,
    /// Cuts every open connection (after the drain, or when the last handle goes).
    cut: CancellationToken,
}

impl Core {
    fn start(config: Config, tuning: Tuning, host: Arc<dyn crate::host::Host>) -> Core {
        let (snapshot, _) = watch::channel(Snapshot {
            kubectl_context: None,
            kubeconfig: None,
            clusters: Vec::new(),
            forwards: Vec::new(),
        });
        let (events, _) = broadcast::channel(1024);
        let (wakes, _) = watch::channel(0);
        let hub = Arc::new(Hub {
            snapshot,
            events,
            tuning,
            connections: TaskTracker::new(),
            wakes,
        });
        let engine = Core {
            hub,
            running: Arc::new(Mutex::new(None)),
            kubeconfig: Arc::new(Mutex::new(())),
            cancel: CancellationToken::new(),
            cut: CancellationToken::new(),
        };
        let running = engine.running.clone();
        // Held until the engine is set up: its tasks start now and wait for it. A mutex made
        // just above has no other holder, so `try_lock` cannot fail.
        let Ok(mut slot) = running.try_lock() else {
            unreachable!("a new mutex is unlocked")
        };
        tokio::spawn(engine.clone().follow_stats().instrument(info_span!("stats")));
        tokio::spawn(
            crate::host::follow(
                host,
                engine.hub.tuning.wake_tick,
                engine.hub.wakes.clone(),
                engine.cancel.clone(),
            )
            .instrument(info_span!("host")),
        );
        let mut setup = Running {
            file: config.clone(),
            overrides: Overrides::default(),
            config: Config {
                clusters: config.clusters.clone(),
                forwards: Vec::new(),
            },
            forwards: HashMap::new(),
            clusters: Vec::new(),
        };
        for cluster in &config.clusters {
            let run = engine.connect(cluster);
            setup.clusters.push(run);
        }
        for spec in &config.forwards {
            engine.add_forward(&mut setup, spec.clone());
        }
        setup.config = config;
        engine.refresh_kubectl_context(setup.config.kubectl_cluster());
        *slot = Some(setup);
        drop(slot);
        engine
    }

    /// The snapshot with exact connection counters; kubectl's context is kept current by the
    /// kubeconfig watcher, not re-read on every request.
    async fn status(&self) -> Snapshot {
        let running = self.running.lock().await;
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

    /// Applies a new config by diff. Forwards turned on or off at run time stay so unless
    /// `config` changes them ([`Overrides`]).
    async fn apply(&self, config: Config) -> Result<(), EngineError> {
        let mut guard = self.running.lock().await;
        let running = guard.as_mut().ok_or(EngineError::Stopped)?;
        running.overrides.rebase(&running.file, &config);
        running.file = config;
        let effective = running.overrides.effective(&running.file);
        self.carry_out(running, effective).await;
        Ok(())
    }

    /// Turns one forward on or off, leaving the others and the config as given alone.
    async fn set_enabled(&self, name: &str, enabled: bool) -> Result<(), EngineError> {
        let mut guard = self.running.lock().await;
        let running = guard.as_mut().ok_or(EngineError::Stopped)?;
        if !running.overrides.set(&running.file, name, enabled) {
            return Err(EngineError::UnknownForward(name.to_string()));
        }
        let effective = running.overrides.effective(&running.file);
        self.carry_out(running, effective).await;
        Ok(())
    }

    /// Takes the running forwards to `config` by the steps [`crate::config::plan`] gives: every
    /// listener that goes or moves is closed before any new one binds (two forwards may swap
    /// ports).
    async fn carry_out(&self, running: &mut Running, config: Config) {
        let drain = self.hub.tuning.drain_timeout;
        let changes = crate::config::plan(&running.config, &config);
        for change in &changes {
            match change {
                Change::Connect(cluster) => {
                    info!(cluster = %cluster.name, "connecting a new cluster");
                    let run = self.connect(cluster);
                    running.clusters.push(run);
                }
                Change::Reconnect { from, to } => {
                    info!(cluster = %to.name, "cluster settings changed: reconnecting");
                    if *from != to.name {
                        self.hub.snapshot.send_modify(|s| {
                            if let Some(report) = s.clusters.iter_mut().find(|c| c.name == *from) {
                                report.name = to.name.clone();
                            }
                        });
                    }
                    if let Some(run) = running.cluster(from) {
                        run.spec.name = to.name.clone();
                    }
                    self.restart_discovery(running, to).await;
                }
                Change::Disconnect(name) => {
                    let Some(index) = running.clusters.iter().position(|c| c.spec.name == *name) else {
                        continue;
                    };
                    info!(cluster = %name, "disconnecting a cluster gone from the config");
                    running.clusters.remove(index).discovery.stop().await;
                    self.hub
                        .snapshot
                        .send_modify(|s| s.clusters.retain(|c| c.name != *name));
                }
                Change::Retarget(spec) => {
                    let Some(handle) = running.forwards.get_mut(&spec.name) else {
                        continue;
                    };
                    info!(forward = %spec.name, "retargeting");
                    handle.update(spec.clone());
                    let service = spec.target.to_string();
                    self.hub.snapshot.send_modify(|s| {
                        if let Some(entry) = s.forwards.iter_mut().find(|f| f.name == spec.name) {
                            entry.cluster = spec.cluster.clone();
                            entry.namespace = spec.namespace.clone();
                            entry.service = service;
                        }
                    });
                }
                Change::Remove(name) => {
                    let Some(handle) = running.forwards.remove(name) else {
                        continue;
                    };
                    info!(forward = %name, "stopping");
                    handle.stop(Some(drain)).await;
                    // Out of the snapshot before the event: no snapshot read after the event
                    // still shows it.
                    self.hub
                        .snapshot
                        .send_modify(|s| s.forwards.retain(|f| f.name != *name));
                    let _ = self.hub.events.send(Event::Removed { name: name.clone() });
                }
                Change::Restart(spec) => {
                    let Some(handle) = running.forwards.remove(&spec.name) else {
                        continue;
                    };
                    info!(forward = %spec.name, "stopping to restart");
                    handle.stop(Some(drain)).await;
                }
                Change::Add(_) => {}
            }
        }
        for run in &mut running.clusters {
            // Only the kubectl mark moved (or nothing): no reconnect, the spec follows.
            if let Some(spec) = config.cluster(&run.spec.name) {
                run.spec = spec.clone();
            }
        }
        for change in changes {
            if let Change::Restart(spec) | Change::Add(spec) = change {
                info!(forward = %spec.name, "starting");
                self.add_forward(running, spec);
            }
        }
        // The clusters and the status in config order.
        running
            .clusters
            .sort_by_key(|run| config.clusters.iter().position(|c| c.name == run.spec.name));
        self.hub.snapshot.send_modify(|s| {
            let mut by_name: HashMap<String, ForwardStatus> =
                s.forwards.drain(..).map(|f| (f.name.clone(), f)).collect();
            s.forwards = config.forwards.iter().filter_map(|f| by_name.remove(&f.name)).collect();
            s.clusters
                .sort_by_key(|r| config.clusters.iter().position(|c| c.name == r.name));
            for report in &mut s.clusters {
                report.kubectl = config.cluster(&report.name).is_some_and(|c| c.kubectl);
            }
        });
        let guard_moved = running.config.kubectl_cluster().name != config.kubectl_cluster().name;
        running.config = config;
        self.refresh_kubectl_context(running.config.kubectl_cluster());
        if guard_moved {
            let cluster = running.config.kubectl_cluster().clone();
            let core = self.clone();
            tokio::spawn(async move { core.refresh_kubeconfig_state(&cluster).await });
        }
    }

    /// Stops accepting, lets open connections drain for up to `drain`, then closes them.
    async fn shutdown(&self, drain: Duration) {
        let Some(running) = self.running.lock().await.take() else {
            return;
        };
        info!("stopping");
        self.cancel.cancel();
        for (_, handle) in running.forwards {
            // Listeners close now; connections are cut below, after the drain.
            handle.stop(None).await;
        }
        for run in running.clusters {
            run.discovery.stop().await;
        }
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
            self.cut.cancel();
            self.hub.connections.wait().await;
        }
        self.cut.cancel();
        info!("stopped");
    }

    /// A cluster's view, its discovery, and the task mirroring the view into the snapshot.
    fn connect(&self, cluster: &ClusterSpec) -> ClusterRun {
        let (view, _) = watch::channel(ClusterView::new(cluster.clone()));
        self.hub.snapshot.send_modify(|s| {
            s.clusters.retain(|c| c.name != cluster.name);
            s.clusters.push(ClusterReport {
                name: cluster.name.clone(),
                context: cluster.context.clone(),
                kubectl: cluster.kubectl,
                status: (&ClusterStatus::Connecting).into(),
            });
        });
        let follow = self.clone().follow_cluster(view.subscribe());
        tokio::spawn(follow.instrument(info_span!("cluster", name = %cluster.name)));
        let discovery = self.spawn_discovery(&view, cluster);
        ClusterRun {
            spec: cluster.clone(),
            view,
            discovery,
        }
    }

    /// Starts discovery for `cluster` in a new generation: forwards drop routes of older ones.
    fn spawn_discovery(&self, view: &watch::Sender<ClusterView>, cluster: &ClusterSpec) -> Discovery {
        let cancel = self.cancel.child_token();
        view.send_modify(|v| *v = v.next_generation(cluster.clone()));
        let task = tokio::spawn(
            discovery::run(
                cluster.clone(),
                view.clone(),
                cancel.clone(),
                self.hub.tuning.api_read_timeout,
                self.hub.wakes.subscribe(),
            )
            .instrument(info_span!("discovery", cluster = %cluster.name)),
        );
        let files = kubeconfig::files(cluster);
        let follow = self
            .clone()
            .follow_kubeconfig(files, cluster.name.clone(), cancel.clone());
        tokio::spawn(follow.instrument(info_span!("kubeconfig", cluster = %cluster.name)));
        Discovery {
            cancel,
            task,
            fingerprint: fingerprint(cluster),
        }
    }

    /// Stops the old discovery of the cluster now named `cluster.name` before the new one
    /// starts, so the old can never publish into the new generation.
    async fn restart_discovery(&self, running: &mut Running, cluster: &ClusterSpec) {
        let Some(run) = running.cluster(&cluster.name) else {
            return;
        };
        let placeholder = Discovery {
            cancel: CancellationToken::new(),
            task: tokio::spawn(async {}),
            fingerprint: None,
        };
        std::mem::replace(&mut run.discovery, placeholder).stop().await;
        run.spec = cluster.clone();
        run.discovery = self.spawn_discovery(&run.view, cluster);
    }

    /// The settings in effect of the cluster kubectl should point at, `None` once stopped.
    async fn cluster(&self) -> Option<ClusterSpec> {
        self.running
            .lock()
            .await
            .as_ref()
            .map(|r| r.config.kubectl_cluster().clone())
    }

    fn add_forward(&self, running: &mut Running, spec: ForwardSpec) {
        let initial = Health::new(if spec.enabled { State::Starting } else { State::Disabled }, None);
        let status = ForwardStatus {
            name: spec.name.clone(),
            cluster: spec.cluster.clone(),
            namespace: spec.namespace.clone(),
            service: spec.target.to_string(),
            local: Some(SocketAddr::new(spec.bind, spec.local_port)),
            enabled: spec.enabled,
            health: initial.clone(),
            path: None,
            route: None,
            stats: StatsView::default(),
        };
        // A replaced forward's last health is where its next transition starts from.
        let mut previous = initial;
        self.hub
            .snapshot
            .send_modify(|s| match s.forwards.iter_mut().find(|f| f.name == spec.name) {
                Some(existing) => previous = std::mem::replace(existing, status).health,
                None => s.forwards.push(status),
            });
        let Some(run) = running.clusters.iter().find(|c| c.spec.name == spec.cluster) else {
            // A validated config names only its own clusters, and they connect first.
            warn!(forward = %spec.name, cluster = %spec.cluster, "no such cluster: not started");
            return;
        };
        let parent = Parent {
            hub: &self.hub,
            view: run.view.subscribe(),
            cancel: &self.cancel,
            cut: &self.cut,
        };
        let handle = ForwardHandle::spawn(spec.clone(), previous, parent);
        running.forwards.insert(spec.name, handle);
    }
}
