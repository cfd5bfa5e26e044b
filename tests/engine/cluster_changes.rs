//! The cluster changes under running forwards: pods, nodePorts, services, nodes, missed deletes.

use super::*;

#[tokio::test]
async fn pod_restart_then_new_connections_succeed() {
    let (cluster, mut backend) = echo_cluster("restart", "NodePort").await;
    let engine = start(&cluster, &forward("echo", NS, "echo")).await;
    let addr = local(&wait_healthy(&engine, "echo").await);
    let mut events = engine.events();
    cluster.set_endpoint_ready(NS, "echo-0", false);
    backend.stop().await;
    let down = wait_cause(&engine, "echo", State::Down, CauseId::NoReadyEndpoints).await;
    assert!(down.health.cause.unwrap().message.contains("apps/echo"));
    backend.restart().await;
    cluster.set_endpoint_backend(NS, "echo-0", backend.addr());
    cluster.set_endpoint_ready(NS, "echo-0", true);
    wait_healthy(&engine, "echo").await;
    assert_eq!(echo_once(addr, b"back again").await.unwrap(), b"back again");
    let event = wait_event(
        &mut events,
        |e| matches!(e, Event::Forward { to, .. } if to.state == State::Healthy),
    )
    .await;
    let Event::Forward { from, .. } = event else {
        unreachable!()
    };
    assert_eq!(
        from.state,
        State::Starting,
        "recovery passes through starting: the pod that came back is proven by a probe first"
    );
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn node_port_change_retargets_new_connections_without_a_restart() {
    let (cluster, _backend) = echo_cluster("nodeport", "NodePort").await;
    let engine = start(&cluster, &forward("echo", NS, "echo")).await;
    let before = wait_healthy(&engine, "echo").await;
    let addr = local(&before);
    let mut open = TcpStream::connect(addr).await.unwrap();
    round_trip(&mut open, b"before").await.unwrap();

    let mut events = engine.events();
    let new_port = cluster.change_node_port(NS, "echo", 0);
    let after = wait_for(&engine, "echo", "retargeted", |f| {
        f.route.as_ref().map(|r| r.node_port) == Some(new_port)
    })
    .await;
    let event = wait_event(&mut events, |e| matches!(e, Event::Route { .. })).await;
    let Event::Route { from, to, .. } = event else {
        unreachable!()
    };
    assert!(
        from.unwrap()
            .ends_with(&format!(":{}", before.route.as_ref().unwrap().node_port))
    );
    assert!(to.unwrap().ends_with(&format!(":{new_port}")));
    assert_eq!(local(&after), addr, "same listener");
    assert_ne!(before.route.unwrap().node_port, new_port);
    assert_eq!(echo_once(addr, b"after").await.unwrap(), b"after");
    round_trip(&mut open, b"existing connection untouched").await.unwrap();
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn service_deleted_then_recreated() {
    let (cluster, backend) = echo_cluster("recreate", "NodePort").await;
    let engine = start(&cluster, &forward("echo", NS, "echo")).await;
    wait_healthy(&engine, "echo").await;
    cluster.delete_service(NS, "echo");
    let down = wait_cause(&engine, "echo", State::Down, CauseId::ServiceMissing).await;
    assert!(down.route.is_none(), "a deleted service's route is withdrawn");
    cluster.apply_service(service(NS, "echo", "NodePort", vec![port("tcp", 7000)]));
    cluster.add_endpoint(NS, "echo", "echo-1", backend.addr(), true);
    let status = wait_healthy(&engine, "echo").await;
    assert_eq!(echo_once(local(&status), b"new service").await.unwrap(), b"new service");
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn deletes_missed_during_an_outage_are_seen_after_it() {
    let (cluster, _backend) = echo_cluster("missed", "NodePort").await;
    let engine = start(&cluster, &forward("echo", NS, "echo")).await;
    wait_healthy(&engine, "echo").await;
    cluster.set_api_reachable(false);
    wait_cause(&engine, "echo", State::Degraded, CauseId::ClusterUnreachable).await;
    // Deleted while nobody watched, and the history compacted: no DELETED event will ever come.
    cluster.delete_service(NS, "echo");
    cluster.compact();
    cluster.set_api_reachable(true);
    let status = wait_cause(&engine, "echo", State::Down, CauseId::ServiceMissing).await;
    assert!(status.route.is_none());
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_node_with_a_new_address_is_followed() {
    let (cluster, _backend) = echo_cluster("moved", "NodePort").await;
    let forwards = forward("echo", NS, "echo");
    let engine = start(&cluster, &forwards).await;
    let addr = local(&wait_healthy(&engine, "echo").await);
    let new_ip = cluster.move_node("moved-worker");
    let status = wait_for(&engine, "echo", "on the new address", |f| {
        f.route
            .as_ref()
            .is_some_and(|r| r.target.starts_with(&format!("{new_ip}:")))
    })
    .await;
    assert_eq!(status.route.unwrap().node, "moved-worker");
    assert_eq!(echo_once(addr, b"moved").await.unwrap(), b"moved");
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_node_port_change_kube_proxy_programs_a_second_later_is_never_down() {
    let (cluster, _backend) = echo_cluster("proxylag", "NodePort").await;
    // The engine's own confirmation (retry after a second, three failures), as users run it.
    let defaults = porthole::Tuning::default();
    let tuning = porthole::Tuning {
        probe_retry: defaults.probe_retry,
        failure_threshold: defaults.failure_threshold,
        ..tuning()
    };
    let engine = Engine::start(config(&cluster, &forward("echo", NS, "echo")), tuning);
    let addr = local(&wait_healthy(&engine, "echo").await);
    let mut events = engine.events();
    // A real kube-proxy programs a changed nodePort up to about a second after the API says it.
    cluster.set_proxy_lag(Duration::from_secs(1));
    let new_port = cluster.change_node_port(NS, "echo", 0);
    let mut seen = Vec::new();
    let healthy_again = tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(Event::Forward { to, .. }) = events.recv().await {
                seen.push(to.state);
                if to.state == State::Healthy {
                    return;
                }
            }
        }
    })
    .await;
    assert!(healthy_again.is_ok(), "never healthy again: {seen:?}");
    assert!(
        !seen.contains(&State::Down),
        "a lagging kube-proxy took it down: {seen:?}"
    );
    assert_eq!(
        engine
            .status()
            .await
            .forward("echo")
            .unwrap()
            .route
            .as_ref()
            .unwrap()
            .node_port,
        new_port
    );
    assert_eq!(echo_once(addr, b"on the new port").await.unwrap(), b"on the new port");
    engine.shutdown(Duration::from_secs(1)).await;
}
