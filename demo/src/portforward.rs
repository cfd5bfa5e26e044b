//! The pods' `portforward` subresource over WebSocket (`v4.channel.k8s.io`), as the API
//! server proxies it to the kubelet and containerd: port-prefixed channels, one backend
//! connection per requested port, kubelet-worded errors, and the faults a test can inject.

use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_util::sync::CancellationToken;

use super::api::{Body, not_found, percent_decode, status as status_response};
use super::cluster::{FakeCluster, Shared};
use super::store::Kind;

/// The only channel protocol the kubelet's WebSocket port forwarding speaks in binary
/// (it also knows `v4.base64.channel.k8s.io`, which kube-rs never asks for).
const PROTOCOL: &str = "v4.channel.k8s.io";

/// containerd waits this long for the other direction once one has ended, then closes both.
const LINGER: Duration = Duration::from_secs(1);

/// Bound on a connect to a pod's port; loopback answers at once unless something is broken.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The fault switches and the live count of port-forward streams.
pub struct Controls {
    /// Cancelled by `cut_port_forwards`, then replaced for later streams.
    cut: Mutex<CancellationToken>,
    stalled: watch::Sender<bool>,
    streams: watch::Sender<usize>,
    kubelet: Mutex<Kubelet>,
    /// RBAC denies `create` on `pods/portforward` to the kubeconfig's user.
    forbidden: std::sync::atomic::AtomicBool,
}

/// How the API server's dial to a node's kubelet goes, after it has answered the upgrade.
#[derive(Clone, Copy, Default)]
struct Kubelet {
    /// How long the dial takes (a slow node, a DNS lookup).
    delay: Duration,
    /// The dial fails after `delay`, with `error dialing backend` (the node container is gone).
    unreachable: bool,
}

