//! The config file: what to forward, parsed from TOML, validated with errors that name file, line and key.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml::Spanned;

pub mod edit;
pub mod file;
pub mod plan;

pub use file::{ConfigFile, Reload};
pub use plan::{Change, Overrides, plan};

/// Environment variable naming the config file when `--config` is not given.
pub const CONFIG_ENV: &str = "PORTHOLE_CONFIG";

/// The presets shipped with Porthole: (name, description, TOML).
pub const PRESETS: &[(&str, &str, &str)] = &[
    (
        "openchoreo",
        "OpenChoreo / WSO2 agent-platform quick-start: console, API, traces, OTLP, gateway (default)",
        include_str!("../../presets/openchoreo.toml"),
    ),
    (
        "openchoreo-data-prepper",
        "older OpenChoreo quick-starts that sent traces to Data Prepper",
        include_str!("../../presets/openchoreo-data-prepper.toml"),
    ),
];

/// The preset used when no config file exists and the kubeconfig has its cluster's context.
pub const DEFAULT_PRESET: &str = "openchoreo";

/// The config a first run starts from when the default preset is not for this user's cluster:
/// the cluster table to fill in, and no forwards (also what `porthole init --empty` writes).
pub const EMPTY: &str = "\
# Porthole: localhost forwards to services in a local Kubernetes cluster.
# Add forwards with `porthole add NAME --namespace NS --service SVC --local-port PORT`, or in the
# app's settings; see `porthole presets` for complete examples.

[cluster]
# context = \"kind-my-cluster\"   # default: kubectl's current-context
";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {error}")]
    Read { path: PathBuf, error: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}:{line}: `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        key: String,
        message: String,
    },
    #[error("unknown preset `{0}` (see `porthole presets`)")]
    UnknownPreset(String),
}

/// Where a config came from: a file, or an embedded preset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    Preset(&'static str),
    /// No file, and no cluster the default preset is for: no forwards yet.
    Empty,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File(path) => write!(f, "{}", path.display()),
            Source::Preset(name) => write!(f, "<preset {name}>"),
            Source::Empty => f.write_str("<no config file, no forwards yet>"),
        }
    }
}

/// A validated config; the default has one cluster, kubectl's current one, and no forwards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Config {
    /// One `[cluster]`, or several `[[cluster]]`: never empty, names unique, exactly one with
    /// `kubectl` set.
    pub clusters: Vec<ClusterSpec>,
    /// Each names one of `clusters` (`ForwardSpec::cluster`); local ports are unique across all.
    pub forwards: Vec<ForwardSpec>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            clusters: vec![ClusterSpec::named_default()],
            forwards: Vec::new(),
        }
    }
}

/// The name of a cluster that names neither itself nor a context (it follows kubectl's
/// current-context).
pub const DEFAULT_CLUSTER: &str = "default";

/// Which cluster to talk to, and how to reach its nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    /// What forwards call it (`cluster = "…"`), the tray's and the status's section title. In
    /// the file it defaults to the context, else [`DEFAULT_CLUSTER`]; a parsed config always has
    /// it set.
    #[serde(default)]
    pub name: String,
    /// The cluster kubectl should point at: the kubeconfig guard, its notification and "Fix
    /// kubeconfig" are about this one. Exactly one per config (by default the first).
    #[serde(default)]
    pub kubectl: bool,
    /// The context Porthole uses; `None` means kubectl's current-context.
    pub context: Option<String>,
    /// One kubeconfig file; `None` means `$KUBECONFIG` (a list) or `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    /// Only this node; `None` means every Ready node, tried in order.
    pub node: Option<String>,
    #[serde(default)]
    pub node_address: NodeAddressType,
    /// The path forwards take unless they say otherwise.
    #[serde(default)]
    pub mode: Mode,
    /// How long a connection that arrives while a forward has no usable path (a rollout) waits
    /// for one, unless a forward says otherwise; `None`: the engine's default (5 s).
    pub hold: Option<Seconds>,
    /// How long a probe through a tunnel listens for the API server's or the kubelet's verdict
    /// before a quiet stream counts as open; `None`: the engine's default (3 s). The API server
    /// answers the upgrade before it reaches the kubelet, so a failure arrives later.
    pub tunnel_settle: Option<Settle>,
    /// The most connections a forward holds open at once (held ones included), unless a forward
    /// says otherwise; past it new ones are refused and counted. `None`: 1024.
    pub max_connections: Option<MaxConnections>,
    /// How many port-forward streams a tunnelled forward keeps open ahead of need, unless a
    /// forward says otherwise; `None`: the engine's default (1 to 8).
    pub tunnel_pool: Option<TunnelPool>,
    /// Whether a forward of this cluster goes to pods rather than a service (`pods`, `pod`):
    /// then its discovery watches pods too. Derived when the config is parsed, never written.
    #[serde(skip)]
    pub watch_pods: bool,
}

