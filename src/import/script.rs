//! Forwards in a shell script: `kubectl port-forward` commands, and the quick-starts' socat
//! relays to a nodePort read with `kubectl get svc … -o jsonpath='{.spec.ports[N].nodePort}'`.

use std::collections::HashMap;

use super::shell::{self, Command};
use super::{Found, NodePortRef, Remote, Skipped, Target};

/// Commands that run another command given after them.
const PREFIXES: [&str; 9] = ["then", "do", "else", "{", "!", "nohup", "exec", "command", "time"];

pub fn parse(text: &str, found: &mut Vec<Found>, skipped: &mut Vec<Skipped>) {
    // Variables holding a nodePort, by name, as assigned so far.
    let mut node_ports: HashMap<String, NodePortRef> = HashMap::new();
    for command in shell::commands(text) {
        let words = command_words(&command.words);
        let Some(program) = words.first() else {
            // Assignments alone: a nodePort read into a variable?
            for word in &command.words {
                if let Some((name, value)) = assignment(word)
                    && let Some(node_port) = node_port_query(value)
                {
                    node_ports.insert(name.to_string(), node_port);
                }
            }
            continue;
        };
        let program = program.rsplit('/').next().unwrap_or(program);
        let result = match program {
            "kubectl" | "oc" if words.iter().any(|w| w == "port-forward") => kubectl(&command, &words[1..]),
            "socat" => socat(&command, &words[1..], &node_ports),
            _ => {
                skipped.push(Skipped::plumbing(&command));
                continue;
            }
        };
        match result {
            Ok(forwards) => found.extend(forwards),
            Err(why) => skipped.push(Skipped::new(command.line, &command.text, why)),
        }
    }
}

/// The words of the command proper: shell keywords, `nohup` and the like, and leading
/// `NAME=value` environment settings taken off.
fn command_words(words: &[String]) -> &[String] {
    let mut rest = words;
    loop {
        match rest.first() {
            Some(w) if PREFIXES.contains(&w.as_str()) => rest = &rest[1..],
            Some(w) if assignment(w).is_some() => rest = &rest[1..],
            Some(w) if matches!(w.as_str(), "local" | "export" | "readonly" | "declare") => {
                // `local x=$(…)`: assignments only.
                return &[];
            }
            _ => return rest,
        }
    }
}

