//! The CLI's commands: each turns arguments into library calls and prints the outcome.

mod demo;
mod import;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use porthole::cause::State;
use porthole::config::edit::{self, Edit, EditError, ForwardDraft};
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
#[command(name = "porthole", version, about, after_help = EXAMPLES)]
pub struct Args {
    /// Config file [default: <config dir>/porthole/config.toml, else the built-in preset]
    #[arg(long, global = true, value_name = "FILE", env = config::CONFIG_ENV)]
    config: Option<PathBuf>,
    /// Control socket of the running engine [default: <runtime dir>/porthole/control.sock]
    #[arg(long, global = true, value_name = "PATH", env = control::CONTROL_ENV)]
    control: Option<PathBuf>,
    /// Log filter, in tracing's EnvFilter syntax [default: $RUST_LOG, else info for `up` and
    /// `relay`, warn otherwise; kube's own logs are off: Porthole reports what they would say
    /// as causes]
    #[arg(long, global = true, value_name = "FILTER")]
    log: Option<String>,
    #[command(subcommand)]
    command: Command,
}

const EXAMPLES: &str = "\
Examples:
  porthole up                          run the forwards of the config in the foreground
  porthole wait --timeout 120 && ./run-e2e.sh
                                       start scripts once every forward is healthy
  porthole status --watch              the status table, redrawn on every change
  porthole add web --namespace demo --service web --port 80 --local-port 8080
  porthole doctor                      find out why a forward is down, without an engine
  porthole fix-kubeconfig --dry-run    see what would point kubectl back at the cluster
  porthole completions bash > ~/.local/share/bash-completion/completions/porthole";

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the configured forwards in the foreground until Ctrl-C or SIGTERM; edits to the config file apply as they are saved (SIGHUP: reload now)
    Up,
    /// Show every forward of the running engine: state, cause, route, connections, bytes
    Status {
        /// Print the snapshot as JSON (the shape of `porthole::Snapshot`) instead of the table
        #[arg(long, conflicts_with = "watch")]
        json: bool,
        /// Keep the table on screen, redrawn on every change, until Ctrl-C
        #[arg(long)]
        watch: bool,
    },
    /// Wait until the named forwards (default: every enabled one) are healthy; exit 1 listing the causes if they are not in time
    Wait {
        /// Give up after this many seconds
        #[arg(long, default_value_t = 60, value_name = "SECONDS")]
        timeout: u64,
        /// Forwards to wait for, by name [default: every enabled forward]
        #[arg(value_name = "NAME")]
        names: Vec<String>,
    },
    /// Turn a forward on in the running engine (until the config file changes that forward)
    Enable {
        /// The forward's name, as in the config
        name: String,
    },
    /// Turn a forward off in the running engine (until the config file changes that forward)
    Disable {
        /// The forward's name, as in the config
        name: String,
    },
    /// List the forwards of the config file
    List,
    /// Add a forward to the config file (comments kept, a backup first, written atomically); a running engine applies it
    #[command(group(clap::ArgGroup::new("target").required(true).multiple(false)))]
    Add {
        /// The forward's name: letters, digits, `.`, `_` and `-`
        name: String,
        /// The cluster it is in, by its name in the config (needed once there are several)
        #[arg(long, value_name = "NAME")]
        cluster: Option<String>,
        /// The service's namespace
        #[arg(long, short = 'n')]
        namespace: String,
        /// The service's name
        #[arg(long, group = "target")]
        service: Option<String>,
        /// Instead of a service: pods by their labels, `app=worker,tier=web` (a Deployment's;
        /// through the API server)
        #[arg(long, value_name = "LABELS", group = "target")]
        pods: Option<String>,
        /// Instead of a service: one pod by name (a StatefulSet's keeps its name)
        #[arg(long, value_name = "NAME", group = "target")]
        pod: Option<String>,
        /// The service port, by number or name [default: the service's first port]
        #[arg(long, value_name = "PORT")]
        port: Option<String>,
        /// The local port [default: --port, when it is a number]
        #[arg(long, value_name = "PORT")]
        local_port: Option<u16>,
        /// How to reach the service [default: the cluster's mode, `auto`]; `watch`: the cluster
        /// publishes the port itself (kind extraPortMappings, k3d -p), Porthole only checks it
        #[arg(long, value_parser = ["auto", "nodeport", "tunnel", "watch"])]
        mode: Option<String>,
        /// The address to listen on [default: 127.0.0.1 and ::1]
        #[arg(long, value_name = "ADDRESS")]
        bind: Option<String>,
        /// The health check: `tcp`, `tls` or `http:/path` [default: by what the port speaks]
        #[arg(long)]
        probe: Option<String>,
        /// Add it turned off
        #[arg(long)]
        disabled: bool,
    },
    /// Add the forwards of a script (`kubectl port-forward` lines, socat relays to nodePorts) or
    /// of a kftray JSON export to the config file: shown first, then added in one edit
    /// (comments kept, a backup first, written atomically); every line left out is named
    #[command(after_help = IMPORT_EXAMPLES)]
    Import {
        /// The script or export to read [default: standard input]
        #[arg(value_name = "FILE|-")]
        file: Option<PathBuf>,
        /// The cluster (its name in the config) the forwards go to [default: the one kubectl
        /// should point at]; lines with another cluster's `--context` name it
        #[arg(long, value_name = "NAME")]
        cluster: Option<String>,
        /// Show what would be added and what is left out, and write nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Remove a forward from the config file (a backup first); a running engine applies it
    Remove {
        /// The forward's name, as in the config
        name: String,
    },
    /// Check kubeconfig, context, API, services, nodes and local ports, without a running engine
    Doctor {
        /// Print the checks as JSON
        #[arg(long)]
        json: bool,
    },
    /// Print Porthole's context and kubectl's in one line; exit 0 only if they agree
    Context {
        /// Print both contexts and the kubeconfig's state as JSON
        #[arg(long)]
        json: bool,
    },
    /// Point kubectl at Porthole's context, as `kind export kubeconfig --name NAME` does (backup, lock, atomic)
    FixKubeconfig {
        /// Print the change as a unified diff and write nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Write a config file: a preset, or one with no forwards
    Init {
        /// The preset to write (see `porthole presets`)
        #[arg(long, default_value = config::DEFAULT_PRESET, value_parser = preset_names(), conflicts_with = "empty")]
        preset: String,
        /// Write a config with no forwards yet (add them with `porthole add` or the app's settings)
        #[arg(long)]
        empty: bool,
        /// The context Porthole uses [default: the preset's; with --empty, kubectl's current-context]
        #[arg(long, value_name = "CONTEXT")]
        context: Option<String>,
        /// Overwrite an existing file (it is kept as a backup)
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
        /// Address to relay each connection to, e.g. 172.18.0.3:30080
        target: String,
    },
    /// Print a shell completion script: `porthole completions bash > …/completions/porthole`
    Completions {
        /// The shell
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): `porthole man > porthole.1`
    Man,
    /// Try Porthole with no cluster: the OpenChoreo quick-start on a built-in demo cluster served
    /// on loopback, and Porthole's engine against it; commands typed here break and heal it
    /// (`help` lists them)
    #[command(after_help = DEMO_EXAMPLES)]
    Demo {
        /// Serve a forward on another local port than the preset's (repeatable)
        #[arg(long = "port", value_name = "NAME=PORT")]
        ports: Vec<String>,
        /// Run PROGRAM [ARGS...] instead of the engine, with $PORTHOLE_CONFIG set to the demo's
        /// config (the app: `porthole demo --exec porthole-app`); the demo ends when it does
        #[arg(long, value_name = "PROGRAM", num_args = 1.., allow_hyphen_values = true)]
        exec: Vec<String>,
    },
}

const IMPORT_EXAMPLES: &str = "\
Examples:
  porthole import --dry-run port-forward.sh   what the quick-start's script would give
  porthole import port-forward.sh             add them
  porthole import kftray-configs.json         kftray's export
  history | grep 'port-forward' | porthole import -";

const DEMO_EXAMPLES: &str = "\
Examples:
  porthole demo                        the five quick-start ports on localhost, from a demo cluster
  porthole demo --port console=3001    the console on :3001 instead of :3000
  porthole demo --exec porthole-app    the menu-bar app against the demo cluster
Then, in another terminal: porthole status --watch";

/// The presets' names, for `init --preset`'s possible values.
fn preset_names() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(
        PRESETS
            .iter()
            .map(|(name, description, _)| clap::builder::PossibleValue::new(*name).help(*description)),
    )
}

