//! The status in words: one text for `porthole status`, `porthole wait`'s report and the tray's
//! "Copy status", so they never differ.

use std::fmt;

use super::{ClusterReport, ForwardStatus, Snapshot, printable};

/// The status as `porthole status` prints it and the tray's "Copy status" copies it: a line
/// about the cluster (and one about the kubeconfig when it is wrong), then the forwards' table.
impl fmt::Display for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&text(self))
    }
}

fn text(snapshot: &Snapshot) -> String {
    let mut out = String::new();
    let context = snapshot.context().unwrap_or("(kubectl's current)");
    let kubectl = snapshot.kubectl_context.as_deref().unwrap_or("(none)");
    let several = snapshot.clusters.len() > 1;
    if several {
        out += &printable(&format!("kubectl: {kubectl}"));
        out.push('\n');
    } else if let Some(cluster) = snapshot.clusters.first() {
        out += &printable(&format!("context {context}: {} (kubectl: {kubectl})", state(cluster)));
        out.push('\n');
    }
    match &snapshot.kubeconfig {
        Some(report) if !report.state.is_ok() => {
            out += &format!(
                "warning: {}: {} (fix: `porthole fix-kubeconfig`, or Fix kubeconfig in the app's menu)\n",
                report.state.id(),
                printable(&report.sentence)
            );
        }
        Some(_) => {}
        None if snapshot.context_mismatch() => {
            out += &printable(&format!(
                "warning: kubectl's current-context is {kubectl}, not {context}"
            ));
            out.push('\n');
        }
        None => {}
    }
    if !several {
        return out + &table(&snapshot.forwards.iter().collect::<Vec<_>>());
    }
    // A section per cluster: its line, then its forwards.
    for cluster in &snapshot.clusters {
        let forwards: Vec<&ForwardStatus> = snapshot.forwards.iter().filter(|f| f.cluster == cluster.name).collect();
        out.push('\n');
        out += &printable(&format!(
            "cluster {} (context {}{}): {}",
            cluster.name,
            cluster.context.as_deref().unwrap_or("kubectl's current"),
            if cluster.kubectl { ", kubectl's" } else { "" },
            state(cluster)
        ));
        out.push('\n');
        out += &match forwards.is_empty() {
            true => "(no forwards)\n".to_string(),
            false => table(&forwards),
        };
    }
    out
}

/// A cluster's API state in words: `connected`, `unreachable (connection refused)`.
fn state(cluster: &ClusterReport) -> String {
    match &cluster.status.detail {
        Some(detail) => format!("{} ({detail})", cluster.status.state),
        None => cluster.status.state.clone(),
    }
}

/// The forwards' table: a header, a line each with columns sized to their contents, and the
/// cause and fix under a broken one.
pub fn table(forwards: &[&ForwardStatus]) -> String {
    let rows: Vec<[String; 6]> = forwards.iter().map(|f| row(f)).collect();
    let header = ["NAME", "LOCAL", "STATE", "ROUTE", "CONN", "BYTES"].map(String::from);
    let widths = widths(&header, &rows);
    let mut out = line(&header, &widths);
    for (f, cells) in forwards.iter().zip(&rows) {
        out += &line(cells, &widths);
        out += &cause_lines(f);
    }
    out
}

/// Each column's width: its widest cell, header included.
fn widths<const N: usize>(header: &[String; N], rows: &[[String; N]]) -> [usize; N] {
    let mut widths = [0usize; N];
    for cells in std::iter::once(header).chain(rows) {
        for (width, cell) in widths.iter_mut().zip(cells) {
            *width = (*width).max(cell.chars().count());
        }
    }
    widths
}

/// A plain table: `header`, then `rows`, each cell left-aligned in a column sized to its
/// contents (control characters shown escaped), two spaces apart.
pub fn columns<const N: usize>(header: &[String; N], rows: &[[String; N]]) -> String {
    let rows: Vec<[String; N]> = rows
        .iter()
        .map(|cells| cells.clone().map(|c| printable(&c).into_owned()))
        .collect();
    let widths = widths(header, &rows);
    let mut out = String::new();
    for cells in std::iter::once(header).chain(&rows) {
        let line: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out += line.join("  ").trim_end();
        out.push('\n');
    }
    out
}

