//! Pod objects for the pods registered as endpoints: what the scheduler and the kubelet
//! report for each (node, phase, conditions, container port), stored beside their slices.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, Pod as PodObject, PodCondition, PodIP, PodSpec, PodStatus, Service,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::cluster::{FakeCluster, Pod, State, from_value, now, to_value};
use super::store::{self, Kind};

/// The image every fake pod runs; only its name shows.
const IMAGE: &str = "registry.k8s.io/e2e-test-images/agnhost:2.53";

impl FakeCluster {
    /// The stored Pod object, if any.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<PodObject> {
        let state = self.shared().lock();
        state.store.get(Kind::Pod, namespace, name).map(from_value)
    }

    /// Moves the pod to a phase: `Pending` (unscheduled, no node), `Running`, `Succeeded` or
    /// `Failed` (containers terminated). The endpoint follows: only a Running pod can be ready.
    pub fn set_pod_phase(&self, namespace: &str, pod: &str, phase: &str) {
        assert!(
            matches!(phase, "Pending" | "Running" | "Succeeded" | "Failed"),
            "unknown pod phase {phase}"
        );
        let node = self.pod_node();
        self.update_pod(namespace, pod, |p| {
            p.phase = phase.to_string();
            match phase {
                "Pending" => p.node = None,
                _ => {
                    p.node.get_or_insert(node);
                }
            }
            if phase != "Running" {
                p.ready = false;
            }
        });
    }

    /// A pod as the scheduler and a Deployment would create it for `service`: the service's
    /// selector as labels, its first port's (target) name as the container port's name.
    pub(super) fn new_pod(&self, state: &State, namespace: &str, service: &str) -> Pod {
        let service_object: Option<Service> = state.store.get(Kind::Service, namespace, service).map(from_value);
        let spec = service_object.and_then(|s| s.spec);
        let labels = spec
            .as_ref()
            .and_then(|s| s.selector.clone())
            .unwrap_or_else(|| BTreeMap::from([("app.kubernetes.io/name".to_string(), service.to_string())]));
        let first = spec.and_then(|s| s.ports).and_then(|p| p.into_iter().next());
        let port_name = first.and_then(|p| match p.target_port {
            Some(IntOrString::String(name)) => Some(name),
            _ => p.name,
        });
        Pod {
            service: service.to_string(),
            backend: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            ready: false,
            labels,
            port_name,
            node: Some(node_for(state, self.name())),
            phase: "Running".to_string(),
            sandbox: format!("{:016x}{:016x}{:016x}{:016x}", r(), r(), r(), r()),
        }
    }

    fn pod_node(&self) -> String {
        node_for(&self.shared().lock(), self.name())
    }
}

fn r() -> u64 {
    store::random_u64()
}

/// The first worker (kind's scheduler keeps workloads off the tainted control plane), else
/// the control plane, which every kind cluster has even when the fake registered no node.
fn node_for(state: &State, cluster: &str) -> String {
    let names: Vec<String> = state
        .store
        .list(Kind::Node, None)
        .iter()
        .filter_map(|n| n["metadata"]["name"].as_str().map(str::to_string))
        .collect();
    names
        .iter()
        .find(|n| !n.ends_with("-control-plane"))
        .or(names.first())
        .cloned()
        .unwrap_or_else(|| format!("{cluster}-control-plane"))
}

/// Stores the Pod object of a registered pod, or deletes it once the pod is gone.
/// An unchanged object is no write (no event), as for every other kind.
pub fn sync_pod(state: &mut State, namespace: &str, name: &str) {
    let key = (namespace.to_string(), name.to_string());
    match state.pods.get(&key) {
        Some(pod) => {
            let object = pod_object(state, namespace, name, pod);
            state.store.put(Kind::Pod, to_value(&object));
        }
        None => {
            state.store.delete(Kind::Pod, namespace, name);
        }
    }
}

