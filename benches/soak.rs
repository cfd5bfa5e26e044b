//! Soak and fault benchmark: `porthole up` (a real process) against the fake kind cluster, under
//! load and faults, reporting what it holds and what it loses:
//! - `short`: 1,000,000 short connections through one forward; descriptors and RSS at the
//!   start, the middle and the end (they must stay flat), and the connections that failed;
//! - `many`: 100 forwards at once; the time until all are healthy, RSS, CPU while idle;
//! - `held`: 5,000 connections held idle, then closed; descriptors back where they started;
//! - `slow`: 200 bulk uploads to a server that never reads; the pipes Porthole holds stay under
//!   its cap, and another connection's round trips are not slowed;
//! - `cut`: the API server cut for 60 s while connections keep coming; none may fail.
//!
//! Run: `cargo bench --bench soak -- [short] [many] [held] [slow] [cut]` (default: all).
//! `PORTHOLE_SOAK_SHORT=N` changes the number of short connections. Linux only (it reads /proc).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use porthole::engine::Snapshot;
use support::FakeCluster;

const SHORT_DEFAULT: u64 = 1_000_000;
const CLIENT_THREADS: u64 = 4;
const MANY_FORWARDS: usize = 100;
const HELD: usize = 5_000;
const SLOW_UPLOADS: usize = 200;
const CUT: Duration = Duration::from_secs(60);

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for a list; there is nothing to list.
    }
    if let Some(to) = std::env::var_os("PORTHOLE_SOAK_HOLD") {
        return hold_from_here(to.to_str().unwrap().parse().unwrap());
    }
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let on = |name: &str| args.is_empty() || args.iter().any(|a| a == name);
    raise_descriptor_limit();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let backend = runtime.block_on(Backend::start());
    // Each row as soon as it is measured: a long run interrupted keeps what it found.
    println!("| scenario | measure | value |");
    println!("|---|---|---|");
    let scenarios: [(&str, Scenario); 5] = [
        ("short", short),
        ("many", many),
        ("held", held),
        ("slow", slow),
        ("cut", cut),
    ];
    for (name, run) in scenarios {
        if on(name) {
            for (scenario, measure, value) in run(&runtime, backend) {
                println!("| {scenario} | {measure} | {value} |");
                std::io::stdout().flush().unwrap();
            }
        }
    }
}

type Row = (&'static str, String, String);
type Scenario = fn(&tokio::runtime::Runtime, Backend) -> Vec<Row>;

/// This process hosts the clients, the fake kube-proxy and the backend: four descriptors per
/// relayed connection. Lift the limit as far as allowed (the hard limit too, when privileged),
/// and say what it is.
fn raise_descriptor_limit() {
    let wanted = libc::rlimit {
        rlim_cur: 1 << 18,
        rlim_max: 1 << 18,
    };
    // SAFETY: setrlimit and getrlimit read and write structs we own.
    unsafe {
        if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) != 0 {
            porthole::relay::raise_fd_limit();
        }
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        eprintln!("descriptor limit: {}", limit.rlim_cur);
    }
}

/// The server behind every service: the first byte says what to do. `E`: echo; `H`: hold the
/// connection and never read (a slow reader); anything else: read and discard.
#[derive(Clone, Copy)]
struct Backend {
    addr: SocketAddr,
}

impl Backend {
    async fn start() -> Backend {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
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
                    let mut buf = vec![0u8; 16 * 1024];
                    match mode[0] {
                        b'H' => std::future::pending::<()>().await,
                        b'E' => loop {
                            match s.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => {
                                    if s.write_all(&buf[..n]).await.is_err() {
                                        return;
                                    }
                                }
                            }
                        },
                        _ => while let Ok(1..) = s.read(&mut buf).await {},
                    }
                });
            }
        });
        Backend { addr }
    }
}

/// A fake cluster with `count` NodePort services `svc-N` in namespace `soak`, all backed by
/// `backend`.
fn cluster(runtime: &tokio::runtime::Runtime, name: &str, count: usize, backend: Backend) -> FakeCluster {
    runtime.block_on(async {
        let cluster = FakeCluster::start(name).await;
        cluster.add_node(&format!("{name}-control-plane"));
        cluster.add_namespace("soak");
        for i in 0..count {
            let svc = format!("svc-{i}");
            let ports = vec![support::port("tcp", 7000)];
            cluster.apply_service(support::service("soak", &svc, "NodePort", ports));
            cluster.add_endpoint("soak", &svc, &format!("{svc}-0"), backend.addr, true);
        }
        cluster
    })
}

