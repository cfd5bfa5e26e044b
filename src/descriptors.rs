//! File descriptors: every relayed connection costs two (a tunnelled one, one plus its share of
//! the API connection), so running out is a failure of its own, named as such (`out-of-descriptors`)
//! rather than blamed on the nodes or the API server; and the warnings of a loop that keeps
//! failing are rate-limited.

use std::error::Error;
use std::io;
use std::time::{Duration, Instant};

use crate::cause::{Cause, CauseId};

/// Whether `e` is the process (`EMFILE`) or the system (`ENFILE`) running out of descriptors.
pub fn exhausted(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// Whether an error, or any error it wraps (a kube or hyper error around a socket's), is
/// [`exhausted`].
pub fn exhausted_in(e: &(dyn Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if e.downcast_ref::<io::Error>().is_some_and(exhausted) {
            return true;
        }
        next = e.source();
    }
    false
}

/// The descriptors this process has open, when it can still open a directory to count them.
pub fn open_count() -> Option<usize> {
    std::fs::read_dir("/dev/fd")
        .ok()
        .map(|entries| entries.count().saturating_sub(1))
}

/// The process's soft descriptor limit.
pub fn limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes a struct we own.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0).then_some(limit.rlim_cur)
}

/// `out-of-descriptors`, saying what failed (`connecting to 172.18.0.3:30080`), how many are
/// open and the limit.
pub fn cause(what: &str) -> Cause {
    let limit = limit().map_or_else(|| "unknown".to_string(), |l| l.to_string());
    let open = open_count().map_or_else(|| "all".to_string(), |n| n.to_string());
    Cause::new(
        CauseId::OutOfDescriptors,
        format!("out of file descriptors {what}: {open} open, the limit is {limit}"),
    )
    .with_fix(
        "each connection holds two descriptors: lower `max_connections`, close idle connections, or raise \
         the limit (`ulimit -n` before `porthole up`; `launchctl limit maxfiles` for the app on macOS)",
    )
}

/// A warning said at most once per `every`, with how many were left unsaid in between.
#[derive(Debug)]
pub struct Throttle {
    every: Duration,
    last: Option<Instant>,
    unsaid: u64,
}

impl Throttle {
    pub const fn new(every: Duration) -> Throttle {
        Throttle {
            every,
            last: None,
            unsaid: 0,
        }
    }

    /// `Some(unsaid)`: say it now (after `unsaid` unsaid ones); `None`: keep quiet.
    pub fn note(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.duration_since(last) < self.every => {
                self.unsaid += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.unsaid))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exhaustion_is_found_through_wrapping_errors() {
        #[derive(Debug)]
        struct Wrapper(io::Error);
        impl std::fmt::Display for Wrapper {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "client error")
            }
        }
        impl Error for Wrapper {
            fn source(&self) -> Option<&(dyn Error + 'static)> {
                Some(&self.0)
            }
        }
        assert!(exhausted_in(&Wrapper(io::Error::from_raw_os_error(libc::EMFILE))));
        assert!(exhausted_in(&io::Error::from_raw_os_error(libc::ENFILE)));
        assert!(!exhausted_in(&Wrapper(io::Error::from_raw_os_error(
            libc::ECONNREFUSED
        ))));
    }

    #[test]
    fn the_cause_names_the_limit_and_what_failed() {
        let cause = cause("connecting to 127.0.0.2:30080");
        assert_eq!(cause.id, CauseId::OutOfDescriptors);
        assert!(cause.message.contains("connecting to 127.0.0.2:30080"), "{cause}");
        assert!(cause.message.contains(&limit().unwrap().to_string()), "{cause}");
        assert!(cause.fix.unwrap().contains("max_connections"));
    }

    #[test]
    fn a_throttled_warning_is_said_once_per_period_with_the_count_left_unsaid() {
        let mut throttle = Throttle::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(throttle.note(t0), Some(0));
        for i in 1..=99 {
            assert_eq!(throttle.note(t0 + Duration::from_millis(i * 100)), None);
        }
        assert_eq!(throttle.note(t0 + Duration::from_secs(10)), Some(99));
        assert_eq!(throttle.note(t0 + Duration::from_secs(11)), None);
    }
}
