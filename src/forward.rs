//! One forward at run time: its listener, its connections, its probe, and the task that turns
//! what they report (plus the cluster view) into a route and a health.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::config::ForwardSpec;
use crate::discovery::ClusterView;
use crate::engine::{Event, Hub, RouteView};
use crate::health::{Cause, CauseId, Health, Inputs, Listener, ProbeRecord};
use crate::route::{Route, resolve};
use crate::{holder, probe, relay};

/// Timings of the engine; the defaults suit a laptop, tests shorten them.
#[derive(Debug, Clone)]
pub struct Tuning {
    /// Between probes while healthy.
    pub probe_interval: Duration,
    /// Between probes after a failure, so a real outage is confirmed quickly.
    pub probe_retry: Duration,
    /// Bound on one probe, and on each connect attempt to a node.
    pub probe_timeout: Duration,
    /// Consecutive failed probes that make a forward `down`.
    pub failure_threshold: u32,
    /// Bound on connecting one client connection to one node.
    pub connect_timeout: Duration,
    /// Between attempts to bind a local port that is taken.
    pub bind_retry: Duration,
    /// How long open connections may drain when a forward is removed or the engine stops.
    pub drain_timeout: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            probe_interval: Duration::from_secs(5),
            probe_retry: Duration::from_secs(1),
            probe_timeout: Duration::from_secs(2),
            failure_threshold: 3,
            connect_timeout: Duration::from_secs(3),
            bind_retry: Duration::from_secs(2),
            drain_timeout: Duration::from_secs(5),
        }
    }
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
}

/// A copy of [`Stats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsView {
    pub active: u64,
    pub total: u64,
    pub failed: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
}

impl Stats {
    pub fn view(&self) -> StatsView {
        StatsView {
            active: self.active.load(Ordering::Relaxed),
            total: self.total.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            bytes_up: self.bytes_up.load(Ordering::Relaxed),
            bytes_down: self.bytes_down.load(Ordering::Relaxed),
        }
    }
}

/// A running forward. Dropping it does not stop it: call [`ForwardHandle::stop`].
pub(crate) struct ForwardHandle {
    pub spec: ForwardSpec,
    pub stats: Arc<Stats>,
    cancel: CancellationToken,
    connections: CancellationToken,
    task: JoinHandle<()>,
}

impl ForwardHandle {
    pub fn spawn(
        spec: ForwardSpec,
        hub: Arc<Hub>,
        view: watch::Receiver<ClusterView>,
        parent: &CancellationToken,
        connections: &CancellationToken,
    ) -> ForwardHandle {
        let stats = Arc::new(Stats::default());
        let cancel = parent.child_token();
        let connections = connections.child_token();
        let forward = Forward {
            spec: spec.clone(),
            hub,
            stats: stats.clone(),
            cancel: cancel.clone(),
            connections: connections.clone(),
        };
        let span = info_span!("forward", forward = %spec.name);
        let task = tokio::spawn(forward.supervise(view).instrument(span));
        ForwardHandle {
            spec,
            stats,
            cancel,
            connections,
            task,
        }
    }

    /// Stops accepting at once; open connections get `drain` to finish, then are closed.
    /// With `None` they are left to the caller (the engine cuts them all at shutdown).
    pub async fn stop(self, drain: Option<Duration>) {
        self.cancel.cancel();
        let _ = self.task.await;
        let connections = self.connections;
        let Some(drain) = drain else { return };
        if self.stats.active.load(Ordering::Relaxed) == 0 {
            connections.cancel();
        } else {
            tokio::spawn(async move {
                tokio::time::sleep(drain).await;
                connections.cancel();
            });
        }
    }
}

struct Forward {
    spec: ForwardSpec,
    hub: Arc<Hub>,
    stats: Arc<Stats>,
    cancel: CancellationToken,
    connections: CancellationToken,
}

/// What the listener task reports.
#[derive(Debug, Clone, PartialEq)]
enum Bind {
    Pending,
    Bound(SocketAddr),
    Failed(Cause),
}

