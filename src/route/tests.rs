use super::*;
use crate::config::{Config, Source};
use serde_json::json;

fn world() -> World {
    let ns = |name: &str| Arc::new(serde_json::from_value::<Namespace>(json!({"metadata": {"name": name}})).unwrap());
    let node = |name: &str, ip: &str, ready: &str, cp: bool| {
        let labels = if cp {
            json!({CONTROL_PLANE_LABEL: ""})
        } else {
            json!({})
        };
        Arc::new(
            serde_json::from_value::<Node>(json!({
                "metadata": {"name": name, "labels": labels},
                "status": {
                    "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
                    "conditions": [{"type": "Ready", "status": ready}]
                }
            }))
            .unwrap(),
        )
    };
    let svc = |ns: &str, name: &str, ty: &str, ports: serde_json::Value| {
        Arc::new(
            serde_json::from_value::<Service>(json!({
                "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
                "spec": {"type": ty, "ports": ports}
            }))
            .unwrap(),
        )
    };
    let slice = |ns: &str, svc: &str, ready: bool| {
        Arc::new(
            serde_json::from_value::<EndpointSlice>(json!({
                "metadata": {"name": format!("{svc}-abc"), "namespace": ns, "labels": {SERVICE_NAME_LABEL: svc}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": ["10.244.1.5"], "conditions": {"ready": ready}}]
            }))
            .unwrap(),
        )
    };
    World {
        namespaces: vec![ns("apps")],
        nodes: vec![
            node("kind-control-plane", "127.0.0.3", "True", true),
            node("kind-worker", "127.0.0.2", "True", false),
            node("kind-worker2", "127.0.0.4", "False", false),
        ],
        services: vec![
            svc(
                "apps",
                "web",
                "NodePort",
                json!([{"name": "http", "port": 80, "nodePort": 30080}, {"name": "metrics", "port": 9090, "nodePort": 30090}]),
            ),
            svc(
                "apps",
                "gw",
                "LoadBalancer",
                json!([{"name": "https", "port": 443, "nodePort": 31443}]),
            ),
            svc("apps", "db", "ClusterIP", json!([{"port": 5432}])),
        ],
        endpoint_slices: vec![slice("apps", "web", true), slice("apps", "gw", false)],
        pods: vec![
            pod("worker-0", "worker", true, false),
            pod("worker-1", "worker", false, false),
            pod("worker-2", "worker", true, true),
            pod("debug-0", "debug", true, false),
        ],
    }
}

/// A pod of `app` in `apps`, on kind-worker, Running, with container port `http` 8080 (none
/// for `debug`); `ready` its Ready condition, `deleting` a deletionTimestamp.
fn pod(name: &str, app: &str, ready: bool, deleting: bool) -> Arc<Pod> {
    let ports = if app == "debug" {
        json!([])
    } else {
        json!([{"name": "http", "containerPort": 8080}, {"name": "dns", "containerPort": 53, "protocol": "UDP"}])
    };
    let mut object = json!({
        "metadata": {"name": name, "namespace": "apps", "labels": {"app": app}},
        "spec": {"nodeName": "kind-worker", "containers": [{"name": "main", "ports": ports}]},
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]
        }
    });
    if deleting {
        object["metadata"]["deletionTimestamp"] = json!("2026-11-30T07:00:00Z");
    }
    Arc::new(serde_json::from_value::<Pod>(object).unwrap())
}

