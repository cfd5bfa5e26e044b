//! Relay benchmark: bulk throughput both ways, small-message latency, connection rate and time
//! to a new connection's first byte for a direct
//! connection, Porthole's relay (`porthole relay`, the engine's byte pump), socat when installed,
//! and Porthole's tunnel path (`porthole up` with a `mode = "tunnel"` forward, through the fake
//! API server's port-forward); then the RSS of Porthole holding many idle connections. All on
//! loopback.
//!
//! Run: `cargo bench --bench relay`. This process is the client (and hosts the fake API server on
//! its own runtime); a child of it is the server (`PORTHOLE_BENCH_SERVE=1`), and the relays run as
//! their own programs. `PORTHOLE_BENCH_PATHS="tunnel|socat"` measures direct and the named
//! paths only.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Every measurement runs this many rounds, the paths interleaved, and reports the median, so a
/// noisy moment on a shared machine hits every path alike and does not decide the result.
const ROUNDS: usize = 5;
const BULK_BYTES: u64 = 1 << 29;
const PING_COUNT: usize = 10_000;
const PING_SIZE: usize = 64;
const CONNECT_SECONDS: f64 = 1.5;
const CONNECT_THREADS: usize = 4;
const IDLE_TARGET: usize = 10_000;

/// Which parts to run: `cargo bench --bench relay -- [bulk] [latency] [connect] [ttfb] [idle]`
/// (default: all).
struct Parts {
    bulk: bool,
    latency: bool,
    connect: bool,
    ttfb: bool,
    idle: bool,
}

impl Parts {
    fn from_args() -> Parts {
        let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
        let on = |name: &str| args.is_empty() || args.iter().any(|a| a == name);
        Parts {
            bulk: on("bulk"),
            latency: on("latency"),
            connect: on("connect"),
            ttfb: on("ttfb"),
            idle: on("idle"),
        }
    }
}

fn main() {
    if std::env::var_os("PORTHOLE_BENCH_SERVE").is_some() {
        return serve();
    }
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for a list; there is nothing to list.
    }
    let parts = Parts::from_args();
    raise_fd_limit();
    let mut server = Spawned::server();
    let target = server.addr;
    let porthole = Spawned::porthole(target);
    let socat = Spawned::socat(target);
    // The bench server speaks plain TCP, for which only a pool the config asks for is held.
    let tunnel = Tunnel::start(target, Some("{ min = 1, max = 8 }"));
    // Every connection opening its own stream, as before the pool: what the pool saves.
    let unpooled = Tunnel::start(target, Some("{ min = 0, max = 0 }"));
    let mut paths = vec![("direct", target), ("porthole", porthole.addr)];
    match &socat {
        Some(socat) => paths.push(("socat", socat.addr)),
        None => eprintln!("socat is not installed: its row is left out (apt-get install socat)"),
    }
    paths.push(("tunnel", tunnel.addr));
    paths.push(("tunnel, no pool", unpooled.addr));
    if let Ok(only) = std::env::var("PORTHOLE_BENCH_PATHS") {
        let keep: Vec<&str> = only.split('|').collect();
        paths.retain(|(name, _)| *name == "direct" || keep.contains(name));
    }
    print_table(&measure(&paths, &parts));
    drop((porthole, socat, tunnel, unpooled));
    if parts.idle {
        idle_memory(target);
    }
    server.child.kill().ok();
}

struct Row {
    path: &'static str,
    /// Bulk throughput, GiB/s: client to server, and server to client.
    up_gib_per_s: f64,
    down_gib_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    conns_per_s: f64,
    /// Time to first byte of a new connection, ms, p50 and p99: made alone (the one connection
    /// of its moment), made in a row (each as soon as the last has its byte), and in bursts of
    /// [`BURST`] at once.
    ttfb_ms: [f64; 6],
}

/// New connections made alone, and in a row, per round.
const SINGLE: usize = 30;
/// The quiet before a connection made alone: a person's click, not a loop. The tunnel's pool
/// refills meanwhile, as it does between clicks; connections made in a row do not give it
/// that time, and are measured too.
const ALONE_GAP: Duration = Duration::from_millis(50);
/// Connections made at once (a browser opening a page), and bursts per round.
const BURST: usize = 20;
const BURSTS: usize = 3;

