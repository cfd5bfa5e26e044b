//! Which notifications to show, from what the engine reports: one per real transition, a
//! summary instead of a burst, nothing for what the engine did not report. Pure: [`crate::shell`]
//! feeds it snapshots, events and a clock, and shows what comes out.
//!
//! It is level-triggered: per forward it keeps the last settled state the engine reported
//! (down, or up: healthy or degraded; `starting` settles nothing) and what the user was last
//! told. A flush tells the difference. So a recovery is told whatever states it passed through
//! (`down → starting → healthy`), a state seen twice (in a snapshot and in an event) is told
//! once, and a forward that is down when the app starts is told as soon as it is seen down.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use porthole::cause::{Cause, Health, State};
use porthole::kubeconfig::state::{FixError, Fixed, KubeconfigState};
use porthole::{Event, Snapshot};
use serde::{Deserialize, Serialize};

/// Forward transitions closer together than this are told as one.
pub const BATCH: Duration = Duration::from_millis(400);
/// From this many forwards at once, one summary instead of one notification each.
const SUMMARY_FROM: usize = 3;

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
    /// The forwards it is about (none for kubeconfig and app notices).
    pub forwards: Vec<String>,
}

impl Notice {
    pub fn new(kind: Kind, summary: impl Into<String>, body: impl Into<String>) -> Notice {
        Notice {
            kind,
            summary: summary.into(),
            body: body.into(),
            forwards: Vec::new(),
        }
    }
}

/// A forward's last settled state, as far as notifications go.
#[derive(Debug, Clone, PartialEq)]
enum Settled {
    /// Nothing settled yet (only `starting` seen).
    Unknown,
    /// Healthy, or degraded (serving, with this cause).
    Up(Option<Cause>),
    Down(Option<Cause>),
    /// Turned off: nothing is told until it is on again.
    Off,
}

/// What the user was last told of a forward (muting is the shell's: a muted notice counts as
/// told, so its recovery is told as it would be).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Told {
    Nothing,
    Down,
}

#[derive(Debug, Clone)]
struct Track {
    port: String,
    settled: Settled,
    told: Told,
}

#[derive(Debug, Default)]
pub struct Notices {
    /// By forward name.
    forwards: BTreeMap<String, Track>,
    batch_since: Option<Instant>,
    /// A kubeconfig change came while there were no forwards (a first run): nothing is told
    /// until the first forward comes, then the kubeconfig's state then, if it is wrong.
    kubeconfig_held: bool,
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

    /// Takes the state of every forward in a snapshot: forwards it no longer has are forgotten.
    pub fn observe_snapshot(&mut self, snapshot: &Snapshot, now: Instant) {
        self.forwards.retain(|name, _| snapshot.forward(name).is_some());
        for forward in &snapshot.forwards {
            self.health(&forward.name, &forward.health, snapshot, now);
        }
    }

    /// Takes one engine event; kubeconfig notices come out at once, forward ones at [`flush`].
    ///
    /// [`flush`]: Notices::flush
    pub fn observe(&mut self, event: &Event, snapshot: &Snapshot, now: Instant) -> Vec<Notice> {
        match event {
            Event::Forward { name, to, .. } => {
                self.health(name, to, snapshot, now);
                self.release_kubeconfig(snapshot)
            }
            Event::Removed { name } => {
                self.forwards.remove(name);
                Vec::new()
            }
            Event::Kubeconfig { .. } if snapshot.forwards.is_empty() => {
                self.kubeconfig_held = true;
                Vec::new()
            }
            Event::Kubeconfig { from, to, fixed } => {
                self.kubeconfig_held = false;
                self.kubeconfig(from.as_ref(), to, *fixed)
            }
            Event::Route { .. } | Event::Cluster { .. } => Vec::new(),
        }
    }

