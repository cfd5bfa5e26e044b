use super::*;

const QUICK_START: &str = include_str!("../../tests/fixtures/import/port-forward.sh");
const KUBECTL: &str = include_str!("../../tests/fixtures/import/kubectl.sh");
const KFTRAY: &str = include_str!("../../tests/fixtures/import/kftray.json");

fn empty() -> Config {
    Config::parse(crate::config::EMPTY, &crate::config::Source::Empty).unwrap()
}

fn unknown() -> Cluster {
    Cluster::Unknown("the cluster is not reachable".into())
}

/// (line, name, namespace/service:port, local, bind) of each addition.
fn rows(plan: &Plan) -> Vec<(usize, String, String, String, String)> {
    plan.add
        .iter()
        .map(|a| {
            let d = &a.draft;
            (
                a.line,
                d.name.clone(),
                format!("{}/{}:{}", d.namespace, d.service, d.service_port),
                d.local_port.clone(),
                d.bind.clone(),
            )
        })
        .collect()
}

fn row(line: usize, name: &str, target: &str, local: &str, bind: &str) -> (usize, String, String, String, String) {
    (line, name.into(), target.into(), local.into(), bind.into())
}

/// The reasons for the lines that looked like forwards, by line.
fn reasons(plan: &Plan) -> Vec<(usize, String)> {
    plan.skipped
        .iter()
        .filter(|s| !s.plumbing)
        .map(|s| (s.line, s.why.clone()))
        .collect()
}

#[test]
fn the_quick_starts_socat_script_gives_its_five_services() {
    let (found, skipped) = parse(QUICK_START);
    let plan = plan(
        found,
        skipped,
        &empty(),
        ("default", Some("kind-openchoreo-local")),
        &unknown(),
    );
    assert_eq!(
        rows(&plan),
        [
            row(19, "amp-console", "wso2-amp/amp-console:", "3000", ""),
            row(23, "amp-api", "wso2-amp/amp-api:", "8080", ""),
            row(
                26,
                "amp-traces-observer",
                "openchoreo-observability-plane/amp-traces-observer:",
                "9098",
                ""
            ),
            row(
                29,
                "opentelemetry-collector",
                "openchoreo-observability-plane/opentelemetry-collector:otlp-http",
                "21893",
                ""
            ),
            row(
                32,
                "gateway-external",
                "openchoreo-data-plane/gateway-external:",
                "8443",
                ""
            ),
        ]
    );
    assert_eq!(reasons(&plan), []);
    // The shell around them is listed, by line, as no forward.
    let plumbing: Vec<usize> = plan.skipped.iter().map(|s| s.line).collect();
    assert!(
        plumbing.contains(&4) && plumbing.contains(&16) && plumbing.contains(&34),
        "{plumbing:?}"
    );
}

#[test]
fn the_quick_start_into_its_own_preset_adds_nothing_and_says_why() {
    let preset = Config::preset("openchoreo").unwrap();
    let (found, skipped) = parse(QUICK_START);
    let plan = plan(
        found,
        skipped,
        &preset,
        ("kind-openchoreo-local", Some("kind-openchoreo-local")),
        &unknown(),
    );
    assert_eq!(rows(&plan), []);
    assert_eq!(
        reasons(&plan),
        [
            (19, "already in the config as `console`".to_string()),
            (23, "already in the config as `api`".to_string()),
            (26, "already in the config as `traces-observer`".to_string()),
            (29, "local port 21893 is `otel-collector`'s already".to_string()),
            (32, "already in the config as `gateway`".to_string()),
        ]
    );
}

