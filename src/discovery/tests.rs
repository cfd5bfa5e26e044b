use super::*;

#[test]
fn reconnect_backs_off_jittered_to_a_cap_and_resets() {
    let within = |d: Duration, step: Duration| d >= step / 2 && d <= step;
    let mut r = Reconnect::default();
    let delays: Vec<Duration> = (0..12).map(|_| r.next().unwrap()).collect();
    assert!(within(delays[0], RECONNECT_MIN), "{delays:?}");
    assert!(within(delays[1], RECONNECT_MIN * 2), "{delays:?}");
    assert!(delays[6..].iter().all(|d| within(*d, RECONNECT_MAX)), "{delays:?}");
    // Jittered: the capped delays are not all the same (six equal draws of 53 random bits
    // would be a broken generator).
    assert!(delays[6..].windows(2).any(|w| w[0] != w[1]), "{delays:?}");
    r.reset();
    assert!(within(r.next().unwrap(), RECONNECT_MIN));
}

#[test]
fn refused_credentials_are_asked_again_slowly() {
    let refused = Arc::new(AtomicBool::new(true));
    let mut r = Reconnect::new(refused.clone());
    let delays: Vec<Duration> = (0..10).map(|_| r.next().unwrap()).collect();
    assert!(delays[0] >= REFUSED_MIN / 2 && delays[0] <= REFUSED_MIN, "{delays:?}");
    assert!(
        delays[7..].iter().all(|d| *d >= REFUSED_MAX / 2 && *d <= REFUSED_MAX),
        "{delays:?}"
    );
    // Accepted again: back to the quick pace from where it is, capped at its ceiling.
    refused.store(false, Ordering::Relaxed);
    assert!(r.next().unwrap() <= RECONNECT_MAX);
}

#[test]
fn certificate_failures_are_credentials_not_outages() {
    assert!(is_certificate_error("invalid peer certificate: UnknownIssuer"));
    assert!(is_certificate_error("received fatal alert: BadCertificate"));
    assert!(is_certificate_error("received fatal alert: CertificateRequired"));
    assert!(!is_certificate_error("Connection refused (os error 111)"));
    assert!(!is_certificate_error("tls handshake eof"));
}

#[test]
fn unauthorized_wins_over_unreachable() {
    let mut progress = Progress {
        synced: PerKind([true, true, true, false, true]),
        ..Default::default()
    };
    assert_eq!(progress.status(), ClusterStatus::Connecting);
    assert!(progress.record(Signal::Ok {
        kind: Kind::EndpointSlice,
        changed: true,
        synced: true
    }));
    assert_eq!(progress.status(), ClusterStatus::Connected);
    progress.record(Signal::Failed {
        kind: Kind::Namespace,
        status: ClusterStatus::Unreachable("x".into()),
    });
    progress.record(Signal::Failed {
        kind: Kind::Node,
        status: ClusterStatus::Unauthorized("401".into()),
    });
    assert!(matches!(progress.status(), ClusterStatus::Unauthorized(_)));
    progress.record(Signal::Ok {
        kind: Kind::Node,
        changed: false,
        synced: false,
    });
    assert!(matches!(progress.status(), ClusterStatus::Unreachable(_)));
    assert!(progress.failing());
}