impl Controls {
    pub fn new(shutdown: &CancellationToken) -> Controls {
        Controls {
            cut: Mutex::new(shutdown.child_token()),
            stalled: watch::channel(false).0,
            streams: watch::channel(0).0,
            kubelet: Mutex::new(Kubelet::default()),
            forbidden: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn kubelet(&self) -> Kubelet {
        *self.kubelet.lock().expect("kubelet lock")
    }

    fn cut_token(&self) -> CancellationToken {
        self.cut.lock().expect("cut lock").clone()
    }
}

impl FakeCluster {
    /// Drops every live port-forward connection mid-transfer, without a WebSocket close,
    /// as a kubelet restart does; the pods' connections are closed too.
    pub fn cut_port_forwards(&self) {
        let shared = self.shared();
        let mut cut = shared.port_forwards.cut.lock().expect("cut lock");
        cut.cancel();
        *cut = shared.shutdown.child_token();
    }

    /// `true`: streams stay open but no byte is relayed either way (the "alive but dead"
    /// port forward); bytes already read wait. `false`: relaying resumes where it stopped.
    pub fn stall_port_forwards(&self, stalled: bool) {
        self.shared().port_forwards.stalled.send_replace(stalled);
    }

    /// The API server's dial to the kubelet takes `delay` for later port-forwards (it answers
    /// the upgrade first, as a real one does, so the client already holds an open stream).
    pub fn set_kubelet_delay(&self, delay: Duration) {
        self.shared().port_forwards.kubelet.lock().expect("kubelet lock").delay = delay;
    }

    /// `true`: the API server's dial to the kubelet fails (after the delay) with a 500 Status on
    /// each port's error channel, worded as a real one words a node it cannot resolve.
    pub fn set_kubelet_reachable(&self, reachable: bool) {
        self.shared()
            .port_forwards
            .kubelet
            .lock()
            .expect("kubelet lock")
            .unreachable = !reachable;
    }

    /// `false`: RBAC denies port-forwards to the kubeconfig's user (a 403 Status before any
    /// upgrade, as the API server's authorizer answers); `true`: allowed again.
    pub fn set_port_forward_allowed(&self, allowed: bool) {
        let forbidden = &self.shared().port_forwards.forbidden;
        forbidden.store(!allowed, std::sync::atomic::Ordering::SeqCst);
    }

    /// Live port-forward streams: one per requested port of each open connection, from its
    /// connect to the pod until both of its directions have ended.
    pub fn port_forward_streams(&self) -> usize {
        *self.shared().port_forwards.streams.borrow()
    }

    /// Waits until `port_forward_streams() == count`; callers bound it with a timeout.
    pub async fn until_port_forward_streams(&self, count: usize) {
        let mut streams = self.shared().port_forwards.streams.subscribe();
        // The sender lives as long as the cluster, which `self` keeps alive.
        let _ = streams.wait_for(|n| *n == count).await;
    }
}

/// What one accepted request forwards: the pod's address and the requested ports.
struct Plan {
    ip: IpAddr,
    ports: Vec<u16>,
    sandbox: String,
    /// The pod's node, whose kubelet the API server dials.
    node: String,
}

/// Answers `GET|POST /api/v1/namespaces/{ns}/pods/{name}/portforward?ports=..`.
pub fn handle(shared: &Arc<Shared>, mut req: Request<Incoming>, namespace: &str, name: &str) -> Response<Body> {
    if shared.port_forwards.forbidden.load(std::sync::atomic::Ordering::SeqCst) {
        // Authorization comes before anything is looked up.
        let message = format!(
            "pods \"{name}\" is forbidden: User \"developer\" cannot create resource \"pods/portforward\" \
             in API group \"\" in the namespace \"{namespace}\""
        );
        let details = serde_json::json!({ "name": name, "kind": "pods" });
        return status_response(StatusCode::FORBIDDEN, "Forbidden", &message, Some(details));
    }
    let plan = match plan(shared, &req, namespace, name) {
        Ok(plan) => plan,
        Err(response) => return response,
    };
    let headers = req.headers();
    let is_websocket = header_has(headers, header::UPGRADE, "websocket")
        && header_has(headers, header::CONNECTION, "upgrade")
        && headers.get(header::SEC_WEBSOCKET_VERSION).is_some_and(|v| v == "13");
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY).filter(|_| is_websocket) else {
        // The kubelet then expects SPDY, which the fake does not speak.
        return status_response(StatusCode::BAD_REQUEST, "BadRequest", "Upgrade request required", None);
    };
    let offered = headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let offered: Vec<String> = offered
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect();
    if !offered.is_empty() && !offered.iter().any(|p| p == PROTOCOL) {
        // golang.org/x/net/websocket refuses an unsupported subprotocol with a bare 403.
        let mut response = Response::new(Full::new(Bytes::new()).boxed_unsync());
        *response.status_mut() = StatusCode::FORBIDDEN;
        return response;
    }
    let accept = derive_accept_key(key.as_bytes());
    let offered = !offered.is_empty();
    let upgrade = hyper::upgrade::on(&mut req);
    // The upgraded connection outlives hyper's: it must end with the API itself (the epoch,
    // a child of shutdown) or with a cut.
    let (epoch, cut) = (shared.epoch(), shared.port_forwards.cut_token());
    let controls = shared.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = epoch.cancelled() => {}
            _ = cut.cancelled() => {}
            _ = async {
                let Ok(upgraded) = upgrade.await else { return };
                let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
                session(ws, plan, &controls.port_forwards).await;
            } => {}
        }
    });
    let mut response = Response::new(Full::new(Bytes::new()).boxed_unsync());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, header::HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, header::HeaderValue::from_static("Upgrade"));
    headers.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        header::HeaderValue::from_str(&accept).expect("accept key is base64"),
    );
    if offered {
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            header::HeaderValue::from_static(PROTOCOL),
        );
    }
    response
}

/// The API server's and kubelet's checks before the upgrade, with their answers.
#[allow(clippy::result_large_err)]
fn plan(shared: &Shared, req: &Request<Incoming>, namespace: &str, name: &str) -> Result<Plan, Response<Body>> {
    let bad_request = |message: &str| status_response(StatusCode::BAD_REQUEST, "BadRequest", message, None);
    let ports = ports(req.uri().query().unwrap_or("")).map_err(|m| bad_request(&m))?;
    let state = shared.lock();
    let pod = state
        .pods
        .get(&(namespace.to_string(), name.to_string()))
        .ok_or_else(|| not_found(Kind::Pod, name))?;
    let Some(node) = pod.node.clone() else {
        return Err(bad_request(&format!("pod {name} does not have a host assigned")));
    };
    if ports.is_empty() {
        return Err(text(StatusCode::BAD_REQUEST, "query parameter \"port\" is required"));
    }
    if pod.phase != "Running" {
        // The kubelet finds no running sandbox; the API server relays its plain-text answer.
        return Err(text(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("pod not found (\"{name}_{namespace}\")"),
        ));
    }
    Ok(Plan {
        ip: pod.backend.ip(),
        ports,
        sandbox: pod.sandbox.clone(),
        node,
    })
}

