//! `porthole context` and `porthole fix-kubeconfig` as users run them: real processes on real
//! files, with `$KUBECONFIG` and a stand-in `kind` on `$PATH` (the real one needs Docker).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_porthole");
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/kubeconfig");
const CONTEXT: &str = "kind-openchoreo-local";

fn fixture(name: &str) -> String {
    std::fs::read_to_string(Path::new(FIXTURES).join(name)).unwrap()
}

/// A home for one test: a config naming the quick-start context, kubeconfig files, a PATH dir.
struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new() -> Home {
        let home = Home {
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::write(
            home.path("porthole.toml"),
            format!("[cluster]\ncontext = \"{CONTEXT}\"\n"),
        )
        .unwrap();
        std::fs::create_dir(home.path("bin")).unwrap();
        home
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A kubeconfig file from a fixture, mode 0600 like kubectl's.
    fn kubeconfig(&self, name: &str, fixture_name: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, fixture(fixture_name)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    /// A stand-in `kind` that prints `output` for `get kubeconfig --name=openchoreo-local`.
    fn fake_kind(&self, output: &str) {
        let printed = self.path("kind-output.yaml");
        std::fs::write(&printed, output).unwrap();
        let script = format!(
            "#!/bin/sh\nif [ \"$*\" = \"get kubeconfig --name=openchoreo-local\" ]; then exec /bin/cat '{}'; else echo \"ERROR: unexpected: $*\" >&2; exit 1; fi\n",
            printed.display()
        );
        let kind = self.path("bin/kind");
        std::fs::write(&kind, script).unwrap();
        std::fs::set_permissions(&kind, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn run(&self, kubeconfig: &[&Path], args: &[&str]) -> Output {
        let list = std::env::join_paths(kubeconfig).unwrap();
        Command::new(BIN)
            .arg("--config")
            .arg(self.path("porthole.toml"))
            .args(args)
            .env("KUBECONFIG", list)
            .env("PATH", self.path("bin"))
            .env("HOME", self.dir.path())
            .env("XDG_STATE_HOME", self.path("state"))
            .env_remove("PORTHOLE_CONFIG")
            .output()
            .unwrap()
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

impl Home {
    /// Porthole's private backup directory under this home.
    fn backups(&self) -> PathBuf {
        self.path("state/porthole/backups")
    }

    fn backups_of(&self, path: &Path) -> Vec<PathBuf> {
        porthole::write::Backups::at(self.backups()).of(&std::fs::canonicalize(path).unwrap())
    }
}

#[test]
fn a_mismatch_is_fixed_by_changing_one_value_and_nothing_else() {
    let home = Home::new();
    let file = home.kubeconfig("config", "commented.yaml");
    let original = fixture("commented.yaml");

    let out = home.run(&[&file], &["context"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stdout(&out).trim(),
        "context-mismatch: kubectl's current-context is rancher-desktop, not kind-openchoreo-local (fix: set current-context to kind-openchoreo-local)"
    );

    let dry = home.run(&[&file], &["fix-kubeconfig", "--dry-run"]);
    assert!(dry.status.success(), "{}", stderr(&dry));
    let diff = stdout(&dry);
    assert!(
        diff.contains("-current-context: rancher-desktop   # switched by hand on Monday"),
        "{diff}"
    );
    assert!(
        diff.contains("+current-context: kind-openchoreo-local # switched by hand on Monday"),
        "{diff}"
    );
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        original,
        "a dry run writes nothing"
    );
    assert!(home.backups_of(&file).is_empty());

    let fix = home.run(&[&file], &["fix-kubeconfig"]);
    assert!(fix.status.success(), "{}", stderr(&fix));
    let expected = original.replace(
        "current-context: rancher-desktop   # switched by hand on Monday",
        "current-context: kind-openchoreo-local # switched by hand on Monday",
    );
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        expected,
        "one value changed, every other byte kept"
    );
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    let backups = home.backups_of(&file);
    assert_eq!(backups.len(), 1);
    assert_eq!(std::fs::read_to_string(&backups[0]).unwrap(), original);
    assert_eq!(
        std::fs::metadata(&backups[0]).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(home.backups()).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert!(
        stdout(&fix).contains(&format!("(backup: {})", backups[0].display())),
        "the output says where the backup is: {}",
        stdout(&fix)
    );
    assert!(!stdout(&fix).contains("rd-token"), "no secrets printed");

    let after = home.run(&[&file], &["context"]);
    assert_eq!(after.status.code(), Some(0), "{}", stdout(&after));
    let again = home.run(&[&file], &["fix-kubeconfig"]);
    assert!(stdout(&again).starts_with("nothing to fix"));
}

#[test]
fn with_a_list_of_three_kubectl_s_file_is_written_and_the_others_are_untouched() {
    let home = Home::new();
    let first = home.kubeconfig("first", "kind.yaml");
    // Only the second file sets current-context.
    let text = fixture("kind.yaml").replace("current-context: kind-openchoreo-local\n", "");
    std::fs::write(&first, &text).unwrap();
    let second = home.kubeconfig("second", "only-rancher.yaml");
    let third = home.kubeconfig("third", "unset.yaml");
    let files = [first.as_path(), second.as_path(), third.as_path()];
    let out = home.run(&files, &["context"]);
    assert!(
        stdout(&out).starts_with("context-mismatch: kubectl's current-context is rancher-desktop"),
        "{}",
        stdout(&out)
    );
    let fix = home.run(&files, &["fix-kubeconfig"]);
    assert!(fix.status.success(), "{}", stderr(&fix));
    // Where `kubectl config use-context` writes it: the first file of the list that exists.
    assert_eq!(
        std::fs::read_to_string(&first).unwrap(),
        format!("{text}current-context: kind-openchoreo-local\n")
    );
    assert_eq!(std::fs::read_to_string(&second).unwrap(), fixture("only-rancher.yaml"));
    assert_eq!(std::fs::read_to_string(&third).unwrap(), fixture("unset.yaml"));
    assert_eq!(home.run(&files, &["context"]).status.code(), Some(0));
}

#[test]
fn an_empty_current_context_sets_nothing_for_the_files_after_it() {
    let home = Home::new();
    let emptied = home.kubeconfig("emptied", "unset.yaml");
    let rancher = home.kubeconfig("rancher", "only-rancher.yaml");
    let files = [emptied.as_path(), rancher.as_path()];
    // kubectl skips the empty value: its current-context is rancher-desktop.
    let out = home.run(&files, &["context", "--json"]);
    assert_eq!(
        stdout(&out).trim(),
        r#"{"state":"context-mismatch","expected":"kind-openchoreo-local","current":"rancher-desktop"}"#
    );
    assert!(home.run(&files, &["fix-kubeconfig"]).status.success());
    assert_eq!(home.run(&files, &["context"]).status.code(), Some(0), "fixed for good");
    assert_eq!(std::fs::read_to_string(&rancher).unwrap(), fixture("only-rancher.yaml"));
}

#[test]
fn a_dry_run_shows_no_credentials_and_creates_nothing() {
    let home = Home::new();
    home.fake_kind(&fixture("kind.yaml"));
    let file = home.kubeconfig("config", "only-rancher.yaml");
    let dry = home.run(&[&file], &["fix-kubeconfig", "--dry-run"]);
    assert!(dry.status.success(), "{}", stderr(&dry));
    let shown = stdout(&dry);
    let kind: serde_json::Value = serde_saphyr::from_str(&fixture("kind.yaml")).unwrap();
    let key = kind["users"][0]["user"]["client-key-data"].as_str().unwrap();
    assert!(!shown.contains(key) && !shown.contains("rd-token"), "{shown}");
    assert!(shown.contains("client-key-data: <redacted>"), "{shown}");
    // With no kubeconfig at all, a dry run leaves none behind.
    let absent = home.path("kube/config");
    let dry = home.run(&[&absent], &["fix-kubeconfig", "--dry-run"]);
    assert!(dry.status.success(), "{}", stderr(&dry));
    assert!(!absent.exists() && !home.path("kube").exists());
    assert!(home.run(&[&absent], &["fix-kubeconfig"]).status.success());
    assert_eq!(std::fs::metadata(&absent).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(home.run(&[&absent], &["context"]).status.code(), Some(0));
}

#[test]
fn an_unset_context_is_set() {
    let home = Home::new();
    let file = home.kubeconfig("config", "unset.yaml");
    let out = home.run(&[&file], &["context", "--json"]);
    assert_eq!(
        stdout(&out).trim(),
        r#"{"state":"context-unset","expected":"kind-openchoreo-local"}"#
    );
    assert!(home.run(&[&file], &["fix-kubeconfig"]).status.success());
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        fixture("unset.yaml").replace("current-context: \"\"", "current-context: kind-openchoreo-local")
    );
}

#[test]
fn a_missing_context_is_merged_from_kind_keeping_every_other_entry() {
    let home = Home::new();
    let file = home.kubeconfig("config", "only-rancher.yaml");
    let out = home.run(&[&file], &["fix-kubeconfig"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("`kind` is not installed (looked in "),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        fixture("only-rancher.yaml"),
        "nothing written"
    );

    home.fake_kind(&fixture("kind.yaml"));
    assert_eq!(
        stdout(&home.run(&[&file], &["context"])).split(':').next(),
        Some("context-missing")
    );
    let fix = home.run(&[&file], &["fix-kubeconfig"]);
    assert!(fix.status.success(), "{}", stderr(&fix));
    let merged: serde_json::Value = serde_saphyr::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let kind: serde_json::Value = serde_saphyr::from_str(&fixture("kind.yaml")).unwrap();
    assert_eq!(merged["current-context"], CONTEXT);
    assert_eq!(merged["clusters"][0]["name"], "rancher-desktop", "kept, in place");
    assert_eq!(merged["clusters"][1], kind["clusters"][0], "appended as kind wrote it");
    assert_eq!(merged["users"][0]["user"]["token"], "rd-token");
    assert_eq!(merged["users"][1], kind["users"][0]);
    assert_eq!(merged["contexts"][1], kind["contexts"][0]);
    assert_eq!(
        std::fs::read_to_string(&home.backups_of(&file)[0]).unwrap(),
        fixture("only-rancher.yaml")
    );
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
}

#[test]
fn a_stale_context_gets_the_clusters_new_address() {
    let home = Home::new();
    // The entry points at a port nothing listens on; kind knows the cluster's new one.
    let file = home.kubeconfig("config", "kind.yaml");
    let stale = fixture("kind.yaml").replace("https://127.0.0.1:41234", "https://127.0.0.1:1");
    std::fs::write(&file, &stale).unwrap();
    home.fake_kind(&fixture("kind.yaml"));
    let out = home.run(&[&file], &["context"]);
    assert_eq!(
        stdout(&out).trim(),
        "context-stale: context kind-openchoreo-local points at https://127.0.0.1:1, which does not answer; the cluster now listens at https://127.0.0.1:41234 (fix: `kind export kubeconfig --name openchoreo-local`)"
    );
    let dry = home.run(&[&file], &["fix-kubeconfig", "--dry-run"]);
    assert!(
        stdout(&dry).contains("-    server: https://127.0.0.1:1\n+    server: https://127.0.0.1:41234"),
        "{}",
        stdout(&dry)
    );
    assert!(home.run(&[&file], &["fix-kubeconfig"]).status.success());
    let fixed: serde_json::Value = serde_saphyr::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(fixed["clusters"][0]["cluster"]["server"], "https://127.0.0.1:41234");
}

#[test]
fn a_symlinked_kubeconfig_is_written_through_and_stays_a_link() {
    let home = Home::new();
    std::fs::create_dir_all(home.path("dotfiles")).unwrap();
    let real = home.kubeconfig("dotfiles/kubeconfig", "commented.yaml");
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o644)).unwrap();
    let link = home.path("config");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    assert!(home.run(&[&link], &["fix-kubeconfig"]).status.success());
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    let dotfiles: Vec<_> = std::fs::read_dir(home.path("dotfiles"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        dotfiles,
        ["kubeconfig"],
        "no copy of the credentials in the dotfiles repo"
    );
    let backups = home.backups_of(&link);
    assert_eq!(backups.len(), 1);
    assert_eq!(
        std::fs::metadata(&backups[0]).unwrap().permissions().mode() & 0o777,
        0o600,
        "not the original's 0644"
    );
    assert!(
        std::fs::read_to_string(&real)
            .unwrap()
            .contains("current-context: kind-openchoreo-local # switched")
    );
}

#[test]
fn a_read_only_kubeconfig_is_a_clear_error_and_nothing_is_written() {
    let home = Home::new();
    let file = home.kubeconfig("config", "commented.yaml");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o400)).unwrap();
    let out = home.run(&[&file], &["fix-kubeconfig"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!("{} is read-only: nothing was written", file.display())),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), fixture("commented.yaml"));
    assert!(home.backups_of(&file).is_empty());
}

#[test]
fn a_malformed_kubeconfig_is_named_with_its_line() {
    let home = Home::new();
    let file = home.kubeconfig("config", "malformed.yaml");
    let out = home.run(&[&file], &["context"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&file.display().to_string()) && err.contains("line 8"),
        "{err}"
    );
}

#[test]
fn another_writers_lock_makes_the_fix_wait_then_give_up_clearly() {
    let home = Home::new();
    let file = home.kubeconfig("config", "commented.yaml");
    // kubectl holds `<file>.lock` while it writes; here it never lets go.
    let lock = home.path("config.lock");
    std::fs::write(&lock, "").unwrap();
    let started = std::time::Instant::now();
    let out = home.run(&[&file], &["fix-kubeconfig"]);
    assert!(!out.status.success());
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(5),
        "it waited for the lock"
    );
    assert!(
        stderr(&out).contains(&format!("({}.lock exists)", file.display())),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), fixture("commented.yaml"));
    assert!(lock.exists(), "someone else's lock is left alone");
    assert!(home.backups_of(&file).is_empty());
}

#[test]
fn the_owner_of_the_file_is_kept() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return; // only root can hand a file to another user; CI runs as root
    }
    let home = Home::new();
    let file = home.kubeconfig("config", "commented.yaml");
    std::os::unix::fs::chown(&file, Some(1000), Some(1000)).unwrap();
    assert!(home.run(&[&file], &["fix-kubeconfig"]).status.success());
    let meta = std::fs::metadata(&file).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((meta.uid(), meta.gid(), meta.mode() & 0o777), (1000, 1000, 0o600));
}

