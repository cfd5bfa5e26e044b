//! The `kind` and `k3d` binaries: found where an app started from the macOS Dock can find them
//! (it does not get the shell's PATH), run with arguments, never through a shell.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Bound on one `kind get kubeconfig`; it reads a file from the control-plane container.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("context `{0}` is not a kind (`kind-NAME`) or k3d (`k3d-NAME`) context: Porthole cannot fetch it")]
    Unknown(String),
    #[error("`{tool}` is not installed (looked in {})", .searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    NotInstalled { tool: &'static str, searched: Vec<PathBuf> },
    #[error("`{command}` failed: {message}")]
    Failed { command: String, message: String },
}

/// Which tool made a context, and the cluster's name in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Kind(String),
    K3d(String),
}

impl Origin {
    pub fn of(context: &str) -> Option<Origin> {
        if let Some(name) = context.strip_prefix("kind-") {
            return Some(Origin::Kind(name.to_string()));
        }
        context.strip_prefix("k3d-").map(|name| Origin::K3d(name.to_string()))
    }

    fn tool(&self) -> &'static str {
        match self {
            Origin::Kind(_) => "kind",
            Origin::K3d(_) => "k3d",
        }
    }

    /// The name is never read as an option, whatever it starts with: bound to its flag for
    /// kind, after `--` for k3d.
    fn args(&self) -> Vec<String> {
        match self {
            Origin::Kind(name) => vec!["get".into(), "kubeconfig".into(), format!("--name={name}")],
            Origin::K3d(name) => vec!["kubeconfig".into(), "get".into(), "--".into(), name.clone()],
        }
    }

    /// What the user would run to do the same by hand.
    pub fn export_hint(&self) -> String {
        match self {
            Origin::Kind(name) => format!("kind export kubeconfig --name {name}"),
            Origin::K3d(name) => format!("k3d kubeconfig merge {name} --kubeconfig-switch-context"),
        }
    }
}

/// Where binaries are looked for, and how long one run may take.
#[derive(Debug, Clone)]
pub struct Tools {
    pub search: Vec<PathBuf>,
    pub timeout: Duration,
}

impl Tools {
    /// `$PATH`, then the usual install directories (Homebrew on Apple silicon and Intel, Go,
    /// pipx-style user installs).
    pub fn from_env() -> Tools {
        Tools::from_path(std::env::var_os("PATH"))
    }

    /// The absolute directories of `path` (an empty or relative entry would look in whatever
    /// directory the app happens to run in), then the usual ones.
    pub fn from_path(path: Option<std::ffi::OsString>) -> Tools {
        let mut search: Vec<PathBuf> = path
            .map(|p| std::env::split_paths(&p).filter(|dir| dir.is_absolute()).collect())
            .unwrap_or_default();
        let home = directories::BaseDirs::new().map(|d| d.home_dir().to_path_buf());
        let usual = [
            Some(PathBuf::from("/opt/homebrew/bin")),
            Some(PathBuf::from("/usr/local/bin")),
        ]
        .into_iter()
        .chain([
            home.as_ref().map(|h| h.join("go/bin")),
            home.as_ref().map(|h| h.join(".local/bin")),
        ]);
        for dir in usual.flatten() {
            if !search.contains(&dir) {
                search.push(dir);
            }
        }
        Tools {
            search,
            timeout: RUN_TIMEOUT,
        }
    }

    pub fn find(&self, tool: &str) -> Option<PathBuf> {
        self.search
            .iter()
            .map(|dir| dir.join(tool))
            .find(|path| is_executable(path))
    }

