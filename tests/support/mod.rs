//! Test support: the demo cluster (`porthole-demo`: a fake kind cluster, an HTTPS Kubernetes
//! API with real watch streams and a simulated kube-proxy on 127.0.0.0/8, and backends that
//! stand in for pods) under the names the tests use, and `porthole`, which drives the engine
//! against it.

pub use porthole_demo::{
    Backend, FakeCluster, OpenChoreo, api, backend, cluster, kubeconfig, openchoreo, pki, pods, port, portforward,
    proxy, selector, service, services, store, watch,
};

pub mod porthole;
