//! The settings window through WebDriver: `tauri-driver` in front of Debian's `WebKitWebDriver`,
//! which starts the app itself (so the app's environment is tauri-driver's).

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use tokio::process::{Child, Command};

use super::app::{APP, Home, WAIT, free_port, listening, poll_until};
use super::bus::Bus;
use super::sni::TrayItem;

pub struct Driver {
    pub client: Client,
    /// The app it drives.
    pub app: String,
    _driver: Child,
}

impl Driver {
    pub async fn start(home: &Home, bus: &Bus, args: &[&str]) -> Driver {
        Driver::start_app(APP, home, bus, args).await
    }

    /// Drives `app` (an installed one, say) rather than the one this build made.
    pub async fn start_app(app: &str, home: &Home, bus: &Bus, args: &[&str]) -> Driver {
        // fantoccini's rustls and the fake cluster's must agree on one provider.
        porthole::install_tls_provider();
        let (port, native) = (free_port(), free_port());
        let log = std::fs::File::create(home.path("driver.log")).unwrap();
        let driver = Command::new("tauri-driver")
            .args(["--port", &port.to_string(), "--native-port", &native.to_string()])
            .envs(home.env(bus))
            .stdout(Stdio::null())
            .stderr(log)
            // Its own process group: WebKitWebDriver and the app go with it on drop.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .expect("tauri-driver (`cargo install tauri-driver --version '^2' --locked`)");
        // tauri-driver says nothing when it is ready: its port answering is the only sign.
        let addr = ([127, 0, 0, 1], port).into();
        let ready = tokio::time::timeout(WAIT, async {
            while !listening(addr).await {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        assert!(ready.is_ok(), "tauri-driver did not listen on {addr}");
        let capabilities = json!({
            "browserName": "wry",
            "tauri:options": { "application": app, "args": args },
        });
        let client = ClientBuilder::rustls()
            .expect("rustls connector")
            .capabilities(capabilities.as_object().unwrap().clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .unwrap_or_else(|e| panic!("WebDriver session: {e}; driver log:\n{}", home_log(home)));
        Driver {
            client,
            app: app.to_string(),
            _driver: driver,
        }
    }

    /// The element, scrolled to the middle of the window: WebKitGTK's driver scrolls an
    /// element below the fold into view but clicks where it was, so a click there misses.
    async fn find(&self, css: &str) -> Element {
        let element = self
            .client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"));
        let arg = serde_json::to_value(&element).unwrap();
        // An element gone meanwhile (a re-render) is the caller's to meet.
        let _ = self
            .client
            .execute("arguments[0].scrollIntoView({block: 'center'})", vec![arg])
            .await;
        element
    }

    async fn visible(&self, css: &str) -> Element {
        let element = self.find(css).await;
        let waited = tokio::time::timeout(WAIT, async {
            while !element.is_displayed().await.unwrap_or(false) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        assert!(waited.is_ok(), "{css} never became visible");
        element
    }

    async fn text_of(&self, css: &str) -> String {
        self.find(css).await.text().await.unwrap()
    }

    /// Waits for `css`'s text to satisfy `done` (the page updates from pushed events).
    async fn wait_text(&self, css: &str, done: impl Fn(&str) -> bool) -> String {
        let found = tokio::time::timeout(WAIT, async {
            loop {
                let text = self.text_of(css).await;
                if done(&text) {
                    return text;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        match found {
            Ok(text) => text,
            Err(_) => panic!(
                "{css} never showed the expected text; it shows:\n{}",
                self.text_of(css).await
            ),
        }
    }

    /// Waits until the page has loaded and nothing it started is in flight (`data-pending`,
    /// counted by the page around each command and the re-render after it).
    pub async fn settled(&self) {
        let body = self.find("body").await;
        poll_until("the page to settle", || async {
            let ready = body
                .attr("class")
                .await
                .ok()
                .flatten()
                .is_some_and(|c| c.contains("ready"));
            let pending = body.attr("data-pending").await.ok().flatten();
            ready && pending.as_deref() == Some("0")
        })
        .await;
    }

    pub async fn quit(self) {
        let _ = self.client.clone().close().await;
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(pid) = self._driver.id() {
            // SAFETY: signals the process group this test created; no memory is involved.
            unsafe { libc::killpg(pid as i32, libc::SIGKILL) };
        }
    }
}

fn home_log(home: &Home) -> String {
    std::fs::read_to_string(home.path("driver.log")).unwrap_or_default()
}

/// Adds `gateway` through the namespace → service → port picker; first with a bad local port,
/// which must be refused next to the field with nothing saved.
pub async fn add_forward_scenario(driver: &Driver, home: &Home, port: u16) {
    driver
        .wait_text("#forwards tbody", |t| t.contains("console") && t.contains("api"))
        .await;
    let before = std::fs::read_to_string(home.config()).unwrap();

    driver.find("#add").await.click().await.unwrap();
    driver.visible("#editor").await;
    driver.find("#f-name").await.send_keys("gateway").await.unwrap();
    driver
        .find("#f-namespace-pick")
        .await
        .select_by_value("openchoreo-data-plane")
        .await
        .unwrap();
    driver
        .wait_text("#f-service-pick", |t| t.contains("gateway-external (LoadBalancer)"))
        .await;
    driver
        .find("#f-service-pick")
        .await
        .select_by_value("gateway-external")
        .await
        .unwrap();
    driver
        .wait_text("#f-service_port-pick", |t| t.contains("https 443/TCP"))
        .await;
    driver
        .find("#f-service_port-pick")
        .await
        .select_by_value("https")
        .await
        .unwrap();
    driver.find("#f-probe").await.select_by_value("tls").await.unwrap();

    // A bad value: the error sits next to its field and the file is untouched.
    driver.find("#f-local_port").await.send_keys("https").await.unwrap();
    driver.find("#save").await.click().await.unwrap();
    let error = driver.wait_text(".error[data-for=local_port]", |t| !t.is_empty()).await;
    assert!(error.contains("is not a port"), "{error}");
    assert_eq!(std::fs::read_to_string(home.config()).unwrap(), before, "nothing saved");

    let field = driver.find("#f-local_port").await;
    field.clear().await.unwrap();
    field.send_keys(&port.to_string()).await.unwrap();

    // An address other machines can reach is not saved without a confirmation.
    driver.find("#f-bind").await.send_keys("0.0.0.0").await.unwrap();
    driver.find("#save").await.click().await.unwrap();
    let error = driver.wait_text(".error[data-for=bind]", |t| !t.is_empty()).await;
    assert!(error.contains("reachable from other machines"), "{error}");
    driver.visible("#f-bind-confirm").await;
    assert_eq!(std::fs::read_to_string(home.config()).unwrap(), before, "nothing saved");
    // Back to the default (localhost) for this test, which listens on loopback only.
    driver.find("#f-bind").await.clear().await.unwrap();
    driver.find("#save").await.click().await.unwrap();
    driver.wait_text("#forwards tbody", |t| t.contains("gateway")).await;
    let after = std::fs::read_to_string(home.config()).unwrap();
    assert!(after.starts_with(&before), "the old text is kept as it was:\n{after}");
    let added = &after[before.len()..];
    for line in [
        "name = \"gateway\"",
        "namespace = \"openchoreo-data-plane\"",
        "service = \"gateway-external\"",
        "service_port = \"https\"",
        &format!("local_port = {port}"),
        "probe = \"tls\"",
    ] {
        assert!(added.contains(line), "{line} in:\n{added}");
    }
    let addr = ([127, 0, 0, 1], port).into();
    poll_until("the new forward to listen", || listening(addr)).await;
}

/// A first run: the page came up by itself with the picker open and the kubeconfig's contexts,
/// local clusters first; the first forward (`echo`, on `port`) is added through the picker and
/// creates the config file.
pub async fn first_run_scenario(driver: &Driver, home: &Home, port: u16) {
    driver.settled().await;
    driver.visible("#welcome").await;
    driver.visible("#editor").await;
    let mut contexts = Vec::new();
    for option in driver.client.find_all(Locator::Css("#context option")).await.unwrap() {
        contexts.push(option.text().await.unwrap());
    }
    assert_eq!(
        contexts,
        [
            "kubectl's current-context",
            "kind-dev",
            "k3d-lab",
            "docker-desktop",
            "minikube"
        ]
    );
    assert!(!home.config().exists(), "nothing written before the user saves");

    driver.find("#f-name").await.send_keys("echo").await.unwrap();
    driver.wait_text("#f-namespace-pick", |t| t.contains("apps")).await;
    driver
        .find("#f-namespace-pick")
        .await
        .select_by_value("apps")
        .await
        .unwrap();
    driver
        .wait_text("#f-service-pick", |t| t.contains("echo (NodePort)"))
        .await;
    driver
        .find("#f-service-pick")
        .await
        .select_by_value("echo")
        .await
        .unwrap();
    driver.wait_text("#f-service_port-pick", |t| t.contains("7000")).await;
    driver
        .find("#f-service_port-pick")
        .await
        .select_by_value("tcp")
        .await
        .unwrap();
    driver
        .find("#f-local_port")
        .await
        .send_keys(&port.to_string())
        .await
        .unwrap();
    driver.find("#save").await.click().await.unwrap();
    driver.wait_text("#forwards tbody", |t| t.contains("echo")).await;
    let config = std::fs::read_to_string(home.config()).unwrap();
    for line in [
        "name = \"echo\"",
        "namespace = \"apps\"",
        &format!("local_port = {port}"),
    ] {
        assert!(config.contains(line), "{line} in:\n{config}");
    }
}

/// Imports through the page: a pasted script previewed, one forward unticked, the rest added
/// (the gateway, on `port`).
pub async fn import_scenario(driver: &Driver, home: &Home, port: u16, other: u16) {
    driver.settled().await;
    let before = std::fs::read_to_string(home.config()).unwrap();
    driver.find("#import").await.click().await.unwrap();
    driver.visible("#importer").await;
    let script = format!(
        "kubectl port-forward -n openchoreo-data-plane svc/gateway-external {port}:https &\n\
         kubectl port-forward rs/amp-console-7d9f 5005\n\
         kubectl port-forward -n wso2-amp svc/amp-console {other}:http &\n\
         sleep 1\n"
    );
    // Pasted (typing a newline into a textarea is not something WebDriver does the same
    // everywhere).
    driver
        .client
        .execute(
            "document.getElementById('import-text').value = arguments[0]",
            vec![serde_json::Value::String(script)],
        )
        .await
        .unwrap();
    driver.find("#import-preview").await.click().await.unwrap();
    driver.settled().await;
    let found = driver
        .wait_text("#import-found tbody", |t| {
            t.contains("gateway-external") && t.contains("amp-console")
        })
        .await;
    assert!(found.contains(&format!(":{port}")), "{found}");
    let left_out = driver.text_of("#import-left-out").await;
    assert!(left_out.contains("line 2: rs/amp-console-7d9f"), "{left_out}");
    assert!(left_out.contains("not forwards: line 4"), "{left_out}");
    assert_eq!(
        std::fs::read_to_string(home.config()).unwrap(),
        before,
        "a preview writes nothing"
    );

    // Only the gateway: the console's row is unticked.
    driver
        .find("#import-found tr[data-name=amp-console] input.pick")
        .await
        .click()
        .await
        .unwrap();
    driver.find("#import-add").await.click().await.unwrap();
    driver.settled().await;
    driver
        .wait_text("#forwards tbody", |t| t.contains("gateway-external"))
        .await;
    let after = std::fs::read_to_string(home.config()).unwrap();
    assert!(after.starts_with(&before), "the file is kept as it was:\n{after}");
    let added = &after[before.len()..];
    assert!(
        added.contains("service = \"gateway-external\"") && added.contains("service_port = \"https\""),
        "{added}"
    );
    assert!(
        !added.contains("amp-console"),
        "the unticked one is not added:\n{added}"
    );
    let addr = ([127, 0, 0, 1], port).into();
    poll_until("the imported forward to listen", || listening(addr)).await;
}

/// Removes `api` from the table: gone from the file, its listener closed.
pub async fn remove_forward_scenario(driver: &Driver, home: &Home, api: std::net::SocketAddr) {
    driver.settled().await;
    assert!(listening(api).await);
    driver
        .find("#forwards tr[data-name=api] button.remove")
        .await
        .click()
        .await
        .unwrap();
    driver
        .wait_text("#forwards tbody", |t| !t.contains("wso2-amp/amp-api"))
        .await;
    let text = std::fs::read_to_string(home.config()).unwrap();
    assert!(!text.contains("name = \"api\""), "{text}");
    assert!(text.contains("name = \"console\""), "{text}");
    let closed = tokio::time::timeout(WAIT, async {
        while listening(api).await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(closed.is_ok(), "api's listener closes");
}

/// "Start at login" writes the desktop session's autostart entry, and unticking removes it.
pub async fn autostart_scenario(driver: &Driver, home: &Home) {
    driver.settled().await;
    let entry = || {
        // Where desktop sessions look for login items (auto-launch writes ~/.config/autostart).
        std::fs::read_dir(home.path("home/.config/autostart"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "desktop"))
    };
    assert!(entry().is_none());
    let checkbox = driver.find("#autostart").await;
    assert!(!checkbox.is_selected().await.unwrap());
    checkbox.click().await.unwrap();
    if driver.app != APP {
        // The installed app registers itself: the entry names its installed path.
        let written = tokio::time::timeout(WAIT, async {
            loop {
                if let Some(path) = entry()
                    && std::fs::read_to_string(&path)
                        .is_ok_and(|text| text.contains("[Desktop Entry]") && text.contains(&driver.app))
                {
                    return path;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        let Ok(_) = written else {
            let error = driver.text_of(".error[data-for=autostart]").await;
            let text = entry().map(|p| std::fs::read_to_string(p).unwrap_or_default());
            panic!(
                "no autostart entry naming {}: {text:?}; the page says {error:?}",
                driver.app
            );
        };
        checkbox.click().await.unwrap();
        poll_until("unticking to remove the autostart entry", || async {
            entry().is_none()
        })
        .await;
        return;
    }
    // A build under target/ is refused, by name, and nothing is written.
    let error = driver.wait_text(".error[data-for=autostart]", |t| !t.is_empty()).await;
    assert!(
        error.contains("needs the installed app") && error.contains("target"),
        "{error}"
    );
    driver.settled().await;
    assert!(!checkbox.is_selected().await.unwrap(), "the box is unticked again");
    assert!(entry().is_none(), "{:?}", entry());
}

/// The context dropdown: "kubectl's current-context" drops `[cluster] context` from the file,
/// choosing the preset's context writes it back; the rest of the file is kept as it was.
pub async fn context_scenario(driver: &Driver, home: &Home) {
    const LINE: &str = "context = \"kind-openchoreo-local\"";
    let original = std::fs::read_to_string(home.config()).unwrap();
    assert!(original.contains(LINE), "{original}");
    let select = driver.find("#context").await;
    assert_eq!(
        select.prop("value").await.unwrap().as_deref(),
        Some("kind-openchoreo-local")
    );
    driver.settled().await;
    select.clone().select_by_value("").await.unwrap();
    driver.settled().await;
    let config = || std::fs::read_to_string(home.config()).unwrap();
    poll_until("the context to leave the config file", || async {
        !config().contains(LINE)
    })
    .await;
    assert!(config().contains("[cluster]"), "{}", config());
    select.select_by_value("kind-openchoreo-local").await.unwrap();
    driver.settled().await;
    poll_until("the context to come back to the config file", || async {
        config().contains(LINE)
    })
    .await;
}

/// Unticks "a forward goes down": saved in `app.json` beside the config.
pub async fn mute_down_scenario(driver: &Driver, home: &Home) {
    driver.settled().await;
    let checkbox = driver.find("#n-down").await;
    assert!(checkbox.is_selected().await.unwrap(), "notifications start on");
    checkbox.click().await.unwrap();
    driver.settled().await;
    let prefs = home.path("config/porthole/app.json");
    let saved = || {
        let saved = std::fs::read_to_string(&prefs).unwrap_or_default();
        serde_json::from_str::<serde_json::Value>(&saved).is_ok_and(|v| v["mutes"]["down"] == true)
    };
    let waited = tokio::time::timeout(WAIT, async {
        while !saved() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    if waited.is_err() {
        let ticked = checkbox.is_selected().await;
        let log = std::fs::read_to_string(home.path("state/porthole/porthole.log")).unwrap_or_default();
        panic!("the mute was not saved; the box is ticked: {ticked:?}; log:\n{log}");
    }
}

/// Presses Escape in the page (with no editor open, it closes the window).
pub async fn press_escape(driver: &Driver) {
    let body = driver.find("body").await;
    // The window goes while the command is answered: "no such window" is an expected reply.
    let _ = body.send_keys(&fantoccini::key::Key::Escape.to_string()).await;
}

/// The README's pictures: the settings window as it is, and the tray menu drawn from its
/// dbusmenu layout (there is no panel under Xvfb to show the real one).
pub async fn screenshots(driver: &Driver, bus: &Bus, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    driver
        .wait_text("#forwards tbody", |t| t.matches("healthy").count() >= 3)
        .await;
    std::fs::write(dir.join("settings.png"), driver.client.screenshot().await.unwrap()).unwrap();

    let (name, path) = bus.seen().borrow().items[0].clone();
    let tray = TrayItem::new(bus.connection.clone(), name, path);
    let items = tray.menu_items().await;
    let icon = std::fs::read(tray.icon_file().await).unwrap();
    let lines: Vec<serde_json::Value> = items
        .iter()
        .map(|i| json!({ "label": i.label, "separator": i.separator, "enabled": i.enabled, "check": i.toggle }))
        .collect();
    let script = r#"
        const [lines, icon] = arguments;
        document.body.replaceChildren();
        document.body.className = "menu-shot";
        const bar = document.createElement("div");
        bar.className = "menu-bar";
        const img = document.createElement("img");
        img.src = "data:image/png;base64," + icon;
        bar.append(img);
        const menu = document.createElement("div");
        menu.className = "menu";
        for (const l of lines) {
          const row = document.createElement("div");
          row.className = l.separator ? "sep" : l.enabled ? "row" : "row off";
          if (!l.separator) row.textContent = (l.check === null ? "   " : l.check ? "✓  " : "    ") + l.label;
          menu.append(row);
        }
        document.body.append(bar, menu);
    "#;
    driver
        .client
        .execute(script, vec![json!(lines), json!(base64(&icon))])
        .await
        .unwrap();
    std::fs::write(dir.join("tray-menu.png"), driver.client.screenshot().await.unwrap()).unwrap();
    // Back to the real page for the rest of the test.
    // (A WebDriver refresh waits for a load event the app's own URL scheme does not give it.)
    driver.client.execute("location.reload()", vec![]).await.unwrap();
    driver.wait_text("#forwards tbody", |t| t.contains("gateway")).await;
}

fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Adds a second cluster from the kubeconfig's context `context` (a dead server: its API is
/// unreachable), sees it get a section of its own, then removes it (a first click asks, the
/// second removes). The file says two clusters, then one; the forwards stay in the first.
pub async fn clusters_scenario(driver: &Driver, home: &Home, context: &str) {
    driver.settled().await;
    driver.wait_text("#clusters", |t| !t.is_empty()).await;
    // Chosen the way a user does, then the button.
    driver
        .client
        .execute(
            "document.getElementById('add-cluster-context').value = arguments[0]",
            vec![serde_json::Value::String(context.into())],
        )
        .await
        .unwrap();
    driver.find("#add-cluster").await.click().await.unwrap();
    driver.settled().await;
    let text = std::fs::read_to_string(home.config()).unwrap();
    assert_eq!(text.matches("[[cluster]]").count(), 2, "{text}");
    assert!(text.contains(&format!("context = \"{context}\"")), "{text}");
    // Its API answers nothing: its own section says so; the first cluster's forwards are fine.
    let table = driver
        .wait_text("#forwards tbody", |t| t.contains(&format!("{context} — unreachable")))
        .await;
    assert!(table.contains("(kubectl) — connected"), "{table}");
    let clusters = driver.text_of("#clusters").await;
    assert!(clusters.contains(context), "{clusters}");

    let remove = format!("#clusters li[data-cluster='{context}'] button.remove-cluster");
    driver.find(&remove).await.click().await.unwrap();
    driver.settled().await;
    assert!(driver.text_of(&remove).await.contains(&format!("Remove {context}")));
    assert_eq!(
        std::fs::read_to_string(home.config()).unwrap(),
        text,
        "the first click only asks"
    );
    driver.find(&remove).await.click().await.unwrap();
    driver.settled().await;
    let after = std::fs::read_to_string(home.config()).unwrap();
    assert_eq!(after.matches("[[cluster]]").count(), 1, "{after}");
    assert!(!after.contains(context), "{after}");
    driver.wait_text("#forwards tbody", |t| !t.contains(context)).await;
}