impl Forward {
    async fn supervise(self, mut view: watch::Receiver<ClusterView>) {
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
        if this.spec.enabled {
            tokio::spawn(this.clone().listen(bind_tx, route_rx.clone()).in_current_span());
            tokio::spawn(this.clone().probe(route_rx, probe_tx).in_current_span());
        }
        let mut health = None;
        let mut local = None;
        loop {
            if this.spec.enabled {
                let v = view.borrow_and_update();
                inputs.cluster = v.status.clone();
                inputs.target = v.world.as_ref().map(|w| resolve(&this.spec, &v.cluster, w));
                drop(v);
                if this.update_route(&route_tx, &inputs.target) {
                    // A new route earns a fresh count: failures on the old one say nothing of it.
                    inputs.probe.consecutive_failures = 0;
                }
            }
            let now = inputs.health();
            let route = route_tx.borrow().as_deref().map(RouteView::from);
            this.publish(&mut health, now, local, route);
            tokio::select! {
                _ = this.cancel.cancelled() => return,
                changed = view.changed() => if changed.is_err() { return },
                changed = bind_rx.changed() => {
                    if changed.is_err() { return }
                    let bind = bind_rx.borrow_and_update().clone();
                    inputs.listener = match bind {
                        Bind::Pending => Listener::Binding,
                        Bind::Bound(addr) => { local = Some(addr); Listener::Bound }
                        Bind::Failed(cause) => Listener::Failed(cause),
                    };
                }
                Some(outcome) = probe_rx.recv() => {
                    if let Err(cause) = &outcome {
                        debug!(%cause, "probe failed");
                    }
                    inputs.probe.record(outcome);
                }
            }
        }
    }

    /// Publishes the route new connections use. A route the cluster no longer has is withdrawn;
    /// while the API is unreachable the stores keep their contents, so the last route stays.
    fn update_route(
        &self,
        route_tx: &watch::Sender<Option<Arc<Route>>>,
        target: &Option<Result<Route, Cause>>,
    ) -> bool {
        let next = match target {
            Some(Ok(route)) => Some(route),
            Some(Err(_)) => None,
            None => return false,
        };
        route_tx.send_if_modified(|current| {
            if current.as_deref() == next {
                return false;
            }
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
        })
    }

    fn publish(&self, last: &mut Option<Health>, now: Health, local: Option<SocketAddr>, route: Option<RouteView>) {
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
        if last.as_ref() != Some(&now) {
            match &now.cause {
                Some(cause) => info!(state = %now.state, cause = %cause.id, "{}", cause.message),
                None => info!(state = %now.state, "state"),
            }
            if let Some(from) = last.replace(now.clone()) {
                let _ = self.hub.events.send(Event::Forward {
                    name: name.clone(),
                    from,
                    to: now,
                });
            }
        }
    }

    async fn listen(self: Arc<Self>, bind_tx: watch::Sender<Bind>, routes: watch::Receiver<Option<Arc<Route>>>) {
        let addr = SocketAddr::new(self.spec.bind, self.spec.local_port);
        if !self.spec.bind.is_loopback() {
            warn!(%addr, "listening on a non-loopback address: other machines can reach this forward");
        }
        let listener = loop {
            match TcpListener::bind(addr).await {
                Ok(listener) => break listener,
                Err(e) => {
                    let cause = bind_failure(addr, &e);
                    warn!(%addr, "{}", cause.message);
                    bind_tx.send_replace(Bind::Failed(cause));
                    tokio::select! {
                        _ = self.cancel.cancelled() => return,
                        _ = tokio::time::sleep(self.hub.tuning.bind_retry) => {}
                    }
                }
            }
        };
        let local = listener.local_addr().unwrap_or(addr);
        info!(%local, "listening");
        bind_tx.send_replace(Bind::Bound(local));
        self.accept(listener, routes).await;
    }

