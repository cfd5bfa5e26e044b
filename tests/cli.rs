//! The `porthole` binary as users run it: real processes, a real control socket, a fake cluster.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use porthole::cause::State;
use porthole::engine::Snapshot;
use support::porthole::WAIT;
use support::{FakeCluster, port, service};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_porthole");

/// The quick-start preset pointed at `cluster`, with free local ports.
fn preset_config(dir: &Path, cluster: &FakeCluster) -> PathBuf {
    let text = porthole::config::preset_text("openchoreo")
        .unwrap()
        .replace(
            "[cluster]\n",
            // The nodePort path, which these tests' routes and causes are about (`auto`, the
            // default, is tested in tests/tunnel.rs).
            &format!(
                "[cluster]\nkubeconfig = \"{}\"\nmode = \"nodeport\"\n",
                cluster.kubeconfig().display()
            ),
        )
        .replace("local_port = 3000", "local_port = 0")
        .replace("local_port = 8080", "local_port = 0")
        .replace("local_port = 9098", "local_port = 0")
        .replace("local_port = 21893", "local_port = 0")
        .replace("local_port = 8443", "local_port = 0");
    let path = dir.join("porthole.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The quick-start cluster, a temporary directory with the preset's config for it, and a
/// control socket path in that directory.
struct Preset {
    cluster: support::OpenChoreo,
    /// The directory of `config` and `control`, removed when this goes.
    _dir: tempfile::TempDir,
    config: PathBuf,
    control: PathBuf,
}

async fn preset() -> Preset {
    let cluster = FakeCluster::openchoreo().await;
    let dir = tempfile::tempdir().unwrap();
    let config = preset_config(dir.path(), &cluster);
    let control = dir.path().join("control.sock");
    Preset {
        cluster,
        _dir: dir,
        config,
        control,
    }
}

fn porthole(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("PORTHOLE_CONFIG")
        .env_remove("PORTHOLE_CONTROL")
        .kill_on_drop(true);
    cmd
}

async fn run(args: &[&str]) -> Output {
    tokio::time::timeout(WAIT, porthole(args).output())
        .await
        .expect("porthole finished")
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A running `porthole up` and its log lines.
struct Up {
    child: Child,
    log: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl Up {
    /// Waits for a log line containing `text`; returns the lines up to it.
    async fn logged(&mut self, text: &str) -> Vec<String> {
        self.logged_where(text, |line| line.contains(text)).await
    }

    /// Waits for a log line that `matches` (described by `text`); returns the lines up to it.
    async fn logged_where(&mut self, text: &str, matches: impl Fn(&str) -> bool) -> Vec<String> {
        let found = tokio::time::timeout(WAIT, async {
            let mut seen = Vec::new();
            while let Some(line) = self.log.recv().await {
                let done = matches(&line);
                seen.push(line);
                if done {
                    return seen;
                }
            }
            panic!("porthole up exited before logging {text:?}");
        });
        found
            .await
            .unwrap_or_else(|_| panic!("porthole up never logged {text:?}"))
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = self.child.id().unwrap() as libc::pid_t;
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(pid, signal) };
    }

    async fn exit_status(&mut self) -> std::process::ExitStatus {
        tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("porthole up exited")
            .unwrap()
    }
}

/// Starts `porthole up` and returns once its control socket answers (it logs `starting` after
/// binding it).
async fn up(config: &Path, control: &Path) -> Up {
    up_with(porthole(&["--config", path(config), "--control", path(control), "up"])).await
}

async fn up_with(mut cmd: Command) -> Up {
    let mut child = cmd.stderr(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (tx, log) = tokio::sync::mpsc::unbounded_channel();
    // Keep draining its log so it never blocks on a full pipe.
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = tx.send(line);
        }
    });
    let mut up = Up { child, log };
    up.logged("starting").await;
    up
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `porthole wait` until every forward of the engine at `control` is healthy, then its status.
async fn all_healthy(control: &Path) -> Snapshot {
    let wait = run(&["--control", path(control), "wait", "--timeout", "30"]).await;
    assert!(
        wait.status.success(),
        "wait: {}{}",
        text(&wait.stdout),
        text(&wait.stderr)
    );
    let status = run(&["--control", path(control), "status", "--json"]).await;
    assert!(status.status.success());
    serde_json::from_slice(&status.stdout).unwrap()
}

#[tokio::test]
async fn up_serves_the_preset_and_answers_status_wait_and_disable() {
    let preset = preset().await;
    let (config, control) = (preset.config.clone(), preset.control.clone());
    let cluster = &preset.cluster;
    let mut up = up(&config, &control).await;
    let snapshot = all_healthy(&control).await;
    assert_eq!(snapshot.forwards.len(), 5);
    for f in &snapshot.forwards {
        assert_eq!(f.health.state, State::Healthy, "{}", f.name);
        let route = f.route.as_ref().unwrap();
        let spec = support::OpenChoreo::spec(&f.service).unwrap();
        let node_port = cluster.node_port(spec.namespace, spec.name, 0).unwrap();
        let worker = cluster.node_ip(support::openchoreo::WORKER).unwrap();
        assert_eq!(route.target, format!("{worker}:{node_port}"), "{}", f.name);
    }
    assert_eq!(snapshot.context(), Some("kind-openchoreo-local"));
    assert_eq!(snapshot.kubectl_context.as_deref(), Some("kind-openchoreo-local"));

    let table = run(&["--control", path(&control), "status"]).await;
    let table = text(&table.stdout);
    assert!(table.contains("console") && table.contains("healthy"), "{table}");

    let mode = std::fs::metadata(&control).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );

    let disable = run(&["--control", path(&control), "disable", "console"]).await;
    assert!(disable.status.success(), "{}", text(&disable.stderr));
    let status = run(&["--control", path(&control), "status", "--json"]).await;
    let snapshot: Snapshot = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(snapshot.forward("console").unwrap().health.state, State::Disabled);
    let unknown = run(&["--control", path(&control), "enable", "nope"]).await;
    assert!(!unknown.status.success());
    assert!(text(&unknown.stderr).contains("no forward named `nope`"));

    // A second engine on the same socket is refused.
    let second = run(&["--config", path(&config), "--control", path(&control), "up"]).await;
    assert!(!second.status.success());
    assert!(
        text(&second.stderr).contains("already running"),
        "{}",
        text(&second.stderr)
    );

    // SIGTERM: a clean stop, exit 0, socket removed.
    up.signal(libc::SIGTERM);
    let exit = up.exit_status().await;
    assert!(exit.success(), "{exit:?}");
    assert!(!control.exists());
}

#[tokio::test]
async fn wait_times_out_listing_the_causes() {
    let cluster = FakeCluster::openchoreo().await;
    cluster.delete_service("wso2-amp", "amp-console");
    let dir = tempfile::tempdir().unwrap();
    let config = preset_config(dir.path(), &cluster);
    let control = dir.path().join("control.sock");
    let _up = up(&config, &control).await;
    let wait = run(&["--control", path(&control), "wait", "--timeout", "5", "console"]).await;
    assert_eq!(wait.status.code(), Some(1));
    let stderr = text(&wait.stderr);
    assert!(
        stderr.contains("service-missing") && stderr.contains("wso2-amp/amp-console"),
        "{stderr}"
    );
}

#[tokio::test]
async fn status_without_an_engine_says_how_to_start_one() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(&["--control", path(&dir.path().join("none.sock")), "status"]).await;
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("porthole up"), "{}", text(&out.stderr));
}

