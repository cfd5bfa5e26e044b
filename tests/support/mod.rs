//! Test support: a fake kind cluster (HTTPS Kubernetes API with real watch streams and a
//! simulated kube-proxy on 127.0.0.0/8) and backends that stand in for pods.
//!
//! Map: `cluster` (FakeCluster, faults, kubeconfig, namespaces, nodes), `services`
//! (services, node ports, endpoints), `pods` (Pod objects), `portforward` (the pods'
//! portforward subresource and its faults), `proxy` (kube-proxy), `api` and `watch` (the HTTP
//! API), `store` (objects, resourceVersions, history), `selector`, `pki`, `kubeconfig`,
//! `backend`, `openchoreo` (the quick-start cluster).
#![allow(dead_code)]

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

// Each test binary uses a subset of these shortcuts.
#[allow(unused_imports)]
pub use backend::Backend;
#[allow(unused_imports)]
pub use cluster::FakeCluster;
#[allow(unused_imports)]
pub use openchoreo::OpenChoreo;
#[allow(unused_imports)]
pub use services::{port, service};
