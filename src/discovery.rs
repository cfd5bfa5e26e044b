//! Live view of the cluster: reflectors over namespaces, services, nodes and EndpointSlices,
//! published as a [`ClusterView`] on every change.
//!
//! Level-triggered: consumers recompute what they need from the whole view, never from single
//! events (delete events can be lost across a relist). When the API becomes unreachable the stores
//! keep their last contents, so routes stay usable while the status says what is wrong.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Container, Namespace, Node, Pod, PodSpec, PodStatus, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use kube::runtime::utils::Backoff;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::cause::{Cause, CauseId};
use crate::config::ClusterSpec;
use crate::kubeconfig::Loaded;
use crate::route::World;

/// How Porthole's connection to the API server is doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "detail", rename_all = "kebab-case")]
pub enum ClusterStatus {
    Connecting,
    Connected,
    Unreachable(String),
    Unauthorized(String),
    /// The kubeconfig does not give a usable context.
    Unusable(Cause),
}

impl ClusterStatus {
    /// The cause to report on forwards, if the cluster is not fine.
    pub fn cause(&self) -> Option<Cause> {
        match self {
            ClusterStatus::Connecting | ClusterStatus::Connected => None,
            ClusterStatus::Unreachable(detail) => Some(
                Cause::new(
                    CauseId::ClusterUnreachable,
                    format!("the API server does not answer: {detail}"),
                )
                .with_fix("is the cluster running? `docker ps` should list its nodes"),
            ),
            ClusterStatus::Unauthorized(detail) => Some(
                Cause::new(
                    CauseId::Unauthorized,
                    format!("the API server refused the credentials: {detail}"),
                )
                .with_fix("refresh the kubeconfig entry (for kind: `kind export kubeconfig --name NAME`)"),
            ),
            ClusterStatus::Unusable(cause) => Some(cause.clone()),
        }
    }
}

/// What the engine knows of the cluster right now.
#[derive(Debug, Clone)]
pub struct ClusterView {
    /// Bumped whenever discovery restarts (another context, new credentials): routes learnt
    /// in an older generation may belong to another cluster and must not be used.
    pub generation: u64,
    pub cluster: ClusterSpec,
    /// The context in use, once the kubeconfig has been read.
    pub context: Option<String>,
    pub status: ClusterStatus,
    /// `None` until every watch has listed once; afterwards, the last known objects.
    pub world: Option<Arc<World>>,
    /// The client for tunnels through the API server (no read timeout: see
    /// [`crate::kubeconfig::Clients`]).
    pub client: Option<ApiClient>,
}

/// A [`kube::Client`] that can sit in a `Debug` struct.
#[derive(Clone)]
pub struct ApiClient(pub kube::Client);

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiClient")
    }
}

impl ClusterView {
    pub fn new(cluster: ClusterSpec) -> ClusterView {
        ClusterView {
            generation: 0,
            cluster,
            context: None,
            status: ClusterStatus::Connecting,
            world: None,
            client: None,
        }
    }

    /// A fresh view for a restarted discovery.
    pub fn next_generation(&self, cluster: ClusterSpec) -> ClusterView {
        ClusterView {
            generation: self.generation + 1,
            ..ClusterView::new(cluster)
        }
    }
}

/// Reconnect quickly (a local cluster is cheap to ask, and users wait on the answer), but never
/// in lockstep: each delay is jittered ("equal jitter": half of it fixed, half random), so four
/// watches and the recheck that fail together do not retry together. While the API server
/// refuses the credentials (401/403, `refused`), the pace is 1 s to 30 s instead: asking again
/// every few seconds forever changes nothing but the audit log.
struct Reconnect {
    /// The undelayed next step, doubling from the pace's floor to its ceiling.
    step: Duration,
    refused: Arc<AtomicBool>,
    /// xorshift state, seeded per instance.
    seed: u64,
}

/// Bound on asking a failing API server whether it is back.
const RECHECK_TIMEOUT: Duration = Duration::from_secs(5);
const RECONNECT_MIN: Duration = Duration::from_millis(250);
const RECONNECT_MAX: Duration = Duration::from_secs(5);
const REFUSED_MIN: Duration = Duration::from_secs(1);
const REFUSED_MAX: Duration = Duration::from_secs(30);