fn pod_object(state: &State, namespace: &str, name: &str, pod: &Pod) -> PodObject {
    // Timestamps are kept from the stored object so that a rewrite of the same state is a no-op.
    let old: Option<PodObject> = state.store.get(Kind::Pod, namespace, name).map(from_value);
    let old_status = old.and_then(|o| o.status).unwrap_or_default();
    let start_time = old_status.start_time.clone().unwrap_or_else(now);
    let container_name = pod.service.clone();
    let container = Container {
        name: container_name.clone(),
        image: Some(IMAGE.to_string()),
        ports: Some(vec![ContainerPort {
            name: pod.port_name.clone(),
            container_port: i32::from(pod.backend.port()),
            protocol: Some("TCP".to_string()),
            ..Default::default()
        }]),
        ..Default::default()
    };
    let scheduled = pod.node.is_some();
    let running = pod.phase == "Running";
    let conditions = [
        ("PodReadyToStartContainers", scheduled),
        ("Initialized", scheduled),
        ("Ready", running && pod.ready),
        ("ContainersReady", running && pod.ready),
        ("PodScheduled", scheduled),
    ]
    .into_iter()
    .filter(|(type_, _)| scheduled || *type_ == "PodScheduled")
    .map(|(type_, ok)| condition(&old_status, type_, ok, pod, &container_name))
    .collect();
    let ip = pod.backend.ip().to_string();
    PodObject {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(pod.labels.clone()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![container],
            node_name: pod.node.clone(),
            restart_policy: Some("Always".to_string()),
            scheduler_name: Some("default-scheduler".to_string()),
            service_account_name: Some("default".to_string()),
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some(pod.phase.clone()),
            conditions: Some(conditions),
            pod_ip: scheduled.then(|| ip.clone()),
            pod_ips: scheduled.then(|| vec![PodIP { ip: ip.clone() }]),
            start_time: scheduled.then_some(start_time),
            container_statuses: scheduled.then(|| vec![container_status(pod, &container_name)]),
            qos_class: Some("BestEffort".to_string()),
            ..Default::default()
        }),
    }
}

fn condition(old: &PodStatus, type_: &str, ok: bool, pod: &Pod, container: &str) -> PodCondition {
    let status = if ok { "True" } else { "False" };
    let (reason, message) = match (type_, ok) {
        (_, true) => (None, None),
        ("PodScheduled", false) => (
            Some("Unschedulable".to_string()),
            Some("0/1 nodes are available: 1 node(s) had untolerated taint.".to_string()),
        ),
        ("Ready" | "ContainersReady", false) if pod.phase != "Running" => (Some("PodCompleted".to_string()), None),
        ("Ready" | "ContainersReady", false) => (
            Some("ContainersNotReady".to_string()),
            Some(format!("containers with unready status: [{container}]")),
        ),
        _ => (None, None),
    };
    // A condition keeps its transition time while its status stays.
    let previous = old.conditions.iter().flatten().find(|c| c.type_ == type_);
    let last_transition_time = match previous {
        Some(p) if p.status == status => p.last_transition_time.clone(),
        _ => Some(now()),
    };
    PodCondition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason,
        message,
        last_transition_time,
        ..Default::default()
    }
}

fn container_status(pod: &Pod, container: &str) -> ContainerStatus {
    let state = match pod.phase.as_str() {
        "Running" => ContainerState {
            running: Some(ContainerStateRunning { started_at: None }),
            ..Default::default()
        },
        "Pending" => ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some("ContainerCreating".to_string()),
                message: None,
            }),
            ..Default::default()
        },
        phase => ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: if phase == "Succeeded" { 0 } else { 1 },
                reason: Some(if phase == "Succeeded" { "Completed" } else { "Error" }.to_string()),
                ..Default::default()
            }),
            ..Default::default()
        },
    };
    ContainerStatus {
        name: container.to_string(),
        image: IMAGE.to_string(),
        image_id: String::new(),
        ready: pod.phase == "Running" && pod.ready,
        started: Some(pod.phase == "Running"),
        restart_count: 0,
        state: Some(state),
        ..Default::default()
    }
}
