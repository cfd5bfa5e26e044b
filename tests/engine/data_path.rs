//! Bytes, half-close and concurrency through the relay, and the counters it pushes.

use super::*;

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

#[tokio::test]
async fn past_max_connections_new_ones_are_refused_and_counted_until_one_closes() {
    let (cluster, _backend) = echo_cluster("capped", "NodePort").await;
    let capped = format!("{}max_connections = 2\n", forward("echo", NS, "echo"));
    let engine = start(&cluster, &capped).await;
    let addr = local(&wait_healthy(&engine, "echo").await);
    let mut first = TcpStream::connect(addr).await.unwrap();
    round_trip(&mut first, b"one").await.unwrap();
    let mut second = TcpStream::connect(addr).await.unwrap();
    round_trip(&mut second, b"two").await.unwrap();

    // The third is reset at once, not left waiting.
    let mut third = TcpStream::connect(addr).await.unwrap();
    let refused = tokio::time::timeout(WAIT, round_trip(&mut third, b"three"))
        .await
        .expect("refused, not hanging");
    assert!(refused.is_err(), "past max_connections a connection is refused");
    let counted = wait_for(&engine, "echo", "the refusal counted", |f| f.stats.refused == 1).await;
    assert_eq!(counted.stats.active, 2);
    // The forward itself is fine: the limit is the user's, not the cluster's.
    assert_eq!(counted.health.state, State::Healthy);
    round_trip(&mut first, b"still served").await.unwrap();

    drop(second);
    wait_for(&engine, "echo", "one closed", |f| f.stats.active == 1).await;
    let mut again = TcpStream::connect(addr).await.unwrap();
    round_trip(&mut again, b"room again").await.unwrap();
    engine.shutdown(Duration::from_secs(1)).await;
}

/// Whether this machine has an IPv6 loopback at all (some containers do not).
fn ipv6_loopback() -> bool {
    std::net::TcpListener::bind("[::1]:0").is_ok()
}

#[tokio::test]
async fn localhost_is_served_on_ipv6_loopback_too_unless_an_address_is_given() {
    let (cluster, _backend) = echo_cluster("dual", "NodePort").await;
    let v4_only = forward("v4", NS, "echo") + "bind = \"127.0.0.1\"\n";
    let engine = start(&cluster, &(forward("echo", NS, "echo") + &v4_only)).await;
    let both = local(&wait_healthy(&engine, "echo").await);
    let v4 = local(&wait_healthy(&engine, "v4").await);
    let mut s = TcpStream::connect(both).await.unwrap();
    round_trip(&mut s, b"over IPv4").await.unwrap();
    if !ipv6_loopback() {
        return eprintln!("no IPv6 loopback here: only IPv4 checked");
    }
    let mut s = TcpStream::connect(("::1", both.port())).await.unwrap();
    round_trip(&mut s, b"over IPv6, same port").await.unwrap();
    assert!(
        TcpStream::connect(("::1", v4.port())).await.is_err(),
        "an explicit 127.0.0.1 is listened on alone"
    );
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_port_taken_on_ipv6_only_is_a_warning_not_a_down_forward() {
    if !ipv6_loopback() {
        return eprintln!("no IPv6 loopback here: nothing can take ::1");
    }
    let (cluster, _backend) = echo_cluster("v6taken", "NodePort").await;
    // Someone else holds [::1]:P; 127.0.0.1:P is free.
    let taken = std::net::TcpListener::bind("[::1]:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let table = forward("echo", NS, "echo").replace("local_port = 0", &format!("local_port = {port}"));
    let engine = start(&cluster, &table).await;
    let status = wait_healthy(&engine, "echo").await;
    assert_eq!(local(&status).port(), port);
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    round_trip(&mut s, b"IPv4 serves").await.unwrap();
    engine.shutdown(Duration::from_secs(1)).await;
}
