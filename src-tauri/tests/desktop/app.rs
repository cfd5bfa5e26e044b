//! The app under test as a real process: its own HOME, XDG and TMP dirs (tray-icon writes its
//! icon files under the temp dir), the test's private bus and X display, and a config that
//! points at the fake cluster.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use super::bus::Bus;
use super::sni::TrayItem;
use support::FakeCluster;

pub const APP: &str = env!("CARGO_BIN_EXE_porthole-app");
/// Generous bound for every wait: a failing test fails, it never hangs.
pub const WAIT: Duration = Duration::from_secs(40);

/// The directories and variables one app instance lives in.
pub struct Home {
    pub dir: tempfile::TempDir,
    /// The config named by `$PORTHOLE_CONFIG` (a test's own file); `false`: the app finds its
    /// config, and kubectl's kubeconfig (`~/.kube/config`), where a user's would be.
    pub named_config: bool,
}

impl Home {
    pub fn new() -> Home {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["home", "config/porthole", "data", "state", "cache", "run", "tmp"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path().join("run"), std::fs::Permissions::from_mode(0o700)).unwrap();
        Home {
            dir,
            named_config: true,
        }
    }

    pub fn path(&self, sub: &str) -> PathBuf {
        self.dir.path().join(sub)
    }

    pub fn config(&self) -> PathBuf {
        self.path("config/porthole/config.toml")
    }

    pub fn control(&self) -> PathBuf {
        self.path("run/control.sock")
    }

    /// Everything the app reads from its environment.
    pub fn env(&self, bus: &Bus) -> Vec<(String, String)> {
        let p = |s: &str| self.path(s).display().to_string();
        let mut env = vec![
            ("HOME".into(), p("home")),
            ("XDG_CONFIG_HOME".into(), p("config")),
            ("XDG_DATA_HOME".into(), p("data")),
            ("XDG_STATE_HOME".into(), p("state")),
            ("XDG_CACHE_HOME".into(), p("cache")),
            ("XDG_RUNTIME_DIR".into(), p("run")),
            ("TMPDIR".into(), p("tmp")),
            ("DBUS_SESSION_BUS_ADDRESS".into(), bus.address.clone()),
            ("DISPLAY".into(), bus.display.clone()),
            match self.named_config {
                true => ("PORTHOLE_CONFIG".into(), self.config().display().to_string()),
                // Empty is unset; the default path is `config/porthole/config.toml` anyway.
                false => ("PORTHOLE_CONFIG".into(), String::new()),
            },
            ("PORTHOLE_CONTROL".into(), self.control().display().to_string()),
            ("GDK_BACKEND".into(), "x11".into()),
            ("NO_AT_BRIDGE".into(), "1".into()),
            (
                "RUST_LOG".into(),
                "info,kube=off,kube_client=off,kube_runtime=off".into(),
            ),
        ];
        if !self.named_config {
            env.push(("KUBECONFIG".into(), p("home/.kube/config")));
        }
        if std::env::var_os("PORTHOLE_SCREENSHOTS").is_some() {
            // WebKit's page snapshots (WebDriver screenshots) need GL in the window's process,
            // which inherits the app's environment; the app turns GL off unless GDK_GL is set.
            env.push(("GDK_GL".into(), String::new()));
        }
        env
    }
}