/// Every `ports` parameter, each a comma-separated list, as the API server converts them.
fn ports(query: &str) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if percent_decode(key) != "ports" {
            continue;
        }
        for port in percent_decode(value).split(',') {
            let parsed = port.parse::<u16>().map_err(|_| {
                let why = match !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
                    true => "value out of range",
                    false => "invalid syntax",
                };
                format!("cannot convert to []int32: strconv.ParseUint: parsing {port:?}: {why}")
            })?;
            if parsed == 0 {
                return Err(format!("port {port:?} must be > 0"));
            }
            ports.push(parsed);
        }
    }
    Ok(ports)
}

/// One WebSocket connection, as a real API server serves it: the upgrade is already answered
/// and each port's prefix written; then the API server dials the node's kubelet (which may be
/// slow, or fail: a 500 Status on each error channel, and the end); then a relay per port,
/// each dialing the pod. It ends (with a Close) once every port's relay has ended, as the
/// kubelet's handler does.
async fn session<S>(ws: WebSocketStream<S>, plan: Plan, controls: &Controls)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (sink, stream) = ws.split();
    let (out, out_rx) = mpsc::channel::<Message>(16);
    let channels: Vec<u8> = (0..plan.ports.len())
        .map(|index| u8::try_from(2 * index).unwrap_or(u8::MAX - 1))
        .collect();
    for (channel, port) in channels.iter().zip(&plan.ports) {
        // Each port number first on the data, then on the error channel.
        let _ = out.send(frame(*channel, &port.to_le_bytes())).await;
        let _ = out.send(frame(channel + 1, &port.to_le_bytes())).await;
    }
    let mut inputs = Vec::new();
    let mut input_rxs = Vec::new();
    for _ in &plan.ports {
        let (input, input_rx) = mpsc::channel::<Bytes>(8);
        inputs.push(input);
        input_rxs.push(input_rx);
    }
    let kubelet = controls.kubelet();
    let writer = write_client(sink, out_rx);
    let reader = read_client(stream, inputs);
    tokio::pin!(writer, reader);
    // The dial to the kubelet, while the client's first bytes queue up.
    let dialed = async {
        tokio::time::sleep(kubelet.delay).await;
        if kubelet.unreachable {
            let status = dial_failure(&plan.node);
            for channel in &channels {
                let _ = out.send(frame(channel + 1, status.as_bytes())).await;
            }
            return false;
        }
        true
    };
    let reached = tokio::select! {
        reached = dialed => reached,
        _ = &mut writer => return,
    };
    let mut relays = Vec::new();
    if reached {
        for ((channel, port), input_rx) in channels.iter().zip(&plan.ports).zip(input_rxs) {
            let target = Target {
                channel: *channel,
                addr: SocketAddr::new(plan.ip, *port),
                sandbox: plan.sandbox.clone(),
            };
            relays.push(relay(target, input_rx, out.clone(), controls));
        }
    }
    drop(out);
    let done = async { tokio::join!(&mut writer, futures::future::join_all(relays)) };
    tokio::pin!(done);
    let mut reading = true;
    loop {
        tokio::select! {
            _ = &mut done => return,
            // The reader only feeds the relays; when it ends they see end of input.
            _ = &mut reader, if reading => reading = false,
        }
    }
}

/// Routes the client's data frames to the port relays until the client closes or fails.
async fn read_client<S>(mut stream: futures::stream::SplitStream<WebSocketStream<S>>, inputs: Vec<mpsc::Sender<Bytes>>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    while let Some(Ok(message)) = stream.next().await {
        match message {
            Message::Binary(mut bytes) if !bytes.is_empty() => {
                let channel = bytes.split_to(1)[0] as usize;
                // Writes to an error channel are ignored, as by the kubelet.
                let Some(input) = inputs.get(channel / 2).filter(|_| channel.is_multiple_of(2)) else {
                    continue;
                };
                if !bytes.is_empty() && input.send(bytes).await.is_err() {
                    // That port's relay is over; its frames are dropped.
                    continue;
                }
            }
            Message::Close(_) => return,
            _ => {}
        }
    }
}

async fn write_client<S>(
    mut sink: futures::stream::SplitSink<WebSocketStream<S>, Message>,
    mut out: mpsc::Receiver<Message>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    while let Some(message) = out.recv().await {
        if sink.send(message).await.is_err() {
            return;
        }
    }
    let _ = sink.send(Message::Close(None)).await;
}

struct Target {
    channel: u8,
    addr: SocketAddr,
    sandbox: String,
}

