//! A forward's data path: its listener (bind retried, the holder of a taken port named), the
//! accept loop, and each connection: held while there is no path, then relayed to a node or
//! tunnelled to a pod.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{Instrument, debug, debug_span, info, warn};

use super::{Bind, Forward};
use crate::cause::{Cause, CauseId};
use crate::descriptors::{self, Throttle};
use crate::route::Route;
use crate::{holder, relay, tunnel};

/// At most one warning per this from a failing accept loop.
const WARN_EVERY: Duration = Duration::from_secs(10);

impl Forward {
    pub(super) async fn listen(
        self: Arc<Self>,
        bind_tx: watch::Sender<Bind>,
        routes: watch::Receiver<Option<Arc<Route>>>,
    ) {
        let addr = SocketAddr::new(self.spec.bind, self.spec.local_port);
        if !self.spec.bind.is_loopback() {
            warn!(%addr, "listening on a non-loopback address: other machines can reach this forward");
        }
        let mut failed: Option<std::io::ErrorKind> = None;
        let listener = loop {
            match TcpListener::bind(addr).await {
                Ok(listener) => break listener,
                Err(e) => {
                    // Once per failure, not per retry: finding the holder scans every process.
                    if failed != Some(e.kind()) {
                        failed = Some(e.kind());
                        let cause = tokio::task::spawn_blocking(move || bind_failure(addr, &e))
                            .await
                            .unwrap_or_else(|_| Cause::new(CauseId::ListenFailed, format!("cannot listen on {addr}")));
                        bind_tx.send_replace(Bind::Failed(cause));
                    }
                    tokio::select! {
                        _ = self.cancel.cancelled() => return,
                        _ = tokio::time::sleep(self.hub.tuning.bind_retry) => {}
                    }
                }
            }
        };
        let local = listener.local_addr().unwrap_or(addr);
        info!(%local, "listening");
        // `localhost` is ::1 too for many clients (curl, browsers, Node on macOS): listen there on
        // the same port. A failure (no IPv6, the port taken there) leaves IPv4 serving.
        let v6 = if self.spec.ipv6_loopback {
            let addr = SocketAddr::new(std::net::Ipv6Addr::LOCALHOST.into(), local.port());
            match TcpListener::bind(addr).await {
                Ok(listener) => {
                    info!(local = %addr, "listening");
                    Some(listener)
                }
                Err(e) => {
                    warn!(local = %addr, error = %e, "cannot listen on ::1 too: clients that resolve localhost to ::1 are refused");
                    None
                }
            }
        } else {
            None
        };
        bind_tx.send_replace(Bind::Bound(local));
        match v6 {
            Some(v6) => {
                tokio::join!(self.clone().accept(listener, routes.clone()), self.accept(v6, routes));
            }
            None => self.accept(listener, routes).await,
        }
    }

