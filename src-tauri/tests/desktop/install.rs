//! The package as a user gets it: `scripts/bundle`'s `.deb` installed with apt, the installed
//! app and CLI run from /usr/bin against the fake cluster, then the package removed. It changes
//! the machine, so it runs only when asked: `.ci/run` does, as root, with `PORTHOLE_DEB` set.

use std::path::Path;
use std::process::Command;

use support::FakeCluster;

use super::app::{self, Home, WAIT, poll_until};
use super::bus::Bus;
use super::sni::GREEN;
use super::webdriver;

const APP: &str = "/usr/bin/porthole-app";
const CLI: &str = "/usr/bin/porthole";
const FILES: [&str; 9] = [
    APP,
    CLI,
    "/usr/share/applications/porthole.desktop",
    "/usr/share/icons/hicolor/128x128/apps/porthole.png",
    "/usr/share/man/man1/porthole.1.gz",
    "/usr/share/bash-completion/completions/porthole",
    "/usr/share/zsh/vendor-completions/_porthole",
    "/usr/share/fish/vendor_completions.d/porthole.fish",
    "/usr/share/doc/porthole/copyright",
];

fn installed() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f", "${Status}", "porthole"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout) == "install ok installed")
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{program} {args:?}: {text}");
    text
}

/// Processes running an executable of the package (`/usr/bin/porthole*`, deleted or not).
fn package_processes() -> Vec<(u32, String)> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
            let exe = exe.to_string_lossy().into_owned();
            exe.starts_with("/usr/bin/porthole").then_some((pid, exe))
        })
        .collect()
}

/// Purges the package if the test ends early, so a failure leaves the machine as it was.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        if installed() {
            let _ = Command::new("dpkg").args(["--purge", "porthole"]).status();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "installs a package: `scripts/bundle --debug`, then as root PORTHOLE_DEB=<the .deb> cargo test -p porthole-app --test desktop -- --ignored install"]
async fn the_deb_installs_runs_from_usr_bin_registers_at_login_and_removes_cleanly() {
    let deb = std::env::var("PORTHOLE_DEB").expect("PORTHOLE_DEB names the .deb `scripts/bundle` made");
    let deb = std::fs::canonicalize(&deb).unwrap_or_else(|e| panic!("{deb}: {e}"));
    // SAFETY: a plain getter.
    assert_eq!(unsafe { libc::geteuid() }, 0, "installing a package needs root");
    assert!(!installed(), "porthole is installed already: remove it first");
    assert!(package_processes().is_empty(), "{:?}", package_processes());

    // apt resolves the package's dependencies as a user's install does.
    let _purge = Purge;
    run(
        "apt-get",
        &["install", "-y", "--no-install-recommends", &deb.display().to_string()],
    );
    assert!(installed());
    for file in FILES {
        assert!(Path::new(file).is_file(), "{file} is missing");
    }
    let desktop = std::fs::read_to_string("/usr/share/applications/porthole.desktop").unwrap();
    assert!(
        desktop.contains("Exec=porthole-app") && desktop.contains("Icon=porthole"),
        "{desktop}"
    );
    assert!(run(CLI, &["--version"]).starts_with("porthole "));
    assert!(run(CLI, &["completions", "bash"]).contains("porthole"));

    // The installed app, as the user starts it, against a cluster.
    let cluster = FakeCluster::openchoreo().await;
    let home = Home::new();
    app::write_preset(&home.config(), &cluster, &["console", "api"], false);
    let bus = Bus::start(&home.path("run")).await;
    let driver = webdriver::Driver::start_app(APP, &home, &bus, &["--settings"]).await;
    let tray = app::registered(&home, &bus).await;
    tray.wait_until("both forwards healthy and a green icon", WAIT, || async {
        let items = tray.menu_items().await;
        let healthy = items.iter().filter(|i| i.label.ends_with("→ healthy")).count();
        healthy == 2 && tray.icon_colour().await == Some(GREEN)
    })
    .await;
    // Start at login registers the installed app (a build under target/ is refused).
    webdriver::autostart_scenario(&driver, &home).await;
    let control = home.control().display().to_string();
    let status = run(CLI, &["--control", &control, "status"]);
    assert!(
        status.lines().filter(|l| l.contains("healthy")).count() == 2,
        "{status}"
    );

    // Removed while the app runs: it is asked to quit, drains, and removes its socket.
    let running = package_processes();
    assert!(running.iter().any(|(_, exe)| exe == APP), "{running:?}");
    run("apt-get", &["remove", "-y", "porthole"]);
    assert!(!installed());
    for file in FILES {
        assert!(!Path::new(file).exists(), "{file} is left behind");
    }
    poll_until("every process of the package to end", || async {
        package_processes().is_empty()
    })
    .await;
    assert!(
        !home.control().exists(),
        "the app quit cleanly: its control socket is gone"
    );
    let log = std::fs::read_to_string(home.path("state/porthole/porthole.log")).unwrap_or_default();
    assert!(log.contains("quitting on a signal"), "{log}");
    drop(driver);
}
