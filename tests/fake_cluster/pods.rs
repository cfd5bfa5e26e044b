//! Self-tests of the fake cluster's Pod objects and their `portforward` subresource,
//! through kube's own client (`Api::<Pod>::portforward`).

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Api;
use kube::api::{ListParams, WatchEvent, WatchParams};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::time::timeout;

use super::{WAIT, api_code, client, echo_cluster, next_change};
use support::{Backend, FakeCluster};

/// How long a stalled stream is watched for bytes that must not come: only a bound on a
/// negative check, never a synchronisation.
const STALL_CHECK: Duration = Duration::from_millis(300);

fn ready(pod: &Pod) -> Option<String> {
    let conditions = pod.status.as_ref()?.conditions.as_ref()?;
    Some(conditions.iter().find(|c| c.type_ == "Ready")?.status.clone())
}

async fn pods(cluster: &FakeCluster) -> Api<Pod> {
    Api::namespaced(client(cluster).await, "ns")
}

/// One round trip through an open port-forward stream.
async fn round_trip(stream: &mut DuplexStream, bytes: &[u8]) {
    stream.write_all(bytes).await.expect("write");
    let mut echoed = vec![0u8; bytes.len()];
    timeout(WAIT, stream.read_exact(&mut echoed))
        .await
        .expect("echo in time")
        .expect("read echo");
    assert_eq!(echoed, bytes);
}

/// Reads until the stream ends (EOF or error), bounded.
async fn assert_ends(stream: &mut DuplexStream) {
    let mut rest = Vec::new();
    let end = timeout(WAIT, stream.read_to_end(&mut rest)).await;
    assert!(end.is_ok(), "the stream should end");
}

async fn streams(cluster: &FakeCluster, count: usize) {
    timeout(WAIT, cluster.until_port_forward_streams(count))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{count} port-forward streams in time, have {}",
                cluster.port_forward_streams()
            )
        });
}

#[tokio::test]
async fn pods_are_served_with_ports_labels_and_readiness() {
    let (cluster, _, backend) = echo_cluster().await;
    let client = client(&cluster).await;
    let pod = pods(&cluster).await.get("echo-0").await.expect("get pod");
    let status = pod.status.clone().unwrap();
    assert_eq!(status.phase.as_deref(), Some("Running"));
    assert_eq!(ready(&pod).as_deref(), Some("True"));
    let spec = pod.spec.unwrap();
    assert_eq!(spec.node_name.as_deref(), Some("echo-worker"));
    let container_port = &spec.containers[0].ports.as_ref().unwrap()[0];
    assert_eq!(container_port.name.as_deref(), Some("tcp"));
    assert_eq!(container_port.container_port, i32::from(backend.addr().port()));

    // The service selects the pod, and its named targetPort is the container port's name.
    let service: Service = Api::namespaced(client.clone(), "ns")
        .get("echo")
        .await
        .expect("service");
    let service_spec = service.spec.unwrap();
    let selector = service_spec.selector.unwrap();
    let labels = pod.metadata.labels.unwrap();
    assert!(selector.iter().all(|(k, v)| labels.get(k) == Some(v)), "{labels:?}");
    let target = service_spec.ports.unwrap()[0].target_port.clone();
    assert_eq!(target, Some(IntOrString::String("tcp".to_string())));
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "ns");
    let slice = slices.get("echo-echo-0").await.expect("slice");
    let target_ref = slice.endpoints[0].target_ref.clone().unwrap();
    assert_eq!(
        (
            target_ref.kind.as_deref(),
            target_ref.name.as_deref(),
            target_ref.namespace.as_deref()
        ),
        (Some("Pod"), Some("echo-0"), Some("ns"))
    );

    let all: Api<Pod> = Api::all(client);
    let listed = all.list(&ListParams::default()).await.expect("list all pods");
    assert_eq!(listed.items.len(), 1);
    assert_eq!(api_code(pods(&cluster).await.get("missing").await), 404);
}

#[tokio::test]
async fn pod_watch_follows_readiness_and_deletion() {
    let (cluster, _, _backend) = echo_cluster().await;
    let api = pods(&cluster).await;
    let rv = cluster.resource_version().to_string();
    let mut stream = api.watch(&WatchParams::default(), &rv).await.expect("watch").boxed();

    cluster.set_endpoint_ready("ns", "echo-0", false);
    let Some(WatchEvent::Modified(pod)) = next_change(&mut stream).await else {
        panic!("expected MODIFIED");
    };
    assert_eq!(ready(&pod).as_deref(), Some("False"));

    cluster.set_pod_phase("ns", "echo-0", "Succeeded");
    let Some(WatchEvent::Modified(pod)) = next_change(&mut stream).await else {
        panic!("expected MODIFIED");
    };
    assert_eq!(pod.status.unwrap().phase.as_deref(), Some("Succeeded"));

    cluster.remove_endpoint("ns", "echo-0");
    let Some(WatchEvent::Deleted(pod)) = next_change(&mut stream).await else {
        panic!("expected DELETED");
    };
    assert_eq!(pod.metadata.name.as_deref(), Some("echo-0"));
    let listed = api.list(&ListParams::default()).await.expect("list");
    assert!(listed.items.is_empty());
}

