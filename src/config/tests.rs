use super::*;
use rstest::rstest;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, &Source::File("/etc/porthole.toml".into()))
}

#[test]
fn every_preset_parses() {
    for (name, _, _) in PRESETS {
        let config = Config::preset(name).unwrap();
        assert_eq!(
            config.kubectl_cluster().context.as_deref(),
            Some("kind-openchoreo-local")
        );
        assert_eq!(config.forwards.len(), 5, "{name}");
    }
}

#[test]
fn default_preset_matches_the_quick_start() {
    let config = Config::preset(DEFAULT_PRESET).unwrap();
    let got: Vec<(u16, &str, String)> = config
        .forwards
        .iter()
        .map(|f| (f.local_port, f.namespace.as_str(), f.target.to_string()))
        .collect();
    assert_eq!(
        got,
        vec![
            (3000, "wso2-amp", "amp-console".to_string()),
            (8080, "wso2-amp", "amp-api".to_string()),
            (
                9098,
                "openchoreo-observability-plane",
                "amp-traces-observer".to_string()
            ),
            (
                21893,
                "openchoreo-observability-plane",
                "opentelemetry-collector".to_string()
            ),
            (8443, "openchoreo-data-plane", "gateway-external".to_string()),
        ]
    );
    assert!(
        config
            .forwards
            .iter()
            .all(|f| f.bind == IpAddr::V4(Ipv4Addr::LOCALHOST))
    );
}

#[test]
fn full_forward_parses() {
    let config = parse(
        r#"
[cluster]
context = "kind-x"
node = "x-worker"
node_address = "hostname"

[[forward]]
name = "otlp"
namespace = "obs"
selector = { "app.kubernetes.io/component" = "collector" }
local_port = 21893
service_port = "otlp"
bind = "0.0.0.0"
probe = { http = "/healthz" }
enabled = false
"#,
    )
    .unwrap();
    assert_eq!(config.clusters[0].node_address, NodeAddressType::Hostname);
    let f = &config.forwards[0];
    assert_eq!(f.service_port, Some(PortRef::Name("otlp".into())));
    assert_eq!(f.probe, Probe::Http("/healthz".into()));
    assert!(!f.enabled);
    assert_eq!(f.target.to_string(), "-l app.kubernetes.io/component=collector");
}

