//! Health of a forward: a state with a cause, and the rule that derives it from what is known.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::config::Mode;
use crate::discovery::ClusterStatus;
use crate::route::Route;

/// The coarse state of a forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// Not known yet: the cluster is being read, or no probe has succeeded on the current path.
    Starting,
    /// The whole path answers.
    Healthy,
    /// Serving, but something is wrong (the API is unreachable: the last known route is used).
    Degraded,
    /// Not serving; the cause says why.
    Down,
    /// Turned off by the user.
    Disabled,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Starting => "starting",
            State::Healthy => "healthy",
            State::Degraded => "degraded",
            State::Down => "down",
            State::Disabled => "disabled",
        })
    }
}

/// Why a forward is not healthy. The kebab-case ids are stable: scripts and the tray match on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CauseId {
    KubeconfigInvalid,
    ContextMissing,
    /// kubectl's current-context is another context: reported, never a cause of a forward's state.
    ContextMismatch,
    /// The context's entry points where its cluster no longer is (a re-created kind cluster).
    ContextStale,
    ClusterUnreachable,
    Unauthorized,
    NamespaceMissing,
    ServiceMissing,
    WrongServiceType,
    PortNotFound,
    NoReadyEndpoints,
    NodeUnreachable,
    PortInUse,
    ListenFailed,
    /// The API server would not open a port-forward to any ready pod.
    TunnelFailed,
    /// The API server opened the port-forward but cannot reach the node's kubelet.
    KubeletUnreachable,
    ProbeFailed,
    /// The process (or the system) ran out of file descriptors: not the cluster's fault.
    OutOfDescriptors,
}

impl CauseId {
    /// Causes that do not go away by themselves: the user must act (they are logged as errors).
    pub fn needs_user(self) -> bool {
        !matches!(
            self,
            CauseId::ClusterUnreachable | CauseId::NoReadyEndpoints | CauseId::ProbeFailed | CauseId::NodeUnreachable
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CauseId::KubeconfigInvalid => "kubeconfig-invalid",
            CauseId::ContextMissing => "context-missing",
            CauseId::ContextMismatch => "context-mismatch",
            CauseId::ContextStale => "context-stale",
            CauseId::ClusterUnreachable => "cluster-unreachable",
            CauseId::Unauthorized => "unauthorized",
            CauseId::NamespaceMissing => "namespace-missing",
            CauseId::ServiceMissing => "service-missing",
            CauseId::WrongServiceType => "wrong-service-type",
            CauseId::PortNotFound => "port-not-found",
            CauseId::NoReadyEndpoints => "no-ready-endpoints",
            CauseId::NodeUnreachable => "node-unreachable",
            CauseId::PortInUse => "port-in-use",
            CauseId::ListenFailed => "listen-failed",
            CauseId::TunnelFailed => "tunnel-failed",
            CauseId::KubeletUnreachable => "kubelet-unreachable",
            CauseId::ProbeFailed => "probe-failed",
            CauseId::OutOfDescriptors => "out-of-descriptors",
        }
    }
}

impl fmt::Display for CauseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A cause with the sentence a user reads and, where one is known, what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cause {
    pub id: CauseId,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Cause {
    pub fn new(id: CauseId, message: impl Into<String>) -> Cause {
        Cause {
            id,
            message: message.into(),
            fix: None,
        }
    }

    pub fn with_fix(mut self, fix: impl Into<String>) -> Cause {
        self.fix = Some(fix.into());
        self
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.id, self.message)?;
        if let Some(fix) = &self.fix {
            write!(f, " (fix: {fix})")?;
        }
        Ok(())
    }
}

/// A state and, unless healthy, its cause.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub state: State,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<Cause>,
}

impl Health {
    pub fn new(state: State, cause: Option<Cause>) -> Health {
        Health { state, cause }
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.cause {
            Some(cause) => write!(f, "{} ({cause})", self.state),
            None => write!(f, "{}", self.state),
        }
    }
}

/// The local listener, as far as health is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listener {
    Binding,
    Bound,
    Failed(Cause),
}