    /// The cluster's current kubeconfig from the tool that made it (`kind get kubeconfig`).
    pub async fn fresh_kubeconfig(&self, context: &str) -> Result<String, ToolError> {
        let origin = Origin::of(context).ok_or_else(|| ToolError::Unknown(context.to_string()))?;
        let tool = origin.tool();
        let path = self.find(tool).ok_or_else(|| ToolError::NotInstalled {
            tool,
            searched: self.search.clone(),
        })?;
        let args = origin.args();
        let command = format!("{tool} {}", args.join(" "));
        // The tool runs `docker` (or `podman`) in turn: give it the same search list, which an
        // app started from the macOS Dock would otherwise not have.
        let search = std::env::join_paths(&self.search).unwrap_or_default();
        let failed = |message: String| ToolError::Failed {
            command: command.clone(),
            message,
        };
        // In a process group of its own, so that a timeout stops what it started too (`docker`
        // exec'ing into a hung node container), not only the tool.
        let child = tokio::process::Command::new(&path)
            .args(&args)
            .env("PATH", search)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| failed(e.to_string()))?;
        let group = child.id().map(|pid| pid as libc::pid_t);
        let output = match tokio::time::timeout(self.timeout, child.wait_with_output()).await {
            Ok(Ok(output)) => output,
            Ok(Err(e)) => return Err(failed(e.to_string())),
            Err(_) => {
                if let Some(group) = group {
                    // SAFETY: kill(2) on the process group we created for this run.
                    unsafe { libc::kill(-group, libc::SIGKILL) };
                }
                return Err(failed(format!("no answer in {:?}", self.timeout)));
            }
        };
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let message = stderr
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("no message")
                .trim();
            return Err(failed(format!("{message} ({})", output.status)));
        }
        String::from_utf8(output.stdout).map_err(|_| failed("its output is not text".into()))
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        assert_eq!(
            Origin::of("kind-openchoreo-local"),
            Some(Origin::Kind("openchoreo-local".into()))
        );
        assert_eq!(Origin::of("k3d-dev"), Some(Origin::K3d("dev".into())));
        assert_eq!(Origin::of("rancher-desktop"), None);
        assert_eq!(
            Origin::Kind("x".into()).export_hint(),
            "kind export kubeconfig --name x"
        );
    }

    #[test]
    fn the_usual_dirs_are_searched_after_path() {
        let tools = Tools::from_env();
        assert!(tools.search.contains(&PathBuf::from("/opt/homebrew/bin")));
        assert!(tools.search.contains(&PathBuf::from("/usr/local/bin")));
    }

    #[tokio::test]
    async fn a_missing_tool_is_named_with_where_it_was_looked_for() {
        let dir = tempfile::tempdir().unwrap();
        let tools = Tools {
            search: vec![dir.path().to_path_buf()],
            timeout: RUN_TIMEOUT,
        };
        let err = tools.fresh_kubeconfig("kind-x").await.unwrap_err();
        assert!(
            err.to_string().starts_with("`kind` is not installed (looked in "),
            "{err}"
        );
        assert!(matches!(
            tools.fresh_kubeconfig("minikube").await,
            Err(ToolError::Unknown(_))
        ));
    }

    #[test]
    fn empty_and_relative_path_entries_are_skipped() {
        let tools = Tools::from_path(Some("/usr/bin::bin:./tools:/opt/kind/bin".into()));
        assert_eq!(
            tools.search[..2],
            [PathBuf::from("/usr/bin"), PathBuf::from("/opt/kind/bin")]
        );
        assert!(tools.search.iter().all(|d| d.is_absolute()), "{:?}", tools.search);
    }

    fn script(dir: &Path, name: &str, body: &str) {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[tokio::test]
    async fn a_cluster_name_is_never_read_as_an_option() {
        let dir = tempfile::tempdir().unwrap();
        let args = dir.path().join("args");
        for tool in ["kind", "k3d"] {
            script(
                dir.path(),
                tool,
                &format!("printf '%s\\n' \"$@\" > '{}'\necho 'kind: Config'\n", args.display()),
            );
        }
        let tools = Tools {
            search: vec![dir.path().to_path_buf()],
            timeout: RUN_TIMEOUT,
        };
        tools.fresh_kubeconfig("kind---help").await.unwrap();
        assert_eq!(
            std::fs::read_to_string(&args).unwrap(),
            "get\nkubeconfig\n--name=--help\n"
        );
        tools.fresh_kubeconfig("k3d--all").await.unwrap();
        assert_eq!(std::fs::read_to_string(&args).unwrap(), "kubeconfig\nget\n--\n-all\n");
    }

    #[tokio::test]
    async fn a_tool_that_hangs_is_stopped_with_what_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        // Like kind exec'ing docker: a child of its own that would outlive it.
        script(
            dir.path(),
            "kind",
            &format!(
                "/bin/sleep 1000 &\necho $! > '{}'\n/bin/sleep 1000\n",
                pid_file.display()
            ),
        );
        let tools = Tools {
            search: vec![dir.path().to_path_buf()],
            timeout: Duration::from_millis(500),
        };
        let err = tools.fresh_kubeconfig("kind-x").await.unwrap_err();
        assert!(err.to_string().contains("no answer in 500ms"), "{err}");
        let pid: libc::pid_t = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
        // Killed with its group; reaped by whoever inherited it (polled: nothing announces it).
        let gone = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                let state = stat
                    .rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().next());
                if matches!(state, None | Some("Z")) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(gone.is_ok(), "the tool's own child {pid} still runs");
    }
}