/// `tunnel_pool = { min = 1, max = 8 }`: the streams a tunnelled forward holds ready while idle
/// (`min`, 0 for none) and at most, under a burst of new connections (`max`, 0 for no pool).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TunnelPool {
    pub min: u16,
    pub max: u16,
}

impl TunnelPool {
    /// Each held stream is a WebSocket to the API server and a connection to a pod.
    const MAX: u16 = 64;
}

impl<'de> Deserialize<'de> for TunnelPool {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            min: i64,
            max: i64,
        }
        let raw = Raw::deserialize(deserializer)?;
        let fits = |n: i64| u16::try_from(n).ok().filter(|n| *n <= TunnelPool::MAX);
        match (fits(raw.min), fits(raw.max)) {
            (Some(min), Some(max)) if min <= max => Ok(TunnelPool { min, max }),
            _ => Err(serde::de::Error::custom(format!(
                "min = {}, max = {} is not a pool of 0 to {} streams with min at most max",
                raw.min,
                raw.max,
                TunnelPool::MAX
            ))),
        }
    }
}

/// `max_connections`: 1 to 1,000,000 (each connection costs two descriptors).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(into = "u32")]
pub struct MaxConnections(pub u32);

impl MaxConnections {
    /// Like socat's `max-children`, but on by default: about 2,000 descriptors per forward,
    /// within what macOS gives an app (10,240) for a few busy forwards.
    pub const DEFAULT: u32 = 1024;
    const MAX: u32 = 1_000_000;
}

impl From<MaxConnections> for u32 {
    fn from(m: MaxConnections) -> u32 {
        m.0
    }
}

impl<'de> Deserialize<'de> for MaxConnections {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let n = i64::deserialize(deserializer)?;
        match u32::try_from(n) {
            Ok(n) if (1..=MaxConnections::MAX).contains(&n) => Ok(MaxConnections(n)),
            _ => Err(serde::de::Error::custom(format!(
                "{n} is not a number of connections from 1 to {}",
                MaxConnections::MAX
            ))),
        }
    }
}

/// A duration written in seconds (`5`, `2.5`), from `MIN_MS` to `MAX_MS` milliseconds; by
/// default 0 to an hour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(into = "f64")]
pub struct Seconds<const MIN_MS: u64 = 0, const MAX_MS: u64 = 3_600_000>(pub std::time::Duration);

/// `tunnel_settle`: from 0.5 s (below that the far side's verdict cannot arrive, and a quiet
/// stream would be taken for an open one) to 60 s (every tunnel probe waits this long).
pub type Settle = Seconds<500, 60_000>;

impl<const MIN_MS: u64, const MAX_MS: u64> From<Seconds<MIN_MS, MAX_MS>> for f64 {
    fn from(s: Seconds<MIN_MS, MAX_MS>) -> f64 {
        s.0.as_secs_f64()
    }
}