#[tokio::test]
async fn doctor_passes_on_a_healthy_cluster_and_names_each_failure() {
    let cluster = FakeCluster::openchoreo().await;
    let dir = tempfile::tempdir().unwrap();
    let config = preset_config(dir.path(), &cluster);
    let ok = run(&["--config", path(&config), "doctor"]).await;
    assert!(ok.status.success(), "{}", text(&ok.stdout));

    cluster.apply_service(service("wso2-amp", "amp-api", "ClusterIP", vec![port("http", 8080)]));
    cluster.set_current_context("rancher-desktop");
    let failed = run(&["--config", path(&config), "doctor", "--json"]).await;
    assert_eq!(failed.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&failed.stdout).unwrap();
    let flagged = |key: &str, value: bool| -> Vec<(String, String)> {
        let checks = report["checks"].as_array().unwrap().iter();
        checks
            .filter(|c| c[key].as_bool().unwrap_or(false) == value)
            .map(|c| {
                (
                    c["check"].as_str().unwrap().to_string(),
                    c["cause"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let wrong_type = ("api: service".to_string(), "wrong-service-type".to_string());
    assert_eq!(flagged("ok", false), vec![wrong_type], "the only failure");
    let mismatch = ("kubectl context".to_string(), "context-mismatch".to_string());
    assert_eq!(
        flagged("warning", true),
        vec![mismatch],
        "a warning: Porthole uses its own context"
    );
}

#[tokio::test]
async fn doctor_checks_every_cluster_and_names_each_checks_cluster() {
    let (a, _backend_a) = support::porthole::echo_cluster("docta", "NodePort").await;
    let (b, _backend_b) = support::porthole::echo_cluster("doctb", "NodePort").await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("porthole.toml");
    let mut toml = String::new();
    for cluster in [&a, &b] {
        toml += &format!(
            "[[cluster]]\ncontext = \"{}\"\nkubeconfig = \"{}\"\nmode = \"nodeport\"\n\n",
            cluster.context(),
            cluster.kubeconfig().display()
        );
    }
    for (name, cluster) in [("a-echo", &a), ("b-echo", &b)] {
        toml += &format!(
            "[[forward]]\nname = \"{name}\"\ncluster = \"{}\"\nnamespace = \"apps\"\nservice = \"echo\"\nlocal_port = 0\n",
            cluster.context()
        );
    }
    std::fs::write(&config, toml).unwrap();
    let ok = run(&["--config", path(&config), "doctor"]).await;
    assert!(ok.status.success(), "{}", text(&ok.stdout));

    // B's API goes away and kubectl of B's kubeconfig points elsewhere: B's API fails, its
    // forward's port is still checked; kubectl's context is A's business only.
    b.set_api_reachable(false);
    b.set_current_context("rancher-desktop");
    let failed = run(&["--config", path(&config), "doctor", "--json"]).await;
    assert_eq!(failed.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&failed.stdout).unwrap();
    let checks: Vec<(String, bool)> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["check"].as_str().unwrap().to_string(), c["ok"].as_bool().unwrap()))
        .collect();
    let failures: Vec<&str> = checks.iter().filter(|(_, ok)| !ok).map(|(c, _)| c.as_str()).collect();
    assert_eq!(failures, ["kind-doctb: API server"], "{checks:#?}");
    let names: Vec<&str> = checks.iter().map(|(c, _)| c.as_str()).collect();
    assert!(names.contains(&"kind-docta: kubectl context"), "{names:?}");
    assert!(!names.contains(&"kind-doctb: kubectl context"), "{names:?}");
    assert!(names.contains(&"kind-docta: a-echo: node"), "{names:?}");
    assert!(names.contains(&"kind-doctb: b-echo: local port"), "{names:?}");
}

#[tokio::test]
async fn bad_config_names_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        "[[forward]]\nname = \"a\"\nnamespace = \"n\"\nservice = \"s\"\nlocal_port = 99999\n",
    )
    .unwrap();
    let out = run(&["--config", path(&config), "doctor"]).await;
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:5: `local_port`", config.display())),
        "{stderr}"
    );
}