#[test]
fn a_forward_to_pods_tunnels_to_the_ready_ones_on_their_container_port() {
    let (spec, cluster) = forward("pods = { app = \"worker\" }\nmode = \"tunnel\"\n");
    let route = resolve(&spec, &cluster, &world()).unwrap();
    assert_eq!(route.service, "apps/pods -l app=worker");
    assert_eq!(
        (route.service_type.as_str(), route.port.as_str()),
        ("Pod", "http 8080/TCP")
    );
    assert_eq!(route.protocol, Protocol::Http);
    // Not the unready one, nor the one being deleted.
    assert_eq!(
        route.pods(),
        [PodTarget {
            name: "worker-0".into(),
            port: 8080,
            node: Some("kind-worker".into())
        }]
    );
    assert_eq!(route.ready_endpoints, 1);

    // A pod by name, on a port it does not declare (kubectl takes any number).
    let (spec, cluster) = forward("pod = \"debug-0\"\nservice_port = 5005\nmode = \"tunnel\"\n");
    let route = resolve(&spec, &cluster, &world()).unwrap();
    assert_eq!(
        route
            .pods()
            .iter()
            .map(|p| (p.name.as_str(), p.port))
            .collect::<Vec<_>>(),
        [("debug-0", 5005)]
    );

    // Named causes: no pod, no such port.
    let (spec, cluster) = forward("pods = { app = \"nope\" }\nmode = \"tunnel\"\n");
    let cause = resolve(&spec, &cluster, &world()).unwrap_err();
    assert_eq!(cause.id, CauseId::PodMissing);
    assert_eq!(cause.message, "no pod matches apps/pods -l app=nope");
    assert!(cause.fix.unwrap().contains("kubectl get pods -n apps -l app=nope"));
    let (spec, cluster) = forward("pod = \"debug-0\"\nmode = \"tunnel\"\n");
    let cause = resolve(&spec, &cluster, &world()).unwrap_err();
    assert_eq!(cause.id, CauseId::PortNotFound, "no container port and none asked for");
    let (spec, cluster) = forward("pods = { app = \"worker\" }\nservice_port = \"dns\"\nmode = \"tunnel\"\n");
    assert_eq!(
        resolve(&spec, &cluster, &world()).unwrap_err().id,
        CauseId::PortNotFound,
        "UDP is not relayed"
    );
}

fn forward(extra: &str) -> (ForwardSpec, ClusterSpec) {
    // The nodePort path unless `extra` says otherwise: most cases here are about it.
    let mode = if extra.contains("mode =") {
        ""
    } else {
        "mode = \"nodeport\"\n"
    };
    let text = format!("[[forward]]\nname = \"f\"\nnamespace = \"apps\"\nlocal_port = 1\n{mode}{extra}\n");
    let config = Config::parse(&text, &Source::Preset("test")).unwrap();
    (config.forwards[0].clone(), config.clusters[0].clone())
}

fn resolve_with(extra: &str) -> Result<Route, Cause> {
    let (spec, cluster) = forward(extra);
    resolve(&spec, &cluster, &world())
}

/// A listener whose accept queue is full: the kernel drops new SYNs, so connects hang the
/// way they do to a node that is gone without a trace.
async fn hanging_listener(ip: &str, port: u16) -> (socket2::Socket, Vec<tokio::net::TcpStream>) {
    let addr: SocketAddr = format!("{ip}:{port}").parse().unwrap();
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&addr.into()).unwrap();
    socket.listen(0).unwrap();
    let mut queued = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => queued.push(stream),
            Ok(Err(e)) => panic!("connect to the filling listener: {e}"),
            Err(_) => return (socket, queued),
        }
    }
}

#[tokio::test]
async fn a_silent_node_costs_one_bounded_wait_then_the_next_node_answers() {
    let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = live.local_addr().unwrap().port();
    let silent_ip = format!("127.{}.{}.9", 100 + std::process::id() % 100, port % 250);
    let _silent = hanging_listener(&silent_ip, port).await;
    let mut route = resolve_with("service = \"web\"").unwrap();
    route.nodes_mut().node_port = port;
    route.nodes_mut().targets = vec![
        NodeTarget {
            node: "gone".into(),
            host: Host::Ip(silent_ip.parse().unwrap()),
        },
        NodeTarget {
            node: "alive".into(),
            host: Host::Ip("127.0.0.1".parse().unwrap()),
        },
    ];
    let bound = Duration::from_millis(300);
    let started = std::time::Instant::now();
    let (_, index) = route.connect_from(0, bound).await.unwrap();
    assert_eq!(index, 1, "the next node answered");
    assert!(
        started.elapsed() >= bound,
        "the silent node was given its bound, no more"
    );
    // Starting from the node that answered last skips the silent one.
    assert_eq!(route.connect_from(1, bound).await.unwrap().1, 1);
    route.nodes_mut().targets.truncate(1);
    let cause = route.connect_from(0, bound).await.unwrap_err();
    assert_eq!(cause.id, CauseId::NodeUnreachable);
    assert!(cause.message.contains("no answer in 300ms"), "{}", cause.message);
}