    async fn accept(self: Arc<Self>, listener: TcpListener, routes: watch::Receiver<Option<Arc<Route>>>) {
        let mut accept_failed = Throttle::new(WARN_EVERY);
        let mut at_limit = Throttle::new(WARN_EVERY);
        loop {
            let accepted = tokio::select! {
                _ = self.cancel.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let (client, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, usually: back off instead of spinning, and say so
                    // once in a while, not ten times a second.
                    if let Some(unsaid) = accept_failed.note(Instant::now()) {
                        if descriptors::exhausted(&e) {
                            let cause = descriptors::cause("accepting a connection");
                            warn!(%cause, unsaid, "accept failed");
                        } else {
                            warn!(error = %e, unsaid, "accept failed");
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let max = self.live.borrow().max_connections;
            if self.stats.active.load(Ordering::Relaxed) >= u64::from(max) {
                // Refused with a reset, so the client fails at once instead of waiting on a
                // connection nobody serves.
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                let _ = socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO));
                drop(client);
                if let Some(unsaid) = at_limit.note(Instant::now()) {
                    warn!(
                        max_connections = max,
                        unsaid, "at max_connections: refusing new connections"
                    );
                }
                continue;
            }
            let routes = routes.clone();
            // Counted from accept, so a forward stopped meanwhile waits for it to drain.
            let active = self.stats.open();
            let span = debug_span!("conn", %peer);
            let this = self.clone();
            self.hub.connections.spawn(
                async move {
                    this.serve(client, routes).await;
                    drop(active);
                }
                .instrument(span),
            );
        }
    }

    async fn serve(self: Arc<Self>, client: TcpStream, mut routes: watch::Receiver<Option<Arc<Route>>>) {
        let usable = |route: &Option<Arc<Route>>| route.as_ref().is_some_and(|r| r.ready_endpoints > 0);
        let mut route = routes.borrow_and_update().clone();
        if !usable(&route) {
            // No path right now: wait a little for one rather than reset the client at once.
            self.stats.held.fetch_add(1, Ordering::Relaxed);
            debug!("no usable path: holding the connection");
            let hold = self.live.borrow().hold.unwrap_or(self.hub.tuning.hold);
            let ready = tokio::select! {
                waited = tokio::time::timeout(hold, routes.wait_for(usable)) => match waited {
                    Ok(Ok(ready)) => Some(ready.clone()),
                    _ => None,
                },
                _ = self.cancel.cancelled() => None,
            };
            if let Some(ready) = ready {
                route = ready;
            }
        }
        // Every phase ends at shutdown, the connect to a node or the tunnel's opening included:
        // a node that swallows SYNs would otherwise hold Quit for connect_timeout per node.
        tokio::select! {
            _ = self.relay(client, route) => {}
            _ = self.cut.cancelled() => debug!("closed by shutdown"),
        }
    }

    async fn relay(&self, client: TcpStream, route: Option<Arc<Route>>) {
        let stats = &self.stats;
        let Some(route) = route else {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            debug!("no route: closing");
            return;
        };
        let first = self.preferred.load(Ordering::Relaxed);
        if route.is_tunnel() {
            return self.tunnel(client, &route, first).await;
        }
        let upstream = match route.connect_from(first, self.hub.tuning.connect_timeout).await {
            Ok((upstream, index)) => {
                if index != first {
                    self.preferred.store(index, Ordering::Relaxed);
                }
                upstream
            }
            Err(cause) => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                debug!(%cause, "closing");
                return;
            }
        };
        relay::prepare(&client, &upstream);
        if let Err(e) = relay::relay(&client, &upstream, &stats.bytes_up, &stats.bytes_down).await {
            debug!(error = %e, "connection ended with an error");
        }
    }

    /// The tunnel path of one connection: a port-forward stream to a ready pod.
    async fn tunnel(&self, client: TcpStream, route: &Route, first: usize) {
        let stats = &self.stats;
        let Some(api) = self.client() else {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            return debug!("no API connection yet: closing");
        };
        // A stream held ahead of need, else one of its own.
        let pooled = self.pool.take(route).map(|tunnel| {
            let index = route.pods().iter().position(|p| *p == tunnel.pod).unwrap_or(first);
            (tunnel, index)
        });
        let (tunnel, index) = match pooled {
            Some(taken) => taken,
            None => match tunnel::open(&api, route, first, self.hub.tuning.connect_timeout).await {
                Ok(opened) => opened,
                Err(cause) => {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    return debug!(%cause, "closing");
                }
            },
        };
        if index != first {
            self.preferred.store(index, Ordering::Relaxed);
        }
        debug!(target = %tunnel.target, "tunnel open");
        let settle = self.settle();
        if let Err(e) = tunnel::relay(client, tunnel, settle, &stats.bytes_up, &stats.bytes_down).await {
            debug!(error = %e, "tunnel ended with an error");
            if e.kind() == std::io::ErrorKind::ConnectionRefused {
                // The far side refused after the stream opened: the next pod next time.
                self.pass_over(index, route.pods().len());
            }
        }
    }
}

fn bind_failure(addr: SocketAddr, e: &std::io::Error) -> Cause {
    if e.kind() == std::io::ErrorKind::AddrInUse {
        let port = addr.port();
        return match holder::find(port, addr.ip()) {
            Some(h) => Cause::new(CauseId::PortInUse, format!("port {port} is held by {h}"))
                .with_fix(format!("stop it (`kill {}`) or choose another `local_port`", h.pid)),
            None => Cause::new(CauseId::PortInUse, format!("port {port} is in use by another process")).with_fix(
                format!("find it with `lsof -nP -iTCP:{port} -sTCP:LISTEN`, or choose another `local_port`"),
            ),
        };
    }
    Cause::new(CauseId::ListenFailed, format!("cannot listen on {addr}: {e}"))
        .with_fix("choose another `local_port` or `bind` address (ports below 1024 need privileges)")
}
