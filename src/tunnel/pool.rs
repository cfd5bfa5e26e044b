//! Port-forward streams opened ahead of need, per tunnelled forward: a new connection takes a
//! ready stream at once instead of waiting for a TCP connect, a TLS handshake, a WebSocket
//! upgrade and the kubelet's dial to the pod; the pool refills behind it.
//!
//! A held stream already holds a connection to its pod (the kubelet dials when the stream is
//! created), so a stream is only handed out while it is sound: its pod still in the route, its
//! error channel silent, the pod not having closed it, and younger than `max_age` (well under the
//! idle timeouts servers put on a connection that says nothing). The pool grows under bursts
//! (a take that finds it empty raises its target), up to `ceiling`, and shrinks back to `floor`
//! once nobody has taken a stream for `idle`. Held streams are not connections: they are in no
//! connection count. Unless the config asks for a pool, streams are held only for ports that
//! speak HTTP, TLS or gRPC (see [`PoolSettings::any_protocol`]).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::Tunnel;
use crate::cause::Cause;
use crate::route::Route;
use crate::tuning::PoolSettings;

/// After an opening failed, the next one waits this long.
const RETRY: Duration = Duration::from_secs(1);

/// The streams of one forward. Cheap to clone; clones share the streams.
#[derive(Clone)]
pub struct Pool {
    shared: Arc<Shared>,
}

struct Shared {
    settings: PoolSettings,
    held: Mutex<Held>,
    /// A take: refill now.
    wake: Notify,
}

struct Held {
    /// `settings`' floor, ceiling and `any_protocol`, as the forward's config says now.
    floor: usize,
    ceiling: usize,
    any_protocol: bool,
    ready: VecDeque<Ready>,
    /// How many to hold, between `floor` and `ceiling`.
    target: usize,
    last_take: Instant,
    /// No opening before this: a stream was just handed out (`PoolSettings::refill_defer`).
    refill_at: Option<Instant>,
}

/// A held stream; dropping it ends its WebSocket.
struct Ready {
    tunnel: Tunnel,
    opened: Instant,
}

/// Whether the pool holds streams for `route`: a tunnel, to a port that speaks HTTP, TLS or gRPC
/// unless the config asked for a pool.
fn serves(held: &Held, route: &Route) -> bool {
    route.is_tunnel() && (held.any_protocol || route.protocol != crate::route::Protocol::Tcp)
}

/// Whether `tunnel` goes to one of `route`'s ready pods, on the port the route says.
fn in_route(tunnel: &Tunnel, route: &Route) -> bool {
    route.pods().contains(&tunnel.pod)
}

impl Pool {
    pub fn new(settings: PoolSettings) -> Pool {
        let settings = PoolSettings {
            ceiling: settings.ceiling.max(settings.floor),
            max_opening: settings.max_opening.max(1),
            ..settings
        };
        Pool {
            shared: Arc::new(Shared {
                settings,
                held: Mutex::new(Held {
                    floor: settings.floor,
                    ceiling: settings.ceiling,
                    any_protocol: settings.any_protocol,
                    ready: VecDeque::new(),
                    target: settings.floor,
                    last_take: Instant::now(),
                    refill_at: None,
                }),
                wake: Notify::new(),
            }),
        }
    }

