//! Resolving a forward to a route (node addresses and nodePort) from a snapshot of cluster objects,
//! and connecting through it.
//!
//! Pure functions over [`World`]: the engine feeds it from reflector stores, `doctor` from one-shot lists,
//! so both name the same causes.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::Serialize;
use tokio::net::TcpStream;

use crate::cause::{Cause, CauseId};
use crate::config::{ClusterSpec, ForwardSpec, Mode, NodeAddressType, PortRef, ServiceTarget};

/// The label EndpointSlices carry to name their service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
const CONTROL_PLANE_LABEL: &str = "node-role.kubernetes.io/control-plane";

/// The cluster objects a route is computed from.
#[derive(Debug, Clone, Default)]
pub struct World {
    pub namespaces: Vec<Arc<Namespace>>,
    pub services: Vec<Arc<Service>>,
    pub nodes: Vec<Arc<Node>>,
    pub endpoint_slices: Vec<Arc<EndpointSlice>>,
    /// Only for a cluster with forwards to pods (`ClusterSpec::watch_pods`); else empty.
    pub pods: Vec<Arc<Pod>>,
}

/// Where a node is reached.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    Ip(IpAddr),
    Name(String),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Name(name) => f.write_str(name),
        }
    }
}

impl Serialize for Host {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One node a route can use.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct NodeTarget {
    pub node: String,
    pub host: Host,
}

/// A ready pod and the container port behind the service port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct PodTarget {
    pub name: String,
    pub port: u16,
    /// The node it runs on, as its EndpointSlice says (whose kubelet the API server dials).
    pub node: Option<String>,
}

/// What a service port says it speaks, for the `auto` probe.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Http,
    Tls,
    /// HTTP/2 in the clear: gRPC, h2c.
    H2c,
}

impl Protocol {
    /// From the port's `appProtocol`, else its name (`http`, `http-web`, `grpc-api`, as Istio
    /// and most charts name them), else its number (443 and 8443 are TLS).
    pub fn of(port: &ServicePort) -> Protocol {
        let by_word = |word: &str| match word {
            "http" | "kubernetes.io/ws" | "ws" => Some(Protocol::Http),
            "https" | "tls" | "kubernetes.io/wss" | "wss" => Some(Protocol::Tls),
            "grpc" | "h2c" | "http2" | "kubernetes.io/h2c" => Some(Protocol::H2c),
            _ => None,
        };
        let app = port.app_protocol.as_deref().map(str::to_ascii_lowercase);
        if let Some(protocol) = app.as_deref().and_then(by_word) {
            return protocol;
        }
        let name = port.name.as_deref().unwrap_or_default().to_ascii_lowercase();
        let prefix = name.split(['-', '_']).next().unwrap_or_default();
        if let Some(protocol) = by_word(&name).or_else(|| by_word(prefix)) {
            return protocol;
        }
        match port.port {
            443 | 8443 => Protocol::Tls,
            _ => Protocol::Tcp,
        }
    }
}

/// Where new connections of a forward go: a service port, and the path to it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Route {
    pub namespace: String,
    /// `namespace/name`.
    pub service: String,
    pub service_type: String,
    /// The service port, as `name port/protocol`.
    pub port: String,
    /// What the service port says it speaks.
    pub protocol: Protocol,
    /// The service port's ready endpoints.
    pub ready_endpoints: usize,
    /// The way new connections go, with what that way needs.
    pub path: RoutePath,
}

/// The way a route goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RoutePath {
    /// To the service's nodePort on a node.
    Nodeport(Nodes),
    /// Through the API server's port-forward to one of these ready pods.
    Tunnel(Vec<PodTarget>),
    /// `auto` before a node has answered from this host: the nodePort (when the service port
    /// has one) and the pods; [`Route::choose`] takes one.
    Auto { nodes: Option<Nodes>, pods: Vec<PodTarget> },
    /// `watch`: the port the cluster publishes on this host itself; Porthole only probes it.
    Host(SocketAddr),
}