/// Consecutive probe outcomes, so that one failed probe does not flap the state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbeRecord {
    /// Some probe has succeeded since the route's path last changed: until then the path is
    /// not proven, and a failure (below the threshold) is not a blip of a working path.
    pub proven: bool,
    pub consecutive_failures: u32,
    pub last_failure: Option<Cause>,
}

impl ProbeRecord {
    /// Forgets what was learnt of an old path. A route that comes back from zero ready
    /// endpoints starts over too: what was proven was proven of pods that have gone.
    pub(crate) fn route_changed(&mut self, change: crate::forward::RouteChange) {
        use crate::forward::RouteChange;
        match change {
            RouteChange::Path | RouteChange::Endpoints { was_zero: true } => *self = ProbeRecord::default(),
            RouteChange::Endpoints { was_zero: false } | RouteChange::None => {}
        }
    }

    pub fn record(&mut self, outcome: Result<(), Cause>) {
        match outcome {
            Ok(()) => {
                self.proven = true;
                self.consecutive_failures = 0;
                self.last_failure = None;
            }
            Err(cause) => {
                self.consecutive_failures += 1;
                self.last_failure = Some(cause);
            }
        }
    }
}

/// Everything a forward's health is derived from.
#[derive(Debug, Clone)]
pub struct Inputs {
    pub enabled: bool,
    pub listener: Listener,
    pub cluster: ClusterStatus,
    /// `None` until the cluster has been read once.
    pub target: Option<Result<Route, Cause>>,
    pub probe: ProbeRecord,
    /// Consecutive probe failures that make a forward `down`.
    pub failure_threshold: u32,
}

