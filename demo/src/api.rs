//! The fake API server's HTTPS front: accepting connections (or refusing them when the
//! API is "down"), authorization faults, routing, GET and LIST answers and Status errors.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::cluster::Shared;
use super::portforward;
use super::selector::Selector;
use super::store::Kind;
use super::watch::{self, WatchRequest};

pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Accepts connections until the cluster shuts down. While the API is unreachable every
/// connection is accepted and closed at once, as docker-proxy does in front of a stopped node.
pub async fn serve(listener: TcpListener, acceptor: TlsAcceptor, shared: Arc<Shared>) {
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((tcp, _)) = accepted else { continue };
        if !shared.reachable.load(Ordering::SeqCst) {
            drop(tcp);
            continue;
        }
        // Go's net package sets TCP_NODELAY on every connection, kube-apiserver's included: small
        // writes (an upgrade's answer, a WebSocket frame) leave at once, never held by Nagle.
        let _ = tcp.set_nodelay(true);
        let (epoch, silence) = (shared.epoch(), shared.silence());
        let acceptor = acceptor.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            let connection = async {
                let Ok(tls) = acceptor.accept(Silenceable { io: tcp, silence }).await else {
                    return;
                };
                let (full, resumed) = &shared.handshakes;
                match tls.get_ref().1.handshake_kind() {
                    Some(rustls::HandshakeKind::Resumed) => resumed.fetch_add(1, Ordering::SeqCst),
                    _ => full.fetch_add(1, Ordering::SeqCst),
                };
                let service = service_fn(move |req| {
                    let shared = shared.clone();
                    async move { respond(&shared, req) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .with_upgrades()
                    .await;
            };
            // Cancelling the epoch drops the connection, and with it any live watch.
            tokio::select! {
                _ = epoch.cancelled() => {}
                _ = connection => {}
            }
        });
    }
}

/// A connection that can go silent: once `silence` is cancelled nothing is read or written on
/// it and it is never closed, as a peer that vanished looks (see
/// `FakeCluster::silence_connections`).
struct Silenceable<IO> {
    io: IO,
    silence: tokio_util::sync::CancellationToken,
}

impl<IO: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Silenceable<IO> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.silence.is_cancelled() {
            // Nothing ever arrives: no waker is kept, as none will be needed.
            return std::task::Poll::Pending;
        }
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Silenceable<IO> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.silence.is_cancelled() {
            return std::task::Poll::Pending;
        }
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.silence.is_cancelled() {
            return std::task::Poll::Pending;
        }
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.silence.is_cancelled() {
            return std::task::Poll::Pending;
        }
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Answers one request; an `Err` makes hyper drop the connection without an answer.
fn respond(shared: &Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, std::io::Error> {
    if !shared.reachable.load(Ordering::SeqCst) {
        return Err(std::io::Error::other("api unreachable"));
    }
    if shared.unauthorized.load(Ordering::SeqCst) {
        return Ok(status(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized", None));
    }
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if let ["api", "v1", "namespaces", ns, "pods", name, "portforward"] = segments[..]
        && matches!(*req.method(), Method::GET | Method::POST)
    {
        return Ok(portforward::handle(shared, req, ns, name));
    }
    if req.method() != Method::GET {
        let message = "the server does not allow this method on the requested resource";
        return Ok(status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            message,
            None,
        ));
    }
    let query = parse_query(req.uri().query().unwrap_or(""));
    if segments == ["version"] {
        return Ok(json_response(StatusCode::OK, &version()));
    }
    let Some(target) = route(&segments) else {
        return Ok(status(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
            Some(json!({})),
        ));
    };
    Ok(match target.name {
        Some(name) => get(shared, target.kind, target.namespace, name),
        None if is_true(query.get("watch")) => watch_or_error(shared, target, &query),
        None => list(shared, target, &query),
    })
}

/// What a request path names: a collection (`name` unset) or one object.
struct Target<'a> {
    kind: Kind,
    namespace: Option<&'a str>,
    name: Option<&'a str>,
}

fn route<'a>(segments: &[&'a str]) -> Option<Target<'a>> {
    let rest = match segments {
        ["api", "v1", rest @ ..] => rest,
        ["apis", "discovery.k8s.io", "v1", rest @ ..] => rest,
        ["apis", "apps", "v1", rest @ ..] => rest,
        _ => return None,
    };
    // Each kind is served under its own group only.
    let group = match segments[0] {
        "api" => "v1",
        _ => segments[1],
    };
    let target = |kind: Kind, namespace, name| {
        let served = kind.api_version().split('/').next() == Some(group);
        served.then_some(Target { kind, namespace, name })
    };
    match rest {
        ["namespaces"] => target(Kind::Namespace, None, None),
        ["namespaces", ns] => target(Kind::Namespace, None, Some(*ns)),
        ["namespaces", ns, plural] => target(kind_of(plural)?, Some(*ns), None),
        ["namespaces", ns, plural, name] => target(kind_of(plural)?, Some(*ns), Some(*name)),
        [plural] => target(kind_of(plural)?, None, None),
        [plural, name] => target(kind_of(plural)?, None, Some(*name)),
        _ => None,
    }
    .filter(|t| t.namespace.is_none() || t.kind.namespaced())
    .filter(|t| t.namespace.is_some() || !t.kind.namespaced() || t.name.is_none())
}