/// A service's nodePort and the nodes to reach it on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize)]
pub struct Nodes {
    pub node_port: u16,
    /// Ready nodes first, then the others as a fallback.
    pub targets: Vec<NodeTarget>,
    /// How many of `targets` (the first ones) are Ready.
    pub ready: usize,
}

impl Route {
    /// For `auto`: the path to use, given whether a node answered on the nodePort lately
    /// (`None`: not known yet, so the tunnel, which needs no node).
    pub fn choose(&self, nodes_answer: Option<bool>) -> Route {
        let RoutePath::Auto { nodes, pods } = &self.path else {
            return self.clone();
        };
        let path = match nodes {
            Some(nodes) if nodes_answer == Some(true) => RoutePath::Nodeport(nodes.clone()),
            _ => RoutePath::Tunnel(pods.clone()),
        };
        Route { path, ..self.clone() }
    }

    /// The nodePort and its nodes, on a nodePort path (or an `auto` one not chosen yet).
    pub fn nodes(&self) -> Option<&Nodes> {
        match &self.path {
            RoutePath::Nodeport(nodes) => Some(nodes),
            RoutePath::Auto { nodes, .. } => nodes.as_ref(),
            RoutePath::Tunnel(_) | RoutePath::Host(_) => None,
        }
    }

    /// The ready pods a tunnel may go to (none on a nodePort path).
    pub fn pods(&self) -> &[PodTarget] {
        match &self.path {
            RoutePath::Tunnel(pods) | RoutePath::Auto { pods, .. } => pods,
            RoutePath::Nodeport(_) | RoutePath::Host(_) => &[],
        }
    }

    pub fn is_tunnel(&self) -> bool {
        matches!(self.path, RoutePath::Tunnel(_))
    }

    /// Whether `other` goes the same way: the same nodePort on the same nodes, or a tunnel to
    /// the same pod first (the one probes and connections try first).
    pub fn same_path(&self, other: &Route) -> bool {
        match (&self.path, &other.path) {
            (RoutePath::Nodeport(a), RoutePath::Nodeport(b)) => a.node_port == b.node_port && a.targets == b.targets,
            (RoutePath::Tunnel(a), RoutePath::Tunnel(b)) => a.first() == b.first(),
            (RoutePath::Host(a), RoutePath::Host(b)) => a == b,
            (RoutePath::Auto { nodes: a, pods: p }, RoutePath::Auto { nodes: b, pods: q }) => {
                a.as_ref().map(|n| (n.node_port, &n.targets)) == b.as_ref().map(|n| (n.node_port, &n.targets))
                    && p.first() == q.first()
            }
            _ => false,
        }
    }

    /// `host:nodePort` of the first node; for a tunnel, `tunnel → namespace/pod:port` of the
    /// first pod (as logs and route events say it).
    pub fn primary(&self) -> String {
        if let RoutePath::Host(addr) = &self.path {
            return format!("watch → {addr}");
        }
        if self.is_tunnel() {
            return match self.pods().first() {
                Some(pod) => format!("tunnel → {}/{}:{}", self.namespace, pod.name, pod.port),
                None => "tunnel (no ready pod)".into(),
            };
        }
        match self.nodes() {
            Some(Nodes { node_port, targets, .. }) => match targets.first() {
                Some(t) => format!("{}:{node_port}", t.host),
                None => format!("-:{node_port}"),
            },
            None => "-".into(),
        }
    }

    /// Connects to the route's first node that answers, each attempt bounded by `timeout`.
    ///
    /// The error is `node-unreachable`, naming every node tried and why it failed.
    pub async fn connect(&self, timeout: Duration) -> Result<TcpStream, Cause> {
        self.connect_from(0, timeout).await.map(|(stream, _)| stream)
    }

