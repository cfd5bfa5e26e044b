//! The tray icon and its menu, drawn from the engine's snapshot: [`TrayView`] is the pure part
//! (what to show), [`Tray`] puts it on screen and is rebuilt only when the view changes.

use porthole::Snapshot;
use porthole::cause::State;
use porthole::engine::ForwardStatus;
use tauri::image::Image;
use tauri::menu::{CheckMenuItem, Menu, MenuItem, PredefinedMenuItem};
use tauri::tray::{TrayIcon, TrayIconBuilder};
use tauri::{AppHandle, Wry};

use crate::icons::{self, Aggregate};

/// Menu ids: one place, matched in [`crate::shell::on_menu`].
pub mod ids {
    pub const FORWARD_PREFIX: &str = "forward:";
    pub const START_ALL: &str = "start-all";
    pub const STOP_ALL: &str = "stop-all";
    pub const FIX_KUBECONFIG: &str = "fix-kubeconfig";
    pub const SETTINGS: &str = "settings";
    /// "No forwards yet — Settings…": opens the settings window too.
    pub const FIRST_FORWARD: &str = "first-forward";
    pub const COPY_STATUS: &str = "copy-status";
    pub const OPEN_LOGS: &str = "open-logs";
    pub const QUIT: &str = "quit";
}

/// One line of the menu.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A forward: its check mark turns it on and off.
    Forward {
        name: String,
        label: String,
        enabled: bool,
    },
    /// Words under a forward, or a heading: not clickable.
    Note(String),
    Action {
        id: &'static str,
        label: String,
    },
    Separator,
}

/// Everything the tray shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrayView {
    pub aggregate: Aggregate,
    pub tooltip: String,
    pub lines: Vec<Line>,
}

fn dot(state: State) -> &'static str {
    match state {
        State::Healthy => "●",
        State::Degraded | State::Starting => "◐",
        State::Down => "○",
        State::Disabled => "·",
    }
}

/// `:3000`, or the whole address when other machines can reach it: `0.0.0.0:3000 (network)`.
fn port(forward: &ForwardStatus) -> String {
    match forward.local {
        Some(a) if !a.ip().is_loopback() => format!("{a} (network)"),
        Some(a) => format!(":{}", a.port()),
        None => String::new(),
    }
}

/// `● console  :3000 → healthy`
pub fn forward_label(forward: &ForwardStatus) -> String {
    format!(
        "{} {}  {} → {}",
        dot(forward.health.state),
        forward.name,
        port(forward),
        forward.health.state
    )
}

/// The cause in words, for the line under a forward that is not healthy.
fn cause_words(forward: &ForwardStatus) -> Option<String> {
    if matches!(forward.health.state, State::Healthy | State::Disabled) {
        return None;
    }
    forward
        .health
        .cause
        .as_ref()
        .map(|c| format!("    {}", porthole::status::printable(&c.message)))
}

/// `kind-platform — connected`, `k3d-lab — unreachable: connection refused`; the cluster kubectl
/// should point at says so when there are several.
pub fn cluster_heading(cluster: &porthole::engine::ClusterReport) -> String {
    let state = match &cluster.status.detail {
        Some(detail) => format!("{}: {}", cluster.status.state, porthole::status::printable(detail)),
        None => cluster.status.state.clone(),
    };
    let kubectl = if cluster.kubectl { " (kubectl)" } else { "" };
    format!("{}{kubectl} — {state}", cluster.name)
}

/// The worst state decides; a wrong kubectl context shows unless a forward is down. With no
/// forwards there is nothing to be wrong about: the neutral icon.
pub fn aggregate(snapshot: &Snapshot) -> Aggregate {
    if snapshot.forwards.is_empty() {
        return Aggregate::Idle;
    }
    let states: Vec<State> = snapshot.forwards.iter().map(|f| f.health.state).collect();
    let context_wrong = snapshot.kubeconfig.as_ref().is_some_and(|k| !k.state.is_ok());
    if states.contains(&State::Down) {
        Aggregate::Down
    } else if context_wrong {
        Aggregate::ContextWrong
    } else if states.iter().all(|s| *s == State::Disabled) {
        Aggregate::Paused
    } else if states.iter().any(|s| matches!(s, State::Degraded | State::Starting)) {
        Aggregate::Degraded
    } else {
        Aggregate::Healthy
    }
}