#[tokio::test]
async fn portforward_echoes_10_mib_both_ways() {
    let (cluster, _, backend) = echo_cluster().await;
    let port = backend.addr().port();
    let mut forwarder = pods(&cluster)
        .await
        .portforward("echo-0", &[port])
        .await
        .expect("portforward");
    let stream = forwarder.take_stream(port).expect("stream");
    let (mut read, mut write) = tokio::io::split(stream);
    // A pattern that a reordered, dropped or duplicated chunk cannot reproduce.
    let sent: Vec<u8> = (0..10u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let expected = sent.clone();
    let writer = tokio::spawn(async move {
        write.write_all(&sent).await.expect("write 10 MiB");
        write
    });
    let mut received = vec![0u8; expected.len()];
    timeout(WAIT * 6, read.read_exact(&mut received))
        .await
        .expect("10 MiB echoed in time")
        .expect("read echo");
    assert!(received == expected, "the echo differs from what was sent");
    drop(writer.await.expect("writer"));
    assert_eq!(backend.connections(), 1);
}

#[tokio::test]
async fn client_half_close_ends_the_stream_and_the_pod_connection() {
    let (cluster, _, backend) = echo_cluster().await;
    let port = backend.addr().port();
    let mut forwarder = pods(&cluster)
        .await
        .portforward("echo-0", &[port])
        .await
        .expect("portforward");
    let mut stream = forwarder.take_stream(port).expect("stream");
    round_trip(&mut stream, b"hello").await;
    streams(&cluster, 1).await;

    // v4.channel.k8s.io cannot carry a half-close: kube ends the stream and sends a Close.
    stream.shutdown().await.expect("shutdown");
    assert_ends(&mut stream).await;
    streams(&cluster, 0).await;
    drop(stream);
    timeout(WAIT, forwarder.join())
        .await
        .expect("forwarder ends in time")
        .ok();
}

#[tokio::test]
async fn two_ports_in_one_request_are_two_streams() {
    let (cluster, _, first) = echo_cluster().await;
    // Same pod address (127.0.0.1), a second listening port.
    let second = Backend::echo().await;
    let ports = [first.addr().port(), second.addr().port()];
    let mut forwarder = pods(&cluster)
        .await
        .portforward("echo-0", &ports)
        .await
        .expect("portforward");
    let mut a = forwarder.take_stream(ports[0]).expect("first stream");
    let mut b = forwarder.take_stream(ports[1]).expect("second stream");
    round_trip(&mut b, b"to the second").await;
    round_trip(&mut a, b"to the first").await;
    streams(&cluster, 2).await;
    assert_eq!((first.connections(), second.connections()), (1, 1));
}

#[tokio::test]
async fn portforward_refusals_answer_like_the_api_server() {
    let (cluster, _, backend) = echo_cluster().await;
    let port = backend.addr().port();
    let api = pods(&cluster).await;
    let Err(kube::Error::Api(status)) = api.portforward("missing", &[port]).await else {
        panic!("a missing pod is an error");
    };
    assert_eq!(
        (status.code, status.message.as_str()),
        (404, "pods \"missing\" not found")
    );

    cluster.set_pod_phase("ns", "echo-0", "Pending");
    let Err(kube::Error::Api(status)) = api.portforward("echo-0", &[port]).await else {
        panic!("a pod without a node is an error");
    };
    assert_eq!(
        (status.code, status.message.as_str()),
        (400, "pod echo-0 does not have a host assigned")
    );

    cluster.set_pod_phase("ns", "echo-0", "Failed");
    let Err(kube::Error::Api(status)) = api.portforward("echo-0", &[port]).await else {
        panic!("a pod that is not running is an error");
    };
    assert_eq!(
        (status.code, status.message.as_str()),
        (500, "pod not found (\"echo-0_ns\")")
    );

    cluster.set_pod_phase("ns", "echo-0", "Running");
    cluster.set_unauthorized(true);
    assert_eq!(api_code(api.portforward("echo-0", &[port]).await.map(|_| ())), 401);
}

#[tokio::test]
async fn refused_pod_port_surfaces_on_the_error_channel() {
    let (cluster, _, backend) = echo_cluster().await;
    let port = backend.addr().port();
    backend.stop().await;
    let mut forwarder = pods(&cluster)
        .await
        .portforward("echo-0", &[port])
        .await
        .expect("portforward");
    let error = forwarder.take_error(port).expect("error future");
    let mut stream = forwarder.take_stream(port).expect("stream");
    let message = timeout(WAIT, error)
        .await
        .expect("error in time")
        .expect("an error message");
    assert!(
        message.starts_with(&format!("error forwarding port {port} to pod ")),
        "{message}"
    );
    assert!(message.contains("connect: connection refused"), "{message}");
    assert_ends(&mut stream).await;
}

#[tokio::test]
async fn cut_port_forwards_ends_live_streams_only() {
    let (cluster, _, backend) = echo_cluster().await;
    let port = backend.addr().port();
    let api = pods(&cluster).await;
    let mut forwarder = api.portforward("echo-0", &[port]).await.expect("portforward");
    let mut stream = forwarder.take_stream(port).expect("stream");
    round_trip(&mut stream, b"before").await;

    cluster.cut_port_forwards();
    assert_ends(&mut stream).await;
    streams(&cluster, 0).await;

    let mut again = api.portforward("echo-0", &[port]).await.expect("portforward again");
    round_trip(&mut again.take_stream(port).expect("stream"), b"after").await;
}

#[tokio::test]
async fn stalled_port_forward_holds_bytes_until_released() {
    let (cluster, _, backend) = echo_cluster().await;
    let port = backend.addr().port();
    let mut forwarder = pods(&cluster)
        .await
        .portforward("echo-0", &[port])
        .await
        .expect("portforward");
    let mut stream = forwarder.take_stream(port).expect("stream");
    round_trip(&mut stream, b"live").await;

    cluster.stall_port_forwards(true);
    stream.write_all(b"held").await.expect("write");
    let mut echoed = [0u8; 4];
    let early = timeout(STALL_CHECK, stream.read_exact(&mut echoed)).await;
    assert!(early.is_err(), "no byte may pass a stalled stream");
    assert_eq!(cluster.port_forward_streams(), 1, "a stalled stream stays open");

    cluster.stall_port_forwards(false);
    timeout(WAIT, stream.read_exact(&mut echoed))
        .await
        .expect("echo in time")
        .expect("read echo");
    assert_eq!(&echoed, b"held");
}

#[tokio::test]
async fn unreachable_api_cuts_live_port_forwards() {
    let (cluster, _, backend) = echo_cluster().await;
    let port = backend.addr().port();
    let mut forwarder = pods(&cluster)
        .await
        .portforward("echo-0", &[port])
        .await
        .expect("portforward");
    let mut stream = forwarder.take_stream(port).expect("stream");
    round_trip(&mut stream, b"up").await;
    cluster.set_api_reachable(false);
    assert_ends(&mut stream).await;
    streams(&cluster, 0).await;
}

#[tokio::test]
async fn the_upgrade_is_answered_before_the_kubelet_is_reached_and_its_failure_comes_late() {
    let (cluster, _, backend) = echo_cluster().await;
    let port = backend.addr().port();
    let delay = Duration::from_millis(600);
    cluster.set_kubelet_delay(delay);
    cluster.set_kubelet_reachable(false);
    let started = tokio::time::Instant::now();
    let mut forwarder = pods(&cluster)
        .await
        .portforward("echo-0", &[port])
        .await
        .expect("the upgrade is answered: the client holds an open stream");
    assert!(started.elapsed() < delay, "answered before the kubelet was dialed");
    let error = forwarder.take_error(port).expect("error future");
    let mut stream = forwarder.take_stream(port).expect("stream");
    let message = timeout(WAIT, error).await.expect("error in time").expect("a message");
    assert!(started.elapsed() >= delay, "the failure comes after the dial's delay");
    let status: serde_json::Value = serde_json::from_str(&message).expect("a Status object");
    assert_eq!(status["code"], 500);
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .starts_with("error dialing backend: dial tcp: lookup echo-worker"),
        "{status}"
    );
    assert_ends(&mut stream).await;
    assert_eq!(backend.connections(), 0, "the pod was never dialed");

    // A slow but reachable kubelet: bytes written at once wait for the dial, then flow.
    cluster.set_kubelet_reachable(true);
    let mut forwarder = pods(&cluster).await.portforward("echo-0", &[port]).await.unwrap();
    let mut stream = forwarder.take_stream(port).expect("stream");
    round_trip(&mut stream, b"early bytes").await;
}

