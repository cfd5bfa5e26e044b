//! Services and their endpoints on a `FakeCluster`: what the API server fills in on
//! apply (cluster IP, node ports, defaults), and the endpointslice controller's part:
//! one EndpointSlice per registered pod while its service exists.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use k8s_openapi::api::core::v1::{
    LoadBalancerStatus, Node, ObjectReference, Service, ServicePort, ServiceSpec, ServiceStatus,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::backend::Backend;
use super::cluster::{FakeCluster, Pod, State, from_value, internal_ip, to_value, used_node_ports};
use super::pods::sync_pod;
use super::store::Kind;

pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";

impl FakeCluster {
    /// Creates or replaces a service (ADDED or MODIFIED), filling in what the API server
    /// would: cluster IP, protocol, targetPort, and node ports for NodePort and LoadBalancer
    /// services (kept from the old object when unset, dropped on a change to ClusterIP).
    /// Panics if the namespace does not exist, where the real server answers 404.
    pub fn apply_service(&self, service: Service) -> Service {
        self.mutate(|state| {
            let mut service = service;
            let namespace = service
                .metadata
                .namespace
                .get_or_insert_with(|| "default".to_string())
                .clone();
            let name = service.metadata.name.clone().expect("service has a name");
            assert!(
                state.store.get(Kind::Namespace, "", &namespace).is_some(),
                "namespaces \"{namespace}\" not found"
            );
            let old: Option<Service> = state.store.get(Kind::Service, &namespace, &name).map(from_value);
            fill_defaults(state, &mut service, old.as_ref());
            let stored = state.store.put(Kind::Service, to_value(&service));
            state.node_ports = used_node_ports(&state.store);
            sync_slices(state, &namespace, &name);
            from_value(&stored)
        })
    }

    /// Deletes a service; the endpointslice controller then deletes its slices.
    pub fn delete_service(&self, namespace: &str, name: &str) {
        self.mutate(|state| {
            state.store.delete(Kind::Service, namespace, name);
            state.node_ports = used_node_ports(&state.store);
            sync_slices(state, namespace, name);
        });
    }

    /// The stored service, if any.
    pub fn service(&self, namespace: &str, name: &str) -> Option<Service> {
        let state = self.shared().lock();
        state.store.get(Kind::Service, namespace, name).map(from_value)
    }

    pub fn node_port(&self, namespace: &str, name: &str, port_index: usize) -> Option<u16> {
        let service = self.service(namespace, name)?;
        let port = service.spec?.ports?.get(port_index)?.node_port?;
        u16::try_from(port).ok()
    }

    /// Gives one service port a new node port (as `kubectl edit` would) and returns it.
    pub fn change_node_port(&self, namespace: &str, name: &str, port_index: usize) -> u16 {
        let mut service = self
            .service(namespace, name)
            .unwrap_or_else(|| panic!("service {namespace}/{name} not found"));
        let new_port = self.mutate(allocate_node_port);
        let ports = service.spec.as_mut().and_then(|s| s.ports.as_mut());
        let port = ports
            .and_then(|p| p.get_mut(port_index))
            .unwrap_or_else(|| panic!("service {namespace}/{name} has no port {port_index}"));
        port.node_port = Some(i32::from(new_port));
        self.apply_service(service);
        new_port
    }

    // ---- endpoints (pods) ----

    /// Registers a Running pod backing `service` (a Pod object, see `pods.rs`); while the
    /// service exists it has an EndpointSlice `<service>-<pod>` with one endpoint at `backend`.
    pub fn add_endpoint(&self, namespace: &str, service: &str, pod: &str, backend: SocketAddr, ready: bool) {
        self.mutate(|state| {
            let pod_state = Pod {
                backend,
                ready,
                ..self.new_pod(state, namespace, service)
            };
            state.pods.insert((namespace.to_string(), pod.to_string()), pod_state);
            sync_pod(state, namespace, pod);
            sync_slices(state, namespace, service);
        });
    }

    pub fn set_endpoint_ready(&self, namespace: &str, pod: &str, ready: bool) {
        self.update_pod(namespace, pod, |p| p.ready = ready);
    }

    /// Points the pod's endpoint at a new address (a restarted pod's new port).
    pub fn set_endpoint_backend(&self, namespace: &str, pod: &str, backend: SocketAddr) {
        self.update_pod(namespace, pod, |p| p.backend = backend);
    }

    pub fn remove_endpoint(&self, namespace: &str, pod: &str) {
        self.mutate(|state| {
            if let Some(removed) = state.pods.remove(&(namespace.to_string(), pod.to_string())) {
                sync_pod(state, namespace, pod);
                sync_slices(state, namespace, &removed.service);
            }
        });
    }

