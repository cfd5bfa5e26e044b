//! The menu-bar app end to end, as a user's desktop sees it: the real app process against the
//! fake cluster, its tray item and menu read and clicked over a private D-Bus session bus, its
//! notifications recorded by a notification server on that bus, and its settings window driven
//! through WebDriver (`tauri-driver` + `WebKitWebDriver`). Each test has its own Xvfb display
//! and bus, so tests run in parallel without seeing each other's windows or tray items.

mod app;
mod bus;
mod install;
mod sni;
mod webdriver;

use std::net::SocketAddr;
use std::path::Path;

use porthole::Snapshot;
use porthole::cause::State;
use porthole::control::Client;

use app::{App, Home, WAIT, listening, poll_until};
use bus::{Bus, Notification};
use sni::{BLUE, GREEN, GREY, Item, RED};
use support::FakeCluster;
use support::openchoreo::OpenChoreo;

fn forwards(items: &[Item]) -> Vec<&Item> {
    items.iter().filter(|i| i.toggle.is_some()).collect()
}

fn item<'a>(items: &'a [Item], name: &str) -> Option<&'a Item> {
    forwards(items)
        .into_iter()
        .find(|i| i.label.split_whitespace().nth(1) == Some(name))
}

/// The local address a forward's menu line names (`● console  :3000 → healthy`).
fn local_addr(items: &[Item], name: &str) -> SocketAddr {
    let label = &item(items, name).unwrap().label;
    let port = label.split(':').nth(1).unwrap().split_whitespace().next().unwrap();
    SocketAddr::from(([127, 0, 0, 1], port.parse().unwrap()))
}

