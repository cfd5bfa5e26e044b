//! The engine end to end: real sockets through a fake kind cluster's simulated kube-proxy.
//! One test binary; the tests are grouped by what they are about.

mod api_and_kubeconfig;
mod causes;
mod cluster_changes;
mod clusters;
mod data_path;
mod lifecycle;
mod wake;

use std::time::Duration;

use porthole::Event;
use porthole::cause::{CauseId, State};
use porthole::engine::Engine;
use porthole::kubeconfig::state::{self, KubeconfigState};
use porthole::kubeconfig::tools::Tools;
use porthole::write::LockWait;
use support::porthole::*;
use support::{Backend, FakeCluster, port, service};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn start(cluster: &FakeCluster, forwards: &str) -> Engine {
    Engine::start(config(cluster, forwards), tuning())
}
