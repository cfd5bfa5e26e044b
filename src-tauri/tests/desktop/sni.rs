//! Reading the app's tray item the way a desktop panel does: its StatusNotifierItem properties
//! (the icon, published as a PNG file) and its `com.canonical.dbusmenu` menu, and clicking items.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use zbus::zvariant::{OwnedObjectPath, OwnedValue, Structure, Value};
use zbus::{Connection, MatchRule, MessageStream, Proxy};

/// dbusmenu's `(ia{sv}av)`: id, properties, children.
type Layout = (i32, HashMap<String, OwnedValue>, Vec<OwnedValue>);
/// The colours of `icons/tray/*.png` (see `icons/draw.py`).
pub const GREEN: [u8; 3] = [46, 157, 79];
pub const RED: [u8; 3] = [217, 59, 59];
pub const BLUE: [u8; 3] = [59, 111, 217];
pub const GREY: [u8; 3] = [138, 143, 152];

/// What the bus answers for an object path nobody exports (at this moment).
const UNKNOWN_METHOD: &str = "org.freedesktop.DBus.Error.UnknownMethod";

/// One menu entry as dbusmenu publishes it.
#[derive(Debug, Clone)]
pub struct Item {
    pub id: i32,
    pub label: String,
    pub enabled: bool,
    pub separator: bool,
    /// `Some(checked)` for a check item.
    pub toggle: Option<bool>,
}

/// The registered tray item.
pub struct TrayItem {
    connection: Connection,
    pub name: String,
    pub path: String,
    /// The app's log, shown when a wait fails.
    pub log: Option<PathBuf>,
}

impl TrayItem {
    pub fn new(connection: Connection, name: String, path: String) -> TrayItem {
        TrayItem {
            connection,
            name,
            path,
            log: None,
        }
    }

