//! The CLI's commands: each turns arguments into library calls and prints the outcome.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use porthole::cause::State;
use porthole::config::{self, Config, ConfigFile, PRESETS, Reload};
use porthole::control::{self, Client};
use porthole::engine::ForwardStatus;
use porthole::kubeconfig::state;
use porthole::kubeconfig::tools::Tools;
use porthole::write::LockWait;
use porthole::{Engine, Tuning, doctor};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// Reliable localhost port forwards to services in local Kubernetes clusters (kind, k3d).
#[derive(Debug, Parser)]
#[command(name = "porthole", version, about)]
pub struct Args {
    /// Config file [default: $PORTHOLE_CONFIG, else <config dir>/porthole/config.toml, else the built-in preset]
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Control socket of the running engine [default: $PORTHOLE_CONTROL, else <runtime dir>/porthole/control.sock]
    #[arg(long, global = true, value_name = "PATH")]
    control: Option<PathBuf>,
    /// Log filter (tracing's EnvFilter syntax) [default: $RUST_LOG, else info for `up`, warn otherwise;
    /// kube's own logs are off: Porthole reports what they would say as causes]
    #[arg(long, global = true, value_name = "FILTER")]
    log: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the configured forwards in the foreground until Ctrl-C or SIGTERM; edits to the config file apply as they are saved (SIGHUP: reload now)
    Up,
    /// Show every forward of the running engine: state, cause, route, connections, bytes
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Wait until the named forwards (default: every enabled one) are healthy
    Wait {
        /// Give up after this many seconds, listing the causes
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        names: Vec<String>,
    },
    /// Turn a forward on in the running engine
    Enable { name: String },
    /// Turn a forward off in the running engine
    Disable { name: String },
    /// Check kubeconfig, context, API, services, nodes and local ports, without a running engine
    Doctor {
        #[arg(long)]
        json: bool,
    },
    /// Print Porthole's context and kubectl's in one line; exit 0 only if they agree
    Context {
        #[arg(long)]
        json: bool,
    },
    /// Point kubectl at Porthole's context, as `kind export kubeconfig --name NAME` does (backup, lock, atomic)
    FixKubeconfig {
        /// Print the change as a unified diff and write nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Write a preset config file
    Init {
        #[arg(long, default_value = config::DEFAULT_PRESET)]
        preset: String,
        /// Overwrite an existing file
        #[arg(long)]
        force: bool,
        /// Where to write [default: the config path]
        file: Option<PathBuf>,
    },
    /// List the built-in presets
    Presets,
    /// Relay one local address to one fixed target, socat-style (no cluster involved)
    Relay {
        /// Address to listen on, e.g. 127.0.0.1:9000 (port 0: any free port, printed on stdout)
        listen: SocketAddr,
        /// Address to relay each connection to
        target: String,
    },
}

pub fn init_logging(args: &Args) {
    let default = if matches!(args.command, Command::Up | Command::Relay { .. }) {
        "info"
    } else {
        "warn"
    };
    let filter = args
        .log
        .clone()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| default.to_string());
    // kube's and hyper's own logs stay off unless asked for by name: Porthole reports what
    // they would say as causes, and their debug output can carry request details.
    let filter = if filter.contains("kube") || filter.contains("hyper") {
        filter
    } else {
        format!("{filter},kube_runtime=off,kube_client=off,hyper=off,hyper_util=off,rustls=warn")
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let control_path = control::socket_path(args.control.as_deref());
    match args.command {
        Command::Up => up(args.config.as_deref(), &control_path).await,
        Command::Status { json } => status(&control_path, json).await,
        Command::Wait { timeout, names } => wait(&control_path, Duration::from_secs(timeout), &names).await,
        Command::Enable { name } => toggle(&control_path, &name, true).await,
        Command::Disable { name } => toggle(&control_path, &name, false).await,
        Command::Doctor { json } => run_doctor(args.config.as_deref(), json).await,
        Command::Context { json } => context(args.config.as_deref(), json).await,
        Command::FixKubeconfig { dry_run } => fix_kubeconfig(args.config.as_deref(), dry_run).await,
        Command::Init { preset, force, file } => init(&preset, force, file.as_deref().or(args.config.as_deref())),
        Command::Presets => {
            for (name, description, _) in PRESETS {
                println!("{name:<26} {description}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Relay { listen, target } => relay(listen, &target).await,
    }
}

async fn up(config_arg: Option<&Path>, control_path: &Path) -> anyhow::Result<ExitCode> {
    let (file, config) = ConfigFile::open(config_arg);
    let config = config?;
    let file = Arc::new(file);
    let listener = control::bind(control_path).await?;
    info!(config = %file.source(), forwards = config.forwards.len(), control = %control_path.display(), "starting");
    let engine = Engine::start(config, Tuning::default());
    let cancel = CancellationToken::new();
    let server = tokio::spawn(control::serve(
        engine.clone(),
        listener,
        control_path.to_path_buf(),
        cancel.clone(),
    ));
    // Edits to the file are applied as they are saved; SIGHUP reads it now.
    let mut changes = match file.watch() {
        Some(Ok(watch)) => Some(watch),
        Some(Err(e)) => {
            warn!(error = %e, "cannot watch the config file: edits apply on SIGHUP only");
            None
        }
        None => None,
    };
    let mut terminate = signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut hangup = signal(tokio::signal::unix::SignalKind::hangup())?;
    loop {
        let change = async {
            match changes.as_mut() {
                Some(watch) => watch.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
            _ = hangup.recv() => match file.reload() {
                Some(reload) => {
                    info!(config = %file.source(), "SIGHUP: reloading the config file");
                    apply_reload(&engine, reload).await;
                }
                None => info!("SIGHUP: running the built-in preset, nothing to reload"),
            },
            reload = change => match reload {
                Some(reload) => {
                    info!(config = %file.source(), "the config file changed");
                    apply_reload(&engine, reload).await;
                }
                None => {
                    warn!("the config file's watch ended: edits apply on SIGHUP only");
                    changes = None;
                }
            },
        }
    }
    cancel.cancel();
    let _ = server.await;
    tokio::select! {
        _ = engine.shutdown(Tuning::default().drain_timeout) => {}
        _ = tokio::signal::ctrl_c() => warn!("second interrupt: exiting without draining"),
        _ = terminate.recv() => warn!("second SIGTERM: exiting without draining"),
    }
    control::remove(control_path);
    Ok(ExitCode::SUCCESS)
}

fn signal(kind: tokio::signal::unix::SignalKind) -> anyhow::Result<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(kind).context("cannot install a signal handler")
}

/// Applies what the config file gave; a broken file keeps the running config (a typo must not
/// take every forward down).
async fn apply_reload(engine: &Engine, reload: Reload) {
    match reload {
        Reload::Changed(config) => {
            let forwards = config.forwards.len();
            match engine.apply(config).await {
                Ok(()) => info!(forwards, "config reloaded"),
                Err(e) => warn!(error = %e, "reload failed"),
            }
        }
        Reload::Invalid(e) => error!("config not reloaded: {e}"),
    }
}

async fn status(control_path: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let snapshot = Client::connect(control_path).await?.status().await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&snapshot)?);
    } else {
        print!("{snapshot}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn wait(control_path: &Path, timeout: Duration, names: &[String]) -> anyhow::Result<ExitCode> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut client = connect_by(control_path, deadline, timeout).await?;
    let first = async {
        client.watch().await?;
        client.next_snapshot().await
    };
    let Ok(first) = tokio::time::timeout_at(deadline, first).await else {
        bail!(
            "Porthole's engine on {} did not answer in {}s",
            control_path.display(),
            timeout.as_secs()
        );
    };
    let mut last = first?;
    for name in names {
        if last.forward(name).is_none() {
            bail!("no forward named `{name}`");
        }
    }
    loop {
        let waiting: Vec<&ForwardStatus> = last
            .forwards
            .iter()
            .filter(|f| {
                if names.is_empty() {
                    f.enabled
                } else {
                    names.contains(&f.name)
                }
            })
            .filter(|f| f.health.state != State::Healthy)
            .collect();
        if waiting.is_empty() {
            return Ok(ExitCode::SUCCESS);
        }
        match tokio::time::timeout_at(deadline, client.next_snapshot()).await {
            Ok(snapshot) => last = snapshot?,
            Err(_) => {
                eprintln!("porthole: not healthy after {}s:", timeout.as_secs());
                eprint!("{}", porthole::status::table(&waiting));
                return Ok(ExitCode::FAILURE);
            }
        }
    }
}

/// Connects to the control socket, retrying until `deadline`: `porthole up & porthole wait`
/// starts both at once, and the engine binds its socket a moment later.
async fn connect_by(control_path: &Path, deadline: tokio::time::Instant, timeout: Duration) -> anyhow::Result<Client> {
    let mut pause = Duration::from_millis(20);
    loop {
        match Client::connect(control_path).await {
            Ok(client) => return Ok(client),
            // Waiting does not make an untrusted socket trusted.
            Err(e @ porthole::control::ControlError::Untrusted { .. }) => bail!(e),
            Err(e) if tokio::time::Instant::now() + pause >= deadline => {
                bail!(
                    "waited {}s for Porthole's engine and none started: {e}",
                    timeout.as_secs()
                )
            }
            Err(_) => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(250));
            }
        }
    }
}

async fn toggle(control_path: &Path, name: &str, enabled: bool) -> anyhow::Result<ExitCode> {
    Client::connect(control_path).await?.set_enabled(name, enabled).await?;
    Ok(ExitCode::SUCCESS)
}

async fn run_doctor(config_arg: Option<&Path>, json: bool) -> anyhow::Result<ExitCode> {
    let (config, source) = Config::discover(config_arg)?;
    let report = doctor::run(&config, Duration::from_secs(5)).await;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("config: {source}");
        for check in &report.checks {
            let mark = match (check.ok, check.warning) {
                (true, false) => "ok  ",
                (true, true) => "warn",
                (false, _) => "FAIL",
            };
            println!("{mark} {:<26} {}", check.check, check.detail);
            if let Some(fix) = &check.fix {
                println!("     {:<26} fix: {fix}", "");
            }
        }
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The kubeconfig as seen from the configured context.
async fn inspect_kubeconfig(config_arg: Option<&Path>) -> anyhow::Result<(Config, state::Inspection)> {
    let (config, _) = Config::discover(config_arg)?;
    let expected =
        config.cluster.context.clone().context(
            "the config sets no `cluster.context`: Porthole follows kubectl's, so there is nothing to compare",
        )?;
    let files = porthole::kubeconfig::files(&config.cluster);
    let inspection = state::inspect(files, &expected, &Tools::from_env()).await?;
    Ok((config, inspection))
}

async fn context(config_arg: Option<&Path>, json: bool) -> anyhow::Result<ExitCode> {
    let (_, inspection) = inspect_kubeconfig(config_arg).await?;
    let state = &inspection.state;
    if json {
        println!("{}", serde_json::to_string(state)?);
    } else {
        match state.fix() {
            Some(fix) => println!("{}: {} (fix: {fix})", state.id(), state.sentence()),
            None => println!("{}: {}", state.id(), state.sentence()),
        }
    }
    Ok(if state.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn fix_kubeconfig(config_arg: Option<&Path>, dry_run: bool) -> anyhow::Result<ExitCode> {
    let tools = Tools::from_env();
    let (_, inspection) = inspect_kubeconfig(config_arg).await?;
    let Some(plan) = state::plan(&inspection, &tools).await? else {
        println!("nothing to fix: {}", inspection.state.sentence());
        return Ok(ExitCode::SUCCESS);
    };
    if dry_run {
        print!("{}", plan.diff());
        println!("would {} in {} (nothing written)", plan.summary, plan.file.display());
        return Ok(ExitCode::SUCCESS);
    }
    let backups = porthole::write::Backups::private()?;
    let applied = tokio::task::spawn_blocking(move || {
        let written = plan.apply(&backups, LockWait::default());
        (plan, written)
    })
    .await?;
    match applied {
        (plan, Ok(Some(written))) => {
            println!(
                "{} in {} (backup: {})",
                plan.summary,
                written.target.display(),
                written.backup.display()
            )
        }
        (plan, Ok(None)) => println!("{} was already right", plan.file.display()),
        (_, Err(e)) => bail!(e),
    }
    Ok(ExitCode::SUCCESS)
}

fn init(preset: &str, force: bool, file: Option<&Path>) -> anyhow::Result<ExitCode> {
    let text = config::preset_text(preset)?;
    let path = match file {
        Some(path) => path.to_path_buf(),
        None => config::config_path(None).context("no config directory on this system: give a FILE")?,
    };
    // Created whole and exclusively: a file that appears meanwhile is never overwritten.
    if porthole::write::create(&path, text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))? {
        println!("wrote the {preset} preset to {}", path.display());
        return Ok(ExitCode::SUCCESS);
    }
    if !force {
        bail!("{} exists; use --force to overwrite it", path.display());
    }
    // --force over a config of the user's: kept as a backup first, like every other edit.
    let backups = porthole::write::Backups::private()?;
    let replaced = porthole::write::replace(&path, &backups, porthole::write::LockWait::default(), |_| {
        Ok::<_, std::convert::Infallible>(text.to_string())
    })?;
    match replaced {
        Ok(Some(written)) => println!(
            "wrote the {preset} preset to {} (the old one is in {})",
            path.display(),
            written.backup.display()
        ),
        Ok(None) => println!("{} already holds the {preset} preset", path.display()),
        Err(never) => match never {},
    }
    Ok(ExitCode::SUCCESS)
}

async fn relay(listen: SocketAddr, target: &str) -> anyhow::Result<ExitCode> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let local = listener.local_addr()?;
    println!("listening on {local}");
    let target = target.to_string();
    let mut failed = porthole::descriptors::Throttle::new(Duration::from_secs(10));
    loop {
        let (client, _) = tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    if let Some(unsaid) = failed.note(std::time::Instant::now()) {
                        warn!(error = %e, unsaid, "accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let target = target.clone();
        tokio::spawn(async move {
            let upstream = match tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(&target)).await {
                Ok(Ok(upstream)) => upstream,
                Ok(Err(e)) => return warn!(%target, error = %e, "cannot connect"),
                Err(_) => return warn!(%target, "no answer in 10 s"),
            };
            porthole::relay::prepare(&client, &upstream);
            let (up, down) = Default::default();
            let _ = porthole::relay::relay(&client, &upstream, &up, &down).await;
        });
    }
}