impl<'de, const MIN_MS: u64, const MAX_MS: u64> Deserialize<'de> for Seconds<MIN_MS, MAX_MS> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let seconds = f64::deserialize(deserializer)?;
        let (min, max) = (MIN_MS as f64 / 1000.0, MAX_MS as f64 / 1000.0);
        if !(min..=max).contains(&seconds) {
            return Err(serde::de::Error::custom(format!(
                "{seconds} is not a number of seconds from {min} to {max}"
            )));
        }
        Ok(Seconds(std::time::Duration::from_secs_f64(seconds)))
    }
}

/// The path from the local port to the service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Straight to the service's nodePort on a node: fast, needs no API on the data path, needs
    /// the node addresses to be reachable from here.
    Nodeport,
    /// Through the API server's port-forward to a ready pod: works where node addresses do not
    /// answer (macOS with Docker Desktop or Colima) and for ClusterIP services.
    Tunnel,
    /// `nodeport` while the service has a nodePort and a node answers from here, else `tunnel`;
    /// decided again when either changes. The default: it works on Linux hosts (nodePort) and
    /// on macOS under Docker Desktop or Colima (tunnel) alike.
    #[default]
    Auto,
    /// Relays nothing: the cluster publishes the port on this host itself (kind's
    /// `extraPortMappings`, k3d's `-p`). Porthole opens no listener, probes `local_port` on
    /// `bind`, and reports the service's health with the cluster's causes.
    Watch,
}

/// Which of a node's addresses to connect to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeAddressType {
    #[default]
    InternalIp,
    Hostname,
}

impl ClusterSpec {
    /// The one cluster of a config that says nothing: kubectl's current-context, marked for
    /// the kubeconfig guard.
    pub fn named_default() -> ClusterSpec {
        ClusterSpec {
            name: DEFAULT_CLUSTER.into(),
            kubectl: true,
            ..ClusterSpec::default()
        }
    }

    /// Equal but for `kubectl`, the mark that moves the kubeconfig guard: moving it reconnects
    /// nothing.
    pub fn same_connection(&self, other: &ClusterSpec) -> bool {
        ClusterSpec {
            kubectl: other.kubectl,
            ..self.clone()
        } == *other
    }
}

/// One forward: a local port relayed to a service's nodePort.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ForwardSpec {
    pub name: String,
    /// The name of its cluster in [`Config::clusters`].
    pub cluster: String,
    pub namespace: String,
    pub target: ServiceTarget,
    /// 0 asks the OS for a free port (scripts and tests); the status shows the one bound.
    pub local_port: u16,
    pub service_port: Option<PortRef>,
    /// The address listened on; with [`ForwardSpec::ipv6_loopback`], `::1` too.
    pub bind: IpAddr,
    /// `bind` unset or `"localhost"`: 127.0.0.1 and `::1`, as `kubectl port-forward` listens by
    /// default (clients that resolve `localhost` to `::1` first would otherwise be refused). An
    /// explicit address is listened on alone.
    pub ipv6_loopback: bool,
    pub probe: Probe,
    pub enabled: bool,
    pub mode: Mode,
    /// This forward's hold (see [`ClusterSpec::hold`]), else the cluster's.
    pub hold: Option<std::time::Duration>,
    /// `[cluster] tunnel_settle`, for this forward's tunnel probes.
    pub tunnel_settle: Option<std::time::Duration>,
    /// This forward's `max_connections`, else the cluster's, else [`MaxConnections::DEFAULT`].
    pub max_connections: u32,
    /// This forward's `tunnel_pool`, else the cluster's; `None`: the engine's default.
    pub tunnel_pool: Option<TunnelPool>,
}

/// What a forward goes to: a service (by name or labels), or pods (by labels or name) for what
/// no service covers, as `kubectl port-forward deploy/x` or `pod/x` does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceTarget {
    Name(String),
    Selector(BTreeMap<String, String>),
    /// `pods = { app = "worker" }`: any ready pod with these labels (a Deployment's, a
    /// StatefulSet's), through the API server.
    Pods(BTreeMap<String, String>),
    /// `pod = "debug-0"`: that pod (a StatefulSet's keeps its name across restarts).
    Pod(String),
}

