//! The OpenChoreo / WSO2 agent-platform quick-start cluster (`openchoreo-local`): its
//! nodes, namespaces and NodePort/LoadBalancer services, each with a live backend.

use std::collections::{BTreeMap, HashMap};
use std::ops::Deref;

use super::backend::Backend;
use super::cluster::FakeCluster;
use super::services::{port, service};

/// One quick-start service: where it lives, its type and ports, and its backend.
pub struct QuickStartService {
    pub namespace: &'static str,
    pub name: &'static str,
    pub type_: &'static str,
    /// (port name, port), in spec order.
    pub ports: &'static [(&'static str, i32)],
    pub labels: &'static [(&'static str, &'static str)],
    pub tls: bool,
}

pub const CLUSTER_NAME: &str = "openchoreo-local";
pub const CONTROL_PLANE: &str = "openchoreo-local-control-plane";
pub const WORKER: &str = "openchoreo-local-worker";
pub const NAMESPACES: &[&str] = &["wso2-amp", "openchoreo-observability-plane", "openchoreo-data-plane"];

pub const SERVICES: &[QuickStartService] = &[
    QuickStartService {
        namespace: "wso2-amp",
        name: "amp-console",
        type_: "NodePort",
        ports: &[("http", 3000)],
        labels: &[],
        tls: false,
    },
    QuickStartService {
        namespace: "wso2-amp",
        name: "amp-api",
        type_: "NodePort",
        ports: &[("http", 8080)],
        labels: &[],
        tls: false,
    },
    QuickStartService {
        namespace: "openchoreo-observability-plane",
        name: "amp-traces-observer",
        type_: "NodePort",
        ports: &[("http", 9098)],
        labels: &[],
        tls: false,
    },
    QuickStartService {
        namespace: "openchoreo-observability-plane",
        name: "opentelemetry-collector",
        type_: "NodePort",
        ports: &[("otlp-http", 4318), ("otlp-grpc", 4317)],
        labels: &[],
        tls: false,
    },
    QuickStartService {
        namespace: "openchoreo-data-plane",
        name: "gateway-external",
        type_: "LoadBalancer",
        ports: &[("https", 443), ("http", 80)],
        labels: &[("gateway.envoyproxy.io/owning-gateway-name", "gateway-external")],
        tls: true,
    },
];

/// The quick-start cluster plus the backends of its services, which live as long as it.
pub struct OpenChoreo {
    pub cluster: FakeCluster,
    /// Backends by service name; HTTP ones answer with the service name.
    pub backends: HashMap<&'static str, Backend>,
}

impl Deref for OpenChoreo {
    type Target = FakeCluster;

    fn deref(&self) -> &FakeCluster {
        &self.cluster
    }
}

impl OpenChoreo {
    /// The quick-start service called `name`.
    pub fn spec(name: &str) -> Option<&'static QuickStartService> {
        SERVICES.iter().find(|s| s.name == name)
    }

    /// The pod name backing a quick-start service.
    pub fn pod(service: &str) -> String {
        format!("{service}-0")
    }

    /// Applies a quick-start service as the installer created it (a fresh object, so new
    /// node ports are allocated if it was deleted).
    pub fn apply(&self, spec: &QuickStartService) {
        self.cluster.apply_service(quick_start_service(spec));
    }
}

impl FakeCluster {
    /// Starts the OpenChoreo quick-start cluster with every service ready and serving.
    pub async fn openchoreo() -> OpenChoreo {
        let cluster = FakeCluster::start(CLUSTER_NAME).await;
        cluster.add_node(CONTROL_PLANE);
        cluster.add_node(WORKER);
        for ns in NAMESPACES {
            cluster.add_namespace(ns);
        }
        let mut backends = HashMap::new();
        for spec in SERVICES {
            let backend = if spec.tls {
                Backend::tls().await
            } else {
                Backend::http(spec.name).await
            };
            cluster.apply_service(quick_start_service(spec));
            let pod = OpenChoreo::pod(spec.name);
            cluster.add_endpoint(spec.namespace, spec.name, &pod, backend.addr(), true);
            backends.insert(spec.name, backend);
        }
        OpenChoreo { cluster, backends }
    }
}

fn quick_start_service(spec: &QuickStartService) -> k8s_openapi::api::core::v1::Service {
    let ports = spec.ports.iter().map(|(name, p)| port(name, *p)).collect();
    let mut svc = service(spec.namespace, spec.name, spec.type_, ports);
    if !spec.labels.is_empty() {
        let labels: BTreeMap<String, String> = spec
            .labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        svc.metadata.labels = Some(labels);
    }
    svc
}
