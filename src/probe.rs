//! Active health checks through a route, nodePort or tunnel: a TCP connect, an HTTP request, a
//! TLS handshake or HTTP/2's preface (`auto` picks by what the service port says it speaks),
//! and when to run them.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::cause::{Cause, CauseId};
use crate::config::Probe;
use crate::route::{Protocol, Route};

/// One probe's outcome, with the route it was run on: a route published since (another path,
/// or the same one re-published for a new probe config) is not proven by it.
#[derive(Debug)]
pub(crate) struct Probed {
    pub route: Arc<Route>,
    pub outcome: Result<(), Cause>,
}

impl Probed {
    /// Whether this outcome is about `current` (the very route published, not an equal one).
    pub fn is_for(&self, current: Option<&Arc<Route>>) -> bool {
        current.is_some_and(|c| Arc::ptr_eq(c, &self.route))
    }
}

/// Probes the current route at once, then every `probe_interval`, and at once again whenever
/// the route changes (a probe under way is dropped: it says nothing of the new route). After a
/// failure it retries after `probe_retry` until `failure_threshold` failures confirm an outage,
/// then backs off, doubling up to `probe_interval`: a forward that stays down is not probed (in
/// tunnel mode: a new upgrade to the API server) every second. Routes without ready endpoints
/// are not probed: their health is already known.
pub(crate) async fn schedule<F, Fut>(
    tuning: &crate::tuning::Tuning,
    mut routes: watch::Receiver<Option<Arc<Route>>>,
    mut wakes: watch::Receiver<u64>,
    cancel: &CancellationToken,
    check: F,
    results: mpsc::Sender<Probed>,
) where
    F: Fn(Arc<Route>) -> Fut,
    Fut: std::future::Future<Output = Result<(), Cause>>,
{
    let mut failures: u32 = 0;
    loop {
        let route = routes.borrow_and_update().clone();
        let mut wait = tuning.probe_interval;
        if let Some(route) = route.filter(|r| r.ready_endpoints > 0) {
            let outcome = tokio::select! {
                _ = cancel.cancelled() => return,
                outcome = check(route.clone()) => outcome,
                changed = routes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    // A new path is news: probed at once, and quickly again if it fails.
                    failures = 0;
                    continue;
                }
            };
            if outcome.is_err() {
                failures += 1;
                wait = retry_after(tuning, failures);
            } else {
                failures = 0;
            }
            if results.send(Probed { route, outcome }).await.is_err() {
                return;
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
            changed = routes.changed() => if changed.is_err() { return },
            // The machine woke up or changed networks: whatever was true may not be.
            changed = wakes.changed() => if changed.is_err() { return },
        }
    }
}

/// The wait after the `failures`-th failure in a row: `probe_retry` until the outage is confirmed,
/// then twice as long each time, up to `probe_interval`.
fn retry_after(tuning: &crate::tuning::Tuning, failures: u32) -> Duration {
    let past = failures
        .saturating_sub(tuning.failure_threshold.saturating_sub(1))
        .min(16);
    tuning
        .probe_retry
        .saturating_mul(1 << past)
        .min(tuning.probe_interval)
        .max(tuning.probe_retry)
}

/// What a probe says to the far end: `auto` resolved by what the route's port speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Conversation {
    /// Connected, and not refused or closed at once.
    Tcp,
    /// A GET answered; `strict` (an `http` probe): with a status below 500.
    Http { path: String, strict: bool },
    /// A TLS handshake; `strict` (a `tls` probe): completed.
    Tls { strict: bool },
    /// HTTP/2's connection preface, answered (gRPC, h2c).
    H2c,
}

impl Conversation {
    fn of(probe: &Probe, route: &Route) -> Conversation {
        match probe {
            Probe::Tcp => Conversation::Tcp,
            Probe::Http(path) => Conversation::Http {
                path: path.clone(),
                strict: true,
            },
            Probe::Tls => Conversation::Tls { strict: true },
            Probe::Auto => match route.protocol {
                Protocol::Tcp => Conversation::Tcp,
                Protocol::Http => Conversation::Http {
                    path: "/".into(),
                    strict: false,
                },
                Protocol::Tls => Conversation::Tls { strict: false },
                Protocol::H2c => Conversation::H2c,
            },
        }
    }

