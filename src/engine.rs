//! The engine: runs every forward of a config, pushes a snapshot and events, applies config changes
//! by diff, and stops gracefully. It knows nothing of windows, trays or terminals.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, broadcast, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};

use crate::catalog::{Catalog, CatalogError};
use crate::config::{ClusterSpec, Config, ForwardSpec};
use crate::discovery::{self, ClusterStatus, ClusterView};
use crate::forward::{ForwardHandle, Parent, StatsView, Tuning};
use crate::health::{Health, State};
use crate::kubeconfig::state::{FixError, Fixed};
use crate::kubeconfig::tools::Tools;
use crate::kubeconfig::{self, KubeconfigError, Loaded};
pub use crate::status::{ClusterStatusView, Event, ForwardStatus, RouteView, Snapshot};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("no forward named `{0}`")]
    UnknownForward(String),
    #[error("the engine has stopped")]
    Stopped,
}

/// How long a burst of kubeconfig writes may take before it is read.
const KUBECONFIG_SETTLE: Duration = Duration::from_millis(100);
/// How often changed connection counters are pushed into the snapshot.
const STATS_PUSH: Duration = Duration::from_secs(1);
/// Bound on a discovery task noticing its cancellation.
const DISCOVERY_STOP: Duration = Duration::from_secs(2);

/// Fingerprint of the kubeconfig entries the client for `cluster` is built from.
fn fingerprint(cluster: &ClusterSpec) -> Option<u64> {
    let loaded = Loaded::for_cluster(cluster).ok()?;
    let context = loaded.effective_context(cluster).ok()?;
    loaded.fingerprint(&context)
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
    connections: CancellationToken,
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.cancel.cancel();
        self.connections.cancel();
    }
}

