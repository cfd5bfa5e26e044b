//! `porthole demo`: the OpenChoreo quick-start on the built-in demo cluster (`porthole-demo`,
//! served on loopback), and Porthole against it: the engine, or a program given with `--exec`
//! (the app). Lines typed on the terminal break and heal the cluster (`help` lists them).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use porthole::config::{self, Config, DEFAULT_PRESET, Probe, Source};
use porthole_demo::FakeCluster;
use porthole_demo::console::{self, Line};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use toml_edit::{DocumentMut, value};
use tracing::warn;

/// What `porthole demo` was asked for.
pub struct Demo {
    /// Local ports by forward name, replacing the preset's.
    pub ports: Vec<String>,
    /// A program to run instead of the engine, and its arguments.
    pub exec: Vec<String>,
}

pub async fn run(demo: Demo, control_path: &Path) -> anyhow::Result<ExitCode> {
    let ports = parse_ports(&demo.ports)?;
    let mut cluster = FakeCluster::openchoreo().await;
    let kubeconfig = cluster.kubeconfig();
    let dir = kubeconfig.parent().context("the demo kubeconfig has a directory")?;
    let config_path = dir.join("porthole.toml");
    let text = demo_config(&kubeconfig, &ports)?;
    let config = Config::parse(&text, &Source::File(config_path.clone())).map_err(|e| anyhow::anyhow!("{e}"))?;
    std::fs::write(&config_path, &text).with_context(|| format!("write {}", config_path.display()))?;

    println!(
        "demo cluster {} (kind's {}): API at https://{}, no Kubernetes needed",
        cluster.name(),
        cluster.context(),
        cluster.api_addr()
    );
    println!("  kubeconfig {}", kubeconfig.display());
    println!("  config     {}", config_path.display());
    println!();
    for forward in &config.forwards {
        let scheme = match forward.probe {
            Probe::Tls => "https",
            _ => "http",
        };
        println!(
            "  {scheme}://localhost:{:<6} {} ({}/{})",
            forward.local_port, forward.name, forward.namespace, forward.target
        );
    }
    println!();
    println!("Type a command to break or heal the cluster (`help` lists them; `quit` ends the demo).");

    let stop = CancellationToken::new();
    let work = async {
        match demo.exec.split_first() {
            Some((program, args)) => exec(program, args, &config_path, &stop).await,
            None => super::up(Some(&config_path), control_path, &stop).await,
        }
    };
    tokio::pin!(work);
    let mut lines = Some(stdin_lines());
    loop {
        let line = async {
            match lines.as_mut() {
                Some(lines) => lines.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            result = &mut work => return result,
            line = line => match line {
                // Standard input closed (a script, a service): the demo runs until a signal.
                None => lines = None,
                Some(line) => match console::parse(&line) {
                    Line::Empty => {}
                    Line::Quit => stop.cancel(),
                    Line::Command(words) => match console::run(&mut cluster, &words).await {
                        Ok(()) => println!("ok"),
                        Err(e) => println!("error: {e:#}"),
                    },
                },
            },
        }
    }
}

/// `NAME=PORT` pairs, by name.
fn parse_ports(pairs: &[String]) -> anyhow::Result<BTreeMap<String, u16>> {
    let mut ports = BTreeMap::new();
    for pair in pairs {
        let (name, port) = pair
            .split_once('=')
            .with_context(|| format!("--port {pair:?}: expected NAME=PORT, e.g. console=3001"))?;
        let port: u16 = port
            .parse()
            .with_context(|| format!("--port {pair:?}: {port:?} is not a port number"))?;
        ports.insert(name.to_string(), port);
    }
    Ok(ports)
}

/// The default preset pointed at the demo cluster's own kubeconfig (the user's is never read
/// or written), with the local ports asked for.
fn demo_config(kubeconfig: &Path, ports: &BTreeMap<String, u16>) -> anyhow::Result<String> {
    let mut doc: DocumentMut = config::preset_text(DEFAULT_PRESET)?
        .parse()
        .context("the built-in preset is TOML")?;
    doc["cluster"]["kubeconfig"] = value(kubeconfig.display().to_string());
    let mut names = Vec::new();
    if let Some(forwards) = doc.get_mut("forward").and_then(|f| f.as_array_of_tables_mut()) {
        for forward in forwards.iter_mut() {
            let name = forward
                .get("name")
                .and_then(|n| n.as_str())
                .unwrap_or_default()
                .to_string();
            if let Some(port) = ports.get(&name) {
                forward["local_port"] = value(i64::from(*port));
            }
            names.push(name);
        }
    }
    if let Some(unknown) = ports.keys().find(|name| !names.contains(name)) {
        bail!(
            "--port {unknown}=…: the demo has no forward {unknown:?} (it has {})",
            names.join(", ")
        );
    }
    Ok(format!(
        "# Porthole's demo: the {DEFAULT_PRESET} preset against the built-in demo cluster.\n{doc}"
    ))
}

/// Standard input's lines, read on a thread of their own: a read pending on a terminal never
/// holds up the runtime's shutdown.
fn stdin_lines() -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Runs `program` with `$PORTHOLE_CONFIG` set to the demo's config until it exits; Ctrl-C,
/// SIGTERM or `quit` ask it to end with SIGTERM.
async fn exec(program: &str, args: &[String], config: &Path, stop: &CancellationToken) -> anyhow::Result<ExitCode> {
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .env(config::CONFIG_ENV, config)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot run {program}"))?;
    let mut terminate = super::signal(tokio::signal::unix::SignalKind::terminate())?;
    let status = tokio::select! {
        status = child.wait() => status,
        _ = stop.cancelled() => end(&mut child).await,
        _ = tokio::signal::ctrl_c() => end(&mut child).await,
        _ = terminate.recv() => end(&mut child).await,
    }
    .with_context(|| format!("wait for {program}"))?;
    Ok(match status.success() {
        true => ExitCode::SUCCESS,
        false => {
            warn!(%status, program, "the program ended with a failure");
            ExitCode::FAILURE
        }
    })
}

/// Asks the child to end (SIGTERM) and waits for it.
async fn end(child: &mut tokio::process::Child) -> std::io::Result<std::process::ExitStatus> {
    if let Some(pid) = child.id().and_then(|pid| libc::pid_t::try_from(pid).ok()) {
        // SAFETY: plain kill(2) on our own child, which has not been reaped yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    child.wait().await
}