    fn health(&mut self, name: &str, health: &Health, snapshot: &Snapshot, now: Instant) {
        let settled = match health.state {
            State::Starting => return,
            State::Healthy | State::Degraded => Settled::Up(health.cause.clone()),
            State::Down => Settled::Down(health.cause.clone()),
            State::Disabled => Settled::Off,
        };
        let track = self.forwards.entry(name.to_string()).or_insert_with(|| Track {
            port: String::new(),
            settled: Settled::Unknown,
            told: Told::Nothing,
        });
        let port = port_of(snapshot, name);
        if !port.is_empty() {
            track.port = port;
        }
        if settled == Settled::Off {
            // Nothing is told while off, and nothing of before once it is on again.
            track.told = Told::Nothing;
        }
        let was_down = matches!(track.settled, Settled::Down(_));
        let is_down = matches!(settled, Settled::Down(_));
        track.settled = settled;
        if was_down != is_down || track.pending() {
            self.batch_since.get_or_insert(now);
        }
    }

    /// The kubeconfig's state held back while there were no forwards, once there are.
    fn release_kubeconfig(&mut self, snapshot: &Snapshot) -> Vec<Notice> {
        if !self.kubeconfig_held || snapshot.forwards.is_empty() {
            return Vec::new();
        }
        self.kubeconfig_held = false;
        match &snapshot.kubeconfig {
            Some(report) if !report.state.is_ok() => self.kubeconfig(None, &report.state, false),
            _ => Vec::new(),
        }
    }

    /// A change of the kubeconfig's state; one Porthole's own fix made is told by the fix's
    /// notice ([`Notices::fixed`]), not again here.
    fn kubeconfig(&mut self, from: Option<&KubeconfigState>, to: &KubeconfigState, fixed: bool) -> Vec<Notice> {
        let was_ok = from.is_none_or(|s| s.is_ok());
        if !to.is_ok() && (was_ok || from.map(|s| s.id()) != Some(to.id())) {
            let mut body = to.sentence();
            if let Some(fix) = to.fix() {
                body += &format!(". Fix: {fix} (Fix kubeconfig in the Porthole menu).");
            }
            return vec![Notice::new(
                Kind::Context,
                "kubectl points away from Porthole's cluster",
                body,
            )];
        }
        if to.is_ok() && from.is_some_and(|s| !s.is_ok()) && !fixed {
            return vec![Notice::new(
                Kind::Context,
                "kubectl's context is right again",
                to.sentence(),
            )];
        }
        Vec::new()
    }

    /// What a click on "Fix kubeconfig" came to.
    pub fn fixed(&self, outcome: &Result<Option<Fixed>, FixError>) -> Notice {
        match outcome {
            Ok(Some(fixed)) => {
                let mut body = format!("{} in {}", fixed.summary, fixed.file.display());
                if let Some(backup) = &fixed.backup {
                    body += &format!(" (backup: {})", backup.display());
                }
                Notice::new(Kind::Fix, "kubeconfig fixed", body)
            }
            Ok(None) => Notice::new(Kind::Fix, "kubeconfig already right", "nothing was changed"),
            Err(error) => Notice::new(Kind::Fix, "could not fix the kubeconfig", error.to_string()),
        }
    }