impl ServiceTarget {
    /// Whether this goes to pods rather than a service: always through a tunnel.
    pub fn is_pods(&self) -> bool {
        matches!(self, ServiceTarget::Pods(_) | ServiceTarget::Pod(_))
    }
}

/// `k=v,k2=v2`, as `kubectl -l` takes it.
pub fn labels_text(labels: &BTreeMap<String, String>) -> String {
    let parts: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    parts.join(",")
}

impl fmt::Display for ServiceTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServiceTarget::Name(name) => f.write_str(name),
            ServiceTarget::Selector(labels) => write!(f, "-l {}", labels_text(labels)),
            ServiceTarget::Pods(labels) => write!(f, "pods -l {}", labels_text(labels)),
            ServiceTarget::Pod(name) => write!(f, "pod/{name}"),
        }
    }
}

/// A service port, by name or by number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PortRef {
    Number(u16),
    Name(String),
}

impl fmt::Display for PortRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortRef::Number(n) => write!(f, "{n}"),
            PortRef::Name(name) => f.write_str(name),
        }
    }
}

/// The active health check run through the route.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Probe {
    /// At the level the service port says it speaks (its `appProtocol`, its name such as
    /// `http`, `https`, `grpc`, or 443/8443): an HTTP request answered with any status, a TLS
    /// server's answer, an answer to HTTP/2's preface; else `tcp`.
    #[default]
    Auto,
    /// A TCP connect through the route (through a tunnel: no refusal or error while it settles).
    Tcp,
    /// An HTTP/1.1 GET of this path; any status below 500 counts as alive.
    Http(String),
    /// A TLS handshake (certificate not verified: it proves the server speaks TLS).
    Tls,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    cluster: RawClusters,
    #[serde(default)]
    forward: Vec<Spanned<RawForward>>,
}

/// `[cluster]` (a table) or `[[cluster]]` (an array of tables), as written.
enum RawClusters {
    One(ClusterSpec),
    Many(Vec<Spanned<ClusterSpec>>),
}

impl Default for RawClusters {
    fn default() -> RawClusters {
        RawClusters::One(ClusterSpec::default())
    }
}

