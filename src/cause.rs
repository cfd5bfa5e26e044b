//! The words every part of Porthole shares about a forward's health: its [`State`], the
//! [`Cause`] in the way (with a stable [`CauseId`]) and the two together, [`Health`]. A leaf:
//! it depends on nothing else in the crate. The rule that derives a health lives in
//! [`crate::health`], beside its inputs.

use std::fmt;

use serde::{Deserialize, Serialize};

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
    /// No pod matches a forward to pods (`pods = {…}`, `pod = "…"`).
    PodMissing,
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
    /// A `watch` forward's port on this host does not answer: the cluster's port mapping is not
    /// there (or not for this port).
    HostPortUnanswered,
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
            CauseId::PodMissing => "pod-missing",
            CauseId::WrongServiceType => "wrong-service-type",
            CauseId::PortNotFound => "port-not-found",
            CauseId::NoReadyEndpoints => "no-ready-endpoints",
            CauseId::NodeUnreachable => "node-unreachable",
            CauseId::PortInUse => "port-in-use",
            CauseId::ListenFailed => "listen-failed",
            CauseId::TunnelFailed => "tunnel-failed",
            CauseId::KubeletUnreachable => "kubelet-unreachable",
            CauseId::ProbeFailed => "probe-failed",
            CauseId::HostPortUnanswered => "host-port-unanswered",
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