impl TrayView {
    pub fn of(snapshot: &Snapshot) -> TrayView {
        let mut lines = Vec::new();
        let mut tooltip = vec!["Porthole".to_string()];
        let mut forward_lines = |forward: &ForwardStatus, lines: &mut Vec<Line>| {
            lines.push(Line::Forward {
                name: forward.name.clone(),
                label: forward_label(forward),
                enabled: forward.enabled,
            });
            lines.extend(cause_words(forward).map(Line::Note));
            tooltip.push(format!("{} {} {}", forward.name, port(forward), forward.health.state));
        };
        if snapshot.clusters.len() > 1 {
            // A section per cluster: its heading says its API's state; the icon aggregates all.
            for (i, cluster) in snapshot.clusters.iter().enumerate() {
                if i > 0 {
                    lines.push(Line::Separator);
                }
                lines.push(Line::Note(cluster_heading(cluster)));
                for forward in snapshot.forwards.iter().filter(|f| f.cluster == cluster.name) {
                    forward_lines(forward, &mut lines);
                }
            }
        } else {
            for forward in &snapshot.forwards {
                forward_lines(forward, &mut lines);
            }
        }
        if snapshot.forwards.is_empty() {
            // A first run (or every forward removed): one way on, and no alarms.
            lines.push(Line::Action {
                id: ids::FIRST_FORWARD,
                label: "No forwards yet — Settings…".into(),
            });
        } else {
            lines.push(Line::Separator);
            lines.push(Line::Action {
                id: ids::START_ALL,
                label: "Start all".into(),
            });
            lines.push(Line::Action {
                id: ids::STOP_ALL,
                label: "Stop all".into(),
            });
        }
        if let Some(report) = snapshot
            .kubeconfig
            .as_ref()
            .filter(|k| !k.state.is_ok() && !snapshot.forwards.is_empty())
        {
            lines.push(Line::Separator);
            lines.push(Line::Note(report.sentence.clone()));
            let current = snapshot.kubectl_context.as_deref().unwrap_or("none");
            let expected = snapshot.context().unwrap_or("?");
            lines.push(Line::Action {
                id: ids::FIX_KUBECONFIG,
                label: format!("Fix kubeconfig (current: {current} → {expected})"),
            });
            tooltip.push(report.sentence.clone());
        }
        lines.push(Line::Separator);
        for (id, label) in [
            (ids::SETTINGS, "Settings…"),
            (ids::COPY_STATUS, "Copy status"),
            (ids::OPEN_LOGS, "Open logs"),
        ] {
            lines.push(Line::Action {
                id,
                label: label.into(),
            });
        }
        lines.push(Line::Separator);
        lines.push(Line::Action {
            id: ids::QUIT,
            label: "Quit Porthole".into(),
        });
        TrayView {
            aggregate: aggregate(snapshot),
            tooltip: tooltip.join("\n"),
            lines,
        }
    }
}

impl TrayView {
    /// The config file's error, when the file in place is not the config running: first in the
    /// menu and the tooltip, and a red icon while it leaves nothing running.
    pub fn with_config_error(mut self, error: Option<&str>) -> TrayView {
        let Some(error) = error else {
            return self;
        };
        self.lines
            .insert(0, Line::Note(format!("Config not applied: {}", one_line(error))));
        self.lines.insert(1, Line::Separator);
        self.tooltip = format!("{}\nconfig not applied", self.tooltip);
        if !self.lines.iter().any(|l| matches!(l, Line::Forward { .. })) {
            self.aggregate = Aggregate::Down;
        }
        self
    }
}

/// A parser's error in one menu line: where (its first line) and what (its last), without the
/// quoted source between them, at most 160 characters.
fn one_line(error: &str) -> String {
    let mut lines = error.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or_default();
    let line = match lines.next_back() {
        Some(last) => format!("{first}: {last}"),
        None => first.to_string(),
    };
    match line.char_indices().nth(160) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line,
    }
}

/// The tray icon on screen and the view it shows.
pub struct Tray {
    icon: TrayIcon,
    shown: Option<TrayView>,
}

impl Tray {
    /// The tray icon; a menu click calls `on_menu` with the item's id ([`ids`]).
    pub fn create(app: &AppHandle, on_menu: fn(&AppHandle, &str)) -> tauri::Result<Tray> {
        let icon = TrayIconBuilder::with_id("porthole")
            .icon(image(Aggregate::Degraded)?)
            .icon_as_template(cfg!(target_os = "macos"))
            .show_menu_on_left_click(true)
            .on_menu_event(move |app, event| on_menu(app, event.id().as_ref()))
            .build(app)?;
        Ok(Tray { icon, shown: None })
    }

    /// Shows `view`, touching only what changed since the last one.
    pub fn show(&mut self, app: &AppHandle, view: TrayView) -> tauri::Result<()> {
        let last = self.shown.as_ref();
        if last.map(|v| v.aggregate) != Some(view.aggregate) {
            self.icon.set_icon(Some(image(view.aggregate)?))?;
            // Setting the icon resets the template flag on macOS.
            #[cfg(target_os = "macos")]
            self.icon.set_icon_as_template(true)?;
        }
        if last.map(|v| &v.tooltip) != Some(&view.tooltip) {
            // Linux's AppIndicator has no tooltip: the menu carries the same lines.
            self.icon.set_tooltip(Some(&view.tooltip))?;
        }
        if last.map(|v| &v.lines) != Some(&view.lines) {
            self.icon.set_menu(Some(menu(app, &view.lines)?))?;
        }
        self.shown = Some(view);
        Ok(())
    }
}

