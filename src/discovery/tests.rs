use super::*;

#[test]
fn reconnect_backs_off_to_a_cap_and_resets() {
    let mut r = Reconnect::default();
    let delays: Vec<Duration> = (0..7).map(|_| r.next().unwrap()).collect();
    assert_eq!(delays[0], RECONNECT_MIN);
    assert_eq!(*delays.last().unwrap(), RECONNECT_MAX);
    r.reset();
    assert_eq!(r.next(), Some(RECONNECT_MIN));
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
        synced: [true, true, true, false],
        ..Default::default()
    };
    assert_eq!(progress.status(), ClusterStatus::Connecting);
    assert!(progress.record(Signal::Ok {
        kind: 3,
        changed: true,
        synced: true
    }));
    assert_eq!(progress.status(), ClusterStatus::Connected);
    progress.record(Signal::Failed {
        kind: 0,
        status: ClusterStatus::Unreachable("x".into()),
    });
    progress.record(Signal::Failed {
        kind: 2,
        status: ClusterStatus::Unauthorized("401".into()),
    });
    assert!(matches!(progress.status(), ClusterStatus::Unauthorized(_)));
    progress.record(Signal::Ok {
        kind: 2,
        changed: false,
        synced: false,
    });
    assert!(matches!(progress.status(), ClusterStatus::Unreachable(_)));
    assert!(progress.failing());
}