    /// A pod restart, one watch event per step: the endpoint turns unready, the backend
    /// restarts on a new port, the slice moves to that port, and the endpoint turns ready.
    pub async fn restart_pod(&self, namespace: &str, pod: &str, backend: &mut Backend) {
        self.set_endpoint_ready(namespace, pod, false);
        backend.restart().await;
        self.set_endpoint_backend(namespace, pod, backend.addr());
        self.set_endpoint_ready(namespace, pod, true);
    }

    pub(super) fn update_pod(&self, namespace: &str, pod: &str, edit: impl FnOnce(&mut Pod)) {
        self.mutate(|state| {
            let key = (namespace.to_string(), pod.to_string());
            let entry = state
                .pods
                .get_mut(&key)
                .unwrap_or_else(|| panic!("pod {namespace}/{pod} not found"));
            edit(entry);
            let service = entry.service.clone();
            sync_pod(state, namespace, pod);
            sync_slices(state, namespace, &service);
        });
    }

    pub(super) fn add_kubernetes_service(&self) {
        let port = ServicePort {
            name: Some("https".to_string()),
            port: 443,
            target_port: Some(IntOrString::Int(6443)),
            ..Default::default()
        };
        self.apply_service(service("default", "kubernetes", "ClusterIP", vec![port]));
    }
}

/// A service of `type_` with the given ports, as a test would write it before applying.
pub fn service(namespace: &str, name: &str, type_: &str, ports: Vec<ServicePort>) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            type_: Some(type_.to_string()),
            selector: Some(BTreeMap::from([(
                "app.kubernetes.io/name".to_string(),
                name.to_string(),
            )])),
            ports: Some(ports),
            ..Default::default()
        }),
        status: None,
    }
}

/// A named TCP service port whose targetPort is the pods' container port of the same name.
pub fn port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.to_string()),
        port,
        target_port: Some(IntOrString::String(name.to_string())),
        ..Default::default()
    }
}

fn needs_node_ports(service: &Service) -> bool {
    let type_ = service.spec.as_ref().and_then(|s| s.type_.as_deref());
    matches!(type_, Some("NodePort" | "LoadBalancer"))
}

fn fill_defaults(state: &mut State, service: &mut Service, old: Option<&Service>) {
    let with_node_ports = needs_node_ports(service);
    let old_spec = old.and_then(|o| o.spec.clone()).unwrap_or_default();
    let spec = service.spec.get_or_insert_default();
    let type_ = spec.type_.get_or_insert_with(|| "ClusterIP".to_string()).clone();
    let cluster_ip = spec
        .cluster_ip
        .clone()
        .or(old_spec.cluster_ip.clone())
        .unwrap_or_else(|| {
            let n = state.next_cluster_ip;
            state.next_cluster_ip += 1;
            Ipv4Addr::new(10, 96, (n >> 8) as u8, n as u8).to_string()
        });
    spec.cluster_ip = Some(cluster_ip.clone());
    spec.cluster_ips = Some(vec![cluster_ip]);
    spec.ip_families.get_or_insert_with(|| vec!["IPv4".to_string()]);
    spec.ip_family_policy.get_or_insert_with(|| "SingleStack".to_string());
    spec.session_affinity.get_or_insert_with(|| "None".to_string());
    spec.internal_traffic_policy
        .get_or_insert_with(|| "Cluster".to_string());
    if with_node_ports {
        spec.external_traffic_policy
            .get_or_insert_with(|| "Cluster".to_string());
    } else {
        spec.external_traffic_policy = None;
    }
    if type_ == "LoadBalancer" {
        spec.allocate_load_balancer_node_ports.get_or_insert(true);
    }
    let old_ports = old_spec.ports.unwrap_or_default();
    let mut ports = spec.ports.take().unwrap_or_default();
    for port in &mut ports {
        port.protocol.get_or_insert_with(|| "TCP".to_string());
        port.target_port.get_or_insert(IntOrString::Int(port.port));
        if !with_node_ports {
            port.node_port = None;
            continue;
        }
        if port.node_port.is_none() {
            port.node_port = old_ports
                .iter()
                .find(|o| o.port == port.port && o.protocol == port.protocol)
                .and_then(|o| o.node_port);
        }
        if port.node_port.is_none() {
            // Ports of the old object are still counted as used; that only costs a number.
            port.node_port = Some(i32::from(allocate_node_port(state)));
        }
    }
    spec.ports = Some(ports);
    // kind has no load-balancer controller: every service shows an empty loadBalancer status.
    service.status = Some(ServiceStatus {
        load_balancer: Some(LoadBalancerStatus::default()),
        ..Default::default()
    });
}