/// One forward's cells: name, local address, state, route, connections (open/total), bytes.
fn row(f: &ForwardStatus) -> [String; 6] {
    [
        printable(&f.name).into_owned(),
        f.local.map_or("-".into(), |a| a.to_string()),
        f.health.state.to_string(),
        f.route
            .as_ref()
            .map_or("-".into(), |r| printable(&r.describe()).into_owned()),
        format!("{}/{}", f.stats.active, f.stats.total),
        human_bytes(f.stats.bytes_up + f.stats.bytes_down),
    ]
}

/// Cells padded to the column widths: text left-aligned, the two counters right-aligned.
fn line(cells: &[String; 6], widths: &[usize; 6]) -> String {
    let mut out = String::new();
    for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
        let pad = " ".repeat(width - cell.chars().count());
        let last = i == cells.len() - 1;
        match i {
            4 | 5 => out += &format!("{pad}{cell}"),
            _ => out += &format!("{cell}{pad}"),
        }
        out += if last { "\n" } else { "  " };
    }
    out
}

fn cause_lines(f: &ForwardStatus) -> String {
    let mut lines = String::new();
    if let Some(local) = f.local.filter(|a| !a.ip().is_loopback()) {
        lines += &format!("    listening on {local}: other machines can reach this forward\n");
    }
    if let Some(cause) = &f.health.cause {
        lines += &format!("    {}: {}\n", cause.id, printable(&cause.message));
        if let Some(fix) = &cause.fix {
            lines += &format!("    fix: {}\n", printable(fix));
        }
    }
    if f.stats.refused > 0 {
        lines += &format!("    refused {} connections while at max_connections\n", f.stats.refused);
    }
    lines
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cause::{Cause, CauseId, Health, State};
    use crate::status::{ClusterStatusView, Path, RouteView};

    fn forward(name: &str, port: u16, route: Option<RouteView>, health: Health) -> ForwardStatus {
        ForwardStatus {
            name: name.into(),
            cluster: "kind-a".into(),
            namespace: "ns".into(),
            service: name.into(),
            local: Some(([127, 0, 0, 1], port).into()),
            enabled: true,
            health,
            path: route.as_ref().map(|r| r.path),
            route,
            stats: Default::default(),
        }
    }

    fn cluster(name: &str, kubectl: bool, state: &str, detail: Option<&str>) -> ClusterReport {
        ClusterReport {
            name: name.into(),
            context: Some(name.into()),
            kubectl,
            status: ClusterStatusView {
                state: state.into(),
                detail: detail.map(str::to_string),
            },
        }
    }

    #[test]
    fn several_clusters_get_a_section_each_with_its_own_state() {
        let healthy = Health::new(State::Healthy, None);
        let down = Health::new(
            State::Down,
            Some(Cause::new(CauseId::ClusterUnreachable, "connection refused")),
        );
        let mut lab = forward("lab-api", 9000, None, down);
        lab.cluster = "k3d-lab".into();
        let snapshot = Snapshot {
            kubectl_context: Some("kind-a".into()),
            kubeconfig: None,
            clusters: vec![
                cluster("kind-a", true, "connected", None),
                cluster("k3d-lab", false, "unreachable", Some("connection refused")),
                cluster("k3d-empty", false, "connected", None),
            ],
            forwards: vec![forward("console", 3000, None, healthy), lab],
        };
        let text = snapshot.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "kubectl: kind-a", "{text}");
        let at = |prefix: &str| {
            lines
                .iter()
                .position(|l| l.starts_with(prefix))
                .unwrap_or_else(|| panic!("{prefix}:\n{text}"))
        };
        let (a, lab, empty) = (at("cluster kind-a"), at("cluster k3d-lab"), at("cluster k3d-empty"));
        assert_eq!(lines[a], "cluster kind-a (context kind-a, kubectl's): connected");
        assert_eq!(
            lines[lab],
            "cluster k3d-lab (context k3d-lab): unreachable (connection refused)"
        );
        let console = at("console");
        let lab_api = at("lab-api");
        assert!(
            a < console && console < lab && lab < lab_api && lab_api < empty,
            "{text}"
        );
        assert_eq!(lines[empty + 1], "(no forwards)", "{text}");
    }

    fn route(path: Path, target: &str, pod: Option<&str>) -> RouteView {
        RouteView {
            path,
            target: target.into(),
            pod: pod.map(str::to_string),
            node: "worker".into(),
            service_type: "NodePort".into(),
            port: "http 80/TCP".into(),
            node_port: 30080,
            ready_nodes: 1,
            ready_endpoints: 1,
        }
    }

    #[test]
    fn the_table_names_the_path_and_keeps_its_columns_aligned() {
        let healthy = Health::new(State::Healthy, None);
        let snapshot = Snapshot {
            kubectl_context: Some("kind-a".into()),
            kubeconfig: None,
            clusters: vec![cluster("kind-a", true, "connected", None)],
            forwards: vec![
                forward(
                    "a-rather-long-forward-name",
                    3000,
                    Some(route(Path::Nodeport, "172.18.0.3:30080", None)),
                    healthy.clone(),
                ),
                forward(
                    "api",
                    8080,
                    Some(route(
                        Path::Tunnel,
                        "wso2-amp/amp-api-7d9f8b6c4d-x2x9q:8080",
                        Some("wso2-amp/amp-api-7d9f8b6c4d-x2x9q:8080"),
                    )),
                    healthy,
                ),
                forward(
                    "otel",
                    21893,
                    Some(route(Path::Tunnel, "-", None)),
                    Health::new(
                        State::Down,
                        Some(Cause::new(CauseId::NoReadyEndpoints, "no ready endpoints")),
                    ),
                ),
            ],
        };
        let table = snapshot.to_string();
        let lines: Vec<&str> = table.lines().skip(1).filter(|l| !l.starts_with("    ")).collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert!(
            lines[2].contains("tunnel → wso2-amp/amp-api-7d9f8b6c4d-x2x9q:8080"),
            "{table}"
        );
        assert!(lines[3].contains("tunnel (no ready pod)"), "{table}");
        // Every column starts where its header does, whatever the lengths before it.
        for header in ["LOCAL", "STATE", "ROUTE"] {
            let at = lines[0].find(header).unwrap();
            for line in &lines[1..] {
                let cell = &line.chars().skip(at).collect::<String>();
                assert!(
                    line.chars().nth(at - 1) == Some(' ') && !cell.starts_with(' '),
                    "{header} misaligned:\n{table}"
                );
            }
        }
        // The counters end where their headers end.
        let end = lines[0].chars().count();
        assert!(lines[1..].iter().all(|l| l.chars().count() == end), "{table}");
    }

    #[test]
    fn the_table_says_when_a_forward_is_open_to_the_network_or_refused_connections() {
        let mut open = forward("console", 3000, None, Health::new(State::Healthy, None));
        open.local = Some("0.0.0.0:3000".parse().unwrap());
        open.stats.refused = 7;
        let lines = cause_lines(&open);
        assert!(
            lines.contains("listening on 0.0.0.0:3000: other machines can reach this forward"),
            "{lines}"
        );
        assert!(
            lines.contains("refused 7 connections while at max_connections"),
            "{lines}"
        );
        let local = forward("api", 8080, None, Health::new(State::Healthy, None));
        assert_eq!(cause_lines(&local), "");
    }

    #[test]
    fn strings_from_the_cluster_cannot_drive_the_terminal() {
        let cause = Cause::new(CauseId::TunnelFailed, "pod \u{1b}[2J\u{1b}]0;owned\u{7}gone\nfake line")
            .with_fix("run \u{1b}[31mthis");
        let f = forward("api", 8080, None, Health::new(State::Down, Some(cause)));
        let out = cause_lines(&f);
        assert!(!out.chars().any(|c| c.is_control() && c != '\n'), "{out:?}");
        assert_eq!(out.lines().count(), 2, "no line of the cluster's making: {out:?}");
        assert!(out.contains("pod ?[2J?]0;owned?gone?fake line"), "{out:?}");
    }
}
