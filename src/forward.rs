//! One forward at run time: its listener, its connections, its probe, and the task that turns
//! what they report (plus the cluster view) into a route and a health. The data path (listener,
//! accept, each connection) is in [`connections`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::cause::{Cause, Health, State};
use crate::config::{ForwardSpec, Mode};
use crate::discovery::ClusterView;
use crate::health::{Inputs, Listener, ProbeRecord, RouteChange};
use crate::probe;
use crate::route::{Route, resolve};
use crate::status::{Event, RouteView, Snapshot, StatsView};
use crate::tuning::Tuning;

mod connections;

/// What every forward shares with the engine that runs it.
pub(crate) struct Hub {
    pub snapshot: watch::Sender<Snapshot>,
    pub events: broadcast::Sender<Event>,
    pub tuning: Tuning,
    /// Every client connection, so that shutdown can wait for them to drain.
    pub connections: TaskTracker,
    /// Bumped when the machine woke up or its network changed ([`crate::host`]): discovery
    /// reconnects, and every forward is probed at once.
    pub wakes: watch::Sender<u64>,
}

/// Live counters of a forward's connections.
#[derive(Debug, Default)]
pub struct Stats {
    pub active: AtomicU64,
    pub total: AtomicU64,
    /// Connections closed because no route or no node answered.
    pub failed: AtomicU64,
    /// Bytes from local clients to the cluster.
    pub bytes_up: AtomicU64,
    /// Bytes from the cluster to local clients.
    pub bytes_down: AtomicU64,
    /// Connections that arrived while there was no usable path and were held for one.
    pub held: AtomicU64,
    /// Connections refused because the forward had `max_connections` open.
    pub refused: AtomicU64,
}

/// One connection counted in [`Stats::active`], until it is dropped: when the connection ends,
/// its task panics, or its future is dropped unfinished (the runtime shutting down).
#[must_use = "the connection counts as active only while this lives"]
pub struct Active(Arc<Stats>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Stats {
    /// Counts a new connection: in `total` for good, in `active` while the guard lives.
    pub fn open(self: &Arc<Stats>) -> Active {
        self.total.fetch_add(1, Ordering::Relaxed);
        self.active.fetch_add(1, Ordering::Relaxed);
        Active(self.clone())
    }

    pub fn view(&self) -> StatsView {
        StatsView {
            active: self.active.load(Ordering::Relaxed),
            total: self.total.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            bytes_up: self.bytes_up.load(Ordering::Relaxed),
            bytes_down: self.bytes_down.load(Ordering::Relaxed),
            held: self.held.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
        }
    }
}

/// Why `auto` takes the path it takes, from the route with both candidates.
fn path_reason(both: &Route, nodes_answer: Option<bool>) -> String {
    let Some(nodes) = both.nodes() else {
        return if both.service_type == "ClusterIP" {
            "the tunnel: a ClusterIP service has no nodePort".into()
        } else {
            format!(
                "the tunnel: service port {} has no nodePort ({})",
                both.port, both.service_type
            )
        };
    };
    let port = nodes.node_port;
    match nodes_answer {
        _ if nodes.targets.is_empty() => format!("the tunnel: no node address to try nodePort {port} on"),
        Some(true) => format!("the nodePort: a node answers on {}", both.primary()),
        Some(false) => format!(
            "the tunnel: no node answers on nodePort {port} from this host (node addresses are not \
             routable here, as under Docker Desktop or Colima, or the nodes are down)"
        ),
        None => format!("the tunnel while checking whether a node answers on nodePort {port}"),
    }
}

/// The engine's pool settings with the forward's own floor and ceiling: a pool the config asks
/// for is held whatever the port speaks.
fn pool_settings(spec: &ForwardSpec, tuning: &Tuning) -> crate::tuning::PoolSettings {
    match spec.tunnel_pool {
        Some(pool) => crate::tuning::PoolSettings {
            floor: usize::from(pool.min),
            ceiling: usize::from(pool.max),
            any_protocol: true,
            ..tuning.pool
        },
        None => tuning.pool,
    }
}

/// A running forward. Dropping it does not stop it: call [`ForwardHandle::stop`].
pub(crate) struct ForwardHandle {
    pub spec: ForwardSpec,
    /// Changes that do not touch the listener reach the running forward through here.
    live: watch::Sender<ForwardSpec>,
    pub stats: Arc<Stats>,
    cancel: CancellationToken,
    /// Cuts this forward's open connections.
    cut: CancellationToken,
    task: JoinHandle<()>,
}

/// What a forward is started with, besides its spec.
pub(crate) struct Parent<'a> {
    pub hub: &'a Arc<Hub>,
    pub view: watch::Receiver<ClusterView>,
    pub cancel: &'a CancellationToken,
    /// Cuts every open connection of the engine.
    pub cut: &'a CancellationToken,
}

