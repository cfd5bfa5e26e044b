//! From one config to the next: what the engine must do ([`plan`]), and the forwards turned on or
//! off at run time, kept apart from the file ([`Overrides`]).

use std::collections::{BTreeMap, HashMap};

use super::{ClusterSpec, Config, ForwardSpec, Mode};

/// One step from a running config to a new one, in the order [`plan`] gives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A cluster new to the config: its discovery starts before its forwards are added.
    Connect(ClusterSpec),
    /// A cluster's settings changed, or it was renamed (`from` is the name it ran under):
    /// reconnect in a new generation of its discovery; its forwards stay.
    Reconnect { from: String, to: ClusterSpec },
    /// A forward's target changed (namespace, service, port, probe, mode, timings, its cluster's
    /// name): its listener and open connections stay, new connections follow the new target.
    Retarget(ForwardSpec),
    /// A forward gone from the config: stop it, drain its connections, drop it from the status.
    Remove(String),
    /// A forward whose listener changes (address, port, on or off) or that moved to another
    /// cluster: stopped and started anew, its last health kept as where its next transition
    /// starts from.
    Restart(ForwardSpec),
    /// A cluster gone from the config, once its forwards are stopped.
    Disconnect(String),
    /// A forward new to the config.
    Add(ForwardSpec),
}

/// Whether going from `old` to `new` needs a new listener (and so a stop and a start), rather
/// than a retarget in place.
pub fn needs_restart(old: &ForwardSpec, new: &ForwardSpec) -> bool {
    old.bind != new.bind
        || old.ipv6_loopback != new.ipv6_loopback
        || old.local_port != new.local_port
        || old.enabled != new.enabled
        // A watched port has no listener; a relayed one has: the listener comes or goes.
        || (old.mode == Mode::Watch) != (new.mode == Mode::Watch)
}

/// Which cluster of `new` each cluster of `old` became: the one of the same name, else, when
/// exactly one cluster went and one came (a context changed, and the name with it), that one.
fn successors<'n>(old: &Config, new: &'n Config) -> HashMap<String, &'n ClusterSpec> {
    let mut map: HashMap<String, &ClusterSpec> = HashMap::new();
    for cluster in &old.clusters {
        if let Some(same) = new.cluster(&cluster.name) {
            map.insert(cluster.name.clone(), same);
        }
    }
    let gone: Vec<&ClusterSpec> = old.clusters.iter().filter(|c| new.cluster(&c.name).is_none()).collect();
    let came: Vec<&ClusterSpec> = new.clusters.iter().filter(|c| old.cluster(&c.name).is_none()).collect();
    if let ([from], [to]) = (gone.as_slice(), came.as_slice()) {
        map.insert(from.name.clone(), to);
    }
    map
}

/// The changes that take a running `old` config to `new`: clusters connected and reconnected
/// first (forwards then resolve against them), retargets, then removals and restarts (their
/// ports are free before anything binds), clusters disconnected, then additions, in `new`'s
/// order. Forwards are matched by name, clusters by name or as one renamed.
pub fn plan(old: &Config, new: &Config) -> Vec<Change> {
    let mut changes = Vec::new();
    let successors = successors(old, new);
    for cluster in &new.clusters {
        match old
            .clusters
            .iter()
            .find(|c| successors.get(&c.name).is_some_and(|s| s.name == cluster.name))
        {
            None => changes.push(Change::Connect(cluster.clone())),
            Some(was) if was.name != cluster.name || !was.same_connection(cluster) => changes.push(Change::Reconnect {
                from: was.name.clone(),
                to: cluster.clone(),
            }),
            Some(_) => {}
        }
    }
    // A forward whose cluster is another one (not the same one renamed) needs a new view.
    let moved = |a: &ForwardSpec, b: &ForwardSpec| successors.get(&a.cluster).is_none_or(|s| s.name != b.cluster);
    let wanted: HashMap<&str, &ForwardSpec> = new.forwards.iter().map(|f| (f.name.as_str(), f)).collect();
    let running: HashMap<&str, &ForwardSpec> = old.forwards.iter().map(|f| (f.name.as_str(), f)).collect();
    for spec in &old.forwards {
        if let Some(new) = wanted.get(spec.name.as_str())
            && *new != spec
            && !needs_restart(spec, new)
            && !moved(spec, new)
        {
            changes.push(Change::Retarget((*new).clone()));
        }
    }
    for spec in &old.forwards {
        match wanted.get(spec.name.as_str()) {
            None => changes.push(Change::Remove(spec.name.clone())),
            Some(new) if needs_restart(spec, new) || moved(spec, new) => changes.push(Change::Restart((*new).clone())),
            Some(_) => {}
        }
    }
    for cluster in &old.clusters {
        if !successors.contains_key(&cluster.name) {
            changes.push(Change::Disconnect(cluster.name.clone()));
        }
    }
    for spec in &new.forwards {
        if !running.contains_key(spec.name.as_str()) {
            changes.push(Change::Add(spec.clone()));
        }
    }
    changes
}

