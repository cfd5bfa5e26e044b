//! Self-tests of the fake cluster through the real kube client, and of its simulated
//! kube-proxy over real loopback sockets.

// Pods and their portforward subresource.
#[path = "fake_cluster/pods.rs"]
mod pods;

use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ListParams, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher as watch_stream};
use kube::{Api, Client, Config};
use support::{Backend, FakeCluster, port, service};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// Bound on every wait for an event; generous because CI machines are slow, and only
/// ever reached when something is broken.
const WAIT: Duration = Duration::from_secs(10);

async fn client(cluster: &FakeCluster) -> Client {
    let kubeconfig = Kubeconfig::read_from(cluster.kubeconfig()).expect("read kubeconfig");
    let options = KubeConfigOptions {
        context: Some(cluster.context()),
        ..Default::default()
    };
    let config = Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .expect("kube config from kubeconfig");
    Client::try_from(config).expect("kube client")
}

/// The next watch event that is not a BOOKMARK (the fake sends those every few seconds).
async fn next_change<K>(
    stream: &mut futures::stream::BoxStream<'_, kube::Result<WatchEvent<K>>>,
) -> Option<WatchEvent<K>> {
    loop {
        let event = timeout(WAIT, stream.try_next())
            .await
            .expect("watch event in time")
            .expect("watch stream healthy");
        if !matches!(event, Some(WatchEvent::Bookmark(_))) {
            return event;
        }
    }
}

