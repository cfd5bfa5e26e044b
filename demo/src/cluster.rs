//! `FakeCluster`: starting the fake API server, its kubeconfig, the fault switches,
//! and the namespace and node controls. Services and endpoints live in `services.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Namespace, NamespaceSpec, NamespaceStatus, Node, NodeAddress, NodeCondition, NodeSpec, NodeStatus, NodeSystemInfo,
    Taint,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::kubeconfig::{self, Entry};
use super::pki::Pki;
use super::portforward;
use super::proxy::{self, Proxy};
use super::store::{self, Kind, Store};

/// How often live watches that asked for bookmarks get one without `send_bookmarks()`.
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(3);

/// A fake kind cluster: an HTTPS Kubernetes API on 127.0.0.1 and a simulated kube-proxy
/// on node addresses in 127.0.0.0/8. Clones share one cluster; it stops when the last drops.
#[derive(Clone)]
pub struct FakeCluster {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    api_addr: SocketAddr,
    kubeconfig: PathBuf,
    pki: Pki,
    shared: Arc<Shared>,
    _dir: tempfile::TempDir,
    _stop: DropGuard,
}

/// What the API server, the kube-proxy tasks and the controls share.
pub struct Shared {
    state: Mutex<State>,
    pub reachable: AtomicBool,
    pub unauthorized: AtomicBool,
    /// Cancelled when the API goes unreachable, which drops every open connection.
    epoch: Mutex<CancellationToken>,
    /// Cancelled to make every connection open now go silent (see `silence_connections`).
    silence: Mutex<CancellationToken>,
    pub shutdown: CancellationToken,
    pub runtime: tokio::runtime::Handle,
    pub port_forwards: portforward::Controls,
    /// TLS handshakes completed: (full, resumed).
    pub handshakes: (std::sync::atomic::AtomicUsize, std::sync::atomic::AtomicUsize),
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, State> {
        // A control that panicked (a failed expectation in a test) leaves usable state behind.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn epoch(&self) -> CancellationToken {
        self.epoch.lock().expect("epoch lock").clone()
    }

    pub fn silence(&self) -> CancellationToken {
        self.silence.lock().expect("silence lock").clone()
    }
}

/// Everything that changes together under one lock: objects, pods and kube-proxy listeners.
pub struct State {
    pub store: Store,
    pub pods: BTreeMap<(String, String), Pod>,
    pub node_ports: BTreeSet<u16>,
    pub proxy: Proxy,
    pub next_cluster_ip: u32,
    node_net: [u8; 2],
    next_node_host: u8,
}

/// A pod backing a service: what the endpointslice controller sees, plus what the kubelet
/// reports for its Pod object (`pods.rs`) and needs for port forwarding (`portforward.rs`).
#[derive(Clone, Debug)]
pub struct Pod {
    pub service: String,
    pub backend: SocketAddr,
    pub ready: bool,
    /// Copied from the service's selector when the pod is registered, as a Deployment would.
    pub labels: BTreeMap<String, String>,
    /// The container port's name: the service's first named targetPort (or port name).
    pub port_name: Option<String>,
    /// The node the pod is bound to; `None` while Pending unscheduled.
    pub node: Option<String>,
    /// `Pending`, `Running`, `Succeeded` or `Failed`.
    pub phase: String,
    /// The CRI sandbox id, which the kubelet names in port-forward errors.
    pub sandbox: String,
}

impl State {
    /// A node address no other node of this cluster (nor, very likely, of another) has had.
    fn fresh_node_ip(&mut self) -> IpAddr {
        if self.next_node_host == 255 {
            self.node_net[1] = self.node_net[1].wrapping_add(1);
            self.next_node_host = 2;
        }
        let host = self.next_node_host;
        self.next_node_host += 1;
        IpAddr::V4(Ipv4Addr::new(127, self.node_net[0], self.node_net[1], host))
    }
}

