//! Porthole: reliable localhost forwards to services in local Kubernetes clusters (kind, k3d).
//!
//! A map of the crate:
//! - [`config`]: the TOML config file and its presets, validated with file/line/key errors; the
//!   file followed ([`config::ConfigFile`]) and the diff between configs ([`config::plan`]).
//! - [`kubeconfig`]: kubeconfig files read the way kubectl reads them; a client for one context.
//! - [`discovery`]: reflectors over the cluster, published as a [`discovery::ClusterView`].
//! - [`route`]: a forward resolved to node addresses and a nodePort, or the [`cause::Cause`] in the way.
//! - [`forward`]: one forward at run time: listener, connections, probe, health.
//! - [`relay`]: the byte pump (`splice(2)` on Linux).
//! - [`descriptors`]: running out of file descriptors, named as such; throttled warnings.
//! - [`tunnel`]: the path through the API server's port-forward to a ready pod.
//! - [`probe`]: active health checks through a route.
//! - [`cause`]: the shared words: states, causes, health.
//! - [`health`]: the rule that derives a health from what is known.
//! - [`tuning`]: the engine's timings.
//! - [`engine`]: runs forwards, pushes snapshots and events, applies configs by diff.
//! - [`status`]: what the engine reports: [`status::Snapshot`] and [`status::Event`].
//! - [`control`]: the local control socket that `porthole status|wait|enable|disable` talk to.
//! - [`doctor`]: one-shot checks with a fix for each failure.
//! - [`holder`]: which process holds a local port.
//! - [`host`]: the machine sleeping or changing networks, noticed so everything is re-checked.
//! - [`write`]: replacing a user's file (kubeconfig, config) without ever losing it.
//! - [`catalog`]: the cluster's namespaces, services and ports, for pickers.
//! - [`watch`]: following files other programs write (the kubeconfig, the config file).
//! - [`import`]: forwards read from scripts (`kubectl port-forward`, socat) and kftray exports.

pub mod catalog;
pub mod cause;
pub mod config;
#[cfg(unix)]
pub mod control;
pub mod descriptors;
pub mod discovery;
pub mod doctor;
pub mod engine;
pub mod forward;
pub mod health;
pub mod holder;
pub mod host;
pub mod import;
pub mod kubeconfig;
pub mod lines;
pub mod probe;
pub mod relay;
pub mod route;
pub mod status;
#[cfg(test)]
mod test_alloc;
pub mod tuning;
pub mod tunnel;
pub mod watch;
pub mod write;

pub use config::Config;

/// Makes ring the process's TLS provider (what kube's client uses), unless one is installed
/// already. Needed when another crate in the same program enables a second rustls provider:
/// rustls then refuses to pick one by itself.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
pub use engine::{Engine, Event, Snapshot};
pub use tuning::Tuning;