#[rstest]
#[case::unknown_key(
    "[[forward]]\nname = \"a\"\nnamespace = \"n\"\nservice = \"s\"\nlocal_port = 1\nlocalport = 2\n",
    "line 6",
    "unknown field `localport`"
)]
#[case::unknown_cluster_key("[cluster]\ncontxt = \"x\"\n", "line 2", "unknown field `contxt`")]
#[case::duplicate_name(
    "[[forward]]\nname = \"a\"\nnamespace = \"n\"\nservice = \"s\"\nlocal_port = 1\n[[forward]]\nname = \"a\"\nnamespace = \"n\"\nservice = \"s\"\nlocal_port = 2\n",
    ":7: `name`",
    "duplicate forward name `a` (first used on line 2)"
)]
#[case::duplicate_port(
    "[[forward]]\nname = \"a\"\nnamespace = \"n\"\nservice = \"s\"\nlocal_port = 80\n[[forward]]\nname = \"b\"\nnamespace = \"n\"\nservice = \"s\"\nlocal_port = 80\n",
    ":10: `local_port`",
    "port 80 is used by forwards `a` (line 5) and `b` (line 10)"
)]
#[case::duplicate_port_across_clusters(
    "[[cluster]]\ncontext = \"kind-a\"\n[[cluster]]\ncontext = \"k3d-b\"\n[[forward]]\nname = \"a\"\ncluster = \"kind-a\"\nnamespace = \"n\"\nservice = \"s\"\nlocal_port = 80\n[[forward]]\nname = \"b\"\ncluster = \"k3d-b\"\nnamespace = \"n\"\nservice = \"s\"\nlocal_port = 80\n",
    ":16: `local_port`",
    "port 80 is used by forwards `a` (line 10, cluster `kind-a`) and `b` (line 16, cluster `k3d-b`)"
)]
#[case::two_clusters_of_one_name(
    "[[cluster]]\ncontext = \"kind-a\"\n[[cluster]]\nname = \"kind-a\"\ncontext = \"kind-b\"\n",
    ":3: `name`",
    "two clusters are named `kind-a` (lines 1 and 3)"
)]
#[case::two_clusters_following_kubectl(
    "[[cluster]]\nnode = \"x\"\n[[cluster]]\nmode = \"tunnel\"\n",
    ":3: `name`",
    "both follow kubectl's current-context"
)]
#[case::two_kubectl_clusters(
    "[[cluster]]\ncontext = \"kind-a\"\nkubectl = true\n[[cluster]]\ncontext = \"kind-b\"\nkubectl = true\n",
    ":4: `kubectl`",
    "clusters `kind-a` (line 1) and `kind-b` both say `kubectl = true`"
)]
#[case::forward_without_its_cluster(
    "[[cluster]]\ncontext = \"kind-a\"\n[[cluster]]\ncontext = \"kind-b\"\n[[forward]]\nname = \"a\"\nnamespace = \"n\"\nservice = \"s\"\nlocal_port = 1\n",
    ":5: `cluster`",
    "forward `a` must say which cluster it is in: `cluster = \"…\"`, one of `kind-a`, `kind-b`"
)]
#[case::forward_in_an_unknown_cluster(
    "[cluster]\ncontext = \"kind-a\"\n[[forward]]\nname = \"a\"\ncluster = \"kind-b\"\nnamespace = \"n\"\nservice = \"s\"\nlocal_port = 1\n",
    ":5: `cluster`",
    "no cluster is named `kind-b` (the clusters: `kind-a`)"
)]
#[case::no_cluster_at_all("cluster = []\n", "`cluster`", "names no cluster")]
#[case::context_that_cannot_name("[[cluster]]\ncontext = \"my cluster\"\n", ":1: `name`", "give the cluster a `name")]
#[case::port_range(
    "[[forward]]\nname = \"a\"\nnamespace = \"n\"\nservice = \"s\"\nlocal_port = 70000\n",
    ":5: `local_port`",
    "70000 is not a port"
)]
#[case::negative_port(
    "[[forward]]\nname = \"a\"\nnamespace = \"n\"\nservice = \"s\"\nlocal_port = -1\n",
    ":5: `local_port`",
    "-1 is not a port"
)]
#[case::both_targets(
    "[[forward]]\nname = \"a\"\nnamespace = \"n\"\nservice = \"s\"\nselector = { app = \"x\" }\nlocal_port = 1\n",
    ":1: `service`",
    "has `service` and `selector`; keep one"
)]
#[case::pods_and_a_service(
    "[[forward]]\nname = \"a\"\nnamespace = \"n\"\nservice = \"s\"\npods = { app = \"x\" }\nlocal_port = 1\n",
    ":1: `service`",
    "has `service` and `pods`; keep one"
)]
#[case::pods_through_a_nodeport(
    "[[forward]]\nname = \"a\"\nnamespace = \"n\"\npods = { app = \"x\" }\nlocal_port = 1\nmode = \"nodeport\"\n",
    ":1: `mode`",
    "goes to pods (pods -l app=x), which only a tunnel reaches"
)]
#[case::empty_pods(
    "[[forward]]\nname = \"a\"\nnamespace = \"n\"\npods = {}\nlocal_port = 1\n",
    ":1: `pods`",
    "pods must not be empty"
)]
#[case::no_target(
    "\n[[forward]]\nname = \"a\"\nnamespace = \"n\"\nlocal_port = 1\n",
    ":2: `service`",
    "needs `service"
)]
#[case::bad_bind(
    "[[forward]]\nname = \"a\"\nnamespace = \"n\"\nservice = \"s\"\nlocal_port = 1\nbind = \"my-laptop\"\n",
    ":6: `bind`",
    "`my-laptop` is not an IP address"
)]
#[case::bad_probe_path(
    "[[forward]]\nname = \"a\"\nnamespace = \"n\"\nservice = \"s\"\nlocal_port = 1\nprobe = { http = \"healthz\" }\n",
    "`probe`",
    "must start with `/`"
)]
#[case::probe_path_with_a_line_break(
    "[[forward]]\nname = \"a\"\nnamespace = \"n\"\nservice = \"s\"\nlocal_port = 1\nprobe = { http = \"/x HTTP/1.1\\r\\nHost: evil\" }\n",
    "`probe`",
    "must not hold spaces or control characters"
)]
#[case::name_with_markup(
    "[[forward]]\nname = \"<b>api</b>\"\nnamespace = \"n\"\nservice = \"s\"\nlocal_port = 1\n",
    ":2: `name`",
    "may hold only letters, digits"
)]
#[case::name_with_an_escape(
    "[[forward]]\nname = \"api\\u001b[31m\"\nnamespace = \"n\"\nservice = \"s\"\nlocal_port = 1\n",
    ":2: `name`",
    "\\u{1b}[31m"
)]
#[case::watch_without_a_port(
    "[[forward]]\nname = \"a\"\nnamespace = \"n\"\nservice = \"s\"\nlocal_port = 0\nmode = \"watch\"\n",
    ":5: `local_port`",
    "needs the port the cluster publishes"
)]
#[case::bad_node_address("[cluster]\nnode_address = \"external\"\n", "line 2", "unknown variant `external`")]
fn invalid_configs_name_file_line_and_key(#[case] text: &str, #[case] place: &str, #[case] message: &str) {
    let err = parse(text).unwrap_err().to_string();
    assert!(err.starts_with("/etc/porthole.toml"), "{err}");
    assert!(err.contains(place), "{err} lacks {place}");
    assert!(err.contains(message), "{err} lacks {message}");
}