impl Reconnect {
    fn new(refused: Arc<AtomicBool>) -> Reconnect {
        use std::hash::{BuildHasher, Hasher};
        let seed = std::collections::hash_map::RandomState::new().build_hasher().finish() | 1;
        Reconnect {
            step: Duration::ZERO,
            refused,
            seed,
        }
    }

    fn pace(&self) -> (Duration, Duration) {
        if self.refused.load(Ordering::Relaxed) {
            (REFUSED_MIN, REFUSED_MAX)
        } else {
            (RECONNECT_MIN, RECONNECT_MAX)
        }
    }

    /// A number in [0, 1).
    fn random(&mut self) -> f64 {
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        (self.seed >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl Default for Reconnect {
    fn default() -> Self {
        Reconnect::new(Arc::default())
    }
}

impl Iterator for Reconnect {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        let (min, max) = self.pace();
        self.step = (self.step * 2).clamp(min, max);
        let half = self.step / 2;
        Some(half + half.mul_f64(self.random()))
    }
}

impl Backoff for Reconnect {
    fn reset(&mut self) {
        self.step = Duration::ZERO;
    }
}

/// The kinds of object discovery watches, one watch each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Namespace,
    Service,
    Node,
    EndpointSlice,
    /// Watched only for a cluster with forwards to pods.
    Pod,
}

impl Kind {
    const ALL: [Kind; 5] = [
        Kind::Namespace,
        Kind::Service,
        Kind::Node,
        Kind::EndpointSlice,
        Kind::Pod,
    ];

    /// Whether the API server lists this kind again (a cheap list of one object's metadata).
    async fn lists(self, client: &Client) -> Result<(), kube::Error> {
        let lp = kube::api::ListParams::default().limit(1);
        let client = client.clone();
        match self {
            Kind::Namespace => Api::<Namespace>::all(client).list_metadata(&lp).await.map(drop),
            Kind::Service => Api::<Service>::all(client).list_metadata(&lp).await.map(drop),
            Kind::Node => Api::<Node>::all(client).list_metadata(&lp).await.map(drop),
            Kind::EndpointSlice => Api::<EndpointSlice>::all(client).list_metadata(&lp).await.map(drop),
            Kind::Pod => Api::<Pod>::all(client).list_metadata(&lp).await.map(drop),
        }
    }
}

/// Something per [`Kind`].
#[derive(Debug, Default)]
struct PerKind<T>([T; 5]);

impl<T> std::ops::Index<Kind> for PerKind<T> {
    type Output = T;
    fn index(&self, kind: Kind) -> &T {
        &self.0[kind as usize]
    }
}

impl<T> std::ops::IndexMut<Kind> for PerKind<T> {
    fn index_mut(&mut self, kind: Kind) -> &mut T {
        &mut self.0[kind as usize]
    }
}

/// What one watch reported.
enum Signal {
    /// Connected; `changed` when the store's contents changed (or finished a relist).
    Ok {
        kind: Kind,
        changed: bool,
        synced: bool,
    },
    Failed {
        kind: Kind,
        status: ClusterStatus,
    },
    /// Failed kinds were asked directly whether the API is back.
    Rechecked,
}

/// Runs discovery until cancelled, publishing into `view`; `read_timeout` bounds each read of
/// its requests and watches.
///
/// On a wake (`wakes`: the machine slept or its network changed) it starts over with new
/// clients and new watches, within the same generation: connections that died silently are
/// not waited for, and the view keeps the last world until the new watches have read the
/// cluster again.
pub async fn run(
    cluster: ClusterSpec,
    view: watch::Sender<ClusterView>,
    cancel: CancellationToken,
    read_timeout: Duration,
    mut wakes: watch::Receiver<u64>,
) {
    let mut retry = Reconnect::default();
    wakes.borrow_and_update();
    loop {
        let attempt = async {
            let loaded = Loaded::for_cluster(&cluster)?;
            loaded.clients(&cluster, read_timeout).await
        };
        match attempt.await {
            Ok(clients) => {
                info!(context = %clients.context, "watching cluster");
                view.send_modify(|v| {
                    v.context = Some(clients.context);
                    v.client = Some(ApiClient(clients.tunnel));
                });
                match watch_cluster(clients.api, cluster.watch_pods, &view, &cancel, &mut wakes).await {
                    Ended::Stopped => return,
                    Ended::Woken => {
                        info!("reconnecting to the cluster after a wake");
                        retry.reset();
                    }
                }
            }
            Err(e) => {
                let status = ClusterStatus::Unusable(e.cause());
                if view.send_if_modified(|v| replace(&mut v.status, status)) {
                    warn!(error = %e, "cannot use the kubeconfig; retrying");
                }
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(retry.next().unwrap_or(RECONNECT_MAX)) => {}
                    _ = wakes.changed() => {}
                }
            }
        }
    }
}