impl<'de> Deserialize<'de> for RawClusters {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawClusters;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a `[cluster]` table or `[[cluster]]` tables")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<RawClusters, A::Error> {
                ClusterSpec::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(RawClusters::One)
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<RawClusters, A::Error> {
                let mut clusters = Vec::new();
                while let Some(cluster) = seq.next_element()? {
                    clusters.push(cluster);
                }
                Ok(RawClusters::Many(clusters))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawForward {
    name: Spanned<String>,
    cluster: Option<Spanned<String>>,
    namespace: String,
    service: Option<String>,
    selector: Option<BTreeMap<String, String>>,
    pods: Option<BTreeMap<String, String>>,
    pod: Option<String>,
    local_port: Spanned<i64>,
    service_port: Option<PortRef>,
    bind: Option<Spanned<String>>,
    #[serde(default)]
    probe: Probe,
    #[serde(default = "enabled_by_default")]
    enabled: bool,
    mode: Option<Mode>,
    hold: Option<Seconds>,
    max_connections: Option<MaxConnections>,
    tunnel_pool: Option<TunnelPool>,
}

fn enabled_by_default() -> bool {
    true
}

impl Config {
    /// Parses and validates TOML text; `source` names it in errors.
    pub fn parse(text: &str, source: &Source) -> Result<Config, ConfigError> {
        let path = PathBuf::from(source.to_string());
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.clone(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let mut validator = Validator {
            path,
            text,
            names: HashMap::new(),
            ports: HashMap::new(),
            clusters: Vec::new(),
        };
        let clusters = validator.clusters(raw.cluster)?;
        validator.clusters = clusters.clone();
        let forwards: Vec<ForwardSpec> = raw
            .forward
            .into_iter()
            .map(|f| validator.forward(f))
            .collect::<Result<_, _>>()?;
        let mut clusters = clusters;
        for cluster in &mut clusters {
            cluster.watch_pods = forwards.iter().any(|f| f.cluster == cluster.name && f.target.is_pods());
        }
        Ok(Config { clusters, forwards })
    }

    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        Config::parse(&text, &Source::File(path.to_path_buf()))
    }

    /// The embedded preset of that name.
    pub fn preset(name: &str) -> Result<Config, ConfigError> {
        let (name, _, text) = PRESETS
            .iter()
            .find(|(n, _, _)| *n == name)
            .ok_or_else(|| ConfigError::UnknownPreset(name.to_string()))?;
        Config::parse(text, &Source::Preset(name))
    }

    /// Loads from `path`, or the default location. With no file there: the default preset if
    /// `has_context` says the kubeconfig has the context it is for (an OpenChoreo quick-start's
    /// cluster), else no forwards ([`EMPTY`]), so a first run against any other cluster shows
    /// nothing broken. A file named by `--config` or `$PORTHOLE_CONFIG` must exist; only the
    /// default location may be absent.
    pub fn discover(
        explicit: Option<&Path>,
        has_context: impl FnOnce(&str) -> bool,
    ) -> Result<(Config, Source), ConfigError> {
        let named = explicit.is_some() || std::env::var_os(CONFIG_ENV).is_some_and(|p| !p.is_empty());
        match config_path(explicit) {
            Some(path) if named || path.exists() => {
                let config = Config::load(&path)?;
                Ok((config, Source::File(path)))
            }
            _ => {
                let preset = Config::preset(DEFAULT_PRESET)?;
                if preset.kubectl_cluster().context.as_deref().is_some_and(has_context) {
                    Ok((preset, Source::Preset(DEFAULT_PRESET)))
                } else {
                    Ok((Config::parse(EMPTY, &Source::Empty)?, Source::Empty))
                }
            }
        }
    }

    pub fn forward(&self, name: &str) -> Option<&ForwardSpec> {
        self.forwards.iter().find(|f| f.name == name)
    }

    /// The cluster kubectl should point at (`kubectl = true`): the one the kubeconfig guard is
    /// about.
    pub fn kubectl_cluster(&self) -> &ClusterSpec {
        static NONE: std::sync::LazyLock<ClusterSpec> = std::sync::LazyLock::new(ClusterSpec::named_default);
        self.clusters
            .iter()
            .find(|c| c.kubectl)
            .or(self.clusters.first())
            .unwrap_or(&NONE)
    }

    /// The mutable [`Config::kubectl_cluster`] (tests and edits set its context).
    pub fn kubectl_cluster_mut(&mut self) -> Option<&mut ClusterSpec> {
        let index = self.clusters.iter().position(|c| c.kubectl).unwrap_or(0);
        self.clusters.get_mut(index)
    }

    pub fn cluster(&self, name: &str) -> Option<&ClusterSpec> {
        self.clusters.iter().find(|c| c.name == name)
    }

    /// The forwards of cluster `name`, in config order.
    pub fn forwards_of<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a ForwardSpec> + 'a {
        self.forwards.iter().filter(move |f| f.cluster == name)
    }
}

/// The config file's path: `explicit`, else `$PORTHOLE_CONFIG`, else `<config dir>/porthole/config.toml`.
pub fn config_path(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(path) = explicit {
        return Some(path.to_path_buf());
    }
    if let Some(path) = std::env::var_os(CONFIG_ENV).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    directories::ProjectDirs::from("", "", "porthole").map(|dirs| dirs.config_dir().join("config.toml"))
}

/// The text of a preset, for `porthole init`.
pub fn preset_text(name: &str) -> Result<&'static str, ConfigError> {
    PRESETS
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, _, text)| *text)
        .ok_or_else(|| ConfigError::UnknownPreset(name.to_string()))
}

