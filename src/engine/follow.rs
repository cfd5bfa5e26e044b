//! The engine's followers: tasks that mirror the kubeconfig, the cluster view and the
//! connection counters into the snapshot and events.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Core, Event};
use crate::config::ClusterSpec;
use crate::discovery::{ClusterStatus, ClusterView};
use crate::kubeconfig::tools::Tools;
use crate::kubeconfig::{self, Loaded};
use crate::status::ClusterStatusView;
use crate::status::StatsView;

/// How long a burst of kubeconfig writes may take before it is read.
const KUBECONFIG_SETTLE: Duration = Duration::from_millis(100);
/// How often changed connection counters are pushed into the snapshot.
const STATS_PUSH: Duration = Duration::from_secs(1);

/// Fingerprint of the kubeconfig entries the client for `cluster` is built from.
pub(super) fn fingerprint(cluster: &ClusterSpec) -> Option<u64> {
    let loaded = Loaded::for_cluster(cluster).ok()?;
    let context = loaded.effective_context(cluster).ok()?;
    loaded.fingerprint(&context)
}

impl Core {
    /// Re-reads the kubeconfig when its files change: kubectl's current-context for the
    /// snapshot (and the guard, when this is the cluster kubectl should point at), and a new
    /// client when the context's own entries changed (a re-created kind cluster listens on a new
    /// port, with new certificates) or the context appeared.
    pub(super) async fn follow_kubeconfig(self, files: Vec<PathBuf>, name: String, cancel: CancellationToken) {
        let mut changes = match crate::watch::Files::new(&files, KUBECONFIG_SETTLE) {
            Ok(watching) => watching,
            Err(e) => return warn!(error = %e, "cannot watch the kubeconfig; changes are seen on `status` only"),
        };
        if let Some(cluster) = self.guarded(&name).await {
            self.refresh_kubeconfig_state(&cluster).await;
        }
        loop {
            // Tools write, rename and chmod in a burst: read once after it.
            tokio::select! {
                _ = cancel.cancelled() => return,
                change = changes.changed() => if change.is_none() { return },
            }
            let guarded = self.guarded(&name).await;
            if let Some(cluster) = &guarded {
                self.refresh_kubeconfig_state(cluster).await;
            }
            let mut guard = self.running.lock().await;
            let Some(running) = guard.as_mut() else { return };
            // kubectl's context is read from the marked cluster's kubeconfig, which its own
            // follower watches: the other clusters' followers need not read it again.
            if let Some(cluster) = &guarded {
                self.refresh_kubectl_context(cluster);
            }
            let Some(run) = running.cluster(&name) else { return };
            let cluster = run.spec.clone();
            if fingerprint(&cluster) != run.discovery.fingerprint {
                info!("the kubeconfig entries of the context changed: reconnecting");
                // This task belongs to the old generation: the new one has its own watcher.
                self.restart_discovery(running, &cluster).await;
                return;
            }
        }
    }

    /// Cluster `name`'s settings if it is the one kubectl should point at.
    async fn guarded(&self, name: &str) -> Option<ClusterSpec> {
        self.cluster().await.filter(|c| c.name == name)
    }

    /// Copies the connection counters into the snapshot, at most once per `STATS_PUSH` and only
    /// when they changed: subscribers see traffic without asking, an idle engine stays quiet.
    pub(super) async fn follow_stats(self) {
        let mut tick = tokio::time::interval(STATS_PUSH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let counters: Vec<(String, StatsView)> = match self.running.lock().await.as_ref() {
                Some(running) => running
                    .forwards
                    .iter()
                    .map(|(name, h)| (name.clone(), h.stats.view()))
                    .collect(),
                // Not started yet (or stopping: then the cancellation ends this loop).
                None => continue,
            };
            self.hub.snapshot.send_if_modified(|s| {
                let mut modified = false;
                for status in &mut s.forwards {
                    if let Some((_, view)) = counters.iter().find(|(name, _)| *name == status.name)
                        && status.stats != *view
                    {
                        status.stats = *view;
                        modified = true;
                    }
                }
                modified
            });
        }
    }

