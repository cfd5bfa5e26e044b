//! The engine's timings: the defaults suit a laptop; tests shorten them.

use std::time::Duration;

/// Timings of the engine; the defaults suit a laptop, tests shorten them.
#[derive(Debug, Clone)]
pub struct Tuning {
    /// Between probes while healthy.
    pub probe_interval: Duration,
    /// Between probes after a failure, so a real outage is confirmed quickly.
    pub probe_retry: Duration,
    /// Bound on one probe, and on each connect attempt to a node.
    pub probe_timeout: Duration,
    /// Consecutive failed probes that make a forward `down`.
    pub failure_threshold: u32,
    /// Bound on connecting one client connection to one node.
    pub connect_timeout: Duration,
    /// Between attempts to bind a local port that is taken.
    pub bind_retry: Duration,
    /// How long open connections may drain when a forward is removed or the engine stops.
    pub drain_timeout: Duration,
    /// How long a new connection is held, instead of refused, while the forward has no usable
    /// path (a rollout replacing the only pod, a service being re-created).
    pub hold: Duration,
    /// How long a probe through a tunnel listens for a late failure (the API server answers
    /// the upgrade first and reaches the kubelet after) before a quiet stream counts as open.
    pub tunnel_settle: Duration,
    /// Bound on each read of the API requests and watches (not of tunnels, which carry quiet
    /// connections); longer than a watch's server-side timeout.
    pub api_read_timeout: Duration,
    /// How often the engine looks whether the machine slept or its network changed.
    pub wake_tick: Duration,
    /// The streams each tunnelled forward opens ahead of need (floor and ceiling also per
    /// forward or cluster: `tunnel_pool`).
    pub pool: PoolSettings,
}

/// How a tunnelled forward's pool of ready streams sizes itself (`tunnel::Pool`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSettings {
    /// Streams held while nobody connects (0: none, every connection opens its own).
    pub floor: usize,
    /// The most held at once, however large a burst (0: no pool).
    pub ceiling: usize,
    /// The most being opened at once.
    pub max_opening: usize,
    /// A held stream older than this is replaced: servers close a connection that has said
    /// nothing after a while (Apache's RequestReadTimeout: 20 s; Node's headersTimeout and
    /// nginx's client_header_timeout: 60 s), and one closed just as it is handed out would fail
    /// its client.
    pub max_age: Duration,
    /// With no stream taken for this long, the pool holds half as many, down to `floor`.
    pub idle: Duration,
    /// A stream handed out is replaced once its pod has answered through it, or after this
    /// long: opening one (a TCP connect, a TLS handshake, an upgrade, the kubelet's dial) would
    /// take the same cores as the answer. A take that finds the pool empty opens at once.
    pub refill_defer: Duration,
    /// Whether streams are held for a port whose protocol is not known to be HTTP, TLS or
    /// gRPC. A held stream is a connection the pod's server sees open and then closed unused:
    /// web servers expect that (browsers preconnect), a database counts it as an aborted
    /// handshake (MySQL blocks a host after 100 in a row). Set by a `tunnel_pool` of the
    /// forward's or cluster's own.
    pub any_protocol: bool,
}

impl Default for PoolSettings {
    fn default() -> PoolSettings {
        PoolSettings {
            floor: 1,
            ceiling: 8,
            max_opening: 4,
            max_age: Duration::from_secs(15),
            idle: Duration::from_secs(10),
            refill_defer: Duration::from_millis(3),
            any_protocol: false,
        }
    }
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            probe_interval: Duration::from_secs(5),
            probe_retry: Duration::from_secs(1),
            probe_timeout: Duration::from_secs(2),
            failure_threshold: 3,
            connect_timeout: Duration::from_secs(3),
            bind_retry: Duration::from_secs(2),
            drain_timeout: Duration::from_secs(5),
            hold: Duration::from_secs(5),
            // A real kubelet's refusal arrived after ~1.3 s, an unreachable kubelet's after
            // ~2 s (a DNS timeout in the API server): both inside it, with room.
            tunnel_settle: Duration::from_secs(3),
            api_read_timeout: Duration::from_secs(300),
            wake_tick: Duration::from_secs(2),
            pool: PoolSettings::default(),
        }
    }
}