#[test]
fn several_clusters_each_with_its_defaults_and_one_for_kubectl() {
    let text = r#"
[[cluster]]
context = "kind-platform"
mode = "nodeport"

[[cluster]]
name = "lab"
context = "k3d-lab"
mode = "tunnel"
max_connections = 9
kubectl = true

[[forward]]
name = "console"
cluster = "kind-platform"
namespace = "web"
service = "console"
local_port = 3000

[[forward]]
name = "api"
cluster = "lab"
namespace = "web"
service = "api"
local_port = 8080
"#;
    let config = parse(text).unwrap();
    let names: Vec<&str> = config.clusters.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["kind-platform", "lab"], "a name defaults to the context");
    assert_eq!(config.kubectl_cluster().name, "lab");
    assert!(!config.clusters[0].kubectl);
    let (console, api) = (config.forward("console").unwrap(), config.forward("api").unwrap());
    assert_eq!(
        (console.cluster.as_str(), console.mode),
        ("kind-platform", Mode::Nodeport)
    );
    assert_eq!(
        (api.cluster.as_str(), api.mode, api.max_connections),
        ("lab", Mode::Tunnel, 9)
    );
    assert_eq!(
        config.forwards_of("lab").map(|f| f.name.as_str()).collect::<Vec<_>>(),
        ["api"]
    );

    // Without a mark, the first is kubectl's; a lone `[cluster]` takes its forwards.
    let first = parse("[[cluster]]\ncontext = \"kind-a\"\n[[cluster]]\ncontext = \"kind-b\"\n").unwrap();
    assert_eq!(first.kubectl_cluster().name, "kind-a");
    let one =
        parse("[cluster]\n[[forward]]\nname = \"a\"\nnamespace = \"n\"\nservice = \"s\"\nlocal_port = 1\n").unwrap();
    assert_eq!(
        (one.clusters[0].name.as_str(), one.forwards[0].cluster.as_str()),
        (DEFAULT_CLUSTER, DEFAULT_CLUSTER)
    );
    assert!(one.clusters[0].kubectl);
}