    /// Chosen by `auto` rather than configured: the question is whether a server answers at
    /// all, in the port's protocol or otherwise (a TLS alert for another name, an HTTP/1 answer
    /// to the HTTP/2 preface, a 500), since a port's name is only a hint.
    fn lenient(&self) -> bool {
        matches!(
            self,
            Conversation::Http { strict: false, .. } | Conversation::Tls { strict: false } | Conversation::H2c
        )
    }

    /// Every conversation but `tcp` ends with an answer from the server itself; a lenient one
    /// with any bytes back.
    async fn run<S: AsyncRead + AsyncWrite + Unpin>(&self, stream: S) -> Result<(), String> {
        if !self.lenient() {
            return self.speak(stream).await;
        }
        let mut stream = Answered {
            inner: stream,
            answered: false,
        };
        let outcome = self.speak(&mut stream).await;
        if stream.answered { Ok(()) } else { outcome }
    }

    async fn speak<S: AsyncRead + AsyncWrite + Unpin>(&self, stream: S) -> Result<(), String> {
        match self {
            Conversation::Tcp => settled(stream).await,
            Conversation::Http { path, strict } => http(stream, path, *strict).await,
            Conversation::Tls { .. } => tls(stream).await,
            Conversation::H2c => h2c(stream).await,
        }
    }
}

/// How long a probe may take.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Each step: a connect, an upgrade, an answer.
    pub timeout: Duration,
    /// Through a tunnel: how long the far side gets to report a failure (see [`through_tunnel`]).
    pub settle: Duration,
}

/// Runs one probe through the route, starting with its target `first` (the node or pod that
/// connections try first, so that both see the same path).
pub async fn check(
    probe: &Probe,
    route: &Route,
    client: Option<&kube::Client>,
    bounds: Bounds,
    first: usize,
) -> Result<(), Cause> {
    let Bounds { timeout, settle } = bounds;
    let conversation = Conversation::of(probe, route);
    if route.is_tunnel() {
        let client =
            client.ok_or_else(|| Cause::new(CauseId::ClusterUnreachable, "no connection to the API server yet"))?;
        let (tunnel, _) = crate::tunnel::open(client, route, first, timeout).await?;
        return through_tunnel(&conversation, tunnel, route, timeout, settle).await;
    }
    let (stream, index) = route.connect_from(first, timeout).await?;
    let via = route
        .nodes()
        .and_then(|n| n.targets.get(index).map(|t| format!("{}:{}", t.host, n.node_port)))
        .unwrap_or_else(|| route.primary());
    match tokio::time::timeout(timeout, conversation.run(stream)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(what)) => Err(serving_failure(route, &via, &what)),
        Err(_) => Err(serving_failure(route, &via, &format!("no answer in {timeout:?}"))),
    }
}

/// The path answered, but not as a server should: the pods do not serve the port properly.
fn serving_failure(route: &Route, via: &str, what: &str) -> Cause {
    Cause::new(CauseId::ProbeFailed, format!("{} via {via}: {what}", route.service)).with_fix(format!(
        "the service's pods do not serve it properly; check `kubectl get pods -n {0}` and `kubectl logs -n {0}`",
        route.namespace
    ))
}