#[tokio::test]
async fn init_writes_a_preset_and_never_overwrites_by_accident() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sub/config.toml");
    let out = run(&["init", "--preset", "openchoreo-data-prepper", path(&file)]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let written = std::fs::read_to_string(&file).unwrap();
    assert_eq!(
        written,
        porthole::config::preset_text("openchoreo-data-prepper").unwrap()
    );
    std::fs::write(&file, "# mine\n").unwrap();
    let again = run(&["init", path(&file)]).await;
    assert!(!again.status.success());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "# mine\n", "untouched");
    // --force replaces it, keeping the user's file as a backup in Porthole's state directory.
    let state = dir.path().join("state");
    let forced = porthole(&["init", "--force", path(&file)])
        .env("HOME", dir.path())
        .env("XDG_STATE_HOME", &state)
        .output()
        .await
        .unwrap();
    assert!(forced.status.success(), "{}", text(&forced.stderr));
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        porthole::config::preset_text("openchoreo").unwrap()
    );
    let backups =
        porthole::write::Backups::at(state.join("porthole/backups")).of(&std::fs::canonicalize(&file).unwrap());
    assert_eq!(backups.len(), 1, "{backups:?}");
    assert_eq!(std::fs::read_to_string(&backups[0]).unwrap(), "# mine\n");
    assert!(text(&forced.stdout).contains(&backups[0].display().to_string()));
    let presets = run(&["presets"]).await;
    assert!(text(&presets.stdout).contains("openchoreo-data-prepper"));
}

#[tokio::test]
async fn edits_to_the_config_file_apply_live_sighup_reloads_and_sigint_stops_cleanly() {
    let preset = preset().await;
    let (config, control) = (preset.config.clone(), preset.control.clone());
    // The control socket named by the environment, as scripts would.
    let mut cmd = porthole(&["--config", path(&config), "up"]);
    cmd.env("PORTHOLE_CONTROL", &control);
    let mut up = up_with(cmd).await;
    // Every forward bound (and healthy) first, so the ports compared below are the real ones.
    let mut wait = porthole(&["wait", "--timeout", "30"]);
    wait.env("PORTHOLE_CONTROL", &control);
    let waited = wait.output().await.unwrap();
    assert!(waited.status.success(), "{}", text(&waited.stdout));
    let mut status = porthole(&["status", "--json"]);
    status.env("PORTHOLE_CONTROL", &control);
    let before: Snapshot = serde_json::from_slice(&status.output().await.unwrap().stdout).unwrap();
    assert_eq!(before.forwards.len(), 5);
    let disable = run(&["--control", path(&control), "disable", "api"]).await;
    assert!(disable.status.success(), "{}", text(&disable.stderr));

    // A broken edit is refused, once, and changes nothing.
    let original = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{original}\n[[forward]]\nname = \"console\"\n")).unwrap();
    up.logged("config not reloaded").await;
    // Dropping the gateway forward applies as it is saved, with no signal.
    let gateway = original.find("[[forward]]\nname = \"gateway\"").unwrap();
    let without_gateway = &original[..gateway];
    std::fs::write(&config, without_gateway).unwrap();
    let lines = up.logged("config reloaded").await;
    assert_eq!(
        lines.iter().filter(|l| l.contains("config not reloaded")).count(),
        0,
        "the broken file was told once: {lines:#?}"
    );
    let after: Snapshot = serde_json::from_slice(&status.output().await.unwrap().stdout).unwrap();
    let names: Vec<&str> = after.forwards.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, vec!["console", "api", "traces-observer", "otel-collector"]);
    assert_eq!(
        after.forward("console").unwrap().local,
        before.forward("console").unwrap().local
    );
    // One policy for on/off: `api`, turned off at run time, stays off while the file leaves
    // its entry alone, through an edit and through SIGHUP.
    assert_eq!(after.forward("api").unwrap().health.state, State::Disabled);
    up.signal(libc::SIGHUP);
    let lines = up.logged("config reloaded").await;
    assert!(
        lines.iter().any(|l| l.contains("SIGHUP: reloading the config file")),
        "{lines:#?}"
    );
    let reloaded: Snapshot = serde_json::from_slice(&status.output().await.unwrap().stdout).unwrap();
    assert_eq!(reloaded.forward("api").unwrap().health.state, State::Disabled);
    // The file changes `api` itself: the file wins.
    let api = without_gateway.find("name = \"api\"\n").unwrap();
    let mut changed = without_gateway.to_string();
    changed.insert_str(api, "probe = \"tcp\"\n");
    std::fs::write(&config, changed).unwrap();
    up.logged("config reloaded").await;
    let mut wait = porthole(&["wait", "--timeout", "30", "api"]);
    wait.env("PORTHOLE_CONTROL", &control);
    let waited = wait.output().await.unwrap();
    assert!(waited.status.success(), "api is on again: {}", text(&waited.stdout));

    up.signal(libc::SIGINT);
    let exit = up.exit_status().await;
    assert!(exit.success(), "{exit:?}");
    assert!(!control.exists());
}