#[test]
fn a_cluster_that_kind_does_not_know_is_said_plainly() {
    let home = Home::new();
    let file = home.kubeconfig("config", "only-rancher.yaml");
    // kind's own words when the cluster was deleted.
    let kind = home.path("bin/kind");
    std::fs::write(&kind, "#!/bin/sh\necho 'ERROR: could not locate any control plane nodes for cluster named '\"'\"'openchoreo-local'\"'\"'' >&2\nexit 1\n").unwrap();
    std::fs::set_permissions(&kind, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = home.run(&[&file], &["fix-kubeconfig"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("`kind get kubeconfig --name=openchoreo-local` failed: ERROR: could not locate any control plane nodes for cluster named 'openchoreo-local'"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), fixture("only-rancher.yaml"));
}

#[test]
fn doctor_names_a_stale_context_and_its_fix() {
    let home = Home::new();
    let file = home.kubeconfig("config", "kind.yaml");
    std::fs::write(
        &file,
        fixture("kind.yaml").replace("https://127.0.0.1:41234", "https://127.0.0.1:1"),
    )
    .unwrap();
    home.fake_kind(&fixture("kind.yaml"));
    let out = home.run(&[&file], &["doctor", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let api = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "API server")
        .unwrap();
    assert_eq!(api["cause"], "context-stale");
    assert!(api["fix"].as_str().unwrap().contains("porthole fix-kubeconfig"));
}