/// A probe through a port-forward stream. The stream opening proves nothing: the API server
/// answers the upgrade before it dials the kubelet, which dials the pod after that, and
/// either failure comes back later on the error channel. So the probe is healthy only on an
/// answer from the pod (any bytes, for `tcp`), or, for `tcp` to a server that waits for its
/// client, once `settle` has passed with neither a failure reported nor the stream closed.
async fn through_tunnel(
    conversation: &Conversation,
    tunnel: crate::tunnel::Tunnel,
    route: &Route,
    timeout: Duration,
    settle: Duration,
) -> Result<(), Cause> {
    let crate::tunnel::Tunnel {
        mut io,
        pod,
        target: via,
        ..
    } = tunnel;
    let talk = match conversation {
        Conversation::Tcp => first_word(&mut io, settle).await,
        other => match tokio::time::timeout(timeout + settle, other.run(&mut io)).await {
            Ok(outcome) => outcome.map_err(Some),
            Err(_) => Err(Some(format!("no answer in {:?}", timeout + settle))),
        },
    };
    // The far side's verdict first: when it spoke, the stream's end that followed is its doing.
    // A read came to it, or it has arrived behind a write that failed.
    if talk.is_err()
        && let Some(message) = io.verdict_now()
    {
        return Err(crate::tunnel::verdict(message, route, &pod));
    }
    match talk {
        Ok(()) => Ok(()),
        Err(Some(what)) => Err(serving_failure(route, &via, &what)),
        Err(None) => Err(Cause::new(
            CauseId::TunnelFailed,
            format!("the port-forward to {via} closed before the pod said anything, with no reason given"),
        )
        .with_fix("the API server or the node's kubelet ended it: check `kubectl get nodes` and the pod's events")),
    }
}

/// For `tcp` through a tunnel: the pod's first bytes, or `settle` of quiet, prove the stream;
/// its end first (`Err(None)`) does not.
async fn first_word<S: AsyncRead + Unpin>(mut stream: S, settle: Duration) -> Result<(), Option<String>> {
    let mut byte = [0u8; 1];
    match tokio::time::timeout(settle, stream.read(&mut byte)).await {
        Err(_) | Ok(Ok(1..)) => Ok(()),
        Ok(Ok(0)) => Err(None),
        Ok(Err(e)) => Err(Some(format!("the stream failed: {e}"))),
    }
}

/// How long a TCP probe waits for a connection to be refused after it was accepted.
const SETTLE: Duration = Duration::from_millis(150);

/// A TCP probe's connect can succeed at a proxy in front of the pod (docker-proxy for kind's
/// port mappings, a userspace kube-proxy), which then closes or resets when the pod refuses.
/// A connection still open after a moment, or one that says something, is served.
async fn settled<S: AsyncRead + Unpin>(mut stream: S) -> Result<(), String> {
    let mut byte = [0u8; 1];
    match tokio::time::timeout(SETTLE, stream.read(&mut byte)).await {
        Err(_) | Ok(Ok(1..)) => Ok(()),
        Ok(Ok(0)) => Err("accepted, then closed at once: nothing serves behind the nodePort".into()),
        Ok(Err(e)) => Err(format!("accepted, then {e}: nothing serves behind the nodePort")),
    }
}

async fn http<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, path: &str, strict: bool) -> Result<(), String> {
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: porthole-probe\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("cannot send the request: {e}"))?;
    let mut head = [0u8; 64];
    let mut len = 0;
    while len < 12 {
        match stream.read(&mut head[len..]).await {
            Ok(0) => return Err("connection closed before an HTTP status line".into()),
            Ok(n) => len += n,
            Err(e) => return Err(format!("cannot read the response: {e}")),
        }
    }
    let line = String::from_utf8_lossy(&head[..len]);
    let status: u16 = line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {:?}", line.lines().next().unwrap_or_default()))?;
    if strict && status >= 500 {
        return Err(format!("GET {path} answered {status}"));
    }
    Ok(())
}

/// HTTP/2 in the clear: the client preface and an empty SETTINGS frame, which a server answers
/// (with its own SETTINGS, or an HTTP/1 error from one that speaks only that: `auto` takes any
/// answer, so the first byte decides).
async fn h2c<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) -> Result<(), String> {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    const SETTINGS: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];
    let hello = [PREFACE, &SETTINGS[..]].concat();
    stream
        .write_all(&hello)
        .await
        .map_err(|e| format!("cannot send the HTTP/2 preface: {e}"))?;
    let mut byte = [0u8; 1];
    match stream.read(&mut byte).await {
        Ok(0) => Err("connection closed before an HTTP/2 answer (does it speak gRPC in the clear?)".into()),
        Ok(_) => Ok(()),
        Err(e) => Err(format!("cannot read the HTTP/2 answer: {e}")),
    }
}