fn replace<T: PartialEq>(slot: &mut T, value: T) -> bool {
    if *slot == value {
        return false;
    }
    *slot = value;
    true
}

/// A reflector of `K`; `refused` is set while the API server refuses the credentials (its
/// backoff and every other watch's slow down) and cleared when the watch works.
fn reflect<K>(
    api: Api<K>,
    kind: Kind,
    refused: Arc<AtomicBool>,
    trim: fn(&mut K),
) -> (Store<K>, impl Stream<Item = Signal> + Send)
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + Send + Sync + serde::de::DeserializeOwned + 'static,
{
    let (reader, writer) = reflector::store();
    let flag = refused.clone();
    let stream = watcher(api, watcher::Config::default())
        .backoff(Reconnect::new(refused))
        .modify(move |o: &mut K| {
            o.managed_fields_mut().clear();
            trim(o);
        })
        .reflect(writer)
        .map(move |item| match item {
            Ok(event) => {
                flag.store(false, Ordering::Relaxed);
                let (changed, synced) = match event {
                    watcher::Event::Apply(_) | watcher::Event::Delete(_) => (true, false),
                    watcher::Event::InitDone => (true, true),
                    watcher::Event::Init | watcher::Event::InitApply(_) => (false, false),
                };
                Signal::Ok { kind, changed, synced }
            }
            Err(e) => match classify(&e) {
                Some(status) => {
                    flag.store(matches!(status, ClusterStatus::Unauthorized(_)), Ordering::Relaxed);
                    Signal::Failed { kind, status }
                }
                None => {
                    debug!(?kind, error = %e, "watch restarted");
                    Signal::Ok {
                        kind,
                        changed: false,
                        synced: false,
                    }
                }
            },
        });
    (reader, stream)
}

/// What a watch error says of the cluster; `None` for the routine ones (a 410 Gone after a
/// compaction, answered by a relist) that must not raise an alarm.
fn classify(e: &watcher::Error) -> Option<ClusterStatus> {
    match e {
        watcher::Error::InitialListFailed(e) | watcher::Error::WatchStartFailed(e) | watcher::Error::WatchFailed(e) => {
            Some(status_of(e))
        }
        watcher::Error::WatchError(status) if status.code == 401 || status.code == 403 => Some(
            ClusterStatus::Unauthorized(format!("{} {}", status.code, status.message)),
        ),
        watcher::Error::WatchError(_) | watcher::Error::NoResourceVersion => None,
    }
}