    /// Like [`Route::connect`], starting with target `first` (the one that answered last, so a
    /// dead first node costs one timeout, not one per connection); returns the index that answered.
    pub async fn connect_from(&self, first: usize, timeout: Duration) -> Result<(TcpStream, usize), Cause> {
        if let RoutePath::Host(addr) = &self.path {
            return self.connect_host(*addr, timeout).await.map(|stream| (stream, 0));
        }
        let Some(Nodes { node_port, targets, .. }) = self.nodes() else {
            return Err(Cause::new(
                CauseId::NodeUnreachable,
                format!("{} has no nodePort to connect to", self.service),
            ));
        };
        let node_port = *node_port;
        let mut failures = Vec::new();
        let mut all_refused = true;
        let count = targets.len();
        for index in (0..count).map(|i| (first + i) % count) {
            let target = &targets[index];
            let attempt = match &target.host {
                Host::Ip(ip) => {
                    tokio::time::timeout(timeout, TcpStream::connect(SocketAddr::new(*ip, node_port))).await
                }
                Host::Name(name) => tokio::time::timeout(timeout, TcpStream::connect((name.as_str(), node_port))).await,
            };
            match attempt {
                Ok(Ok(stream)) => return Ok((stream, index)),
                Ok(Err(e)) if crate::descriptors::exhausted(&e) => {
                    // Not the node's fault, and the next node would fail the same way.
                    let what = format!("connecting to {}:{}", target.host, node_port);
                    return Err(crate::descriptors::cause(&what));
                }
                Ok(Err(e)) => {
                    all_refused &= e.kind() == std::io::ErrorKind::ConnectionRefused;
                    failures.push(format!("{}:{} ({e})", target.host, node_port));
                }
                Err(_) => {
                    all_refused = false;
                    failures.push(format!("{}:{} (no answer in {timeout:?})", target.host, node_port));
                }
            }
        }
        let message = format!(
            "cannot connect to nodePort {} of {}: {}",
            node_port,
            self.service,
            failures.join(", ")
        );
        let fix = if all_refused && self.ready_endpoints > 0 {
            // The nodes answer, with a refusal: kube-proxy passed the connection to a pod that
            // refused it, or has no rule for the port.
            format!(
                "the nodes answer but refuse: check that the pods of {} listen on the service's targetPort \
                 (`kubectl get endpoints -n {}`)",
                self.service, self.namespace
            )
        } else {
            node_unreachable_fix().to_string()
        };
        Err(Cause::new(CauseId::NodeUnreachable, message).with_fix(fix))
    }
}

impl Route {
    /// A `watch` forward's port on this host: the cluster's port mapping.
    async fn connect_host(&self, addr: SocketAddr, timeout: Duration) -> Result<TcpStream, Cause> {
        let failure = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(e)) if crate::descriptors::exhausted(&e) => {
                return Err(crate::descriptors::cause(&format!("connecting to {addr}")));
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer in {timeout:?}"),
        };
        Err(Cause::new(
            CauseId::HostPortUnanswered,
            format!("nothing answers on {addr} for {} ({failure})", self.service),
        )
        .with_fix(format!(
            "a watched port is the cluster's own: kind publishes it with `extraPortMappings` (containerPort = the nodePort), \
             k3d with `-p {}:…`, both only when the cluster is created; check the node container's ports (`docker ps`), \
             or let Porthole forward it (`mode = \"auto\"`)",
            addr.port()
        )))
    }
}

/// What to do when no node answers on this platform.
fn node_unreachable_fix() -> &'static str {
    if cfg!(target_os = "macos") {
        "node addresses are not reachable from macOS under Docker Desktop or Colima: use `mode = \"auto\"` (the default) or `\"tunnel\"` to go through the API server instead"
    } else {
        "check that the node's container is running (`docker ps`) and that the nodePort answers"
    }
}

#[cfg(test)]
impl Route {
    /// The nodes of a nodePort route, to change in a test.
    pub(crate) fn nodes_mut(&mut self) -> &mut Nodes {
        match &mut self.path {
            RoutePath::Nodeport(nodes) => nodes,
            other => panic!("not a nodePort route: {other:?}"),
        }
    }

