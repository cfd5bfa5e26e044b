//! Test support: a fake kind cluster (HTTPS Kubernetes API with real watch streams and a
//! simulated kube-proxy on 127.0.0.0/8) and backends that stand in for pods.
//!
//! Map: `cluster` (FakeCluster, faults, kubeconfig, namespaces, nodes), `services`
//! (services, node ports, endpoints), `pods` (Pod objects), `portforward` (the pods'
//! portforward subresource and its faults), `proxy` (kube-proxy), `api` and `watch` (the HTTP
//! API), `store` (objects, resourceVersions, history), `selector`, `pki`, `kubeconfig`,
//! `backend`, `openchoreo` (the quick-start cluster).

pub mod api;
pub mod backend;
pub mod cluster;
pub mod kubeconfig;
pub mod openchoreo;
pub mod pki;
pub mod pods;
pub mod portforward;
pub mod porthole;
pub mod proxy;
pub mod selector;
pub mod services;
pub mod store;
pub mod watch;

pub use backend::Backend;
pub use cluster::FakeCluster;
pub use openchoreo::OpenChoreo;
pub use services::{port, service};