#[tokio::test]
async fn a_config_named_by_the_environment_must_exist() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let out = porthole(&["doctor"])
        .env("PORTHOLE_CONFIG", &missing)
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains(&missing.display().to_string()),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test]
async fn up_and_wait_started_together_succeed_every_time() {
    let preset = preset().await;
    let (config, control) = (preset.config.clone(), preset.control.clone());
    for round in 0..20 {
        // `porthole up & porthole wait`: nothing between them, so `wait` usually starts before
        // the engine has bound its control socket.
        let mut up = porthole(&["--config", path(&config), "--control", path(&control), "up"])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let wait = run(&["--control", path(&control), "wait", "--timeout", "30"]).await;
        assert!(
            wait.status.success(),
            "round {round}: wait failed: {}",
            text(&wait.stderr)
        );
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(up.id().unwrap() as libc::pid_t, libc::SIGTERM) };
        let exit = tokio::time::timeout(WAIT, up.wait()).await.unwrap().unwrap();
        assert!(exit.success(), "round {round}: {exit:?}");
        assert!(!control.exists(), "round {round}: the socket is removed on exit");
    }
}

#[tokio::test]
async fn wait_without_an_engine_waits_its_timeout_and_says_for_what() {
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("none.sock");
    let out = run(&["--control", path(&control), "wait", "--timeout", "1"]).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("waited 1s for Porthole's engine") && stderr.contains(path(&control)),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_control_path_that_is_not_a_socket_is_refused_and_kept() {
    let cluster = FakeCluster::openchoreo().await;
    let dir = tempfile::tempdir().unwrap();
    let config = preset_config(dir.path(), &cluster);
    // `--control` where `--config` was meant: the file must survive.
    let notes = dir.path().join("notes.toml");
    std::fs::write(&notes, "# my notes\n").unwrap();
    let out = run(&["--config", path(&config), "--control", path(&notes), "up"]).await;
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!("{} is a file, not a control socket", notes.display())) && stderr.contains("--config"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&notes).unwrap(), "# my notes\n");
}

#[tokio::test]
async fn an_endless_line_on_the_control_socket_is_cut_off_and_the_engine_serves_on() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let preset = preset().await;
    let (config, control) = (preset.config.clone(), preset.control.clone());
    let _up = up(&config, &control).await;
    let mut greedy = tokio::net::UnixStream::connect(&control).await.unwrap();
    // 1 MiB with no newline, far past a request's bound: the engine hangs up instead of
    // buffering it all (the write may fail once it has).
    let _ = greedy.write_all(&vec![b'x'; 1 << 20]).await;
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(WAIT, greedy.read_to_end(&mut rest)).await;
    assert!(ended.is_ok(), "the engine closed the connection");
    let status = run(&["--control", path(&control), "status", "--json"]).await;
    assert!(status.status.success(), "{}", text(&status.stderr));
}

/// Sets the soft descriptor limit of process `pid` (the hard one is kept); returns the old one.
#[cfg(target_os = "linux")]
fn set_descriptor_limit(pid: u32, soft: libc::rlim_t) -> libc::rlim_t {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit on our own child, reading into a struct we own.
    let read = unsafe { libc::prlimit(pid as libc::pid_t, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) };
    assert_eq!(read, 0, "{}", std::io::Error::last_os_error());
    let new = libc::rlimit {
        rlim_cur: soft,
        rlim_max: old.rlim_max,
    };
    // SAFETY: as above, with a struct we own.
    let set = unsafe { libc::prlimit(pid as libc::pid_t, libc::RLIMIT_NOFILE, &new, std::ptr::null_mut()) };
    assert_eq!(set, 0, "{}", std::io::Error::last_os_error());
    old.rlim_cur
}