impl FakeCluster {
    /// Starts the API server on 127.0.0.1:0 and writes a kind-shaped kubeconfig for it.
    pub async fn start(name: &str) -> FakeCluster {
        let pki = Pki::generate();
        let acceptor = TlsAcceptor::from(Arc::new(pki.server_config()));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind fake API server");
        let api_addr = listener.local_addr().expect("API server address");
        let shutdown = CancellationToken::new();
        let random = store::random_u64().to_le_bytes();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                store: Store::default(),
                pods: BTreeMap::new(),
                node_ports: BTreeSet::new(),
                proxy: Proxy::default(),
                next_cluster_ip: 1,
                // 127.0.x.x is left alone: 127.0.0.1 is everybody's.
                node_net: [random[0].clamp(1, 254), random[1]],
                next_node_host: 2,
            }),
            reachable: AtomicBool::new(true),
            unauthorized: AtomicBool::new(false),
            epoch: Mutex::new(shutdown.child_token()),
            silence: Mutex::new(CancellationToken::new()),
            shutdown: shutdown.clone(),
            runtime: tokio::runtime::Handle::current(),
            port_forwards: portforward::Controls::new(&shutdown),
            handshakes: Default::default(),
        });
        tokio::spawn(super::api::serve(listener, acceptor, shared.clone()));
        tokio::spawn(tick_bookmarks(shared.clone()));

        let dir = tempfile::tempdir().expect("create kubeconfig directory");
        let cluster = FakeCluster {
            inner: Arc::new(Inner {
                name: name.to_string(),
                api_addr,
                kubeconfig: dir.path().join("config"),
                pki,
                shared,
                _dir: dir,
                _stop: shutdown.drop_guard(),
            }),
        };
        for ns in ["default", "kube-node-lease", "kube-public", "kube-system"] {
            cluster.add_namespace(ns);
        }
        cluster.add_kubernetes_service();
        cluster.write_kubeconfig(&[], &cluster.context());
        cluster
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The context name kind gives the cluster: `kind-<name>`.
    pub fn context(&self) -> String {
        format!("kind-{}", self.inner.name)
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.inner.kubeconfig.clone()
    }

    pub fn api_addr(&self) -> SocketAddr {
        self.inner.api_addr
    }

    /// The cluster CA certificate (PEM), as in the kubeconfig's certificate-authority-data.
    pub fn ca_pem(&self) -> String {
        self.inner.pki.ca_pem.clone()
    }

    pub(super) fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }

    /// Runs a change under the state lock, then lets kube-proxy follow it before returning,
    /// so a caller can connect (or be refused) as soon as the control returns.
    pub(super) fn mutate<R>(&self, change: impl FnOnce(&mut State) -> R) -> R {
        let shared = self.shared();
        let mut state = shared.lock();
        let result = change(&mut state);
        let lag = state.proxy.lag;
        if lag.is_zero() {
            proxy::reconcile(shared, &mut state);
        } else {
            let shared = shared.clone();
            shared.runtime.clone().spawn(async move {
                tokio::time::sleep(lag).await;
                proxy::reconcile(&shared, &mut shared.lock());
            });
        }
        result
    }

    /// kube-proxy follows later API changes `lag` after them instead of at once (zero: at once).
    pub fn set_proxy_lag(&self, lag: std::time::Duration) {
        self.shared().lock().proxy.lag = lag;
    }

    // ---- faults ----

    /// `false`: the node addresses stop answering from this host, as under Docker Desktop or
    /// Colima on macOS (nothing listens there; open connections are cut). `true`: they answer.
    pub fn set_node_addresses_reachable(&self, reachable: bool) {
        self.mutate(|state| state.proxy.hidden = !reachable);
    }

    /// `false`: keep the port but accept-and-close every connection and drop the open ones
    /// (docker-proxy in front of a stopped kind node). `true`: serve again.
    pub fn set_api_reachable(&self, reachable: bool) {
        let shared = self.shared();
        let mut epoch = shared.epoch.lock().expect("epoch lock");
        let was = shared.reachable.swap(reachable, Ordering::SeqCst);
        if was && !reachable {
            epoch.cancel();
            *epoch = shared.shutdown.child_token();
        }
    }

    /// Every connection open now goes silent: from here on nothing moves either way on it and
    /// it is not closed, as connections are after a laptop slept or changed networks (packets
    /// go nowhere; nobody hears a reset). Watches stop delivering, tunnels stop carrying; new
    /// connections are served as before.
    pub fn silence_connections(&self) {
        let shared = self.shared();
        let mut silence = shared.silence.lock().expect("silence lock");
        silence.cancel();
        *silence = CancellationToken::new();
    }

    /// Every request answers 401 Unauthorized while set.
    pub fn set_unauthorized(&self, unauthorized: bool) {
        self.shared().unauthorized.store(unauthorized, Ordering::SeqCst);
    }

    /// Forgets the change history: watches from an older resourceVersion get a 410.
    pub fn compact(&self) {
        self.shared().lock().store.compact();
    }

    /// Sends a BOOKMARK at the current resourceVersion to every watch that allows them.
    pub fn send_bookmarks(&self) {
        self.shared().lock().store.bookmark();
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared().lock().store.rv()
    }

    /// TLS handshakes the API server completed: (full, resumed from an earlier session).
    pub fn tls_handshakes(&self) -> (usize, usize) {
        let (full, resumed) = &self.shared().handshakes;
        (full.load(Ordering::SeqCst), resumed.load(Ordering::SeqCst))
    }

    // ---- kubeconfig ----

    /// Makes `context` current. Any context other than this cluster's is added with a dead
    /// server (https://127.0.0.1:1), as when kubectl points at another cluster.
    pub fn set_current_context(&self, context: &str) {
        let text = std::fs::read_to_string(&self.inner.kubeconfig).expect("read kubeconfig");
        let doc = kube::config::Kubeconfig::from_yaml(&text).expect("parse kubeconfig");
        let mut others: Vec<String> = doc
            .contexts
            .into_iter()
            .map(|c| c.name)
            .filter(|n| *n != self.context())
            .collect();
        if context != self.context() && !others.iter().any(|n| n == context) {
            others.push(context.to_string());
        }
        self.write_kubeconfig(&others, context);
    }

    fn write_kubeconfig(&self, dead_contexts: &[String], current: &str) {
        let pki = &self.inner.pki;
        let entry = |name: &str, server: String| Entry {
            name: name.to_string(),
            server,
            ca_pem: pki.ca_pem.clone(),
            client_cert_pem: pki.client_cert_pem.clone(),
            client_key_pem: pki.client_key_pem.clone(),
        };
        let mut entries = vec![entry(&self.context(), format!("https://{}", self.inner.api_addr))];
        for name in dead_contexts {
            entries.push(entry(name, "https://127.0.0.1:1".to_string()));
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        let text = kubeconfig::render(&entries, current);
        kubeconfig::write_atomically(&self.inner.kubeconfig, &text);
    }

    // ---- namespaces ----

    pub fn add_namespace(&self, namespace: &str) {
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(namespace.to_string()),
                labels: Some(BTreeMap::from([(
                    "kubernetes.io/metadata.name".to_string(),
                    namespace.to_string(),
                )])),
                ..Default::default()
            },
            spec: Some(NamespaceSpec {
                finalizers: Some(vec!["kubernetes".to_string()]),
            }),
            status: Some(NamespaceStatus {
                phase: Some("Active".to_string()),
                ..Default::default()
            }),
        };
        self.mutate(|state| state.store.put(Kind::Namespace, to_value(&ns)));
    }

    /// Deletes a namespace the way the namespace controller does: it turns Terminating,
    /// its services, endpoint slices and pods go, then the namespace itself.
    pub fn delete_namespace(&self, namespace: &str) {
        self.mutate(|state| {
            let Some(value) = state.store.get(Kind::Namespace, "", namespace) else {
                return;
            };
            let mut ns: Namespace = from_value(value);
            ns.metadata.deletion_timestamp = Some(now());
            ns.status.get_or_insert_default().phase = Some("Terminating".to_string());
            state.store.put(Kind::Namespace, to_value(&ns));
            for kind in [Kind::Service, Kind::EndpointSlice, Kind::Pod, Kind::Deployment] {
                for object in state.store.list(kind, Some(namespace)) {
                    let name = object["metadata"]["name"].as_str().unwrap_or_default();
                    state.store.delete(kind, namespace, name);
                }
            }
            state.pods.retain(|(ns, _), _| ns != namespace);
            state.node_ports = used_node_ports(&state.store);
            state.store.delete(Kind::Namespace, "", namespace);
        });
    }

    // ---- nodes ----

    /// Adds a Ready node with a fresh InternalIP in 127.0.0.0/8 and returns that address.
    pub fn add_node(&self, name: &str) -> IpAddr {
        let cluster = self.inner.name.clone();
        self.mutate(|state| {
            let ip = state.fresh_node_ip();
            let node = node_object(&cluster, name, ip);
            state.store.put(Kind::Node, to_value(&node));
            ip
        })
    }

    /// Sets the node's Ready condition (False with reason KubeletNotReady when not ready).
    pub fn set_node_ready(&self, name: &str, ready: bool) {
        self.update_node(name, |node| {
            let status = node.status.get_or_insert_default();
            for condition in status.conditions.iter_mut().flatten() {
                if condition.type_ == "Ready" {
                    *condition = ready_condition(ready);
                }
            }
        });
    }

    /// Gives the node a new InternalIP, as a restarted Docker may; returns it.
    pub fn move_node(&self, name: &str) -> IpAddr {
        let ip = self.mutate(|state| state.fresh_node_ip());
        self.update_node(name, |node| {
            let status = node.status.get_or_insert_default();
            for address in status.addresses.iter_mut().flatten() {
                if address.type_ == "InternalIP" {
                    address.address = ip.to_string();
                }
            }
        });
        ip
    }

    pub fn remove_node(&self, name: &str) {
        self.mutate(|state| state.store.delete(Kind::Node, "", name));
    }

    /// The node's current InternalIP.
    pub fn node_ip(&self, name: &str) -> Option<IpAddr> {
        let state = self.shared().lock();
        let node: Node = from_value(state.store.get(Kind::Node, "", name)?);
        internal_ip(&node)
    }

    fn update_node(&self, name: &str, edit: impl FnOnce(&mut Node)) {
        self.mutate(|state| {
            let value = state
                .store
                .get(Kind::Node, "", name)
                .unwrap_or_else(|| panic!("node {name} not found"));
            let mut node: Node = from_value(value);
            edit(&mut node);
            state.store.put(Kind::Node, to_value(&node));
        });
    }
}