    /// The forward notices of the batch: for each forward whose settled state differs from
    /// what the user was told, one notice, or a summary from [`SUMMARY_FROM`] forwards on.
    pub fn flush(&mut self) -> Vec<Notice> {
        self.batch_since = None;
        let mut down: Vec<(String, String, Option<Cause>)> = Vec::new();
        let mut back: Vec<(String, String, Option<Cause>)> = Vec::new();
        for (name, track) in &mut self.forwards {
            match (&track.settled, track.told) {
                (Settled::Down(cause), Told::Nothing) => {
                    track.told = Told::Down;
                    down.push((name.clone(), track.port.clone(), cause.clone()));
                }
                (Settled::Up(degraded), Told::Down) => {
                    track.told = Told::Nothing;
                    back.push((name.clone(), track.port.clone(), degraded.clone()));
                }
                _ => {}
            }
        }
        let mut notices = Vec::new();
        if down.len() >= SUMMARY_FROM {
            notices.push(down_summary(&down));
        } else {
            notices.extend(down.into_iter().map(|(name, port, cause)| Notice {
                kind: Kind::Down,
                summary: format!("{name} {port} is down"),
                body: cause_text(cause.as_ref()),
                forwards: vec![name],
            }));
        }
        if back.len() >= SUMMARY_FROM {
            let names: Vec<String> = back.into_iter().map(|(n, _, _)| n).collect();
            notices.push(Notice {
                kind: Kind::Recovered,
                summary: format!("{} forwards are back", names.len()),
                body: names.join(", "),
                forwards: names,
            });
        } else {
            notices.extend(back.into_iter().map(|(name, port, degraded)| Notice {
                kind: Kind::Recovered,
                summary: format!("{name} {port} is back"),
                body: match degraded {
                    Some(cause) => format!("serving again, degraded: {}", cause.message),
                    None => "healthy again".into(),
                },
                forwards: vec![name],
            }));
        }
        notices
    }
}