    async fn item(&self) -> Proxy<'static> {
        Proxy::new(
            &self.connection,
            self.name.clone(),
            self.path.clone(),
            "org.kde.StatusNotifierItem",
        )
        .await
        .unwrap()
    }

    /// The PNG file the icon is published as.
    pub async fn icon_file(&self) -> PathBuf {
        let item = self.item().await;
        let name: String = item.get_property("IconName").await.unwrap();
        if name.starts_with('/') {
            return PathBuf::from(name);
        }
        let dir: String = item.get_property("IconThemePath").await.unwrap();
        PathBuf::from(dir).join(format!("{name}.png"))
    }

    /// The icon's dominant opaque colour.
    pub async fn icon_colour(&self) -> Option<[u8; 3]> {
        let path = self.icon_file().await;
        let bytes = std::fs::read(&path).ok()?;
        Some(dominant_colour(&bytes))
    }

    async fn menu(&self) -> Proxy<'static> {
        let item = self.item().await;
        let path: OwnedObjectPath = item.get_property("Menu").await.unwrap();
        Proxy::new(&self.connection, self.name.clone(), path, "com.canonical.dbusmenu")
            .await
            .unwrap()
    }

    /// The menu's top-level items, in order.
    pub async fn menu_items(&self) -> Vec<Item> {
        // While the app replaces its menu, the dbusmenu object is briefly not exported: ask
        // again (bounded) rather than fail on that moment.
        let mut attempts = 0;
        let layout: Layout = loop {
            let menu = self.menu().await;
            let reply: zbus::Result<(u32, Layout)> = menu.call("GetLayout", &(0i32, -1i32, Vec::<String>::new())).await;
            match reply {
                Ok((_revision, layout)) => break layout,
                Err(zbus::Error::MethodError(name, _, _)) if name.as_str() == UNKNOWN_METHOD && attempts < 100 => {
                    attempts += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(e) => panic!("GetLayout: {e}"),
            }
        };
        layout
            .2
            .iter()
            .filter_map(|child| parse_item(child))
            .filter(|i| !i.label.is_empty() || i.separator)
            .collect()
    }

    /// Clicks the item whose label starts with `prefix`. The menu is rebuilt whenever the
    /// state changes, so an id read a moment ago may be gone: then it reads the layout again.
    pub async fn click(&self, prefix: &str) {
        for _ in 0..20 {
            let items = self.menu_items().await;
            let item = items
                .iter()
                .find(|i| i.label.starts_with(prefix))
                .unwrap_or_else(|| panic!("no menu item {prefix:?} in {items:#?}"));
            let menu = self.menu().await;
            let clicked: zbus::Result<()> = menu.call("Event", &(item.id, "clicked", Value::from(0i32), 0u32)).await;
            match clicked {
                Ok(()) => return,
                // The item went with a rebuilt menu, or the menu is being re-exported.
                Err(zbus::Error::MethodError(name, message, _))
                    if name.as_str() == UNKNOWN_METHOD
                        || message
                            .as_deref()
                            .is_some_and(|m| m.contains("does not refer to a menu item")) =>
                {
                    continue;
                }
                Err(e) => panic!("clicking {prefix:?}: {e}"),
            }
        }
        panic!("the menu kept changing under the click on {prefix:?}");
    }

    /// Waits, woken by the item's own signals (new icon, layout updated), until `done` holds;
    /// panics with `what` after `limit`.
    pub async fn wait_until<F, Fut>(&self, what: &str, limit: Duration, mut done: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let rule = MatchRule::builder()
            .msg_type(zbus::message::Type::Signal)
            .sender(self.name.as_str())
            .unwrap()
            .build();
        let mut signals = MessageStream::for_match_rule(rule, &self.connection, Some(64))
            .await
            .unwrap();
        let waited = tokio::time::timeout(limit, async {
            loop {
                if done().await {
                    return;
                }
                signals.next().await;
            }
        })
        .await;
        if waited.is_err() {
            let log = self
                .log
                .as_ref()
                .and_then(|p| std::fs::read_to_string(p).ok())
                .unwrap_or_default();
            panic!(
                "timed out waiting for {what}; menu: {:#?}\napp log:\n{log}",
                self.menu_items().await
            );
        }
    }
}

fn parse_item(value: &Value<'_>) -> Option<Item> {
    let structure: &Structure = match value {
        Value::Structure(s) => s,
        Value::Value(inner) => return parse_item(inner),
        _ => return None,
    };
    let fields = structure.fields();
    let id = i32::try_from(&fields[0]).ok()?;
    let props: HashMap<String, OwnedValue> = HashMap::try_from(fields[1].try_clone().ok()?).ok()?;
    let string = |key: &str| props.get(key).and_then(|v| String::try_from(v.try_clone().ok()?).ok());
    let label = string("label")
        .unwrap_or_default()
        .replace("__", "\u{0}")
        .replace('_', "")
        .replace('\u{0}', "_");
    let enabled = props
        .get("enabled")
        .and_then(|v| bool::try_from(v).ok())
        .unwrap_or(true);
    let separator = string("type").as_deref() == Some("separator");
    let toggle = match string("toggle-type").as_deref() {
        Some("checkmark") => Some(
            props
                .get("toggle-state")
                .and_then(|v| i32::try_from(v).ok())
                .unwrap_or(0)
                == 1,
        ),
        _ => None,
    };
    Some(Item {
        id,
        label,
        enabled,
        separator,
        toggle,
    })
}

/// The most frequent colour among mostly-opaque pixels.
pub fn dominant_colour(png_bytes: &[u8]) -> [u8; 3] {
    let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgba, "tray icons are RGBA");
    let mut counts: HashMap<[u8; 3], usize> = HashMap::new();
    for px in buf[..info.buffer_size()].chunks_exact(4) {
        if px[3] > 200 {
            *counts.entry([px[0], px[1], px[2]]).or_default() += 1;
        }
    }
    counts
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .map(|(c, _)| c)
        .expect("an opaque pixel")
}