/// The innermost message of an error chain: "connection refused", not three layers of wrapping.
fn short_error(e: &(dyn std::error::Error + 'static)) -> String {
    let mut inner = e;
    while let Some(source) = inner.source() {
        inner = source;
    }
    inner.to_string()
}

/// The four stores a [`World`] is read from.
/// Keeps what a route to a pod needs (labels, node, container ports, phase, conditions): a
/// pod's env, volumes and statuses are most of its size, and the store holds every pod.
fn trim_pod(pod: &mut Pod) {
    pod.metadata.annotations = None;
    pod.metadata.owner_references = None;
    pod.spec = pod.spec.take().map(|spec| PodSpec {
        node_name: spec.node_name,
        containers: spec
            .containers
            .into_iter()
            .map(|c| Container {
                name: c.name,
                ports: c.ports,
                ..Container::default()
            })
            .collect(),
        ..PodSpec::default()
    });
    pod.status = pod.status.take().map(|status| PodStatus {
        phase: status.phase,
        conditions: status.conditions,
        ..PodStatus::default()
    });
}

fn keep<K>(_: &mut K) {}

struct Stores {
    namespaces: Store<Namespace>,
    services: Store<Service>,
    nodes: Store<Node>,
    slices: Store<EndpointSlice>,
    /// `None` when no forward of the cluster goes to pods.
    pods: Option<Store<Pod>>,
}

impl Stores {
    fn world(&self) -> World {
        World {
            namespaces: self.namespaces.state(),
            services: self.services.state(),
            nodes: self.nodes.state(),
            endpoint_slices: self.slices.state(),
            pods: self.pods.as_ref().map(Store::state).unwrap_or_default(),
        }
    }
}

/// What the watches have said so far: which have listed once, which are failing now.
#[derive(Debug, Default)]
struct Progress {
    synced: PerKind<bool>,
    failures: PerKind<Option<ClusterStatus>>,
}

impl Progress {
    /// Records a signal; true if the stores' contents changed.
    fn record(&mut self, signal: Signal) -> bool {
        match signal {
            Signal::Ok { kind, changed, synced } => {
                self.synced[kind] |= synced;
                self.failures[kind] = None;
                changed
            }
            Signal::Failed { kind, status } => {
                debug!(?kind, ?status, "watch failed");
                self.failures[kind] = Some(status);
                false
            }
            Signal::Rechecked => false,
        }
    }

    fn failing(&self) -> bool {
        self.failures.0.iter().any(Option::is_some)
    }

    fn all_synced(&self) -> bool {
        self.synced.0.iter().all(|s| *s)
    }

    /// Unauthorized wins over unreachable: it is the one the user must act on.
    fn status(&self) -> ClusterStatus {
        let failed = self.failures.0.iter().flatten();
        if let Some(status) = failed.clone().find(|s| matches!(s, ClusterStatus::Unauthorized(_))) {
            return status.clone();
        }
        if let Some(status) = failed.into_iter().next() {
            return status.clone();
        }
        if self.all_synced() {
            ClusterStatus::Connected
        } else {
            ClusterStatus::Connecting
        }
    }
}

/// Why [`watch_cluster`] returned.
enum Ended {
    Stopped,
    Woken,
}

async fn watch_cluster(
    client: Client,
    pods: bool,
    view: &watch::Sender<ClusterView>,
    cancel: &CancellationToken,
    wakes: &mut watch::Receiver<u64>,
) -> Ended {
    let refused = Arc::new(AtomicBool::new(false));
    let (namespaces, s0) = reflect(
        Api::<Namespace>::all(client.clone()),
        Kind::Namespace,
        refused.clone(),
        keep,
    );
    let (services, s1) = reflect(
        Api::<Service>::all(client.clone()),
        Kind::Service,
        refused.clone(),
        keep,
    );
    let (nodes, s2) = reflect(Api::<Node>::all(client.clone()), Kind::Node, refused.clone(), keep);
    let (slices, s3) = reflect(
        Api::<EndpointSlice>::all(client.clone()),
        Kind::EndpointSlice,
        refused.clone(),
        keep,
    );
    let mut streams = vec![s0.boxed(), s1.boxed(), s2.boxed(), s3.boxed()];
    let mut progress = Progress::default();
    let pods = match pods {
        true => {
            let (pods, s4) = reflect(Api::<Pod>::all(client.clone()), Kind::Pod, refused.clone(), trim_pod);
            streams.push(s4.boxed());
            Some(pods)
        }
        // Not watched: nothing to wait for.
        false => {
            progress.synced[Kind::Pod] = true;
            None
        }
    };
    let stores = Stores {
        namespaces,
        services,
        nodes,
        slices,
        pods,
    };
    let mut signals = futures::stream::select_all(streams);
    let mut recheck = Reconnect::new(refused);
    // A deadline that survives other signals: a busy watch must not starve the recheck.
    let mut recheck_at: Option<tokio::time::Instant> = None;
    loop {
        let failing = progress.failing();
        if !failing {
            recheck.reset();
            recheck_at = None;
        }
        let deadline =
            *recheck_at.get_or_insert_with(|| tokio::time::Instant::now() + recheck.next().unwrap_or(RECONNECT_MAX));
        let signal = tokio::select! {
            _ = cancel.cancelled() => return Ended::Stopped,
            changed = wakes.changed() => {
                return if changed.is_ok() { Ended::Woken } else { Ended::Stopped };
            }
            signal = signals.next() => match signal {
                Some(signal) => signal,
                None => return Ended::Stopped,
            },
            // A watch that restarts without news emits nothing: ask the API whether it is back.
            _ = tokio::time::sleep_until(deadline), if failing => {
                recheck_at = None;
                tokio::select! {
                    _ = cancel.cancelled() => return Ended::Stopped,
                    _ = tokio::time::timeout(RECHECK_TIMEOUT, recover(&client, &mut progress.failures)) => {}
                }
                Signal::Rechecked
            }
        };
        let changed = progress.record(signal);
        let world = (changed && progress.all_synced()).then(|| stores.world());
        publish(view, progress.status(), world);
    }
}

fn publish(view: &watch::Sender<ClusterView>, status: ClusterStatus, world: Option<World>) {
    view.send_if_modified(|v| {
        let mut modified = false;
        if v.status != status {
            // Said once per kind of state: an outage's wording changes with every retry
            // ("connection reset", "tls handshake eof") and is not news.
            match &status {
                _ if std::mem::discriminant(&v.status) == std::mem::discriminant(&status) => {
                    debug!(?status, "cluster status detail changed")
                }
                ClusterStatus::Connected => info!("cluster connected"),
                ClusterStatus::Unreachable(e) => {
                    warn!(error = %e, "cluster unreachable; serving on the last known routes")
                }
                ClusterStatus::Unauthorized(e) => error!(error = %e, "cluster refused the credentials"),
                _ => {}
            }
            v.status = status;
            modified = true;
        }
        if let Some(world) = world {
            v.world = Some(Arc::new(world));
            modified = true;
        }
        modified
    });
}

/// Clears the failure of every kind that lists again.
async fn recover(client: &Client, failures: &mut PerKind<Option<ClusterStatus>>) {
    for kind in Kind::ALL {
        if failures[kind].is_none() {
            continue;
        }
        match kind.lists(client).await {
            Ok(()) => failures[kind] = None,
            // Still failing: that is already recorded, and the watcher will say more.
            Err(_) => return,
        }
    }
}

/// Lists everything once (for `doctor`): the same [`World`] the engine builds from its watches.
pub async fn list_world(client: &Client, pods: bool) -> Result<World, kube::Error> {
    let lp = kube::api::ListParams::default();
    let (ns_api, svc_api) = (
        Api::<Namespace>::all(client.clone()),
        Api::<Service>::all(client.clone()),
    );
    let (node_api, slice_api) = (
        Api::<Node>::all(client.clone()),
        Api::<EndpointSlice>::all(client.clone()),
    );
    let (namespaces, services, nodes, slices) = tokio::try_join!(
        ns_api.list(&lp),
        svc_api.list(&lp),
        node_api.list(&lp),
        slice_api.list(&lp)
    )?;
    let pods = match pods {
        true => arcs(Api::<Pod>::all(client.clone()).list(&lp).await?.items),
        false => Vec::new(),
    };
    Ok(World {
        namespaces: arcs(namespaces.items),
        services: arcs(services.items),
        nodes: arcs(nodes.items),
        endpoint_slices: arcs(slices.items),
        pods,
    })
}

fn arcs<K>(items: Vec<K>) -> Vec<Arc<K>> {
    items.into_iter().map(Arc::new).collect()
}

/// The cluster status for an error from a one-shot request.
pub fn status_of(e: &kube::Error) -> ClusterStatus {
    match e {
        kube::Error::Api(status) if status.code == 401 || status.code == 403 => {
            ClusterStatus::Unauthorized(format!("{} {}", status.code, status.message))
        }
        other => {
            let detail = short_error(other);
            // A server that answers with a certificate we do not trust, or rejects ours, is
            // there: the kubeconfig's credentials are stale (a re-created cluster), not the
            // cluster gone. The TLS errors arrive boxed several layers deep, as text.
            if is_certificate_error(&detail) {
                ClusterStatus::Unauthorized(format!("TLS: {detail}"))
            } else {
                ClusterStatus::Unreachable(detail)
            }
        }
    }
}

fn is_certificate_error(detail: &str) -> bool {
    let detail = detail.to_ascii_lowercase();
    [
        "certificate",
        "unknownissuer",
        "unknown ca",
        "bad_certificate",
        "badcertificate",
    ]
    .iter()
    .any(|needle| detail.contains(needle))
}

#[cfg(test)]
mod tests;