/// The quick-start preset pointed at `cluster`'s kubeconfig; only the forwards whose names are
/// in `keep` (all when empty). Free local ports, unless `fixed` keeps the preset's own (3000,
/// 8080, ...) for the README's screenshots, taken by hand on a machine where they are free.
pub fn write_preset(path: &Path, cluster: &FakeCluster, keep: &[&str], fixed: bool) {
    let text = porthole::config::preset_text("openchoreo").unwrap().replace(
        "[cluster]\n",
        &format!("[cluster]\nkubeconfig = \"{}\"\n", cluster.kubeconfig().display()),
    );
    let mut out = String::new();
    for (i, table) in text.split("[[forward]]\n").enumerate() {
        if i == 0 {
            out += table;
            continue;
        }
        let name = table
            .lines()
            .next()
            .unwrap()
            .trim_start_matches("name = ")
            .trim_matches('"');
        if keep.is_empty() || keep.contains(&name) {
            let table: String = table
                .lines()
                .map(|l| {
                    if l.starts_with("local_port") && !fixed {
                        "local_port = 0".to_string()
                    } else {
                        l.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n");
            out += &format!("[[forward]]\n{table}\n");
        }
    }
    std::fs::write(path, out).unwrap();
}

/// A port nobody listens on right now (for a forward that must have a fixed port).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running app; killed on drop.
pub struct App {
    pub child: Child,
    pub tray: TrayItem,
}

impl App {
    /// Starts the app and waits for its tray item to register.
    pub async fn start(home: &Home, bus: &Bus, args: &[&str]) -> App {
        App::start_with(home, bus, args, &[], None).await
    }

    /// Started with a soft descriptor limit of `soft` (what launchd gives an app: 256), as a
    /// login item or a Dock launch would be, and `env` on top of the home's.
    pub async fn start_limited(home: &Home, bus: &Bus, env: &[(&str, String)], soft: u64) -> App {
        App::start_with(home, bus, &[], env, Some(soft)).await
    }

    async fn start_with(
        home: &Home,
        bus: &Bus,
        args: &[&str],
        env: &[(&str, String)],
        soft_fd_limit: Option<u64>,
    ) -> App {
        let log = std::fs::File::create(home.path("app.log")).unwrap();
        let mut command = Command::new(APP);
        command
            .args(args)
            .envs(home.env(bus))
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        if let Some(soft) = soft_fd_limit {
            // SAFETY: only async-signal-safe calls between fork and exec.
            unsafe {
                command.pre_exec(move || {
                    let mut limit = libc::rlimit {
                        rlim_cur: 0,
                        rlim_max: 0,
                    };
                    if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    limit.rlim_cur = soft.min(limit.rlim_max);
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = command.spawn().unwrap();
        let tray = registered(home, bus).await;
        App { child, tray }
    }
}

/// Waits for the first tray item to register on the test bus.
pub async fn registered(home: &Home, bus: &Bus) -> TrayItem {
    let mut seen = bus.seen();
    let registered = tokio::time::timeout(WAIT, seen.wait_for(|s| !s.items.is_empty())).await;
    let Ok(Ok(seen)) = registered else {
        panic!("no tray item registered; app log:\n{}", home.log());
    };
    let (name, path) = seen.items[0].clone();
    let mut tray = TrayItem::new(bus.connection.clone(), name, path);
    tray.log = Some(home.path("app.log"));
    tray
}

impl Home {
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("app.log")).unwrap_or_default()
    }
}

/// Re-checks `done` until it holds; panics naming `what` after [`WAIT`]. Only for state that
/// announces nothing (a WebDriver page, X windows, ports, files); pushed state is awaited.
pub async fn poll_until<F, Fut>(what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let waited = tokio::time::timeout(WAIT, async {
        while !done().await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "timed out waiting for {what}");
}

/// The settings window's processes (`porthole-app --settings-window`) of the app living in
/// `home`: those with its control socket in their environment. Exited ones do not count.
pub fn window_processes(home: &Home) -> Vec<u32> {
    let control = format!("PORTHOLE_CONTROL={}", home.control().display());
    let has = |file: String, wanted: &[u8]| {
        let bytes = std::fs::read(file).unwrap_or_default();
        bytes.split(|b| *b == 0).any(|part| part == wanted)
    };
    let entries = std::fs::read_dir("/proc").unwrap();
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            has(format!("/proc/{pid}/cmdline"), b"--settings-window")
                && has(format!("/proc/{pid}/environ"), control.as_bytes())
        })
        .collect()
}

/// Whether something accepts TCP connections at `addr`.
pub async fn listening(addr: SocketAddr) -> bool {
    tokio::net::TcpStream::connect(addr).await.is_ok()
}

/// `porthole` (the CLI) built beside this test: `cargo build` puts it in the target dir.
pub fn porthole_cli() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let cli = dir.join("porthole");
    assert!(
        cli.exists(),
        "{} is missing: build the CLI first (`cargo build --bins`)",
        cli.display()
    );
    cli
}
