//! The machine Porthole runs on, as far as its connections are concerned: a laptop that sleeps
//! and wakes, and whose network changes (Wi-Fi, a VPN, Docker restarting its network). Nothing
//! tells a process either: a watch whose connection died silently would be noticed only when
//! its read times out (minutes), and probes would wait for their turn. So the engine looks, on a
//! slow tick: a wall clock that moved further than the monotonic clock (which stops while the
//! machine sleeps, on Linux and macOS alike) means it slept; a different set of addresses means
//! the network changed. Either is a [`Wake`]: the engine re-checks the cluster with new
//! connections and probes every forward at once.
//!
//! The clocks and the addresses come from a [`Host`], which tests replace.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// Where the clocks and the addresses are read.
pub trait Host: Send + Sync + 'static {
    fn wall(&self) -> SystemTime;
    /// A clock that stops while the machine sleeps.
    fn monotonic(&self) -> Instant;
    /// The addresses of every interface.
    fn addresses(&self) -> BTreeSet<IpAddr>;
}

/// The real machine.
#[derive(Debug, Default)]
pub struct System;

impl Host for System {
    fn wall(&self) -> SystemTime {
        SystemTime::now()
    }

    fn monotonic(&self) -> Instant {
        Instant::now()
    }

    fn addresses(&self) -> BTreeSet<IpAddr> {
        interface_addresses()
    }
}

/// `getifaddrs(3)`: every interface's IPv4 and IPv6 addresses (an empty set if it fails).
fn interface_addresses() -> BTreeSet<IpAddr> {
    let mut found = BTreeSet::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list we free below; each entry's address,
    // when not null, points to a sockaddr of the family it names.
    unsafe {
        if libc::getifaddrs(&mut list) != 0 {
            return found;
        }
        let mut entry = list;
        while !entry.is_null() {
            let addr = (*entry).ifa_addr;
            if !addr.is_null() {
                match i32::from((*addr).sa_family) {
                    libc::AF_INET => {
                        let v4 = &*(addr as *const libc::sockaddr_in);
                        found.insert(IpAddr::from(u32::from_be(v4.sin_addr.s_addr).to_be_bytes()));
                    }
                    libc::AF_INET6 => {
                        let v6 = &*(addr as *const libc::sockaddr_in6);
                        found.insert(IpAddr::from(v6.sin6_addr.s6_addr));
                    }
                    _ => {}
                }
            }
            entry = (*entry).ifa_next;
        }
        libc::freeifaddrs(list);
    }
    found
}

/// Why everything is re-checked at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wake {
    /// The machine slept about this long.
    Resumed { slept: Duration },
    /// Addresses came or went.
    NetworkChanged { added: Vec<IpAddr>, removed: Vec<IpAddr> },
}

/// A wall clock that ran this much further than the monotonic one between two ticks means a
/// sleep (a clock set forward by hand or NTP gives the same: a re-check is harmless then).
const SLEEP_GAP: Duration = Duration::from_secs(3);

/// What one look found since the last.
#[derive(Debug)]
pub struct Watcher {
    host: Arc<dyn Host>,
    wall: SystemTime,
    monotonic: Instant,
    addresses: BTreeSet<IpAddr>,
}

impl Watcher {
    pub fn new(host: Arc<dyn Host>) -> Watcher {
        Watcher {
            wall: host.wall(),
            monotonic: host.monotonic(),
            addresses: host.addresses(),
            host,
        }
    }

    /// Looks again: what changed since the last look, if anything.
    pub fn look(&mut self) -> Option<Wake> {
        let (wall, monotonic) = (self.host.wall(), self.host.monotonic());
        let walked = wall.duration_since(self.wall).unwrap_or_default();
        let ran = monotonic.duration_since(self.monotonic);
        (self.wall, self.monotonic) = (wall, monotonic);
        let addresses = self.host.addresses();
        let changed = addresses != self.addresses;
        let old = std::mem::replace(&mut self.addresses, addresses);
        match walked.checked_sub(ran) {
            Some(slept) if slept >= SLEEP_GAP => Some(Wake::Resumed { slept }),
            _ if changed => Some(Wake::NetworkChanged {
                added: self.addresses.difference(&old).copied().collect(),
                removed: old.difference(&self.addresses).copied().collect(),
            }),
            _ => None,
        }
    }
}

impl std::fmt::Debug for dyn Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Host")
    }
}

/// Looks every `tick` until cancelled; each [`Wake`] bumps `wakes`, which discovery and the
/// probe schedules follow.
pub async fn follow(host: Arc<dyn Host>, tick: Duration, wakes: watch::Sender<u64>, cancel: CancellationToken) {
    let mut watcher = Watcher::new(host);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(tick) => {}
        }
        match watcher.look() {
            Some(Wake::Resumed { slept }) => {
                info!(slept = ?slept, "the machine woke up: re-checking the cluster and every forward");
            }
            Some(Wake::NetworkChanged { added, removed }) => {
                info!(
                    ?added,
                    ?removed,
                    "the network changed: re-checking the cluster and every forward"
                );
            }
            None => continue,
        }
        wakes.send_modify(|n| *n += 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A machine whose clocks and addresses the test moves.
    #[derive(Default)]
    struct Fake {
        wall_ahead: Mutex<Duration>,
        addresses: Mutex<BTreeSet<IpAddr>>,
    }

    impl Host for Fake {
        fn wall(&self) -> SystemTime {
            SystemTime::now() + *self.wall_ahead.lock().unwrap()
        }
        fn monotonic(&self) -> Instant {
            Instant::now()
        }
        fn addresses(&self) -> BTreeSet<IpAddr> {
            self.addresses.lock().unwrap().clone()
        }
    }

    #[test]
    fn a_sleep_and_a_network_change_are_seen_once_each() {
        let fake = Arc::new(Fake::default());
        fake.addresses.lock().unwrap().insert("192.168.1.20".parse().unwrap());
        let mut watcher = Watcher::new(fake.clone());
        assert_eq!(watcher.look(), None, "nothing happened");
        *fake.wall_ahead.lock().unwrap() = Duration::from_secs(600);
        match watcher.look() {
            Some(Wake::Resumed { slept }) => assert!(slept >= Duration::from_secs(599), "{slept:?}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(watcher.look(), None, "told once");
        // The clock set back (NTP) is no sleep.
        *fake.wall_ahead.lock().unwrap() = Duration::ZERO;
        assert_eq!(watcher.look(), None);
        {
            let mut addresses = fake.addresses.lock().unwrap();
            addresses.clear();
            addresses.insert("10.8.0.2".parse().unwrap());
        }
        assert_eq!(
            watcher.look(),
            Some(Wake::NetworkChanged {
                added: vec!["10.8.0.2".parse().unwrap()],
                removed: vec!["192.168.1.20".parse().unwrap()],
            })
        );
        assert_eq!(watcher.look(), None);
    }

    #[test]
    fn the_real_machine_has_a_loopback_address() {
        assert!(System.addresses().iter().any(IpAddr::is_loopback));
    }
}