/// Checks the clusters, then forwards one by one, remembering names and ports to report
/// duplicates.
struct Validator<'t> {
    path: PathBuf,
    text: &'t str,
    /// Name → line of first use.
    names: HashMap<String, usize>,
    /// (port, address) → (forward, its line, its cluster).
    ports: HashMap<(u16, IpAddr), (String, usize, String)>,
    /// The clusters, validated: each forward takes its defaults (`mode`, `hold`,
    /// `tunnel_settle`, `max_connections`) from its own.
    clusters: Vec<ClusterSpec>,
}

/// Whether `name` may name a cluster. Names default to contexts, which may hold `:`, `/` and
/// `@` (`arn:aws:eks:…/x`, `user@cluster`); nothing that could read as markup or a second line.
fn cluster_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/' | '@'))
}

impl Validator<'_> {
    fn invalid(&self, span: Range<usize>, key: &str, message: String) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.clone(),
            line: line_of(self.text, span.start),
            key: key.to_string(),
            message,
        }
    }

    /// Names every cluster (its own, else its context, else [`DEFAULT_CLUSTER`]), refuses two
    /// of one name and two marked `kubectl`, and marks the first when none is.
    fn clusters(&self, raw: RawClusters) -> Result<Vec<ClusterSpec>, ConfigError> {
        let spanned: Vec<(ClusterSpec, Range<usize>)> = match raw {
            RawClusters::One(cluster) => {
                let at = self.text.find("[cluster]").unwrap_or(0);
                vec![(cluster, at..at)]
            }
            RawClusters::Many(clusters) => clusters
                .into_iter()
                .map(|c| {
                    let span = c.span();
                    (c.into_inner(), span)
                })
                .collect(),
        };
        if spanned.is_empty() {
            return Err(self.invalid(
                0..0,
                "cluster",
                "`cluster = []` names no cluster: give at least one".into(),
            ));
        }
        let mut clusters: Vec<ClusterSpec> = Vec::new();
        let mut lines: Vec<usize> = Vec::new();
        for (mut cluster, span) in spanned {
            let line = line_of(self.text, span.start);
            let named = !cluster.name.is_empty();
            if !named {
                cluster.name = cluster.context.clone().unwrap_or_else(|| DEFAULT_CLUSTER.into());
            }
            if !cluster_name_ok(&cluster.name) {
                let message = format!(
                    "cluster name {:?} may hold only letters, digits, `.`, `_`, `-`, `:`, `/` and `@` (at most 253){}",
                    cluster.name,
                    if named {
                        ""
                    } else {
                        "; the name comes from the context: give the cluster a `name = \"…\"`"
                    }
                );
                return Err(self.invalid(span, "name", message));
            }
            if let Some(first) = clusters.iter().position(|c| c.name == cluster.name) {
                let message = format!(
                    "two clusters are named `{}` (lines {} and {line}); give one a `name = \"…\"`{}",
                    cluster.name,
                    lines[first],
                    match cluster.context {
                        None => " and a `context`: both follow kubectl's current-context",
                        Some(_) => "",
                    }
                );
                return Err(self.invalid(span, "name", message));
            }
            if cluster.kubectl
                && let Some(first) = clusters.iter().position(|c| c.kubectl)
            {
                let message = format!(
                    "clusters `{}` (line {}) and `{}` both say `kubectl = true`: kubectl points at one",
                    clusters[first].name, lines[first], cluster.name
                );
                return Err(self.invalid(span, "kubectl", message));
            }
            clusters.push(cluster);
            lines.push(line);
        }
        if !clusters.iter().any(|c| c.kubectl) {
            clusters[0].kubectl = true;
        }
        Ok(clusters)
    }

    /// The cluster a forward names, or the only one.
    fn cluster_of(
        &self,
        forward: &str,
        named: Option<&Spanned<String>>,
        span: Range<usize>,
    ) -> Result<&ClusterSpec, ConfigError> {
        let names = || {
            self.clusters
                .iter()
                .map(|c| format!("`{}`", c.name))
                .collect::<Vec<_>>()
                .join(", ")
        };
        match named {
            Some(name) => self.clusters.iter().find(|c| c.name == *name.get_ref()).ok_or_else(|| {
                let message = format!(
                    "forward `{forward}`: no cluster is named `{}` (the clusters: {})",
                    name.get_ref(),
                    names()
                );
                self.invalid(name.span(), "cluster", message)
            }),
            None => match self.clusters.as_slice() {
                [only] => Ok(only),
                _ => {
                    let message = format!(
                        "forward `{forward}` must say which cluster it is in: `cluster = \"…\"`, one of {}",
                        names()
                    );
                    Err(self.invalid(span, "cluster", message))
                }
            },
        }
    }

    fn forward(&mut self, spanned: Spanned<RawForward>) -> Result<ForwardSpec, ConfigError> {
        let span = spanned.span();
        let raw = spanned.into_inner();
        let name = raw.name.get_ref().clone();
        if name.is_empty() {
            return Err(self.invalid(raw.name.span(), "name", "must not be empty".into()));
        }
        // Names reach terminals, menus, notifications and log lines: nothing that could be read
        // as markup, an escape sequence or a second line.
        if name.len() > 63
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            let message = format!("forward name {name:?} may hold only letters, digits, `.`, `_` and `-` (at most 63)");
            return Err(self.invalid(raw.name.span(), "name", message));
        }
        if let Some(first) = self
            .names
            .insert(name.clone(), line_of(self.text, raw.name.span().start))
        {
            let message = format!("duplicate forward name `{name}` (first used on line {first})");
            return Err(self.invalid(raw.name.span(), "name", message));
        }
        let cluster = self.cluster_of(&name, raw.cluster.as_ref(), span.clone())?.clone();
        let target = self.target(&name, span.clone(), raw.service, raw.selector, raw.pods, raw.pod)?;
        let port_span = raw.local_port.span();
        let local_port = u16::try_from(*raw.local_port.get_ref()).map_err(|_| {
            let message = format!("forward `{name}`: {} is not a port (0-65535)", raw.local_port.get_ref());
            self.invalid(port_span.clone(), "local_port", message)
        })?;
        let (bind, ipv6_loopback) = match raw.bind.as_ref().map(|b| b.get_ref().as_str()) {
            None | Some("localhost") => (IpAddr::V4(Ipv4Addr::LOCALHOST), true),
            Some(text) => {
                let ip = text.parse().map_err(|_| {
                    let span = raw.bind.as_ref().map(|b| b.span()).unwrap_or_default();
                    let message = format!("forward `{name}`: `{text}` is not an IP address or `localhost`");
                    self.invalid(span, "bind", message)
                })?;
                (ip, false)
            }
        };
        let line = line_of(self.text, port_span.start);
        if local_port != 0
            && let Some((other, other_line, other_cluster)) = self
                .ports
                .insert((local_port, bind), (name.clone(), line, cluster.name.clone()))
        {
            let message = if other_cluster == cluster.name {
                format!(
                    "port {local_port} is used by forwards `{other}` (line {other_line}) and `{name}` (line {line})"
                )
            } else {
                format!(
                    "port {local_port} is used by forwards `{other}` (line {other_line}, cluster `{other_cluster}`) and `{name}` (line {line}, cluster `{}`): local ports are shared by every cluster",
                    cluster.name
                )
            };
            return Err(self.invalid(port_span, "local_port", message));
        }
        // Pods are reached through the API server only: no nodePort leads to them.
        let mode = match (raw.mode, target.is_pods()) {
            (Some(mode @ (Mode::Nodeport | Mode::Watch)), true) => {
                let message = format!(
                    "forward `{name}` goes to pods ({target}), which only a tunnel reaches: `mode = \"tunnel\"` (or leave `mode` out), or forward a service for `{}`",
                    serde_json::to_value(mode)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default()
                );
                return Err(self.invalid(span, "mode", message));
            }
            (_, true) => Mode::Tunnel,
            (mode, false) => mode.unwrap_or(cluster.mode),
        };
        if mode == Mode::Watch && local_port == 0 {
            let message = format!("forward `{name}`: `mode = \"watch\"` needs the port the cluster publishes, not 0");
            return Err(self.invalid(port_span, "local_port", message));
        }
        if let Probe::Http(path) = &raw.probe
            && !path.starts_with('/')
        {
            let message = format!("forward `{name}`: http probe path must start with `/`");
            return Err(self.invalid(span, "probe", message));
        }
        if let Probe::Http(path) = &raw.probe
            && path.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            // It goes into the request line: a space or a line break would end it early.
            let message = format!(
                "forward `{name}`: http probe path {path:?} must not hold spaces or control characters (encode them: %20)"
            );
            return Err(self.invalid(span, "probe", message));
        }
        Ok(ForwardSpec {
            name,
            cluster: cluster.name.clone(),
            namespace: raw.namespace,
            target,
            local_port,
            service_port: raw.service_port,
            bind,
            ipv6_loopback,
            probe: raw.probe,
            enabled: raw.enabled,
            mode,
            hold: raw.hold.or(cluster.hold).map(|s| s.0),
            tunnel_settle: cluster.tunnel_settle.map(|s| s.0),
            max_connections: raw
                .max_connections
                .or(cluster.max_connections)
                .map_or(MaxConnections::DEFAULT, |m| m.0),
            tunnel_pool: raw.tunnel_pool.or(cluster.tunnel_pool),
        })
    }

    fn target(
        &self,
        name: &str,
        span: Range<usize>,
        service: Option<String>,
        selector: Option<BTreeMap<String, String>>,
        pods: Option<BTreeMap<String, String>>,
        pod: Option<String>,
    ) -> Result<ServiceTarget, ConfigError> {
        let given: Vec<&str> = [
            ("service", service.is_some()),
            ("selector", selector.is_some()),
            ("pods", pods.is_some()),
            ("pod", pod.is_some()),
        ]
        .into_iter()
        .filter_map(|(key, set)| set.then_some(key))
        .collect();
        if given.len() > 1 {
            let keys: Vec<String> = given.iter().map(|k| format!("`{k}`")).collect();
            let message = format!("forward `{name}` has {}; keep one", keys.join(" and "));
            return Err(self.invalid(span, given[0], message));
        }
        let empty = |key: &str| self.invalid(span.clone(), key, format!("forward `{name}`: {key} must not be empty"));
        match (service, selector, pods, pod) {
            (Some(service), ..) => Ok(ServiceTarget::Name(service)),
            (_, Some(selector), ..) if selector.is_empty() => Err(empty("selector")),
            (_, Some(selector), ..) => Ok(ServiceTarget::Selector(selector)),
            (_, _, Some(pods), _) if pods.is_empty() => Err(empty("pods")),
            (_, _, Some(pods), _) => Ok(ServiceTarget::Pods(pods)),
            (_, _, _, Some(pod)) if pod.is_empty() => Err(empty("pod")),
            (_, _, _, Some(pod)) => Ok(ServiceTarget::Pod(pod)),
            (None, None, None, None) => {
                let message = format!(
                    "forward `{name}` needs `service = \"NAME\"`, `selector = {{ label = \"value\" }}`, or for pods no service covers `pods = {{ label = \"value\" }}` or `pod = \"NAME\"`"
                );
                Err(self.invalid(span, "service", message))
            }
        }
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].bytes().filter(|&b| b == b'\n').count() + 1
}

#[cfg(test)]
mod tests;