impl ForwardHandle {
    /// Starts a forward; `previous` is its last health (a replaced forward's), where the events
    /// of its next transition start from.
    pub fn spawn(spec: ForwardSpec, previous: Health, parent: Parent<'_>) -> ForwardHandle {
        let stats = Arc::new(Stats::default());
        let cancel = parent.cancel.child_token();
        let cut = parent.cut.child_token();
        let (live, live_rx) = watch::channel(spec.clone());
        let forward = Forward {
            spec: spec.clone(),
            live: live_rx,
            hub: parent.hub.clone(),
            stats: stats.clone(),
            preferred: AtomicUsize::new(0),
            api: std::sync::Mutex::new(None),
            pool: crate::tunnel::Pool::new(pool_settings(&spec, &parent.hub.tuning)),
            cancel: cancel.clone(),
            cut: cut.clone(),
        };
        let span = info_span!("forward", forward = %spec.name);
        let task = tokio::spawn(forward.supervise(parent.view, previous).instrument(span));
        ForwardHandle {
            spec,
            live,
            stats,
            cancel,
            cut,
            task,
        }
    }

    /// Retargets a running forward (namespace, service, port, probe): its listener and open
    /// connections stay; new connections follow the new target.
    pub fn update(&mut self, spec: ForwardSpec) {
        debug_assert!(!crate::config::plan::needs_restart(&self.spec, &spec));
        self.spec = spec.clone();
        self.live.send_replace(spec);
    }

    /// Stops accepting at once; open connections get `drain` to finish, then are closed.
    /// With `None` they are left to the caller (the engine cuts them all at shutdown).
    pub async fn stop(self, drain: Option<Duration>) {
        self.cancel.cancel();
        let _ = self.task.await;
        let cut = self.cut;
        let Some(drain) = drain else { return };
        if self.stats.active.load(Ordering::Relaxed) == 0 {
            cut.cancel();
        } else {
            tokio::spawn(async move {
                tokio::time::sleep(drain).await;
                cut.cancel();
            });
        }
    }
}

struct Forward {
    /// As started: its name, address and `enabled` never change while it runs.
    spec: ForwardSpec,
    /// As currently configured: what it resolves and probes.
    live: watch::Receiver<ForwardSpec>,
    hub: Arc<Hub>,
    stats: Arc<Stats>,
    /// The route target that answered last.
    preferred: AtomicUsize,
    /// The API client, for tunnels; follows the cluster view.
    api: std::sync::Mutex<Option<kube::Client>>,
    /// Streams opened ahead of need, while the route is a tunnel.
    pool: crate::tunnel::Pool,
    cancel: CancellationToken,
    /// Cuts this forward's open connections.
    cut: CancellationToken,
}

/// What the listener task reports.
#[derive(Debug, Clone, PartialEq)]
enum Bind {
    Pending,
    Bound(SocketAddr),
    Failed(Cause),
}