/// `NAME=value`, where NAME is a shell variable name.
fn assignment(word: &str) -> Option<(&str, &str)> {
    let (name, value) = word.split_once('=')?;
    let mut chars = name.chars();
    let first = chars.next()?;
    ((first.is_ascii_alphabetic() || first == '_') && chars.all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .then_some((name, value))
}

/// The kubectl flags that take a value (as the next word unless written `--flag=value`).
const VALUE_FLAGS: [&str; 16] = [
    "-n",
    "--namespace",
    "--context",
    "--address",
    "--kubeconfig",
    "--pod-running-timeout",
    "--cluster",
    "--user",
    "--request-timeout",
    "-s",
    "--server",
    "--token",
    "--as",
    "--as-group",
    "-v",
    "--v",
];

/// Flags and arguments of a kubectl command line.
#[derive(Default)]
struct KubectlArgs {
    namespace: Option<String>,
    context: Option<String>,
    address: Option<String>,
    /// Everything not a flag, in order.
    args: Vec<String>,
}

fn kubectl_args(words: &[String]) -> Result<KubectlArgs, String> {
    let mut out = KubectlArgs::default();
    let mut words = words.iter();
    while let Some(word) = words.next() {
        let (flag, inline) = match word.split_once('=') {
            Some((flag, value)) if flag.starts_with('-') => (flag, Some(value.to_string())),
            _ => (word.as_str(), None),
        };
        // `-nNS`
        let (flag, inline) = match (flag.strip_prefix("-n"), inline) {
            (Some(ns), None) if !ns.is_empty() && !flag.starts_with("--") => ("-n", Some(ns.to_string())),
            (_, inline) => (flag, inline),
        };
        if !flag.starts_with('-') || flag == "-" {
            out.args.push(word.clone());
            continue;
        }
        let value = if VALUE_FLAGS.contains(&flag) {
            match inline {
                Some(value) => Some(value),
                None => Some(words.next().cloned().ok_or_else(|| format!("{flag} needs a value"))?),
            }
        } else {
            None
        };
        match flag {
            "-n" | "--namespace" => out.namespace = value,
            "--context" => out.context = value,
            "--address" => out.address = value,
            _ => {}
        }
    }
    Ok(out)
}

/// `kubectl [flags] port-forward [flags] TYPE/NAME [LOCAL:]REMOTE...`
fn kubectl(command: &Command, words: &[String]) -> Result<Vec<Found>, String> {
    let args = kubectl_args(words)?;
    let mut rest = args.args.iter().skip_while(|a| *a != "port-forward").skip(1);
    let target = rest.next().ok_or("port-forward without a target (svc/NAME)")?;
    let target = match target.split_once('/') {
        Some(("svc" | "service" | "services", name)) => Target::Service(name.to_string()),
        Some(("po" | "pod" | "pods", name)) => Target::Pod(name.to_string()),
        Some((kind, name)) => Target::Workload {
            kind: kind.split('.').next().unwrap_or(kind).to_string(),
            name: name.to_string(),
        },
        None => Target::Pod(target.clone()),
    };
    let pairs: Vec<&String> = rest.collect();
    if pairs.is_empty() {
        return Err("port-forward without ports (LOCAL:REMOTE)".into());
    }
    let address = match args.address.as_deref() {
        None => None,
        Some(list) => bind_of(list)?,
    };
    let mut found = Vec::new();
    for pair in pairs {
        let (local, remote) = match pair.split_once(':') {
            Some((local, remote)) => (local, remote),
            None => (pair.as_str(), pair.as_str()),
        };
        if remote.is_empty() {
            return Err(format!("`{pair}`: no remote port"));
        }
        let remote = Remote::Port(remote.to_string());
        let local = match local {
            // `:REMOTE`: kubectl picks a free port each time; Porthole keeps one, the remote's.
            "" => match &remote {
                Remote::Port(p) => p
                    .parse::<u16>()
                    .map_err(|_| format!("`{pair}`: name a local port for the named port `{p}`"))?,
                Remote::NodePort(_) => unreachable!("kubectl gives service ports"),
            },
            local => local
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("`{pair}`: `{local}` is not a local port"))?,
        };
        found.push(Found {
            line: command.line,
            text: command.text.clone(),
            name: None,
            namespace: args.namespace.clone(),
            target: target.clone(),
            local_port: local,
            remote,
            bind: address.clone(),
            context: args.context.clone(),
        });
    }
    Ok(found)
}

/// `--address`'s list as a bind address: loopback only is Porthole's default (`None`).
fn bind_of(list: &str) -> Result<Option<String>, String> {
    let others: Vec<&str> = list
        .split(',')
        .map(str::trim)
        .filter(|a| !matches!(*a, "localhost" | "127.0.0.1" | "::1" | ""))
        .collect();
    match others.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one.to_string())),
        _ => Err(format!(
            "--address {list}: Porthole listens on one address (or on 127.0.0.1 and ::1)"
        )),
    }
}