    async fn accept(self: Arc<Self>, listener: TcpListener, routes: watch::Receiver<Option<Arc<Route>>>) {
        loop {
            let accepted = tokio::select! {
                _ = self.cancel.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let (client, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, usually: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let route = routes.borrow().clone();
            let span = info_span!("conn", %peer);
            let this = self.clone();
            self.hub
                .connections
                .spawn(async move { this.serve(client, route).await }.instrument(span));
        }
    }

    async fn serve(self: Arc<Self>, client: TcpStream, route: Option<Arc<Route>>) {
        let stats = &self.stats;
        stats.total.fetch_add(1, Ordering::Relaxed);
        let Some(route) = route else {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            debug!("no route: closing");
            return;
        };
        let upstream = match route.connect(self.hub.tuning.connect_timeout).await {
            Ok(upstream) => upstream,
            Err(cause) => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                debug!(%cause, "closing");
                return;
            }
        };
        let _ = client.set_nodelay(true);
        stats.active.fetch_add(1, Ordering::Relaxed);
        tokio::select! {
            result = relay::relay(&client, &upstream, &stats.bytes_up, &stats.bytes_down) => {
                if let Err(e) = result {
                    debug!(error = %e, "connection ended with an error");
                }
            }
            _ = self.connections.cancelled() => debug!("closed by shutdown"),
        }
        stats.active.fetch_sub(1, Ordering::Relaxed);
    }

    async fn probe(
        self: Arc<Self>,
        routes: watch::Receiver<Option<Arc<Route>>>,
        results: mpsc::Sender<Result<(), Cause>>,
    ) {
        let (spec, timeout) = (self.spec.probe.clone(), self.hub.tuning.probe_timeout);
        let check = move |route: Arc<Route>| {
            let spec = spec.clone();
            async move { probe::check(&spec, &route, timeout).await }
        };
        probe_schedule(&self.hub.tuning, routes, &self.cancel, check, results).await;
    }
}

/// Probes the current route at once, then every `probe_interval` (`probe_retry` after a failure),
/// and at once again whenever the route changes. Routes without ready endpoints are not probed:
/// their health is already known.
async fn probe_schedule<F, Fut>(
    tuning: &Tuning,
    mut routes: watch::Receiver<Option<Arc<Route>>>,
    cancel: &CancellationToken,
    check: F,
    results: mpsc::Sender<Result<(), Cause>>,
) where
    F: Fn(Arc<Route>) -> Fut,
    Fut: std::future::Future<Output = Result<(), Cause>>,
{
    loop {
        let route = routes.borrow_and_update().clone();
        let mut wait = tuning.probe_interval;
        if let Some(route) = route.filter(|r| r.ready_endpoints > 0) {
            let outcome = check(route).await;
            if outcome.is_err() {
                wait = tuning.probe_retry;
            }
            if results.send(outcome).await.is_err() {
                return;
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
            changed = routes.changed() => if changed.is_err() { return },
        }
    }
}

fn bind_failure(addr: SocketAddr, e: &std::io::Error) -> Cause {
    if e.kind() == std::io::ErrorKind::AddrInUse {
        let port = addr.port();
        return match holder::find(port, addr.ip()) {
            Some(h) => Cause::new(CauseId::PortInUse, format!("port {port} is held by {h}"))
                .with_fix(format!("stop it (`kill {}`) or choose another `local_port`", h.pid)),
            None => Cause::new(CauseId::PortInUse, format!("port {port} is in use by another process")).with_fix(
                format!("find it with `lsof -nP -iTCP:{port} -sTCP:LISTEN`, or choose another `local_port`"),
            ),
        };
    }
    Cause::new(CauseId::ListenFailed, format!("cannot listen on {addr}: {e}"))
        .with_fix("choose another `local_port` or `bind` address (ports below 1024 need privileges)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::ProbeRecord;
    use crate::route::{Host, NodeTarget};
    use std::sync::atomic::AtomicBool;
    use tokio::time::Instant;

    fn route(node_port: u16, ready_endpoints: usize) -> Option<Arc<Route>> {
        Some(Arc::new(Route {
            namespace: "ns".into(),
            service: "ns/svc".into(),
            service_type: "NodePort".into(),
            port: "80/TCP".into(),
            node_port,
            targets: vec![NodeTarget {
                node: "w".into(),
                host: Host::Ip("127.0.0.2".parse().unwrap()),
            }],
            ready_endpoints,
        }))
    }

    /// The schedule running with a check that fails while `failing` is set.
    struct Harness {
        routes: watch::Sender<Option<Arc<Route>>>,
        failing: Arc<AtomicBool>,
        results: mpsc::Receiver<Result<(), Cause>>,
        cancel: CancellationToken,
    }

    fn start(tuning: Tuning) -> Harness {
        let (routes, routes_rx) = watch::channel(route(30080, 1));
        let (tx, results) = mpsc::channel(16);
        let failing = Arc::new(AtomicBool::new(false));
        let cancel = CancellationToken::new();
        let (f, c) = (failing.clone(), cancel.clone());
        tokio::spawn(async move {
            let check = move |_route: Arc<Route>| {
                let fail = f.load(Ordering::SeqCst);
                async move {
                    if fail {
                        Err(Cause::new(CauseId::ProbeFailed, "x"))
                    } else {
                        Ok(())
                    }
                }
            };
            probe_schedule(&tuning, routes_rx, &c, check, tx).await;
        });
        Harness {
            routes,
            failing,
            results,
            cancel,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn probes_at_the_interval_and_retries_sooner_after_a_failure() {
        let tuning = Tuning::default();
        let mut h = start(tuning.clone());
        let t0 = Instant::now();
        assert_eq!(h.results.recv().await, Some(Ok(())));
        assert_eq!(t0.elapsed(), Duration::ZERO, "the first probe runs at once");
        assert_eq!(h.results.recv().await, Some(Ok(())));
        assert_eq!(t0.elapsed(), tuning.probe_interval);
        h.failing.store(true, Ordering::SeqCst);
        assert!(h.results.recv().await.unwrap().is_err());
        assert_eq!(t0.elapsed(), tuning.probe_interval * 2);
        assert!(h.results.recv().await.unwrap().is_err());
        assert_eq!(t0.elapsed(), tuning.probe_interval * 2 + tuning.probe_retry);
        h.cancel.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_route_change_probes_at_once_and_routes_without_endpoints_are_skipped() {
        let tuning = Tuning::default();
        let mut h = start(tuning.clone());
        assert_eq!(h.results.recv().await, Some(Ok(())));
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(1)).await;
        h.routes.send_replace(route(30081, 1));
        assert_eq!(h.results.recv().await, Some(Ok(())));
        assert_eq!(t0.elapsed(), Duration::from_secs(1));
        h.routes.send_replace(route(30081, 0));
        let waited = tokio::time::timeout(tuning.probe_interval * 3, h.results.recv()).await;
        assert!(waited.is_err(), "no probe while no endpoint is ready");
        h.cancel.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_blip_does_not_take_a_forward_down_and_an_outage_is_confirmed_quickly() {
        let tuning = Tuning::default();
        let mut h = start(tuning.clone());
        let mut record = ProbeRecord::default();
        let down = |r: &ProbeRecord| r.consecutive_failures >= tuning.failure_threshold;
        record.record(h.results.recv().await.unwrap());
        h.failing.store(true, Ordering::SeqCst);
        record.record(h.results.recv().await.unwrap());
        assert!(!down(&record), "one failure is a blip");
        h.failing.store(false, Ordering::SeqCst);
        record.record(h.results.recv().await.unwrap());
        assert_eq!(record.consecutive_failures, 0);
        // Wait for a regular probe, then fail from there on.
        h.failing.store(true, Ordering::SeqCst);
        let t0 = Instant::now();
        for _ in 0..tuning.failure_threshold {
            record.record(h.results.recv().await.unwrap());
        }
        assert!(down(&record));
        let confirmed = tuning.probe_interval + tuning.probe_retry * (tuning.failure_threshold - 1);
        assert_eq!(t0.elapsed(), confirmed, "down within one interval and the retries");
        h.cancel.cancel();
    }
}
