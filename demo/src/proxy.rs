//! The simulated kube-proxy: a TCP listener on every node address at every node port of
//! every NodePort or LoadBalancer service that has a ready endpoint, relaying to those
//! endpoints in turn. Without a ready endpoint the port is closed, so a connect is refused,
//! as iptables kube-proxy's REJECT rule does. Reconciled synchronously on every change, or
//! after a lag a test sets.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;

use super::cluster::{Shared, State, from_value, internal_ip};
use super::services::SERVICE_NAME_LABEL;
use super::store::{Kind, Store};

const BACKEND_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A service by namespace and name.
type ServiceKey = (String, String);

/// The open node-port listeners, keyed by node address and port.
#[derive(Default)]
pub struct Proxy {
    listeners: BTreeMap<SocketAddr, Listener>,
    /// The node addresses do not answer from the host (Docker Desktop, Colima): no listeners.
    pub hidden: bool,
    /// How long after an API change the data plane follows it (a real kube-proxy programs a
    /// changed nodePort up to about a second later); zero: at once, before the control returns.
    pub lag: Duration,
}

struct Listener {
    service: ServiceKey,
    socket: Arc<TcpListener>,
    /// Stops the accept loop.
    stop: CancellationToken,
    /// Cuts the relayed connections, for when the node itself goes away.
    connections: CancellationToken,
}

impl Listener {
    fn close(self, cut_connections: bool) {
        // Shutting the socket down stops it listening at once (Linux), so a connect right
        // after the control returns is refused, not left to the accept task's exit.
        let _ = socket2::SockRef::from(self.socket.as_ref()).shutdown(std::net::Shutdown::Both);
        self.stop.cancel();
        if cut_connections {
            self.connections.cancel();
        }
    }
}

/// Brings the listeners in line with the store: opens what is missing, closes what is not wanted.
pub fn reconcile(shared: &Arc<Shared>, state: &mut State) {
    let desired = if state.proxy.hidden {
        BTreeMap::new()
    } else {
        desired(&state.store)
    };
    let node_ips: BTreeSet<IpAddr> = if state.proxy.hidden {
        BTreeSet::new()
    } else {
        desired_node_ips(&state.store)
    };
    let stale: Vec<SocketAddr> = state
        .proxy
        .listeners
        .iter()
        .filter(|(addr, l)| desired.get(*addr) != Some(&l.service))
        .map(|(addr, _)| *addr)
        .collect();
    for addr in stale {
        if let Some(listener) = state.proxy.listeners.remove(&addr) {
            listener.close(!node_ips.contains(&addr.ip()));
        }
    }
    for (addr, service) in desired {
        if state.proxy.listeners.contains_key(&addr) {
            continue;
        }
        match open(shared, addr, service.clone()) {
            Ok(listener) => {
                state.proxy.listeners.insert(addr, listener);
            }
            // macOS and the BSDs give loopback 127.0.0.1 alone: the nodes' addresses do not
            // answer there, as kind's nodes on Docker Desktop do not, and Porthole tunnels.
            Err(error) if error.kind() == std::io::ErrorKind::AddrNotAvailable => {
                static TOLD: std::sync::Once = std::sync::Once::new();
                TOLD.call_once(|| {
                    eprintln!(
                        "fake kube-proxy: node addresses such as {} are not on this machine's loopback \
                         (only Linux routes all of 127.0.0.0/8): node ports do not answer",
                        addr.ip()
                    )
                });
            }
            Err(error) => {
                eprintln!("fake kube-proxy: cannot listen on {addr} for {service:?}: {error}")
            }
        }
    }
}

fn open(shared: &Arc<Shared>, addr: SocketAddr, service: ServiceKey) -> std::io::Result<Listener> {
    let _runtime = shared.runtime.enter();
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // Earlier relayed connections may linger in TIME_WAIT on this port.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let socket = Arc::new(socket.listen(1024)?);
    let listener = Listener {
        service: service.clone(),
        socket: socket.clone(),
        stop: shared.shutdown.child_token(),
        connections: shared.shutdown.child_token(),
    };
    let task = accept_loop(
        shared.clone(),
        socket,
        service,
        listener.stop.clone(),
        listener.connections.clone(),
    );
    shared.runtime.spawn(task);
    Ok(listener)
}

