//! Several clusters in one engine: each with its own discovery and API state, routes that never
//! cross, one port space, and the kubeconfig guard about the one cluster marked for kubectl.

use porthole::config::{Config, Source};

use super::*;

/// `[[cluster]]` tables for `clusters` (the one at `kubectl` marked), then `forwards`.
fn clusters_config(clusters: &[&FakeCluster], kubectl: usize, forwards: &str) -> Config {
    let mut text = String::new();
    for (i, cluster) in clusters.iter().enumerate() {
        text += &format!(
            "[[cluster]]\ncontext = \"{}\"\nkubeconfig = \"{}\"\nmode = \"nodeport\"\nkubectl = {}\n\n",
            cluster.context(),
            cluster.kubeconfig().display(),
            i == kubectl
        );
    }
    Config::parse(&(text + forwards), &Source::Preset("test")).expect("test config is valid")
}

/// A forward table in cluster `cluster`.
fn forward_in(name: &str, cluster: &FakeCluster, extra: &str) -> String {
    format!(
        "{}cluster = \"{}\"\n{extra}",
        forward(name, NS, "echo"),
        cluster.context()
    )
}

#[tokio::test]
async fn two_clusters_route_apart_and_one_api_down_degrades_only_its_forwards() {
    let (a, _backend_a) = echo_cluster("multia", "NodePort").await;
    let (b, _backend_b) = echo_cluster("multib", "NodePort").await;
    let forwards = format!(
        "{}{}{}",
        forward_in("a-echo", &a, ""),
        forward_in("b-echo", &b, ""),
        forward_in("b-tunnel", &b, "mode = \"tunnel\"\n")
    );
    let engine = Engine::start(clusters_config(&[&a, &b], 0, &forwards), tuning());
    // Each forward resolves against its own cluster's objects: its nodes, its pods.
    let a_echo = wait_healthy(&engine, "a-echo").await;
    let b_echo = wait_healthy(&engine, "b-echo").await;
    let b_tunnel = wait_healthy(&engine, "b-tunnel").await;
    assert!(a_echo.route.as_ref().unwrap().node.starts_with("multia-"), "{a_echo:?}");
    assert!(b_echo.route.as_ref().unwrap().node.starts_with("multib-"), "{b_echo:?}");
    assert_eq!(
        (a_echo.cluster.as_str(), b_echo.cluster.as_str()),
        ("kind-multia", "kind-multib")
    );
    for status in [&a_echo, &b_echo, &b_tunnel] {
        let msg = status.name.as_bytes();
        assert_eq!(echo_once(local(status), msg).await.unwrap(), msg);
    }
    let snapshot = engine.status().await;
    let clusters: Vec<(&str, &str, bool)> = snapshot
        .clusters
        .iter()
        .map(|c| (c.name.as_str(), c.status.state.as_str(), c.kubectl))
        .collect();
    assert_eq!(
        clusters,
        [("kind-multia", "connected", true), ("kind-multib", "connected", false)]
    );

    // B's API goes away: B's forwards degrade (their last routes kept), A's stay healthy.
    let mut events = engine.events();
    b.set_api_reachable(false);
    wait_cause(&engine, "b-echo", State::Degraded, CauseId::ClusterUnreachable).await;
    let event = wait_event(&mut events, |e| matches!(e, Event::Cluster { .. })).await;
    let Event::Cluster { name, to, .. } = event else {
        unreachable!()
    };
    assert_eq!((name.as_str(), to.state.as_str()), ("kind-multib", "unreachable"));
    let snapshot = engine.status().await;
    assert_eq!(snapshot.cluster("kind-multia").unwrap().status.state, "connected");
    assert_eq!(snapshot.cluster("kind-multib").unwrap().status.state, "unreachable");
    assert_eq!(snapshot.forward("a-echo").unwrap().health.state, State::Healthy);
    // The nodePort path needs no API: B's traffic still flows, and A's is untouched.
    assert_eq!(echo_once(local(&b_echo), b"no API").await.unwrap(), b"no API");
    assert_eq!(
        echo_once(local(&a_echo), b"other cluster").await.unwrap(),
        b"other cluster"
    );
    // A changes while B is away: A follows, B's forwards wait for B.
    a.apply_service(service(NS, "echo", "ClusterIP", vec![port("tcp", 7000)]));
    wait_cause(&engine, "a-echo", State::Down, CauseId::WrongServiceType).await;
    assert_eq!(
        engine.status().await.cluster("kind-multib").unwrap().status.state,
        "unreachable"
    );
    b.set_api_reachable(true);
    wait_healthy(&engine, "b-echo").await;
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn the_kubeconfig_guard_is_about_the_cluster_marked_for_kubectl_only() {
    let (a, _backend_a) = echo_cluster("guarda", "NodePort").await;
    let (b, _backend_b) = echo_cluster("guardb", "NodePort").await;
    let forwards = format!("{}{}", forward_in("a-echo", &a, ""), forward_in("b-echo", &b, ""));
    // B is the one kubectl should point at.
    let engine = Engine::start(clusters_config(&[&a, &b], 1, &forwards), tuning());
    wait_healthy(&engine, "a-echo").await;
    wait_healthy(&engine, "b-echo").await;
    let snapshot = wait_snapshot(&engine, "kubeconfig inspected", |s| {
        s.kubeconfig.as_ref().is_some_and(|k| k.state.is_ok())
    })
    .await;
    assert_eq!(snapshot.context(), Some("kind-guardb"));
    assert_eq!(snapshot.kubectl_context.as_deref(), Some("kind-guardb"));
    let mut events = engine.events();

    // A's kubeconfig points kubectl elsewhere: not the guard's business.
    a.set_current_context("rancher-desktop");
    // B's does: reported, about B.
    b.set_current_context("rancher-desktop");
    let event = wait_event(&mut events, |e| matches!(e, Event::Kubeconfig { .. })).await;
    let Event::Kubeconfig { to, .. } = &event else {
        unreachable!()
    };
    assert_eq!(
        *to,
        KubeconfigState::ContextMismatch {
            expected: "kind-guardb".into(),
            current: "rancher-desktop".into()
        }
    );
    // Fixed through the engine: B's kubeconfig, not A's.
    let fixed = engine.fix_kubeconfig().await.unwrap();
    assert!(fixed.is_some());
    let recovered = wait_event(&mut events, |e| matches!(e, Event::Kubeconfig { .. })).await;
    let Event::Kubeconfig { to, fixed, .. } = recovered else {
        unreachable!()
    };
    assert!(to.is_ok() && fixed, "{to:?}");
    assert!(
        std::fs::read_to_string(b.kubeconfig())
            .unwrap()
            .contains("current-context: kind-guardb")
    );
    assert!(
        std::fs::read_to_string(a.kubeconfig())
            .unwrap()
            .contains("current-context: rancher-desktop")
    );
    // Every kubeconfig event so far was about B.
    while let Ok(event) = events.try_recv() {
        if let Event::Kubeconfig { to, .. } = event {
            assert!(!format!("{to:?}").contains("guarda"), "{to:?}");
        }
    }
    // The guard follows the mark: now A's wrong context is reported.
    let mut config = engine.config().await.unwrap();
    config.clusters[0].kubectl = true;
    config.clusters[1].kubectl = false;
    engine.apply(config).await.unwrap();
    let event = wait_event(&mut events, |e| matches!(e, Event::Kubeconfig { .. })).await;
    let Event::Kubeconfig { to, .. } = event else {
        unreachable!()
    };
    assert_eq!(
        to,
        KubeconfigState::ContextMismatch {
            expected: "kind-guarda".into(),
            current: "rancher-desktop".into()
        }
    );
    // Moving the mark reconnected nothing: both stay healthy.
    let snapshot = engine.status().await;
    assert!(
        snapshot.forwards.iter().all(|f| f.health.state == State::Healthy),
        "{snapshot:#?}"
    );
    assert_eq!(snapshot.context(), Some("kind-guarda"));
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_cluster_added_and_removed_at_run_time_brings_and_takes_its_forwards() {
    let (a, _backend_a) = echo_cluster("runa", "NodePort").await;
    let (b, _backend_b) = echo_cluster("runb", "NodePort").await;
    let one = clusters_config(&[&a], 0, &forward_in("a-echo", &a, ""));
    let engine = Engine::start(one.clone(), tuning());
    let a_echo = local(&wait_healthy(&engine, "a-echo").await);
    let mut open = TcpStream::connect(a_echo).await.unwrap();
    round_trip(&mut open, b"before").await.unwrap();

    let two = clusters_config(
        &[&a, &b],
        0,
        &format!("{}{}", forward_in("a-echo", &a, ""), forward_in("b-echo", &b, "")),
    );
    engine.apply(two).await.unwrap();
    let b_echo = wait_healthy(&engine, "b-echo").await;
    assert_eq!(echo_once(local(&b_echo), b"new cluster").await.unwrap(), b"new cluster");
    // A's forward kept its listener and its open connection.
    round_trip(&mut open, b"still open").await.unwrap();
    assert_eq!(engine.status().await.clusters.len(), 2);

    let mut events = engine.events();
    engine.apply(one).await.unwrap();
    wait_event(
        &mut events,
        |e| matches!(e, Event::Removed { name } if name == "b-echo"),
    )
    .await;
    let snapshot = engine.status().await;
    let names: Vec<&str> = snapshot.clusters.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["kind-runa"]);
    assert!(snapshot.forward("b-echo").is_none());
    assert!(
        TcpStream::connect(local(&b_echo)).await.is_err(),
        "B's listener is closed"
    );
    round_trip(&mut open, b"and after").await.unwrap();
    engine.shutdown(Duration::from_secs(1)).await;
}