/// A node port no other service of this cluster holds, free on the first node's address
/// (127.0.0.1 before any node exists): the kernel picks it, so tests never fix a port.
fn allocate_node_port(state: &mut State) -> u16 {
    let first_node_ip = state
        .store
        .list(Kind::Node, None)
        .iter()
        .find_map(|n| internal_ip(&from_value::<Node>(n)))
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    loop {
        let probe = std::net::TcpListener::bind((first_node_ip, 0)).expect("bind a node port");
        let port = probe.local_addr().expect("node port address").port();
        if state.node_ports.insert(port) {
            return port;
        }
    }
}

/// The endpointslice controller's reconcile for one service: a slice per pod while the
/// service exists, none once it is gone. Unchanged slices are left alone (no event).
fn sync_slices(state: &mut State, namespace: &str, service_name: &str) {
    let service: Option<Service> = state.store.get(Kind::Service, namespace, service_name).map(from_value);
    let mut desired = BTreeMap::new();
    if let Some(service) = &service {
        for ((ns, pod_name), pod) in &state.pods {
            if ns == namespace && pod.service == service_name {
                let slice = slice(service, pod_name, pod);
                desired.insert(slice.metadata.name.clone().unwrap_or_default(), slice);
            }
        }
    }
    for existing in state.store.list(Kind::EndpointSlice, Some(namespace)) {
        let labels = &existing["metadata"]["labels"];
        let ours = labels[SERVICE_NAME_LABEL] == service_name && labels[MANAGED_BY_LABEL] == MANAGED_BY;
        let name = existing["metadata"]["name"].as_str().unwrap_or_default();
        if ours && !desired.contains_key(name) {
            state.store.delete(Kind::EndpointSlice, namespace, name);
        }
    }
    for slice in desired.values() {
        let name = slice.metadata.name.as_deref().unwrap_or_default();
        if state.store.get(Kind::EndpointSlice, namespace, name).is_none() {
            // The controller's sequence for a new pod: the slice first with no endpoints, then
            // the pod's address not ready, then (once its readiness probe passes) ready.
            let mut staged = slice.clone();
            let endpoints = std::mem::take(&mut staged.endpoints);
            state.store.put(Kind::EndpointSlice, to_value(&staged));
            if endpoints
                .iter()
                .any(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
            {
                staged.endpoints = endpoints
                    .into_iter()
                    .map(|mut e| {
                        e.conditions = Some(EndpointConditions {
                            ready: Some(false),
                            serving: Some(false),
                            terminating: Some(false),
                        });
                        e
                    })
                    .collect();
                state.store.put(Kind::EndpointSlice, to_value(&staged));
            }
        }
        state.store.put(Kind::EndpointSlice, to_value(slice));
    }
}

fn slice(service: &Service, pod_name: &str, pod: &Pod) -> EndpointSlice {
    let meta = &service.metadata;
    let service_name = meta.name.clone().unwrap_or_default();
    let namespace = meta.namespace.clone().unwrap_or_default();
    // The controller copies the service's labels onto its slices.
    let mut labels = meta.labels.clone().unwrap_or_default();
    labels.insert(SERVICE_NAME_LABEL.to_string(), service_name.clone());
    labels.insert(MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string());
    let first_port_name = service
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .and_then(|p| p.first())
        .and_then(|p| p.name.clone())
        .unwrap_or_default();
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(format!("{service_name}-{pod_name}")),
            generate_name: Some(format!("{service_name}-")),
            namespace: Some(namespace.clone()),
            labels: Some(labels),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".to_string(),
                kind: "Service".to_string(),
                name: service_name,
                uid: meta.uid.clone().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        },
        address_type: "IPv4".to_string(),
        endpoints: vec![Endpoint {
            addresses: vec![pod.backend.ip().to_string()],
            conditions: Some(EndpointConditions {
                ready: Some(pod.ready),
                serving: Some(pod.ready),
                terminating: Some(false),
            }),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".to_string()),
                name: Some(pod_name.to_string()),
                namespace: Some(namespace),
                ..Default::default()
            }),
            node_name: pod.node.clone(),
            ..Default::default()
        }],
        ports: Some(vec![EndpointPort {
            name: Some(first_port_name),
            port: Some(i32::from(pod.backend.port())),
            protocol: Some("TCP".to_string()),
            ..Default::default()
        }]),
    }
}
