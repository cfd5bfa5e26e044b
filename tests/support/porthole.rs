//! Driving Porthole's engine against a `FakeCluster`: configs that point at it, short timings,
//! and waits on the engine's pushed snapshots (never sleeps).

use std::net::SocketAddr;
use std::time::Duration;

use porthole::cause::{CauseId, State};
use porthole::config::{Config, Source};
use porthole::engine::{Engine, ForwardStatus, Snapshot};
use porthole::{Event, Tuning};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::backend::Backend;
use super::cluster::FakeCluster;
use super::services::{port, service};

/// The namespace of [`echo_cluster`]'s service.
pub const NS: &str = "apps";

/// A two-node cluster (`NAME-control-plane`, `NAME-worker`) with namespace `apps` and an echo
/// service `echo` of `type_` (port `tcp` 7000), backed by the ready pod `echo-0`.
pub async fn echo_cluster(name: &str, type_: &str) -> (FakeCluster, Backend) {
    let cluster = FakeCluster::start(name).await;
    cluster.add_node(&format!("{name}-control-plane"));
    cluster.add_node(&format!("{name}-worker"));
    cluster.add_namespace(NS);
    let backend = Backend::echo().await;
    cluster.apply_service(service(NS, "echo", type_, vec![port("tcp", 7000)]));
    cluster.add_endpoint(NS, "echo", "echo-0", backend.addr(), true);
    (cluster, backend)
}

/// Generous bound for any wait on the engine: a failing test fails, it never hangs.
pub const WAIT: Duration = Duration::from_secs(30);

/// Short timings so tests see probes and retries quickly.
pub fn tuning() -> Tuning {
    Tuning {
        probe_interval: Duration::from_millis(300),
        probe_retry: Duration::from_millis(100),
        probe_timeout: Duration::from_secs(2),
        failure_threshold: 2,
        connect_timeout: Duration::from_secs(2),
        bind_retry: Duration::from_millis(100),
        drain_timeout: Duration::from_secs(5),
        hold: Duration::from_secs(10),
        // The fake's kubelet answers at once unless a test delays it (and sets its own).
        tunnel_settle: Duration::from_millis(500),
        api_read_timeout: Duration::from_secs(300),
        wake_tick: Duration::from_millis(100),
        // The default pool, shrinking after a short idle so tests see it.
        pool: porthole::tuning::PoolSettings {
            idle: Duration::from_millis(300),
            ..porthole::tuning::PoolSettings::default()
        },
    }
}

/// A config for `cluster` with the given `[[forward]]` tables (use `local_port = 0`). Forwards
/// take the nodePort path unless they say `mode = ...`: most engine tests are about it.
pub fn config(cluster: &FakeCluster, forwards: &str) -> Config {
    let text = format!(
        "[cluster]\ncontext = \"{}\"\nkubeconfig = \"{}\"\nmode = \"nodeport\"\n\n{forwards}",
        cluster.context(),
        cluster.kubeconfig().display()
    );
    Config::parse(&text, &Source::Preset("test")).expect("test config is valid")
}

/// One forward table.
pub fn forward(name: &str, namespace: &str, service: &str) -> String {
    format!("[[forward]]\nname = \"{name}\"\nnamespace = \"{namespace}\"\nservice = \"{service}\"\nlocal_port = 0\n")
}

/// Raises the soft descriptor limit: tests with hundreds of connections need more than 1024.
pub fn raise_fd_limit() {
    porthole::relay::raise_fd_limit();
}

/// Waits until `name`'s status satisfies `done`; panics with the last status after [`WAIT`].
pub async fn wait_for(engine: &Engine, name: &str, what: &str, done: impl Fn(&ForwardStatus) -> bool) -> ForwardStatus {
    let mut snapshots = engine.snapshot();
    let waited = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(f) = snapshots.borrow_and_update().forward(name).filter(|f| done(f)) {
                return f.clone();
            }
            snapshots.changed().await.expect("engine running");
        }
    })
    .await;
    match waited {
        Ok(status) => status,
        Err(_) => panic!(
            "forward {name} never became {what}; last: {:#?}",
            engine.snapshot().borrow().forward(name)
        ),
    }
}

