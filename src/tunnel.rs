//! The tunnel path: per local connection, a port-forward stream through the API server to a
//! ready pod (WebSocket `v4.channel.k8s.io`), for hosts where node addresses do not answer and
//! for ClusterIP services.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use kube::Resource;
use tokio::net::TcpStream;

use crate::cause::{Cause, CauseId};
use crate::route::{PodTarget, Route};

mod pool;
mod stream;

pub use crate::tuning::PoolSettings;
pub use pool::Pool;
pub use stream::{PortStream, refusal};

/// The connection of a port-forward, as the API server's upgrade leaves it.
pub type Ws = TokioIo<hyper::upgrade::Upgraded>;

/// An open stream to one pod's port. Dropping it ends its WebSocket.
pub struct Tunnel {
    pub io: PortStream<Ws>,
    /// What the pod said while the stream was held ([`Tunnel::usable`]): the first bytes the
    /// client gets.
    pub prefix: Vec<u8>,
    /// The pod it goes to.
    pub pod: PodTarget,
    /// `namespace/pod:port`, for logs and status.
    pub target: String,
    /// The pool it was taken from, told when the pod first answers through it.
    pool: Option<Pool>,
}

/// The most a held stream keeps of what its pod says before a client takes it.
const PREFIX_MAX: usize = 64 * 1024;

impl Tunnel {
    /// Whether a stream held ahead of need can still be handed out: neither the API server nor
    /// the kubelet has reported a failure on it, and the pod has not closed it. What the pod
    /// said meanwhile (a server that greets first) is kept for the client, up to
    /// [`PREFIX_MAX`]. Never waits.
    pub fn usable(&mut self) -> bool {
        use futures::FutureExt;
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 4096];
        while self.prefix.len() < PREFIX_MAX {
            match self.io.read(&mut buf).now_or_never() {
                None => return true,
                Some(Ok(0)) | Some(Err(_)) => return false,
                Some(Ok(n)) => self.prefix.extend_from_slice(&buf[..n]),
            }
        }
        true
    }
}

/// Opens a stream to the route's first pod that accepts one, starting at `first` (the pod that
/// worked last); returns the index used. Each attempt is bounded by `timeout`.
///
/// A stream that opens is not yet a path: a real API server answers the upgrade before it
/// dials the kubelet, and the kubelet dials the pod after that. Their failures arrive later,
/// on the error channel (they fail the stream's next read: [`refusal`], worded by [`verdict`]).
pub async fn open(
    client: &kube::Client,
    route: &Route,
    first: usize,
    timeout: Duration,
) -> Result<(Tunnel, usize), Cause> {
    let pods_ready = route.pods();
    let count = pods_ready.len();
    let mut failures = Vec::new();
    let mut forbidden = false;
    for index in (0..count).map(|i| (first + i) % count) {
        let pod = &pods_ready[index];
        let target = format!("{}/{}:{}", route.namespace, pod.name, pod.port);
        match tokio::time::timeout(timeout, connect(client, &route.namespace, pod)).await {
            Ok(Ok(ws)) => {
                let tunnel = Tunnel {
                    io: PortStream::new(ws, pod.port),
                    prefix: Vec::new(),
                    pod: pod.clone(),
                    target,
                    pool: None,
                };
                return Ok((tunnel, index));
            }
            Ok(Err(e)) if crate::descriptors::exhausted_in(&e) => {
                return Err(crate::descriptors::cause(&format!(
                    "opening a port-forward to {target}"
                )));
            }
            Ok(Err(e)) => {
                forbidden |= refused_with(&e, 403);
                failures.push(format!("{target} ({e})"));
            }
            Err(_) => failures.push(format!("{target} (no answer in {timeout:?})")),
        }
    }
    if count == 0 {
        failures.push("no ready pod".into());
    }
    let failures = failures.join(", ");
    if forbidden {
        return Err(Cause::new(
            CauseId::TunnelFailed,
            format!(
                "the API server refuses port-forwards to {} (403): {failures}",
                route.service
            ),
        )
        .with_fix(format!(
            "these credentials may lack `create` on `pods/portforward` in namespace {} (check with \
             `kubectl auth can-i create pods/portforward -n {0}`; grant it with an RBAC Role), or a \
             proxy in front of the API server refuses WebSocket upgrades; where node addresses \
             answer, `mode = \"nodeport\"` needs neither",
            route.namespace
        )));
    }
    Err(Cause::new(
        CauseId::TunnelFailed,
        format!("cannot open a port-forward to {}: {failures}", route.service),
    )
    .with_fix(format!(
        "check the pods: `kubectl get pods -n {}` (a pod that is restarting comes back by itself)",
        route.namespace
    )))
}

