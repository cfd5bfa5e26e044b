//! Config changes, enabling and disabling, events, shutdown and the preset.

use super::*;

/// An engine with forwards `a` and `b` to the echo service, both healthy, and their addresses.
async fn start_a_and_b(cluster: &FakeCluster) -> (Engine, std::net::SocketAddr, std::net::SocketAddr) {
    let engine = start(
        cluster,
        &format!("{}{}", forward("a", NS, "echo"), forward("b", NS, "echo")),
    )
    .await;
    let a = local(&wait_healthy(&engine, "a").await);
    let b = local(&wait_healthy(&engine, "b").await);
    (engine, a, b)
}

#[tokio::test]
async fn config_reload_adds_and_removes_one_forward_without_touching_the_others() {
    let (cluster, _backend) = echo_cluster("reload", "NodePort").await;
    let (engine, a, b) = start_a_and_b(&cluster).await;
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
    let (engine, a, _) = start_a_and_b(&cluster).await;
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
async fn a_forward_turned_off_stays_off_until_the_config_changes_it() {
    let (cluster, _backend) = echo_cluster("policy", "NodePort").await;
    let both = format!("{}{}", forward("a", NS, "echo"), forward("b", NS, "echo"));
    let (engine, _, b) = start_a_and_b(&cluster).await;
    engine.set_enabled("a", false).await.unwrap();
    wait_for(&engine, "a", "disabled", |f| f.health.state == State::Disabled).await;
    let off = |config: Option<porthole::Config>| !config.unwrap().forward("a").unwrap().enabled;

    // The same config again (SIGHUP, an editor saving twice), then one that changes only `b`:
    // `a` stays off, and `b` keeps its listener where it was not changed.
    engine.apply(config(&cluster, &both)).await.unwrap();
    assert!(off(engine.config().await));
    assert_eq!(local(engine.status().await.forward("b").unwrap()), b);
    let b_probed = format!(
        "{}{}probe = \"tcp\"\n",
        forward("a", NS, "echo"),
        forward("b", NS, "echo")
    );
    engine.apply(config(&cluster, &b_probed)).await.unwrap();
    assert!(off(engine.config().await));
    assert_eq!(
        engine.status().await.forward("a").unwrap().health.state,
        State::Disabled
    );

    // The config changes `a` itself: it wins, and `a` runs again.
    let a_probed = format!(
        "{}probe = \"tcp\"\n{}probe = \"tcp\"\n",
        forward("a", NS, "echo"),
        forward("b", NS, "echo")
    );
    engine.apply(config(&cluster, &a_probed)).await.unwrap();
    assert!(!off(engine.config().await));
    wait_healthy(&engine, "a").await;
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn two_forwards_swapping_ports_both_come_up() {
    let (cluster, _backend) = echo_cluster("swap", "NodePort").await;
    let (engine, a, b) = start_a_and_b(&cluster).await;
    let swapped = format!(
        "{}{}",
        forward("a", NS, "echo").replace("local_port = 0", &format!("local_port = {}", b.port())),
        forward("b", NS, "echo").replace("local_port = 0", &format!("local_port = {}", a.port()))
    );
    assert!(swapped.contains(&b.port().to_string()), "{swapped}");
    engine.apply(config(&cluster, &swapped)).await.unwrap();
    assert_eq!(local(&wait_healthy(&engine, "a").await).port(), b.port());
    assert_eq!(local(&wait_healthy(&engine, "b").await).port(), a.port());
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
    config.clusters[0].kubeconfig = Some(quick_start.kubeconfig());
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
async fn every_transition_is_an_event_including_disable_and_removal() {
    let (cluster, _backend) = echo_cluster("events", "NodePort").await;
    let (engine, _, _) = start_a_and_b(&cluster).await;
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
async fn quick_successive_context_changes_end_connected_to_the_last() {
    let (cluster, _backend) = echo_cluster("contexts", "NodePort").await;
    let engine = start(&cluster, &forward("a", NS, "echo")).await;
    let a = local(&wait_healthy(&engine, "a").await);
    let pinned = config(&cluster, &forward("a", NS, "echo"));
    let mut following = pinned.clone();
    following.clusters[0].context = None;
    // As from the settings page: "kubectl's current-context", then back, each a reconnect,
    // the second before the first has finished connecting.
    for round in 0..5 {
        engine.apply(following.clone()).await.unwrap();
        engine.apply(pinned.clone()).await.unwrap();
        wait_snapshot(&engine, "connected after the last change", |s| {
            s.clusters[0].status.state == "connected"
                && s.forward("a").is_some_and(|f| f.health.state == State::Healthy)
        })
        .await;
        assert_eq!(
            echo_once(a, b"still works").await.unwrap(),
            b"still works",
            "round {round}"
        );
    }
}

/// A listener on `addr` whose accept queue is full, so the kernel drops further SYNs: a connect
/// to it hangs (a firewalled node, a VM that froze). Holds the queue's occupants.
fn swallowing(addr: std::net::SocketAddr) -> (socket2::Socket, Vec<socket2::Socket>) {
    use socket2::{Domain, Socket, Type};
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    listener.set_reuse_address(true).unwrap();
    listener.bind(&addr.into()).unwrap();
    listener.listen(0).unwrap();
    let fillers = (0..3)
        .map(|_| {
            let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
            s.set_nonblocking(true).unwrap();
            let _ = s.connect(&addr.into());
            s
        })
        .collect();
    (listener, fillers)
}

#[tokio::test]
async fn shutdown_is_not_held_by_connects_to_nodes_that_swallow_syns() {
    let (cluster, _backend) = echo_cluster("swallow", "NodePort").await;
    let mut patient = tuning();
    // A connect or a probe left to run would hold shutdown for minutes.
    patient.connect_timeout = Duration::from_secs(600);
    patient.probe_timeout = Duration::from_secs(600);
    let engine = Engine::start(config(&cluster, &forward("echo", NS, "echo")), patient);
    let addr = local(&wait_healthy(&engine, "echo").await);
    let node_port = cluster.node_port(NS, "echo", 0).unwrap();
    cluster.set_node_addresses_reachable(false);
    let _swallowing: Vec<_> = ["swallow-control-plane", "swallow-worker"]
        .iter()
        .map(|node| swallowing((cluster.node_ip(node).unwrap(), node_port).into()))
        .collect();
    let _client = TcpStream::connect(addr).await.unwrap();
    tokio::time::timeout(WAIT, async {
        while engine.status().await.forward("echo").unwrap().stats.active == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the connection is accepted and connecting");
    tokio::time::timeout(WAIT, engine.shutdown(Duration::from_millis(100)))
        .await
        .expect("shutdown ends after the drain bound, not after the connects' 600 s");
}
