//! The rule that derives a forward's health from what is known of it ([`Inputs::health`]), and
//! those inputs: the cluster's state, the route, the listener and the probes' record.

use crate::cause::{Cause, CauseId, Health, State};
use crate::discovery::ClusterStatus;
use crate::route::{Route, RoutePath};

/// How a route changed, for the probe record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RouteChange {
    None,
    /// Only the count of ready endpoints.
    Endpoints {
        was_zero: bool,
    },
    /// Another nodePort or other nodes, or a route appeared or went away.
    Path,
}

impl RouteChange {
    pub(crate) fn classify(old: Option<&Route>, new: Option<&Route>) -> RouteChange {
        match (old, new) {
            // The same path: the same nodePort on the same nodes, or a tunnel to the same pod
            // first (the one probes and connections try first).
            (Some(o), Some(n)) if o.same_path(n) => RouteChange::Endpoints {
                was_zero: o.ready_endpoints == 0,
            },
            _ => RouteChange::Path,
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
    pub(crate) fn route_changed(&mut self, change: RouteChange) {
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
            let what = match route.service_type.as_str() {
                "Pod" => format!("no pod of {} is ready", route.service),
                _ => format!("service {} has no ready endpoints", route.service),
            };
            let cause = Cause::new(CauseId::NoReadyEndpoints, what).with_fix(format!(
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
        if matches!(&route.path, RoutePath::Nodeport(nodes) if nodes.ready == 0) {
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
            route.nodes_mut().ready = 0;
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
        inputs.probe.route_changed(RouteChange::Path);
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