    /// Mirrors one cluster's view into its report in the snapshot, and its changes of state
    /// into events. Ends with the cluster (its view's sender dropped) or the engine.
    pub(super) async fn follow_cluster(self, mut view: watch::Receiver<ClusterView>) {
        let mut last: ClusterStatusView = (&ClusterStatus::Connecting).into();
        loop {
            let (status, context, name) = {
                let v = view.borrow_and_update();
                (
                    ClusterStatusView::from(&v.status),
                    v.context.clone(),
                    v.cluster.name.clone(),
                )
            };
            if let Some(context) = context {
                self.set_context(&name, context);
            }
            if status != last {
                self.hub.snapshot.send_modify(|s| {
                    if let Some(report) = s.clusters.iter_mut().find(|c| c.name == name) {
                        report.status = status.clone();
                    }
                });
                // Only a change of state is news; a new wording of the same failure is not.
                if status.state != last.state {
                    let _ = self.hub.events.send(Event::Cluster {
                        name,
                        from: last.clone(),
                        to: status.clone(),
                    });
                }
                last = status;
            }
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                changed = view.changed() => if changed.is_err() { return },
            }
        }
    }

    /// Reads kubectl's current-context (through the kubeconfig of `cluster`, the one kubectl
    /// should point at); with a context configured, that is the cluster's (with none, it uses
    /// kubectl's: the one discovery reports).
    pub(super) fn refresh_kubectl_context(&self, cluster: &ClusterSpec) {
        let current = Loaded::for_cluster(cluster)
            .ok()
            .and_then(|l| l.current_context().map(String::from));
        // Both in one snapshot: none shows the new context beside kubectl's old one.
        let (name, context) = (cluster.name.clone(), cluster.context.clone());
        self.hub.snapshot.send_if_modified(|s| {
            let kubectl = replace(&mut s.kubectl_context, current);
            let ours = match (context, s.clusters.iter_mut().find(|c| c.name == name)) {
                (Some(context), Some(report)) => replace(&mut report.context, Some(context)),
                _ => false,
            };
            kubectl | ours
        });
    }

    /// Cluster `name`'s context: the one configured, or the one discovery resolved.
    pub(super) fn set_context(&self, name: &str, context: String) {
        self.hub
            .snapshot
            .send_if_modified(|s| match s.clusters.iter_mut().find(|c| c.name == name) {
                Some(report) => replace(&mut report.context, Some(context)),
                None => false,
            });
    }

    /// Inspects the kubeconfig from Porthole's context and reports a change of state.
    pub(super) async fn refresh_kubeconfig_state(&self, cluster: &ClusterSpec) {
        let _one_at_a_time = self.kubeconfig.lock().await;
        self.inspect_kubeconfig(cluster, false).await;
    }

    /// The inspection itself; the caller holds `kubeconfig` (a fix holds it across its write and
    /// this, so the watcher cannot report the fix's change as news of its own).
    pub(super) async fn inspect_kubeconfig(&self, cluster: &ClusterSpec, fixed: bool) {
        let Some(expected) = cluster.context.clone() else {
            return;
        };
        let files = kubeconfig::files(cluster);
        let state = match kubeconfig::state::inspect(files, &expected, &Tools::from_env()).await {
            Ok(inspection) => inspection.state,
            Err(e) => return warn!(error = %e, "cannot read the kubeconfig"),
        };
        let mut previous = None;
        let changed = self.hub.snapshot.send_if_modified(|s| {
            if s.kubeconfig.as_ref().is_some_and(|k| k.state == state) {
                return false;
            }
            previous = s.kubeconfig.replace(state.clone().into()).map(|k| k.state);
            true
        });
        if !changed {
            return;
        }
        match state.fix() {
            Some(fix) => warn!(state = state.id(), %fix, "{} (Porthole keeps using its own context)", state.sentence()),
            None => info!(state = state.id(), "{}", state.sentence()),
        }
        let _ = self.hub.events.send(Event::Kubeconfig {
            from: previous,
            to: state,
            fixed,
        });
    }
}

/// Sets `slot` to `value`; whether that changed it.
fn replace<T: PartialEq>(slot: &mut T, value: T) -> bool {
    if *slot == value {
        return false;
    }
    *slot = value;
    true
}