/// `porthole up` for `count` forwards to `cluster`'s services, on the nodePort path.
struct Up {
    child: Child,
    dir: tempfile::TempDir,
    ports: Vec<u16>,
}

impl Up {
    fn start(cluster: &FakeCluster, count: usize, extra: &str) -> (Up, Duration) {
        let dir = tempfile::tempdir().unwrap();
        let mut text = format!(
            "[cluster]\ncontext = \"{}\"\nkubeconfig = \"{}\"\nmode = \"nodeport\"\n{extra}\n",
            cluster.context(),
            cluster.kubeconfig().display()
        );
        for i in 0..count {
            text += &format!(
                "[[forward]]\nname = \"svc-{i}\"\nnamespace = \"soak\"\nservice = \"svc-{i}\"\nlocal_port = 0\nbind = \"127.0.0.1\"\n"
            );
        }
        std::fs::write(dir.path().join("porthole.toml"), text).unwrap();
        let started = Instant::now();
        let log = std::env::var("PORTHOLE_SOAK_LOG").unwrap_or_else(|_| "warn".into());
        let child = porthole(dir.path(), &["--log", &log, "up"])
            .stdout(Stdio::null())
            .spawn()
            .expect("porthole up");
        let mut up = Up {
            child,
            dir,
            ports: Vec::new(),
        };
        let healthy = porthole(up.dir.path(), &["wait", "--timeout", "120"])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(healthy, "the forwards never became healthy");
        let took = started.elapsed();
        let status = up.status();
        up.ports = (0..count)
            .map(|i| {
                let name = format!("svc-{i}");
                status.forward(&name).and_then(|f| f.local).expect("bound").port()
            })
            .collect();
        (up, took)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn addr(&self, i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports[i]))
    }

    fn status(&self) -> Snapshot {
        let out = porthole(self.dir.path(), &["status", "--json"]).output().unwrap();
        serde_json::from_slice(&out.stdout).expect("status --json")
    }

    /// Waits until the engine counts no open connection.
    fn drained(&self) {
        for _ in 0..600 {
            if self.status().forwards.iter().all(|f| f.stats.active == 0) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("connections never drained");
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn porthole(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_porthole"));
    c.arg("--config")
        .arg(dir.join("porthole.toml"))
        .arg("--control")
        .arg(dir.join("control.sock"))
        .args(args);
    c
}

fn descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn pipes(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().starts_with("pipe:")))
        .count()
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

/// CPU time (user + system) the process has used.
fn cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
    // After the command: state is field 3, utime 14 and stime 15 (1-based in proc(5)).
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(ticks * 1000 / per_second)
}

/// One short connection from `source`: connect, one echoed byte, close.
fn one_short(source: std::net::IpAddr, to: SocketAddr) -> bool {
    short_attempt(source, to).is_ok()
}

/// [`one_short`], saying which step failed: `connect` (this host's own port space or
/// Porthole's backlog) or `answer` (Porthole closed it: no path upstream).
fn short_attempt(source: std::net::IpAddr, to: SocketAddr) -> Result<(), &'static str> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).map_err(|_| "socket")?;
    socket
        .bind(&SocketAddr::new(source, 0).into())
        .map_err(|_| "bind (client ports)")?;
    socket
        .connect_timeout(&to.into(), Duration::from_secs(5))
        .map_err(|_| "connect")?;
    let mut s: TcpStream = socket.into();
    let mut answer = || -> std::io::Result<[u8; 1]> {
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"Ex")?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b)?;
        Ok(b)
    };
    match answer() {
        Ok(b) if b == *b"x" => Ok(()),
        Ok(_) => Err("wrong byte"),
        Err(_) => Err("answer"),
    }
}