impl Forward {
    async fn supervise(self, mut view: watch::Receiver<ClusterView>, previous: Health) {
        let this = Arc::new(self);
        let (route_tx, route_rx) = watch::channel::<Option<Arc<Route>>>(None);
        let (bind_tx, mut bind_rx) = watch::channel(Bind::Pending);
        let (probe_tx, mut probe_rx) = mpsc::channel(4);
        let mut inputs = Inputs {
            enabled: this.spec.enabled,
            listener: Listener::Binding,
            cluster: view.borrow().status.clone(),
            target: None,
            probe: ProbeRecord::default(),
            failure_threshold: this.hub.tuning.failure_threshold,
        };
        // The listener and the probe stop with this task, so that a stopped forward's port is
        // free when `stop` returns.
        let helpers = TaskTracker::new();
        // `watch`: the cluster serves the port itself; nothing to listen on, only to probe.
        let watch = this.spec.mode == Mode::Watch;
        if watch && this.spec.enabled {
            inputs.listener = Listener::Bound;
        }
        if this.spec.enabled {
            if !watch {
                helpers.spawn(this.clone().listen(bind_tx, route_rx.clone()).in_current_span());
                // Streams ahead of need, while the route is a tunnel.
                let (forward, routes, cancel) = (this.clone(), route_rx.clone(), this.cancel.clone());
                let timeout = this.hub.tuning.connect_timeout;
                helpers.spawn(
                    async move {
                        let client = || forward.client();
                        forward.pool.fill(routes, client, timeout, cancel).await;
                    }
                    .in_current_span(),
                );
            }
            let (live, tuning, forward) = (this.live.clone(), this.hub.tuning.clone(), this.clone());
            let check = move |route: Arc<Route>| {
                let probe = live.borrow().probe.clone();
                let bounds = probe::Bounds {
                    timeout: tuning.probe_timeout,
                    settle: forward.settle(),
                };
                let (client, forward) = (forward.client(), forward.clone());
                async move {
                    let first = forward.preferred.load(Ordering::Relaxed);
                    let outcome = probe::check(&probe, &route, client.as_ref(), bounds, first).await;
                    if outcome.is_err() && route.is_tunnel() {
                        // A pod that failed late (its stream opened): the next one, for the
                        // next probe and the next connections alike.
                        forward.pass_over(first, route.pods().len());
                    }
                    outcome
                }
            };
            let (tuning, cancel, wakes) = (this.hub.tuning.clone(), this.cancel.clone(), this.hub.wakes.subscribe());
            helpers.spawn(
                async move { probe::schedule(&tuning, route_rx, wakes, &cancel, check, probe_tx).await }
                    .in_current_span(),
            );
        }
        // `auto`: whether a node answers on the nodePort, checked on the probe's schedule.
        let (candidate_tx, candidate_rx) = watch::channel::<Option<Arc<Route>>>(None);
        let (reach_tx, mut reach_rx) = mpsc::channel(4);
        if this.spec.enabled && this.spec.mode == Mode::Auto {
            let timeout = this.hub.tuning.probe_timeout;
            let check = move |route: Arc<Route>| async move { route.connect(timeout).await.map(drop) };
            let (tuning, cancel, wakes) = (this.hub.tuning.clone(), this.cancel.clone(), this.hub.wakes.subscribe());
            helpers.spawn(
                async move { probe::schedule(&tuning, candidate_rx, wakes, &cancel, check, reach_tx).await }
                    .in_current_span(),
            );
        }
        let mut nodes_answer: Option<bool> = None;
        let mut decision: Option<(bool, String)> = None;
        helpers.close();
        let mut last = previous;
        let mut local = watch.then(|| SocketAddr::new(this.spec.bind, this.spec.local_port));
        let mut generation = view.borrow().generation;
        let mut live = this.live.clone();
        loop {
            if this.spec.enabled {
                let spec = live.borrow_and_update().clone();
                let v = view.borrow_and_update();
                this.set_client(v.client.as_ref().map(|c| c.0.clone()));
                inputs.cluster = v.status.clone();
                inputs.target = v.world.as_ref().map(|w| resolve(&spec, &v.cluster, w));
                if spec.mode == Mode::Auto
                    && let Some(Ok(candidates)) = &mut inputs.target
                {
                    let raw = Arc::new(candidates.clone());
                    candidate_tx.send_if_modified(|c| {
                        let changed = c.as_deref() != Some(&*raw);
                        *c = Some(raw.clone());
                        changed
                    });
                    *candidates = candidates.choose(nodes_answer);
                    let now = (candidates.is_tunnel(), path_reason(&raw, nodes_answer));
                    if decision.as_ref() != Some(&now) {
                        info!(path = if now.0 { "tunnel" } else { "nodeport" }, "{}", now.1);
                        decision = Some(now);
                    }
                }
                let new_generation = std::mem::replace(&mut generation, v.generation) != v.generation;
                drop(v);
                let change = this.update_route(&route_tx, &inputs.target, new_generation);
                inputs.probe.route_changed(change);
            }
            let now = inputs.health();
            let route = route_tx.borrow().as_deref().map(RouteView::from);
            this.publish(&mut last, now, local, route);
            tokio::select! {
                _ = this.cancel.cancelled() => break,
                changed = view.changed() => if changed.is_err() { break },
                changed = live.changed() => {
                    if changed.is_err() { break }
                    let settings = pool_settings(&live.borrow(), &this.hub.tuning);
                    this.pool.set_bounds(settings.floor, settings.ceiling, settings.any_protocol);
                    // Whatever was probed before says nothing of the new target or probe:
                    // start over, and have the schedule probe at once (a route published anew,
                    // so that outcomes of probes under way are not taken for it).
                    inputs.probe = ProbeRecord::default();
                    route_tx.send_modify(|r| *r = r.as_deref().map(|r| Arc::new(r.clone())));
                }
                changed = bind_rx.changed() => {
                    if changed.is_err() { break }
                    let bind = bind_rx.borrow_and_update().clone();
                    inputs.listener = match bind {
                        Bind::Pending => Listener::Binding,
                        Bind::Bound(addr) => { local = Some(addr); Listener::Bound }
                        Bind::Failed(cause) => Listener::Failed(cause),
                    };
                }
                Some(reached) = reach_rx.recv() => {
                    if reached.is_for(candidate_tx.borrow().as_ref()) {
                        nodes_answer = Some(reached.outcome.is_ok());
                    }
                }
                Some(probed) = probe_rx.recv() => {
                    // A probe of a route since replaced proves nothing of the current one.
                    if probed.is_for(route_tx.borrow().as_ref()) {
                        if let Err(cause) = &probed.outcome {
                            debug!(%cause, "probe failed");
                        }
                        inputs.probe.record(probed.outcome);
                    }
                }
            }
        }
        this.cancel.cancel();
        helpers.wait().await;
    }