fn api_code(result: Result<impl std::fmt::Debug, kube::Error>) -> u16 {
    match result {
        Err(kube::Error::Api(status)) => status.code,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// A cluster with one worker node, namespace `ns`, and NodePort service `echo` backed by
/// one ready echo pod `echo-0`.
async fn echo_cluster() -> (FakeCluster, IpAddr, Backend) {
    let cluster = FakeCluster::start("echo").await;
    let node_ip = cluster.add_node("echo-worker");
    cluster.add_namespace("ns");
    let backend = Backend::echo().await;
    cluster.apply_service(service("ns", "echo", "NodePort", vec![port("tcp", 7000)]));
    cluster.add_endpoint("ns", "echo", "echo-0", backend.addr(), true);
    (cluster, node_ip, backend)
}

async fn assert_echoes(addr: SocketAddr) {
    let mut stream = timeout(WAIT, TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    stream.write_all(b"hello").await.expect("write");
    // Half-close: the echo answers everything, then closes its side.
    stream.shutdown().await.expect("shutdown write");
    let mut echoed = Vec::new();
    timeout(WAIT, stream.read_to_end(&mut echoed))
        .await
        .expect("echo in time")
        .expect("read echo");
    assert_eq!(echoed, b"hello");
}

async fn assert_refused(addr: SocketAddr) {
    let result = timeout(WAIT, TcpStream::connect(addr))
        .await
        .expect("connect answers in time");
    let error = result.expect_err("connect should be refused");
    assert_eq!(error.kind(), ErrorKind::ConnectionRefused);
}

#[tokio::test]
async fn get_finds_a_service_and_answers_404_for_a_missing_one() {
    let oc = FakeCluster::openchoreo().await;
    let services: Api<Service> = Api::namespaced(client(&oc).await, "wso2-amp");

    let console = services.get("amp-console").await.expect("get amp-console");
    let ports = console.spec.unwrap().ports.unwrap();
    assert_eq!(ports[0].name.as_deref(), Some("http"));
    assert_eq!(ports[0].port, 3000);
    let node_port = ports[0].node_port.map(|p| p as u16);
    assert_eq!(node_port, oc.node_port("wso2-amp", "amp-console", 0));

    assert_eq!(api_code(services.get("missing").await), 404);
    let elsewhere: Api<Service> = Api::namespaced(client(&oc).await, "no-such-namespace");
    assert_eq!(api_code(elsewhere.get("amp-console").await), 404);
}

#[tokio::test]
async fn list_filters_by_label_selector() {
    let oc = FakeCluster::openchoreo().await;
    let client = client(&oc).await;

    let by_gateway = ListParams::default().labels("gateway.envoyproxy.io/owning-gateway-name=gateway-external");
    let gateways = Api::<Service>::all(client.clone())
        .list(&by_gateway)
        .await
        .expect("list");
    let names: Vec<_> = gateways.iter().map(|s| s.metadata.name.clone().unwrap()).collect();
    assert_eq!(names, ["gateway-external"]);
    assert!(gateways.metadata.resource_version.is_some());

    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "wso2-amp");
    let of_api = ListParams::default().labels("kubernetes.io/service-name=amp-api");
    let slices = slices.list(&of_api).await.expect("list slices");
    assert_eq!(slices.items.len(), 1);
    let port = &slices.items[0].ports.as_ref().unwrap()[0];
    assert_eq!(port.name.as_deref(), Some("http"));
    assert_eq!(port.port.map(|p| p as u16), Some(oc.backends["amp-api"].addr().port()));

    let nodes = Api::<Node>::all(client)
        .list(&ListParams::default())
        .await
        .expect("list nodes");
    assert_eq!(nodes.items.len(), 2);
}

#[tokio::test]
async fn reflector_sees_an_apply_and_a_delete() {
    let cluster = FakeCluster::start("reflect").await;
    cluster.add_namespace("ns");
    let api: Api<Service> = Api::namespaced(client(&cluster).await, "ns");
    let (reader, writer) = reflector::store();
    let mut events = reflector::reflector(writer, watch_stream(api, watcher::Config::default()))
        .default_backoff()
        .boxed();
    let next_event = async |events: &mut _| {
        let events: &mut futures::stream::BoxStream<'_, _> = events;
        timeout(WAIT, events.try_next())
            .await
            .expect("watch event in time")
            .expect("watch stream healthy")
            .expect("watch stream open")
    };
    loop {
        if let Event::InitDone = next_event(&mut events).await {
            break;
        }
    }

    cluster.apply_service(service("ns", "web", "NodePort", vec![port("http", 80)]));
    let Event::Apply(applied) = next_event(&mut events).await else {
        panic!("expected an apply");
    };
    assert_eq!(applied.metadata.name.as_deref(), Some("web"));
    assert!(reader.get(&ObjectRef::new("web").within("ns")).is_some());

    cluster.delete_service("ns", "web");
    let Event::Delete(deleted) = next_event(&mut events).await else {
        panic!("expected a delete");
    };
    assert_eq!(deleted.metadata.name.as_deref(), Some("web"));
    assert!(reader.get(&ObjectRef::new("web").within("ns")).is_none());
}

#[tokio::test]
async fn streaming_list_watcher_sees_initial_objects_and_changes() {
    let cluster = FakeCluster::start("stream").await;
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client(&cluster).await);
    let config = watcher::Config::default().streaming_lists();
    let mut events = watch_stream(api, config).boxed();
    let mut initial = Vec::new();
    loop {
        match timeout(WAIT, events.try_next()).await.expect("in time").expect("ok") {
            Some(Event::InitApply(ns)) => initial.push(ns.metadata.name.unwrap()),
            Some(Event::InitDone) => break,
            other => assert!(matches!(other, Some(Event::Init)), "unexpected {other:?}"),
        }
    }
    assert!(initial.contains(&"default".to_string()));
    cluster.add_namespace("later");
    let event = timeout(WAIT, events.try_next()).await.expect("in time").expect("ok");
    assert!(matches!(event, Some(Event::Apply(ns)) if ns.metadata.name.as_deref() == Some("later")));
}

#[tokio::test]
async fn watch_from_a_compacted_resource_version_gets_410() {
    let cluster = FakeCluster::start("compact").await;
    let api: Api<Service> = Api::all(client(&cluster).await);
    let old = cluster.resource_version().to_string();
    cluster.add_namespace("ns");
    cluster.apply_service(service("ns", "a", "ClusterIP", vec![port("http", 80)]));

    // Before compaction the change is replayed from history.
    let mut replay = api.watch(&WatchParams::default(), &old).await.expect("watch").boxed();
    let first = next_change(&mut replay).await;
    assert!(matches!(first, Some(WatchEvent::Added(s)) if s.metadata.name.as_deref() == Some("a")));

    cluster.compact();
    let mut expired = api.watch(&WatchParams::default(), &old).await.expect("watch").boxed();
    let event = next_change(&mut expired).await;
    let Some(WatchEvent::Error(status)) = event else {
        panic!("expected an ERROR event, got {event:?}");
    };
    assert_eq!(status.code, 410);
    assert_eq!(status.reason, "Expired");
    assert!(
        status
            .message
            .starts_with(&format!("too old resource version: {old} ("))
    );
    let end = timeout(WAIT, expired.try_next()).await.expect("in time").expect("ok");
    assert!(end.is_none(), "the stream ends after the 410");
}

#[tokio::test]
async fn bookmarks_arrive_on_request() {
    let cluster = FakeCluster::start("bookmarks").await;
    let api: Api<Service> = Api::all(client(&cluster).await);
    let rv = cluster.resource_version().to_string();
    let mut stream = api.watch(&WatchParams::default(), &rv).await.expect("watch").boxed();
    cluster.add_namespace("ns");
    cluster.send_bookmarks();
    let event = timeout(WAIT, stream.try_next()).await.expect("in time").expect("ok");
    let Some(WatchEvent::Bookmark(bookmark)) = event else {
        panic!("expected a BOOKMARK, got {event:?}");
    };
    assert_eq!(
        bookmark.metadata.resource_version,
        cluster.resource_version().to_string()
    );
}

#[tokio::test]
async fn unauthorized_answers_401() {
    let cluster = FakeCluster::start("auth").await;
    let api: Api<Service> = Api::namespaced(client(&cluster).await, "default");
    cluster.set_unauthorized(true);
    assert_eq!(api_code(api.get("kubernetes").await), 401);
    cluster.set_unauthorized(false);
    api.get("kubernetes").await.expect("authorized again");
}

#[tokio::test]
async fn unreachable_api_fails_requests_until_it_is_back() {
    let cluster = FakeCluster::start("down").await;
    let api: Api<Service> = Api::namespaced(client(&cluster).await, "default");
    api.get("kubernetes").await.expect("reachable");

    cluster.set_api_reachable(false);
    let result = timeout(WAIT, api.get("kubernetes")).await.expect("fails in time");
    assert!(result.is_err(), "got {result:?}");

    cluster.set_api_reachable(true);
    timeout(WAIT, api.get("kubernetes"))
        .await
        .expect("in time")
        .expect("reachable again");
}

#[tokio::test]
async fn unreachable_api_drops_live_watches() {
    let cluster = FakeCluster::start("drop").await;
    let api: Api<Service> = Api::all(client(&cluster).await);
    let rv = cluster.resource_version().to_string();
    let mut stream = api.watch(&WatchParams::default(), &rv).await.expect("watch").boxed();
    cluster.set_api_reachable(false);
    let end = timeout(WAIT, stream.next()).await.expect("watch ends in time");
    assert!(!matches!(end, Some(Ok(_))), "got {end:?}");
}

#[tokio::test]
async fn kube_proxy_relays_only_while_an_endpoint_is_ready() {
    let (cluster, node_ip, backend) = echo_cluster().await;
    let node_port = cluster.node_port("ns", "echo", 0).expect("node port");
    let addr = SocketAddr::new(node_ip, node_port);
    assert_echoes(addr).await;
    assert_eq!(backend.connections(), 1);

    cluster.set_endpoint_ready("ns", "echo-0", false);
    assert_refused(addr).await;

    cluster.set_endpoint_ready("ns", "echo-0", true);
    assert_echoes(addr).await;
}

#[tokio::test]
async fn kube_proxy_follows_node_port_node_address_and_service_changes() {
    let (cluster, node_ip, _backend) = echo_cluster().await;
    let old_port = cluster.node_port("ns", "echo", 0).expect("node port");
    let new_port = cluster.change_node_port("ns", "echo", 0);
    assert_ne!(old_port, new_port);
    assert_refused(SocketAddr::new(node_ip, old_port)).await;
    assert_echoes(SocketAddr::new(node_ip, new_port)).await;

    let moved_ip = cluster.move_node("echo-worker");
    assert_refused(SocketAddr::new(node_ip, new_port)).await;
    assert_echoes(SocketAddr::new(moved_ip, new_port)).await;

    let mut clusterip = cluster.service("ns", "echo").expect("service");
    clusterip.spec.as_mut().unwrap().type_ = Some("ClusterIP".to_string());
    let clusterip = cluster.apply_service(clusterip);
    assert!(clusterip.spec.unwrap().ports.unwrap()[0].node_port.is_none());
    assert_refused(SocketAddr::new(moved_ip, new_port)).await;
}

#[tokio::test]
async fn restarted_pod_is_reachable_on_its_new_port_after_three_events() {
    let (cluster, node_ip, mut backend) = echo_cluster().await;
    let slices: Api<EndpointSlice> = Api::namespaced(client(&cluster).await, "ns");
    let rv = cluster.resource_version().to_string();
    let mut stream = slices.watch(&WatchParams::default(), &rv).await.expect("watch").boxed();
    let old_addr = backend.addr();

    cluster.restart_pod("ns", "echo-0", &mut backend).await;
    assert_ne!(backend.addr(), old_addr);
    let mut seen = Vec::new();
    for _ in 0..3 {
        let event = next_change(&mut stream).await;
        let Some(WatchEvent::Modified(slice)) = event else {
            panic!("expected MODIFIED, got {event:?}");
        };
        let ready = slice.endpoints[0].conditions.as_ref().unwrap().ready.unwrap();
        let port = slice.ports.unwrap()[0].port.unwrap() as u16;
        seen.push((ready, port));
    }
    let new = backend.addr().port();
    assert_eq!(seen, [(false, old_addr.port()), (false, new), (true, new)]);
    assert_echoes(SocketAddr::new(node_ip, cluster.node_port("ns", "echo", 0).unwrap())).await;
}

#[tokio::test]
async fn openchoreo_services_answer_through_their_node_ports() {
    let oc = FakeCluster::openchoreo().await;
    let worker = oc.node_ip(support::openchoreo::WORKER).expect("worker address");
    let port = oc.node_port("wso2-amp", "amp-console", 0).expect("node port");
    let mut stream = TcpStream::connect((worker, port)).await.expect("connect");
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write request");
    let mut response = String::new();
    timeout(WAIT, stream.read_to_string(&mut response))
        .await
        .expect("response in time")
        .expect("read response");
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(response.ends_with("amp-console"), "{response}");
}

#[tokio::test]
async fn set_current_context_points_kubectl_elsewhere() {
    let cluster = FakeCluster::start("ctx").await;
    cluster.set_current_context("rancher-desktop");
    let kubeconfig = Kubeconfig::read_from(cluster.kubeconfig()).expect("read kubeconfig");
    assert_eq!(kubeconfig.current_context.as_deref(), Some("rancher-desktop"));
    let names: Vec<_> = kubeconfig.contexts.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["kind-ctx", "rancher-desktop"]);
    // The cluster's own context still works when asked for by name.
    let api: Api<Service> = Api::namespaced(client(&cluster).await, "default");
    api.get("kubernetes").await.expect("get through kind-ctx");
}

