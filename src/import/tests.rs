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

/// Into cluster `cluster` (context `context`), the kubeconfig holding no other contexts.
fn to<'a>(cluster: &'a str, context: Option<&'a str>) -> Destination<'a> {
    Destination {
        cluster,
        context,
        contexts: &[],
    }
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
                format!("{}/{}:{}", d.namespace, d.target_text(), d.service_port),
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
        &to("default", Some("kind-openchoreo-local")),
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
        &to("kind-openchoreo-local", Some("kind-openchoreo-local")),
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
    let plan = plan(found, skipped, &empty(), &to("default", Some("kind-dev")), &unknown());
    assert_eq!(
        rows(&plan),
        [
            row(2, "web", "shop/web:80", "8080", ""),
            row(3, "api-9000", "shop/api:http", "9000", ""),
            row(3, "api-9001", "shop/api:metrics", "9001", ""),
            row(4, "postgres", "db/postgres:5432", "5432", ""),
            row(5, "redis", "cache/redis:6379", "6379", ""),
            row(6, "grafana", "monitoring/grafana:80", "3000", "0.0.0.0"),
            // A pod by name: a forward to that pod.
            row(10, "debug-0", "shop/pod/debug-0:5005", "5005", ""),
        ]
    );
    let reasons = reasons(&plan);
    let lines: Vec<usize> = reasons.iter().map(|(l, _)| *l).collect();
    assert_eq!(lines, [7, 11, 12], "{reasons:#?}");
    assert_eq!(
        reasons[0].1,
        "deploy/worker: which pods are its own, only the cluster can tell, and the cluster is not reachable"
    );
    assert_eq!(
        reasons[1].1,
        "context `kind-other` is in no kubeconfig file (and no cluster of this config): add it (`kind export kubeconfig --name NAME`, `k3d kubeconfig merge NAME`) and import again"
    );
    assert!(reasons[2].1.contains("without ports"), "{}", reasons[2].1);
    assert!(plan.clusters.is_empty());
    assert!(
        plan.skipped
            .iter()
            .any(|s| s.plumbing && s.line == 13 && s.text == "sleep 1")
    );
}

#[test]
fn a_kftray_export_gives_its_tcp_services_and_names_the_rest() {
    let (found, skipped) = parse(KFTRAY);
    let plan = plan(found, skipped, &empty(), &to("default", Some("kind-dev")), &unknown());
    assert_eq!(
        rows(&plan),
        [
            row(2, "argocd", "argocd/argocd-server:8080", "8888", ""),
            // kftray's pod config: pods by their labels.
            row(
                22,
                "nginx-pods",
                "default/pods -l app=nginx,tier=frontend:80",
                "8181",
                ""
            ),
            row(32, "httpbin", "default/httpbin:8080", "8081", ""),
        ]
    );
    let reasons = reasons(&plan);
    assert_eq!(reasons.len(), 1, "{reasons:#?}");
    assert_eq!(reasons[0].0, 12);
    assert_eq!(reasons[0].1, "udp: Porthole relays TCP only");
}

