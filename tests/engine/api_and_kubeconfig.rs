//! The API server and the kubeconfig: outages, credentials, kubectl's context, re-created clusters.

use super::*;

#[tokio::test]
async fn unreachable_api_degrades_but_traffic_still_flows() {
    let (cluster, _backend) = echo_cluster("apidown", "NodePort").await;
    let engine = start(&cluster, &forward("echo", NS, "echo")).await;
    let addr = local(&wait_healthy(&engine, "echo").await);
    let mut open = TcpStream::connect(addr).await.unwrap();
    round_trip(&mut open, b"before").await.unwrap();
    let mut events = engine.events();
    cluster.set_api_reachable(false);
    let degraded = wait_cause(&engine, "echo", State::Degraded, CauseId::ClusterUnreachable).await;
    assert!(degraded.route.is_some(), "the last known route is kept");
    let event = wait_event(&mut events, |e| matches!(e, Event::Cluster { .. })).await;
    let Event::Cluster { from, to, .. } = event else {
        unreachable!()
    };
    assert_eq!((from.state.as_str(), to.state.as_str()), ("connected", "unreachable"));
    assert_eq!(echo_once(addr, b"no API needed").await.unwrap(), b"no API needed");
    round_trip(&mut open, b"open connection too").await.unwrap();
    assert_eq!(engine.status().await.clusters[0].status.state, "unreachable");
    cluster.set_api_reachable(true);
    wait_healthy(&engine, "echo").await;
    round_trip(&mut open, b"and after").await.unwrap();
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn revoked_credentials_are_unauthorized() {
    let (cluster, _backend) = echo_cluster("auth", "NodePort").await;
    cluster.set_unauthorized(true);
    let engine = start(&cluster, &forward("echo", NS, "echo")).await;
    wait_cause(&engine, "echo", State::Down, CauseId::Unauthorized).await;
    cluster.set_unauthorized(false);
    let addr = local(&wait_healthy(&engine, "echo").await);
    // Revoked while running: the watches fail on their next request; the route is kept.
    cluster.set_unauthorized(true);
    cluster.set_api_reachable(false);
    cluster.set_api_reachable(true);
    let degraded = wait_cause(&engine, "echo", State::Degraded, CauseId::Unauthorized).await;
    assert!(degraded.route.is_some());
    assert_eq!(echo_once(addr, b"still").await.unwrap(), b"still");
    cluster.set_unauthorized(false);
    wait_healthy(&engine, "echo").await;
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_kubeconfig_with_the_wrong_certificates_is_a_credentials_problem() {
    let (cluster, _backend) = echo_cluster("stale", "NodePort").await;
    // Another cluster's CA and client certificate, pointed at this cluster's API server: what a
    // kubeconfig looks like after the cluster was re-created on the same port.
    let other = FakeCluster::start("stale").await;
    let text = std::fs::read_to_string(other.kubeconfig())
        .unwrap()
        .replace(&other.api_addr().to_string(), &cluster.api_addr().to_string());
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("config");
    std::fs::write(&kubeconfig, text).unwrap();
    let mut config = config(&cluster, &forward("echo", NS, "echo"));
    config.clusters[0].kubeconfig = Some(kubeconfig);
    let engine = Engine::start(config, tuning());
    let status = wait_cause(&engine, "echo", State::Down, CauseId::Unauthorized).await;
    let cause = status.health.cause.unwrap();
    assert!(cause.message.contains("TLS"), "{}", cause.message);
    assert!(cause.fix.unwrap().contains("kind export kubeconfig"));
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn kubectl_context_mismatch_is_reported_but_porthole_keeps_its_own() {
    let (cluster, _backend) = echo_cluster("mismatch", "NodePort").await;
    cluster.set_current_context("rancher-desktop");
    let engine = start(&cluster, &forward("echo", NS, "echo")).await;
    wait_healthy(&engine, "echo").await;
    let snapshot = engine.status().await;
    assert_eq!(snapshot.kubectl_context.as_deref(), Some("rancher-desktop"));
    assert_eq!(snapshot.context(), Some("kind-mismatch"));
    assert!(snapshot.context_mismatch());
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn missing_context_is_named_with_the_kind_fix() {
    let (cluster, _backend) = echo_cluster("ctx", "NodePort").await;
    let text = config(&cluster, &forward("echo", NS, "echo"));
    let mut config = text;
    config.clusters[0].context = Some("kind-openchoreo-local".into());
    let engine = Engine::start(config, tuning());
    let status = wait_cause(&engine, "echo", State::Down, CauseId::ContextMissing).await;
    let cause = status.health.cause.unwrap();
    assert!(cause.message.contains("kind-openchoreo-local"));
    assert!(
        cause
            .fix
            .unwrap()
            .contains("kind export kubeconfig --name openchoreo-local")
    );
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn kubeconfig_drift_is_pushed_as_events_in_both_directions() {
    let (cluster, _backend) = echo_cluster("ctxevent", "NodePort").await;
    let engine = start(&cluster, &forward("echo", NS, "echo")).await;
    wait_healthy(&engine, "echo").await;
    wait_snapshot(&engine, "kubeconfig inspected", |s| {
        s.kubeconfig.as_ref().is_some_and(|k| k.state.is_ok())
    })
    .await;
    let mut events = engine.events();
    // Like `kubectl config use-context rancher-desktop`: the file is replaced by rename.
    cluster.set_current_context("rancher-desktop");
    let event = wait_event(&mut events, |e| matches!(e, Event::Kubeconfig { .. })).await;
    let Event::Kubeconfig { from, to, fixed } = event else {
        unreachable!()
    };
    assert!(!fixed, "kubectl changed it, not Porthole");
    assert_eq!(from.map(|f| f.id()), Some("ok"));
    assert_eq!(
        to,
        KubeconfigState::ContextMismatch {
            expected: "kind-ctxevent".into(),
            current: "rancher-desktop".into()
        }
    );
    let snapshot = engine.snapshot().borrow().clone();
    assert_eq!(snapshot.kubectl_context.as_deref(), Some("rancher-desktop"));
    // The sentence every front end shows travels with the state.
    let report = snapshot.kubeconfig.unwrap();
    assert_eq!(
        report.sentence,
        "kubectl's current-context is rancher-desktop, not kind-ctxevent"
    );
    assert_eq!(report.fix.as_deref(), Some("set current-context to kind-ctxevent"));
    // Fixed with the same function the CLI and the tray use, and the recovery is an event too.
    let inspection = state::inspect(vec![cluster.kubeconfig()], "kind-ctxevent", &Tools::from_env())
        .await
        .unwrap();
    let plan = state::plan(&inspection, &Tools::from_env())
        .await
        .unwrap()
        .expect("a fix");
    let backups = tempfile::tempdir().unwrap();
    let into = porthole::write::Backups::at(backups.path());
    tokio::task::spawn_blocking(move || plan.apply(&into, LockWait::default()))
        .await
        .unwrap()
        .unwrap();
    let event = wait_event(&mut events, |e| matches!(e, Event::Kubeconfig { .. })).await;
    assert!(
        matches!(
            &event,
            Event::Kubeconfig {
                to: KubeconfigState::Ok { .. },
                ..
            }
        ),
        "{event:?}"
    );
    // An editor writing the file in place is seen too.
    let text = std::fs::read_to_string(cluster.kubeconfig()).unwrap();
    std::fs::write(
        cluster.kubeconfig(),
        text.replace("current-context: kind-ctxevent", "current-context: \"\""),
    )
    .unwrap();
    let event = wait_event(&mut events, |e| matches!(e, Event::Kubeconfig { .. })).await;
    let unset = matches!(
        &event,
        Event::Kubeconfig {
            to: KubeconfigState::ContextUnset { .. },
            ..
        }
    );
    assert!(unset, "{event:?}");
    // Porthole's own forwards never moved.
    assert_eq!(
        engine.status().await.forward("echo").unwrap().health.state,
        State::Healthy
    );
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_recreated_cluster_is_followed_through_its_new_kubeconfig_entry() {
    let (old, _old_backend) = echo_cluster("recreated", "NodePort").await;
    let engine = start(&old, &forward("echo", NS, "echo")).await;
    let addr = local(&wait_healthy(&engine, "echo").await);
    let old_route = engine.status().await.forward("echo").unwrap().route.clone().unwrap();

    // `kind delete cluster && kind create cluster`: a new API port, new certificates, new node
    // addresses; `kind export kubeconfig` rewrites the entry in the same file.
    old.set_api_reachable(false);
    let (new, _new_backend) = echo_cluster("recreated", "NodePort").await;
    let text = std::fs::read_to_string(new.kubeconfig()).unwrap();
    let staging = old.kubeconfig().with_extension("new");
    std::fs::write(&staging, text).unwrap();
    std::fs::rename(&staging, old.kubeconfig()).unwrap();

    let status = wait_for(&engine, "echo", "on the new cluster", |f| {
        f.health.state == State::Healthy && f.route.as_ref().is_some_and(|r| r.target != old_route.target)
    })
    .await;
    assert_eq!(local(&status), addr, "same listener throughout");
    assert_eq!(echo_once(addr, b"new cluster").await.unwrap(), b"new cluster");
    engine.shutdown(Duration::from_secs(1)).await;
}
