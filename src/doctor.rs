//! `porthole doctor`: every check from kubeconfig to local port, once, without a running engine,
//! each failure with its fix.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;

use crate::cause::{Cause, CauseId};
use crate::config::{ClusterSpec, Config, ForwardSpec};
use crate::discovery::{ClusterStatus, list_world, status_of};
use crate::holder;
use crate::kubeconfig::state::{self, KubeconfigState};
use crate::kubeconfig::tools::Tools;
use crate::kubeconfig::{Loaded, kind_cluster_name};
use crate::route::{RoutePath, World, resolve};

/// One check and its outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was checked, e.g. `kubeconfig` or `console: service`.
    pub check: String,
    pub ok: bool,
    /// Worth knowing, but not a failure of Porthole (kubectl pointing elsewhere).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub warning: bool,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<CauseId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    fn pass(check: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            check: check.into(),
            ok: true,
            warning: false,
            detail: detail.into(),
            cause: None,
            fix: None,
        }
    }

    fn fail(check: impl Into<String>, cause: Cause) -> Check {
        Check {
            check: check.into(),
            ok: false,
            warning: false,
            detail: cause.message,
            cause: Some(cause.id),
            fix: cause.fix,
        }
    }
}

/// All checks, in the order a user would go through them.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub ok: bool,
    pub checks: Vec<Check>,
}

/// Runs every check; `timeout` bounds each network step.
pub async fn run(config: &Config, timeout: Duration) -> Report {
    crate::install_tls_provider();
    let mut checks = Vec::new();
    cluster_checks(config, timeout, &mut checks).await;
    Report {
        ok: checks.iter().all(|c| c.ok),
        checks,
    }
}

/// Every cluster in turn: reached, then its forwards. With several clusters, each check's name
/// starts with its cluster's.
async fn cluster_checks(config: &Config, timeout: Duration, checks: &mut Vec<Check>) {
    let several = config.clusters.len() > 1;
    for cluster in &config.clusters {
        let mut own = Vec::new();
        match reach_cluster(cluster, timeout, &mut own).await {
            Some(world) => {
                for spec in config.forwards_of(&cluster.name).filter(|f| f.enabled) {
                    forward_checks(spec, cluster, &world, timeout, &mut own).await;
                }
            }
            None => local_port_checks(config.forwards_of(&cluster.name), &mut own),
        }
        if several {
            for check in &mut own {
                check.check = format!("{}: {}", cluster.name, check.check);
            }
        }
        checks.extend(own);
    }
}

/// kubeconfig → context → kubectl's context (for the cluster kubectl should point at) → API:
/// the cluster's objects, or `None` after the first failed step.
async fn reach_cluster(cluster: &ClusterSpec, timeout: Duration, checks: &mut Vec<Check>) -> Option<World> {
    let loaded = match Loaded::for_cluster(cluster) {
        Ok(loaded) => loaded,
        Err(e) => return fail(checks, "kubeconfig", e.cause()),
    };
    let files: Vec<String> = loaded
        .files
        .iter()
        .filter(|f| f.exists())
        .map(|f| f.display().to_string())
        .collect();
    checks.push(Check::pass("kubeconfig", files.join(", ")));
    let context = match loaded.effective_context(cluster) {
        Ok(context) => context,
        Err(e) => return fail(checks, "context", e.cause()),
    };
    checks.push(Check::pass("context", format!("{context} is in the kubeconfig")));
    if cluster.kubectl {
        checks.push(kubectl_context_check(&context, loaded.current_context()));
    }
    let client = match loaded.clients(cluster, timeout).await {
        Ok(clients) => clients.api,
        Err(e) => return fail(checks, "API server", e.cause()),
    };
    let failure = match tokio::time::timeout(timeout, list_world(&client, cluster.watch_pods)).await {
        Ok(Ok(world)) => {
            checks.push(Check::pass("API server", format!("{context} answers")));
            return Some(world);
        }
        Ok(Err(e)) => status_of(&e),
        Err(_) => ClusterStatus::Unreachable(format!("no answer from {context} in {timeout:?}")),
    };
    let mut cause = failure
        .cause()
        .unwrap_or_else(|| Cause::new(CauseId::ClusterUnreachable, "no answer"));
    // A cluster that was re-created elsewhere is not down: its kubeconfig entry is stale.
    if let Ok(inspection) = state::inspect(loaded.files.clone(), &context, &Tools::from_env()).await
        && let KubeconfigState::ContextStale { .. } = &inspection.state
    {
        cause = Cause::new(CauseId::ContextStale, inspection.state.sentence())
            .with_fix("`porthole fix-kubeconfig` (it fetches the new entry from kind or k3d)");
    }
    fail(checks, "API server", cause)
}

fn fail<T>(checks: &mut Vec<Check>, check: &str, cause: Cause) -> Option<T> {
    checks.push(Check::fail(check, cause));
    None
}