#[test]
fn a_forward_to_pods_tunnels_and_its_cluster_watches_pods() {
    let text = "[[cluster]]\ncontext = \"kind-a\"\nmode = \"nodeport\"\n[[cluster]]\ncontext = \"kind-b\"\n\
                [[forward]]\nname = \"worker\"\ncluster = \"kind-a\"\nnamespace = \"n\"\npods = { app = \"worker\" }\nlocal_port = 7000\n\
                [[forward]]\nname = \"debug\"\ncluster = \"kind-a\"\nnamespace = \"n\"\npod = \"debug-0\"\nlocal_port = 5005\nservice_port = 5005\n\
                [[forward]]\nname = \"web\"\ncluster = \"kind-b\"\nnamespace = \"n\"\nservice = \"web\"\nlocal_port = 80\n";
    let config = parse(text).unwrap();
    let worker = config.forward("worker").unwrap();
    assert_eq!(worker.target.to_string(), "pods -l app=worker");
    assert_eq!(
        worker.mode,
        Mode::Tunnel,
        "not the cluster's nodeport: pods are tunnelled"
    );
    assert_eq!(
        config.forward("debug").unwrap().target,
        ServiceTarget::Pod("debug-0".into())
    );
    let watching: Vec<bool> = config.clusters.iter().map(|c| c.watch_pods).collect();
    assert_eq!(
        watching,
        [true, false],
        "only the cluster with forwards to pods watches them"
    );
}

#[test]
fn mode_defaults_to_the_clusters_and_a_forward_may_override_it() {
    let text = "[cluster]\nmode = \"tunnel\"\n[[forward]]\nname = \"a\"\nnamespace = \"n\"\nservice = \"s\"\nlocal_port = 1\n[[forward]]\nname = \"b\"\nnamespace = \"n\"\nservice = \"s\"\nlocal_port = 2\nmode = \"nodeport\"\n";
    let config = parse(text).unwrap();
    assert_eq!(
        (config.forwards[0].mode, config.forwards[1].mode),
        (Mode::Tunnel, Mode::Nodeport)
    );
    assert_eq!(
        parse("[[forward]]\nname = \"a\"\nnamespace = \"n\"\nservice = \"s\"\nlocal_port = 1\n")
            .unwrap()
            .forwards[0]
            .mode,
        Mode::Auto
    );
    let err = parse("[cluster]\nmode = \"fast\"\n").unwrap_err().to_string();
    assert!(err.contains("unknown variant `fast`"), "{err}");
    assert_eq!(
        parse("[cluster]\nmode = \"auto\"\n").unwrap().clusters[0].mode,
        Mode::Auto
    );
}

#[test]
fn hold_is_seconds_from_the_cluster_or_the_forward() {
    let text = "[cluster]\nhold = 2.5\n[[forward]]\nname = \"a\"\nnamespace = \"n\"\nservice = \"s\"\nlocal_port = 1\n[[forward]]\nname = \"b\"\nnamespace = \"n\"\nservice = \"s\"\nlocal_port = 2\nhold = 0\n";
    let config = parse(text).unwrap();
    assert_eq!(config.forwards[0].hold, Some(std::time::Duration::from_millis(2500)));
    assert_eq!(config.forwards[1].hold, Some(std::time::Duration::ZERO));
    let err = parse("[cluster]\nhold = -1\n").unwrap_err().to_string();
    assert!(err.contains("not a number of seconds"), "{err}");
    let err = parse("[cluster]\nhold = \"5s\"\n").unwrap_err().to_string();
    assert!(err.contains("hold"), "{err}");
}