async fn tls<S: AsyncRead + AsyncWrite + Unpin>(stream: S) -> Result<(), String> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(insecure::config()));
    let name = rustls::pki_types::ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    connector
        .connect(name, stream)
        .await
        .map_err(|e| format!("TLS handshake failed: {e}"))?;
    Ok(())
}

/// A stream that remembers whether the far end sent anything.
struct Answered<S> {
    inner: S,
    answered: bool,
}

impl<S: AsyncRead + Unpin> AsyncRead for Answered<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.answered = true;
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Answered<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A TLS client that accepts any certificate: the probe asks "does it speak TLS", not "is it trusted"
/// (local clusters use self-signed certificates). No data is ever sent over it.
mod insecure {
    use std::sync::Arc;

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms, ring};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};

    #[derive(Debug)]
    struct AnyCertificate(WebPkiSupportedAlgorithms);

    impl ServerCertVerifier for AnyCertificate {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.supported_schemes()
        }
    }

    pub(super) fn config() -> ClientConfig {
        let provider: CryptoProvider = ring::default_provider();
        let algorithms = provider.signature_verification_algorithms;
        ClientConfig::builder_with_provider(Arc::new(provider))
            .with_safe_default_protocol_versions()
            // The ring provider supports the default protocol versions.
            .expect("ring supports TLS 1.2 and 1.3")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(algorithms)))
            .with_no_client_auth()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::{Host, NodeTarget};
    use tokio::net::TcpListener;

    const BOUNDS: Bounds = Bounds {
        timeout: Duration::from_secs(5),
        settle: Duration::from_secs(1),
    };

    fn route_to(addrs: &[std::net::SocketAddr]) -> Route {
        let ips: Vec<std::net::IpAddr> = addrs.iter().map(|a| a.ip()).collect();
        Route::for_tests(&ips, addrs[0].port(), 1)
    }

    async fn serve_once(answer: &'static [u8]) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(answer).await;
        });
        addr
    }

    #[tokio::test]
    async fn http_probe_reads_the_status() {
        let ok = serve_once(b"HTTP/1.1 204 No Content\r\n\r\n").await;
        assert_eq!(
            check(&Probe::Http("/".into()), &route_to(&[ok]), None, BOUNDS, 0).await,
            Ok(())
        );
        let bad = serve_once(b"HTTP/1.1 503 Service Unavailable\r\n\r\n").await;
        let cause = check(&Probe::Http("/healthz".into()), &route_to(&[bad]), None, BOUNDS, 0)
            .await
            .unwrap_err();
        assert_eq!(cause.id, CauseId::ProbeFailed);
        assert!(cause.message.contains("GET /healthz answered 503"), "{}", cause.message);
    }

    #[tokio::test]
    async fn auto_speaks_what_the_port_says() {
        let probe = |protocol| {
            let mut route = Route::for_tests(&["127.0.0.1".parse().unwrap()], 1, 1);
            route.protocol = protocol;
            Conversation::of(&Probe::Auto, &route)
        };
        assert_eq!(probe(Protocol::Tcp), Conversation::Tcp);
        assert_eq!(
            probe(Protocol::Http),
            Conversation::Http {
                path: "/".into(),
                strict: false
            }
        );
        assert_eq!(probe(Protocol::Tls), Conversation::Tls { strict: false });
        assert_eq!(probe(Protocol::H2c), Conversation::H2c);
        // An explicit probe wins over the port.
        let mut route = Route::for_tests(&["127.0.0.1".parse().unwrap()], 1, 1);
        route.protocol = Protocol::Http;
        assert_eq!(Conversation::of(&Probe::Tcp, &route), Conversation::Tcp);
    }

    #[tokio::test]
    async fn an_auto_probe_takes_any_answer_an_http_probe_wants_below_500() {
        let mut route = route_to(&[serve_once(b"HTTP/1.1 500 Internal Server Error\r\n\r\n").await]);
        route.protocol = Protocol::Http;
        assert_eq!(check(&Probe::Auto, &route, None, BOUNDS, 0).await, Ok(()));
        // A port named `http` that speaks something else: a server answered all the same.
        let mut route = route_to(&[serve_once(b"SSH-2.0-OpenSSH_9.6\r\n").await]);
        route.protocol = Protocol::Http;
        assert_eq!(check(&Probe::Auto, &route, None, BOUNDS, 0).await, Ok(()));
        // Closed without a word: nothing serves.
        let mut route = route_to(&[serve_once(b"").await]);
        route.protocol = Protocol::Http;
        let cause = check(&Probe::Auto, &route, None, BOUNDS, 0).await.unwrap_err();
        assert!(
            cause.message.contains("closed before an HTTP status line"),
            "{}",
            cause.message
        );
        let strict = route_to(&[serve_once(b"HTTP/1.1 500 Internal Server Error\r\n\r\n").await]);
        assert!(check(&Probe::Http("/".into()), &strict, None, BOUNDS, 0).await.is_err());
    }

    #[tokio::test]
    async fn the_h2c_probe_sends_the_preface_and_wants_an_answer() {
        // A gRPC server's first frame: SETTINGS, empty.
        let mut route = route_to(&[serve_once(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await]);
        route.protocol = Protocol::H2c;
        assert_eq!(check(&Probe::Auto, &route, None, BOUNDS, 0).await, Ok(()));
        let mut route = route_to(&[serve_once(b"").await]);
        route.protocol = Protocol::H2c;
        let cause = check(&Probe::Auto, &route, None, BOUNDS, 0).await.unwrap_err();
        assert!(
            cause.message.contains("closed before an HTTP/2 answer"),
            "{}",
            cause.message
        );
    }

    #[tokio::test]
    async fn an_auto_tls_probe_takes_an_alert_as_a_tls_answer() {
        // A fatal handshake_failure alert, as a server with no certificate for the name sends.
        let alert: &'static [u8] = &[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28];
        let mut route = route_to(&[serve_once(alert).await]);
        route.protocol = Protocol::Tls;
        assert_eq!(check(&Probe::Auto, &route, None, BOUNDS, 0).await, Ok(()));
        let route = route_to(&[serve_once(alert).await]);
        assert!(check(&Probe::Tls, &route, None, BOUNDS, 0).await.is_err());
    }

    #[tokio::test]
    async fn tls_probe_fails_on_plain_tcp() {
        let plain = serve_once(b"SSH-2.0-nope\r\n").await;
        let cause = check(&Probe::Tls, &route_to(&[plain]), None, BOUNDS, 0)
            .await
            .unwrap_err();
        assert_eq!(cause.id, CauseId::ProbeFailed);
    }

    #[tokio::test]
    async fn connect_tries_the_next_node_and_names_failures() {
        // A port that was just free: binding and dropping leaves nothing listening there.
        let dead = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let live = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut route = route_to(&[dead]);
        route.nodes_mut().node_port = live.local_addr().unwrap().port();
        route.nodes_mut().targets.push(NodeTarget {
            node: "b".into(),
            host: Host::Ip(live.local_addr().unwrap().ip()),
        });
        // Both targets share the nodePort; the first is a different loopback address with nothing on it.
        route.nodes_mut().targets[0].host = Host::Ip("127.0.0.254".parse().unwrap());
        assert!(route.connect(Duration::from_secs(5)).await.is_ok());
        route.nodes_mut().targets.truncate(1);
        let cause = route.connect(Duration::from_secs(5)).await.unwrap_err();
        assert_eq!(cause.id, CauseId::NodeUnreachable);
        assert!(cause.message.contains("127.0.0.254"), "{}", cause.message);
    }
}