fn measure(paths: &[(&'static str, SocketAddr)], parts: &Parts) -> Vec<Row> {
    let mut samples: Vec<[Vec<f64>; 11]> = paths.iter().map(|_| Default::default()).collect();
    for round in 0..ROUNDS {
        eprintln!("round {}/{ROUNDS}", round + 1);
        for (i, (_, addr)) in paths.iter().enumerate() {
            let s = &mut samples[i];
            if parts.bulk {
                s[0].push(bulk(*addr));
                s[1].push(bulk_down(*addr));
            }
            if parts.latency {
                let (p50, p99) = latency(*addr);
                s[2].push(p50);
                s[3].push(p99);
            }
            if parts.connect {
                s[4].push(connection_rate(*addr));
            }
            if parts.ttfb {
                for (slot, value) in s[5..].iter_mut().zip(ttfb(*addr)) {
                    slot.push(value);
                }
            }
        }
    }
    paths
        .iter()
        .zip(samples)
        .map(|((path, _), [up, down, p50, p99, c, t @ ..])| Row {
            path,
            up_gib_per_s: median(up),
            down_gib_per_s: median(down),
            p50_us: median(p50),
            p99_us: median(p99),
            conns_per_s: median(c),
            ttfb_ms: t.map(median),
        })
        .collect()
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// One connection, `BULK_BYTES` one way; the server acknowledges the count once it has them all
/// (announced up front: the tunnel's port-forward protocol cannot pass an end-of-file on).
fn bulk(addr: SocketAddr) -> f64 {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(b"S").unwrap();
    s.write_all(&BULK_BYTES.to_le_bytes()).unwrap();
    let chunk = vec![0x5au8; 256 * 1024];
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < BULK_BYTES {
        s.write_all(&chunk).unwrap();
        sent += chunk.len() as u64;
    }
    let mut ack = [0u8; 8];
    s.read_exact(&mut ack).unwrap();
    let elapsed = start.elapsed().as_secs_f64();
    assert_eq!(u64::from_le_bytes(ack), sent, "the server saw every byte");
    sent as f64 / elapsed / (1u64 << 30) as f64
}

/// One connection, `BULK_BYTES` from the server to the client (a download).
fn bulk_down(addr: SocketAddr) -> f64 {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(b"D").unwrap();
    s.write_all(&BULK_BYTES.to_le_bytes()).unwrap();
    let mut chunk = vec![0u8; 256 * 1024];
    let start = Instant::now();
    let mut got = 0u64;
    while got < BULK_BYTES {
        match s.read(&mut chunk).unwrap() {
            0 => panic!("the download ended after {got} bytes"),
            n => got += n as u64,
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    got as f64 / elapsed / (1u64 << 30) as f64
}

/// Round trips of a small message on one connection: (p50, p99) in microseconds.
fn latency(addr: SocketAddr) -> (f64, f64) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).unwrap();
    s.write_all(b"E").unwrap();
    let msg = [7u8; PING_SIZE];
    let mut back = [0u8; PING_SIZE];
    let mut samples = Vec::with_capacity(PING_COUNT);
    for i in 0..PING_COUNT + 500 {
        let start = Instant::now();
        s.write_all(&msg).unwrap();
        s.read_exact(&mut back).unwrap();
        if i >= 500 {
            samples.push(start.elapsed().as_secs_f64() * 1e6);
        }
    }
    samples.sort_by(f64::total_cmp);
    (samples[samples.len() / 2], samples[samples.len() * 99 / 100])
}

/// New connections per second, each doing one round trip, from a few threads at once.
fn connection_rate(addr: SocketAddr) -> f64 {
    let deadline = Instant::now() + Duration::from_secs_f64(CONNECT_SECONDS);
    let start = Instant::now();
    let threads: Vec<_> = (0..CONNECT_THREADS)
        .map(|_| {
            std::thread::spawn(move || {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let mut s = TcpStream::connect(addr).expect("connect");
                    s.set_nodelay(true).unwrap();
                    s.write_all(b"Ex").unwrap();
                    let mut b = [0u8; 1];
                    s.read_exact(&mut b).unwrap();
                    // Reset instead of FIN: no TIME_WAIT pile-up on the client side across paths.
                    socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO)).unwrap();
                    n += 1;
                }
                n
            })
        })
        .collect();
    let total: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    total as f64 / start.elapsed().as_secs_f64()
}

/// One new connection: connect, ask for one byte, read it; milliseconds until it came.
fn first_byte(addr: SocketAddr) -> f64 {
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).unwrap();
    s.write_all(b"Ex").unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).unwrap();
    let ms = start.elapsed().as_secs_f64() * 1e3;
    socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO)).unwrap();
    ms
}

fn percentiles(mut samples: Vec<f64>) -> (f64, f64) {
    samples.sort_by(f64::total_cmp);
    let at = |q: usize| samples[(samples.len() * q / 100).min(samples.len() - 1)];
    (at(50), at(99))
}