    /// A nodePort route to one node address per `ip`, for unit tests.
    pub(crate) fn for_tests(ips: &[IpAddr], node_port: u16, ready_endpoints: usize) -> Route {
        let targets: Vec<NodeTarget> = ips
            .iter()
            .map(|ip| NodeTarget {
                node: ip.to_string(),
                host: Host::Ip(*ip),
            })
            .collect();
        Route {
            namespace: "ns".into(),
            service: "ns/svc".into(),
            service_type: "NodePort".into(),
            port: "http 80/TCP".into(),
            protocol: Protocol::Tcp,
            ready_endpoints,
            path: RoutePath::Nodeport(Nodes {
                node_port,
                ready: targets.len(),
                targets,
            }),
        }
    }
}

/// Resolves one forward against the cluster, or names the first thing in the way.
pub fn resolve(spec: &ForwardSpec, cluster: &ClusterSpec, world: &World) -> Result<Route, Cause> {
    let ns = spec.namespace.as_str();
    if !world.namespaces.iter().any(|n| n.metadata.name.as_deref() == Some(ns)) {
        return Err(
            Cause::new(CauseId::NamespaceMissing, format!("namespace {ns} does not exist")).with_fix(format!(
                "install the release that creates it, or correct `namespace` of forward `{}`",
                spec.name
            )),
        );
    }
    if spec.target.is_pods() {
        return resolve_pods(spec, world);
    }
    let service = find_service(spec, world)?;
    let name = format!("{ns}/{}", service.metadata.name.as_deref().unwrap_or_default());
    let svc_spec = service.spec.as_ref();
    let service_type = svc_spec
        .and_then(|s| s.type_.clone())
        .unwrap_or_else(|| "ClusterIP".into());
    if spec.mode == Mode::Nodeport && service_type != "NodePort" && service_type != "LoadBalancer" {
        return Err(Cause::new(
            CauseId::WrongServiceType,
            format!("service {name} is of type {service_type}, which has no nodePort"),
        )
        .with_fix("set `type: NodePort` for this service in the Helm values and upgrade the release, or use `mode = \"tunnel\"`"));
    }
    let ports = svc_spec.and_then(|s| s.ports.as_deref()).unwrap_or_default();
    let port = find_port(spec.service_port.as_ref(), ports).ok_or_else(|| {
        let wanted = spec
            .service_port
            .as_ref()
            .map_or("any port".to_string(), |p| format!("port `{p}`"));
        Cause::new(
            CauseId::PortNotFound,
            format!("service {name} has no {wanted}; it has: {}", list_ports(ports)),
        )
        .with_fix(format!("set `service_port` of forward `{}` to one of those", spec.name))
    })?;
    let service_name = service.metadata.name.as_deref().unwrap_or_default();
    let base = Route {
        namespace: ns.to_string(),
        service: name.clone(),
        service_type: service_type.clone(),
        port: describe_port(port),
        protocol: Protocol::of(port),
        ready_endpoints: 0,
        path: RoutePath::Tunnel(Vec::new()),
    };
    if spec.mode == Mode::Watch {
        // Whatever the cluster maps to the port (a nodePort, a LoadBalancer, an ingress), the
        // service needs ready pods behind it.
        let pods = ready_pods(ns, service_name, port, world);
        return Ok(Route {
            ready_endpoints: pods.len(),
            path: RoutePath::Host(SocketAddr::new(spec.bind, spec.local_port)),
            ..base
        });
    }
    if spec.mode == Mode::Tunnel {
        let pods = ready_pods(ns, service_name, port, world);
        return Ok(Route {
            ready_endpoints: pods.len(),
            path: RoutePath::Tunnel(pods),
            ..base
        });
    }
    if spec.mode == Mode::Auto {
        // Both candidates; the forward picks one by whether a node answers (`Route::choose`).
        let pods = ready_pods(ns, service_name, port, world);
        let nodes = port
            .node_port
            .and_then(|p| u16::try_from(p).ok())
            .filter(|_| service_type != "ClusterIP")
            .map(|node_port| {
                let (targets, ready) = node_targets(cluster, world).unwrap_or_default();
                Nodes {
                    node_port,
                    targets,
                    ready,
                }
            });
        return Ok(Route {
            ready_endpoints: pods.len(),
            path: RoutePath::Auto { nodes, pods },
            ..base
        });
    }
    let node_port = port.node_port.and_then(|p| u16::try_from(p).ok()).ok_or_else(|| {
        Cause::new(
            CauseId::WrongServiceType,
            format!(
                "port {} of service {name} ({service_type}) has no nodePort",
                describe_port(port)
            ),
        )
        .with_fix("set `type: NodePort` (or allocateLoadBalancerNodePorts: true) in the Helm values")
    })?;
    let (targets, ready) = node_targets(cluster, world)?;
    Ok(Route {
        ready_endpoints: ready_endpoints(ns, service_name, world),
        path: RoutePath::Nodeport(Nodes {
            node_port,
            targets,
            ready,
        }),
        ..base
    })
}

