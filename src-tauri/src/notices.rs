//! Which notifications to show, from the engine's events: one per real transition, a summary
//! instead of a burst, nothing for what the engine did not report. Pure: [`crate::shell`] feeds
//! it events and a clock, and shows what comes out.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use porthole::health::{Cause, State};
use porthole::kubeconfig::state::{Fixed, KubeconfigState};
use porthole::{Event, Snapshot};
use serde::{Deserialize, Serialize};

/// Forward transitions closer together than this are told as one.
pub const BATCH: Duration = Duration::from_millis(400);
/// From this many forwards at once, one summary instead of one notification each.
const SUMMARY_FROM: usize = 3;
/// After a successful fix, "the context is right again" would say the same thing twice.
const FIX_ECHO: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Down,
    Recovered,
    Context,
    Fix,
    /// The config file was edited into something invalid: always shown.
    Config,
    /// The app itself failed at something (its control socket, its settings window): always
    /// shown.
    App,
}

/// Which kinds to show: each can be muted in the settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Mutes {
    pub down: bool,
    pub recovered: bool,
    pub context: bool,
    pub fix: bool,
}

impl Mutes {
    pub fn mutes(&self, kind: Kind) -> bool {
        match kind {
            Kind::Down => self.down,
            Kind::Recovered => self.recovered,
            Kind::Context => self.context,
            Kind::Fix => self.fix,
            Kind::Config | Kind::App => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub kind: Kind,
    pub summary: String,
    pub body: String,
}

/// A forward that changed within the current batch.
#[derive(Debug, Clone)]
struct Change {
    port: String,
    /// `Some` when it went down (with its cause), `None` when it came back.
    down: Option<Option<Cause>>,
}

#[derive(Debug, Default)]
pub struct Notices {
    /// By forward name; a forward that goes down and back within a batch cancels out.
    batch: BTreeMap<String, Change>,
    batch_since: Option<Instant>,
    fixed_at: Option<Instant>,
}

fn port_of(snapshot: &Snapshot, name: &str) -> String {
    snapshot
        .forward(name)
        .and_then(|f| f.local)
        .map(|a| format!(":{}", a.port()))
        .unwrap_or_default()
}

impl Notices {
    /// When the open batch must be flushed, if one is open.
    pub fn deadline(&self) -> Option<Instant> {
        self.batch_since.map(|t| t + BATCH)
    }

    /// Takes one engine event; kubeconfig notices come out at once, forward ones at [`flush`].
    ///
    /// [`flush`]: Notices::flush
    pub fn observe(&mut self, event: &Event, snapshot: &Snapshot, now: Instant) -> Vec<Notice> {
        match event {
            Event::Forward { name, from, to } => {
                let went_down = from.state != State::Down && to.state == State::Down;
                let came_back = from.state == State::Down && matches!(to.state, State::Healthy | State::Degraded);
                let turned_off = to.state == State::Disabled;
                if turned_off {
                    self.batch.remove(name);
                } else if went_down || came_back {
                    let change = Change {
                        port: port_of(snapshot, name),
                        down: went_down.then(|| to.cause.clone()),
                    };
                    match self.batch.remove(name) {
                        // Down and back (or back and down) inside one batch: nothing to tell.
                        Some(earlier) if earlier.down.is_some() != change.down.is_some() => {}
                        _ => {
                            self.batch.insert(name.clone(), change);
                        }
                    }
                    self.batch_since.get_or_insert(now);
                }
                Vec::new()
            }
            Event::Removed { name } => {
                self.batch.remove(name);
                Vec::new()
            }
            Event::Kubeconfig { from, to } => self.kubeconfig(from.as_ref(), to, now),
            Event::Route { .. } | Event::Cluster { .. } => Vec::new(),
        }
    }

    fn kubeconfig(&mut self, from: Option<&KubeconfigState>, to: &KubeconfigState, now: Instant) -> Vec<Notice> {
        let was_ok = from.is_none_or(|s| s.is_ok());
        if !to.is_ok() && (was_ok || from.map(|s| s.id()) != Some(to.id())) {
            let mut body = to.sentence();
            if let Some(fix) = to.fix() {
                body += &format!(". Fix: {fix} (Fix kubeconfig in the Porthole menu).");
            }
            return vec![Notice {
                kind: Kind::Context,
                summary: "kubectl points away from Porthole's cluster".into(),
                body,
            }];
        }
        let echo = self.fixed_at.is_some_and(|t| now.duration_since(t) < FIX_ECHO);
        if to.is_ok() && from.is_some_and(|s| !s.is_ok()) && !echo {
            return vec![Notice {
                kind: Kind::Context,
                summary: "kubectl's context is right again".into(),
                body: to.sentence(),
            }];
        }
        Vec::new()
    }

    /// What a click on "Fix kubeconfig" came to.
    pub fn fixed(&mut self, outcome: &Result<Option<Fixed>, String>, now: Instant) -> Notice {
        match outcome {
            Ok(Some(fixed)) => {
                self.fixed_at = Some(now);
                let mut body = format!("{} in {}", fixed.summary, fixed.file.display());
                if let Some(backup) = &fixed.backup {
                    body += &format!(" (backup: {})", backup.display());
                }
                Notice {
                    kind: Kind::Fix,
                    summary: "kubeconfig fixed".into(),
                    body,
                }
            }
            Ok(None) => Notice {
                kind: Kind::Fix,
                summary: "kubeconfig already right".into(),
                body: "nothing was changed".into(),
            },
            Err(error) => Notice {
                kind: Kind::Fix,
                summary: "could not fix the kubeconfig".into(),
                body: error.clone(),
            },
        }
    }

    /// The forward notices of the batch: one each, or a summary from [`SUMMARY_FROM`] on.
    pub fn flush(&mut self) -> Vec<Notice> {
        self.batch_since = None;
        let batch = std::mem::take(&mut self.batch);
        let (down, back): (Vec<_>, Vec<_>) = batch.into_iter().partition(|(_, c)| c.down.is_some());
        let mut notices = Vec::new();
        if down.len() >= SUMMARY_FROM {
            notices.push(down_summary(&down));
        } else {
            notices.extend(down.iter().map(|(name, change)| {
                let cause = change.down.clone().flatten();
                Notice {
                    kind: Kind::Down,
                    summary: format!("{name} {} is down", change.port),
                    body: cause_text(cause.as_ref()),
                }
            }));
        }
        if back.len() >= SUMMARY_FROM {
            let names: Vec<&str> = back.iter().map(|(n, _)| n.as_str()).collect();
            notices.push(Notice {
                kind: Kind::Recovered,
                summary: format!("{} forwards are back", back.len()),
                body: names.join(", "),
            });
        } else {
            notices.extend(back.iter().map(|(name, change)| Notice {
                kind: Kind::Recovered,
                summary: format!("{name} {} is back", change.port),
                body: "healthy again".into(),
            }));
        }
        notices
    }
}

fn cause_text(cause: Option<&Cause>) -> String {
    match cause {
        Some(Cause {
            message,
            fix: Some(fix),
            ..
        }) => format!("{message}. Fix: {fix}"),
        Some(cause) => cause.message.clone(),
        None => "no cause reported".into(),
    }
}

/// "5 forwards are down": the shared cause once (the cluster went away), else each one's.
fn down_summary(down: &[(String, Change)]) -> Notice {
    let causes: Vec<Option<&Cause>> = down
        .iter()
        .map(|(_, c)| c.down.as_ref().and_then(|c| c.as_ref()))
        .collect();
    let shared = causes
        .first()
        .copied()
        .flatten()
        .filter(|first| causes.iter().all(|c| c.is_some_and(|c| c.id == first.id)));
    let names: Vec<&str> = down.iter().map(|(n, _)| n.as_str()).collect();
    let body = match shared {
        Some(cause) => format!("{} ({})", cause_text(Some(cause)), names.join(", ")),
        None => down
            .iter()
            .zip(&causes)
            .map(|((name, _), cause)| format!("{name}: {}", cause.map_or("no cause reported", |c| &c.message)))
            .collect::<Vec<_>>()
            .join("\n"),
    };
    Notice {
        kind: Kind::Down,
        summary: format!("{} forwards are down", down.len()),
        body,
    }
}

#[cfg(test)]
mod tests {
    use porthole::engine::{ClusterStatusView, ForwardStatus};
    use porthole::health::{CauseId, Health};

    use super::*;

    fn snapshot(names: &[&str]) -> Snapshot {
        Snapshot {
            context: Some("kind-a".into()),
            kubectl_context: Some("kind-a".into()),
            kubeconfig: None,
            cluster: ClusterStatusView {
                state: "connected".into(),
                detail: None,
            },
            forwards: names
                .iter()
                .enumerate()
                .map(|(i, n)| ForwardStatus {
                    name: n.to_string(),
                    namespace: "ns".into(),
                    service: n.to_string(),
                    local: Some(([127, 0, 0, 1], 3000 + i as u16).into()),
                    enabled: true,
                    health: Health::new(State::Healthy, None),
                    route: None,
                    stats: Default::default(),
                })
                .collect(),
        }
    }

    fn change(name: &str, from: State, to: State, cause: Option<CauseId>) -> Event {
        Event::Forward {
            name: name.into(),
            from: Health::new(from, None),
            to: Health::new(
                to,
                cause.map(|id| Cause::new(id, format!("{} broke", id.as_str())).with_fix("do x")),
            ),
        }
    }

    #[test]
    fn one_forward_down_then_back_is_two_notices() {
        let snap = snapshot(&["console"]);
        let mut n = Notices::default();
        let t = Instant::now();
        assert!(
            n.observe(
                &change("console", State::Healthy, State::Down, Some(CauseId::ServiceMissing)),
                &snap,
                t
            )
            .is_empty()
        );
        assert_eq!(n.deadline(), Some(t + BATCH));
        let down = n.flush();
        assert_eq!(down.len(), 1);
        assert_eq!(down[0].summary, "console :3000 is down");
        assert_eq!(down[0].body, "service-missing broke. Fix: do x");
        n.observe(&change("console", State::Down, State::Healthy, None), &snap, t);
        let back = n.flush();
        assert_eq!(back[0].kind, Kind::Recovered);
        assert_eq!(back[0].summary, "console :3000 is back");
        assert!(n.flush().is_empty() && n.deadline().is_none());
    }

    #[test]
    fn many_down_at_once_is_one_summary_with_the_shared_cause() {
        let names = ["a", "b", "c", "d"];
        let snap = snapshot(&names);
        let mut n = Notices::default();
        for name in names {
            n.observe(
                &change(name, State::Healthy, State::Down, Some(CauseId::ClusterUnreachable)),
                &snap,
                Instant::now(),
            );
        }
        let notices = n.flush();
        assert_eq!(notices.len(), 1);
        assert_eq!(notices[0].summary, "4 forwards are down");
        assert_eq!(notices[0].body, "cluster-unreachable broke. Fix: do x (a, b, c, d)");
    }

    #[test]
    fn a_blip_inside_a_batch_and_degraded_or_disabled_changes_say_nothing() {
        let snap = snapshot(&["a", "b"]);
        let mut n = Notices::default();
        let t = Instant::now();
        n.observe(
            &change("a", State::Healthy, State::Down, Some(CauseId::NoReadyEndpoints)),
            &snap,
            t,
        );
        n.observe(&change("a", State::Down, State::Healthy, None), &snap, t);
        n.observe(
            &change("b", State::Healthy, State::Degraded, Some(CauseId::ClusterUnreachable)),
            &snap,
            t,
        );
        n.observe(&change("b", State::Degraded, State::Disabled, None), &snap, t);
        assert!(n.flush().is_empty());
    }

    #[test]
    fn context_wrong_and_right_again_but_no_echo_after_a_fix() {
        let snap = snapshot(&[]);
        let mut n = Notices::default();
        let t = Instant::now();
        let ok = KubeconfigState::Ok {
            context: "kind-a".into(),
        };
        let wrong = KubeconfigState::ContextMismatch {
            expected: "kind-a".into(),
            current: "other".into(),
        };
        let ev = |from: &KubeconfigState, to: &KubeconfigState| Event::Kubeconfig {
            from: Some(from.clone()),
            to: to.clone(),
        };
        let first = Event::Kubeconfig {
            from: None,
            to: ok.clone(),
        };
        assert!(n.observe(&first, &snap, t).is_empty());
        let went = n.observe(&ev(&ok, &wrong), &snap, t);
        assert_eq!(went[0].kind, Kind::Context);
        assert!(
            went[0].body.contains("set current-context to kind-a"),
            "{}",
            went[0].body
        );
        assert_eq!(
            n.observe(&ev(&wrong, &ok), &snap, t)[0].summary,
            "kubectl's context is right again"
        );
        n.observe(&ev(&ok, &wrong), &snap, t);
        let fixed = Fixed {
            summary: "set current-context to kind-a".into(),
            file: "/home/u/.kube/config".into(),
            backup: Some("/home/u/.kube/config.porthole-backup.1".into()),
        };
        assert_eq!(n.fixed(&Ok(Some(fixed)), t).summary, "kubeconfig fixed");
        assert!(
            n.observe(&ev(&wrong, &ok), &snap, t + Duration::from_secs(1))
                .is_empty()
        );
    }
}