/// Service, endpoints, node and local port of one forward.
async fn forward_checks(
    spec: &ForwardSpec,
    cluster: &ClusterSpec,
    world: &World,
    timeout: Duration,
    checks: &mut Vec<Check>,
) {
    let name = &spec.name;
    let local = local_port_check(name, SocketAddr::new(spec.bind, spec.local_port));
    let route = match resolve(spec, cluster, world) {
        Ok(route) => route,
        Err(cause) => {
            checks.push(Check::fail(format!("{name}: service"), cause));
            return checks.push(local);
        }
    };
    // `auto`: the path the engine would take now.
    let route = if matches!(route.path, RoutePath::Auto { .. }) {
        let answers = route.nodes().is_some() && route.connect(timeout).await.is_ok();
        route.choose(Some(answers))
    } else {
        route
    };
    let service = match (&route.path, route.nodes()) {
        (RoutePath::Host(addr), _) => format!(
            "{} is {}, port {} → watched on {addr} (the cluster publishes it)",
            route.service, route.service_type, route.port
        ),
        (_, Some(nodes)) if !route.is_tunnel() => format!(
            "{} is {}, port {} → nodePort {}",
            route.service, route.service_type, route.port, nodes.node_port
        ),
        _ => format!(
            "{} is {}, port {} → tunnel through the API server",
            route.service, route.service_type, route.port
        ),
    };
    checks.push(Check::pass(format!("{name}: service"), service));
    if route.ready_endpoints == 0 {
        let cause = Cause::new(
            CauseId::NoReadyEndpoints,
            format!("service {} has no ready endpoints", route.service),
        )
        .with_fix(format!("check its pods: kubectl get pods -n {}", route.namespace));
        checks.push(Check::fail(format!("{name}: endpoints"), cause));
        // kube-proxy refuses the nodePort of a service with no ready endpoint: no more to learn.
        return checks.push(local);
    }
    checks.push(Check::pass(
        format!("{name}: endpoints"),
        format!("{} ready", route.ready_endpoints),
    ));
    if route.is_tunnel() {
        // Tunnels are opened per connection by the engine; the pods being ready is what can be checked.
        return checks.push(local);
    }
    if let RoutePath::Host(addr) = &route.path {
        // A watched port is held by the cluster's own proxy: it must answer, not be free.
        return checks.push(match route.connect(timeout).await {
            Ok(_) => Check::pass(format!("{name}: port"), format!("{addr} answers")),
            Err(cause) => Check::fail(format!("{name}: port"), cause),
        });
    }
    checks.push(match route.connect_from(0, timeout).await {
        Ok((_, i)) => {
            let nodes = route.nodes().expect("connected through a node");
            let target = &nodes.targets[i];
            let detail = format!("{} ({}:{}) answers", target.node, target.host, nodes.node_port);
            Check::pass(format!("{name}: node"), detail)
        }
        Err(cause) => Check::fail(format!("{name}: node"), cause),
    });
    checks.push(local);
}

fn kubectl_context_check(context: &str, current: Option<&str>) -> Check {
    if current == Some(context) {
        return Check::pass("kubectl context", format!("current-context is {context}"));
    }
    let fix = match kind_cluster_name(context) {
        Some(name) => format!("`porthole fix-kubeconfig` (what `kind export kubeconfig --name {name}` does)"),
        None => format!("`porthole fix-kubeconfig` or `kubectl config use-context {context}`"),
    };
    let message = match current {
        Some(current) => format!(
            "kubectl's current-context is {current}, Porthole uses {context} (Porthole is unaffected; your kubectl and scripts are)"
        ),
        None => format!("kubectl has no current-context; Porthole uses {context}"),
    };
    // Porthole uses its own context either way: a warning, not a failure.
    Check {
        ok: true,
        warning: true,
        ..Check::fail(
            "kubectl context",
            Cause::new(CauseId::ContextMismatch, message).with_fix(fix),
        )
    }
}

fn local_port_checks<'a>(forwards: impl Iterator<Item = &'a ForwardSpec>, checks: &mut Vec<Check>) {
    for spec in forwards.filter(|f| f.enabled) {
        checks.push(local_port_check(
            &spec.name,
            SocketAddr::new(spec.bind, spec.local_port),
        ));
    }
}

fn local_port_check(name: &str, addr: SocketAddr) -> Check {
    let check = format!("{name}: local port");
    if addr.port() == 0 {
        return Check::pass(check, "any free port");
    }
    match std::net::TcpListener::bind(addr) {
        Ok(_) => Check::pass(check, format!("{addr} is free")),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => match holder::find(addr.port(), addr.ip()) {
            Some(h) if is_porthole(&h.command) => Check::pass(check, format!("{addr} is served by Porthole ({h})")),
            Some(h) => Check::fail(
                check,
                Cause::new(CauseId::PortInUse, format!("{addr} is held by {h}"))
                    .with_fix(format!("stop it (`kill {}`) or choose another `local_port`", h.pid)),
            ),
            None => Check::fail(
                check,
                Cause::new(CauseId::PortInUse, format!("{addr} is in use by another process")),
            ),
        },
        Err(e) => Check::fail(
            check,
            Cause::new(CauseId::ListenFailed, format!("cannot listen on {addr}: {e}")),
        ),
    }
}

/// A running Porthole (CLI or app) holding its own ports is fine.
fn is_porthole(command: &str) -> bool {
    let program = command.split_whitespace().next().unwrap_or_default();
    let name = std::path::Path::new(program)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    matches!(name, "porthole" | "porthole-app" | "Porthole")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubectl_context_mismatch_names_both_and_the_fix() {
        let check = kubectl_context_check("kind-openchoreo-local", Some("rancher-desktop"));
        assert!(check.ok && check.warning, "a warning: Porthole is unaffected");
        assert_eq!(check.cause, Some(CauseId::ContextMismatch));
        assert!(check.detail.contains("rancher-desktop") && check.detail.contains("kind-openchoreo-local"));
        assert!(
            check
                .fix
                .unwrap()
                .contains("kind export kubeconfig --name openchoreo-local")
        );
        assert!(!kubectl_context_check("kind-x", Some("kind-x")).warning);
    }

    #[test]
    fn local_port_check_names_the_holder() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let check = local_port_check("console", held.local_addr().unwrap());
        assert!(!check.ok);
        assert_eq!(check.cause, Some(CauseId::PortInUse));
        #[cfg(target_os = "linux")]
        assert!(
            check.detail.contains(&format!("pid {}", std::process::id())),
            "{}",
            check.detail
        );
    }
}
