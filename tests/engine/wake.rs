//! A laptop that sleeps or changes networks: every connection open then dies silently (the fake
//! cluster's `silence_connections`), and only the engine's own look at the machine (a
//! `FakeHost`) can tell it to reconnect.

use std::sync::Arc;

use super::*;

#[tokio::test]
async fn after_a_sleep_silently_dead_watches_are_replaced_and_a_change_made_meanwhile_is_seen() {
    let (cluster, _backend) = echo_cluster("sleepy", "NodePort").await;
    let host = Arc::new(FakeHost::default());
    let engine = Engine::start_on(config(&cluster, &forward("echo", NS, "echo")), tuning(), host.clone());
    let addr = local(&wait_healthy(&engine, "echo").await);
    // The lid closes: every connection to the API server dies without a word, and while the
    // laptop sleeps the service gets another nodePort.
    cluster.silence_connections();
    let moved = cluster.change_node_port(NS, "echo", 0);
    // The lid opens.
    host.sleep(Duration::from_secs(3600));
    let status = wait_for(&engine, "echo", "the new nodePort, healthy", |f| {
        f.route.as_ref().is_some_and(|r| r.node_port == moved) && f.health.state == State::Healthy
    })
    .await;
    assert_eq!(local(&status), addr, "the same listener");
    let mut s = TcpStream::connect(addr).await.unwrap();
    round_trip(&mut s, b"awake").await.unwrap();
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn after_a_network_change_the_pod_that_replaced_another_meanwhile_is_tunnelled_to() {
    let (cluster, backend) = echo_cluster("roaming", "ClusterIP").await;
    let host = Arc::new(FakeHost::default());
    let tunnelled = format!("{}mode = \"tunnel\"\n", forward("echo", NS, "echo"));
    let engine = Engine::start_on(config(&cluster, &tunnelled), tuning(), host.clone());
    let addr = local(&wait_healthy(&engine, "echo").await);
    // Wi-Fi to VPN: the watches the engine holds are dead, silently; meanwhile the pod is
    // replaced by another.
    cluster.silence_connections();
    cluster.add_endpoint(NS, "echo", "echo-1", backend.addr(), true);
    cluster.remove_endpoint(NS, "echo-0");
    host.join_network("10.8.0.2");
    let status = wait_for(&engine, "echo", "the new pod, healthy", |f| {
        f.route
            .as_ref()
            .and_then(|r| r.pod.as_deref())
            .is_some_and(|p| p.contains("echo-1"))
            && f.health.state == State::Healthy
    })
    .await;
    assert_eq!(local(&status), addr);
    let mut s = TcpStream::connect(addr).await.unwrap();
    round_trip(&mut s, b"after").await.unwrap();
    engine.shutdown(Duration::from_secs(1)).await;
}