impl Track {
    /// Whether the next flush has something to tell (or to settle silently).
    fn pending(&self) -> bool {
        matches!(
            (&self.settled, self.told),
            (Settled::Down(_), Told::Nothing) | (Settled::Up(_), Told::Down)
        )
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
fn down_summary(down: &[(String, String, Option<Cause>)]) -> Notice {
    let causes: Vec<Option<&Cause>> = down.iter().map(|(_, _, c)| c.as_ref()).collect();
    let shared = causes
        .first()
        .copied()
        .flatten()
        .filter(|first| causes.iter().all(|c| c.is_some_and(|c| c.id == first.id)));
    let names: Vec<String> = down.iter().map(|(n, _, _)| n.clone()).collect();
    let body = match shared {
        Some(cause) => format!("{} ({})", cause_text(Some(cause)), names.join(", ")),
        None => down
            .iter()
            .map(|(name, _, cause)| {
                format!(
                    "{name}: {}",
                    cause.as_ref().map_or("no cause reported", |c| c.message.as_str())
                )
            })
            .collect::<Vec<_>>()
            .join("\n"),
    };
    Notice {
        kind: Kind::Down,
        summary: format!("{} forwards are down", down.len()),
        body,
        forwards: names,
    }
}

/// A notification body as freedesktop notification servers read it: their markup (`<b>`,
/// `<a href=…>`, `&amp;`) escaped, so a service or pod name or an API server's message shows as
/// text, never as a link or formatting; control characters shown as `?`.
pub fn markup_escaped(body: &str) -> String {
    let mut out = String::with_capacity(body.len());
    for c in body.chars() {
        match c {
            '&' => out += "&amp;",
            '<' => out += "&lt;",
            '>' => out += "&gt;",
            // A line break is the one control character a body may hold.
            '\n' => out.push('\n'),
            c if c.is_control() => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use porthole::cause::{CauseId, Health};
    use porthole::engine::{ClusterReport, ClusterStatusView, ForwardStatus};

    use super::*;

    #[test]
    fn a_body_is_text_to_the_notification_server() {
        assert_eq!(
            markup_escaped("<a href=\"https://evil\">pod</a> & co\u{1b}[1m\nnext"),
            "&lt;a href=\"https://evil\"&gt;pod&lt;/a&gt; &amp; co?[1m\nnext"
        );
    }

    fn snapshot(names: &[&str]) -> Snapshot {
        Snapshot {
            kubectl_context: Some("kind-a".into()),
            kubeconfig: None,
            clusters: vec![ClusterReport {
                name: "default".into(),
                context: Some("kind-a".into()),
                kubectl: true,
                status: ClusterStatusView {
                    state: "connected".into(),
                    detail: None,
                },
            }],
            forwards: names
                .iter()
                .enumerate()
                .map(|(i, n)| ForwardStatus {
                    name: n.to_string(),
                    cluster: "default".into(),
                    namespace: "ns".into(),
                    service: n.to_string(),
                    local: Some(([127, 0, 0, 1], 3000 + i as u16).into()),
                    enabled: true,
                    health: Health::new(State::Healthy, None),
                    path: None,
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
        let snap = snapshot(&["a"]);
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
            fixed: false,
        };
        let first = Event::Kubeconfig {
            from: None,
            to: ok.clone(),
            fixed: false,
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
        assert_eq!(n.fixed(&Ok(Some(fixed))).summary, "kubeconfig fixed");
        let by_the_fix = Event::Kubeconfig {
            from: Some(wrong.clone()),
            to: ok.clone(),
            fixed: true,
        };
        assert!(
            n.observe(&by_the_fix, &snap, t + Duration::from_secs(60)).is_empty(),
            "the fix's own notice told it, however late its event"
        );
    }

    #[test]
    fn with_no_forwards_a_wrong_context_waits_for_the_first_forward() {
        let wrong = KubeconfigState::ContextMismatch {
            expected: "kind-a".into(),
            current: "other".into(),
        };
        let ok = KubeconfigState::Ok {
            context: "kind-a".into(),
        };
        let mut n = Notices::default();
        let t = Instant::now();
        let to_wrong = Event::Kubeconfig {
            from: None,
            to: wrong.clone(),
            fixed: false,
        };
        assert!(
            n.observe(&to_wrong, &snapshot(&[]), t).is_empty(),
            "no forwards: no alarm"
        );

        // The first forward comes while kubectl still points away: told then, once.
        let mut with_one = snapshot(&["a"]);
        with_one.kubeconfig = Some(wrong.clone().into());
        let told = n.observe(&change("a", State::Starting, State::Healthy, None), &with_one, t);
        assert_eq!(told.len(), 1);
        assert_eq!(told[0].kind, Kind::Context);
        assert!(
            n.observe(&change("a", State::Healthy, State::Healthy, None), &with_one, t)
                .is_empty()
        );

        // Put right before any forward came: nothing to tell at all.
        let mut n = Notices::default();
        n.observe(&to_wrong, &snapshot(&[]), t);
        let back = Event::Kubeconfig {
            from: Some(wrong),
            to: ok.clone(),
            fixed: false,
        };
        assert!(n.observe(&back, &snapshot(&[]), t).is_empty());
        let mut fine = snapshot(&["a"]);
        fine.kubeconfig = Some(ok.into());
        assert!(
            n.observe(&change("a", State::Starting, State::Healthy, None), &fine, t)
                .is_empty()
        );
    }

    #[test]
    fn a_recovery_through_starting_is_told() {
        let snap = snapshot(&["ghost"]);
        let mut n = Notices::default();
        let t = Instant::now();
        n.observe(
            &change("ghost", State::Healthy, State::Down, Some(CauseId::ServiceMissing)),
            &snap,
            t,
        );
        assert_eq!(n.flush()[0].summary, "ghost :3000 is down");
        n.observe(&change("ghost", State::Down, State::Starting, None), &snap, t);
        assert!(n.deadline().is_none(), "starting settles nothing");
        n.observe(&change("ghost", State::Starting, State::Healthy, None), &snap, t);
        let back = n.flush();
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].summary, "ghost :3000 is back");
    }

    #[test]
    fn a_recovery_to_degraded_says_what_is_still_wrong() {
        let snap = snapshot(&["api"]);
        let mut n = Notices::default();
        let t = Instant::now();
        n.observe(
            &change("api", State::Healthy, State::Down, Some(CauseId::ProbeFailed)),
            &snap,
            t,
        );
        n.flush();
        n.observe(
            &change("api", State::Down, State::Degraded, Some(CauseId::ClusterUnreachable)),
            &snap,
            t,
        );
        let back = n.flush();
        assert_eq!(back[0].summary, "api :3000 is back");
        assert_eq!(back[0].body, "serving again, degraded: cluster-unreachable broke");
    }

    #[test]
    fn a_forward_down_at_start_is_told_once_from_the_snapshot_and_its_event() {
        let mut snap = snapshot(&["ghost"]);
        snap.forwards[0].health = Health::new(State::Down, Some(Cause::new(CauseId::ServiceMissing, "gone")));
        let mut n = Notices::default();
        let t = Instant::now();
        // The event was published before the app subscribed: only the snapshot says it.
        n.observe_snapshot(&snap, t);
        n.observe(
            &change("ghost", State::Starting, State::Down, Some(CauseId::ServiceMissing)),
            &snap,
            t,
        );
        n.observe_snapshot(&snap, t);
        let told = n.flush();
        assert_eq!(told.len(), 1);
        assert_eq!(told[0].body, "gone");
        n.observe_snapshot(&snap, t);
        assert!(n.deadline().is_none() && n.flush().is_empty());
    }
}

/// The notices as a state machine, over random sequences of what the engine reports.
#[cfg(test)]
mod properties {
    use std::collections::BTreeMap;

    use porthole::cause::CauseId;
    use porthole::engine::{ClusterReport, ClusterStatusView, ForwardStatus};
    use proptest::prelude::*;

    use super::*;

    const NAMES: [&str; 4] = ["f0", "f1", "f2", "f3"];

    #[derive(Debug, Clone, Copy)]
    enum Via {
        Event,
        Snapshot,
        Both,
    }

    #[derive(Debug, Clone)]
    enum Step {
        Health {
            forward: usize,
            state: State,
            cause: CauseId,
            via: Via,
        },
        Remove {
            forward: usize,
            via: Via,
        },
        Wait(u64),
    }

    fn state() -> impl Strategy<Value = State> {
        prop_oneof![
            3 => Just(State::Starting),
            3 => Just(State::Healthy),
            1 => Just(State::Degraded),
            4 => Just(State::Down),
            1 => Just(State::Disabled),
        ]
    }

    fn via() -> impl Strategy<Value = Via> {
        prop_oneof![Just(Via::Event), Just(Via::Snapshot), Just(Via::Both)]
    }

    fn step() -> impl Strategy<Value = Step> {
        let cause = prop_oneof![Just(CauseId::ServiceMissing), Just(CauseId::ClusterUnreachable)];
        prop_oneof![
            8 => (0..NAMES.len(), state(), cause, via())
                .prop_map(|(forward, state, cause, via)| Step::Health { forward, state, cause, via }),
            1 => (0..NAMES.len(), via()).prop_map(|(forward, via)| Step::Remove { forward, via }),
            4 => (0u64..1200).prop_map(Step::Wait),
        ]
    }

    /// The engine's side: each present forward's health, in config order.
    #[derive(Default)]
    struct World {
        forwards: BTreeMap<usize, Health>,
        /// The last state of each forward other than `starting`, as the checker's truth.
        settled: BTreeMap<usize, State>,
    }

    impl World {
        fn snapshot(&self) -> Snapshot {
            Snapshot {
                kubectl_context: None,
                kubeconfig: None,
                clusters: vec![ClusterReport {
                    name: "default".into(),
                    context: None,
                    kubectl: true,
                    status: ClusterStatusView {
                        state: "connected".into(),
                        detail: None,
                    },
                }],
                forwards: self
                    .forwards
                    .iter()
                    .map(|(i, health)| ForwardStatus {
                        name: NAMES[*i].into(),
                        cluster: "default".into(),
                        namespace: "ns".into(),
                        service: NAMES[*i].into(),
                        local: Some(([127, 0, 0, 1], 3000 + *i as u16).into()),
                        enabled: health.state != State::Disabled,
                        health: health.clone(),
                        path: None,
                        route: None,
                        stats: Default::default(),
                    })
                    .collect(),
            }
        }
    }

    /// What the user has been shown, per forward, checked against the world at every flush.
    #[derive(Default)]
    struct Checker {
        told_down: BTreeMap<usize, bool>,
    }

    impl Checker {
        fn forget(&mut self, forward: usize) {
            self.told_down.remove(&forward);
        }

        fn check(&mut self, notices: &[Notice], world: &World) -> Result<(), TestCaseError> {
            for notice in notices {
                for name in &notice.forwards {
                    let i = NAMES.iter().position(|n| n == name).expect("a known name");
                    let settled = world.settled.get(&i).copied();
                    let told = self.told_down.entry(i).or_default();
                    match notice.kind {
                        Kind::Down => {
                            prop_assert_eq!(settled, Some(State::Down), "{} told down but it is not", name);
                            prop_assert!(!*told, "{} told down twice without a back", name);
                            *told = true;
                        }
                        Kind::Recovered => {
                            prop_assert!(
                                matches!(settled, Some(State::Healthy | State::Degraded)),
                                "{} told back but it is {:?}",
                                name,
                                settled
                            );
                            prop_assert!(*told, "{} told back without a down", name);
                            *told = false;
                        }
                        other => prop_assert!(false, "unexpected notice kind {:?}", other),
                    }
                }
            }
            Ok(())
        }
    }

    fn feed(n: &mut Notices, world: &World, event: Option<Event>, via: Via, now: Instant) {
        let snapshot = world.snapshot();
        if let (Some(event), Via::Event | Via::Both) = (event, via) {
            let out = n.observe(&event, &snapshot, now);
            assert!(out.is_empty(), "forward events tell nothing before a flush");
        }
        if matches!(via, Via::Snapshot | Via::Both) {
            n.observe_snapshot(&snapshot, now);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn every_down_and_every_recovery_is_told_once(
            steps in proptest::collection::vec(step(), 1..80),
        ) {
            let mut n = Notices::default();
            let mut world = World::default();
            let mut checker = Checker::default();
            let mut now = Instant::now();
            for step in steps {
                if n.deadline().is_some_and(|d| d <= now) {
                    let out = n.flush();
                    checker.check(&out, &world)?;
                }
                match step {
                    Step::Wait(ms) => now += Duration::from_millis(ms),
                    Step::Health { forward, state, cause, via } => {
                        let cause = (state == State::Down).then(|| Cause::new(cause, "broken"));
                        let to = Health::new(state, cause);
                        let from = world.forwards.insert(forward, to.clone()).unwrap_or(Health::new(State::Starting, None));
                        if state != State::Starting {
                            world.settled.insert(forward, state);
                        }
                        if state == State::Disabled {
                            checker.forget(forward);
                        }
                        let event = Event::Forward { name: NAMES[forward].into(), from, to };
                        feed(&mut n, &world, Some(event), via, now);
                    }
                    Step::Remove { forward, via } => {
                        if world.forwards.remove(&forward).is_some() {
                            world.settled.remove(&forward);
                            checker.forget(forward);
                            let event = Event::Removed { name: NAMES[forward].into() };
                            feed(&mut n, &world, Some(event), via, now);
                        }
                    }
                }
            }
            // The shell always sees the latest snapshot in the end, and the batch flushes.
            n.observe_snapshot(&world.snapshot(), now);
            let out = n.flush();
            checker.check(&out, &world)?;
            prop_assert!(n.flush().is_empty(), "a second flush tells nothing new");
            for (i, state) in &world.settled {
                let told = checker.told_down.get(i).copied().unwrap_or(false);
                match state {
                    State::Down => prop_assert!(told, "{} is down and was never told", NAMES[*i]),
                    State::Healthy | State::Degraded => prop_assert!(!told, "{} is back and was not told", NAMES[*i]),
                    _ => {}
                }
            }
        }
    }
}
