//! A stand-in kind cluster on loopback, faithful where Porthole looks: an HTTPS Kubernetes API
//! with real k8s-openapi objects and watch streams, the pods' port-forward subresource, a
//! simulated kube-proxy on node addresses in 127.0.0.0/8, and backends that stand in for pods.
//! `porthole demo` runs the OpenChoreo quick-start on it; Porthole's tests run everything on it.
//!
//! Map: `cluster` (FakeCluster, faults, kubeconfig, namespaces, nodes), `services`
//! (services, node ports, endpoints), `pods` (Pod objects), `portforward` (the pods'
//! portforward subresource and its faults), `proxy` (kube-proxy), `api` and `watch` (the HTTP
//! API), `store` (objects, resourceVersions, history), `selector`, `pki`, `kubeconfig`,
//! `backend`, `openchoreo` (the quick-start cluster), `console` (break-and-heal commands).

pub mod api;
pub mod backend;
pub mod cluster;
pub mod console;
pub mod kubeconfig;
pub mod openchoreo;
pub mod pki;
pub mod pods;
pub mod portforward;
pub mod proxy;
pub mod selector;
pub mod services;
pub mod store;
pub mod watch;
pub mod workloads;

pub use backend::Backend;
pub use cluster::FakeCluster;
pub use openchoreo::OpenChoreo;
pub use services::{port, service};
