//! A private desktop per test: its own X server (`Xvfb`) and D-Bus session bus (a real
//! `dbus-daemon`), with the two desktop services a
//! tray app needs on it: a StatusNotifierWatcher (without one, libayatana-appindicator silently
//! shows nothing) and a notification server that records every `Notify` call.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use zbus::object_server::SignalEmitter;
use zbus::zvariant::OwnedValue;
use zbus::{Connection, interface};

/// A bus with no service activation: nothing starts on it that the test did not start.
const CONFIG: &str = r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:dir=DIR</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#;

/// One recorded notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub app_name: String,
    pub summary: String,
    pub body: String,
}

/// What the desktop services saw.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// (bus name, object path) of each registered tray item.
    pub items: Vec<(String, String)>,
    pub notifications: Vec<Notification>,
}

pub struct Bus {
    pub address: String,
    /// This test's own X server (`Xvfb`), so windows of parallel tests never meet.
    pub display: String,
    _xvfb: Child,
    pub connection: Connection,
    seen: watch::Sender<Seen>,
    _daemon: Child,
}

struct Watcher {
    seen: watch::Sender<Seen>,
}

#[interface(name = "org.kde.StatusNotifierWatcher")]
impl Watcher {
    async fn register_status_notifier_item(
        &self,
        service: &str,
        #[zbus(header)] header: zbus::message::Header<'_>,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) {
        let sender = header.sender().map(|s| s.to_string()).unwrap_or_default();
        // Items register either a bus name (then the path is the default) or an object path.
        let (name, path) = if service.starts_with('/') {
            (sender, service.to_string())
        } else {
            (service.to_string(), "/StatusNotifierItem".to_string())
        };
        let _ = Self::status_notifier_item_registered(&emitter, &format!("{name}{path}")).await;
        // Registering again (items do, when their menu or window changes) changes nothing, as
        // with a real watcher.
        self.seen.send_if_modified(|s| {
            let item = (name, path);
            let new = !s.items.contains(&item);
            if new {
                s.items.push(item);
            }
            new
        });
    }

    fn register_status_notifier_host(&self, _service: &str) {}

    #[zbus(property)]
    fn registered_status_notifier_items(&self) -> Vec<String> {
        self.seen
            .borrow()
            .items
            .iter()
            .map(|(n, p)| format!("{n}{p}"))
            .collect()
    }

    #[zbus(property)]
    fn is_status_notifier_host_registered(&self) -> bool {
        true
    }

    #[zbus(property)]
    fn protocol_version(&self) -> i32 {
        0
    }

    #[zbus(signal)]
    async fn status_notifier_item_registered(emitter: &SignalEmitter<'_>, service: &str) -> zbus::Result<()>;

    #[zbus(signal)]
    async fn status_notifier_host_registered(emitter: &SignalEmitter<'_>) -> zbus::Result<()>;
}

struct Notifications {
    seen: watch::Sender<Seen>,
}

#[interface(name = "org.freedesktop.Notifications")]
impl Notifications {
    #[allow(clippy::too_many_arguments)]
    fn notify(
        &self,
        app_name: String,
        _replaces_id: u32,
        _app_icon: String,
        summary: String,
        body: String,
        _actions: Vec<String>,
        _hints: HashMap<String, OwnedValue>,
        _expire_timeout: i32,
    ) -> u32 {
        let mut id = 0;
        self.seen.send_modify(|s| {
            s.notifications.push(Notification {
                app_name,
                summary,
                body,
            });
            id = s.notifications.len() as u32;
        });
        id
    }

    fn get_capabilities(&self) -> Vec<String> {
        vec!["body".into()]
    }

    fn get_server_information(&self) -> (String, String, String, String) {
        ("porthole-tests".into(), "porthole".into(), "1".into(), "1.2".into())
    }

    fn close_notification(&self, _id: u32) {}
}

impl Bus {
    /// Starts `dbus-daemon` with its socket in `dir`, then the watcher and notification server.
    pub async fn start(dir: &Path) -> Bus {
        let config = dir.join("bus.conf");
        std::fs::write(&config, CONFIG.replace("DIR", &dir.display().to_string())).unwrap();
        let mut daemon = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config.display()))
            .args(["--nofork", "--print-address=1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("dbus-daemon (Debian package dbus-daemon)");
        let mut lines = BufReader::new(daemon.stdout.take().unwrap()).lines();
        let address = lines
            .next_line()
            .await
            .unwrap()
            .expect("dbus-daemon prints its address");
        let mut xvfb = Command::new("Xvfb")
            .args(["-displayfd", "1", "-screen", "0", "1280x900x24", "-nolisten", "tcp"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("Xvfb (Debian package xvfb)");
        let mut out = BufReader::new(xvfb.stdout.take().unwrap()).lines();
        let number = out.next_line().await.unwrap().expect("Xvfb prints its display number");
        let display = format!(":{}", number.trim());
        let (seen, _) = watch::channel(Seen::default());
        let connection = zbus::connection::Builder::address(address.as_str())
            .unwrap()
            .name("org.kde.StatusNotifierWatcher")
            .unwrap()
            .name("org.freedesktop.Notifications")
            .unwrap()
            .serve_at("/StatusNotifierWatcher", Watcher { seen: seen.clone() })
            .unwrap()
            .serve_at("/org/freedesktop/Notifications", Notifications { seen: seen.clone() })
            .unwrap()
            .build()
            .await
            .expect("connect to the test bus");
        Bus {
            address,
            display,
            _xvfb: xvfb,
            connection,
            seen,
            _daemon: daemon,
        }
    }

    pub fn seen(&self) -> watch::Receiver<Seen> {
        self.seen.subscribe()
    }

    /// Every notification so far.
    pub fn notifications(&self) -> Vec<Notification> {
        self.seen.borrow().notifications.clone()
    }
}