// Linux: `prlimit` on another process.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn running_out_of_descriptors_is_named_as_such_and_passes_when_they_are_back() {
    let preset = preset().await;
    let (config, control) = (preset.config.clone(), preset.control.clone());
    let mut up = up(&config, &control).await;
    let snapshot = all_healthy(&control).await;
    let console = snapshot.forward("console").unwrap().local.unwrap();

    // A soft limit below every descriptor the engine holds: nothing new can be opened, however
    // its sockets come and go. (A limit a few above its count leaves one descriptor flapping
    // between the accept loop and the probe, and the probe sometimes wins it.)
    let pid = up.child.id().unwrap();
    let before = set_descriptor_limit(pid, 3);
    // Clients keep arriving: the kernel completes their handshakes, Porthole cannot accept them.
    let mut waiting = Vec::new();
    for _ in 0..40 {
        waiting.push(tokio::net::TcpStream::connect(console).await.unwrap());
    }
    // A forward's state says it: its probe could not open a socket either.
    let mut log = up
        .logged_where("a forward down for want of descriptors", |line| {
            line.contains("cause=out-of-descriptors") && line.contains("state=down")
        })
        .await;
    let told = log.last().unwrap().clone();
    assert!(
        told.contains("out of file descriptors") && told.contains("the limit is 3"),
        "{told}"
    );

    // Descriptors back: the clients that waited are served, and the forwards recover by themselves.
    set_descriptor_limit(pid, before);
    let answer = support::porthole::http_get_on(&mut waiting.swap_remove(0)).await;
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "a client that waited out the shortage is answered: {answer}"
    );
    drop(waiting);
    let wait = run(&["--control", path(&control), "wait", "--timeout", "30"]).await;
    assert!(wait.status.success(), "wait: {}", text(&wait.stdout));
    up.signal(libc::SIGTERM);
    assert!(up.exit_status().await.success());
    while let Some(line) = up.log.recv().await {
        log.push(line);
    }
    let log = log.join("\n");
    assert!(
        !log.contains("node-unreachable"),
        "the nodes were never at fault:\n{log}"
    );
    let warnings = log.matches("accept failed").count();
    assert!(
        (1..=2).contains(&warnings),
        "accept failures are said, once per 10 s, not 10 times a second:\n{log}"
    );
}

#[tokio::test]
async fn a_control_socket_in_a_directory_others_can_write_is_not_trusted() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    let control = shared.join("control.sock");
    // Something answers there (it could be anyone's: the directory lets anyone swap it).
    let _listener = std::os::unix::net::UnixListener::bind(&control).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    for args in [&["status"][..], &["wait", "--timeout", "30"][..]] {
        let mut all = vec!["--control", path(&control)];
        all.extend_from_slice(args);
        let out = run(&all).await;
        assert!(!out.status.success(), "{args:?}");
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains("is not trusted") && stderr.contains("unsafe directory") && stderr.contains(path(&shared)),
            "{args:?}: {stderr}"
        );
    }

    // A symlink to a private directory is not a private directory: the engine refuses it too.
    let private = dir.path().join("private");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&private, &link).unwrap();
    let cluster = FakeCluster::openchoreo().await;
    let config = preset_config(dir.path(), &cluster);
    let up = run(&[
        "--config",
        path(&config),
        "--control",
        path(&link.join("control.sock")),
        "up",
    ])
    .await;
    assert!(!up.status.success());
    assert!(text(&up.stderr).contains("symbolic link"), "{}", text(&up.stderr));
}