/// One port: connect to the pod, then copy both ways (paused while stalled) until one way
/// ends, then give the other `LINGER` to finish, as containerd's port forwarder does.
async fn relay(target: Target, mut input: mpsc::Receiver<Bytes>, out: mpsc::Sender<Message>, controls: &Controls) {
    controls.streams.send_modify(|n| *n += 1);
    let _count = scopeguard(|| controls.streams.send_modify(|n| *n -= 1));
    let connected = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target.addr)).await;
    let backend = match connected {
        Ok(Ok(backend)) => backend,
        Ok(Err(error)) => return report(&target, &out, &go_error(&error)).await,
        Err(_) => return report(&target, &out, "i/o timeout").await,
    };
    // The kubelet's and containerd's dials are Go's: TCP_NODELAY, as for the API server.
    let _ = backend.set_nodelay(true);
    let (mut from_pod, mut to_pod) = backend.into_split();
    let mut stalled_up = controls.stalled.subscribe();
    let mut stalled_down = controls.stalled.subscribe();
    let up = async {
        while let Some(bytes) = input.recv().await {
            unstalled(&mut stalled_up).await;
            if to_pod.write_all(&bytes).await.is_err() {
                return;
            }
        }
    };
    let down = async {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = match from_pod.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            unstalled(&mut stalled_down).await;
            if out.send(frame(target.channel, &buf[..n])).await.is_err() {
                return;
            }
        }
    };
    tokio::pin!(up, down);
    tokio::select! {
        _ = &mut up => { let _ = tokio::time::timeout(LINGER, &mut down).await; }
        _ = &mut down => { let _ = tokio::time::timeout(LINGER, &mut up).await; }
    }
}

/// The API server's Status when it cannot reach a node's kubelet, as kube-apiserver words a
/// node name its resolver does not know.
fn dial_failure(node: &str) -> String {
    serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": format!("error dialing backend: dial tcp: lookup {node} on 127.0.0.11:53: no such host"),
        "reason": "InternalError",
        "code": 500,
    })
    .to_string()
}

/// The kubelet's message on the error channel when containerd cannot reach the port.
async fn report(target: &Target, out: &mpsc::Sender<Message>, cause: &str) {
    let (port, sandbox) = (target.addr.port(), &target.sandbox);
    let message = format!(
        "error forwarding port {port} to pod {sandbox}, uid : failed to execute portforward in network namespace \
         \"/var/run/netns/cni-{sandbox:.8}\": failed to connect to localhost:{port} inside namespace \"{sandbox}\", \
         IPv4: dial tcp4 {addr}: connect: {cause} IPv6 dial tcp6 [::1]:{port}: connect: {cause} ",
        addr = target.addr,
    );
    let _ = out.send(frame(target.channel + 1, message.as_bytes())).await;
}

/// Go's wording of a connect error, which is what the kubelet relays.
fn go_error(error: &std::io::Error) -> String {
    match error.kind() {
        ErrorKind::ConnectionRefused => "connection refused".to_string(),
        ErrorKind::ConnectionReset => "connection reset by peer".to_string(),
        _ => error.to_string().to_lowercase(),
    }
}

async fn unstalled(stalled: &mut watch::Receiver<bool>) {
    // The sender lives in `Shared`, as long as any stream.
    let _ = stalled.wait_for(|s| !*s).await;
}

fn frame(channel: u8, payload: &[u8]) -> Message {
    let mut bytes = Vec::with_capacity(payload.len() + 1);
    bytes.push(channel);
    bytes.extend_from_slice(payload);
    Message::binary(bytes)
}

fn header_has(headers: &header::HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// A plain-text answer, as the kubelet writes its errors and the API server relays them.
fn text(code: StatusCode, message: &str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(message.to_string())).boxed_unsync());
    *response.status_mut() = code;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Runs `f` when dropped, so a cancelled relay still leaves the count.
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

#[cfg(test)]
mod tests {
    use super::ports;

    #[test]
    fn ports_are_comma_lists_in_repeated_parameters() {
        assert_eq!(ports("&ports=80%2C1234"), Ok(vec![80, 1234]));
        assert_eq!(ports("ports=80&ports=81,82&other=1"), Ok(vec![80, 81, 82]));
        assert_eq!(ports(""), Ok(vec![]));
        assert!(ports("ports=http").is_err());
        assert!(ports("ports=0").is_err());
        assert!(ports("ports=70000").is_err());
    }
}