async fn accept_loop(
    shared: Arc<Shared>,
    socket: Arc<TcpListener>,
    service: ServiceKey,
    stop: CancellationToken,
    connections: CancellationToken,
) {
    let turn = AtomicUsize::new(0);
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = socket.accept() => accepted,
        };
        let Ok((client, _)) = accepted else { return };
        let backends = ready_backends(&shared.lock().store, &service.0, &service.1);
        if backends.is_empty() {
            // Between the last endpoint going and the listener closing: REJECT, as iptables does.
            let _ = socket2::SockRef::from(&client).set_linger(Some(std::time::Duration::ZERO));
            continue;
        }
        let backend = backends[turn.fetch_add(1, Ordering::Relaxed) % backends.len()];
        tokio::spawn(relay(client, backend, connections.clone()));
    }
}

async fn relay(mut client: TcpStream, backend: SocketAddr, cut: CancellationToken) {
    let connect = tokio::time::timeout(BACKEND_CONNECT_TIMEOUT, TcpStream::connect(backend));
    // A pod that refuses: with iptables' DNAT the client itself would get the pod's reset, so
    // the client connection is reset too, not closed cleanly.
    let Ok(Ok(mut upstream)) = connect.await else {
        let _ = socket2::SockRef::from(&client).set_linger(Some(std::time::Duration::ZERO));
        return;
    };
    tokio::select! {
        _ = cut.cancelled() => {}
        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
    }
}

/// Node port listeners wanted now: every node address times every node port of every
/// NodePort or LoadBalancer service with at least one ready endpoint.
fn desired(store: &Store) -> BTreeMap<SocketAddr, ServiceKey> {
    let node_ips = desired_node_ips(store);
    let mut wanted = BTreeMap::new();
    for value in store.list(Kind::Service, None) {
        let service: Service = from_value(&value);
        let namespace = service.metadata.namespace.clone().unwrap_or_default();
        let name = service.metadata.name.clone().unwrap_or_default();
        let Some(spec) = service.spec else { continue };
        if !matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer")) {
            continue;
        }
        if ready_backends(store, &namespace, &name).is_empty() {
            continue;
        }
        let node_ports = spec.ports.iter().flatten().filter_map(|p| p.node_port);
        for port in node_ports.filter_map(|p| u16::try_from(p).ok()) {
            for ip in &node_ips {
                wanted.insert(SocketAddr::new(*ip, port), (namespace.clone(), name.clone()));
            }
        }
    }
    wanted
}

fn desired_node_ips(store: &Store) -> BTreeSet<IpAddr> {
    store
        .list(Kind::Node, None)
        .iter()
        .filter_map(|n| internal_ip(&from_value::<Node>(n)))
        .collect()
}

/// Ready endpoints of a service from its EndpointSlices, as kube-proxy reads them
/// (an endpoint whose ready condition is unset counts as ready).
pub fn ready_backends(store: &Store, namespace: &str, service: &str) -> Vec<SocketAddr> {
    let mut backends = Vec::new();
    for value in store.list(Kind::EndpointSlice, Some(namespace)) {
        if value["metadata"]["labels"][SERVICE_NAME_LABEL] != service {
            continue;
        }
        let slice: EndpointSlice = from_value(&value);
        let Some(port) = slice.ports.iter().flatten().find_map(|p| p.port) else {
            continue;
        };
        let Ok(port) = u16::try_from(port) else {
            continue;
        };
        for endpoint in &slice.endpoints {
            let ready = endpoint.conditions.as_ref().and_then(|c| c.ready);
            if ready == Some(false) {
                continue;
            }
            let ips = endpoint.addresses.iter().filter_map(|a| a.parse::<IpAddr>().ok());
            backends.extend(ips.take(1).map(|ip| SocketAddr::new(ip, port)));
        }
    }
    backends
}