#[cfg(test)]
mod schedule_tests {
    use super::*;
    use crate::cause::CauseId;
    use crate::health::ProbeRecord;
    use crate::tuning::Tuning;
    use std::sync::atomic::AtomicBool;
    use std::sync::atomic::Ordering;
    use tokio::time::Instant;

    fn route(node_port: u16, ready_endpoints: usize) -> Option<Arc<Route>> {
        Some(Arc::new(Route::for_tests(
            &["127.0.0.2".parse().unwrap()],
            node_port,
            ready_endpoints,
        )))
    }

    /// The schedule running with a check that fails while `failing` is set.
    struct Harness {
        routes: watch::Sender<Option<Arc<Route>>>,
        wakes: watch::Sender<u64>,
        failing: Arc<AtomicBool>,
        results: mpsc::Receiver<Probed>,
        cancel: CancellationToken,
    }

    impl Harness {
        async fn next(&mut self) -> Option<Result<(), Cause>> {
            self.results.recv().await.map(|p| p.outcome)
        }
    }

    fn start(tuning: Tuning) -> Harness {
        let (routes, routes_rx) = watch::channel(route(30080, 1));
        let (wakes, wakes_rx) = watch::channel(0);
        let (tx, results) = mpsc::channel(16);
        let failing = Arc::new(AtomicBool::new(false));
        let cancel = CancellationToken::new();
        let (f, c) = (failing.clone(), cancel.clone());
        tokio::spawn(async move {
            let check = move |_route: Arc<Route>| {
                let fail = f.load(Ordering::SeqCst);
                async move {
                    if fail {
                        Err(Cause::new(CauseId::ProbeFailed, "x"))
                    } else {
                        Ok(())
                    }
                }
            };
            schedule(&tuning, routes_rx, wakes_rx, &c, check, tx).await;
        });
        Harness {
            routes,
            wakes,
            failing,
            results,
            cancel,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_under_way_when_the_route_changes_is_dropped_for_one_of_the_new_route() {
        let (routes, routes_rx) = watch::channel(route(30080, 1));
        let (tx, mut results) = mpsc::channel(16);
        let cancel = CancellationToken::new();
        let slow = |_route: Arc<Route>| async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            Ok(())
        };
        let c = cancel.clone();
        let (_wakes, wakes_rx) = watch::channel(0);
        tokio::spawn(async move { schedule(&Tuning::default(), routes_rx, wakes_rx, &c, slow, tx).await });
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(1)).await;
        routes.send_replace(route(30081, 1));
        let probed = results.recv().await.unwrap();
        assert_eq!(
            probed.route.nodes().unwrap().node_port,
            30081,
            "the old route's probe said nothing"
        );
        assert!(probed.is_for(routes.borrow().as_ref()));
        assert_eq!(t0.elapsed(), Duration::from_secs(4), "the new route probed at once");
        // A route published again (the same content, a new probe config) is not proven by it.
        routes.send_modify(|r| *r = r.as_deref().map(|r| Arc::new(r.clone())));
        assert!(!probed.is_for(routes.borrow().as_ref()));
        cancel.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn probes_at_the_interval_and_retries_sooner_after_a_failure() {
        let tuning = Tuning::default();
        let mut h = start(tuning.clone());
        let t0 = Instant::now();
        assert_eq!(h.next().await, Some(Ok(())));
        assert_eq!(t0.elapsed(), Duration::ZERO, "the first probe runs at once");
        assert_eq!(h.next().await, Some(Ok(())));
        assert_eq!(t0.elapsed(), tuning.probe_interval);
        h.failing.store(true, Ordering::SeqCst);
        assert!(h.next().await.unwrap().is_err());
        assert_eq!(t0.elapsed(), tuning.probe_interval * 2);
        assert!(h.next().await.unwrap().is_err());
        assert_eq!(t0.elapsed(), tuning.probe_interval * 2 + tuning.probe_retry);
        h.cancel.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_wake_probes_at_once() {
        let tuning = Tuning::default();
        let mut h = start(tuning.clone());
        assert_eq!(h.next().await, Some(Ok(())));
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(1)).await;
        h.wakes.send_modify(|n| *n += 1);
        assert_eq!(h.next().await, Some(Ok(())));
        assert_eq!(t0.elapsed(), Duration::from_secs(1), "not at the interval: at once");
        h.cancel.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_forward_that_stays_down_is_probed_less_and_less_often_up_to_the_interval() {
        let tuning = Tuning::default();
        let mut h = start(tuning.clone());
        assert_eq!(h.next().await, Some(Ok(())));
        h.failing.store(true, Ordering::SeqCst);
        let mut at = Vec::new();
        let t0 = Instant::now();
        for _ in 0..8 {
            assert!(h.next().await.unwrap().is_err());
            at.push(t0.elapsed());
        }
        let gaps: Vec<u64> = at.windows(2).map(|w| (w[1] - w[0]).as_secs()).collect();
        // Threshold 3: two quick retries confirm it, then 2, 4 and the 5 s interval.
        assert_eq!(gaps, [1, 1, 2, 4, 5, 5, 5], "{at:?}");
        // Back: probed at the interval again, and a new failure is retried quickly.
        h.failing.store(false, Ordering::SeqCst);
        assert_eq!(h.next().await, Some(Ok(())));
        h.failing.store(true, Ordering::SeqCst);
        let t1 = Instant::now();
        assert!(h.next().await.unwrap().is_err());
        assert!(h.next().await.unwrap().is_err());
        assert_eq!(t1.elapsed(), tuning.probe_interval + tuning.probe_retry);
        h.cancel.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_route_change_probes_at_once_and_routes_without_endpoints_are_skipped() {
        let tuning = Tuning::default();
        let mut h = start(tuning.clone());
        assert_eq!(h.next().await, Some(Ok(())));
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(1)).await;
        h.routes.send_replace(route(30081, 1));
        assert_eq!(h.next().await, Some(Ok(())));
        assert_eq!(t0.elapsed(), Duration::from_secs(1));
        h.routes.send_replace(route(30081, 0));
        let waited = tokio::time::timeout(tuning.probe_interval * 3, h.next()).await;
        assert!(waited.is_err(), "no probe while no endpoint is ready");
        h.cancel.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_blip_does_not_take_a_forward_down_and_an_outage_is_confirmed_quickly() {
        use crate::cause::State;
        use crate::discovery::ClusterStatus;
        use crate::health::{Inputs, Listener};
        let tuning = Tuning::default();
        let mut h = start(tuning.clone());
        // The schedule's outcomes fed to the health rule, as a forward's supervisor does.
        let mut inputs = Inputs {
            enabled: true,
            listener: Listener::Bound,
            cluster: ClusterStatus::Connected,
            target: Some(Ok((*route(30080, 1).unwrap()).clone())),
            probe: ProbeRecord::default(),
            failure_threshold: tuning.failure_threshold,
        };
        inputs.probe.record(h.next().await.unwrap());
        assert_eq!(inputs.health().state, State::Healthy);
        h.failing.store(true, Ordering::SeqCst);
        inputs.probe.record(h.next().await.unwrap());
        assert_eq!(inputs.health().state, State::Healthy, "one failure is a blip");
        h.failing.store(false, Ordering::SeqCst);
        inputs.probe.record(h.next().await.unwrap());
        assert_eq!(inputs.health().state, State::Healthy);
        // Wait for a regular probe, then fail from there on.
        h.failing.store(true, Ordering::SeqCst);
        let t0 = Instant::now();
        for n in 1..=tuning.failure_threshold {
            inputs.probe.record(h.next().await.unwrap());
            let expected = if n < tuning.failure_threshold {
                State::Healthy
            } else {
                State::Down
            };
            assert_eq!(inputs.health().state, expected, "after {n} failures");
        }
        assert_eq!(inputs.health().cause.unwrap().id, CauseId::ProbeFailed);
        let confirmed = tuning.probe_interval + tuning.probe_retry * (tuning.failure_threshold - 1);
        assert_eq!(t0.elapsed(), confirmed, "down within one interval and the retries");
        h.cancel.cancel();
    }
}