/// `$(kubectl get svc NAME -n NS -o jsonpath='{.spec.ports[N].nodePort}')`, or by port name
/// (`[?(@.name=="http")]`).
fn node_port_query(value: &str) -> Option<NodePortRef> {
    let inner = value.strip_prefix("$(")?.strip_suffix(')')?;
    let command = shell::commands(inner).into_iter().next()?;
    let words = command_words(&command.words);
    if words.first().map(|w| w.rsplit('/').next().unwrap_or(w)) != Some("kubectl") {
        return None;
    }
    let args = kubectl_args(&words[1..]).ok()?;
    let mut positional = args.args.iter().skip_while(|a| *a != "get").skip(1);
    let kind = positional.next()?;
    let service = match kind.split_once('/') {
        Some(("svc" | "service" | "services", name)) => name.to_string(),
        None if matches!(kind.as_str(), "svc" | "service" | "services") => positional.next()?.clone(),
        _ => return None,
    };
    // -o jsonpath=… comes through kubectl_args as a positional (`-o` is not a value flag there).
    let output = words
        .iter()
        .zip(words.iter().skip(1).map(Some).chain([None]))
        .find_map(|(w, next)| {
            let w = w.as_str();
            if let Some(rest) = w.strip_prefix("-o=").or_else(|| w.strip_prefix("--output=")) {
                return Some(rest.to_string());
            }
            if let Some(rest) = w.strip_prefix("-o").filter(|r| r.starts_with("jsonpath")) {
                return Some(rest.to_string());
            }
            matches!(w, "-o" | "--output").then(|| next.cloned()).flatten()
        })?;
    let path = output.strip_prefix("jsonpath=")?;
    let path = path.trim_matches(|c| c == '{' || c == '}');
    let index = path.strip_prefix(".spec.ports[")?.strip_suffix("].nodePort")?;
    let port = match index.parse::<usize>() {
        Ok(n) => super::PortChoice::Index(n),
        Err(_) => {
            let name = index
                .strip_prefix("?(@.name==")?
                .strip_suffix(')')?
                .trim_matches(|c| c == '"' || c == '\'');
            super::PortChoice::Name(name.to_string())
        }
    };
    Some(NodePortRef {
        namespace: args.namespace,
        service,
        port,
    })
}

/// `socat TCP-LISTEN:LOCAL[,opts] TCP:HOST:NODEPORT`
fn socat(command: &Command, words: &[String], node_ports: &HashMap<String, NodePortRef>) -> Result<Vec<Found>, String> {
    let addresses: Vec<&String> = words.iter().filter(|w| !w.starts_with('-')).collect();
    let [listen, connect] = addresses.as_slice() else {
        return Err("socat needs a listening and a connecting address".into());
    };
    let (kind, spec) = listen.split_once(':').ok_or("socat: no TCP-LISTEN address")?;
    if !matches!(
        kind.to_ascii_uppercase().as_str(),
        "TCP-LISTEN" | "TCP4-LISTEN" | "TCP6-LISTEN" | "TCP-L" | "TCP4-L" | "TCP6-L"
    ) {
        return Err(format!("socat {kind}: only TCP listeners are forwards Porthole makes"));
    }
    let mut options = spec.split(',');
    let local: u16 = options
        .next()
        .and_then(|p| p.parse().ok())
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("socat {listen}: no local port"))?;
    // Its `bind=` is not carried over: the quick-starts bound 0.0.0.0 only because socat ran
    // in a container whose ports Docker published; Porthole on the host serves loopback.
    let bind = None;
    let mut parts = connect.splitn(3, ':');
    let (kind, _host, port) = (parts.next(), parts.next(), parts.next());
    if !kind.is_some_and(|k| matches!(k.to_ascii_uppercase().as_str(), "TCP" | "TCP4" | "TCP6" | "TCP-CONNECT")) {
        return Err(format!("socat {connect}: not a TCP connection"));
    }
    let port = port.ok_or_else(|| format!("socat {connect}: no port"))?;
    let port = port.split(',').next().unwrap_or(port);
    let remote = match port.strip_prefix('$') {
        Some(var) => {
            let var = var.trim_start_matches('{').trim_end_matches('}');
            let node_port = node_ports.get(var).ok_or_else(|| {
                format!("socat to ${var}: the script does not read it with `kubectl get svc … -o jsonpath='{{.spec.ports[N].nodePort}}'`")
            })?;
            Remote::NodePort(super::NodePortSource::Query(node_port.clone()))
        }
        None => Remote::NodePort(super::NodePortSource::Literal(
            port.parse()
                .map_err(|_| format!("socat {connect}: `{port}` is not a port"))?,
        )),
    };
    let (namespace, target) = match &remote {
        Remote::NodePort(super::NodePortSource::Query(q)) => (q.namespace.clone(), Target::Service(q.service.clone())),
        _ => (None, Target::NodePort),
    };
    Ok(vec![Found {
        line: command.line,
        text: command.text.clone(),
        name: None,
        namespace,
        target,
        local_port: local,
        remote,
        bind,
        context: None,
    }])
}