/// Time to first byte of new connections, ms: [alone p50, p99, in a row p50, p99, burst p50,
/// p99]. Bursts are a second apart, as a page's connections come: the tunnel's pool has
/// refilled between them.
fn ttfb(addr: SocketAddr) -> [f64; 6] {
    std::thread::sleep(Duration::from_secs(1));
    let alone: Vec<f64> = (0..SINGLE)
        .map(|_| {
            std::thread::sleep(ALONE_GAP);
            first_byte(addr)
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let in_a_row: Vec<f64> = (0..SINGLE).map(|_| first_byte(addr)).collect();
    let mut burst = Vec::new();
    for _ in 0..BURSTS {
        std::thread::sleep(Duration::from_secs(1));
        let start = std::sync::Arc::new(std::sync::Barrier::new(BURST));
        let threads: Vec<_> = (0..BURST)
            .map(|_| {
                let start = start.clone();
                std::thread::spawn(move || {
                    start.wait();
                    first_byte(addr)
                })
            })
            .collect();
        burst.extend(threads.into_iter().map(|t| t.join().unwrap()));
    }
    let (a50, a99) = percentiles(alone);
    let (r50, r99) = percentiles(in_a_row);
    let (b50, b99) = percentiles(burst);
    [a50, a99, r50, r99, b50, b99]
}

fn print_table(rows: &[Row]) {
    let direct = &rows[0];
    let socat = rows.iter().find(|r| r.path == "socat");
    println!();
    println!(
        "| path | throughput up | vs direct | vs socat | down | latency p50 | p99 | added p50 | connections/s | vs socat |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let vs_socat = |a: f64, b: Option<f64>| b.map_or("-".to_string(), |b| format!("{:.2}x", a / b));
        println!(
            "| {} | {:.2} GiB/s | {:.2}x | {} | {:.2} GiB/s | {:.1} µs | {:.1} µs | {:+.1} µs | {:.0} | {} |",
            r.path,
            r.up_gib_per_s,
            r.up_gib_per_s / direct.up_gib_per_s,
            vs_socat(r.up_gib_per_s, socat.map(|s| s.up_gib_per_s)),
            r.down_gib_per_s,
            r.p50_us,
            r.p99_us,
            r.p50_us - direct.p50_us,
            r.conns_per_s,
            vs_socat(r.conns_per_s, socat.map(|s| s.conns_per_s)),
        );
    }
    println!();
    println!("| path | first byte, alone: p50 | p99 | in a row: p50 | p99 | in a burst of {BURST}: p50 | p99 |");
    println!("|---|---|---|---|---|---|---|");
    for r in rows {
        let [a50, a99, r50, r99, b50, b99] = r.ttfb_ms;
        println!(
            "| {} | {a50:.2} ms | {a99:.2} ms | {r50:.2} ms | {r99:.2} ms | {b50:.2} ms | {b99:.2} ms |",
            r.path
        );
    }
    println!();
}

/// RSS of a Porthole relay holding idle connections, each established end to end.
fn idle_memory(target: SocketAddr) {
    let porthole = Spawned::porthole(target);
    let base = rss_kib(porthole.child.id());
    let limit = fd_limit();
    // The relay holds two sockets per connection; stay under its descriptor limit.
    let n = IDLE_TARGET.min((limit.saturating_sub(100) / 2) as usize);
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = TcpStream::connect(porthole.addr).expect("connect");
        s.write_all(b"Ex").unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
        conns.push(s);
    }
    let held = rss_kib(porthole.child.id());
    let per_conn = (held - base) as f64 * 1024.0 / n as f64;
    let projected = base as f64 / 1024.0 + per_conn * IDLE_TARGET as f64 / (1 << 20) as f64;
    println!("| idle connections | relay RSS | per connection | projected at {IDLE_TARGET} |");
    println!("|---|---|---|---|");
    println!(
        "| {n} (fd limit {limit}) | {:.1} MiB (from {:.1} MiB) | {:.0} B | {:.1} MiB |",
        held as f64 / 1024.0,
        base as f64 / 1024.0,
        per_conn,
        projected
    );
    drop(conns);
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct we pass.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    limit.rlim_cur
}

fn raise_fd_limit() {
    porthole::relay::raise_fd_limit();
}

/// A child process listening on an address it reported.
struct Spawned {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Spawned {
    /// The bench binary itself as the server; it prints `listening on ADDR`.
    fn server() -> Spawned {
        let exe = std::env::current_exe().unwrap();
        let mut cmd = Command::new(exe);
        cmd.env("PORTHOLE_BENCH_SERVE", "1");
        Spawned::reporting(cmd)
    }

    fn porthole(target: SocketAddr) -> Spawned {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_porthole"));
        cmd.args(["--log", "warn", "relay", "127.0.0.1:0", &target.to_string()]);
        Spawned::reporting(cmd)
    }

    fn reporting(mut cmd: Command) -> Spawned {
        let mut child = cmd.stdout(Stdio::piped()).spawn().expect("spawn");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .expect("listening line")
            .parse()
            .unwrap();
        Spawned { child, addr }
    }

    fn socat(target: SocketAddr) -> Option<Spawned> {
        let port = TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
        let child = Command::new("socat")
            .arg(format!("TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr,backlog=1024"))
            .arg(format!("TCP:{target}"))
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        // socat prints nothing when ready: wait until it accepts (a benchmark, not a test).
        for _ in 0..200 {
            if TcpStream::connect(addr).is_ok() {
                return Some(Spawned { child, addr });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

/// The tunnel path: a fake kind cluster whose ClusterIP service `bench/server` is backed by the
/// bench server, and `porthole up` forwarding to it with `mode = "tunnel"`, so every connection
/// is a port-forward stream through the (fake) API server, as on macOS.
struct Tunnel {
    addr: SocketAddr,
    porthole: Child,
    cluster: Option<support::FakeCluster>,
    runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

impl Tunnel {
    /// `pool`: a `tunnel_pool` table for the forward (`None`: the default).
    fn start(target: SocketAddr, pool: Option<&str>) -> Tunnel {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let cluster = runtime.block_on(async {
            let cluster = support::FakeCluster::start("bench").await;
            cluster.add_node("bench-control-plane");
            cluster.add_namespace("bench");
            let ports = vec![support::port("tcp", 7000)];
            cluster.apply_service(support::service("bench", "server", "ClusterIP", ports));
            cluster.add_endpoint("bench", "server", "server-0", target, true);
            cluster
        });
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let config = dir.path().join("porthole.toml");
        let text = format!(
            "[cluster]\ncontext = \"{}\"\nkubeconfig = \"{}\"\n\n[[forward]]\nname = \"server\"\nnamespace = \"bench\"\nservice = \"server\"\nlocal_port = {port}\nmode = \"tunnel\"\n{}",
            cluster.context(),
            cluster.kubeconfig().display(),
            pool.map(|p| format!("tunnel_pool = {p}\n")).unwrap_or_default()
        );
        std::fs::write(&config, text).unwrap();
        let control = dir.path().join("control.sock");
        let args = |cmd: &str| {
            let mut c = Command::new(env!("CARGO_BIN_EXE_porthole"));
            c.arg("--config").arg(&config).arg("--control").arg(&control);
            c.args(["--log", "warn", cmd]);
            c
        };
        let porthole = args("up").stdout(Stdio::null()).spawn().expect("porthole up");
        // `porthole wait` waits for the engine's socket, then for the forward to be healthy.
        let healthy = args("wait")
            .args(["--timeout", "30"])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(healthy, "the tunnel forward never became healthy");
        Tunnel {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            porthole,
            cluster: Some(cluster),
            runtime,
            _dir: dir,
        }
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        let _ = self.porthole.kill();
        let _ = self.porthole.wait();
        // The fake API server's tasks belong to this runtime.
        let cluster = self.cluster.take();
        self.runtime.block_on(async move { drop(cluster) });
    }
}

/// The server: `S`, a count, then bytes → counts them, answers the count once it has them all;
/// `D` and a count → sends that many bytes; `E` → echoes.
fn serve() {
    raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("listening on {}", listener.local_addr().unwrap());
        std::io::stdout().flush().unwrap();
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let _ = s.set_nodelay(true);
                let mut mode = [0u8; 1];
                if s.read_exact(&mut mode).await.is_err() {
                    return;
                }
                let mut expected = [0u8; 8];
                if matches!(mode[0], b'S' | b'D') && s.read_exact(&mut expected).await.is_err() {
                    return;
                }
                let expected = u64::from_le_bytes(expected);
                if mode[0] == b'D' {
                    let chunk = vec![0xa5u8; 256 * 1024];
                    let mut sent = 0u64;
                    while sent < expected {
                        let n = chunk.len().min((expected - sent) as usize);
                        if s.write_all(&chunk[..n]).await.is_err() {
                            return;
                        }
                        sent += n as u64;
                    }
                    // The client closes once it has them all.
                    let _ = s.read(&mut [0u8; 1]).await;
                    return;
                }
                let mut buf = vec![0u8; if mode[0] == b'S' { 256 * 1024 } else { 4096 }];
                let mut total = 0u64;
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) if mode[0] == b'S' => {
                            total += n as u64;
                            if total >= expected {
                                break;
                            }
                        }
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                if mode[0] == b'S' {
                    let _ = s.write_all(&total.to_le_bytes()).await;
                }
            });
        }
    });
}
