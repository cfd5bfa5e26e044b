//! The engine end to end: real sockets through a fake kind cluster's simulated kube-proxy.

mod support;

use std::time::Duration;

use porthole::Event;
use porthole::engine::Engine;
use porthole::health::{CauseId, State};
use porthole::kubeconfig::state::{self, KubeconfigState};
use porthole::kubeconfig::tools::Tools;
use porthole::write::LockWait;
use support::porthole::*;
use support::{Backend, FakeCluster, port, service};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn start(cluster: &FakeCluster, forwards: &str) -> Engine {
    Engine::start(config(cluster, forwards), tuning())
}

#[tokio::test]
async fn bytes_arrive_intact_both_ways() {
    const SIZE: usize = 100 << 20;
    let (cluster, _backend) = echo_cluster("bulk", "NodePort").await;
    let engine = start(&cluster, &forward("echo", NS, "echo")).await;
    let addr = local(&wait_healthy(&engine, "echo").await);

    let data = pattern(42, SIZE);
    let sent = checksum(&data);
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        write.write_all(&data).await.unwrap();
        write.shutdown().await.unwrap();
    });
    let mut back = Vec::with_capacity(SIZE);
    tokio::time::timeout(Duration::from_secs(120), read.read_to_end(&mut back))
        .await
        .unwrap()
        .unwrap();
    writer.await.unwrap();
    assert_eq!(back.len(), SIZE);
    assert_eq!(checksum(&back), sent, "100 MiB each way, unchanged");

    let status = engine.status().await;
    let stats = status.forward("echo").unwrap().stats;
    assert_eq!((stats.bytes_up, stats.bytes_down), (SIZE as u64, SIZE as u64));
    assert_eq!(stats.total, 1);
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn half_close_reaches_the_backend_and_the_answer_still_arrives() {
    let (cluster, _backend) = echo_cluster("halfclose", "NodePort").await;
    let engine = start(&cluster, &forward("echo", NS, "echo")).await;
    let addr = local(&wait_healthy(&engine, "echo").await);
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"last words").await.unwrap();
    s.shutdown().await.unwrap();
    let mut back = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        back, b"last words",
        "echoed after our FIN, then the backend's FIN came through"
    );
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn five_hundred_concurrent_connections() {
    raise_fd_limit();
    let (cluster, _backend) = echo_cluster("many", "NodePort").await;
    let engine = start(&cluster, &forward("echo", NS, "echo")).await;
    let addr = local(&wait_healthy(&engine, "echo").await);
    let open = concurrent_round_trips(addr, 500, 4096).await;
    let status = engine.status().await;
    assert_eq!(status.forward("echo").unwrap().stats.active, 500);
    drop(open);
    engine.shutdown(Duration::from_secs(1)).await;
}

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
        State::Down,
        "recovery is reported as a transition from down"
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
async fn cluster_ip_service_is_the_wrong_type_and_says_what_to_change() {
    let (cluster, _backend) = echo_cluster("clusterip", "NodePort").await;
    cluster.apply_service(service(NS, "internal", "ClusterIP", vec![port("http", 80)]));
    let engine = start(&cluster, &forward("internal", NS, "internal")).await;
    let status = wait_cause(&engine, "internal", State::Down, CauseId::WrongServiceType).await;
    let cause = status.health.cause.unwrap();
    assert!(cause.message.contains("ClusterIP"), "{}", cause.message);
    assert!(cause.fix.unwrap().contains("type: NodePort"));

    // Changing the live service to NodePort heals the forward without a restart.
    cluster.apply_service(service(NS, "internal", "NodePort", vec![port("http", 80)]));
    cluster.add_endpoint(NS, "internal", "internal-0", _backend.addr(), true);
    wait_healthy(&engine, "internal").await;
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn missing_named_port_lists_the_ports_that_exist() {
    let (cluster, _backend) = echo_cluster("portname", "NodePort").await;
    let forwards = format!("{}service_port = \"otlp\"\n", forward("echo", NS, "echo"));
    let engine = start(&cluster, &forwards).await;
    let status = wait_cause(&engine, "echo", State::Down, CauseId::PortNotFound).await;
    let message = status.health.cause.unwrap().message;
    assert!(
        message.contains("`otlp`") && message.contains("tcp 7000/TCP"),
        "{message}"
    );
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn missing_namespace_and_unready_nodes_are_named() {
    let (cluster, _backend) = echo_cluster("causes", "NodePort").await;
    let forwards = format!("{}{}", forward("gone", "nowhere", "echo"), forward("echo", NS, "echo"));
    let engine = start(&cluster, &forwards).await;
    wait_cause(&engine, "gone", State::Down, CauseId::NamespaceMissing).await;
    let addr = local(&wait_healthy(&engine, "echo").await);
    // Nodes NotReady (a cluster waking from sleep): kube-proxy still serves, so does Porthole.
    cluster.set_node_ready("causes-worker", false);
    cluster.set_node_ready("causes-control-plane", false);
    let status = wait_cause(&engine, "echo", State::Degraded, CauseId::NodeUnreachable).await;
    assert!(status.health.cause.unwrap().message.contains("no node is Ready"));
    assert_eq!(status.route.unwrap().ready_nodes, 0);
    assert_eq!(echo_once(addr, b"still served").await.unwrap(), b"still served");
    cluster.set_node_ready("causes-worker", true);
    wait_healthy(&engine, "echo").await;
    // No node at all: down.
    cluster.remove_node("causes-worker");
    cluster.remove_node("causes-control-plane");
    let status = wait_cause(&engine, "echo", State::Down, CauseId::NodeUnreachable).await;
    assert!(
        status
            .health
            .cause
            .unwrap()
            .message
            .contains("no node has an InternalIP address")
    );
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn http_probe_fails_when_the_pod_stops_answering() {
    let cluster = FakeCluster::start("probe").await;
    cluster.add_node("probe-worker");
    cluster.add_namespace(NS);
    let web = Backend::http("hello").await;
    cluster.apply_service(service(NS, "web", "NodePort", vec![port("http", 80)]));
    cluster.add_endpoint(NS, "web", "web-0", web.addr(), true);
    let forwards = format!("{}probe = {{ http = \"/healthz\" }}\n", forward("web", NS, "web"));
    let engine = start(&cluster, &forwards).await;
    let status = wait_healthy(&engine, "web").await;
    assert_eq!(http_get(local(&status)).await, "hello");
    // The process dies but the endpoint still says ready: only the probe can tell.
    web.stop().await;
    let down = wait_cause(&engine, "web", State::Down, CauseId::ProbeFailed).await;
    assert!(down.health.cause.unwrap().message.contains("apps/web"));
    engine.shutdown(Duration::from_secs(1)).await;
}

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
    let Event::Cluster { from, to } = event else {
        unreachable!()
    };
    assert_eq!((from.state.as_str(), to.state.as_str()), ("connected", "unreachable"));
    assert_eq!(echo_once(addr, b"no API needed").await.unwrap(), b"no API needed");
    round_trip(&mut open, b"open connection too").await.unwrap();
    assert_eq!(engine.status().await.cluster.state, "unreachable");
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
    config.cluster.kubeconfig = Some(kubeconfig);
    let engine = Engine::start(config, tuning());
    let status = wait_cause(&engine, "echo", State::Down, CauseId::Unauthorized).await;
    let cause = status.health.cause.unwrap();
    assert!(cause.message.contains("TLS"), "{}", cause.message);
    assert!(cause.fix.unwrap().contains("kind export kubeconfig"));
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
async fn local_port_in_use_names_the_holder_then_binds_when_freed() {
    let (cluster, _backend) = echo_cluster("inuse", "NodePort").await;
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = squatter.local_addr().unwrap().port();
    let forwards = forward("echo", NS, "echo").replace("local_port = 0", &format!("local_port = {taken}"));
    let engine = start(&cluster, &forwards).await;
    let status = wait_cause(&engine, "echo", State::Down, CauseId::PortInUse).await;
    let message = status.health.cause.unwrap().message;
    assert!(message.contains(&format!("port {taken}")), "{message}");
    assert!(
        message.contains(&format!("pid {}", std::process::id())),
        "names this process: {message}"
    );
    drop(squatter);
    let status = wait_healthy(&engine, "echo").await;
    assert_eq!(local(&status).port(), taken);
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
    assert_eq!(snapshot.context.as_deref(), Some("kind-mismatch"));
    assert!(snapshot.context_mismatch());
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn missing_context_is_named_with_the_kind_fix() {
    let (cluster, _backend) = echo_cluster("ctx", "NodePort").await;
    let text = config(&cluster, &forward("echo", NS, "echo"));
    let mut config = text;
    config.cluster.context = Some("kind-openchoreo-local".into());
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
async fn config_reload_adds_and_removes_one_forward_without_touching_the_others() {
    let (cluster, _backend) = echo_cluster("reload", "NodePort").await;
    let engine = start(
        &cluster,
        &format!("{}{}", forward("a", NS, "echo"), forward("b", NS, "echo")),
    )
    .await;
    let a = local(&wait_healthy(&engine, "a").await);
    let b = local(&wait_healthy(&engine, "b").await);
    let mut kept = TcpStream::connect(a).await.unwrap();
    round_trip(&mut kept, b"before reload").await.unwrap();

    let mut events = engine.events();
    engine
        .apply(config(
            &cluster,
            &format!("{}{}", forward("a", NS, "echo"), forward("c", NS, "echo")),
        ))
        .await
        .unwrap();
    let c = local(&wait_healthy(&engine, "c").await);
    let snapshot = engine.status().await;
    let names: Vec<&str> = snapshot.forwards.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, vec!["a", "c"]);
    assert_eq!(local(snapshot.forward("a").unwrap()), a, "a keeps its listener");
    assert_eq!(snapshot.forward("a").unwrap().stats.total, 1, "and its counters");
    round_trip(&mut kept, b"after reload").await.unwrap();
    assert!(TcpStream::connect(b).await.is_err(), "b's listener is closed");
    assert_eq!(echo_once(c, b"c works").await.unwrap(), b"c works");
    let mut seen = Vec::new();
    while let Ok(event) = events.try_recv() {
        seen.push(event);
    }
    assert!(
        !seen
            .iter()
            .any(|e| matches!(e, Event::Forward { name, .. } | Event::Route { name, .. } if name == "a")),
        "a was not restarted: {seen:?}"
    );
    assert!(seen.contains(&Event::Removed { name: "b".into() }));
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn disable_and_enable_one_forward() {
    let (cluster, _backend) = echo_cluster("toggle", "NodePort").await;
    let engine = start(
        &cluster,
        &format!("{}{}", forward("a", NS, "echo"), forward("b", NS, "echo")),
    )
    .await;
    let a = local(&wait_healthy(&engine, "a").await);
    wait_healthy(&engine, "b").await;
    engine.set_enabled("a", false).await.unwrap();
    wait_for(&engine, "a", "disabled", |f| f.health.state == State::Disabled).await;
    assert!(TcpStream::connect(a).await.is_err());
    assert_eq!(engine.status().await.forward("b").unwrap().health.state, State::Healthy);
    engine.set_enabled("a", true).await.unwrap();
    wait_healthy(&engine, "a").await;
    assert!(engine.set_enabled("nope", true).await.is_err());
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn graceful_shutdown_stops_accepting_and_drains_open_connections() {
    let (cluster, _backend) = echo_cluster("drain", "NodePort").await;
    let engine = start(&cluster, &forward("echo", NS, "echo")).await;
    let addr = local(&wait_healthy(&engine, "echo").await);
    let mut open = TcpStream::connect(addr).await.unwrap();
    round_trip(&mut open, b"hello").await.unwrap();

    let stopping = tokio::spawn({
        let engine = engine.clone();
        async move { engine.shutdown(WAIT).await }
    });
    // The listener closes first; the open connection keeps working while it drains.
    tokio::time::timeout(WAIT, async {
        while TcpStream::connect(addr).await.is_ok() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("listener closed");
    round_trip(&mut open, b"still draining").await.unwrap();
    assert!(!stopping.is_finished());
    drop(open);
    tokio::time::timeout(WAIT, stopping)
        .await
        .expect("shutdown finished once drained")
        .unwrap();
}

#[tokio::test]
async fn shutdown_closes_connections_that_outlive_the_drain() {
    let (cluster, _backend) = echo_cluster("cut", "NodePort").await;
    let engine = start(&cluster, &forward("echo", NS, "echo")).await;
    let addr = local(&wait_healthy(&engine, "echo").await);
    let mut open = TcpStream::connect(addr).await.unwrap();
    round_trip(&mut open, b"hello").await.unwrap();
    engine.shutdown(Duration::from_millis(100)).await;
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(WAIT, open.read(&mut buf))
        .await
        .expect("closed, not hanging");
    assert!(matches!(read, Ok(0) | Err(_)), "the connection was closed");
}

#[tokio::test]
async fn the_quick_start_preset_serves_all_five_ports() {
    let quick_start = FakeCluster::openchoreo().await;
    let mut config = porthole::Config::preset("openchoreo").unwrap();
    config.cluster.kubeconfig = Some(quick_start.kubeconfig());
    for f in &mut config.forwards {
        f.local_port = 0;
    }
    let engine = Engine::start(config, tuning());
    let snapshot = wait_snapshot(&engine, "all healthy", |s| {
        s.forwards.len() == 5 && s.forwards.iter().all(|f| f.health.state == State::Healthy)
    })
    .await;
    for (name, body) in [
        ("console", "amp-console"),
        ("api", "amp-api"),
        ("traces-observer", "amp-traces-observer"),
    ] {
        assert_eq!(http_get(local(snapshot.forward(name).unwrap())).await, body);
    }
    let gateway = snapshot.forward("gateway").unwrap().route.clone().unwrap();
    assert_eq!(
        (gateway.service_type.as_str(), gateway.port.as_str()),
        ("LoadBalancer", "https 443/TCP")
    );
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn kubeconfig_drift_is_pushed_as_events_in_both_directions() {
    let (cluster, _backend) = echo_cluster("ctxevent", "NodePort").await;
    let engine = start(&cluster, &forward("echo", NS, "echo")).await;
    wait_healthy(&engine, "echo").await;
    wait_snapshot(&engine, "kubeconfig inspected", |s| {
        s.kubeconfig.as_ref().is_some_and(|k| k.is_ok())
    })
    .await;
    let mut events = engine.events();
    // Like `kubectl config use-context rancher-desktop`: the file is replaced by rename.
    cluster.set_current_context("rancher-desktop");
    let event = wait_event(&mut events, |e| matches!(e, Event::Kubeconfig { .. })).await;
    let Event::Kubeconfig { from, to } = event else {
        unreachable!()
    };
    assert_eq!(from.map(|f| f.id()), Some("ok"));
    assert_eq!(
        to,
        KubeconfigState::ContextMismatch {
            expected: "kind-ctxevent".into(),
            current: "rancher-desktop".into()
        }
    );
    assert_eq!(
        engine.snapshot().borrow().kubectl_context.as_deref(),
        Some("rancher-desktop")
    );
    // Fixed with the same function the CLI and the tray use, and the recovery is an event too.
    let inspection = state::inspect(vec![cluster.kubeconfig()], "kind-ctxevent", &Tools::from_env())
        .await
        .unwrap();
    let plan = state::plan(&inspection, &Tools::from_env())
        .await
        .unwrap()
        .expect("a fix");
    tokio::task::spawn_blocking(move || plan.apply(LockWait::default()))
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
async fn every_transition_is_an_event_including_disable_and_removal() {
    let (cluster, _backend) = echo_cluster("events", "NodePort").await;
    let engine = start(
        &cluster,
        &format!("{}{}", forward("a", NS, "echo"), forward("b", NS, "echo")),
    )
    .await;
    wait_healthy(&engine, "a").await;
    wait_healthy(&engine, "b").await;
    let mut events = engine.events();
    engine.set_enabled("a", false).await.unwrap();
    let event = wait_event(&mut events, |e| matches!(e, Event::Forward { name, .. } if name == "a")).await;
    let Event::Forward { from, to, .. } = event else {
        unreachable!()
    };
    assert_eq!((from.state, to.state), (State::Healthy, State::Disabled));
    engine.apply(config(&cluster, &forward("a", NS, "echo"))).await.unwrap();
    let removed = wait_event(&mut events, |e| matches!(e, Event::Removed { .. })).await;
    assert_eq!(removed, Event::Removed { name: "b".into() });
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn the_holder_of_a_taken_port_is_named_when_it_is_another_process() {
    let (cluster, _backend) = echo_cluster("holder", "NodePort").await;
    // A leftover forwarder from an earlier session: another process listening on the port.
    let script = "import socket,sys\ns=socket.socket()\ns.bind(('127.0.0.1',0))\ns.listen()\nprint(s.getsockname()[1],flush=True)\nsys.stdin.read()\n";
    let mut squatter = std::process::Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(squatter.stdout.take().unwrap()), &mut line).unwrap();
    let port: u16 = line.trim().parse().unwrap();
    let forwards = forward("echo", NS, "echo").replace("local_port = 0", &format!("local_port = {port}"));
    let engine = start(&cluster, &forwards).await;
    let status = wait_cause(&engine, "echo", State::Down, CauseId::PortInUse).await;
    let cause = status.health.cause.unwrap();
    let message = &cause.message;
    assert!(
        message.contains(&format!("pid {} (", squatter.id()))
            && message.contains("python3 -c import socket,sys s=socket.socket()"),
        "{message}"
    );
    assert_eq!(
        cause.fix.unwrap(),
        format!("stop it (`kill {}`) or choose another `local_port`", squatter.id())
    );
    squatter.kill().unwrap();
    squatter.wait().unwrap();
    wait_healthy(&engine, "echo").await;
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn retargeting_a_forward_keeps_its_listener_and_open_connections() {
    let (cluster, _backend) = echo_cluster("retarget", "NodePort").await;
    let web = Backend::http("the other service").await;
    cluster.apply_service(service(NS, "web", "NodePort", vec![port("http", 80)]));
    cluster.add_endpoint(NS, "web", "web-0", web.addr(), true);
    let engine = start(&cluster, &forward("a", NS, "echo")).await;
    let addr = local(&wait_healthy(&engine, "a").await);
    let mut open = TcpStream::connect(addr).await.unwrap();
    round_trip(&mut open, b"to echo").await.unwrap();

    let retargeted = format!("{}probe = {{ http = \"/\" }}\n", forward("a", NS, "web"));
    engine.apply(config(&cluster, &retargeted)).await.unwrap();
    let web_port = cluster.node_port(NS, "web", 0).unwrap();
    let status = wait_for(&engine, "a", "retargeted and healthy", |f| {
        f.health.state == State::Healthy && f.route.as_ref().map(|r| r.node_port) == Some(web_port)
    })
    .await;
    assert_eq!(
        (local(&status), status.service.as_str()),
        (addr, "web"),
        "same listener, new service"
    );
    round_trip(&mut open, b"old connection, old service").await.unwrap();
    assert_eq!(http_get(addr).await, "the other service");
    assert_eq!(
        engine.status().await.forward("a").unwrap().stats.total,
        2,
        "same forward, same counters"
    );
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn dropping_the_last_handle_stops_everything() {
    let (cluster, _backend) = echo_cluster("dropped", "NodePort").await;
    let engine = start(&cluster, &forward("echo", NS, "echo")).await;
    let addr = local(&wait_healthy(&engine, "echo").await);
    let mut open = TcpStream::connect(addr).await.unwrap();
    round_trip(&mut open, b"hello").await.unwrap();
    let mut snapshots = engine.snapshot();
    drop(engine);
    // The engine's own tasks hold no handle: the listener closes and the connection is cut.
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(WAIT, open.read(&mut buf))
        .await
        .expect("connection closed");
    assert!(matches!(read, Ok(0) | Err(_)));
    tokio::time::timeout(WAIT, async {
        while TcpStream::connect(addr).await.is_ok() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("listener closed");
    // Every task that held the snapshot's sender is gone.
    tokio::time::timeout(WAIT, async { while snapshots.changed().await.is_ok() {} })
        .await
        .expect("engine gone");
}

#[tokio::test]
async fn tcp_probe_sees_a_pod_that_refuses_behind_the_node_port() {
    let (cluster, backend) = echo_cluster("refuses", "NodePort").await;
    let engine = start(&cluster, &forward("echo", NS, "echo")).await;
    wait_healthy(&engine, "echo").await;
    // The process dies; its endpoint still says ready: the node port accepts, the pod refuses.
    backend.stop().await;
    let down = wait_cause(&engine, "echo", State::Down, CauseId::ProbeFailed).await;
    let cause = down.health.cause.unwrap();
    assert!(
        cause.message.contains("nothing serves behind the nodePort"),
        "{}",
        cause.message
    );
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn connection_counters_are_pushed_without_asking() {
    let (cluster, _backend) = echo_cluster("counters", "NodePort").await;
    let engine = start(&cluster, &forward("echo", NS, "echo")).await;
    let addr = local(&wait_healthy(&engine, "echo").await);
    let mut open = TcpStream::connect(addr).await.unwrap();
    round_trip(&mut open, b"12345").await.unwrap();
    // Only the watched snapshot: no `status()` call refreshes it.
    let pushed = wait_for(&engine, "echo", "counting", |f| {
        f.stats.active == 1 && f.stats.bytes_down == 5
    })
    .await;
    assert_eq!((pushed.stats.total, pushed.stats.bytes_up), (1, 5));
    drop(open);
    wait_for(&engine, "echo", "closed", |f| f.stats.active == 0).await;
    engine.shutdown(Duration::from_secs(1)).await;
}