/// `porthole ARGS` with its state (backups) in `dir`, never the user's.
async fn run_in(dir: &Path, args: &[&str]) -> Output {
    let mut cmd = porthole(args);
    cmd.env("HOME", dir).env("XDG_STATE_HOME", dir.join("state"));
    tokio::time::timeout(WAIT, cmd.output())
        .await
        .expect("porthole finished")
        .unwrap()
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn add_list_and_remove_edit_the_file_and_the_running_engine_follows() {
    let preset = preset().await;
    let (config, control) = (preset.config.clone(), preset.control.clone());
    let home = tempfile::tempdir().unwrap();
    std::fs::write(
        &config,
        format!("# my notes\n{}", std::fs::read_to_string(&config).unwrap()),
    )
    .unwrap();
    let mut up = up(&config, &control).await;
    all_healthy(&control).await;

    let port = free_port().to_string();
    let added = run_in(
        home.path(),
        &[
            "--config",
            path(&config),
            "add",
            "console2",
            "--namespace",
            "wso2-amp",
            "--service",
            "amp-console",
            "--local-port",
            &port,
        ],
    )
    .await;
    assert!(added.status.success(), "{}", text(&added.stderr));
    assert!(
        text(&added.stdout).contains("added console2"),
        "{}",
        text(&added.stdout)
    );
    let kept = std::fs::read_to_string(&config).unwrap();
    assert!(kept.starts_with("# my notes\n"), "comments kept:\n{kept}");
    // The running engine follows the file: the new forward serves.
    up.logged("config reloaded").await;
    let wait = run(&["--control", path(&control), "wait", "--timeout", "30", "console2"]).await;
    assert!(wait.status.success(), "{}", text(&wait.stdout));

    let listed = run(&["--config", path(&config), "list"]).await;
    let listed = text(&listed.stdout);
    let line = listed.lines().find(|l| l.starts_with("console2")).expect(&listed);
    assert!(
        line.contains(&format!(":{port}")) && line.contains("wso2-amp/amp-console") && line.ends_with("on"),
        "{listed}"
    );

    // Bad input is refused by name, and the file is left as it was.
    let twice = run_in(
        home.path(),
        &[
            "--config",
            path(&config),
            "add",
            "console2",
            "-n",
            "x",
            "--service",
            "y",
            "--local-port",
            "1",
        ],
    )
    .await;
    assert!(!twice.status.success());
    assert!(text(&twice.stderr).contains("console2"), "{}", text(&twice.stderr));
    let named = run_in(
        home.path(),
        &[
            "--config",
            path(&config),
            "add",
            "web",
            "-n",
            "x",
            "--service",
            "y",
            "--port",
            "http",
        ],
    )
    .await;
    assert!(text(&named.stderr).contains("--local-port"), "{}", text(&named.stderr));
    let nope = run_in(home.path(), &["--config", path(&config), "remove", "nope"]).await;
    assert!(!nope.status.success());
    assert!(text(&nope.stderr).contains("nope"), "{}", text(&nope.stderr));
    assert!(std::fs::read_to_string(&config).unwrap() == kept);

    let removed = run_in(home.path(), &["--config", path(&config), "remove", "console2"]).await;
    assert!(removed.status.success(), "{}", text(&removed.stderr));
    up.logged("config reloaded").await;
    let status = run(&["--control", path(&control), "status", "--json"]).await;
    let snapshot: Snapshot = serde_json::from_slice(&status.stdout).unwrap();
    assert!(snapshot.forward("console2").is_none());
    assert!(std::fs::read_to_string(&config).unwrap().starts_with("# my notes\n"));
    // Every edit was backed up in the state directory given, none beside the file.
    let backups = porthole::write::Backups::at(home.path().join("state/porthole/backups"))
        .of(&std::fs::canonicalize(&config).unwrap());
    assert_eq!(backups.len(), 2, "{backups:?}");
}

#[tokio::test]
async fn status_watch_redraws_the_table_on_every_change() {
    let preset = preset().await;
    let (config, control) = (preset.config.clone(), preset.control.clone());
    let _up = up(&config, &control).await;
    all_healthy(&control).await;
    let mut watch = porthole(&["--control", path(&control), "status", "--watch"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    let mut next_api_line = async || loop {
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .expect("a table in time")
            .unwrap()
            .expect("still watching");
        if line.starts_with("api ") {
            return line;
        }
    };
    assert!(next_api_line().await.contains("healthy"));
    let disable = run(&["--control", path(&control), "disable", "api"]).await;
    assert!(disable.status.success());
    loop {
        if next_api_line().await.contains("disabled") {
            break;
        }
    }
    let pid = watch.id().unwrap() as libc::pid_t;
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let exit = tokio::time::timeout(WAIT, watch.wait()).await.unwrap().unwrap();
    assert!(exit.success(), "Ctrl-C ends the watch cleanly: {exit:?}");
}

#[tokio::test]
async fn init_writes_an_empty_config_for_a_context_and_the_cli_explains_itself() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    let out = run(&["init", "--empty", "--context", "k3d-dev", path(&file)]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let written = porthole::Config::load(&file).unwrap();
    assert_eq!(written.kubectl_cluster().context.as_deref(), Some("k3d-dev"));
    assert!(written.forwards.is_empty());
    let listed = porthole(&["list"])
        .env("PORTHOLE_CONFIG", &file)
        .output()
        .await
        .unwrap();
    assert!(
        text(&listed.stdout).contains("(no forwards"),
        "{}",
        text(&listed.stdout)
    );
    // An empty variable is no variable (the shell's `PORTHOLE_CONFIG= porthole …`).
    let unset = porthole(&["--config", path(&file), "list"])
        .env("PORTHOLE_CONFIG", "")
        .env("PORTHOLE_CONTROL", "")
        .output()
        .await
        .unwrap();
    assert!(unset.status.success(), "{}", text(&unset.stderr));

    // Help for every flag, the presets by name, examples after --help.
    let help = text(&run(&["--help"]).await.stdout);
    assert!(
        help.contains("Examples:") && help.contains("porthole wait --timeout"),
        "{help}"
    );
    for (command, wanted) in [
        ("status", "Print the snapshot as JSON"),
        ("wait", "Forwards to wait for, by name"),
        ("disable", "The forward's name"),
        ("init", "openchoreo-data-prepper"),
        ("add", "The service port, by number or name"),
    ] {
        let out = text(&run(&[command, "--help"]).await.stdout);
        assert!(out.contains(wanted), "{command} --help lacks {wanted:?}:\n{out}");
    }
    let bad = run(&["init", "--preset", "nope", path(&dir.path().join("x.toml"))]).await;
    assert!(
        text(&bad.stderr).contains("openchoreo"),
        "the presets are offered: {}",
        text(&bad.stderr)
    );

    // Completions for three shells and a manual page.
    for (shell, mark) in [
        ("bash", "_porthole()"),
        ("zsh", "#compdef porthole"),
        ("fish", "complete -c porthole"),
    ] {
        let out = run(&["completions", shell]).await;
        assert!(out.status.success());
        let script = text(&out.stdout);
        assert!(
            script.contains(mark) && script.contains("fix-kubeconfig"),
            "{shell}: {script}"
        );
    }
    let man = text(&run(&["man"]).await.stdout);
    assert!(man.starts_with(".ie") || man.contains(".TH porthole"), "{man}");
}

#[tokio::test]
async fn a_first_run_starts_the_preset_only_for_its_cluster_and_empty_otherwise() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kubeconfig");
    let home = tempfile::tempdir().unwrap();
    let first_run = |kubeconfig: &str, args: &[&str]| {
        let mut cmd = porthole(args);
        cmd.env("HOME", home.path())
            .env("XDG_CONFIG_HOME", home.path().join("config"))
            .env("XDG_STATE_HOME", home.path().join("state"))
            .env("KUBECONFIG", fixtures.join(kubeconfig));
        cmd
    };
    // Someone else's cluster (Rancher Desktop): no forwards, nothing to be down.
    let other = first_run("only-rancher.yaml", &["list"]).output().await.unwrap();
    let listed = text(&other.stdout);
    assert!(
        listed.contains("no config file yet") && listed.contains("(no forwards"),
        "{listed}"
    );
    // The quick-start's kind cluster: its preset, as before.
    let quick_start = first_run("kind.yaml", &["list"]).output().await.unwrap();
    let listed = text(&quick_start.stdout);
    assert!(
        listed.contains("openchoreo preset") && listed.contains("console"),
        "{listed}"
    );
    // The first `add` on the other cluster writes a config with that forward alone.
    let added = first_run(
        "only-rancher.yaml",
        &["add", "web", "-n", "demo", "--service", "web", "--local-port", "8080"],
    )
    .output()
    .await
    .unwrap();
    assert!(added.status.success(), "{}", text(&added.stderr));
    let written = porthole::Config::load(&home.path().join("config/porthole/config.toml")).unwrap();
    let names: Vec<&str> = written.forwards.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["web"]);
}

#[tokio::test]
async fn demo_serves_the_presets_five_ports_healthy_with_no_cluster_and_breaks_and_heals_on_command() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let home = tempfile::tempdir().unwrap();
    let control = home.path().join("control.sock");
    let names = ["console", "api", "traces-observer", "otel-collector", "gateway"];
    let ports: Vec<String> = names.iter().map(|name| format!("{name}=0")).collect();
    let mut args = vec!["--control", path(&control), "demo"];
    for port in &ports {
        args.extend(["--port", port]);
    }
    let mut cmd = porthole(&args);
    // No cluster and no kubeconfig anywhere: the demo needs neither.
    cmd.env("HOME", home.path())
        .env("KUBECONFIG", home.path().join("no-kubeconfig"))
        .env("XDG_CONFIG_HOME", home.path().join("config"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut demo = up_with(cmd).await;
    let mut console = demo.child.stdin.take().unwrap();

    let snapshot = all_healthy(&control).await;
    let forwards: Vec<&str> = snapshot.forwards.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(forwards, names);
    let console_addr = snapshot.forwards[0].local.unwrap();
    for f in &snapshot.forwards[..3] {
        let body = support::porthole::http_get(f.local.unwrap()).await;
        assert_eq!(body, f.service, "{} answers as its service", f.name);
    }

    // Stop the console's pod: the forward goes down naming the cause, and comes back.
    console.write_all(b"stop amp-console\n").await.unwrap();
    let lines = demo
        .logged_where("console down", |l| {
            l.contains("forward=console") && l.contains("cause=no-ready-endpoints")
        })
        .await;
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("state=down") && !l.contains("forward=console")),
        "only the console went down: {lines:#?}"
    );
    console.write_all(b"start amp-console\n").await.unwrap();
    let snapshot = all_healthy(&control).await;
    assert_eq!(
        snapshot.forwards[0].local,
        Some(console_addr),
        "same local port throughout"
    );
    assert_eq!(support::porthole::http_get(console_addr).await, "amp-console");

    console.write_all(b"no such command\nquit\n").await.unwrap();
    assert!(demo.exit_status().await.success());
    assert!(!control.exists(), "the control socket is removed");
    let mut out = String::new();
    demo.child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .await
        .unwrap();
    assert!(out.contains("demo cluster openchoreo-local"), "{out}");
    assert!(out.contains("console (wso2-amp/amp-console)"), "{out}");
    assert!(out.contains("error: unknown command \"no such command\""), "{out}");
    assert!(
        !home.path().join("config").exists(),
        "the demo writes no config of the user's"
    );
}