impl Inputs {
    /// The rule: the first thing that is wrong, in the order a user would check it.
    pub fn health(&self) -> Health {
        if !self.enabled {
            return Health::new(State::Disabled, None);
        }
        if let Listener::Failed(cause) = &self.listener {
            return Health::new(State::Down, Some(cause.clone()));
        }
        let route = match &self.target {
            Some(Ok(route)) => route,
            Some(Err(cause)) => return Health::new(State::Down, Some(cause.clone())),
            None => {
                return match self.cluster.cause() {
                    Some(cause) => Health::new(State::Down, Some(cause)),
                    None => Health::new(State::Starting, None),
                };
            }
        };
        if route.ready_endpoints == 0 {
            let cause = Cause::new(
                CauseId::NoReadyEndpoints,
                format!("service {} has no ready endpoints", route.service),
            )
            .with_fix(format!(
                "check its pods: kubectl get pods -n {} (a restarting pod comes back by itself)",
                route.namespace
            ));
            return Health::new(State::Down, Some(cause));
        }
        if self.probe.consecutive_failures >= self.failure_threshold {
            return Health::new(State::Down, self.probe.last_failure.clone());
        }
        // Serving (healthy or degraded) is claimed only for a path a probe has proven.
        if self.listener == Listener::Binding || !self.probe.proven {
            return Health::new(State::Starting, None);
        }
        if let Some(cause) = self.cluster.cause() {
            // NodePorts need no API on the data path: keep serving on the last known route.
            return Health::new(State::Degraded, Some(cause));
        }
        if route.mode == Mode::Nodeport && route.ready_nodes == 0 {
            let cause = Cause::new(CauseId::NodeUnreachable, "no node is Ready; trying the others")
                .with_fix("a cluster waking from sleep is NotReady for a while; else check `kubectl get nodes`");
            return Health::new(State::Degraded, Some(cause));
        }
        Health::new(State::Healthy, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(ready: usize) -> Route {
        Route::for_tests(&["127.0.0.2".parse().unwrap()], 30080, ready)
    }

    fn healthy_inputs() -> Inputs {
        let mut probe = ProbeRecord::default();
        probe.record(Ok(()));
        Inputs {
            enabled: true,
            listener: Listener::Bound,
            cluster: ClusterStatus::Connected,
            target: Some(Ok(route(1))),
            probe,
            failure_threshold: 3,
        }
    }

    fn probe_failure() -> Cause {
        Cause::new(CauseId::NodeUnreachable, "connect refused")
    }

    #[test]
    fn all_good_is_healthy() {
        assert_eq!(healthy_inputs().health(), Health::new(State::Healthy, None));
    }

    #[test]
    fn one_or_two_failed_probes_do_not_flap() {
        let mut inputs = healthy_inputs();
        inputs.probe.record(Err(probe_failure()));
        inputs.probe.record(Err(probe_failure()));
        assert_eq!(inputs.health().state, State::Healthy);
        inputs.probe.record(Err(probe_failure()));
        let health = inputs.health();
        assert_eq!(health.state, State::Down);
        assert_eq!(health.cause.unwrap().id, CauseId::NodeUnreachable);
        inputs.probe.record(Ok(()));
        assert_eq!(inputs.health().state, State::Healthy);
    }

    #[test]
    fn unreachable_api_degrades_but_keeps_the_route() {
        let mut inputs = healthy_inputs();
        inputs.cluster = ClusterStatus::Unreachable("connection refused".into());
        let health = inputs.health();
        assert_eq!(health.state, State::Degraded);
        assert_eq!(health.cause.unwrap().id, CauseId::ClusterUnreachable);
    }

    #[test]
    fn unreachable_api_with_no_route_is_down() {
        let mut inputs = healthy_inputs();
        inputs.target = None;
        inputs.cluster = ClusterStatus::Unreachable("connection refused".into());
        assert_eq!(inputs.health().state, State::Down);
        inputs.cluster = ClusterStatus::Connecting;
        assert_eq!(inputs.health().state, State::Starting);
    }

    #[test]
    fn order_of_causes() {
        let mut inputs = healthy_inputs();
        inputs.target = Some(Ok(route(0)));
        assert_eq!(inputs.health().cause.unwrap().id, CauseId::NoReadyEndpoints);
        inputs.target = Some(Err(Cause::new(CauseId::ServiceMissing, "x")));
        assert_eq!(inputs.health().cause.unwrap().id, CauseId::ServiceMissing);
        inputs.listener = Listener::Failed(Cause::new(CauseId::PortInUse, "y"));
        assert_eq!(inputs.health().cause.unwrap().id, CauseId::PortInUse);
        inputs.enabled = false;
        assert_eq!(inputs.health(), Health::new(State::Disabled, None));
    }

    #[test]
    fn only_not_ready_nodes_degrade_while_traffic_still_flows() {
        let mut inputs = healthy_inputs();
        if let Some(Ok(route)) = &mut inputs.target {
            route.ready_nodes = 0;
        }
        let health = inputs.health();
        assert_eq!(health.state, State::Degraded);
        assert_eq!(health.cause.unwrap().id, CauseId::NodeUnreachable);
    }

    #[test]
    fn no_probe_answer_yet_is_starting() {
        let mut inputs = healthy_inputs();
        inputs.probe = ProbeRecord::default();
        assert_eq!(inputs.health().state, State::Starting);
    }

    #[test]
    fn a_path_whose_first_probes_fail_is_never_healthy() {
        let mut inputs = healthy_inputs();
        inputs.probe = ProbeRecord::default();
        inputs.probe.record(Err(probe_failure()));
        assert_eq!(
            inputs.health().state,
            State::Starting,
            "one failure of an unproven path"
        );
        inputs.probe.record(Err(probe_failure()));
        inputs.probe.record(Err(probe_failure()));
        assert_eq!(inputs.health().state, State::Down);
        inputs.probe.record(Ok(()));
        assert_eq!(inputs.health().state, State::Healthy);
        inputs.probe.route_changed(crate::forward::RouteChange::Path);
        assert_eq!(inputs.health().state, State::Starting, "a new path is proven again");
        inputs.cluster = ClusterStatus::Unreachable("connection refused".into());
        assert_eq!(inputs.health().state, State::Starting, "not even degraded until proven");
    }

    #[test]
    fn cause_ids_serialize_kebab_case() {
        let json = serde_json::to_string(&CauseId::WrongServiceType).unwrap();
        assert_eq!(json, "\"wrong-service-type\"");
        assert_eq!(CauseId::NoReadyEndpoints.as_str(), "no-ready-endpoints");
    }
}