fn image(aggregate: Aggregate) -> tauri::Result<Image<'static>> {
    Image::from_bytes(icons::tray(aggregate))
}

fn menu(app: &AppHandle, lines: &[Line]) -> tauri::Result<Menu<Wry>> {
    let menu = Menu::new(app)?;
    for line in lines {
        match line {
            Line::Forward { name, label, enabled } => {
                let id = format!("{}{name}", ids::FORWARD_PREFIX);
                menu.append(&CheckMenuItem::with_id(app, id, label, true, *enabled, None::<&str>)?)?;
            }
            Line::Note(text) => menu.append(&MenuItem::new(app, text, false, None::<&str>)?)?,
            Line::Action { id, label } => menu.append(&MenuItem::with_id(app, *id, label, true, None::<&str>)?)?,
            Line::Separator => menu.append(&PredefinedMenuItem::separator(app)?)?,
        }
    }
    Ok(menu)
}

#[cfg(test)]
mod tests {
    use porthole::cause::{Cause, CauseId, Health};
    use porthole::engine::{ClusterReport, ClusterStatusView};
    use porthole::kubeconfig::state::KubeconfigState;

    use super::*;

    fn forward(name: &str, port: u16, state: State, cause: Option<Cause>) -> ForwardStatus {
        ForwardStatus {
            name: name.into(),
            cluster: "default".into(),
            namespace: "wso2-amp".into(),
            service: name.into(),
            local: Some(([127, 0, 0, 1], port).into()),
            enabled: state != State::Disabled,
            health: Health::new(state, cause),
            path: None,
            route: None,
            stats: Default::default(),
        }
    }

    fn snapshot(forwards: Vec<ForwardStatus>, kubeconfig: Option<KubeconfigState>) -> Snapshot {
        Snapshot {
            kubectl_context: Some("rancher-desktop".into()),
            kubeconfig: kubeconfig.map(Into::into),
            clusters: vec![ClusterReport {
                name: "default".into(),
                context: Some("kind-openchoreo-local".into()),
                kubectl: true,
                status: ClusterStatusView {
                    state: "connected".into(),
                    detail: None,
                },
            }],
            forwards,
        }
    }