#[tokio::test]
async fn a_new_pods_slice_appears_empty_then_not_ready_then_ready() {
    let (cluster, _, _backend) = echo_cluster().await;
    let slices: Api<EndpointSlice> = Api::namespaced(client(&cluster).await, "ns");
    let rv = cluster.resource_version().to_string();
    let mut stream = slices.watch(&WatchParams::default(), &rv).await.expect("watch").boxed();
    let second = Backend::echo().await;
    cluster.add_endpoint("ns", "echo", "echo-1", second.addr(), true);
    let mut seen = Vec::new();
    for _ in 0..3 {
        let event = next_change(&mut stream).await;
        let (kind, slice) = match event {
            Some(WatchEvent::Added(slice)) => ("ADDED", slice),
            Some(WatchEvent::Modified(slice)) => ("MODIFIED", slice),
            other => panic!("unexpected {other:?}"),
        };
        let ready = slice
            .endpoints
            .first()
            .map(|e| e.conditions.as_ref().unwrap().ready.unwrap());
        let node = slice.endpoints.first().and_then(|e| e.node_name.clone());
        seen.push((kind, ready, node));
    }
    let node = Some("echo-worker".to_string());
    assert_eq!(
        seen,
        [
            ("ADDED", None, None),
            ("MODIFIED", Some(false), node.clone()),
            ("MODIFIED", Some(true), node)
        ]
    );
}