    /// Publishes the route new connections use. A route the cluster no longer has is withdrawn;
    /// while the API is unreachable the stores keep their contents, so the last route stays.
    /// A new discovery generation (another context, new credentials) withdraws it until that
    /// generation has read the cluster.
    fn update_route(
        &self,
        route_tx: &watch::Sender<Option<Arc<Route>>>,
        target: &Option<Result<Route, Cause>>,
        new_generation: bool,
    ) -> RouteChange {
        let next = match target {
            Some(Ok(route)) => Some(route),
            Some(Err(_)) => None,
            None if new_generation => None,
            None => return RouteChange::None,
        };
        let mut change = RouteChange::None;
        route_tx.send_if_modified(|current| {
            if current.as_deref() == next {
                return false;
            }
            change = RouteChange::classify(current.as_deref(), next);
            let from = current.as_ref().map(|r| r.primary());
            let to = next.map(Route::primary);
            if from != to {
                info!(
                    from = from.as_deref().unwrap_or("-"),
                    to = to.as_deref().unwrap_or("-"),
                    "route changed"
                );
                let _ = self.hub.events.send(Event::Route {
                    name: self.spec.name.clone(),
                    from,
                    to,
                });
            }
            *current = next.map(|r| Arc::new(r.clone()));
            true
        });
        change
    }

    fn publish(&self, last: &mut Health, now: Health, local: Option<SocketAddr>, route: Option<RouteView>) {
        let name = &self.spec.name;
        self.hub.snapshot.send_if_modified(|snapshot| {
            let Some(entry) = snapshot.forwards.iter_mut().find(|f| f.name == *name) else {
                return false;
            };
            let mut modified = false;
            if entry.health != now {
                entry.health = now.clone();
                modified = true;
            }
            if entry.route != route {
                entry.path = route.as_ref().map(|r| r.path);
                entry.route = route;
                modified = true;
            }
            if local.is_some() && entry.local != local {
                entry.local = local;
                modified = true;
            }
            if modified {
                entry.stats = self.stats.view();
            }
            modified
        });
        // A new wording of the same cause (another error text) is not a transition.
        if last.state != now.state || last.cause.as_ref().map(|c| c.id) != now.cause.as_ref().map(|c| c.id) {
            match &now.cause {
                Some(cause) if now.state == State::Down && cause.id.needs_user() => {
                    error!(state = %now.state, cause = %cause.id, "{}", cause.message)
                }
                Some(cause) => warn!(state = %now.state, cause = %cause.id, "{}", cause.message),
                None => info!(state = %now.state, "state"),
            }
            let _ = self.hub.events.send(Event::Forward {
                name: name.clone(),
                from: std::mem::replace(last, now.clone()),
                to: now,
            });
        } else {
            *last = now;
        }
    }

    /// After target `failed` failed, new connections and probes start with the next one
    /// (unless another task moved on already).
    fn pass_over(&self, failed: usize, count: usize) {
        if count > 1 {
            let next = (failed + 1) % count;
            let _ = self
                .preferred
                .compare_exchange(failed, next, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// How long a tunnel's far side gets to report a failure: the config's, else the engine's.
    fn settle(&self) -> Duration {
        self.live
            .borrow()
            .tunnel_settle
            .unwrap_or(self.hub.tuning.tunnel_settle)
    }

    fn client(&self) -> Option<kube::Client> {
        self.api.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_client(&self, client: Option<kube::Client>) {
        *self.api.lock().unwrap_or_else(|p| p.into_inner()) = client;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_leaves_the_active_count_however_its_task_ends() {
        let stats = Arc::new(Stats::default());
        let finished = stats.open();
        let panicked = stats.open();
        let dropped = stats.open();
        assert_eq!(stats.view().active, 3);
        drop(finished);
        let task = tokio::spawn(async move {
            let _active = panicked;
            panic!("a bug in a connection's task");
        });
        assert!(task.await.unwrap_err().is_panic());
        let never = tokio::spawn(async move {
            let _active = dropped;
            std::future::pending::<()>().await;
        });
        never.abort();
        assert!(never.await.unwrap_err().is_cancelled());
        let view = stats.view();
        assert_eq!((view.active, view.total), (0, 3));
    }
}
