//! Break-and-heal commands on the quick-start cluster, one line each (`porthole demo` reads
//! them from its terminal): stop a pod, move a node port, take the API down, and back.

use anyhow::{Context, Result, bail};

use crate::backend::Backend;
use crate::openchoreo::{CONTROL_PLANE, OpenChoreo, QuickStartService, SERVICES, WORKER};

/// The commands, as `help` prints them.
pub const HELP: &str = "\
commands (SERVICE is a quick-start service name, e.g. amp-console):
  status              services, node ports, nodes, backends
  stop SERVICE        the pod goes down: endpoint unready, backend stopped
  start SERVICE       the pod comes back on a new port: endpoint moved and ready
  kill SERVICE        the backend dies but the endpoint stays ready (a zombie)
  restart SERVICE     unready, new backend port, slice updated, ready (one event each)
  nodeport SERVICE    give the service's first port a new node port
  delete SERVICE      delete the service (its endpoint slices go too)
  recreate SERVICE    delete and apply the service again (new node ports)
  clusterip SERVICE   change the service to type ClusterIP (no node ports)
  restore SERVICE     apply the quick-start service as installed (type and ports)
  api down|up         docker-proxy in front of a stopped / started control plane
  auth off|on         every request answers 401 / authorized again
  node down|up|move|remove NODE
  context NAME        make kubectl's current-context NAME (a dead cluster)
  compact             forget watch history (watches from before get 410)
  bookmarks           send a BOOKMARK to every watch
  help, quit";

/// What a command line asks for: nothing, to quit, or a command to [`run`].
pub enum Line<'a> {
    Empty,
    Quit,
    Command(Vec<&'a str>),
}

/// Splits a line into words and recognises `quit`/`exit`.
pub fn parse(line: &str) -> Line<'_> {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        [] => Line::Empty,
        ["quit" | "exit"] => Line::Quit,
        _ => Line::Command(words),
    }
}

/// Runs one command (words as [`parse`] split them); what it reports goes to stdout.
pub async fn run(oc: &mut OpenChoreo, words: &[&str]) -> Result<()> {
    match words {
        ["help"] => println!("{HELP}"),
        ["status"] => print_status(oc),
        ["stop", name] => {
            let spec = spec(name)?;
            oc.cluster
                .set_endpoint_ready(spec.namespace, &OpenChoreo::pod(name), false);
            backend(oc, name)?.stop().await;
        }
        ["start", name] => {
            let spec = spec(name)?;
            let backend = oc.backends.get_mut(spec.name).context("no backend")?;
            backend.restart().await;
            let pod = OpenChoreo::pod(name);
            oc.cluster.set_endpoint_backend(spec.namespace, &pod, backend.addr());
            oc.cluster.set_endpoint_ready(spec.namespace, &pod, true);
        }
        ["kill", name] => {
            spec(name)?;
            backend(oc, name)?.stop().await;
        }
        ["restart", name] => {
            let spec = spec(name)?;
            let backend = oc.backends.get_mut(spec.name).context("no backend")?;
            oc.cluster
                .restart_pod(spec.namespace, &OpenChoreo::pod(name), backend)
                .await;
        }
        ["nodeport", name] => {
            let spec = existing(oc, name)?;
            let port = oc.change_node_port(spec.namespace, name, 0);
            println!("{name}: first node port is now {port}");
        }
        ["delete", name] => {
            let spec = existing(oc, name)?;
            oc.delete_service(spec.namespace, name);
        }
        ["recreate", name] => {
            let spec = spec(name)?;
            oc.delete_service(spec.namespace, name);
            oc.apply(spec);
        }
        ["clusterip", name] => {
            let spec = existing(oc, name)?;
            let mut service = oc.service(spec.namespace, name).context("service vanished")?;
            service.spec.get_or_insert_default().type_ = Some("ClusterIP".to_string());
            oc.apply_service(service);
        }
        ["restore", name] => oc.apply(spec(name)?),
        ["api", "down"] => oc.set_api_reachable(false),
        ["api", "up"] => oc.set_api_reachable(true),
        ["auth", "off"] => oc.set_unauthorized(true),
        ["auth", "on"] => oc.set_unauthorized(false),
        ["node", action, node] => node_command(oc, action, node)?,
        ["context", name] => oc.set_current_context(name),
        ["compact"] => oc.compact(),
        ["bookmarks"] => oc.send_bookmarks(),
        _ => bail!("unknown command {:?}; try help", words.join(" ")),
    }
    Ok(())
}

fn node_command(oc: &OpenChoreo, action: &str, node: &str) -> Result<()> {
    if oc.node_ip(node).is_none() {
        bail!("no node {node:?}");
    }
    match action {
        "down" => oc.set_node_ready(node, false),
        "up" => oc.set_node_ready(node, true),
        "move" => println!("{node} is now at {}", oc.move_node(node)),
        "remove" => oc.remove_node(node),
        _ => bail!("node actions: down, up, move, remove"),
    }
    Ok(())
}

fn spec(name: &str) -> Result<&'static QuickStartService> {
    OpenChoreo::spec(name).with_context(|| {
        let names: Vec<_> = SERVICES.iter().map(|s| s.name).collect();
        format!("no quick-start service {name:?} (one of {})", names.join(", "))
    })
}

fn existing(oc: &OpenChoreo, name: &str) -> Result<&'static QuickStartService> {
    let spec = spec(name)?;
    if oc.service(spec.namespace, name).is_none() {
        bail!("service {}/{name} does not exist now (try restore)", spec.namespace);
    }
    Ok(spec)
}

fn backend<'a>(oc: &'a OpenChoreo, name: &str) -> Result<&'a Backend> {
    oc.backends.get(name).context("no backend")
}

pub fn print_status(oc: &OpenChoreo) {
    for node in [CONTROL_PLANE, WORKER] {
        match oc.node_ip(node) {
            Some(ip) => println!("node {node}: {ip}"),
            None => println!("node {node}: removed"),
        }
    }
    for spec in SERVICES {
        let ports: Vec<String> = (0..spec.ports.len())
            .map(|i| match oc.node_port(spec.namespace, spec.name, i) {
                Some(node_port) => format!("{}:{}->{node_port}", spec.ports[i].0, spec.ports[i].1),
                None => format!("{}:{}", spec.ports[i].0, spec.ports[i].1),
            })
            .collect();
        let backend = &oc.backends[spec.name];
        println!(
            "{}/{} [{}] backend {} ({} connections)",
            spec.namespace,
            spec.name,
            ports.join(" "),
            backend.addr(),
            backend.connections()
        );
    }
}