#[test]
fn what_only_the_cluster_knows_is_asked_of_it_or_reported() {
    let script = "np=$(kubectl get svc api -n apps -o jsonpath='{.spec.ports[1].nodePort}')\nsocat TCP-LISTEN:9001,fork TCP:worker:$np &\nsocat TCP-LISTEN:9002,fork TCP:worker:31234 &\nsocat TCP-LISTEN:9003,fork TCP:worker:$nope &\n";
    let (found, skipped) = parse(script);
    let without = plan(
        found.clone(),
        skipped.clone(),
        &empty(),
        &to("default", None),
        &unknown(),
    );
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

    let services = Cluster::services(vec![
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
    let with = plan(found, skipped, &empty(), &to("default", None), &services);
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
    let plan = plan(found, skipped, &config, &to("default", None), &unknown());
    let names: Vec<&str> = plan.add.iter().map(|a| a.draft.name.as_str()).collect();
    assert_eq!(names, ["web-2", "web-3"]);
    assert_eq!(clean_name("nginx pods/1"), "nginx-pods-1");
}

#[test]
fn a_workload_becomes_its_pods_when_the_cluster_says_which_they_are() {
    let (found, skipped) = parse(KUBECTL);
    let known = Cluster::Known {
        services: Vec::new(),
        workloads: vec![WorkloadInfo {
            kind: "deployment".into(),
            namespace: "shop".into(),
            name: "worker".into(),
            labels: Some(BTreeMap::from([("app".to_string(), "worker".to_string())])),
        }],
    };
    let planned = plan(found, skipped, &empty(), &to("default", Some("kind-dev")), &known);
    let worker = planned.add.iter().find(|a| a.line == 7).expect("deploy/worker added");
    assert_eq!(worker.draft.name, "worker");
    assert_eq!(worker.draft.pods, "app=worker");
    assert_eq!(
        (worker.draft.service.as_str(), worker.draft.service_port.as_str()),
        ("", "7000")
    );

    // A selector with matchExpressions cannot be said as `pods`: reported.
    let (found, skipped) =
        parse("kubectl port-forward -n shop deploy/worker 7000\nkubectl port-forward -n shop sts/gone 7001\n");
    let expressions = Cluster::Known {
        services: Vec::new(),
        workloads: vec![WorkloadInfo {
            kind: "deployment".into(),
            namespace: "shop".into(),
            name: "worker".into(),
            labels: None,
        }],
    };
    let planned = plan(found, skipped, &empty(), &to("default", None), &expressions);
    let why = reasons(&planned);
    assert!(why[0].1.contains("matchExpressions"), "{why:#?}");
    assert_eq!(why[1].1, "statefulset shop/gone is not in the cluster");
}

#[test]
fn other_contexts_go_to_their_cluster_or_to_a_new_one_the_kubeconfig_has() {
    let config = Config::parse(
        "[[cluster]]\ncontext = \"kind-dev\"\n[[cluster]]\nname = \"lab\"\ncontext = \"k3d-lab\"\n",
        &crate::config::Source::Empty,
    )
    .unwrap();
    let script = "kubectl port-forward svc/web 8080:80 &\n\
                  kubectl port-forward --context k3d-lab svc/api 9000:80 &\n\
                  kubectl port-forward --context kind-new svc/ui 3000:80 &\n\
                  kubectl port-forward --context kind-gone svc/old 3001:80 &\n";
    let (found, skipped) = parse(script);
    let contexts = ["kind-dev".to_string(), "k3d-lab".to_string(), "kind-new".to_string()];
    let destination = Destination {
        cluster: "kind-dev",
        context: Some("kind-dev"),
        contexts: &contexts,
    };
    let planned = plan(found, skipped, &config, &destination, &unknown());
    let clusters: Vec<(&str, &str)> = planned
        .add
        .iter()
        .map(|a| (a.draft.name.as_str(), a.draft.cluster.as_str()))
        .collect();
    assert_eq!(clusters, [("web", "kind-dev"), ("api", "lab"), ("ui", "kind-new")]);
    assert_eq!(planned.clusters, ["kind-new"]);
    let why = reasons(&planned);
    assert_eq!(why.len(), 1);
    assert!(
        why[0].1.starts_with("context `kind-gone` is in no kubeconfig file"),
        "{}",
        why[0].1
    );

    // Written in one edit: the new cluster, then the forwards that name it.
    let drafts = planned.add.iter().map(|a| a.draft.clone()).collect();
    let into = config.cluster("kind-dev").unwrap();
    let text = crate::config::edit::apply(
        "[[cluster]]\ncontext = \"kind-dev\"\n[[cluster]]\nname = \"lab\"\ncontext = \"k3d-lab\"\n",
        &edit(&config, into, drafts),
        std::path::Path::new("/c.toml"),
    )
    .unwrap();
    let written = Config::parse(&text, &crate::config::Source::Empty).unwrap();
    let names: Vec<&str> = written.clusters.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["kind-dev", "lab", "kind-new"]);
    assert_eq!(written.forward("ui").unwrap().cluster, "kind-new");

    // Into a config of one cluster: the forwards of that cluster name it too, as they must
    // once the new one comes.
    let (found, skipped) = parse(script);
    let one = Config::parse("[cluster]\ncontext = \"kind-dev\"\n", &crate::config::Source::Empty).unwrap();
    let planned = plan(found, skipped, &one, &destination, &unknown());
    let clusters: Vec<&str> = planned.add.iter().map(|a| a.draft.cluster.as_str()).collect();
    assert_eq!(clusters, ["kind-dev", "k3d-lab", "kind-new"]);
    assert_eq!(planned.clusters, ["k3d-lab", "kind-new"]);
    let drafts = planned.add.iter().map(|a| a.draft.clone()).collect();
    let text = crate::config::edit::apply(
        "[cluster]\ncontext = \"kind-dev\"   # mine\n",
        &edit(&one, &one.clusters[0], drafts),
        std::path::Path::new("/c.toml"),
    )
    .unwrap();
    assert!(
        text.starts_with("[[cluster]]\ncontext = \"kind-dev\"   # mine\n"),
        "{text}"
    );
    let written = Config::parse(&text, &crate::config::Source::Empty).unwrap();
    assert_eq!(written.clusters.len(), 3);
    assert_eq!(written.forwards.len(), 3);
}