#[test]
fn kubectl_port_forward_lines_in_their_many_forms() {
    let (found, skipped) = parse(KUBECTL);
    let plan = plan(found, skipped, &empty(), ("default", Some("kind-dev")), &unknown());
    assert_eq!(
        rows(&plan),
        [
            row(2, "web", "shop/web:80", "8080", ""),
            row(3, "api-9000", "shop/api:http", "9000", ""),
            row(3, "api-9001", "shop/api:metrics", "9001", ""),
            row(4, "postgres", "db/postgres:5432", "5432", ""),
            row(5, "redis", "cache/redis:6379", "6379", ""),
            row(6, "grafana", "monitoring/grafana:80", "3000", "0.0.0.0"),
        ]
    );
    let reasons = reasons(&plan);
    let lines: Vec<usize> = reasons.iter().map(|(l, _)| *l).collect();
    assert_eq!(lines, [7, 10, 11, 12], "{reasons:#?}");
    assert!(
        reasons[0].1.starts_with("deploy/worker: Porthole forwards services"),
        "{}",
        reasons[0].1
    );
    assert!(reasons[1].1.starts_with("pod/debug-0"), "{}", reasons[1].1);
    assert_eq!(
        reasons[2].1,
        "context `kind-other` is no cluster of this config (here: `default`, context `kind-dev`): add it as a cluster (`[[cluster]]` with `context = \"kind-other\"`, or Add cluster in the settings page) and import again with `--cluster`"
    );
    assert!(reasons[3].1.contains("without ports"), "{}", reasons[3].1);
    assert!(
        plan.skipped
            .iter()
            .any(|s| s.plumbing && s.line == 13 && s.text == "sleep 1")
    );
}

#[test]
fn a_kftray_export_gives_its_tcp_services_and_names_the_rest() {
    let (found, skipped) = parse(KFTRAY);
    let plan = plan(found, skipped, &empty(), ("default", Some("kind-dev")), &unknown());
    assert_eq!(
        rows(&plan),
        [
            row(2, "argocd", "argocd/argocd-server:8080", "8888", ""),
            row(32, "httpbin", "default/httpbin:8080", "8081", ""),
        ]
    );
    let reasons = reasons(&plan);
    assert_eq!(reasons[0].0, 12);
    assert_eq!(reasons[0].1, "udp: Porthole relays TCP only");
    assert_eq!(reasons[1].0, 22);
    assert!(
        reasons[1].1.starts_with("pods with app=nginx,tier=frontend"),
        "{}",
        reasons[1].1
    );
}

#[test]
fn what_only_the_cluster_knows_is_asked_of_it_or_reported() {
    let script = "np=$(kubectl get svc api -n apps -o jsonpath='{.spec.ports[1].nodePort}')\nsocat TCP-LISTEN:9001,fork TCP:worker:$np &\nsocat TCP-LISTEN:9002,fork TCP:worker:31234 &\nsocat TCP-LISTEN:9003,fork TCP:worker:$nope &\n";
    let (found, skipped) = parse(script);
    let without = plan(found.clone(), skipped.clone(), &empty(), ("default", None), &unknown());
    assert_eq!(rows(&without), []);
    let why = reasons(&without);
    assert_eq!(why.len(), 3, "{why:#?}");
    assert!(
        why[0].1.contains("`.spec.ports[1]` of apps/api") && why[0].1.contains("not reachable"),
        "{}",
        why[0].1
    );
    assert!(
        why[1].1.starts_with("nodePort 31234: which service has it"),
        "{}",
        why[1].1
    );
    assert!(why[2].1.contains("$nope"), "{}", why[2].1);

    let services = Cluster::Services(vec![
        ServiceInfo {
            namespace: "apps".into(),
            name: "api".into(),
            ports: vec![
                (Some("http".into()), 80, Some(30080)),
                (Some("metrics".into()), 9090, Some(30090)),
            ],
        },
        ServiceInfo {
            namespace: "web".into(),
            name: "site".into(),
            ports: vec![(None, 8080, Some(31234))],
        },
    ]);
    let with = plan(found, skipped, &empty(), ("default", None), &services);
    assert_eq!(
        rows(&with),
        [
            row(2, "api", "apps/api:metrics", "9001", ""),
            row(3, "site", "web/site:8080", "9002", ""),
        ]
    );
}

#[test]
fn names_stay_unique_and_valid() {
    let mut config = empty();
    let (found, skipped) = parse("kubectl port-forward svc/web 1000:80 &\nkubectl port-forward -n b svc/web 1001:80\n");
    config.forwards = Config::parse(
        "[[forward]]\nname = \"web\"\nnamespace = \"x\"\nservice = \"y\"\nlocal_port = 1\n",
        &crate::config::Source::Empty,
    )
    .unwrap()
    .forwards;
    let plan = plan(found, skipped, &config, ("default", None), &unknown());
    let names: Vec<&str> = plan.add.iter().map(|a| a.draft.name.as_str()).collect();
    assert_eq!(names, ["web-2", "web-3"]);
    assert_eq!(clean_name("nginx pods/1"), "nginx-pods-1");
}