/// The WebSocket of a port-forward to `pod`'s port, upgraded through the API server.
async fn connect(client: &kube::Client, namespace: &str, pod: &PodTarget) -> Result<Ws, kube::Error> {
    let request = kube::core::Request::new(Pod::url_path(&(), Some(namespace)))
        .portforward(&pod.name, &[pod.port])
        .map_err(kube::Error::BuildRequest)?;
    // kube's WebSocket has read nothing yet: the connection goes on with ours.
    Ok(client.connect(request).await?.into_stream().into_inner())
}

/// Whether the API server answered the upgrade with this HTTP status.
fn refused_with(error: &kube::Error, code: u16) -> bool {
    use kube::client::UpgradeConnectionError;
    match error {
        kube::Error::UpgradeConnection(UpgradeConnectionError::ProtocolSwitch(status)) => status.as_u16() == code,
        kube::Error::Api(status) => status.code == code,
        _ => false,
    }
}

/// What a failure reported on a stream's error channel means for the user.
///
/// - `error dialing backend: …` (a 500 Status from the API server): it cannot reach the node's
///   kubelet; the node container is stopped, renamed or re-created.
/// - the kubelet's `… failed to connect to localhost:PORT …: connection refused`: nothing in
///   the pod listens on the port.
/// - anything else: the port-forward failed, with the message.
pub fn verdict(message: &str, route: &Route, pod: &PodTarget) -> Cause {
    let message = status_message(message);
    let target = format!("{}/{}:{}", route.namespace, pod.name, pod.port);
    if message.contains("error dialing backend") {
        let node = pod.node.as_deref().unwrap_or("the pod's node");
        return Cause::new(
            CauseId::KubeletUnreachable,
            format!("the API server cannot reach the kubelet of {node} for {target}: {message}"),
        )
        .with_fix(format!(
            "the node's container is stopped or was re-created: check `docker ps -a --filter name={node}` \
             and start it (`docker start {node}`); a re-created cluster needs `porthole fix-kubeconfig`"
        ));
    }
    if message.contains("connection refused") {
        return Cause::new(
            CauseId::ProbeFailed,
            format!("pod {target} refuses port {}: nothing listens on it", pod.port),
        )
        .with_fix(format!(
            "check that the container listens on port {} (`kubectl logs -n {} {}`), or correct the \
             service's targetPort",
            pod.port, route.namespace, pod.name
        ));
    }
    Cause::new(
        CauseId::TunnelFailed,
        format!("the port-forward to {target} failed: {message}"),
    )
    .with_fix(format!(
        "check the pod: `kubectl describe pod -n {} {}`",
        route.namespace, pod.name
    ))
}

/// The `message` of a Status object, or the text as it is (the kubelet writes plain text).
fn status_message(text: &str) -> String {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_string))
        .unwrap_or_else(|| text.trim().to_string())
}

/// After the local client's end-of-file, how long the pod may stay silent before the tunnel is
/// closed. The port-forward protocol cannot pass a half-close on, so the answer to a request
/// sent with a half-close gets this long to arrive (containerd gives the same second).
const HALF_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Relays a local connection through a tunnel until either side ends; counts bytes both ways.
/// An error reported by the API server or the kubelet (the pod refused the port) resets the
/// local connection, and is returned as `ConnectionRefused`. `settle`: how long the far side may take to be reached at all (see
/// [`pump`]).
pub async fn relay(
    mut client: TcpStream,
    tunnel: Tunnel,
    settle: Duration,
    up: &AtomicU64,
    down: &AtomicU64,
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let _ = client.set_nodelay(true);
    let Tunnel {
        mut io,
        prefix,
        mut pool,
        ..
    } = tunnel;
    // What the pod said while the stream was held comes first; and the pool the stream came
    // from opens its replacement once the pod has answered.
    if !prefix.is_empty() {
        if let Some(pool) = pool.take() {
            pool.refill_now();
        }
        client.write_all(&prefix).await?;
        down.fetch_add(prefix.len() as u64, Ordering::Relaxed);
    }
    // A pod that has spoken is past the settling: its far side was reached.
    let settle = if prefix.is_empty() { settle } else { Duration::ZERO };
    let answered = move || {
        if let Some(pool) = pool {
            pool.refill_now();
        }
    };
    let mut outcome = pump(&mut client, &mut io, settle, answered, up, down).await;
    if let Err(e) = &outcome
        && refusal(e).is_none()
        && let Some(message) = io.verdict_now()
    {
        // A write failed before a read came to the far side's report: the report is the cause.
        outcome = Err(stream::refused(message));
    }
    if outcome.is_err() {
        let _ = socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO));
    }
    outcome
}