/// A forward to pods (`pods = {…}`, `pod = "…"`): a tunnel to each ready one, on the port
/// asked for (a container port's name or any number), else the first container port.
fn resolve_pods(spec: &ForwardSpec, world: &World) -> Result<Route, Cause> {
    let ns = spec.namespace.as_str();
    let matching: Vec<&Pod> = world
        .pods
        .iter()
        .map(|p| p.as_ref())
        .filter(|p| p.metadata.namespace.as_deref() == Some(ns))
        .filter(|p| match &spec.target {
            ServiceTarget::Pods(selector) => {
                let labels = p.metadata.labels.as_ref();
                selector.iter().all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
            }
            ServiceTarget::Pod(name) => p.metadata.name.as_deref() == Some(name),
            _ => false,
        })
        .collect();
    let what = format!("{ns}/{}", spec.target);
    if matching.is_empty() {
        let listing = match &spec.target {
            ServiceTarget::Pods(selector) => {
                format!("kubectl get pods -n {ns} -l {}", crate::config::labels_text(selector))
            }
            _ => format!("kubectl get pods -n {ns}"),
        };
        return Err(
            Cause::new(CauseId::PodMissing, format!("no pod matches {what}")).with_fix(format!(
                "check `{listing}`; install the release, or correct forward `{}`",
                spec.name
            )),
        );
    }
    // The port each pod is reached on: by name from its containers, a number as given.
    let port_of = |pod: &Pod| -> Option<(u16, Option<String>)> {
        let ports = pod
            .spec
            .iter()
            .flat_map(|s| &s.containers)
            .flat_map(|c| c.ports.iter().flatten());
        let mut ports = ports.filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP");
        match &spec.service_port {
            Some(PortRef::Number(n)) => Some((*n, None)),
            Some(PortRef::Name(name)) => ports
                .find(|p| p.name.as_deref() == Some(name))
                .and_then(|p| Some((u16::try_from(p.container_port).ok()?, p.name.clone()))),
            None => ports
                .next()
                .and_then(|p| Some((u16::try_from(p.container_port).ok()?, p.name.clone()))),
        }
    };
    let Some((number, port_name)) = matching.iter().find_map(|p| port_of(p)) else {
        let wanted = spec
            .service_port
            .as_ref()
            .map_or("a container port".to_string(), |p| format!("a container port `{p}`"));
        return Err(
            Cause::new(CauseId::PortNotFound, format!("no pod of {what} declares {wanted}")).with_fix(format!(
                "set `service_port` of forward `{}` to a port number",
                spec.name
            )),
        );
    };
    let mut pods: Vec<PodTarget> = matching
        .iter()
        .filter(|p| pod_ready(p))
        .filter_map(|p| {
            Some(PodTarget {
                name: p.metadata.name.clone()?,
                port: port_of(p)?.0,
                node: p.spec.as_ref().and_then(|s| s.node_name.clone()),
            })
        })
        .collect();
    pods.sort_by(|a, b| a.name.cmp(&b.name));
    let port = ServicePort {
        name: port_name,
        port: i32::from(number),
        ..ServicePort::default()
    };
    Ok(Route {
        namespace: ns.to_string(),
        service: what,
        service_type: "Pod".into(),
        port: describe_port(&port),
        protocol: Protocol::of(&port),
        ready_endpoints: pods.len(),
        path: RoutePath::Tunnel(pods),
    })
}