/// Whether forward `a` of `old` and `b` of `new` are the same entry in the file: equal, or
/// differing only in values each takes from its cluster's defaults (`mode`, `hold`,
/// `tunnel_settle`, `max_connections`), where that default changed, or in the name of a config's
/// only cluster (which follows its context).
fn same_entry(old: &Config, a: &ForwardSpec, new: &Config, b: &ForwardSpec) -> bool {
    let (Some(was), Some(now)) = (old.cluster(&a.cluster), new.cluster(&b.cluster)) else {
        return false;
    };
    let mut b = b.clone();
    if old.clusters.len() == 1 && new.clusters.len() == 1 {
        b.cluster = a.cluster.clone();
    }
    if a.mode == was.mode && b.mode == now.mode {
        b.mode = a.mode;
    }
    let hold = |c: &ClusterSpec| c.hold.map(|s| s.0);
    if a.hold == hold(was) && b.hold == hold(now) {
        b.hold = a.hold;
    }
    b.tunnel_settle = a.tunnel_settle;
    if a.tunnel_pool == was.tunnel_pool && b.tunnel_pool == now.tunnel_pool {
        b.tunnel_pool = a.tunnel_pool;
    }
    let max = |c: &ClusterSpec| c.max_connections.map_or(super::MaxConnections::DEFAULT, |m| m.0);
    if a.max_connections == max(was) && b.max_connections == max(now) {
        b.max_connections = a.max_connections;
    }
    *a == b
}

/// Forwards turned on or off at run time (the tray's menu, `porthole enable|disable`, the
/// settings page's switch), kept apart from the config file, which they never rewrite.
///
/// The one policy, for every way a config arrives (a hand edit, a save from the page, SIGHUP):
/// a forward turned on or off stays so while the file's entry for it is unchanged. When the file
/// changes that forward (any key, `enabled` included) or drops it, the file wins and the
/// override is forgotten. Turning a forward back to what the file says forgets it too.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    enabled: BTreeMap<String, bool>,
}

impl Overrides {
    /// Turns forward `name` of `file` on or off; `false` if `file` has no such forward.
    pub fn set(&mut self, file: &Config, name: &str, enabled: bool) -> bool {
        let Some(spec) = file.forward(name) else {
            return false;
        };
        if spec.enabled == enabled {
            self.enabled.remove(name);
        } else {
            self.enabled.insert(name.to_string(), enabled);
        }
        true
    }

    /// The file changed from `old` to `new`: forgets the overrides of forwards it changed or
    /// dropped. A change of a `[cluster]` default the forward inherits is not a change of its
    /// entry.
    pub fn rebase(&mut self, old: &Config, new: &Config) {
        self.enabled
            .retain(|name, _| match (old.forward(name), new.forward(name)) {
                (Some(a), Some(b)) => same_entry(old, a, new, b),
                _ => false,
            });
    }

    /// `file` with the overrides applied: the config that runs.
    pub fn effective(&self, file: &Config) -> Config {
        let mut config = file.clone();
        for spec in &mut config.forwards {
            if let Some(enabled) = self.enabled.get(&spec.name) {
                spec.enabled = *enabled;
            }
        }
        config
    }