/// Both directions at once. The client's end-of-file is not passed on (the protocol cannot);
/// the pod's answer then gets [`HALF_CLOSE_GRACE`] of silence before the tunnel closes, or
/// `settle` while the pod has said nothing yet (the API server may still be reaching the
/// kubelet, which then dials the pod: a request sent at once with a half-close waits for both).
///
/// `answered` is called once the pod's first bytes have reached the client.
///
/// Buffers sized for throughput exist only while bytes are in flight: an idle tunnelled
/// connection holds [`SMALL_READ`] bytes, not two 32 KiB buffers for its whole life.
async fn pump<Io>(
    client: &mut TcpStream,
    io: Io,
    settle: Duration,
    answered: impl FnOnce(),
    up: &AtomicU64,
    down: &AtomicU64,
) -> std::io::Result<()>
where
    Io: tokio::io::AsyncRead + tokio::io::AsyncWrite,
{
    use std::pin::Pin;
    use std::task::Poll;
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
    let (mut from_pod, mut to_pod) = tokio::io::split(io);
    let (from_client, mut to_client) = client.split();
    let client_done = tokio::sync::Notify::new();
    let upward = async {
        let mut buf = Vec::new();
        loop {
            from_client.readable().await?;
            if buf.is_empty() {
                buf = vec![0u8; BULK_READ];
            }
            let n = match from_client.try_read(&mut buf) {
                Ok(0) => {
                    client_done.notify_one();
                    return Ok::<_, std::io::Error>(());
                }
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    // Idle: no buffer while waiting.
                    buf = Vec::new();
                    continue;
                }
                Err(e) => return Err(e),
            };
            to_pod.write_all(&buf[..n]).await?;
            to_pod.flush().await?;
            up.fetch_add(n as u64, Ordering::Relaxed);
        }
    };
    let downward = async {
        // The pod's side is a stream without readiness: a small read waits for bytes, and a full
        // one (a burst) is drained with a large buffer for as long as bytes keep coming.
        let mut buf = [0u8; SMALL_READ];
        let mut answered = Some(answered);
        let mut half_closed = false;
        let mut spoken = false;
        loop {
            let grace = if spoken {
                HALF_CLOSE_GRACE
            } else {
                HALF_CLOSE_GRACE.max(settle)
            };
            let read = async {
                if half_closed {
                    tokio::time::timeout(grace, from_pod.read(&mut buf))
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
            spoken = true;
            to_client.write_all(&buf[..n]).await?;
            if let Some(answered) = answered.take() {
                answered();
            }
            down.fetch_add(n as u64, Ordering::Relaxed);
            if n < SMALL_READ {
                continue;
            }
            let mut bulk = vec![0u8; BULK_READ];
            // Read while bytes are there, with this task's waker: a noop one could take the
            // place of the writer's (a pong written from the read side).
            while let Some(read) = std::future::poll_fn(|cx| {
                let mut filled = ReadBuf::new(&mut bulk);
                match Pin::new(&mut from_pod).poll_read(cx, &mut filled) {
                    Poll::Pending => Poll::Ready(None),
                    Poll::Ready(read) => Poll::Ready(Some(read.map(|()| filled.filled().len()))),
                }
            })
            .await
            {
                match read? {
                    0 => return to_client.shutdown().await,
                    n => {
                        to_client.write_all(&bulk[..n]).await?;
                        down.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
            }
        }
    };
    // The client's end leaves the pod's answer to come; the pod's end is the stream's end (the
    // protocol has no half-close), so the client's side is not waited for.
    tokio::pin!(upward, downward);
    tokio::select! {
        up = &mut upward => {
            up?;
            downward.await
        }
        down = &mut downward => down,
    }
}

/// What an idle tunnelled connection holds to wait for the pod's next bytes.
const SMALL_READ: usize = 2 * 1024;
/// A read while bytes are in flight.
const BULK_READ: usize = 32 * 1024;

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An idle tunnelled connection holds no buffer sized for throughput: after a burst each
    /// way, the pump's heap (task, sockets' registrations and all) is a few KiB, not 64.
    #[tokio::test(flavor = "current_thread")]
    async fn an_idle_tunnelled_connection_holds_no_bulk_buffers() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(listener.local_addr().unwrap()), listener.accept());
        let (mut client, mut client_side) = (client.unwrap(), accepted.unwrap().0);
        // A small pipe to the "pod", so its own buffers stay small.
        let (pod_side, mut pod) = tokio::io::duplex(4 * 1024);
        let before = crate::test_alloc::live();
        let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
        let pumping = pump(&mut client_side, pod_side, Duration::from_secs(1), || {}, &up, &down);
        let traffic = async {
            let burst = vec![7u8; 200 * 1024];
            let mut back = vec![0u8; burst.len()];
            client.write_all(&burst).await.unwrap();
            pod.read_exact(&mut back).await.unwrap();
            pod.write_all(&burst).await.unwrap();
            client.read_exact(&mut back).await.unwrap();
            assert_eq!(back, burst);
            // Idle now: let the pump reach its waits (a few turns of the loop), then look.
            drop((burst, back));
            for _ in 0..64 {
                tokio::task::yield_now().await;
            }
            crate::test_alloc::live() - before
        };
        let held = tokio::select! {
            held = traffic => held,
            _ = pumping => panic!("the pump ended"),
        };
        assert!(held < 16 * 1024, "an idle tunnelled connection holds {held} bytes");
    }

    /// The same over a port-forward's WebSocket: idle after a burst each way, the stream and
    /// the pump hold a few hundred bytes (440 when written; kube's `Portforwarder` held a
    /// 128 KiB read buffer, two pipes and a task). The API server's end (tungstenite) runs on a thread of its own, so that only our
    /// side is counted.
    #[tokio::test(flavor = "current_thread")]
    async fn an_idle_port_forward_stream_holds_no_bulk_buffers() {
        use futures::{SinkExt, StreamExt};
        use tokio_tungstenite::WebSocketStream;
        use tokio_tungstenite::tungstenite::Message;
        use tokio_tungstenite::tungstenite::protocol::Role;
        const BURST: usize = 200 * 1024;
        let api = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let api_addr = api.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                api.set_nonblocking(true).unwrap();
                let api = tokio::net::TcpListener::from_std(api).unwrap();
                let (socket, _) = api.accept().await.unwrap();
                let mut ws = WebSocketStream::from_raw_socket(socket, Role::Server, None).await;
                for channel in [0u8, 1] {
                    ws.send(Message::Binary(vec![channel, 80, 0].into())).await.unwrap();
                }
                // The bytes up, then as many down, then the end.
                let mut got = 0;
                while got < BURST {
                    let Some(Ok(Message::Binary(frame))) = ws.next().await else {
                        panic!("no frame")
                    };
                    got += frame.len() - 1;
                }
                for chunk in vec![7u8; BURST].chunks(32 * 1024) {
                    let mut frame = vec![0u8];
                    frame.extend_from_slice(chunk);
                    ws.send(Message::Binary(frame.into())).await.unwrap();
                }
                while let Some(Ok(_)) = ws.next().await {}
            });
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(listener.local_addr().unwrap()), listener.accept());
        let (mut client, mut client_side) = (client.unwrap(), accepted.unwrap().0);
        let mut burst = vec![7u8; BURST];
        let socket = TcpStream::connect(api_addr).await.unwrap();
        let before = crate::test_alloc::live();
        let mut stream = PortStream::new(socket, 80);
        let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
        let held = {
            let pumping = pump(&mut client_side, &mut stream, Duration::from_secs(1), || {}, &up, &down);
            let traffic = async {
                client.write_all(&burst).await.unwrap();
                client.read_exact(&mut burst).await.unwrap();
                for _ in 0..64 {
                    tokio::task::yield_now().await;
                }
                crate::test_alloc::live() - before
            };
            tokio::select! {
                held = traffic => held,
                _ = pumping => panic!("the pump ended"),
            }
        };
        assert_eq!(down.load(Ordering::Relaxed), BURST as u64);
        drop(stream);
        server.join().unwrap();
        assert!(held < 4 * 1024, "an idle port-forward stream holds {held} bytes");
    }

    /// The pod's end ends the relay: the protocol has no half-close, so a client that says
    /// nothing more is not waited for.
    #[tokio::test]
    async fn the_pods_end_ends_the_relay_without_the_clients() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(listener.local_addr().unwrap()), listener.accept());
        let (mut client, mut client_side) = (client.unwrap(), accepted.unwrap().0);
        let (pod_side, mut pod) = tokio::io::duplex(4 * 1024);
        let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
        let pumping = pump(&mut client_side, pod_side, Duration::from_secs(1), || {}, &up, &down);
        let pod_ends = async {
            pod.write_all(b"bye").await.unwrap();
            drop(pod);
        };
        let (ended, ()) = tokio::join!(tokio::time::timeout(Duration::from_secs(10), pumping), pod_ends);
        ended.expect("the relay ended with the pod").unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"bye", "the pod's last bytes, then the end");
    }
}