/// Node addresses of every node, as kube-proxy binds NodePorts on them.
pub fn internal_ip(node: &Node) -> Option<IpAddr> {
    node.status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .find(|a| a.type_ == "InternalIP")?
        .address
        .parse()
        .ok()
}

/// The node ports every stored service holds.
pub fn used_node_ports(store: &Store) -> BTreeSet<u16> {
    store
        .list(Kind::Service, None)
        .iter()
        .flat_map(|s| s["spec"]["ports"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p["nodePort"].as_u64())
        .filter_map(|p| u16::try_from(p).ok())
        .collect()
}

fn node_object(cluster: &str, name: &str, ip: IpAddr) -> Node {
    let control_plane = name.ends_with("-control-plane");
    let mut labels = BTreeMap::from([
        ("beta.kubernetes.io/arch".to_string(), "amd64".to_string()),
        ("beta.kubernetes.io/os".to_string(), "linux".to_string()),
        ("kubernetes.io/arch".to_string(), "amd64".to_string()),
        ("kubernetes.io/hostname".to_string(), name.to_string()),
        ("kubernetes.io/os".to_string(), "linux".to_string()),
    ]);
    let mut taints = None;
    if control_plane {
        labels.insert("node-role.kubernetes.io/control-plane".to_string(), String::new());
        taints = Some(vec![Taint {
            effect: "NoSchedule".to_string(),
            key: "node-role.kubernetes.io/control-plane".to_string(),
            ..Default::default()
        }]);
    }
    Node {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(labels),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            provider_id: Some(format!("kind://docker/{cluster}/{name}")),
            taints,
            ..Default::default()
        }),
        status: Some(NodeStatus {
            addresses: Some(vec![
                NodeAddress {
                    address: ip.to_string(),
                    type_: "InternalIP".to_string(),
                },
                NodeAddress {
                    address: name.to_string(),
                    type_: "Hostname".to_string(),
                },
            ]),
            conditions: Some(vec![ready_condition(true)]),
            node_info: Some(NodeSystemInfo {
                architecture: "amd64".to_string(),
                container_runtime_version: "containerd://2.1.4".to_string(),
                kubelet_version: "v1.35.0".to_string(),
                operating_system: "linux".to_string(),
                os_image: "Debian GNU/Linux 12 (bookworm)".to_string(),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

fn ready_condition(ready: bool) -> NodeCondition {
    let (status, reason, message) = if ready {
        ("True", "KubeletReady", "kubelet is posting ready status")
    } else {
        ("False", "KubeletNotReady", "container runtime network not ready")
    };
    NodeCondition {
        type_: "Ready".to_string(),
        status: status.to_string(),
        reason: Some(reason.to_string()),
        message: Some(message.to_string()),
        last_heartbeat_time: Some(now()),
        last_transition_time: Some(now()),
    }
}

async fn tick_bookmarks(shared: Arc<Shared>) {
    let mut interval = tokio::time::interval(BOOKMARK_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = interval.tick() => shared.lock().store.bookmark(),
        }
    }
}

pub fn now() -> Time {
    Time(store::now().parse().expect("timestamp parses"))
}

pub fn to_value<T: Serialize>(object: &T) -> Value {
    serde_json::to_value(object).expect("serialize object")
}

pub fn from_value<T: DeserializeOwned>(value: &Value) -> T {
    serde_json::from_value(value.clone()).expect("stored object deserializes")
}
