//! `cargo bench -p porthole-app --bench idle` (under `xvfb-run`): what the menu-bar app costs
//! while nothing happens, with its five quick-start forwards healthy against the fake cluster.
//! Memory is the RSS and PSS of the app and every process it started (the settings window's
//! process and WebKit's web and network processes under it, while the window is open); CPU is
//! the ticks they used over a quiet interval. Three phases: tray only from start; the settings
//! window open; the window closed again (its process gone, so its memory is back).

// It borrows the desktop tests' harness, using part of it.
#![allow(dead_code, unused_imports)]

#[path = "../tests/desktop/app.rs"]
mod app;
#[path = "../tests/desktop/bus.rs"]
mod bus;
#[path = "../tests/desktop/sni.rs"]
mod sni;
#[path = "../tests/desktop/webdriver.rs"]
mod webdriver;

use std::time::Duration;

use support::FakeCluster;

/// How long the app is left alone before measuring, and how long CPU is counted.
const SETTLE: Duration = Duration::from_secs(5);
const QUIET: Duration = Duration::from_secs(20);

#[derive(Debug, Default, Clone, Copy)]
struct Usage {
    rss_kib: u64,
    pss_kib: u64,
    processes: usize,
}

/// The app and its descendants.
fn tree(root: u32) -> Vec<u32> {
    let mut pids = vec![root];
    let mut i = 0;
    while i < pids.len() {
        // Each thread's children are listed under that thread (the app starts its window's
        // process from a runtime thread).
        let tasks = std::fs::read_dir(format!("/proc/{}/task", pids[i]))
            .into_iter()
            .flatten()
            .flatten();
        for task in tasks {
            let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            pids.extend(children.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        }
        i += 1;
    }
    pids
}

fn usage(root: u32) -> Usage {
    let mut u = Usage::default();
    for pid in tree(root) {
        let Ok(rollup) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) else {
            continue;
        };
        u.processes += 1;
        for line in rollup.lines() {
            let mut words = line.split_whitespace();
            let (Some(key), Some(kib)) = (words.next(), words.next().and_then(|v| v.parse::<u64>().ok())) else {
                continue;
            };
            match key {
                "Rss:" => u.rss_kib += kib,
                "Pss:" => u.pss_kib += kib,
                _ => {}
            }
        }
    }
    u
}

/// utime + stime of the tree, in clock ticks.
fn ticks(root: u32) -> u64 {
    tree(root)
        .iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .map(|stat| {
            // Fields after the command (which may hold spaces) start after the last ')'.
            let rest = &stat[stat.rfind(')').unwrap() + 2..];
            let fields: Vec<&str> = rest.split_whitespace().collect();
            fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
        })
        .sum()
}

/// CPU use of the tree over [`QUIET`], as a percentage of one core.
async fn cpu(root: u32) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let before = ticks(root);
    tokio::time::sleep(QUIET).await;
    let used = (ticks(root) - before) as f64 / hz;
    100.0 * used / QUIET.as_secs_f64()
}

/// The mappings holding the most resident memory (set `PORTHOLE_BENCH_SMAPS` to see them).
fn top_mappings(pid: u32) {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut by_name: std::collections::HashMap<String, u64> = Default::default();
    let mut current = String::new();
    for line in smaps.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first().is_some_and(|w| w.contains('-') && !w.ends_with(':')) {
            current = words.get(5).unwrap_or(&"[anon]").to_string();
        } else if words.first() == Some(&"Rss:") {
            *by_name.entry(current.clone()).or_default() += words[1].parse::<u64>().unwrap();
        }
    }
    let mut top: Vec<_> = by_name.into_iter().collect();
    top.sort_by_key(|(_, kib)| std::cmp::Reverse(*kib));
    for (name, kib) in top.iter().take(20) {
        eprintln!("{:>8} KiB  {name}", kib);
    }
}

/// Each process of the tree with its resident memory, on stderr.
fn processes(root: u32) {
    for pid in tree(root) {
        let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        eprintln!("    {pid} {:<20} {:.1} MiB", name.trim(), usage_of(pid) as f64 / 1024.0);
    }
}

