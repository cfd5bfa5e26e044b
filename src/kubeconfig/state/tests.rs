use super::*;

#[test]
fn kubectl_writes_current_context_to_the_first_file_that_exists() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    let c = dir.path().join("c");
    std::fs::write(&b, "current-context: rancher-desktop\n").unwrap();
    std::fs::write(&c, "kind: Config\n").unwrap();
    assert_eq!(current_context_file(&[a.clone(), b.clone(), c.clone()]), b);
    std::fs::create_dir(&a).unwrap();
    assert_eq!(
        current_context_file(&[a.clone(), c.clone()]),
        c,
        "a directory is not a kubeconfig"
    );
    let (x, y) = (dir.path().join("x"), dir.path().join("y"));
    assert_eq!(current_context_file(&[x, y.clone()]), y, "else the last");
}

#[test]
fn k3d_names_its_user_differently() {
    let fresh = "apiVersion: v1\nkind: Config\nclusters:\n- name: k3d-dev\n  cluster: {server: 'https://0.0.0.0:6550'}\nusers:\n- name: admin@k3d-dev\n  user: {client-certificate-data: X}\ncontexts:\n- name: k3d-dev\n  context: {cluster: k3d-dev, user: admin@k3d-dev}\ncurrent-context: k3d-dev\n";
    let entries = entries_of(fresh, "k3d-dev").unwrap();
    assert_eq!(
        (entries.cluster.as_str(), entries.user.as_str()),
        ("k3d-dev", "admin@k3d-dev")
    );
    assert!(edit::merge("", fresh, &entries).unwrap().contains("admin@k3d-dev"));
    assert!(entries_of(fresh, "k3d-other").is_err());
}

#[test]
fn diffs_never_show_credentials() {
    let text = "users:\n- name: a\n  user:\n    token: s3cr3t\n    client-key-data: S0VZ\n- name: b\n  user: {token: t0k, username: bob, password: 'pw'}\n";
    let redacted = redact(text);
    assert!(
        !redacted.contains("s3cr3t")
            && !redacted.contains("S0VZ")
            && !redacted.contains("t0k")
            && !redacted.contains("pw'")
    );
    assert!(
        redacted.contains("    token: <redacted>\n") && redacted.contains("username: bob"),
        "{redacted}"
    );
    assert_eq!(redact("current-context: kind-x\n"), "current-context: kind-x\n");
}

#[test]
fn diffs_never_show_credentials_in_blocks_or_exec_env() {
    let text = "users:\n- name: a\n  user:\n    token: |\n      eyJhbGciOi\n      second-half-of-it\n- name: eks\n  user:\n    exec:\n      command: aws\n      env:\n      - name: AWS_SECRET_ACCESS_KEY\n        value: wJalrXUtnFEMI\n      - {name: AWS_PROFILE, value: \"dev-profile\"}\n- name: oidc\n  user:\n    auth-provider:\n      config:\n        refresh-token: >-\n          folded-refresh\n          token-text\n";
    let redacted = redact(text);
    for secret in [
        "eyJhbGciOi",
        "second-half-of-it",
        "wJalrXUtnFEMI",
        "dev-profile",
        "folded-refresh",
        "token-text",
    ] {
        assert!(!redacted.contains(secret), "{secret} shows in:\n{redacted}");
    }
    assert!(
        redacted.contains("AWS_SECRET_ACCESS_KEY") && redacted.contains("command: aws"),
        "{redacted}"
    );
}

#[test]
fn sentences_and_fixes() {
    let state = KubeconfigState::ContextMismatch {
        expected: "kind-openchoreo-local".into(),
        current: "rancher-desktop".into(),
    };
    assert_eq!(state.id(), "context-mismatch");
    assert_eq!(
        state.sentence(),
        "kubectl's current-context is rancher-desktop, not kind-openchoreo-local"
    );
    assert_eq!(state.fix().unwrap(), "set current-context to kind-openchoreo-local");
    let missing = KubeconfigState::ContextMissing {
        expected: "kind-openchoreo-local".into(),
    };
    assert_eq!(
        missing.fix().unwrap(),
        "`kind export kubeconfig --name openchoreo-local`"
    );
}