pub fn init_logging(args: &Args) {
    let default = if matches!(args.command, Command::Up | Command::Relay { .. } | Command::Demo { .. }) {
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
        Command::Up => up(args.config.as_deref(), &control_path, &CancellationToken::new()).await,
        Command::Status { json, watch } => match watch {
            true => status_watch(&control_path).await,
            false => status(&control_path, json).await,
        },
        Command::Wait { timeout, names } => wait(&control_path, Duration::from_secs(timeout), &names).await,
        Command::Enable { name } => toggle(&control_path, &name, true).await,
        Command::Disable { name } => toggle(&control_path, &name, false).await,
        Command::Doctor { json } => run_doctor(args.config.as_deref(), json).await,
        Command::Context { json } => context(args.config.as_deref(), json).await,
        Command::FixKubeconfig { dry_run } => fix_kubeconfig(args.config.as_deref(), dry_run).await,
        Command::List => list(args.config.as_deref()),
        Command::Add {
            name,
            cluster,
            namespace,
            service,
            pods,
            pod,
            port,
            local_port,
            mode,
            bind,
            probe,
            disabled,
        } => {
            let local_port = local_port
                .or_else(|| port.as_deref().and_then(|p| p.parse().ok()))
                .context("give --local-port (the service port is named, not numbered)")?;
            let draft = ForwardDraft {
                name,
                cluster: cluster.unwrap_or_default(),
                namespace,
                service: service.unwrap_or_default(),
                pods: pods.unwrap_or_default(),
                pod: pod.unwrap_or_default(),
                service_port: port.unwrap_or_default(),
                local_port: local_port.to_string(),
                bind: bind.unwrap_or_default(),
                probe: probe.unwrap_or_default(),
                mode: mode.unwrap_or_default(),
                enabled: !disabled,
            };
            edit_config(args.config.as_deref(), Edit::Forward { replaces: None, draft })
        }
        Command::Remove { name } => edit_config(args.config.as_deref(), Edit::RemoveForward(name)),
        Command::Import { file, cluster, dry_run } => {
            import::run(args.config.as_deref(), file.as_deref(), cluster.as_deref(), dry_run).await
        }
        Command::Init {
            preset,
            empty,
            context,
            force,
            file,
        } => {
            let text = match empty {
                true => config::EMPTY.to_string(),
                false => config::preset_text(&preset)?.to_string(),
            };
            let text = match &context {
                Some(context) => edit::apply(&text, &Edit::Context(Some(context.clone())), Path::new("init"))
                    .map_err(|e| anyhow::anyhow!("--context: {e}"))?,
                None => text,
            };
            let what = if empty {
                "a config with no forwards".to_string()
            } else {
                format!("the {preset} preset")
            };
            init(&what, &text, force, file.as_deref().or(args.config.as_deref()))
        }
        Command::Presets => {
            for (name, description, _) in PRESETS {
                println!("{name:<26} {description}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Relay { listen, target } => relay(listen, &target).await,
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut <Args as clap::CommandFactory>::command(),
                "porthole",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { ports, exec } => demo::run(demo::Demo { ports, exec }, &control_path).await,
        Command::Man => {
            clap_mangen::Man::new(<Args as clap::CommandFactory>::command()).render(&mut std::io::stdout())?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The forwards of the config file, one line each.
fn list(config_arg: Option<&Path>) -> anyhow::Result<ExitCode> {
    let (file, config) = ConfigFile::open(config_arg, porthole::kubeconfig::has_context);
    let config = config?;
    match file.source() {
        config::Source::File(path) => println!("{}:", path.display()),
        config::Source::Preset(name) => println!("the built-in {name} preset (no config file yet):"),
        config::Source::Empty => println!("no config file yet:"),
    }
    let rows: Vec<[String; 5]> = config
        .forwards
        .iter()
        .map(|f| {
            [
                f.name.clone(),
                format!(":{}", f.local_port),
                format!(
                    "{}/{}{}",
                    f.namespace,
                    f.target,
                    f.service_port.as_ref().map(|p| format!(":{p}")).unwrap_or_default()
                ),
                serde_json::to_value(f.mode)
                    .ok()
                    .and_then(|m| m.as_str().map(str::to_string))
                    .unwrap_or_default(),
                if f.enabled { "on".into() } else { "off".into() },
            ]
        })
        .collect();
    let header = ["NAME", "LOCAL", "SERVICE", "MODE", "ENABLED"].map(String::from);
    print!("{}", porthole::status::columns(&header, &rows));
    if config.forwards.is_empty() {
        println!("(no forwards: `porthole add` adds one)");
    }
    Ok(ExitCode::SUCCESS)
}

/// One change to the config file, as the settings page makes it (comments kept, a backup
/// first, written atomically). A running engine follows the file and applies it.
fn edit_config(config_arg: Option<&Path>, edit: Edit) -> anyhow::Result<ExitCode> {
    let (file, _) = ConfigFile::open(config_arg, porthole::kubeconfig::has_context);
    let path = file.path().map(Path::to_path_buf);
    let backups = porthole::write::Backups::private()?;
    let config = file.save(&edit, &backups).map_err(|e| match e {
        EditError::Invalid {
            field: Some(field),
            message,
        } => anyhow::anyhow!("--{}: {message}", field.replace('_', "-")),
        other => anyhow::anyhow!(other),
    })?;
    let path = path.map_or_else(|| "the config".to_string(), |p| p.display().to_string());
    match &edit {
        Edit::Forward { draft, .. } => println!("added {} to {path} ({} forwards)", draft.name, config.forwards.len()),
        Edit::RemoveForward(name) => println!("removed {name} from {path} ({} forwards left)", config.forwards.len()),
        Edit::Context(_) | Edit::AddForwards { .. } | Edit::AddCluster { .. } | Edit::RemoveCluster(_) => {}
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs the engine on the config until Ctrl-C, SIGTERM or `stop`.
async fn up(config_arg: Option<&Path>, control_path: &Path, stop: &CancellationToken) -> anyhow::Result<ExitCode> {
    let (file, config) = ConfigFile::open(config_arg, porthole::kubeconfig::has_context);
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
    // Edits to the file are applied as they are saved (its directory made, so that a file
    // created later, by `porthole add` say, is followed too); SIGHUP reads it now.
    if let Some(dir) = file.path().and_then(Path::parent) {
        let _ = std::fs::create_dir_all(dir);
    }
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
            _ = stop.cancelled() => break,
            _ = hangup.recv() => match file.reload() {
                Some(reload) => {
                    info!(config = %file.path().unwrap_or(Path::new("?")).display(), "SIGHUP: reloading the config file");
                    apply_reload(&engine, reload).await;
                }
                None => info!("SIGHUP: running the built-in preset, nothing to reload"),
            },
            reload = change => match reload {
                Some(reload) => {
                    info!(config = %file.path().unwrap_or(Path::new("?")).display(), "the config file changed");
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

/// The status table, redrawn on every change the engine pushes, until Ctrl-C (exit 0) or the
/// engine stops (exit 1). On a terminal each table replaces the last; piped, they follow one
/// another, each after a blank line.
async fn status_watch(control_path: &Path) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    let mut client = Client::connect(control_path).await?;
    client.watch().await?;
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut first = true;
    loop {
        let snapshot = tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
            snapshot = client.next_snapshot() => snapshot,
        };
        let Ok(snapshot) = snapshot else {
            eprintln!("porthole: the engine stopped");
            return Ok(ExitCode::FAILURE);
        };
        let mut out = std::io::stdout().lock();
        if terminal {
            // Home, then clear: the table is redrawn in place.
            write!(out, "\x1b[H\x1b[2J")?;
        } else if !first {
            writeln!(out)?;
        }
        write!(out, "{snapshot}")?;
        out.flush()?;
        first = false;
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
    let (config, source) = Config::discover(config_arg, porthole::kubeconfig::has_context)?;
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

/// The kubeconfig as seen from the context of the cluster kubectl should point at.
async fn inspect_kubeconfig(config_arg: Option<&Path>) -> anyhow::Result<(Config, state::Inspection)> {
    let (config, _) = Config::discover(config_arg, porthole::kubeconfig::has_context)?;
    let cluster = config.kubectl_cluster();
    let expected = cluster.context.clone().with_context(|| {
        format!(
            "cluster `{}` sets no `context`: Porthole follows kubectl's, so there is nothing to compare",
            cluster.name
        )
    })?;
    let files = porthole::kubeconfig::files(cluster);
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

fn init(what: &str, text: &str, force: bool, file: Option<&Path>) -> anyhow::Result<ExitCode> {
    let path = match file {
        Some(path) => path.to_path_buf(),
        None => config::config_path(None).context("no config directory on this system: give a FILE")?,
    };
    // Created whole and exclusively: a file that appears meanwhile is never overwritten.
    if porthole::write::create(&path, text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))? {
        println!("wrote {what} to {}", path.display());
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
            "wrote {what} to {} (the old one is in {})",
            path.display(),
            written.backup.display()
        ),
        Ok(None) => println!("{} already holds {what}", path.display()),
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