    #[test]
    fn several_clusters_get_a_section_each_with_the_state_of_their_api() {
        let mut lab = forward("lab-api", 9000, State::Degraded, None);
        lab.cluster = "k3d-lab".into();
        let mut snap = snapshot(vec![forward("console", 3000, State::Healthy, None), lab], None);
        snap.clusters.push(ClusterReport {
            name: "k3d-lab".into(),
            context: Some("k3d-lab".into()),
            kubectl: false,
            status: ClusterStatusView {
                state: "unreachable".into(),
                detail: Some("connection refused".into()),
            },
        });
        let view = TrayView::of(&snap);
        let notes: Vec<&str> = view
            .lines
            .iter()
            .filter_map(|l| match l {
                Line::Note(n) => Some(n.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(
            notes,
            [
                "default (kubectl) — connected",
                "k3d-lab — unreachable: connection refused"
            ]
        );
        let position = |wanted: &str| {
            view.lines
                .iter()
                .position(|l| match l {
                    Line::Note(n) => n.starts_with(wanted),
                    Line::Forward { name, .. } => name == wanted,
                    _ => false,
                })
                .unwrap()
        };
        assert!(position("default") < position("console"));
        assert!(position("console") < position("k3d-lab"));
        assert!(position("k3d-lab") < position("lab-api"));
        // The icon still aggregates every forward.
        assert_eq!(view.aggregate, Aggregate::Degraded);
        // One cluster: no headings, as before.
        let one = TrayView::of(&snapshot(vec![forward("console", 3000, State::Healthy, None)], None));
        assert!(!one.lines.iter().any(|l| matches!(l, Line::Note(_))));
    }

    #[test]
    fn the_worst_state_decides_the_icon() {
        let ok = || forward("a", 1, State::Healthy, None);
        let missing = || Some(Cause::new(CauseId::ServiceMissing, "service missing: ns/b"));
        let mismatch = Some(KubeconfigState::ContextMismatch {
            expected: "kind-openchoreo-local".into(),
            current: "rancher-desktop".into(),
        });
        let cases = [
            (vec![ok()], None, Aggregate::Healthy),
            (
                vec![ok(), forward("b", 2, State::Starting, None)],
                None,
                Aggregate::Degraded,
            ),
            (
                vec![ok(), forward("b", 2, State::Down, missing())],
                mismatch.clone(),
                Aggregate::Down,
            ),
            (vec![ok()], mismatch.clone(), Aggregate::ContextWrong),
            (vec![forward("b", 2, State::Disabled, None)], None, Aggregate::Paused),
            (vec![], None, Aggregate::Idle),
            (vec![], mismatch, Aggregate::Idle),
        ];
        for (forwards, kubeconfig, want) in cases {
            assert_eq!(aggregate(&snapshot(forwards.clone(), kubeconfig)), want, "{forwards:?}");
        }
    }

    #[test]
    fn a_forward_open_to_the_network_says_so_in_its_line() {
        let mut open = forward("console", 3000, State::Healthy, None);
        open.local = Some("0.0.0.0:3000".parse().unwrap());
        assert_eq!(forward_label(&open), "● console  0.0.0.0:3000 (network) → healthy");
        let local = forward("console", 3000, State::Healthy, None);
        assert_eq!(forward_label(&local), "● console  :3000 → healthy");
    }

    #[test]
    fn a_config_error_comes_first_in_one_line_and_is_red_when_nothing_runs() {
        let error = "/home/u/.config/porthole/config.toml: TOML parse error at line 18, column 1\n   |\n18 | bogus = 1\n   | ^^^^^\nunknown field `bogus`, expected one of `name`, `namespace`\n";
        let view = TrayView::of(&snapshot(vec![], None)).with_config_error(Some(error));
        assert_eq!(
            view.lines[0],
            Line::Note(
                "Config not applied: /home/u/.config/porthole/config.toml: TOML parse error at line 18, column 1: unknown field `bogus`, expected one of `name`, `namespace`".into()
            )
        );
        assert_eq!(view.aggregate, Aggregate::Down);
        // With the last good config still running, its forwards' health decides the colour.
        let running = snapshot(vec![forward("api", 8080, State::Healthy, None)], None);
        let view = TrayView::of(&running).with_config_error(Some(error));
        assert_eq!(view.aggregate, Aggregate::Healthy);
        assert!(view.tooltip.ends_with("config not applied"));
        assert_eq!(TrayView::of(&running).with_config_error(None), TrayView::of(&running));
    }

    #[test]
    fn menu_lines_show_state_cause_and_the_fix() {
        let cause = Cause::new(CauseId::ServiceMissing, "service missing: wso2-amp/amp-console");
        let view = TrayView::of(&snapshot(
            vec![
                forward("console", 3000, State::Down, Some(cause)),
                forward("api", 8080, State::Healthy, None),
            ],
            Some(KubeconfigState::ContextMismatch {
                expected: "kind-openchoreo-local".into(),
                current: "rancher-desktop".into(),
            }),
        ));
        let labels: Vec<String> = view
            .lines
            .iter()
            .filter_map(|l| match l {
                Line::Forward { label, .. } | Line::Note(label) | Line::Action { label, .. } => Some(label.clone()),
                Line::Separator => None,
            })
            .collect();
        assert_eq!(labels[0], "○ console  :3000 → down");
        assert_eq!(labels[1], "    service missing: wso2-amp/amp-console");
        assert_eq!(labels[2], "● api  :8080 → healthy");
        assert!(labels.contains(&"Fix kubeconfig (current: rancher-desktop → kind-openchoreo-local)".to_string()));
        assert_eq!(labels.last().unwrap(), "Quit Porthole");
        assert_eq!(view.tooltip.lines().count(), 4, "{}", view.tooltip);
    }

    #[test]
    fn with_no_forwards_the_menu_offers_settings_and_raises_no_alarm() {
        let mismatch = KubeconfigState::ContextMismatch {
            expected: "kind-dev".into(),
            current: "rancher-desktop".into(),
        };
        let view = TrayView::of(&snapshot(vec![], Some(mismatch)));
        assert_eq!(view.aggregate, Aggregate::Idle);
        assert_eq!(
            view.lines[0],
            Line::Action {
                id: ids::FIRST_FORWARD,
                label: "No forwards yet — Settings…".into()
            }
        );
        let ids: Vec<&str> = view
            .lines
            .iter()
            .filter_map(|l| match l {
                Line::Action { id, .. } => Some(*id),
                _ => None,
            })
            .collect();
        assert_eq!(
            ids,
            [
                ids::FIRST_FORWARD,
                ids::SETTINGS,
                ids::COPY_STATUS,
                ids::OPEN_LOGS,
                ids::QUIT
            ],
            "no Start/Stop all, no Fix kubeconfig"
        );
        assert!(!view.tooltip.contains("kubectl"), "{}", view.tooltip);
    }
}