fn usage_of(pid: u32) -> u64 {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    rollup
        .lines()
        .find_map(|l| l.strip_prefix("Rss:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn row(phase: &str, u: Usage, cpu: f64) {
    println!(
        "| {phase} | {} | {:.1} MiB | {:.1} MiB | {cpu:.2}% |",
        u.processes,
        u.rss_kib as f64 / 1024.0,
        u.pss_kib as f64 / 1024.0
    );
}

async fn healthy(tray: &sni::TrayItem, n: usize) {
    tray.wait_until("all healthy", app::WAIT, || async {
        let items = tray.menu_items().await;
        items.iter().filter(|i| i.label.ends_with("→ healthy")).count() == n
    })
    .await;
}

/// How fast the tray follows the engine: every forward turned off through the control socket,
/// then the time until the tray's icon is the paused one; turned on again, until it is not.
/// Woken by the tray item's own signals, so the time is the app's, not a polling interval's.
async fn tray_latency(home: &app::Home, tray: &sni::TrayItem) -> Vec<String> {
    const ROUNDS: usize = 10;
    let mut control = porthole::control::Client::connect(&home.control()).await.unwrap();
    let names: Vec<String> = control
        .status()
        .await
        .unwrap()
        .forwards
        .into_iter()
        .map(|f| f.name)
        .collect();
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        for (enabled, times) in [(false, &mut off), (true, &mut on)] {
            let started = std::time::Instant::now();
            for name in &names {
                control.set_enabled(name, enabled).await.unwrap();
            }
            tray.wait_until("the icon to follow", app::WAIT, || async {
                (tray.icon_colour().await == Some(sni::GREY)) != enabled
            })
            .await;
            times.push(started.elapsed());
        }
        healthy(tray, names.len()).await;
    }
    let mut lines = Vec::new();
    for (what, times) in [
        ("all off → paused icon", &mut off),
        ("all on → icon not paused", &mut on),
    ] {
        times.sort();
        lines.push(format!(
            "tray follows the engine ({what}): median {:.1} ms, max {:.1} ms over {ROUNDS} rounds",
            times[ROUNDS / 2].as_secs_f64() * 1e3,
            times[ROUNDS - 1].as_secs_f64() * 1e3
        ));
    }
    lines
}

#[tokio::main]
async fn main() {
    let cluster = FakeCluster::openchoreo().await;
    println!(
        "| phase | processes | RSS | PSS | CPU (of one core, {}s) |",
        QUIET.as_secs()
    );
    println!("|---|---|---|---|---|");

    // Tray only, as started at login.
    let home = app::Home::new();
    app::write_preset(&home.config(), &cluster, &[], false);
    let bus = bus::Bus::start(&home.path("run")).await;
    let tray_only = app::App::start(&home, &bus, &[]).await;
    healthy(&tray_only.tray, 5).await;
    tokio::time::sleep(SETTLE).await;
    let pid = tray_only.child.id().unwrap();
    let cpu_closed = cpu(pid).await;
    row("tray only (window never opened)", usage(pid), cpu_closed);
    if std::env::var_os("PORTHOLE_BENCH_SMAPS").is_some() {
        top_mappings(pid);
    }
    let latency = tray_latency(&home, &tray_only.tray).await;
    drop(tray_only);

    // With the window (WebDriver needs it from the start), then with it closed.
    let home = app::Home::new();
    app::write_preset(&home.config(), &cluster, &[], false);
    let bus = bus::Bus::start(&home.path("run")).await;
    let driver = webdriver::Driver::start(&home, &bus, &["--settings"]).await;
    let tray = app::registered(&home, &bus).await;
    let pid: u32 = bus
        .connection
        .call_method(
            Some("org.freedesktop.DBus"),
            "/org/freedesktop/DBus",
            Some("org.freedesktop.DBus"),
            "GetConnectionUnixProcessID",
            &(tray.name.as_str(),),
        )
        .await
        .unwrap()
        .body()
        .deserialize()
        .unwrap();
    healthy(&tray, 5).await;
    tokio::time::sleep(SETTLE).await;
    let cpu_open = cpu(pid).await;
    row("settings window open", usage(pid), cpu_open);
    processes(pid);

    // Escape closes the window the way a user does (a WebDriver "close window" would end the
    // session and the app with it).
    webdriver::press_escape(&driver).await;
    let open = tree(pid).len();
    // WebKit's processes may outlive the window; give them a bounded moment to go.
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while tree(pid).len() >= open {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    tokio::time::sleep(SETTLE).await;
    let cpu_after = cpu(pid).await;
    row("window closed again", usage(pid), cpu_after);
    processes(pid);
    if std::env::var_os("PORTHOLE_BENCH_SMAPS").is_some() {
        top_mappings(pid);
    }
    println!();
    for line in latency {
        println!("{line}");
    }
}
