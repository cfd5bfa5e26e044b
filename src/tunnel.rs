//! The tunnel path: per local connection, a port-forward stream through the API server to a
//! ready pod (WebSocket `v4.channel.k8s.io`), for hosts where node addresses do not answer and
//! for ClusterIP services.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::Portforwarder;
use tokio::io::DuplexStream;
use tokio::net::TcpStream;

use crate::health::{Cause, CauseId};
use crate::route::Route;

/// An open stream to one pod's port.
pub struct Tunnel {
    pub io: DuplexStream,
    /// Kept for the stream's life: it owns the WebSocket and reports the kubelet's errors.
    forwarder: Portforwarder,
    port: u16,
    /// `namespace/pod:port`, for logs and status.
    pub target: String,
}

impl Tunnel {
    /// The stream, and what must live as long as it is used.
    pub fn split(self) -> (DuplexStream, Portforwarder) {
        (self.io, self.forwarder)
    }
}

/// Opens a stream to the route's first pod that accepts one, starting at `first` (the pod that
/// worked last); returns the index used. Each attempt is bounded by `timeout`.
pub async fn open(
    client: &kube::Client,
    route: &Route,
    first: usize,
    timeout: Duration,
) -> Result<(Tunnel, usize), Cause> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &route.namespace);
    let count = route.pods.len();
    let mut failures = Vec::new();
    for index in (0..count).map(|i| (first + i) % count) {
        let pod = &route.pods[index];
        let target = format!("{}/{}:{}", route.namespace, pod.name, pod.port);
        match tokio::time::timeout(timeout, pods.portforward(&pod.name, &[pod.port])).await {
            Ok(Ok(mut forwarder)) => match forwarder.take_stream(pod.port) {
                Some(io) => {
                    let tunnel = Tunnel {
                        io,
                        forwarder,
                        port: pod.port,
                        target,
                    };
                    return Ok((tunnel, index));
                }
                None => failures.push(format!("{target} (no stream)")),
            },
            Ok(Err(e)) => failures.push(format!("{target} ({e})")),
            Err(_) => failures.push(format!("{target} (no answer in {timeout:?})")),
        }
    }
    if count == 0 {
        failures.push("no ready pod".into());
    }
    Err(Cause::new(
        CauseId::TunnelFailed,
        format!(
            "cannot open a port-forward to {}: {}",
            route.service,
            failures.join(", ")
        ),
    )
    .with_fix(
        "check `kubectl get pods -n NAMESPACE`; the API server must allow pods/portforward for these credentials",
    ))
}

/// After the local client's end-of-file, how long the pod may stay silent before the tunnel is
/// closed. The port-forward protocol cannot pass a half-close on, so the answer to a request
/// sent with a half-close gets this long to arrive (containerd gives the same second).
const HALF_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Relays a local connection through a tunnel until either side ends; counts bytes both ways.
/// An error reported by the kubelet (the pod refused the port) resets the local connection.
pub async fn relay(mut client: TcpStream, tunnel: Tunnel, up: &AtomicU64, down: &AtomicU64) -> std::io::Result<()> {
    let _ = client.set_nodelay(true);
    let Tunnel {
        io,
        mut forwarder,
        port,
        ..
    } = tunnel;
    let error = forwarder.take_error(port);
    let outcome = {
        let pump = pump(&mut client, io, up, down);
        tokio::pin!(pump);
        match error {
            Some(error) => tokio::select! {
                result = &mut pump => result,
                message = error => match message {
                    Some(message) => Err(std::io::Error::other(message)),
                    // Closed without a word: the stream is ending; let the bytes in flight through.
                    None => pump.await,
                },
            },
            None => pump.await,
        }
    };
    forwarder.abort();
    if outcome.is_err() {
        let _ = socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO));
    }
    outcome
}

/// Both directions at once. The client's end-of-file is not passed on (the protocol cannot);
/// the pod's answer then gets [`HALF_CLOSE_GRACE`] of silence before the tunnel closes.
async fn pump(client: &mut TcpStream, io: DuplexStream, up: &AtomicU64, down: &AtomicU64) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut from_pod, mut to_pod) = tokio::io::split(io);
    let (mut from_client, mut to_client) = client.split();
    let client_done = tokio::sync::Notify::new();
    let upward = async {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = from_client.read(&mut buf).await?;
            if n == 0 {
                client_done.notify_one();
                return Ok::<_, std::io::Error>(());
            }
            to_pod.write_all(&buf[..n]).await?;
            up.fetch_add(n as u64, Ordering::Relaxed);
        }
    };
    let downward = async {
        let mut buf = vec![0u8; 32 * 1024];
        let mut half_closed = false;
        loop {
            let read = async {
                if half_closed {
                    tokio::time::timeout(HALF_CLOSE_GRACE, from_pod.read(&mut buf))
                        .await
                        .unwrap_or(Ok(0))
                } else {
                    from_pod.read(&mut buf).await
                }
            };
            let n = tokio::select! {
                n = read => n?,
                _ = client_done.notified(), if !half_closed => {
                    half_closed = true;
                    continue;
                }
            };
            if n == 0 {
                return to_client.shutdown().await;
            }
            to_client.write_all(&buf[..n]).await?;
            down.fetch_add(n as u64, Ordering::Relaxed);
        }
    };
    tokio::try_join!(upward, downward).map(|_| ())
}