impl Engine {
    /// Starts every forward of `config`. Must be called within a tokio runtime.
    pub fn start(config: Config, tuning: Tuning) -> Engine {
        crate::install_tls_provider();
        let core = Core::start(config, tuning);
        let stop = StopOnDrop {
            cancel: core.cancel.clone(),
            connections: core.connections.clone(),
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

    /// Applies a new config by diff: unchanged forwards keep their listeners and connections; a
    /// forward whose service, port or probe changed is retargeted in place. The config's
    /// `enabled` flags win over earlier `set_enabled` calls.
    pub async fn apply(&self, config: Config) -> Result<(), EngineError> {
        self.core.apply(config).await
    }

    /// Turns one forward on or off, leaving the others alone.
    pub async fn set_enabled(&self, name: &str, enabled: bool) -> Result<(), EngineError> {
        self.core.set_enabled(name, enabled).await
    }

    /// Stops accepting, lets open connections drain for up to `drain`, then closes them.
    pub async fn shutdown(&self, drain: Duration) {
        self.core.shutdown(drain).await
    }

    /// The cluster's namespaces, services and ports as last watched (no API call).
    pub fn catalog(&self) -> Result<Catalog, CatalogError> {
        let view = self.core.view.borrow();
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
        let fixed = kubeconfig::state::fix(&cluster, &Tools::from_env()).await;
        self.core.refresh_kubeconfig_state(&cluster).await;
        if let Some(running) = self.core.running.lock().await.as_ref() {
            self.core.refresh_kubectl_context(&running.config.cluster);
        }
        fixed
    }
}

/// The engine's state, shared by its handles and its own tasks (which must not keep it alive:
/// they hold this, not an [`Engine`]).
#[derive(Clone)]
struct Core {
    hub: Arc<Hub>,
    view: watch::Sender<ClusterView>,
    running: Arc<Mutex<Option<Running>>>,
    cancel: CancellationToken,
    connections: CancellationToken,
}

impl Core {
    fn start(config: Config, tuning: Tuning) -> Core {
        let (snapshot, _) = watch::channel(Snapshot {
            context: config.cluster.context.clone(),
            kubectl_context: None,
            kubeconfig: None,
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
        let engine = Core {
            hub,
            view,
            running: Arc::new(Mutex::new(None)),
            cancel: CancellationToken::new(),
            connections: CancellationToken::new(),
        };
        let running = engine.running.clone();
        // Held until the engine is set up: its tasks start now and wait for it. A mutex made
        // just above has no other holder, so `try_lock` cannot fail.
        let Ok(mut slot) = running.try_lock() else {
            unreachable!("a new mutex is unlocked")
        };
        tokio::spawn(engine.clone().follow_cluster().instrument(info_span!("cluster")));
        tokio::spawn(engine.clone().follow_stats().instrument(info_span!("stats")));
        let mut setup = Running {
            config: Config {
                cluster: config.cluster.clone(),
                forwards: Vec::new(),
            },
            forwards: HashMap::new(),
            discovery: engine.spawn_discovery(&config.cluster),
        };
        for spec in &config.forwards {
            engine.add_forward(&mut setup, spec.clone());
        }
        setup.config = config;
        engine.refresh_kubectl_context(&setup.config.cluster);
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

    /// Applies a new config by diff: unchanged forwards keep their listeners and connections.
    /// The config's `enabled` flags win over earlier `set_enabled` calls.
    async fn apply(&self, config: Config) -> Result<(), EngineError> {
        let mut guard = self.running.lock().await;
        let running = guard.as_mut().ok_or(EngineError::Stopped)?;
        self.apply_locked(running, config).await;
        Ok(())
    }

    /// Turns one forward on or off, leaving the others alone.
    async fn set_enabled(&self, name: &str, enabled: bool) -> Result<(), EngineError> {
        let mut guard = self.running.lock().await;
        let running = guard.as_mut().ok_or(EngineError::Stopped)?;
        let mut config = running.config.clone();
        let spec = config
            .forwards
            .iter_mut()
            .find(|f| f.name == name)
            .ok_or_else(|| EngineError::UnknownForward(name.to_string()))?;
        spec.enabled = enabled;
        self.apply_locked(running, config).await;
        Ok(())
    }

    async fn apply_locked(&self, running: &mut Running, config: Config) {
        let drain = self.hub.tuning.drain_timeout;
        if running.config.cluster != config.cluster {
            info!("cluster settings changed: reconnecting");
            self.restart_discovery(running, &config.cluster).await;
        }
        let wanted: HashMap<&str, &ForwardSpec> = config.forwards.iter().map(|f| (f.name.as_str(), f)).collect();
        for (name, handle) in running.forwards.iter_mut() {
            if let Some(spec) = wanted
                .get(name.as_str())
                .filter(|s| ***s != handle.spec && !handle.needs_restart(s))
            {
                info!(forward = %name, "retargeting");
                handle.update((*spec).clone());
                let service = spec.target.to_string();
                self.hub.snapshot.send_modify(|s| {
                    if let Some(entry) = s.forwards.iter_mut().find(|f| f.name == *name) {
                        entry.namespace = spec.namespace.clone();
                        entry.service = service;
                    }
                });
            }
        }
        let stale: Vec<String> = running
            .forwards
            .iter()
            .filter(|(name, handle)| wanted.get(name.as_str()).is_none_or(|s| handle.needs_restart(s)))
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            if let Some(handle) = running.forwards.remove(&name) {
                info!(forward = %name, "stopping");
                handle.stop(Some(drain)).await;
                if !wanted.contains_key(name.as_str()) {
                    let _ = self.hub.events.send(Event::Removed { name: name.clone() });
                }
            }
        }
        // Keep the snapshot in config order, without forwards that are gone.
        self.hub.snapshot.send_modify(|s| {
            let mut by_name: HashMap<String, ForwardStatus> =
                s.forwards.drain(..).map(|f| (f.name.clone(), f)).collect();
            s.forwards = config.forwards.iter().filter_map(|f| by_name.remove(&f.name)).collect();
        });
        for spec in &config.forwards {
            if !running.forwards.contains_key(&spec.name) {
                info!(forward = %spec.name, "starting");
                self.add_forward(running, spec.clone());
            }
        }
        running.config = config;
        self.refresh_kubectl_context(&running.config.cluster);
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
        running.discovery.stop().await;
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

    /// Starts discovery for `cluster` in a new generation: forwards drop routes of older ones.
    fn spawn_discovery(&self, cluster: &ClusterSpec) -> Discovery {
        let cancel = self.cancel.child_token();
        self.view.send_modify(|v| *v = v.next_generation(cluster.clone()));
        let task = tokio::spawn(
            discovery::run(cluster.clone(), self.view.clone(), cancel.clone()).instrument(info_span!("discovery")),
        );
        let files = kubeconfig::files(cluster);
        let follow = self.clone().follow_kubeconfig(files, cluster.clone(), cancel.clone());
        tokio::spawn(follow.instrument(info_span!("kubeconfig")));
        Discovery {
            cancel,
            task,
            fingerprint: fingerprint(cluster),
        }
    }

    /// Stops the old discovery before the new one starts, so the old can never publish into
    /// the new generation.
    async fn restart_discovery(&self, running: &mut Running, cluster: &ClusterSpec) {
        let placeholder = Discovery {
            cancel: CancellationToken::new(),
            task: tokio::spawn(async {}),
            fingerprint: None,
        };
        std::mem::replace(&mut running.discovery, placeholder).stop().await;
        running.discovery = self.spawn_discovery(cluster);
    }

    /// Re-reads the kubeconfig when its files change: kubectl's current-context for the
    /// snapshot, and a new client when the context's own entries changed (a re-created kind
    /// cluster listens on a new port, with new certificates) or the context appeared.
    async fn follow_kubeconfig(self, files: Vec<PathBuf>, cluster: ClusterSpec, cancel: CancellationToken) {
        let (_watcher, mut changes) = match kubeconfig::watch(&files) {
            Ok(watching) => watching,
            Err(e) => return warn!(error = %e, "cannot watch the kubeconfig; changes are seen on `status` only"),
        };
        self.refresh_kubeconfig_state(&cluster).await;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                change = changes.recv() => if change.is_none() { return },
            }
            // Tools write, rename and chmod in a burst: read once after it.
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(KUBECONFIG_SETTLE) => {}
            }
            while changes.try_recv().is_ok() {}
            let Some(cluster) = self.cluster().await else { return };
            self.refresh_kubeconfig_state(&cluster).await;
            let mut guard = self.running.lock().await;
            let Some(running) = guard.as_mut() else { return };
            self.refresh_kubectl_context(&running.config.cluster);
            if fingerprint(&cluster) != running.discovery.fingerprint {
                info!("the kubeconfig entries of the context changed: reconnecting");
                // This task belongs to the old generation: the new one has its own watcher.
                self.restart_discovery(running, &cluster).await;
                return;
            }
        }
    }

    /// The cluster settings in effect, `None` once stopped.
    async fn cluster(&self) -> Option<ClusterSpec> {
        self.running.lock().await.as_ref().map(|r| r.config.cluster.clone())
    }

    fn add_forward(&self, running: &mut Running, spec: ForwardSpec) {
        let initial = Health::new(if spec.enabled { State::Starting } else { State::Disabled }, None);
        let status = ForwardStatus {
            name: spec.name.clone(),
            namespace: spec.namespace.clone(),
            service: spec.target.to_string(),
            local: Some(SocketAddr::new(spec.bind, spec.local_port)),
            enabled: spec.enabled,
            health: initial.clone(),
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
        let parent = Parent {
            hub: &self.hub,
            view: self.view.subscribe(),
            cancel: &self.cancel,
            connections: &self.connections,
        };
        let handle = ForwardHandle::spawn(spec.clone(), previous, parent);
        running.forwards.insert(spec.name, handle);
    }

    /// Copies the connection counters into the snapshot, at most once per `STATS_PUSH` and only
    /// when they changed: subscribers see traffic without asking, an idle engine stays quiet.
    async fn follow_stats(self) {
        let mut tick = tokio::time::interval(STATS_PUSH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let counters: Vec<(String, StatsView)> = match self.running.lock().await.as_ref() {
                Some(running) => running
                    .forwards
                    .iter()
                    .map(|(name, h)| (name.clone(), h.stats.view()))
                    .collect(),
                // Not started yet (or stopping: then the cancellation ends this loop).
                None => continue,
            };
            self.hub.snapshot.send_if_modified(|s| {
                let mut modified = false;
                for status in &mut s.forwards {
                    if let Some((_, view)) = counters.iter().find(|(name, _)| *name == status.name)
                        && status.stats != *view
                    {
                        status.stats = *view;
                        modified = true;
                    }
                }
                modified
            });
        }
    }

    /// Mirrors the cluster view into the snapshot and events.
    async fn follow_cluster(self) {
        let mut view = self.view.subscribe();
        let mut last: ClusterStatusView = (&ClusterStatus::Connecting).into();
        loop {
            let (status, context) = {
                let v = view.borrow_and_update();
                (ClusterStatusView::from(&v.status), v.context.clone())
            };
            if let Some(context) = context {
                self.set_contexts(Some(Some(context)), None);
            }
            if status != last {
                self.hub.snapshot.send_modify(|s| s.cluster = status.clone());
                // Only a change of state is news; a new wording of the same failure is not.
                if status.state != last.state {
                    let _ = self.hub.events.send(Event::Cluster {
                        from: last.clone(),
                        to: status.clone(),
                    });
                }
                last = status;
            }
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                changed = view.changed() => if changed.is_err() { return },
            }
        }
    }

    /// Reads kubectl's current-context.
    fn refresh_kubectl_context(&self, cluster: &ClusterSpec) {
        let current = Loaded::for_cluster(cluster)
            .ok()
            .and_then(|l| l.current_context().map(String::from));
        // With no context configured, Porthole uses kubectl's: the one discovery reports.
        let context = cluster.context.clone().map(Some);
        self.set_contexts(context, Some(current));
    }

    /// Updates Porthole's and kubectl's contexts (`None`: unchanged).
    fn set_contexts(&self, context: Option<Option<String>>, kubectl: Option<Option<String>>) {
        self.hub.snapshot.send_if_modified(|s| {
            let before = (s.context.clone(), s.kubectl_context.clone());
            if let Some(context) = context {
                s.context = context;
            }
            if let Some(kubectl) = kubectl {
                s.kubectl_context = kubectl;
            }
            (s.context.clone(), s.kubectl_context.clone()) != before
        });
    }

    /// Inspects the kubeconfig from Porthole's context and reports a change of state.
    async fn refresh_kubeconfig_state(&self, cluster: &ClusterSpec) {
        let Some(expected) = cluster.context.clone() else {
            return;
        };
        let files = kubeconfig::files(cluster);
        let state = match kubeconfig::state::inspect(files, &expected, &Tools::from_env()).await {
            Ok(inspection) => inspection.state,
            Err(e) => return warn!(error = %e, "cannot read the kubeconfig"),
        };
        let mut previous = None;
        let changed = self.hub.snapshot.send_if_modified(|s| {
            if s.kubeconfig.as_ref() == Some(&state) {
                return false;
            }
            previous = s.kubeconfig.replace(state.clone());
            true
        });
        if !changed {
            return;
        }
        match state.fix() {
            Some(fix) => warn!(state = state.id(), %fix, "{} (Porthole keeps using its own context)", state.sentence()),
            None => info!(state = state.id(), "{}", state.sentence()),
        }
        let _ = self.hub.events.send(Event::Kubeconfig {
            from: previous,
            to: state,
        });
    }
}