/// Running, Ready and not being deleted: what the endpoint controller would count as ready.
fn pod_ready(pod: &Pod) -> bool {
    let status = pod.status.as_ref();
    pod.metadata.deletion_timestamp.is_none()
        && status.and_then(|s| s.phase.as_deref()) == Some("Running")
        && status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The ready pods behind a service port, from its EndpointSlices: each pod with the port number
/// the endpoint controller resolved for that service port (named targetPorts included).
fn ready_pods(ns: &str, service: &str, port: &ServicePort, world: &World) -> Vec<PodTarget> {
    let wanted = port.name.as_deref().unwrap_or_default();
    let mut pods: Vec<PodTarget> = Vec::new();
    for slice in slices_of(ns, service, world) {
        let number = slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref().unwrap_or_default() == wanted);
        let Some(number) = number.and_then(|p| p.port).and_then(|p| u16::try_from(p).ok()) else {
            continue;
        };
        for endpoint in &slice.endpoints {
            let ready = endpoint.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            let pod = endpoint
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"));
            if let Some(name) = pod.and_then(|r| r.name.clone()).filter(|_| ready)
                && !pods.iter().any(|p| p.name == name)
            {
                pods.push(PodTarget {
                    name,
                    port: number,
                    node: endpoint.node_name.clone(),
                });
            }
        }
    }
    pods.sort_by(|a, b| a.name.cmp(&b.name));
    pods
}

fn slices_of<'w>(ns: &'w str, service: &'w str, world: &'w World) -> impl Iterator<Item = &'w EndpointSlice> + 'w {
    world.endpoint_slices.iter().map(|s| s.as_ref()).filter(move |slice| {
        let labels = slice.metadata.labels.as_ref();
        slice.metadata.namespace.as_deref() == Some(ns)
            && labels.and_then(|l| l.get(SERVICE_NAME_LABEL)).map(String::as_str) == Some(service)
    })
}

fn find_service<'w>(spec: &ForwardSpec, world: &'w World) -> Result<&'w Service, Cause> {
    let ns = spec.namespace.as_str();
    let in_ns = world
        .services
        .iter()
        .filter(|s| s.metadata.namespace.as_deref() == Some(ns));
    let found = match &spec.target {
        ServiceTarget::Name(name) => in_ns.into_iter().find(|s| s.metadata.name.as_deref() == Some(name)),
        ServiceTarget::Pods(_) | ServiceTarget::Pod(_) => None,
        ServiceTarget::Selector(selector) => in_ns
            .filter(|s| {
                let labels = s.metadata.labels.as_ref();
                selector.iter().all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
            })
            .min_by(|a, b| a.metadata.name.cmp(&b.metadata.name)),
    };
    found.map(|s| s.as_ref()).ok_or_else(|| {
        let what = match &spec.target {
            ServiceTarget::Name(name) => format!("service {ns}/{name} does not exist"),
            other => format!("no service in namespace {ns} matches {other}"),
        };
        Cause::new(CauseId::ServiceMissing, what).with_fix(format!(
            "check `kubectl get svc -n {ns}`; install the release, or correct forward `{}`",
            spec.name
        ))
    })
}

