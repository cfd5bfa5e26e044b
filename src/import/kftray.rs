//! kftray's JSON export: an array of configs (`service` or `target`, `namespace`, `local_port`,
//! `remote_port`, `context`, `workload_type`, `protocol`, `alias`, `local_address`).

use serde::Deserialize;

use super::{Found, Remote, Skipped, Target};

#[derive(Debug, Deserialize)]
struct Config {
    service: Option<String>,
    target: Option<String>,
    namespace: Option<String>,
    local_port: Option<u16>,
    remote_port: Option<u16>,
    context: Option<String>,
    workload_type: Option<String>,
    protocol: Option<String>,
    alias: Option<String>,
    local_address: Option<String>,
    remote_address: Option<String>,
}

/// Whether `text` is JSON rather than a script.
pub fn is_json(text: &str) -> bool {
    matches!(text.trim_start().chars().next(), Some('[' | '{'))
}

pub fn parse(text: &str, found: &mut Vec<Found>, skipped: &mut Vec<Skipped>) {
    let values: Vec<serde_json::Value> = match serde_json::from_str(text) {
        Ok(serde_json::Value::Array(values)) => values,
        Ok(value @ serde_json::Value::Object(_)) => vec![value],
        Ok(_) => {
            skipped.push(Skipped::new(1, "", "a kftray export is an array of configs".into()));
            return;
        }
        Err(e) => {
            skipped.push(Skipped::new(e.line(), "", format!("not valid JSON: {e}")));
            return;
        }
    };
    let lines = object_lines(text);
    for (i, value) in values.into_iter().enumerate() {
        let line = lines.get(i).copied().unwrap_or(1);
        let text = value.to_string();
        match serde_json::from_value::<Config>(value) {
            Ok(config) => match config_forward(config, line, &text) {
                Ok(forward) => found.push(forward),
                Err(why) => skipped.push(Skipped::new(line, &text, why)),
            },
            Err(e) => skipped.push(Skipped::new(line, &text, format!("not a kftray config: {e}"))),
        }
    }
}

fn config_forward(config: Config, line: usize, text: &str) -> Result<Found, String> {
    if let Some(protocol) = config.protocol.as_deref().filter(|p| !p.eq_ignore_ascii_case("tcp")) {
        return Err(format!("{protocol}: Porthole relays TCP only"));
    }
    let target = match config.workload_type.as_deref().unwrap_or("service") {
        "service" => Target::Service(config.service.ok_or("a service config without `service`")?),
        "pod" => Target::PodSelector(config.target.ok_or("a pod config without `target` (its labels)")?),
        "proxy" => Target::Proxy(config.remote_address.unwrap_or_default()),
        other => return Err(format!("workload type `{other}` is not one Porthole knows")),
    };
    let remote = config.remote_port.ok_or("no `remote_port`")?;
    let local = config.local_port.filter(|p| *p != 0).unwrap_or(remote);
    let bind = match config.local_address.as_deref() {
        None | Some("" | "127.0.0.1" | "localhost" | "::1") => None,
        Some(address) => Some(address.to_string()),
    };
    Ok(Found {
        line,
        text: text.to_string(),
        name: config.alias.filter(|a| !a.is_empty()),
        namespace: config.namespace,
        target,
        local_port: local,
        remote: Remote::Port(remote.to_string()),
        bind,
        context: config.context,
    })
}

/// The line each element of the top-level array starts on (or 1 for a lone object).
fn object_lines(text: &str) -> Vec<usize> {
    let mut lines = Vec::new();
    let (mut line, mut depth, mut in_string, mut escaped) = (1, 0usize, false, false);
    for c in text.chars() {
        if c == '\n' {
            line += 1;
        }
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '[' | '{' => {
                if c == '{' && depth <= 1 {
                    lines.push(line);
                }
                depth += 1;
            }
            ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    lines
}
