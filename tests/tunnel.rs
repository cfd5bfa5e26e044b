//! Forwards in `mode = "tunnel"`: through the API server's port-forward to a ready pod, over
//! real sockets and the fake cluster's WebSocket port-forward.

use std::time::Duration;

use porthole::cause::{CauseId, State};
use porthole::engine::Engine;
use porthole::engine::Path;
use support::FakeCluster;
use support::porthole::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn tunnel_forward() -> String {
    format!("{}mode = \"tunnel\"\n", forward("echo", NS, "echo"))
}

async fn start(cluster: &FakeCluster) -> Engine {
    Engine::start(config(cluster, &tunnel_forward()), tuning())
}

#[tokio::test]
async fn bytes_arrive_intact_both_ways_through_the_tunnel() {
    const SIZE: usize = 10 << 20;
    let (cluster, _backend) = echo_cluster("tunbulk", "NodePort").await;
    let engine = start(&cluster).await;
    let status = wait_healthy(&engine, "echo").await;
    let route = status.route.clone().unwrap();
    let pod = format!("{NS}/echo-0:{}", _backend.addr().port());
    assert_eq!((route.path, route.pod.as_deref()), (Path::Tunnel, Some(pod.as_str())));
    assert_eq!(route.target, pod);
    assert_eq!(route.describe(), format!("tunnel → {pod}"));
    assert_eq!(status.path, Some(Path::Tunnel));
    let data: Vec<u8> = (0..SIZE).map(|i| (i * 31 % 251) as u8).collect();
    let sent = checksum(&data);
    let stream = TcpStream::connect(local(&status)).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        write.write_all(&data).await.unwrap();
        write
    });
    let mut back = vec![0u8; SIZE];
    tokio::time::timeout(Duration::from_secs(120), read.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(checksum(&back), sent, "10 MiB each way, unchanged");
    drop(writer.await.unwrap());
    drop(read);
    // Counters follow the bytes (pushed within a second): both ways, in full.
    let size = SIZE as u64;
    wait_for(&engine, "echo", "counted", |f| {
        f.stats.bytes_up == size && f.stats.bytes_down == size
    })
    .await;
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_cluster_ip_service_is_served_through_the_tunnel() {
    let (cluster, _backend) = echo_cluster("tunclusterip", "ClusterIP").await;
    let engine = start(&cluster).await;
    let status = wait_healthy(&engine, "echo").await;
    assert_eq!(status.route.as_ref().unwrap().service_type, "ClusterIP");
    assert_eq!(
        echo_once(local(&status), b"no nodePort needed").await.unwrap(),
        b"no nodePort needed"
    );
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_replaced_pod_takes_the_new_connections() {
    let (cluster, mut backend) = echo_cluster("tunrestart", "NodePort").await;
    let engine = start(&cluster).await;
    let addr = local(&wait_healthy(&engine, "echo").await);
    let old_port = backend.addr().port();
    cluster.restart_pod(NS, "echo-0", &mut backend).await;
    let new_target = format!("{NS}/echo-0:{}", backend.addr().port());
    assert_ne!(backend.addr().port(), old_port);
    wait_for(&engine, "echo", "on the new pod", |f| {
        f.health.state == State::Healthy && f.route.as_ref().is_some_and(|r| r.target == new_target)
    })
    .await;
    assert_eq!(echo_once(addr, b"new pod").await.unwrap(), b"new pod");
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn no_ready_pod_is_named_then_recovers() {
    let (cluster, _backend) = echo_cluster("tunready", "ClusterIP").await;
    let engine = start(&cluster).await;
    let addr = local(&wait_healthy(&engine, "echo").await);
    cluster.set_endpoint_ready(NS, "echo-0", false);
    wait_cause(&engine, "echo", State::Down, CauseId::NoReadyEndpoints).await;
    cluster.set_endpoint_ready(NS, "echo-0", true);
    wait_healthy(&engine, "echo").await;
    assert_eq!(echo_once(addr, b"back").await.unwrap(), b"back");
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_stream_cut_mid_transfer_closes_that_connection_and_the_next_one_works() {
    let (cluster, _backend) = echo_cluster("tuncut", "NodePort").await;
    let engine = start(&cluster).await;
    let addr = local(&wait_healthy(&engine, "echo").await);
    let mut open = TcpStream::connect(addr).await.unwrap();
    round_trip(&mut open, b"before the cut").await.unwrap();
    cluster.cut_port_forwards();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(WAIT, open.read(&mut buf))
        .await
        .expect("closed, not hanging");
    assert!(matches!(read, Ok(0) | Err(_)), "the cut connection is closed: {read:?}");
    assert_eq!(echo_once(addr, b"next one").await.unwrap(), b"next one");
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_hundred_concurrent_tunnelled_connections() {
    raise_fd_limit();
    let (cluster, _backend) = echo_cluster("tunmany", "ClusterIP").await;
    let engine = start(&cluster).await;
    let addr = local(&wait_healthy(&engine, "echo").await);
    let open = concurrent_round_trips(addr, 100, 2048).await;
    let active = wait_for(&engine, "echo", "100 active", |f| f.stats.active == 100).await;
    assert_eq!(active.stats.failed, 0);
    drop(open);
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn the_probe_through_the_tunnel_sees_a_pod_that_refuses() {
    let (cluster, backend) = echo_cluster("tunrefuse", "ClusterIP").await;
    let backend_port = backend.addr().port();
    let engine = start(&cluster).await;
    wait_healthy(&engine, "echo").await;
    // The process dies; the endpoint still says ready: only the kubelet's refusal tells.
    backend.stop().await;
    let down = wait_cause(&engine, "echo", State::Down, CauseId::ProbeFailed).await;
    let message = down.health.cause.unwrap().message;
    let port = backend_port;
    assert_eq!(
        message,
        format!("pod {NS}/echo-0:{port} refuses port {port}: nothing listens on it"),
        "the kubelet's refusal, in words about the pod (there is no nodePort on this path)"
    );
    engine.shutdown(Duration::from_secs(1)).await;
}

fn auto_forward() -> String {
    format!("{}mode = \"auto\"\n", forward("echo", NS, "echo"))
}

#[tokio::test]
async fn auto_takes_the_node_port_when_a_node_answers() {
    let (cluster, _backend) = echo_cluster("autonode", "NodePort").await;
    let engine = Engine::start(config(&cluster, &auto_forward()), tuning());
    let node_port = cluster.node_port(NS, "echo", 0).unwrap();
    let status = wait_for(&engine, "echo", "healthy on the node port", |f| {
        f.health.state == State::Healthy && f.route.as_ref().is_some_and(|r| r.node_port == node_port)
    })
    .await;
    assert_eq!(echo_once(local(&status), b"direct").await.unwrap(), b"direct");
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn auto_takes_the_tunnel_where_node_addresses_do_not_answer_and_switches_back() {
    let (cluster, _backend) = echo_cluster("automac", "NodePort").await;
    // As under Docker Desktop on macOS: the nodes' addresses do not answer from here.
    cluster.set_node_addresses_reachable(false);
    let engine = Engine::start(config(&cluster, &auto_forward()), tuning());
    let status = wait_for(&engine, "echo", "healthy through the tunnel", |f| {
        f.health.state == State::Healthy && f.route.as_ref().is_some_and(|r| r.path == Path::Tunnel)
    })
    .await;
    let addr = local(&status);
    assert_eq!(echo_once(addr, b"tunnelled").await.unwrap(), b"tunnelled");
    let mut events = engine.events();
    cluster.set_node_addresses_reachable(true);
    let node_port = cluster.node_port(NS, "echo", 0).unwrap();
    let event = wait_event(&mut events, |e| matches!(e, porthole::Event::Route { .. })).await;
    let porthole::Event::Route { from, to, .. } = event else {
        unreachable!()
    };
    assert!(from.unwrap().starts_with("tunnel → "));
    assert!(to.unwrap().ends_with(&format!(":{node_port}")));
    wait_healthy(&engine, "echo").await;
    assert_eq!(echo_once(addr, b"direct now").await.unwrap(), b"direct now");
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn auto_serves_a_cluster_ip_service_through_the_tunnel() {
    let (cluster, _backend) = echo_cluster("autoclusterip", "ClusterIP").await;
    let engine = Engine::start(config(&cluster, &auto_forward()), tuning());
    let status = wait_healthy(&engine, "echo").await;
    assert!(status.route.as_ref().unwrap().target.starts_with("apps/echo-0:"));
    assert_eq!(
        echo_once(local(&status), b"no error, a tunnel").await.unwrap(),
        b"no error, a tunnel"
    );
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_connection_made_during_a_rollout_is_held_until_a_pod_is_ready() {
    let (cluster, _backend) = echo_cluster("tunhold", "NodePort").await;
    let engine = start(&cluster).await;
    let addr = local(&wait_healthy(&engine, "echo").await);
    cluster.set_endpoint_ready(NS, "echo-0", false);
    wait_cause(&engine, "echo", State::Down, CauseId::NoReadyEndpoints).await;
    // The client connects in the gap: it is held, not reset.
    let client = tokio::spawn(echo_once(addr, b"patience"));
    wait_for(&engine, "echo", "holding one connection", |f| f.stats.held == 1).await;
    cluster.set_endpoint_ready(NS, "echo-0", true);
    let echoed = tokio::time::timeout(WAIT, client)
        .await
        .expect("answered")
        .unwrap()
        .unwrap();
    assert_eq!(echoed, b"patience");
    let stats = engine.status().await.forward("echo").unwrap().stats;
    assert_eq!((stats.held, stats.failed), (1, 0));
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_configured_hold_bounds_the_wait_and_then_the_client_is_told() {
    let (cluster, _backend) = echo_cluster("tunholdcfg", "NodePort").await;
    // The engine's own hold is 10 s in these tests: the forward's `hold = 0.2` must win.
    let forward = format!("{}hold = 0.2\n", tunnel_forward());
    let engine = Engine::start(config(&cluster, &forward), tuning());
    let addr = local(&wait_healthy(&engine, "echo").await);
    cluster.set_endpoint_ready(NS, "echo-0", false);
    wait_cause(&engine, "echo", State::Down, CauseId::NoReadyEndpoints).await;
    let outcome = tokio::time::timeout(Duration::from_secs(5), echo_once(addr, b"in vain"))
        .await
        .expect("the client is not kept waiting for the engine's 10 s");
    assert!(
        outcome.is_err() || outcome.as_ref().is_ok_and(|b| b.is_empty()),
        "{outcome:?}"
    );
    let stats = engine.status().await.forward("echo").unwrap().stats;
    assert_eq!(stats.held, 1);
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn the_preset_works_as_shipped_where_node_addresses_do_not_answer() {
    let oc = FakeCluster::openchoreo().await;
    // macOS with Docker Desktop or Colima: kind's node addresses do not answer from the host.
    oc.set_node_addresses_reachable(false);
    // The preset as shipped (so `mode` is the default, `auto`), pointed at the fake's
    // kubeconfig and with free local ports.
    let mut text = porthole::config::preset_text("openchoreo").unwrap().replace(
        "[cluster]\n",
        &format!("[cluster]\nkubeconfig = \"{}\"\n", oc.kubeconfig().display()),
    );
    for port in [3000, 8080, 9098, 21893, 8443] {
        text = text.replace(&format!("local_port = {port}"), "local_port = 0");
    }
    let config = porthole::config::Config::parse(&text, &porthole::config::Source::Preset("test")).unwrap();
    let engine = Engine::start(config, tuning());
    for name in ["console", "api", "traces-observer", "otel-collector", "gateway"] {
        wait_for(&engine, name, "healthy through the tunnel", |f| {
            f.health.state == State::Healthy && f.route.as_ref().is_some_and(|r| r.path == Path::Tunnel)
        })
        .await;
    }
    let console = local(engine.status().await.forward("console").unwrap());
    let mut s = TcpStream::connect(console).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.contains("amp-console"),
        "{answer}"
    );
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_silently_stalled_tunnel_is_caught_by_the_probe_and_recovers() {
    let oc = FakeCluster::openchoreo().await;
    let forward = "[[forward]]\nname = \"api\"\nnamespace = \"wso2-amp\"\nservice = \"amp-api\"\nlocal_port = 0\nmode = \"tunnel\"\nprobe = { http = \"/\" }\n";
    let engine = Engine::start(config(&oc, forward), tuning());
    wait_healthy(&engine, "api").await;
    // The API server keeps accepting port-forwards, but no byte gets through any more: the
    // "alive but dead" port-forward. Only an answer that never comes tells.
    oc.stall_port_forwards(true);
    let down = wait_cause(&engine, "api", State::Down, CauseId::ProbeFailed).await;
    let message = down.health.cause.unwrap().message;
    assert!(message.contains("no answer"), "{message}");
    oc.stall_port_forwards(false);
    wait_healthy(&engine, "api").await;
    engine.shutdown(Duration::from_secs(1)).await;
}

/// Every state a forward goes through from its start, by its events (subscribed before the
/// engine's tasks run: the test runtime is single-threaded), until `done`.
async fn states_until(
    events: &mut tokio::sync::broadcast::Receiver<porthole::Event>,
    done: impl Fn(&porthole::cause::Health) -> bool,
) -> Vec<porthole::cause::Health> {
    let mut seen = Vec::new();
    tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(porthole::Event::Forward { to, .. }) = events.recv().await {
                let end = done(&to);
                seen.push(to);
                if end {
                    return;
                }
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("never reached the state; saw {seen:#?}"));
    seen
}

/// The test timings, with the engine's own settle window: the one a real cluster needs.
fn with_the_default_settle() -> porthole::Tuning {
    porthole::Tuning {
        tunnel_settle: porthole::Tuning::default().tunnel_settle,
        ..tuning()
    }
}

#[tokio::test]
async fn a_kubelet_the_api_server_cannot_reach_is_named_and_never_reported_healthy() {
    let (cluster, _backend) = echo_cluster("tunkubelet", "ClusterIP").await;
    // As a real API server with a node it cannot resolve: the upgrade is answered at once, the
    // failure comes 2 s later on the error channel.
    cluster.set_kubelet_delay(Duration::from_secs(2));
    cluster.set_kubelet_reachable(false);
    let tuning = with_the_default_settle();
    let engine = Engine::start(config(&cluster, &tunnel_forward()), tuning);
    let mut events = engine.events();
    let seen = states_until(&mut events, |h| h.state == State::Down).await;
    assert!(
        seen.iter().all(|h| h.state != State::Healthy),
        "a tunnel whose kubelet is unreachable was reported healthy: {seen:#?}"
    );
    let cause = seen.last().unwrap().cause.clone().unwrap();
    let node = cluster.pod(NS, "echo-0").unwrap().spec.unwrap().node_name.unwrap();
    assert_eq!(cause.id, CauseId::KubeletUnreachable, "{cause}");
    assert!(
        cause.message.contains(&format!("kubelet of {node}")) && cause.message.contains("error dialing backend"),
        "{cause}"
    );
    assert!(cause.fix.unwrap().contains(&format!("docker start {node}")));
    // The node comes back: so does the forward.
    cluster.set_kubelet_reachable(true);
    wait_healthy(&engine, "echo").await;
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_slow_kubelet_ends_healthy_without_a_flap() {
    let (cluster, _backend) = echo_cluster("tunslow", "ClusterIP").await;
    cluster.set_kubelet_delay(Duration::from_millis(1500));
    let tuning = with_the_default_settle();
    let engine = Engine::start(config(&cluster, &tunnel_forward()), tuning);
    let mut events = engine.events();
    let seen = states_until(&mut events, |h| h.state == State::Healthy).await;
    assert!(
        seen.iter()
            .all(|h| h.state == State::Starting || h.state == State::Healthy),
        "a slow but working kubelet flapped: {seen:#?}"
    );
    let addr = local(engine.status().await.forward("echo").unwrap());
    assert_eq!(echo_once(addr, b"slow, but there").await.unwrap(), b"slow, but there");
    // Steady afterwards: the next probes through the same slow kubelet stay healthy.
    let next = tokio::time::timeout(Duration::from_secs(4), states_until(&mut events, |_| true)).await;
    assert!(next.is_err(), "the state changed again: {next:?}");
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_tunnelled_connection_idle_past_every_engine_timeout_still_carries_bytes() {
    let (cluster, _backend) = echo_cluster("tunidle", "ClusterIP").await;
    // Every timeout of the engine shortened below the idle time: the API client's read
    // timeout (which once closed quiet tunnels too), probes, connects, the settle window.
    let tuning = porthole::Tuning {
        api_read_timeout: Duration::from_secs(1),
        probe_timeout: Duration::from_millis(500),
        connect_timeout: Duration::from_millis(500),
        tunnel_settle: Duration::from_millis(200),
        ..tuning()
    };
    let engine = Engine::start(config(&cluster, &tunnel_forward()), tuning);
    // Quiet watches hit the 1 s read timeout and reconnect, so the forward may read degraded
    // at times: serving either way.
    let serving = wait_for(&engine, "echo", "serving", |f| {
        matches!(f.health.state, State::Healthy | State::Degraded)
    })
    .await;
    let mut session = TcpStream::connect(local(&serving)).await.unwrap();
    round_trip(&mut session, b"hello").await.unwrap();
    // The quiet itself is what is tested, so it is a plain wait.
    tokio::time::sleep(Duration::from_secs(3)).await;
    round_trip(&mut session, b"still here after the quiet")
        .await
        .expect("an idle tunnelled connection lives as long as both ends want");
    round_trip(&mut session, b"and again").await.unwrap();
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_port_forward_rbac_denies_is_named_with_the_check_to_run() {
    let (cluster, _backend) = echo_cluster("tunrbac", "ClusterIP").await;
    cluster.set_port_forward_allowed(false);
    let engine = start(&cluster).await;
    let down = wait_cause(&engine, "echo", State::Down, CauseId::TunnelFailed).await;
    let cause = down.health.cause.unwrap();
    assert!(
        cause.message.contains("refuses port-forwards to apps/echo (403)"),
        "{cause}"
    );
    let fix = cause.fix.unwrap();
    assert!(
        fix.contains("kubectl auth can-i create pods/portforward -n apps"),
        "{fix}"
    );
    cluster.set_port_forward_allowed(true);
    wait_healthy(&engine, "echo").await;
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_pod_that_refuses_after_its_stream_opened_is_passed_over_for_the_next() {
    let (cluster, broken) = echo_cluster("tunnext", "ClusterIP").await;
    let working = support::Backend::echo().await;
    cluster.add_endpoint(NS, "echo", "echo-1", working.addr(), true);
    // echo-0 is first and still ready, but nothing listens behind it any more: only the
    // kubelet's refusal, after the stream opened, says so.
    broken.stop().await;
    let engine = start(&cluster).await;
    let addr = local(&wait_healthy(&engine, "echo").await);
    // Only echo-1 can answer: every connection goes there now.
    for n in 0..3 {
        let msg = format!("answered by echo-1, {n}");
        assert_eq!(echo_once(addr, msg.as_bytes()).await.unwrap(), msg.as_bytes());
    }
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_forward_to_pods_needs_no_service_and_follows_its_pods() {
    let (cluster, _backend) = echo_cluster("tunpods", "NodePort").await;
    // No service at all: the pods stay (a Deployment's without a Service).
    cluster.delete_service(NS, "echo");
    let forwards = format!(
        "[[forward]]\nname = \"workers\"\nnamespace = \"{NS}\"\npods = {{ \"app.kubernetes.io/name\" = \"echo\" }}\nlocal_port = 0\n\
         [[forward]]\nname = \"one\"\nnamespace = \"{NS}\"\npod = \"echo-1\"\nlocal_port = 0\n"
    );
    // The cluster's mode is nodeport: a forward to pods tunnels all the same.
    let engine = Engine::start(config(&cluster, &forwards), tuning());
    let status = wait_healthy(&engine, "workers").await;
    let route = status.route.clone().unwrap();
    assert_eq!(route.path, Path::Tunnel);
    assert_eq!(route.service_type, "Pod");
    assert_eq!(
        route.pod.as_deref(),
        Some(format!("{NS}/echo-0:{}", _backend.addr().port()).as_str())
    );
    assert_eq!(echo_once(local(&status), b"to a pod").await.unwrap(), b"to a pod");
    // The named pod does not exist yet: said so.
    let missing = wait_cause(&engine, "one", State::Down, CauseId::PodMissing).await;
    assert_eq!(
        missing.health.cause.unwrap().message,
        format!("no pod matches {NS}/pod/echo-1")
    );

    // A second pod comes, the first goes: the forward follows, on the new pod's port.
    let next = support::Backend::echo().await;
    cluster.add_endpoint(NS, "echo", "echo-1", next.addr(), true);
    let one = wait_healthy(&engine, "one").await;
    assert_eq!(echo_once(local(&one), b"by name").await.unwrap(), b"by name");
    cluster.remove_endpoint(NS, "echo-0");
    let moved = format!("{NS}/echo-1:{}", next.addr().port());
    let status = wait_for(&engine, "workers", "on echo-1", |f| {
        f.route.as_ref().and_then(|r| r.pod.as_deref()) == Some(moved.as_str())
    })
    .await;
    assert_eq!(echo_once(local(&status), b"replaced").await.unwrap(), b"replaced");

    // Not ready: named; gone: named.
    cluster.set_endpoint_ready(NS, "echo-1", false);
    let down = wait_cause(&engine, "workers", State::Down, CauseId::NoReadyEndpoints).await;
    assert_eq!(
        down.health.cause.unwrap().message,
        format!("no pod of {NS}/pods -l app.kubernetes.io/name=echo is ready")
    );
    cluster.remove_endpoint(NS, "echo-1");
    wait_cause(&engine, "workers", State::Down, CauseId::PodMissing).await;
    engine.shutdown(Duration::from_secs(1)).await;
}

// ---- the pool of streams opened ahead of need ----

/// Probes once, at the start: every probe through a tunnel opens a stream of its own, which
/// would blur the count of the streams the pool holds.
fn quiet() -> porthole::Tuning {
    porthole::Tuning {
        probe_interval: Duration::from_secs(3600),
        ..tuning()
    }
}

/// The echo service's port is plain TCP, for which only a pool the config asks for holds
/// streams (a database would count unused connections as aborted handshakes).
fn pooled_forward() -> String {
    format!("{}tunnel_pool = {{ min = 1, max = 8 }}\n", tunnel_forward())
}

/// Waits until the fake cluster holds exactly `count` port-forward streams.
async fn streams(cluster: &FakeCluster, count: usize, what: &str) {
    let waited = tokio::time::timeout(WAIT, cluster.until_port_forward_streams(count)).await;
    assert!(
        waited.is_ok(),
        "{what}: {} streams, not {count}",
        cluster.port_forward_streams()
    );
}

#[tokio::test]
async fn a_burst_of_fifty_is_served_intact_and_the_pool_shrinks_back_to_its_floor() {
    let (cluster, _backend) = echo_cluster("poolburst", "ClusterIP").await;
    let engine = Engine::start(config(&cluster, &pooled_forward()), quiet());
    let addr = local(&wait_healthy(&engine, "echo").await);
    // At rest: the one stream of the default floor (probes open theirs and close them).
    streams(&cluster, 1, "at rest").await;
    let clients: Vec<_> = (0..50u8)
        .map(|n| {
            tokio::spawn(async move {
                let payload: Vec<u8> = (0..32 * 1024).map(|i| (i as u8).wrapping_mul(n | 1)).collect();
                let mut s = TcpStream::connect(addr).await.unwrap();
                s.write_all(&payload).await.unwrap();
                let mut back = vec![0u8; payload.len()];
                tokio::time::timeout(WAIT, s.read_exact(&mut back))
                    .await
                    .unwrap()
                    .unwrap();
                back == payload
            })
        })
        .collect();
    for client in clients {
        assert!(client.await.unwrap(), "a connection's bytes came back changed");
    }
    // The burst raised the target: more streams are held for a while...
    let status = wait_for(&engine, "echo", "counted", |f| f.stats.total >= 50).await;
    assert_eq!(status.stats.failed, 0);
    // ...and nobody connects any more: back to the floor, and held streams count as no
    // connection.
    streams(&cluster, 1, "idle again").await;
    let status = engine.status().await;
    assert_eq!(status.forward("echo").unwrap().stats.active, 0);
    engine.shutdown(Duration::from_secs(1)).await;
}

/// A stream handed out is replaced once its pod has answered through it. With the deferral
/// set to an hour, only the answer can bring the replacement.
#[tokio::test]
async fn a_stream_handed_out_is_replaced_once_its_pod_answers() {
    let (cluster, _backend) = echo_cluster("poolanswer", "ClusterIP").await;
    let quiet = quiet();
    let tuning = porthole::Tuning {
        pool: porthole::tuning::PoolSettings {
            refill_defer: Duration::from_secs(3600),
            ..quiet.pool
        },
        ..quiet
    };
    let engine = Engine::start(config(&cluster, &pooled_forward()), tuning);
    let addr = local(&wait_healthy(&engine, "echo").await);
    streams(&cluster, 1, "at rest").await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"ping").await.unwrap();
    let mut back = [0u8; 4];
    tokio::time::timeout(WAIT, s.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&back, b"ping");
    // The connection's stream, and the one held in its place.
    streams(&cluster, 2, "replaced after the answer").await;
    let status = wait_for(&engine, "echo", "counted", |f| f.stats.total == 1).await;
    assert_eq!((status.stats.active, status.stats.failed), (1, 0));
    drop(s);
    streams(&cluster, 1, "the connection closed").await;
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_held_stream_to_a_pod_that_left_is_never_handed_out() {
    let (cluster, _echo) = echo_cluster("poolleft", "ClusterIP").await;
    // Two HTTP pods that say who they are; web-0 first. An `http` port: pooled by default.
    let first = support::Backend::http("from web-0").await;
    let second = support::Backend::http("from web-1").await;
    cluster.apply_service(support::service(
        NS,
        "web",
        "ClusterIP",
        vec![support::port("http", 80)],
    ));
    cluster.add_endpoint(NS, "web", "web-0", first.addr(), true);
    let forward = format!("{}mode = \"tunnel\"\n", forward("web", NS, "web"));
    let engine = Engine::start(config(&cluster, &forward), quiet());
    let addr = local(&wait_healthy(&engine, "web").await);
    streams(&cluster, 1, "one held to web-0").await;
    // web-0 is replaced by web-1 (its Deployment rolled): its held stream is still connected
    // to web-0, which still runs.
    cluster.add_endpoint(NS, "web", "web-1", second.addr(), true);
    cluster.remove_endpoint(NS, "web-0");
    let pod = format!("{NS}/web-1:{}", second.addr().port());
    wait_for(&engine, "web", "on web-1", |f| {
        f.route.as_ref().and_then(|r| r.pod.as_deref()) == Some(pod.as_str())
    })
    .await;
    for _ in 0..5 {
        let answer = http_get(addr).await;
        assert!(
            answer.ends_with("from web-1"),
            "a connection reached the pod that left: {answer}"
        );
    }
    engine.shutdown(Duration::from_secs(1)).await;
}

async fn http_get(addr: std::net::SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn a_held_stream_whose_kubelet_reported_an_error_is_never_handed_out() {
    let (cluster, broken) = echo_cluster("poolerror", "ClusterIP").await;
    let working = support::Backend::echo().await;
    cluster.add_endpoint(NS, "echo", "echo-1", working.addr(), true);
    // echo-0 stays ready, but nothing listens behind it: every stream to it gets the kubelet's
    // refusal on its error channel, after it opened. The pool holds four, spread over both pods.
    broken.stop().await;
    let forward = format!("{}tunnel_pool = {{ min = 4, max = 8 }}\n", tunnel_forward());
    let engine = Engine::start(config(&cluster, &forward), tuning());
    let addr = local(&wait_healthy(&engine, "echo").await);
    for n in 0..20 {
        let msg = format!("through a sound stream, {n}");
        assert_eq!(
            echo_once(addr, msg.as_bytes()).await.unwrap(),
            msg.as_bytes(),
            "connection {n} was handed a stream that had failed"
        );
    }
    assert_eq!(engine.status().await.forward("echo").unwrap().stats.failed, 0);
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_forward_turned_off_closes_its_pool_and_no_pool_holds_nothing() {
    let (cluster, _backend) = echo_cluster("pooloff", "ClusterIP").await;
    let engine = Engine::start(config(&cluster, &pooled_forward()), quiet());
    wait_healthy(&engine, "echo").await;
    streams(&cluster, 1, "held").await;
    engine.set_enabled("echo", false).await.unwrap();
    streams(&cluster, 0, "turned off").await;

    // `max = 0`: every connection opens its own stream, and nothing is held.
    let mut config = engine.config().await.unwrap();
    config.forwards[0].enabled = true;
    config.forwards[0].tunnel_pool = Some(porthole::config::TunnelPool { min: 0, max: 0 });
    engine.apply(config).await.unwrap();
    let addr = local(&wait_healthy(&engine, "echo").await);
    assert_eq!(echo_once(addr, b"fresh").await.unwrap(), b"fresh");
    streams(&cluster, 0, "no pool").await;
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn new_streams_resume_the_tls_session_with_the_api_server() {
    let (cluster, _backend) = echo_cluster("poolresume", "ClusterIP").await;
    // No pool: every connection opens its own stream, on a connection of its own.
    let forward = format!("{}tunnel_pool = {{ min = 0, max = 0 }}\n", tunnel_forward());
    let engine = Engine::start(config(&cluster, &forward), quiet());
    let addr = local(&wait_healthy(&engine, "echo").await);
    let (full_before, resumed_before) = cluster.tls_handshakes();
    for n in 0..10 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        round_trip(&mut s, format!("resumed {n}").as_bytes()).await.unwrap();
    }
    let (full, resumed) = cluster.tls_handshakes();
    assert_eq!(
        resumed - resumed_before,
        10,
        "every stream's connection resumed a session"
    );
    assert_eq!(full, full_before, "no full handshake for them");
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn by_default_streams_are_held_for_web_ports_only() {
    let (cluster, _echo) = echo_cluster("poolproto", "ClusterIP").await;
    let web = support::Backend::http("hello").await;
    cluster.apply_service(support::service(
        NS,
        "web",
        "ClusterIP",
        vec![support::port("http", 80)],
    ));
    cluster.add_endpoint(NS, "web", "web-0", web.addr(), true);
    // Plain TCP (a database, say): no stream held, every connection opens its own.
    let engine = Engine::start(config(&cluster, &tunnel_forward()), quiet());
    let addr = local(&wait_healthy(&engine, "echo").await);
    streams(&cluster, 0, "a tcp port at rest").await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    round_trip(&mut s, b"its own stream").await.unwrap();
    drop(s);
    streams(&cluster, 0, "a tcp port after a connection").await;
    engine.shutdown(Duration::from_secs(1)).await;
    // HTTP: one held.
    let forward = format!("{}mode = \"tunnel\"\n", forward("web", NS, "web"));
    let engine = Engine::start(config(&cluster, &forward), quiet());
    wait_healthy(&engine, "web").await;
    streams(&cluster, 1, "an http port at rest").await;
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn what_a_pod_says_while_its_stream_is_held_reaches_the_client() {
    let (cluster, _echo) = echo_cluster("poolgreet", "ClusterIP").await;
    // A server that speaks first (SMTP, MySQL, SSH do): its greeting arrives while the stream
    // is held, and must be the client's first bytes.
    let greeter = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = greeter.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = greeter.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(b"220 hello\r\n").await;
                let mut rest = Vec::new();
                let _ = s.read_to_end(&mut rest).await;
            });
        }
    });
    cluster.apply_service(support::service(
        NS,
        "mail",
        "ClusterIP",
        vec![support::port("smtp", 25)],
    ));
    cluster.add_endpoint(NS, "mail", "mail-0", at, true);
    let forward = format!(
        "{}mode = \"tunnel\"\ntunnel_pool = {{ min = 1, max = 8 }}\n",
        forward("mail", NS, "mail")
    );
    let engine = Engine::start(config(&cluster, &forward), quiet());
    let addr = local(&wait_healthy(&engine, "mail").await);
    streams(&cluster, 1, "one held").await;
    // Several in a row: the later ones take streams whose greeting was read while held.
    for n in 0..5 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut greeting = [0u8; 11];
        tokio::time::timeout(WAIT, s.read_exact(&mut greeting))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&greeting, b"220 hello\r\n", "connection {n}");
    }
    engine.shutdown(Duration::from_secs(1)).await;
}