fn find_port<'s>(wanted: Option<&PortRef>, ports: &'s [ServicePort]) -> Option<&'s ServicePort> {
    match wanted {
        None => ports.first(),
        Some(PortRef::Name(name)) => ports.iter().find(|p| p.name.as_deref() == Some(name)),
        Some(PortRef::Number(n)) => ports.iter().find(|p| p.port == i32::from(*n)),
    }
}

fn describe_port(port: &ServicePort) -> String {
    let protocol = port.protocol.as_deref().unwrap_or("TCP");
    match &port.name {
        Some(name) if !name.is_empty() => format!("{name} {}/{protocol}", port.port),
        _ => format!("{}/{protocol}", port.port),
    }
}

fn list_ports(ports: &[ServicePort]) -> String {
    if ports.is_empty() {
        return "no ports".into();
    }
    ports.iter().map(describe_port).collect::<Vec<_>>().join(", ")
}

/// The nodes to try, Ready ones first, and how many are Ready. NotReady nodes stay as a
/// fallback: kube-proxy keeps serving on them, and a cluster waking from a laptop's sleep
/// reports its nodes NotReady for half a minute while traffic would flow.
fn node_targets(cluster: &ClusterSpec, world: &World) -> Result<(Vec<NodeTarget>, usize), Cause> {
    let mut nodes: Vec<&Node> = match &cluster.node {
        Some(wanted) => {
            let node = world.nodes.iter().find(|n| n.metadata.name.as_deref() == Some(wanted));
            let node = node.ok_or_else(|| {
                Cause::new(CauseId::NodeUnreachable, format!("node {wanted} does not exist"))
                    .with_fix("correct `cluster.node` (see `kubectl get nodes`), or remove it to use every Ready node")
            })?;
            vec![node.as_ref()]
        }
        None => world.nodes.iter().map(|n| n.as_ref()).collect(),
    };
    // Ready first; then workers: on kind they carry the application traffic; then by name.
    nodes.sort_by_key(|n| (!is_ready(n), is_control_plane(n), n.metadata.name.clone()));
    let ready = nodes.iter().filter(|n| is_ready(n)).count();
    let wanted_type = match cluster.node_address {
        NodeAddressType::InternalIp => "InternalIP",
        NodeAddressType::Hostname => "Hostname",
    };
    let targets: Vec<NodeTarget> = nodes
        .iter()
        .filter_map(|node| {
            let addresses = node.status.as_ref()?.addresses.as_ref()?;
            let address = addresses.iter().find(|a| a.type_ == wanted_type)?;
            let host = match address.address.parse::<IpAddr>() {
                Ok(ip) => Host::Ip(ip),
                Err(_) => Host::Name(address.address.clone()),
            };
            Some(NodeTarget {
                node: node.metadata.name.clone().unwrap_or_default(),
                host,
            })
        })
        .collect();
    if targets.is_empty() {
        return Err(Cause::new(
            CauseId::NodeUnreachable,
            format!("no node has an {wanted_type} address"),
        )
        .with_fix("check `kubectl get nodes -o wide`; is the cluster's Docker container running?"));
    }
    Ok((targets, ready))
}

fn is_ready(node: &Node) -> bool {
    let conditions = node.status.as_ref().and_then(|s| s.conditions.as_ref());
    conditions.is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn is_control_plane(node: &Node) -> bool {
    node.metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(CONTROL_PLANE_LABEL))
}

/// Ready endpoints across the service's EndpointSlices (an unset `ready` condition means ready).
fn ready_endpoints(ns: &str, service: &str, world: &World) -> usize {
    let mut ready = BTreeSet::new();
    for slice in slices_of(ns, service, world) {
        for endpoint in &slice.endpoints {
            let is_ready = endpoint.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            if is_ready && let Some(address) = endpoint.addresses.first() {
                let target = endpoint.target_ref.as_ref().and_then(|r| r.name.clone());
                ready.insert((address.clone(), target));
            }
        }
    }
    ready.len()
}

#[cfg(test)]
mod tests;