#[tokio::test]
async fn api_requires_a_client_certificate() {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};

    let cluster = FakeCluster::start("mtls").await;
    let mut roots = rustls::RootCertStore::empty();
    let ca = CertificateDer::from_pem_slice(cluster.ca_pem().as_bytes()).expect("CA PEM");
    roots.add(ca).expect("add CA");
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = TcpStream::connect(cluster.api_addr()).await.expect("connect");
    let server_name = ServerName::try_from("127.0.0.1").expect("server name");
    let answer = timeout(WAIT, async {
        let mut tls = connector.connect(server_name, tcp).await?;
        tls.write_all(b"GET /version HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await?;
        let mut answer = Vec::new();
        tls.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    })
    .await
    .expect("answer in time");
    assert!(
        answer.is_err() || answer.as_ref().is_ok_and(|a| a.is_empty()),
        "served without a client certificate: {answer:?}"
    );
}

#[tokio::test]
async fn kube_proxy_can_lag_the_api() {
    let (cluster, node_ip, _backend) = echo_cluster().await;
    let old_port = cluster.node_port("ns", "echo", 0).expect("node port");
    // Longer than a real kube-proxy's second, so that the checks below fit in it on a slow machine.
    cluster.set_proxy_lag(Duration::from_secs(3));
    let new_port = cluster.change_node_port("ns", "echo", 0);
    // The API already says the new port; the data plane still has the old one.
    assert_echoes(SocketAddr::new(node_ip, old_port)).await;
    assert_refused(SocketAddr::new(node_ip, new_port)).await;
    // Then it follows: polled, since the lag is the fake's own timer and announces nothing.
    let followed = timeout(WAIT, async {
        while TcpStream::connect(SocketAddr::new(node_ip, new_port)).await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(followed.is_ok(), "kube-proxy followed the change");
    assert_echoes(SocketAddr::new(node_ip, new_port)).await;
    assert_refused(SocketAddr::new(node_ip, old_port)).await;
}