/// Short connections from [`CLIENT_THREADS`] threads (each from its own 127.0.0.x, for port
/// space) until `total` have run; `checkpoint` runs once half are done. Returns the failures
/// by the step that failed.
fn short_connections(
    to: SocketAddr,
    total: u64,
    mut checkpoint: impl FnMut(),
) -> std::collections::BTreeMap<&'static str, u64> {
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::new()));
    let threads: Vec<_> = (0..CLIENT_THREADS)
        .map(|t| {
            let (done, failed) = (done.clone(), failed.clone());
            std::thread::spawn(move || {
                let source = std::net::IpAddr::from([127, 0, 0, 10 + t as u8]);
                while done.fetch_add(1, Ordering::Relaxed) < total {
                    if let Err(step) = short_attempt(source, to) {
                        *failed.lock().unwrap().entry(step).or_insert(0) += 1;
                    }
                }
            })
        })
        .collect();
    let mut checked = false;
    while threads.iter().any(|t| !t.is_finished()) {
        if !checked && done.load(Ordering::Relaxed) >= total / 2 {
            checkpoint();
            checked = true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    threads.into_iter().for_each(|t| t.join().unwrap());
    failed.lock().unwrap().clone()
}

fn short(runtime: &tokio::runtime::Runtime, backend: Backend) -> Vec<Row> {
    let total = std::env::var("PORTHOLE_SOAK_SHORT")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(SHORT_DEFAULT);
    let cluster = cluster(runtime, "short", 1, backend);
    let (up, _) = Up::start(&cluster, 1, "");
    let pid = up.pid();
    let at = |when: &str| format!("{} fds, {:.1} MiB ({when})", descriptors(pid), rss_mib(pid));
    let start = at("start");
    let started = Instant::now();
    let mut middle = String::new();
    let failed = short_connections(up.addr(0), total, || middle = at("middle"));
    let elapsed = started.elapsed();
    up.drained();
    let end = at("end");
    let stats = up.status().forwards[0].stats;
    let failures = if failed.is_empty() {
        "none failed".to_string()
    } else {
        failed
            .iter()
            .map(|(step, n)| format!("{n} at {step}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let rows = vec![
        (
            "short",
            format!("{total} connections"),
            format!("{failures}; {:.0}/s", total as f64 / elapsed.as_secs_f64()),
        ),
        (
            "short",
            "Porthole's count: served, closed for want of an upstream".into(),
            format!("{}, {}", stats.total, stats.failed),
        ),
        ("short", "descriptors, RSS".into(), format!("{start}; {middle}; {end}")),
    ];
    drop(up);
    runtime.block_on(async move { drop(cluster) });
    rows
}

fn many(runtime: &tokio::runtime::Runtime, backend: Backend) -> Vec<Row> {
    let cluster = cluster(runtime, "many", MANY_FORWARDS, backend);
    let (up, took) = Up::start(&cluster, MANY_FORWARDS, "");
    let pid = up.pid();
    // Idle: only the probes (every 5 s) and the watches run.
    let (cpu0, t0) = (cpu(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(20));
    let idle = (cpu(pid) - cpu0).as_secs_f64() / t0.elapsed().as_secs_f64() * 100.0;
    let all = (0..MANY_FORWARDS).all(|i| one_short([127, 0, 0, 1].into(), up.addr(i)));
    let rows = vec![
        (
            "many",
            format!("{MANY_FORWARDS} forwards: start to all healthy"),
            format!("{:.2} s", took.as_secs_f64()),
        ),
        (
            "many",
            "RSS, descriptors".into(),
            format!("{:.1} MiB, {} fds", rss_mib(pid), descriptors(pid)),
        ),
        ("many", "CPU while idle (20 s)".into(), format!("{idle:.2} % of a core")),
        ("many", "every forward answers".into(), all.to_string()),
    ];
    drop(up);
    runtime.block_on(async move { drop(cluster) });
    rows
}

fn held(runtime: &tokio::runtime::Runtime, backend: Backend) -> Vec<Row> {
    let cluster = cluster(runtime, "held", 1, backend);
    let (up, _) = Up::start(&cluster, 1, "max_connections = 10000");
    let pid = up.pid();
    let before = descriptors(pid);
    // The clients in a process of their own: this one hosts the fake kube-proxy and the backend,
    // three descriptors per connection already.
    let mut clients = Command::new(std::env::current_exe().unwrap())
        .env("PORTHOLE_SOAK_HOLD", up.addr(0).to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(clients.stdout.take().unwrap()), &mut line).unwrap();
    let failed: usize = line.trim().parse().expect("the clients' count of failures");
    let holding = descriptors(pid);
    let rss = rss_mib(pid);
    drop(clients.stdin.take());
    clients.wait().unwrap();
    up.drained();
    let after = descriptors(pid);
    let rows = vec![
        (
            "held",
            format!("{HELD} idle connections"),
            format!("{failed} failed; {rss:.1} MiB"),
        ),
        (
            "held",
            "descriptors before, holding, after".into(),
            format!("{before}, {holding}, {after}"),
        ),
    ];
    drop(up);
    runtime.block_on(async move { drop(cluster) });
    rows
}

/// The clients of `held`: [`HELD`] connections to `to`, each answered once; prints how many
/// failed, then holds them until stdin closes.
fn hold_from_here(to: SocketAddr) {
    raise_descriptor_limit();
    let mut conns = Vec::with_capacity(HELD);
    let mut failed = 0;
    for _ in 0..HELD {
        let attempt = TcpStream::connect_timeout(&to, Duration::from_secs(5)).and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"Ex")?;
            let mut b = [0u8; 1];
            s.read_exact(&mut b)?;
            Ok(s)
        });
        match attempt {
            Ok(s) => conns.push(s),
            Err(_) => failed += 1,
        }
    }
    println!("{failed}");
    std::io::stdout().flush().unwrap();
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
}

/// Round trips of one byte on `s`: (p50, p99) in microseconds.
fn pings(s: &mut TcpStream, count: usize) -> (f64, f64) {
    let mut times = Vec::with_capacity(count);
    let mut b = [0u8; 1];
    for _ in 0..count {
        let t = Instant::now();
        s.write_all(b"p").unwrap();
        s.read_exact(&mut b).unwrap();
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    times.sort_by(f64::total_cmp);
    (times[count / 2], times[count * 99 / 100])
}

fn slow(runtime: &tokio::runtime::Runtime, backend: Backend) -> Vec<Row> {
    let cluster = cluster(runtime, "slow", 1, backend);
    let (up, _) = Up::start(&cluster, 1, "");
    let pid = up.pid();
    let mut probe = TcpStream::connect(up.addr(0)).unwrap();
    probe.set_nodelay(true).unwrap();
    probe.write_all(b"E").unwrap();
    let quiet = pings(&mut probe, 2000);
    // 200 uploads of 64 MiB to a server that reads nothing: every direction fills up.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let uploads: Vec<_> = (0..SLOW_UPLOADS)
        .map(|_| {
            let (to, stop) = (up.addr(0), stop.clone());
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(to).unwrap();
                s.set_write_timeout(Some(Duration::from_millis(200))).unwrap();
                let _ = s.write_all(b"H");
                let chunk = vec![0u8; 64 * 1024];
                while !stop.load(Ordering::Relaxed) {
                    if s.write_all(&chunk).is_err() {
                        // Blocked (the server does not read): keep the connection as it is.
                        while !stop.load(Ordering::Relaxed) {
                            std::thread::sleep(Duration::from_millis(50));
                        }
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(5));
    let held_pipes = pipes(pid);
    let loaded = pings(&mut probe, 2000);
    stop.store(true, Ordering::Relaxed);
    uploads.into_iter().for_each(|t| t.join().unwrap());
    let rows = vec![
        (
            "slow",
            format!("{SLOW_UPLOADS} stuck uploads: pipe descriptors"),
            format!(
                "{held_pipes} (cap: {} pipes, {} descriptors, plus 4 pooled)",
                porthole::relay::PIPES_MAX,
                2 * porthole::relay::PIPES_MAX
            ),
        ),
        (
            "slow",
            "another connection's round trip p50 / p99".into(),
            format!(
                "{:.0} / {:.0} µs (quiet: {:.0} / {:.0} µs)",
                loaded.0, loaded.1, quiet.0, quiet.1
            ),
        ),
    ];
    drop(up);
    runtime.block_on(async move { drop(cluster) });
    rows
}

fn cut(runtime: &tokio::runtime::Runtime, backend: Backend) -> Vec<Row> {
    let cluster = cluster(runtime, "cut", 1, backend);
    let (up, _) = Up::start(&cluster, 1, "");
    let to = up.addr(0);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (done, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load: Vec<_> = (0..CLIENT_THREADS)
        .map(|t| {
            let (stop, done, failed) = (stop.clone(), done.clone(), failed.clone());
            std::thread::spawn(move || {
                let source = std::net::IpAddr::from([127, 0, 0, 20 + t as u8]);
                while !stop.load(Ordering::Relaxed) {
                    if !one_short(source, to) {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                    // A steady load, not a flood: a browser's worth.
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    cluster.set_api_reachable(false);
    std::thread::sleep(CUT);
    let state = up.status();
    cluster.set_api_reachable(true);
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    load.into_iter().for_each(|t| t.join().unwrap());
    let forward = &state.forwards[0];
    let rows = vec![
        (
            "cut",
            format!("API server cut for {} s under load", CUT.as_secs()),
            format!(
                "{} connections, {} failed",
                done.load(Ordering::Relaxed),
                failed.load(Ordering::Relaxed)
            ),
        ),
        (
            "cut",
            "the forward during the cut".into(),
            format!(
                "{} ({})",
                forward.health.state,
                forward
                    .health
                    .cause
                    .as_ref()
                    .map_or(String::new(), |c| c.id.to_string())
            ),
        ),
    ];
    drop(up);
    runtime.block_on(async move { drop(cluster) });
    rows
}