#[test]
fn nodeport_service_resolves_to_ready_workers_first() {
    let route = resolve_with("service = \"web\"").unwrap();
    assert_eq!(route.nodes().unwrap().node_port, 30080);
    assert_eq!(route.port, "http 80/TCP");
    assert_eq!(route.ready_endpoints, 1);
    let nodes: Vec<&str> = route.nodes().unwrap().targets.iter().map(|t| t.node.as_str()).collect();
    assert_eq!(
        nodes,
        vec!["kind-worker", "kind-control-plane", "kind-worker2"],
        "NotReady last"
    );
    assert_eq!(route.nodes().unwrap().ready, 2);
    assert_eq!(route.primary(), "127.0.0.2:30080");
}

#[test]
fn named_and_numbered_ports() {
    assert_eq!(
        resolve_with("service = \"web\"\nservice_port = \"metrics\"")
            .unwrap()
            .nodes()
            .unwrap()
            .node_port,
        30090
    );
    assert_eq!(
        resolve_with("service = \"web\"\nservice_port = 9090")
            .unwrap()
            .nodes()
            .unwrap()
            .node_port,
        30090
    );
    let cause = resolve_with("service = \"web\"\nservice_port = \"otlp\"").unwrap_err();
    assert_eq!(cause.id, CauseId::PortNotFound);
    assert!(
        cause.message.contains("http 80/TCP, metrics 9090/TCP"),
        "{}",
        cause.message
    );
}

#[test]
fn load_balancer_has_node_ports() {
    let route = resolve_with("service = \"gw\"").unwrap();
    assert_eq!((route.nodes().unwrap().node_port, route.ready_endpoints), (31443, 0));
}

#[test]
fn selector_finds_service() {
    assert_eq!(
        resolve_with("selector = { app = \"gw\" }")
            .unwrap()
            .nodes()
            .unwrap()
            .node_port,
        31443
    );
    let cause = resolve_with("selector = { app = \"nope\" }").unwrap_err();
    assert_eq!(cause.id, CauseId::ServiceMissing);
    assert!(cause.message.contains("-l app=nope"), "{}", cause.message);
}

#[test]
fn causes() {
    let cause = resolve_with("service = \"db\"").unwrap_err();
    assert_eq!(cause.id, CauseId::WrongServiceType);
    assert!(cause.message.contains("ClusterIP"));
    assert!(cause.fix.unwrap().contains("type: NodePort"));
    assert_eq!(
        resolve_with("service = \"nope\"").unwrap_err().id,
        CauseId::ServiceMissing
    );
    let (mut spec, cluster) = forward("service = \"web\"");
    spec.namespace = "gone".into();
    assert_eq!(
        resolve(&spec, &cluster, &world()).unwrap_err().id,
        CauseId::NamespaceMissing
    );
}

#[test]
fn pinned_node_and_hostname_addresses() {
    let (spec, mut cluster) = forward("service = \"web\"");
    cluster.node = Some("kind-control-plane".into());
    cluster.node_address = NodeAddressType::Hostname;
    let route = resolve(&spec, &cluster, &world()).unwrap();
    assert_eq!(
        route.nodes().unwrap().targets,
        vec![NodeTarget {
            node: "kind-control-plane".into(),
            host: Host::Name("kind-control-plane".into())
        }]
    );
    cluster.node = Some("nope".into());
    assert_eq!(
        resolve(&spec, &cluster, &world()).unwrap_err().id,
        CauseId::NodeUnreachable
    );
}

#[test]
fn a_port_says_what_it_speaks_by_app_protocol_then_name_then_number() {
    use super::Protocol;
    let port = |name: &str, number: i32, app: Option<&str>| ServicePort {
        name: Some(name.into()),
        port: number,
        app_protocol: app.map(str::to_string),
        ..Default::default()
    };
    let cases = [
        (port("web", 80, Some("http")), Protocol::Http),
        (port("web", 80, Some("kubernetes.io/h2c")), Protocol::H2c),
        (port("http", 443, Some("kubernetes.io/wss")), Protocol::Tls),
        (port("http", 8080, None), Protocol::Http),
        (port("http-metrics", 9090, None), Protocol::Http),
        (port("https", 8443, None), Protocol::Tls),
        (port("grpc-otlp", 4317, None), Protocol::H2c),
        (port("gateway", 443, None), Protocol::Tls),
        (port("", 8443, None), Protocol::Tls),
        (port("tcp", 7000, None), Protocol::Tcp),
        (port("otlp", 21893, None), Protocol::Tcp),
    ];
    for (port, expected) in cases {
        assert_eq!(Protocol::of(&port), expected, "{port:?}");
    }
}