fn kind_of(plural: &str) -> Option<Kind> {
    [
        Kind::Namespace,
        Kind::Node,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Pod,
        Kind::Deployment,
    ]
    .into_iter()
    .find(|k| k.plural() == plural)
}

fn get(shared: &Shared, kind: Kind, namespace: Option<&str>, name: &str) -> Response<Body> {
    let state = shared.lock();
    match state.store.get(kind, namespace.unwrap_or(""), name) {
        Some(object) => json_response(StatusCode::OK, object),
        None => not_found(kind, name),
    }
}

/// A LIST answer. Every list is served whole and without a continue token, as the real
/// server does for lists at resourceVersion 0 served from its watch cache. A list in a
/// namespace that does not exist is empty, not an error, on the real server too.
fn list(shared: &Shared, target: Target<'_>, query: &HashMap<String, String>) -> Response<Body> {
    let selector = match selector(query) {
        Ok(s) => s,
        Err(response) => return response,
    };
    let state = shared.lock();
    let items: Vec<Value> = state
        .store
        .list(target.kind, target.namespace)
        .into_iter()
        .filter(|o| selector.matches(o))
        .map(|mut o| {
            // List items carry no kind or apiVersion on the wire; the list does.
            if let Some(map) = o.as_object_mut() {
                map.remove("kind");
                map.remove("apiVersion");
            }
            o
        })
        .collect();
    let body = json!({
        "kind": format!("{}List", target.kind.name()),
        "apiVersion": target.kind.api_version(),
        "metadata": {"resourceVersion": state.store.rv().to_string()},
        "items": items,
    });
    json_response(StatusCode::OK, &body)
}

fn watch_or_error(shared: &Arc<Shared>, target: Target<'_>, query: &HashMap<String, String>) -> Response<Body> {
    let selector = match selector(query) {
        Ok(s) => s,
        Err(response) => return response,
    };
    let resource_version = query.get("resourceVersion").filter(|v| !v.is_empty());
    let resource_version = match resource_version.map(|v| v.parse::<u64>()) {
        None => None,
        Some(Ok(rv)) => Some(rv),
        Some(Err(_)) => {
            let message = "resourceVersion: Invalid value: must be a decimal number";
            return status(StatusCode::BAD_REQUEST, "BadRequest", message, None);
        }
    };
    let timeout_seconds = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(1800);
    let request = WatchRequest {
        kind: target.kind,
        namespace: target.namespace.map(str::to_string),
        selector,
        resource_version,
        bookmarks: is_true(query.get("allowWatchBookmarks")),
        send_initial_events: is_true(query.get("sendInitialEvents")),
        timeout: std::time::Duration::from_secs(timeout_seconds),
    };
    if request.send_initial_events && query.get("resourceVersionMatch").map(String::as_str) != Some("NotOlderThan") {
        let message =
            "resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan";
        return status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", message, None);
    }
    let body = watch::start(shared, request);
    let mut response = Response::new(body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

#[allow(clippy::result_large_err)]
fn selector(query: &HashMap<String, String>) -> Result<Selector, Response<Body>> {
    let labels = query.get("labelSelector").map(String::as_str);
    let fields = query.get("fieldSelector").map(String::as_str);
    Selector::parse(labels, fields).map_err(|message| status(StatusCode::BAD_REQUEST, "BadRequest", &message, None))
}

fn is_true(value: Option<&String>) -> bool {
    matches!(value.map(String::as_str), Some("true" | "1"))
}

/// The real server's 404 for a missing object, e.g. `services "x" not found`.
pub fn not_found(kind: Kind, name: &str) -> Response<Body> {
    let (resource, details) = match kind.api_version().split_once('/') {
        Some((group, _)) => (
            format!("{}.{group}", kind.plural()),
            json!({"name": name, "group": group, "kind": kind.plural()}),
        ),
        None => (kind.plural().to_string(), json!({"name": name, "kind": kind.plural()})),
    };
    let message = format!("{resource} \"{name}\" not found");
    status(StatusCode::NOT_FOUND, "NotFound", &message, Some(details))
}

/// A `Status` object as the API server sends for failures.
pub fn status_object(code: u16, reason: &str, message: &str, details: Option<Value>) -> Value {
    let mut status = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    });
    if let Some(details) = details {
        status["details"] = details;
    }
    status
}

pub fn status(code: StatusCode, reason: &str, message: &str, details: Option<Value>) -> Response<Body> {
    json_response(code, &status_object(code.as_u16(), reason, message, details))
}

fn json_response(code: StatusCode, value: &Value) -> Response<Body> {
    let bytes = serde_json::to_vec(value).expect("serialize JSON");
    let mut response = Response::new(Full::new(Bytes::from(bytes)).boxed_unsync());
    *response.status_mut() = code;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

fn version() -> Value {
    json!({
        "major": "1",
        "minor": "35",
        "emulationMajor": "1",
        "emulationMinor": "35",
        "minCompatibilityMajor": "1",
        "minCompatibilityMinor": "34",
        "gitVersion": "v1.35.0",
        "gitCommit": "66452049f3d692768c39c797b21b793dce80314e",
        "gitTreeState": "clean",
        "buildDate": "2025-12-17T12:32:06Z",
        "goVersion": "go1.25.5",
        "compiler": "gc",
        "platform": "linux/amd64"
    })
}

fn parse_query(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
