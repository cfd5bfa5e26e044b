//! Every broken forward names its cause: wrong type, missing port or namespace, failing probes, taken ports.

use super::*;

#[tokio::test]
async fn cluster_ip_service_is_the_wrong_type_and_says_what_to_change() {
    let (cluster, _backend) = echo_cluster("clusterip", "NodePort").await;
    cluster.apply_service(service(NS, "internal", "ClusterIP", vec![port("tcp", 80)]));
    let engine = start(&cluster, &forward("internal", NS, "internal")).await;
    let status = wait_cause(&engine, "internal", State::Down, CauseId::WrongServiceType).await;
    let cause = status.health.cause.unwrap();
    assert!(cause.message.contains("ClusterIP"), "{}", cause.message);
    assert!(cause.fix.unwrap().contains("type: NodePort"));

    // Changing the live service to NodePort heals the forward without a restart.
    cluster.apply_service(service(NS, "internal", "NodePort", vec![port("tcp", 80)]));
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

/// A stand-in for the cluster's own port mapping on this host (docker-proxy for kind's
/// `extraPortMappings`): echoes on `addr` until aborted.
async fn port_mapping(addr: std::net::SocketAddr) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut read, mut write) = stream.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    })
}

#[tokio::test]
async fn a_watched_port_is_probed_not_listened_on_and_names_the_cluster_or_the_mapping() {
    let (cluster, _backend) = echo_cluster("watched", "NodePort").await;
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mapping = port_mapping(addr).await;
    let forwards = format!(
        "{}mode = \"watch\"\nprobe = \"tcp\"\n",
        forward("echo", NS, "echo").replace("local_port = 0", &format!("local_port = {}", addr.port()))
    );
    let engine = start(&cluster, &forwards).await;
    let status = wait_healthy(&engine, "echo").await;
    assert_eq!(
        status.local,
        Some(addr),
        "the watched port is the forward's local address"
    );
    let route = status.route.unwrap();
    assert_eq!(route.path, porthole::status::Path::Host);
    assert_eq!(route.describe(), format!("watch → {addr}"));
    // Porthole holds no listener there: the mapping has the port to itself.
    assert_eq!(echo_once(addr, b"mapped").await.unwrap(), b"mapped");

    // The mapping goes away (the node container restarted without it): down, naming it.
    mapping.abort();
    let _ = mapping.await;
    let status = wait_cause(&engine, "echo", State::Down, CauseId::HostPortUnanswered).await;
    let cause = status.health.cause.unwrap();
    assert!(cause.message.contains(&addr.to_string()), "{}", cause.message);
    assert!(cause.fix.unwrap().contains("extraPortMappings"));
    let mapping = port_mapping(addr).await;
    wait_healthy(&engine, "echo").await;

    // The cluster's causes count too: the service's pods not ready, though the port answers.
    cluster.set_endpoint_ready(NS, "echo-0", false);
    wait_cause(&engine, "echo", State::Down, CauseId::NoReadyEndpoints).await;
    cluster.set_endpoint_ready(NS, "echo-0", true);
    wait_healthy(&engine, "echo").await;
    let stats = engine.status().await.forward("echo").unwrap().stats;
    assert_eq!(stats.total, 0, "nothing was relayed");
    engine.shutdown(Duration::from_secs(1)).await;
    mapping.abort();
}