    /// New bounds from the forward's config: the target moves into them at once.
    pub fn set_bounds(&self, floor: usize, ceiling: usize, any_protocol: bool) {
        let ceiling = ceiling.max(floor);
        let mut held = self.held();
        held.floor = floor;
        held.ceiling = ceiling;
        held.any_protocol = any_protocol;
        held.target = held.target.clamp(floor, ceiling);
        drop(held);
        self.shared.wake.notify_one();
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.shared.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A sound held stream to one of `route`'s pods, or `None` (the caller opens its own, and
    /// the pool holds more from now on).
    pub fn take(&self, route: &Route) -> Option<Tunnel> {
        let max_age = self.shared.settings.max_age;
        let mut held = self.held();
        if held.ceiling == 0 || !serves(&held, route) {
            return None;
        }
        let now = Instant::now();
        held.last_take = now;
        while let Some(mut ready) = held.ready.pop_front() {
            let sound = ready.opened.elapsed() < max_age && in_route(&ready.tunnel, route) && ready.tunnel.usable();
            if sound {
                // Replaced once it has carried its first answer (`tunnel::relay` calls
                // `refill_now`), or after the deferral.
                held.refill_at = Some(now + self.shared.settings.refill_defer);
                self.shared.wake.notify_one();
                ready.tunnel.pool = Some(self.clone());
                return Some(ready.tunnel);
            }
            // Dropped here: its WebSocket ends.
        }
        // Empty: a burst, or a first connection. Hold more from now on, and open at once.
        held.target = (held.target.max(1) * 2).min(held.ceiling);
        held.refill_at = None;
        self.shared.wake.notify_one();
        None
    }

    /// A stream handed out carried its first answer: replace it now.
    pub(super) fn refill_now(&self) {
        self.held().refill_at = None;
        self.shared.wake.notify_one();
    }

    /// How many streams are held now (for tests and the log).
    pub fn len(&self) -> usize {
        self.held().ready.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps the pool filled for the route `routes` publishes while it is a tunnel, until
    /// `cancel`; then every held stream is closed. `client` gives the API client of the moment,
    /// `timeout` bounds each opening.
    pub async fn fill(
        &self,
        mut routes: watch::Receiver<Option<Arc<Route>>>,
        client: impl Fn() -> Option<kube::Client>,
        timeout: Duration,
        cancel: CancellationToken,
    ) {
        let settings = self.shared.settings;
        let mut opening: JoinSet<Result<Tunnel, Cause>> = JoinSet::new();
        let mut next_pod = 0usize;
        let mut retry_at: Option<Instant> = None;
        loop {
            let route = routes.borrow_and_update().clone();
            let deadline = {
                let mut held = self.held();
                let route = route.filter(|r| serves(&held, r));
                let now = Instant::now();
                // Sound streams only: their pod still ready, young enough, not failed.
                held.ready.retain_mut(|ready| {
                    route.as_ref().is_some_and(|route| {
                        now - ready.opened < settings.max_age && in_route(&ready.tunnel, route) && ready.tunnel.usable()
                    })
                });
                if now - held.last_take >= settings.idle && held.target > held.floor {
                    held.target = (held.target / 2).max(held.floor);
                    held.last_take = now;
                    debug!(target = held.target, "idle: holding fewer streams");
                }
                while held.ready.len() > held.target {
                    held.ready.pop_front();
                }
                let retry_passed = retry_at.is_none_or(|at| now >= at);
                if held.refill_at.is_some_and(|at| now >= at) {
                    held.refill_at = None;
                }
                let refill_at = held.refill_at;
                if let (Some(route), Some(client), true, None) = (&route, client(), retry_passed, refill_at) {
                    let count = route.pods().len();
                    while count > 0
                        && held.ready.len() + opening.len() < held.target
                        && opening.len() < settings.max_opening
                    {
                        let (route, client) = (route.clone(), client.clone());
                        // Spread across the ready pods.
                        let first = next_pod % count;
                        next_pod = next_pod.wrapping_add(1);
                        opening
                            .spawn(async move { super::open(&client, &route, first, timeout).await.map(|(t, _)| t) });
                    }
                }
                // Wake for the oldest stream's replacement, the next decay, the retry or the refill.
                let oldest = held.ready.iter().map(|r| r.opened + settings.max_age).min();
                let decay = (held.target > held.floor).then_some(held.last_take + settings.idle);
                [oldest, decay, retry_at.filter(|_| !retry_passed), refill_at]
                    .into_iter()
                    .flatten()
                    .min()
            };
            tokio::select! {
                _ = cancel.cancelled() => break,
                changed = routes.changed() => if changed.is_err() { break },
                _ = self.shared.wake.notified() => {}
                Some(done) = opening.join_next() => {
                    let Ok(opened) = done else { continue };
                    match opened {
                        Ok(tunnel) => {
                            let current = routes.borrow().clone();
                            // Opened for a route that changed meanwhile: only if its pod is still in.
                            let fits = current.as_deref().is_some_and(|r| serves(&self.held(), r) && in_route(&tunnel, r));
                            let ready = Ready { tunnel, opened: Instant::now() };
                            if fits {
                                retry_at = None;
                                self.held().ready.push_back(ready);
                            }
                        }
                        Err(cause) => {
                            debug!(%cause, "opening a stream ahead of need failed");
                            retry_at = Some(Instant::now() + RETRY);
                        }
                    }
                }
                _ = sleep_until(deadline) => {}
            }
        }
        opening.abort_all();
        self.held().ready.clear();
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