/// Waits until the engine behind the control socket reports `done` (pushed snapshots).
async fn wait_engine(control: &Path, what: &str, done: impl Fn(&Snapshot) -> bool) -> Snapshot {
    let mut client = Client::connect(control).await.expect("control socket");
    client.watch().await.unwrap();
    let waited = tokio::time::timeout(WAIT, async {
        loop {
            let snapshot = client.next_snapshot().await.unwrap();
            if done(&snapshot) {
                return snapshot;
            }
        }
    })
    .await;
    waited.unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Waits until a notification matching `matches` has been recorded.
async fn wait_notification(bus: &Bus, what: &str, matches: impl Fn(&Notification) -> bool) -> Notification {
    let mut seen = bus.seen();
    let found = tokio::time::timeout(WAIT, seen.wait_for(|s| s.notifications.iter().any(&matches))).await;
    match found {
        Ok(Ok(s)) => s.notifications.iter().find(|n| matches(n)).unwrap().clone(),
        _ => panic!("no notification {what}; got {:#?}", bus.notifications()),
    }
}

async fn all_healthy(app: &App, count: usize) {
    app.tray
        .wait_until("every forward healthy and a green icon", WAIT, || async {
            let items = app.tray.menu_items().await;
            let f = forwards(&items);
            f.len() == count
                && f.iter()
                    .all(|i| i.label.ends_with("→ healthy") && i.toggle == Some(true))
                && app.tray.icon_colour().await == Some(GREEN)
        })
        .await;
}

struct Desktop {
    cluster: OpenChoreo,
    home: Home,
    bus: Bus,
}

impl Desktop {
    async fn start(keep: &[&str]) -> Desktop {
        Desktop::start_with_ports(keep, false).await
    }

    async fn start_with_ports(keep: &[&str], fixed: bool) -> Desktop {
        let cluster = FakeCluster::openchoreo().await;
        let home = Home::new();
        app::write_preset(&home.config(), &cluster, keep, fixed);
        let bus = Bus::start(&home.path("run")).await;
        Desktop { cluster, home, bus }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tray_shows_health_notifies_a_breakage_once_and_the_recovery() {
    let mut d = Desktop::start(&[]).await;
    let app = App::start(&d.home, &d.bus, &[]).await;
    all_healthy(&app, 5).await;
    let items = app.tray.menu_items().await;
    let console = local_addr(&items, "console");
    for action in [
        "Start all",
        "Stop all",
        "Settings…",
        "Copy status",
        "Open logs",
        "Quit Porthole",
    ] {
        assert!(
            items.iter().any(|i| i.label == action && i.enabled),
            "{action} in {items:#?}"
        );
    }
    assert!(
        !items.iter().any(|i| i.label.starts_with("Fix kubeconfig")),
        "{items:#?}"
    );
    assert!(d.bus.notifications().is_empty(), "{:#?}", d.bus.notifications());

    // The console's pod goes away: its line says why, the icon turns red, one notification.
    let spec = OpenChoreo::spec("amp-console").unwrap();
    d.cluster
        .set_endpoint_ready(spec.namespace, &OpenChoreo::pod("amp-console"), false);
    d.cluster.backends["amp-console"].stop().await;
    app.tray
        .wait_until("console down with its cause, red icon", WAIT, || async {
            let items = app.tray.menu_items().await;
            let Some(pos) = items.iter().position(|i| i.label.starts_with("○ console")) else {
                return false;
            };
            let cause = &items[pos + 1];
            !cause.enabled && cause.label.contains("amp-console") && app.tray.icon_colour().await == Some(RED)
        })
        .await;
    let port = format!(":{}", console.port());
    let down = wait_notification(&d.bus, "about console", |n| n.summary.contains("console")).await;
    assert_eq!(down.summary, format!("console {port} is down"));
    assert!(down.body.contains("amp-console"), "{down:?}");
    assert_eq!(down.app_name, "Porthole");

    // Back: a recovery notification, the icon green again, and still one "down".
    let backend = d.cluster.backends.get_mut("amp-console").unwrap();
    backend.restart().await;
    let addr = backend.addr();
    d.cluster
        .set_endpoint_backend(spec.namespace, &OpenChoreo::pod("amp-console"), addr);
    d.cluster
        .set_endpoint_ready(spec.namespace, &OpenChoreo::pod("amp-console"), true);
    let back = wait_notification(&d.bus, "console back", |n| n.summary.ends_with("is back")).await;
    assert_eq!(back.summary, format!("console {port} is back"));
    all_healthy(&app, 5).await;
    let about_console: Vec<_> = d
        .bus
        .notifications()
        .into_iter()
        .filter(|n| n.summary.contains("console"))
        .collect();
    assert_eq!(about_console.len(), 2, "one down, one back: {about_console:#?}");

    // `porthole status` against the app's control socket.
    let out = tokio::process::Command::new(app::porthole_cli())
        .args(["status", "--json"])
        .env("PORTHOLE_CONTROL", d.home.control())
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let status: Snapshot = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status.forwards.len(), 5);
    assert!(
        status.forwards.iter().all(|f| f.health.state == State::Healthy),
        "{status:#?}"
    );
    assert_eq!(status.forward("console").unwrap().local, Some(console));
}

/// The states the app's log records for one forward, in order.
fn logged_states(log: &str, forward: &str) -> Vec<String> {
    let span = format!("forward{{forward={forward}}}");
    log.lines()
        .filter(|l| l.contains(&span))
        .filter_map(|l| l.split("state=").nth(1))
        .map(|rest| rest.split_whitespace().next().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forward_down_at_start_is_told_and_its_recovery_through_starting_too() {
    let d = Desktop::start(&["console", "api"]).await;
    // The console's service is not there when the app starts (a login item, before the
    // quick-start has finished installing): its first settled state is down.
    let spec = OpenChoreo::spec("amp-console").unwrap();
    d.cluster.delete_service(spec.namespace, spec.name);
    let app = App::start(&d.home, &d.bus, &[]).await;
    let down = wait_notification(&d.bus, "console down", |n| n.summary.contains("console")).await;
    assert!(
        down.summary.starts_with("console :") && down.summary.ends_with(" is down"),
        "{down:?}"
    );
    assert!(down.body.contains("wso2-amp/amp-console does not exist"), "{down:?}");

    // The service is installed: a new route, proven by a probe first (`starting`), then healthy.
    d.cluster.apply(spec);
    let back = wait_notification(&d.bus, "console back", |n| n.summary.ends_with("is back")).await;
    assert_eq!(back.summary, down.summary.replace(" is down", " is back"));
    app.tray
        .wait_until("console healthy in the menu", WAIT, || async {
            let items = app.tray.menu_items().await;
            item(&items, "console").is_some_and(|i| i.label.ends_with("→ healthy"))
        })
        .await;
    let mut states = logged_states(&d.home.log(), "console");
    // A new cause of the same state is logged too (service missing, then no ready endpoint
    // while the new pod's slice is not ready yet).
    states.dedup();
    let from_down = states.iter().position(|s| s == "down").expect("down logged");
    assert_eq!(
        states[from_down..],
        ["down", "starting", "healthy"],
        "the recovery passed through starting: {states:?}"
    );
    // One down, one back, and nothing about the forward that was healthy all along.
    let told: Vec<String> = d.bus.notifications().into_iter().map(|n| n.summary).collect();
    assert_eq!(told, [down.summary.clone(), back.summary.clone()], "{told:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_kubectl_context_is_fixed_from_the_menu_and_a_forward_is_turned_off() {
    let d = Desktop::start(&["console", "api"]).await;
    let app = App::start(&d.home, &d.bus, &[]).await;
    all_healthy(&app, 2).await;

    d.cluster.set_current_context("rancher-desktop");
    let fix_label = "Fix kubeconfig (current: rancher-desktop → kind-openchoreo-local)";
    app.tray
        .wait_until("the context-wrong icon and the Fix item", WAIT, || async {
            let items = app.tray.menu_items().await;
            items.iter().any(|i| i.label == fix_label) && app.tray.icon_colour().await == Some(BLUE)
        })
        .await;
    let wrong = wait_notification(&d.bus, "about the context", |n| n.summary.contains("kubectl")).await;
    assert!(wrong.body.contains("rancher-desktop"), "{wrong:?}");

    // While another writer holds kubectl's lock, the fix fails (after its bounded wait), says
    // why, and writes nothing.
    let kubeconfig_path = d.cluster.kubeconfig();
    let before = std::fs::read_to_string(&kubeconfig_path).unwrap();
    let lock = kubeconfig_path.with_file_name(format!(
        "{}.lock",
        kubeconfig_path.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&lock, "").unwrap();
    app.tray.click("Fix kubeconfig").await;
    let failed = wait_notification(&d.bus, "the fix to fail", |n| {
        n.summary == "could not fix the kubeconfig"
    })
    .await;
    assert!(failed.body.contains("locked by another writer"), "{failed:?}");
    assert_eq!(std::fs::read_to_string(&kubeconfig_path).unwrap(), before);
    std::fs::remove_file(&lock).unwrap();

    app.tray.click("Fix kubeconfig").await;
    let fixed = wait_notification(&d.bus, "fix done", |n| n.summary == "kubeconfig fixed").await;
    // The backup is in Porthole's private state directory, and the notification says where.
    let backups = d.home.path("state/porthole/backups");
    let kept: Vec<_> = std::fs::read_dir(&backups)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(fixed.body.contains(&kept[0].display().to_string()), "{fixed:?}");
    let kubeconfig = std::fs::read_to_string(d.cluster.kubeconfig()).unwrap();
    assert!(
        kubeconfig.contains("current-context: kind-openchoreo-local"),
        "{kubeconfig}"
    );
    all_healthy(&app, 2).await;
    // The icon and the menu are two updates: wait for the menu's.
    app.tray
        .wait_until("the Fix item to go", WAIT, || async {
            !app.tray
                .menu_items()
                .await
                .iter()
                .any(|i| i.label.starts_with("Fix kubeconfig"))
        })
        .await;
    // The fix's own notification says it; no second "right again" for the same change.
    assert!(!d.bus.notifications().iter().any(|n| n.summary.contains("right again")));

    // Unchecking a forward closes its listener; the other keeps serving.
    let items = app.tray.menu_items().await;
    let (api, console) = (local_addr(&items, "api"), local_addr(&items, "console"));
    assert!(listening(api).await);
    app.tray.click("● api").await;
    app.tray
        .wait_until("api unchecked", WAIT, || async {
            let items = app.tray.menu_items().await;
            item(&items, "api").is_some_and(|i| i.toggle == Some(false) && i.label.ends_with("→ disabled"))
        })
        .await;
    wait_engine(&d.home.control(), "api disabled", |s| {
        s.forward("api").is_some_and(|f| f.health.state == State::Disabled)
    })
    .await;
    assert!(!listening(api).await, "api's listener is closed");
    assert!(listening(console).await, "console still listens");
    app.tray.click("Stop all").await;
    app.tray
        .wait_until("all paused: grey icon", WAIT, || async {
            app.tray.icon_colour().await == Some(GREY)
        })
        .await;
    app.tray.click("Start all").await;
    all_healthy(&app, 2).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn quit_from_the_menu_stops_the_app_and_removes_its_socket() {
    let d = Desktop::start(&["console"]).await;
    let mut app = App::start(&d.home, &d.bus, &[]).await;
    all_healthy(&app, 1).await;
    let console = local_addr(&app.tray.menu_items().await, "console");
    app.tray.click("Quit Porthole").await;
    exited_cleanly(&d, &mut app, console).await;
}

/// The app exits 0, its control socket removed and the forward at `console` closed.
async fn exited_cleanly(d: &Desktop, app: &mut App, console: SocketAddr) {
    let status = tokio::time::timeout(WAIT, app.child.wait())
        .await
        .expect("the app exits")
        .unwrap();
    assert!(status.success(), "{status}; log:\n{}", d.home.log());
    assert!(!d.home.control().exists(), "the control socket is removed");
    assert!(!listening(console).await);
}

/// The soft and hard "Max open files" of a running process.
fn open_files_limit(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    let numbers: Vec<u64> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    (numbers[0], numbers[1])
}

/// Exited children of `pid` nobody has waited for.
fn zombie_children(pid: u32) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            // pid (comm) state ppid ...: the command may hold spaces, so split after its ')'.
            let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
            let fields: Vec<&str> = after.split_whitespace().collect();
            fields.first() == Some(&"Z") && fields.get(1) == Some(&pid.to_string().as_str())
        })
        .count()
}

fn send_signal(app: &App, signal: i32) {
    let pid = app.child.id().expect("the app runs") as i32;
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_app_lifts_its_descriptor_limit_reaps_its_openers_reloads_on_sighup_and_quits_on_sigterm() {
    let d = Desktop::start(&["console", "api"]).await;
    // A file manager that notes what it was asked to open, and exits.
    let bin = d.home.path("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let opened = d.home.path("opened");
    let opener = bin.join("xdg-open");
    std::fs::write(&opener, format!("#!/bin/sh\necho \"$1\" >> '{}'\n", opened.display())).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&opener, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let mut app = App::start_limited(&d.home, &d.bus, &[("PATH", path)], 256).await;
    all_healthy(&app, 2).await;
    let (soft, hard) = open_files_limit(app.child.id().unwrap());
    assert_eq!(
        soft, hard,
        "started with 256, the app lifts its soft limit to the hard one"
    );

    // Turned off from the menu, then SIGHUP (the terminal it was started from closed): the app
    // lives on and reloads the file, which leaves `api` as it is, so `api` stays off (one
    // policy for runtime toggles, as in `porthole up`).
    app.tray.click("● api").await;
    wait_engine(&d.home.control(), "api disabled", |s| {
        s.forward("api").is_some_and(|f| f.health.state == State::Disabled)
    })
    .await;
    send_signal(&app, libc::SIGHUP);
    poll_until("the app reloaded its config", || async {
        let log = d.home.log();
        log.find("SIGHUP: reloading the config file")
            .is_some_and(|at| log[at..].contains("config applied"))
    })
    .await;
    assert!(app.child.try_wait().unwrap().is_none(), "SIGHUP does not kill the app");
    let status = porthole::control::Client::connect(&d.home.control())
        .await
        .unwrap()
        .status()
        .await
        .unwrap();
    assert_eq!(status.forward("api").unwrap().health.state, State::Disabled);

    // "Open logs" twice: the opener runs, and no exited opener is left as a zombie.
    app.tray.click("Open logs").await;
    app.tray.click("Open logs").await;
    poll_until("both openers ran", || async {
        std::fs::read_to_string(&opened).is_ok_and(|t| t.lines().count() == 2)
    })
    .await;
    assert!(
        std::fs::read_to_string(&opened)
            .unwrap()
            .contains(&d.home.path("state/porthole").display().to_string())
    );
    let pid = app.child.id().unwrap();
    poll_until("no zombie children", || async { zombie_children(pid) == 0 }).await;

    // SIGTERM (logout, `kill`): the same graceful exit as Quit.
    let console = local_addr(&app.tray.menu_items().await, "console");
    send_signal(&app, libc::SIGTERM);
    exited_cleanly(&d, &mut app, console).await;
    assert!(d.home.log().contains("quitting on a signal"));
}

/// Waits for the notification that the config file (broken by a `bogus = 1` line) is not
/// applied, naming the file, its line and the key.
async fn told_the_config_is_not_applied(bus: &Bus) {
    let told = wait_notification(bus, "about the broken config", |n| {
        n.summary == "config file not applied"
    })
    .await;
    assert!(
        told.body.contains("config.toml:") && told.body.contains("bogus"),
        "{told:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn started_with_a_broken_config_the_app_says_so_and_applies_the_file_once_fixed() {
    let d = Desktop::start(&["console"]).await;
    let good = std::fs::read_to_string(d.home.config()).unwrap();
    std::fs::write(
        d.home.config(),
        good.replace("local_port = 0", "local_port = 0\nbogus = 1"),
    )
    .unwrap();
    let app = App::start(&d.home, &d.bus, &[]).await;
    told_the_config_is_not_applied(&d.bus).await;
    app.tray
        .wait_until("the error atop the menu and a red icon", WAIT, || async {
            let items = app.tray.menu_items().await;
            items
                .first()
                .is_some_and(|i| i.label.starts_with("Config not applied:") && i.label.contains("bogus"))
                && app.tray.icon_colour().await == Some(RED)
        })
        .await;

    // Fixed by hand: applied, and the error goes.
    std::fs::write(d.home.config(), &good).unwrap();
    all_healthy(&app, 1).await;
    let items = app.tray.menu_items().await;
    assert!(
        !items.iter().any(|i| i.label.starts_with("Config not applied")),
        "{items:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hand_edit_of_the_config_applies_live_and_a_broken_one_is_refused_and_told() {
    let d = Desktop::start(&["console"]).await;
    let app = App::start(&d.home, &d.bus, &[]).await;
    all_healthy(&app, 1).await;
    let original = std::fs::read_to_string(d.home.config()).unwrap();
    let added = format!(
        "{original}\n[[forward]]\nname = \"api\"\nnamespace = \"wso2-amp\"\nservice = \"amp-api\"\nlocal_port = 0\n"
    );
    std::fs::write(d.home.config(), &added).unwrap();
    all_healthy(&app, 2).await;

    let broken = added.replace("service = \"amp-api\"", "service = \"amp-api\"\nbogus = 1");
    std::fs::write(d.home.config(), broken).unwrap();
    told_the_config_is_not_applied(&d.bus).await;
    // Still running the last good config.
    all_healthy(&app, 2).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_launch_hands_over_to_the_first_and_opens_its_settings() {
    let d = Desktop::start(&["console"]).await;
    let mut app = App::start(&d.home, &d.bus, &[]).await;
    all_healthy(&app, 1).await;
    assert!(!window_exists(&d.bus.display, "Porthole settings").await);
    assert!(app::window_processes(&d.home).is_empty());
    let launch = || async {
        let again = tokio::process::Command::new(app::APP)
            .envs(d.home.env(&d.bus))
            .stderr(std::process::Stdio::null())
            .status();
        let status = tokio::time::timeout(WAIT, again)
            .await
            .expect("the second launch exits")
            .unwrap();
        assert!(status.success(), "{status}");
    };
    launch().await;
    app::poll_until("the first app to open its settings window", || {
        window_exists(&d.bus.display, "Porthole settings")
    })
    .await;
    let items = d.bus.seen().borrow().items.clone();
    assert_eq!(items.len(), 1, "one tray item: {items:?}");
    assert!(listening(local_addr(&app.tray.menu_items().await, "console")).await);
    // The window is a process of its own; asking again brings it forward instead of a second one.
    let window = app::window_processes(&d.home);
    assert_eq!(window.len(), 1, "one settings window process: {window:?}");
    launch().await;
    app.tray.click("Settings…").await;
    let log = d.home.path("state/porthole/porthole.log");
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    app::poll_until("the app to handle the third launch and the menu click", || async {
        read_log().matches("settings window brought forward").count() == 2
    })
    .await;
    assert_eq!(read_log().matches("settings window opened").count(), 1);
    assert_eq!(app::window_processes(&d.home), window);

    // A window process that dies (a crash) is told, and "Settings…" starts a new one.
    // SAFETY: a signal to the test's own child's child; no memory is involved.
    unsafe { libc::kill(window[0] as i32, libc::SIGKILL) };
    let told = wait_notification(&d.bus, "the crash", |n| n.summary.contains("settings window")).await;
    assert_eq!(told.summary, "the settings window closed unexpectedly");
    assert!(
        told.body.contains("signal: 9") && told.body.contains("porthole.log"),
        "{told:?}"
    );
    app.tray.click("Settings…").await;
    app::poll_until("a new settings window", || async {
        let now = app::window_processes(&d.home);
        now.len() == 1 && now != window && window_exists(&d.bus.display, "Porthole settings").await
    })
    .await;

    // Quitting the app ends its window too.
    app.tray.click("Quit Porthole").await;
    let status = tokio::time::timeout(WAIT, app.child.wait())
        .await
        .expect("the app exits")
        .unwrap();
    assert!(status.success(), "{status}");
    app::poll_until("the settings window and its process to go with the app", || async {
        app::window_processes(&d.home).is_empty() && !window_exists(&d.bus.display, "Porthole settings").await
    })
    .await;
}

/// Whether the X server has a window with this title (`xwininfo`, from x11-utils).
async fn window_exists(display: &str, title: &str) -> bool {
    let out = tokio::process::Command::new("xwininfo")
        .args(["-display", display, "-root", "-tree"])
        .output()
        .await
        .expect("xwininfo (Debian package x11-utils)");
    String::from_utf8_lossy(&out.stdout).contains(&format!("\"{title}\""))
}

#[tokio::test(flavor = "multi_thread")]
async fn settings_window_saves_a_forward_the_context_and_a_mute_and_refuses_a_bad_value() {
    // With PORTHOLE_SCREENSHOTS=DIR it also takes the README's pictures, with the preset's ports.
    let screenshots = std::env::var_os("PORTHOLE_SCREENSHOTS");
    let mut d = Desktop::start_with_ports(&["console", "api"], screenshots.is_some()).await;
    let driver = webdriver::Driver::start(&d.home, &d.bus, &["--settings"]).await;
    // The page runs in the window's own process, not in the app's.
    assert_eq!(app::window_processes(&d.home).len(), 1);
    let gateway_port = if screenshots.is_some() { 8443 } else { app::free_port() };
    webdriver::add_forward_scenario(&driver, &d.home, gateway_port).await;
    let snapshot = wait_engine(&d.home.control(), "gateway healthy", |s| {
        s.forward("gateway").is_some_and(|f| f.health.state == State::Healthy)
    })
    .await;
    webdriver::autostart_scenario(&driver, &d.home).await;
    if let Some(dir) = screenshots {
        webdriver::screenshots(&driver, &d.bus, Path::new(&dir)).await;
    }
    let api = snapshot.forward("api").and_then(|f| f.local).unwrap();
    webdriver::remove_forward_scenario(&driver, &d.home, api).await;
    webdriver::context_scenario(&driver, &d.home).await;

    // Muted from the page: the console's breakage is not told, its recovery is.
    webdriver::mute_down_scenario(&driver, &d.home).await;
    let spec = OpenChoreo::spec("amp-console").unwrap();
    let pod = OpenChoreo::pod("amp-console");
    d.cluster.set_endpoint_ready(spec.namespace, &pod, false);
    d.cluster.backends["amp-console"].stop().await;
    // The app logs what it did not show.
    let log = d.home.path("state/porthole/porthole.log");
    app::poll_until("the muted notification about console", || async {
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        log.lines()
            .any(|l| l.contains("notification muted") && l.contains("console"))
    })
    .await;
    let backend = d.cluster.backends.get_mut("amp-console").unwrap();
    backend.restart().await;
    let addr = backend.addr();
    d.cluster.set_endpoint_backend(spec.namespace, &pod, addr);
    d.cluster.set_endpoint_ready(spec.namespace, &pod, true);
    wait_notification(&d.bus, "console back", |n| n.summary.ends_with("is back")).await;
    let told: Vec<_> = d.bus.notifications().into_iter().map(|n| n.summary).collect();
    assert!(!told.iter().any(|s| s.ends_with("is down")), "{told:?}");

    // Closing the window (Escape) leaves the app in the tray, still serving.
    assert!(window_exists(&d.bus.display, "Porthole settings").await);
    webdriver::press_escape(&driver).await;
    app::poll_until("the settings window and its process to go", || async {
        !window_exists(&d.bus.display, "Porthole settings").await && app::window_processes(&d.home).is_empty()
    })
    .await;
    let snapshot = wait_engine(&d.home.control(), "the engine after the window closed", |s| {
        s.forward("gateway").is_some_and(|f| f.health.state == State::Healthy)
    })
    .await;
    assert_eq!(snapshot.forwards.len(), 2, "{snapshot:#?}");

    // A window closed by the user ended cleanly: nothing to tell.
    let told: Vec<_> = d.bus.notifications().into_iter().map(|n| n.summary).collect();
    assert!(!told.iter().any(|s| s.contains("settings window")), "{told:?}");

    // "Settings…" after the window closed starts a new one.
    let tray = app::registered(&d.home, &d.bus).await;
    tray.click("Settings…").await;
    app::poll_until("a new settings window", || async {
        window_exists(&d.bus.display, "Porthole settings").await && app::window_processes(&d.home).len() == 1
    })
    .await;
    driver.quit().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_first_run_without_the_quick_start_is_neutral_and_opens_the_settings_once() {
    // A kubeconfig of several clusters, kind's `dev` current, none of them OpenChoreo's.
    let (cluster, _backend) = support::porthole::echo_cluster("dev", "NodePort").await;
    for other in ["minikube", "docker-desktop", "k3d-lab"] {
        cluster.set_current_context(other);
    }
    cluster.set_current_context(&cluster.context());
    let mut home = Home::new();
    home.named_config = false;
    std::fs::create_dir_all(home.path("home/.kube")).unwrap();
    std::fs::copy(cluster.kubeconfig(), home.path("home/.kube/config")).unwrap();
    let bus = Bus::start(&home.path("run")).await;

    // No config file: no forwards, the neutral icon, one way on, and the window by itself.
    let driver = webdriver::Driver::start(&home, &bus, &[]).await;
    let tray = app::registered(&home, &bus).await;
    tray.wait_until("the first-run menu", WAIT, || async {
        let items = tray.menu_items().await;
        items.first().is_some_and(|i| i.label == "No forwards yet — Settings…")
            && !items.iter().any(|i| i.label == "Start all")
    })
    .await;
    assert_eq!(tray.icon_colour().await, Some(GREY));
    assert!(window_exists(&bus.display, "Porthole settings").await);

    let port = app::free_port();
    webdriver::first_run_scenario(&driver, &home, port).await;
    tray.wait_until("echo healthy, in green", WAIT, || async {
        let items = tray.menu_items().await;
        items
            .first()
            .is_some_and(|i| i.label.contains("echo") && i.label.ends_with("healthy"))
            && tray.icon_colour().await == Some(GREEN)
    })
    .await;
    assert!(listening(([127, 0, 0, 1], port).into()).await);
    let told: Vec<_> = bus.notifications().into_iter().map(|n| n.summary).collect();
    assert!(told.is_empty(), "a first run raises no alarm: {told:?}");
    let prefs = std::fs::read_to_string(home.path("config/porthole/app.json")).unwrap();
    assert!(prefs.contains("\"welcomed\": true"), "{prefs}");
    drop(driver);

    // Every forward gone again (the file removed): neutral, but the window does not open again.
    // (A bus of its own: the first app's item stays registered on the old one.)
    std::fs::remove_file(home.config()).unwrap();
    std::fs::create_dir_all(home.path("bus2")).unwrap();
    let bus = Bus::start(&home.path("bus2")).await;
    let app = App::start(&home, &bus, &[]).await;
    app.tray
        .wait_until("the first-run menu again", WAIT, || async {
            let items = app.tray.menu_items().await;
            items.first().is_some_and(|i| i.label == "No forwards yet — Settings…")
        })
        .await;
    assert!(
        app::window_processes(&home).is_empty(),
        "the settings window opens once"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn forwards_imported_through_the_page_are_previewed_chosen_and_served_and_a_cluster_added_and_removed() {
    let d = Desktop::start(&["console", "api"]).await;
    // A second context in the kubeconfig (its server is dead), kubectl still on the first.
    d.cluster.cluster.set_current_context("k3d-lab");
    d.cluster.cluster.set_current_context(&d.cluster.cluster.context());
    let driver = webdriver::Driver::start(&d.home, &d.bus, &["--settings"]).await;
    let (port, other) = (app::free_port(), app::free_port());
    webdriver::import_scenario(&driver, &d.home, port, other).await;
    wait_engine(&d.home.control(), "the imported gateway healthy", |s| {
        s.forward("gateway-external")
            .is_some_and(|f| f.health.state == State::Healthy)
    })
    .await;
    webdriver::clusters_scenario(&driver, &d.home, "k3d-lab").await;
    let snapshot = wait_engine(&d.home.control(), "one cluster again", |s| s.clusters.len() == 1).await;
    assert!(
        snapshot.forwards.iter().all(|f| f.health.state == State::Healthy),
        "{snapshot:#?}"
    );
    driver.quit().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_window_process_refuses_to_run_without_its_app_or_with_another_protocol() {
    // Started by hand: no link on descriptor 3.
    let alone = tokio::process::Command::new(app::APP)
        .args(["--settings-window", "1"])
        .output()
        .await
        .unwrap();
    assert!(!alone.status.success());
    let said = String::from_utf8_lossy(&alone.stderr);
    assert!(said.contains("--settings-window is for porthole-app itself"), "{said}");

    // A link from an app that speaks another protocol (one updated while it ran).
    let (_ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&theirs);
    let mut newer = tokio::process::Command::new(app::APP);
    newer.args(["--settings-window", "999"]);
    // SAFETY: descriptor calls only, between fork and exec (dup2's copy is kept across exec).
    unsafe {
        newer.pre_exec(move || {
            let done = if fd == 3 {
                libc::fcntl(fd, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if done == -1 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(())
            }
        });
    }
    let newer = newer.output().await.unwrap();
    assert!(!newer.status.success());
    let said = String::from_utf8_lossy(&newer.stderr);
    assert!(said.contains("updated while it ran") && said.contains("999"), "{said}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hung_settings_window_costs_a_bounded_queue_and_catches_up() {
    let d = Desktop::start(&["console"]).await;
    let app = App::start(&d.home, &d.bus, &["--settings"]).await;
    all_healthy(&app, 1).await;
    app::poll_until("the settings window", || async {
        app::window_processes(&d.home).len() == 1 && window_exists(&d.bus.display, "Porthole settings").await
    })
    .await;
    let window = app::window_processes(&d.home)[0];
    let log = d.home.path("state/porthole/porthole.log");
    let logged = |what: &'static str| {
        let log = log.clone();
        move || {
            let log = log.clone();
            async move { std::fs::read_to_string(&log).is_ok_and(|l| l.contains(what)) }
        }
    };

    // The window stops reading; the engine keeps changing (each toggle is a snapshot and an
    // event for the window), far past what its queue and the socket hold.
    struct Resume(i32);
    impl Drop for Resume {
        fn drop(&mut self) {
            // SAFETY: a signal to the app's own child (stopped below); no memory is involved.
            unsafe { libc::kill(self.0, libc::SIGCONT) };
        }
    }
    // SAFETY: as above. Resumed when `resume` goes, even if the test fails first.
    unsafe { libc::kill(window as i32, libc::SIGSTOP) };
    let resume = Resume(window as i32);
    let mut control = Client::connect(&d.home.control()).await.unwrap();
    for _ in 0..300 {
        control.set_enabled("console", false).await.unwrap();
        control.set_enabled("console", true).await.unwrap();
    }
    app.tray.click("Settings…").await;
    app::poll_until(
        "the app to find the window's queue full",
        logged("the settings window does not answer"),
    )
    .await;
    all_healthy(&app, 1).await;

    // It wakes up, reads what was kept, and answers again.
    drop(resume);
    app::poll_until("the window to catch up", || async {
        app.tray.click("Settings…").await;
        logged("settings window brought forward")().await
    })
    .await;
    assert_eq!(app::window_processes(&d.home), vec![window]);
}