#[tokio::test]
async fn demo_refuses_a_port_for_a_forward_it_does_not_have() {
    let out = run(&["demo", "--port", "consol=3001"]).await;
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("no forward \"consol\"") && err.contains("console, api"),
        "{err}"
    );
}

fn import_fixture(name: &str) -> String {
    format!("{}/tests/fixtures/import/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// The `[[forward]]` names in a config text.
fn forward_names(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("name = \""))
        .map(|l| l.split('"').next().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn import_shows_then_adds_a_scripts_forwards_keeping_the_file_byte_for_byte() {
    let home = tempfile::tempdir().unwrap();
    let config = home.path().join("porthole.toml");
    let original = "# my forwards, do not lose this\n[cluster]\ncontext = \"kind-dev\"   # the dev cluster\n\n[[forward]]\nname = \"web\"  # the shop\nnamespace = \"shop\"\nservice = \"web\"\nlocal_port = 8080\n";
    std::fs::write(&config, original).unwrap();
    let script = import_fixture("kubectl.sh");

    let dry = run_in(
        home.path(),
        &["--config", path(&config), "import", "--dry-run", &script],
    )
    .await;
    assert!(dry.status.success(), "{}", text(&dry.stderr));
    let shown = text(&dry.stdout);
    for expected in [
        "6 forwards to add",
        "api-9000",
        "shop/api:metrics",
        "0.0.0.0 (reachable from other machines)",
        "line 2: local port 8080 is `web`'s already",
        "shop/pod/debug-0:5005",
        "line 7: deploy/worker: which pods are its own, only the cluster can tell, and",
        "line 11: context `kind-other` is in no kubeconfig file",
        "not forwards: line 13",
        "(--dry-run: nothing written)",
    ] {
        assert!(shown.contains(expected), "{expected:?} in:\n{shown}");
    }
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        original,
        "a dry run writes nothing"
    );

    let done = run_in(home.path(), &["--config", path(&config), "import", &script]).await;
    assert!(done.status.success(), "{}", text(&done.stderr));
    assert!(
        text(&done.stdout).contains("added 6 forwards"),
        "{}",
        text(&done.stdout)
    );
    let after = std::fs::read_to_string(&config).unwrap();
    assert!(after.starts_with(original), "the file is kept byte for byte:\n{after}");
    assert_eq!(
        forward_names(&after[original.len()..]),
        ["api-9000", "api-9001", "postgres", "redis", "grafana", "debug-0"]
    );
    porthole::Config::load(&config).unwrap();

    // Again: everything is there already, and nothing is written.
    let again = run_in(home.path(), &["--config", path(&config), "import", &script]).await;
    assert!(again.status.success());
    assert!(
        text(&again.stdout).contains("nothing to add"),
        "{}",
        text(&again.stdout)
    );
    assert!(text(&again.stdout).contains("already in the config as `api-9000`"));
    assert_eq!(std::fs::read_to_string(&config).unwrap(), after);
}

#[tokio::test]
async fn import_into_no_config_creates_it_from_the_quick_start_script_and_reads_stdin() {
    let home = tempfile::tempdir().unwrap();
    let config = home.path().join("config/porthole/config.toml");
    let run = |args: Vec<String>| {
        let mut cmd = porthole(&args.iter().map(String::as_str).collect::<Vec<_>>());
        cmd.env("HOME", home.path())
            .env("XDG_STATE_HOME", home.path().join("state"))
            .env("XDG_CONFIG_HOME", home.path().join("config"))
            .env("KUBECONFIG", home.path().join("no-kubeconfig"));
        cmd
    };
    let out = tokio::time::timeout(
        WAIT,
        run(vec!["import".into(), import_fixture("port-forward.sh")]).output(),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    let written = std::fs::read_to_string(&config).unwrap();
    assert!(written.starts_with(porthole::config::EMPTY), "{written}");
    assert_eq!(
        forward_names(&written),
        [
            "amp-console",
            "amp-api",
            "amp-traces-observer",
            "opentelemetry-collector",
            "gateway-external"
        ]
    );
    assert!(written.contains("service_port = \"otlp-http\""), "{written}");
    assert!(
        !written.contains("0.0.0.0"),
        "socat's container bind is not carried over"
    );

    // From standard input, `-`.
    let mut cmd = run(vec!["import".into(), "-".into()]);
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    use tokio::io::AsyncWriteExt;
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(b"kubectl port-forward -n tools svc/docs 4000:80 &\n")
        .await
        .unwrap();
    drop(stdin);
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains("standard input: 1 forwards to add"),
        "{}",
        text(&out.stdout)
    );
    let now = std::fs::read_to_string(&config).unwrap();
    assert!(now.starts_with(&written));
    assert_eq!(forward_names(&now[written.len()..]), ["docs"]);
}

#[tokio::test]
async fn import_asks_the_cluster_whose_service_a_literal_node_port_is() {
    let preset = preset().await;
    let cluster = &preset.cluster;
    let api = cluster.node_port("wso2-amp", "amp-api", 0).unwrap();
    let home = tempfile::tempdir().unwrap();
    let script = home.path().join("forward.sh");
    std::fs::write(
        &script,
        format!(
            "socat TCP-LISTEN:18080,fork,reuseaddr TCP:openchoreo-local-worker:{api} &\n\
             NP=$(kubectl get svc opentelemetry-collector -n openchoreo-observability-plane -o jsonpath='{{.spec.ports[1].nodePort}}')\n\
             socat TCP-LISTEN:14317,fork TCP:openchoreo-local-worker:$NP &\n\
             socat TCP-LISTEN:18081,fork TCP:openchoreo-local-worker:1 &\n\
             kubectl port-forward -n wso2-amp deploy/amp-worker 17000:7000 &\n"
        ),
    )
    .unwrap();
    // A Deployment, asked for the labels of its pods.
    cluster.apply_deployment("wso2-amp", "amp-worker", &[("app", "amp-worker")]);
    let out = run_in(
        home.path(),
        &["--config", path(&preset.config), "import", "--dry-run", path(&script)],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(shown.contains("wso2-amp/amp-api:http"), "{shown}");
    assert!(
        shown.contains("openchoreo-observability-plane/opentelemetry-collector:otlp-grpc"),
        "{shown}"
    );
    assert!(
        shown.contains("line 4: nodePort 1: no service of the cluster has it"),
        "{shown}"
    );
    assert!(
        shown
            .lines()
            .any(|l| l.contains(":17000") && l.contains("wso2-amp/pods -l app=amp-worker:7000")),
        "{shown}"
    );
}