/// Waits until the whole snapshot satisfies `done`.
pub async fn wait_snapshot(engine: &Engine, what: &str, done: impl Fn(&Snapshot) -> bool) -> Snapshot {
    let mut snapshots = engine.snapshot();
    let waited = tokio::time::timeout(WAIT, async {
        loop {
            let snapshot = snapshots.borrow_and_update().clone();
            if done(&snapshot) {
                return snapshot;
            }
            snapshots.changed().await.expect("engine running");
        }
    })
    .await;
    waited.unwrap_or_else(|_| panic!("snapshot never became {what}; last: {:#?}", *engine.snapshot().borrow()))
}

pub async fn wait_healthy(engine: &Engine, name: &str) -> ForwardStatus {
    wait_for(engine, name, "healthy", |f| f.health.state == State::Healthy).await
}

pub async fn wait_cause(engine: &Engine, name: &str, state: State, cause: CauseId) -> ForwardStatus {
    let what = format!("{state}/{cause}");
    wait_for(engine, name, &what, |f| {
        f.health.state == state && f.health.cause.as_ref().map(|c| c.id) == Some(cause)
    })
    .await
}

/// The next event that satisfies `matches`.
pub async fn wait_event(
    events: &mut tokio::sync::broadcast::Receiver<Event>,
    matches: impl Fn(&Event) -> bool,
) -> Event {
    tokio::time::timeout(WAIT, async {
        loop {
            let event = events.recv().await.expect("event stream open");
            if matches(&event) {
                return event;
            }
        }
    })
    .await
    .expect("event arrived")
}

pub fn local(status: &ForwardStatus) -> SocketAddr {
    status.local.expect("forward is bound")
}

/// Sends `msg` on a new connection to an echo service and returns what came back.
pub async fn echo_once(addr: SocketAddr, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(msg).await?;
    s.shutdown().await?;
    let mut back = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut back)).await??;
    Ok(back)
}

/// A round trip on an open connection.
pub async fn round_trip(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    s.write_all(msg).await?;
    let mut back = vec![0; msg.len()];
    tokio::time::timeout(WAIT, s.read_exact(&mut back)).await??;
    assert_eq!(back, msg);
    Ok(())
}

/// A deterministic byte stream (xorshift), so both ends can check it without storing it.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// FNV-1a of the bytes: compares large transfers without keeping two copies around.
pub fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

/// Opens `count` connections to `addr` first, so they are truly concurrent, then does a round
/// trip of `size` distinct bytes on each at once; returns them, still open.
pub async fn concurrent_round_trips(addr: SocketAddr, count: usize, size: usize) -> Vec<TcpStream> {
    let mut conns = Vec::with_capacity(count);
    for _ in 0..count {
        conns.push(TcpStream::connect(addr).await.expect("connect"));
    }
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, mut s)| {
            tokio::spawn(async move {
                round_trip(&mut s, &pattern(i as u64, size)).await.expect("round trip");
                s
            })
        })
        .collect();
    let mut open = Vec::with_capacity(count);
    for task in tasks {
        open.push(task.await.expect("task"));
    }
    open
}

/// An HTTP GET through `addr`; returns the body.
pub async fn http_get(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let response = http_get_on(&mut s).await;
    response.split("\r\n\r\n").nth(1).unwrap_or_default().to_string()
}

/// An HTTP GET on a connection already open; returns the whole response.
pub async fn http_get_on(s: &mut TcpStream) -> String {
    s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    tokio::time::timeout(WAIT, s.read_to_string(&mut response))
        .await
        .expect("an answer")
        .unwrap();
    response
}

/// A machine whose clocks and addresses the test moves: [`FakeHost::sleep`] is a laptop's lid
/// closed for that long, [`FakeHost::join_network`] a Wi-Fi or VPN change.
#[derive(Default)]
pub struct FakeHost {
    wall_ahead: std::sync::Mutex<Duration>,
    addresses: std::sync::Mutex<std::collections::BTreeSet<std::net::IpAddr>>,
}

impl FakeHost {
    pub fn sleep(&self, slept: Duration) {
        *self.wall_ahead.lock().unwrap() += slept;
    }

    pub fn join_network(&self, address: &str) {
        let mut addresses = self.addresses.lock().unwrap();
        addresses.clear();
        addresses.insert(address.parse().unwrap());
    }
}

impl porthole::host::Host for FakeHost {
    fn wall(&self) -> std::time::SystemTime {
        std::time::SystemTime::now() + *self.wall_ahead.lock().unwrap()
    }

    fn monotonic(&self) -> std::time::Instant {
        std::time::Instant::now()
    }

    fn addresses(&self) -> std::collections::BTreeSet<std::net::IpAddr> {
        self.addresses.lock().unwrap().clone()
    }
}