#[test]
fn bind_defaults_to_both_loopbacks_and_an_address_is_alone() {
    let table =
        |bind: &str| format!("[[forward]]\nname = \"a\"\nnamespace = \"n\"\nservice = \"s\"\nlocal_port = 1\n{bind}");
    let of = |bind: &str| {
        let f = parse(&table(bind)).unwrap().forwards.remove(0);
        (f.bind.to_string(), f.ipv6_loopback)
    };
    assert_eq!(of(""), ("127.0.0.1".into(), true));
    assert_eq!(of("bind = \"localhost\"\n"), ("127.0.0.1".into(), true));
    assert_eq!(of("bind = \"127.0.0.1\"\n"), ("127.0.0.1".into(), false));
    assert_eq!(of("bind = \"::1\"\n"), ("::1".into(), false));
    let err = parse(&table("bind = \"my-laptop\"\n")).unwrap_err().to_string();
    assert!(
        err.contains(":6: `bind`") && err.contains("`my-laptop` is not an IP address or `localhost`"),
        "{err}"
    );
}

#[test]
fn max_connections_comes_from_the_forward_the_cluster_or_the_default() {
    let forwards = "[[forward]]\nname = \"a\"\nnamespace = \"n\"\nservice = \"s\"\nlocal_port = 1\n[[forward]]\nname = \"b\"\nnamespace = \"n\"\nservice = \"s\"\nlocal_port = 2\nmax_connections = 10\n";
    let config = parse(&format!("[cluster]\nmax_connections = 300\n{forwards}")).unwrap();
    let max: Vec<u32> = config.forwards.iter().map(|f| f.max_connections).collect();
    assert_eq!(max, [300, 10]);
    let config = parse(&format!("[cluster]\n{forwards}")).unwrap();
    assert_eq!(config.forwards[0].max_connections, MaxConnections::DEFAULT);
    let err = parse(&format!("[cluster]\n{}", forwards.replace("= 10", "= 0")))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("line 12") && err.contains("max_connections") && err.contains("from 1 to"),
        "{err}"
    );
}

#[test]
fn the_probe_is_auto_by_default_and_tunnel_settle_comes_from_the_cluster() {
    let text = "[cluster]\ntunnel_settle = 1.5\n[[forward]]\nname = \"a\"\nnamespace = \"n\"\nservice = \"s\"\nlocal_port = 1\n[[forward]]\nname = \"b\"\nnamespace = \"n\"\nservice = \"s\"\nlocal_port = 2\nprobe = \"tcp\"\n";
    let config = parse(text).unwrap();
    assert_eq!(config.forwards[0].probe, Probe::Auto);
    assert_eq!(config.forwards[1].probe, Probe::Tcp);
    let settle = Some(std::time::Duration::from_millis(1500));
    assert!(config.forwards.iter().all(|f| f.tunnel_settle == settle));
    let err =
        parse("[[forward]]\nname = \"a\"\nnamespace = \"n\"\nservice = \"s\"\nlocal_port = 1\ntunnel_settle = 1\n")
            .unwrap_err()
            .to_string();
    assert!(
        err.contains("tunnel_settle"),
        "a cluster setting, not a forward's: {err}"
    );
    let err = parse("[cluster]\ntunnel_settle = 0\n").unwrap_err().to_string();
    assert!(err.contains("from 0.5 to 60") && err.contains("line 2"), "{err}");
}

#[test]
fn same_port_on_different_addresses_is_fine() {
    let text = "[[forward]]\nname = \"a\"\nnamespace = \"n\"\nservice = \"s\"\nlocal_port = 80\n[[forward]]\nname = \"b\"\nnamespace = \"n\"\nservice = \"s\"\nlocal_port = 80\nbind = \"127.0.0.2\"\n";
    assert_eq!(parse(text).unwrap().forwards.len(), 2);
}

#[test]
fn explicit_missing_file_is_an_error_naming_it() {
    let err = Config::discover(Some(Path::new("/nonexistent/porthole.toml")), |_| true).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/porthole.toml"), "{err}");
}
