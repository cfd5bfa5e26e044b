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
pub use crate::status::{ClusterStatusView, Event, ForwardStatus, Path, RouteView, Snapshot};
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
    /// Held while the kubeconfig is inspected (and across a fix and its inspection).
    kubeconfig: Arc<Mutex<()>>,
    cancel: CancellationToken,
    /// Cuts every open connection (after the drain, or when the last handle goes).
    cut: CancellationToken,
}

impl Core {
    fn start(config: Config, tuning: Tuning, host: Arc<dyn crate::host::Host>) -> Core {
        let (snapshot, _) = watch::channel(Snapshot {
            context: config.cluster.context.clone(),
            kubectl_context: None,
            kubeconfig: None,
            cluster: (&ClusterStatus::Connecting).into(),
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
        let (view, _) = watch::channel(ClusterView::new(config.cluster.clone()));
        let engine = Core {
            hub,
            view,
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
        tokio::spawn(engine.clone().follow_cluster().instrument(info_span!("cluster")));
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
                Change::Reconnect(cluster) => {
                    info!("cluster settings changed: reconnecting");
                    self.restart_discovery(running, cluster).await;
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
        for change in changes {
            if let Change::Restart(spec) | Change::Add(spec) = change {
                info!(forward = %spec.name, "starting");
                self.add_forward(running, spec);
            }
        }
        // The status in config order.
        self.hub.snapshot.send_modify(|s| {
            let mut by_name: HashMap<String, ForwardStatus> =
                s.forwards.drain(..).map(|f| (f.name.clone(), f)).collect();
            s.forwards = config.forwards.iter().filter_map(|f| by_name.remove(&f.name)).collect();
        });
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
            self.cut.cancel();
            self.hub.connections.wait().await;
        }
        self.cut.cancel();
        info!("stopped");
    }

    /// Starts discovery for `cluster` in a new generation: forwards drop routes of older ones.
    fn spawn_discovery(&self, cluster: &ClusterSpec) -> Discovery {
        let cancel = self.cancel.child_token();
        self.view.send_modify(|v| *v = v.next_generation(cluster.clone()));
        let task = tokio::spawn(
            discovery::run(
                cluster.clone(),
                self.view.clone(),
                cancel.clone(),
                self.hub.tuning.api_read_timeout,
                self.hub.wakes.subscribe(),
            )
            .instrument(info_span!("discovery")),
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
        let parent = Parent {
            hub: &self.hub,
            view: self.view.subscribe(),
            cancel: &self.cancel,
            cut: &self.cut,
        };
        let handle = ForwardHandle::spawn(spec.clone(), previous, parent);
        running.forwards.insert(spec.name, handle);
    }
}