    pub fn is_empty(&self) -> bool {
        self.enabled.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::config::Source;

    fn config(text: &str) -> Config {
        let text = format!("[cluster]\ncontext = \"kind-a\"\n{text}");
        Config::parse(&text, &Source::File("test.toml".into())).unwrap()
    }

    fn forward(name: &str, port: u16, extra: &str) -> String {
        format!(
            "[[forward]]\nname = \"{name}\"\nnamespace = \"ns\"\nservice = \"{name}\"\nlocal_port = {port}\n{extra}"
        )
    }

    fn spec<'c>(config: &'c Config, name: &str) -> &'c ForwardSpec {
        config.forward(name).unwrap()
    }

    #[test]
    fn plan_as_a_table() {
        let a = forward("a", 3000, "");
        let b = forward("b", 8080, "");
        let base = config(&format!("{a}{b}"));
        struct Row {
            what: &'static str,
            new: Config,
            expect: fn(&Config) -> Vec<Change>,
        }
        let rows = [
            Row {
                what: "the same config: nothing to do",
                new: base.clone(),
                expect: |_| vec![],
            },
            Row {
                what: "another service: retargeted in place",
                new: config(&format!("{}{b}", a.replace("service = \"a\"", "service = \"web\""))),
                expect: |new| vec![Change::Retarget(spec(new, "a").clone())],
            },
            Row {
                what: "a probe or mode change: retargeted in place",
                new: config(&format!("{a}{b}mode = \"tunnel\"\nprobe = \"tcp\"\n")),
                expect: |new| vec![Change::Retarget(spec(new, "b").clone())],
            },
            Row {
                what: "another local port: restarted",
                new: config(&format!("{}{b}", forward("a", 3001, ""))),
                expect: |new| vec![Change::Restart(spec(new, "a").clone())],
            },
            Row {
                what: "another address: restarted",
                new: config(&format!("{}{b}", forward("a", 3000, "bind = \"127.0.0.2\"\n"))),
                expect: |new| vec![Change::Restart(spec(new, "a").clone())],
            },
            Row {
                what: "turned off: restarted (its listener closes)",
                new: config(&format!("{}{b}", forward("a", 3000, "enabled = false\n"))),
                expect: |new| vec![Change::Restart(spec(new, "a").clone())],
            },
            Row {
                what: "one dropped, one added: the removal frees its port first",
                new: config(&format!("{a}{}", forward("c", 8080, ""))),
                expect: |new| vec![Change::Remove("b".into()), Change::Add(spec(new, "c").clone())],
            },
            Row {
                what: "another cluster: reconnect before anything else",
                new: Config::parse(
                    &format!("[cluster]\ncontext = \"kind-b\"\n{}{b}", forward("a", 3001, "")),
                    &Source::File("test.toml".into()),
                )
                .unwrap(),
                expect: |new| {
                    vec![
                        Change::Reconnect {
                            from: "kind-a".into(),
                            to: new.clusters[0].clone(),
                        },
                        // Its cluster's name followed the context: retargeted in place.
                        Change::Retarget(spec(new, "b").clone()),
                        Change::Restart(spec(new, "a").clone()),
                    ]
                },
            },
            Row {
                what: "reordered only: nothing to do",
                new: config(&format!("{b}{a}")),
                expect: |_| vec![],
            },
            Row {
                what: "all of it at once: reconnect, retarget, removal and restart, addition",
                new: Config::parse(
                    &format!(
                        "[cluster]\ncontext = \"kind-b\"\n{}{}{}",
                        forward("c", 9000, ""),
                        forward("b", 8081, ""),
                        a.replace("namespace = \"ns\"", "namespace = \"other\"")
                    ),
                    &Source::File("test.toml".into()),
                )
                .unwrap(),
                expect: |new| {
                    vec![
                        Change::Reconnect {
                            from: "kind-a".into(),
                            to: new.clusters[0].clone(),
                        },
                        Change::Retarget(spec(new, "a").clone()),
                        Change::Restart(spec(new, "b").clone()),
                        Change::Add(spec(new, "c").clone()),
                    ]
                },
            },
        ];
        for row in rows {
            assert_eq!(plan(&base, &row.new), (row.expect)(&row.new), "{}", row.what);
        }
        assert_eq!(
            plan(&config(""), &base),
            vec![
                Change::Add(spec(&base, "a").clone()),
                Change::Add(spec(&base, "b").clone())
            ],
            "from nothing: every forward added, in order"
        );
    }

    #[test]
    fn clusters_connect_first_and_disconnect_after_their_forwards_stop() {
        let two = |extra: &str, forwards: &str| {
            Config::parse(
                &format!("[[cluster]]\ncontext = \"kind-a\"\n[[cluster]]\ncontext = \"k3d-b\"\n{extra}{forwards}"),
                &Source::File("test.toml".into()),
            )
            .unwrap()
        };
        let a = forward("a", 3000, "cluster = \"kind-a\"\n");
        let b = forward("b", 8080, "cluster = \"k3d-b\"\n");
        let one = config(&forward("a", 3000, ""));
        let both = two("", &format!("{a}{b}"));

        // A second cluster comes with a forward: connected before the forward is added.
        assert_eq!(
            plan(&one, &both),
            vec![
                Change::Connect(both.clusters[1].clone()),
                Change::Add(spec(&both, "b").clone())
            ]
        );
        // It goes with its forward: the forward stops, then the cluster disconnects.
        assert_eq!(
            plan(&both, &one),
            vec![Change::Remove("b".into()), Change::Disconnect("k3d-b".into())]
        );
        // A forward moved to the other cluster is restarted (it resolves against another view).
        let moved = two("", &format!("{}{b}", forward("a", 3000, "cluster = \"k3d-b\"\n")));
        assert_eq!(plan(&both, &moved), vec![Change::Restart(spec(&moved, "a").clone())]);
        // Moving which cluster kubectl should point at reconnects nothing.
        let marked = two("", &format!("{a}{b}")).clusters[1].clone();
        let mut remarked = both.clone();
        remarked.clusters[0].kubectl = false;
        remarked.clusters[1] = ClusterSpec {
            kubectl: true,
            ..marked
        };
        assert_eq!(plan(&both, &remarked), vec![]);
        // One cluster's settings change: only it reconnects.
        let mut tuned = both.clone();
        tuned.clusters[1].mode = Mode::Tunnel;
        assert_eq!(
            plan(&both, &tuned),
            vec![Change::Reconnect {
                from: "k3d-b".into(),
                to: tuned.clusters[1].clone()
            }]
        );
    }

    #[test]
    fn every_field_of_a_forward_is_either_a_retarget_or_a_restart() {
        // A change to any field is acted on: `plan` never sees two different specs as equal.
        let base = config(&forward("a", 3000, ""));
        let a = spec(&base, "a").clone();
        let mut changed = Vec::new();
        let mut each = |f: fn(&mut ForwardSpec)| {
            let mut new = a.clone();
            f(&mut new);
            assert_ne!(new, a);
            changed.push(needs_restart(&a, &new));
        };
        each(|s| s.bind = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
        each(|s| s.ipv6_loopback = !s.ipv6_loopback);
        each(|s| s.local_port += 1);
        each(|s| s.enabled = !s.enabled);
        each(|s| s.namespace = "other".into());
        each(|s| s.max_connections += 1);
        each(|s| s.hold = Some(std::time::Duration::from_secs(1)));
        // To or from `watch`, the listener goes or comes; between relaying modes it stays.
        each(|s| s.mode = Mode::Watch);
        each(|s| s.mode = Mode::Tunnel);
        assert_eq!(changed, [true, true, true, true, false, false, false, true, false]);
    }

    #[test]
    fn an_override_lasts_while_the_file_leaves_its_forward_alone() {
        let file = config(&format!("{}{}", forward("a", 3000, ""), forward("b", 8080, "")));
        let mut overrides = Overrides::default();
        assert!(overrides.set(&file, "a", false));
        assert!(!overrides.set(&file, "nope", false), "no such forward");
        assert!(!spec(&overrides.effective(&file), "a").enabled);
        assert!(spec(&file, "a").enabled, "the file's config is untouched");

        // The file changes another forward, or is reloaded as it is: `a` stays off.
        let edited = config(&format!("{}{}", forward("a", 3000, ""), forward("b", 8081, "")));
        overrides.rebase(&file, &edited);
        assert!(!spec(&overrides.effective(&edited), "a").enabled);
        overrides.rebase(&edited, &edited);
        assert!(!spec(&overrides.effective(&edited), "a").enabled);

        // The file changes `a` itself: the file wins.
        let moved = config(&format!("{}{}", forward("a", 3001, ""), forward("b", 8081, "")));
        overrides.rebase(&edited, &moved);
        assert!(spec(&overrides.effective(&moved), "a").enabled);
        assert!(overrides.is_empty());
    }

    #[test]
    fn a_changed_cluster_default_is_not_a_change_of_the_forward() {
        let a = forward("a", 3000, "");
        let file = config(&a);
        let mut overrides = Overrides::default();
        overrides.set(&file, "a", false);
        let defaults = Config::parse(
            &format!("[cluster]\ncontext = \"kind-a\"\nmax_connections = 50\ntunnel_settle = 2\nhold = 9\n{a}"),
            &Source::File("test.toml".into()),
        )
        .unwrap();
        overrides.rebase(&file, &defaults);
        assert!(!spec(&overrides.effective(&defaults), "a").enabled, "still off");
        // The forward's own entry setting one of those is a change of it.
        let own = Config::parse(
            &format!("[cluster]\ncontext = \"kind-a\"\nmax_connections = 50\ntunnel_settle = 2\nhold = 9\n{a}max_connections = 7\n"),
            &Source::File("test.toml".into()),
        )
        .unwrap();
        overrides.rebase(&defaults, &own);
        assert!(spec(&overrides.effective(&own), "a").enabled, "the file wins");
    }

    #[test]
    fn turning_a_forward_back_to_what_the_file_says_forgets_the_override() {
        let file = config(&forward("a", 3000, "enabled = false\n"));
        let mut overrides = Overrides::default();
        overrides.set(&file, "a", true);
        assert!(spec(&overrides.effective(&file), "a").enabled);
        overrides.set(&file, "a", false);
        assert!(overrides.is_empty());

        // Dropped from the file, then back: the old override does not come back with it.
        overrides.set(&file, "a", true);
        let empty = config("");
        overrides.rebase(&file, &empty);
        overrides.rebase(&empty, &file);
        assert!(!spec(&overrides.effective(&file), "a").enabled);
    }
}
