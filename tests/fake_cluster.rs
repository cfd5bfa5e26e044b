//! Self-tests of the fake cluster through the real kube client.

mod support;

#[tokio::test]
async fn starts() {
    let cluster = support::FakeCluster::start("t").await;
    assert!(cluster.kubeconfig().exists());
}
