//! Active health checks through a route: a TCP connect, an HTTP request, or a TLS handshake.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::Probe;
use crate::health::{Cause, CauseId};
use crate::route::Route;

pub(crate) fn node_unreachable_fix() -> &'static str {
    if cfg!(target_os = "macos") {
        "node addresses are not reachable from macOS under Docker Desktop or Colima; run Porthole in a container on kind's network (`node_address = \"hostname\"`), or map the nodePort with kind's extraPortMappings"
    } else {
        "check that the node's container is running (`docker ps`) and that the nodePort answers"
    }
}

/// Runs one probe through the route.
pub async fn check(probe: &Probe, route: &Route, timeout: Duration) -> Result<(), Cause> {
    let stream = route.connect(timeout).await?;
    let failed = |what: String| {
        Cause::new(
            CauseId::ProbeFailed,
            format!("{} via {}: {what}", route.service, route.primary()),
        )
        .with_fix(format!(
            "the service's pods accept connections but do not answer; check `kubectl logs -n {}`",
            route.namespace
        ))
    };
    let outcome = match probe {
        Probe::Tcp => return Ok(()),
        Probe::Http(path) => tokio::time::timeout(timeout, http(stream, path)).await,
        Probe::Tls => tokio::time::timeout(timeout, tls(stream)).await,
    };
    match outcome {
        Ok(Ok(())) => Ok(()),
        Ok(Err(what)) => Err(failed(what)),
        Err(_) => Err(failed(format!("no answer in {timeout:?}"))),
    }
}

async fn http(mut stream: TcpStream, path: &str) -> Result<(), String> {
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: porthole-probe\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("cannot send the request: {e}"))?;
    let mut head = [0u8; 64];
    let mut len = 0;
    while len < 12 {
        match stream.read(&mut head[len..]).await {
            Ok(0) => return Err("connection closed before an HTTP status line".into()),
            Ok(n) => len += n,
            Err(e) => return Err(format!("cannot read the response: {e}")),
        }
    }
    let line = String::from_utf8_lossy(&head[..len]);
    let status: u16 = line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {:?}", line.lines().next().unwrap_or_default()))?;
    if status >= 500 {
        return Err(format!("GET {path} answered {status}"));
    }
    Ok(())
}

async fn tls(stream: TcpStream) -> Result<(), String> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(insecure::config()));
    let name = rustls::pki_types::ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    connector
        .connect(name, stream)
        .await
        .map_err(|e| format!("TLS handshake failed: {e}"))?;
    Ok(())
}

/// A TLS client that accepts any certificate: the probe asks "does it speak TLS", not "is it trusted"
/// (local clusters use self-signed certificates). No data is ever sent over it.
mod insecure {
    use std::sync::Arc;

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms, ring};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};

    #[derive(Debug)]
    struct AnyCertificate(WebPkiSupportedAlgorithms);

    impl ServerCertVerifier for AnyCertificate {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.supported_schemes()
        }
    }

    pub(super) fn config() -> ClientConfig {
        let provider: CryptoProvider = ring::default_provider();
        let algorithms = provider.signature_verification_algorithms;
        ClientConfig::builder_with_provider(Arc::new(provider))
            .with_safe_default_protocol_versions()
            // The ring provider supports the default protocol versions.
            .expect("ring supports TLS 1.2 and 1.3")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(algorithms)))
            .with_no_client_auth()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::{Host, NodeTarget};
    use tokio::net::TcpListener;

    fn route_to(addrs: &[std::net::SocketAddr]) -> Route {
        Route {
            namespace: "ns".into(),
            service: "ns/svc".into(),
            service_type: "NodePort".into(),
            port: "80/TCP".into(),
            node_port: addrs[0].port(),
            targets: addrs
                .iter()
                .map(|a| NodeTarget {
                    node: a.ip().to_string(),
                    host: Host::Ip(a.ip()),
                })
                .collect(),
            ready_endpoints: 1,
        }
    }

    async fn serve_once(answer: &'static [u8]) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(answer).await;
        });
        addr
    }

    #[tokio::test]
    async fn http_probe_reads_the_status() {
        let ok = serve_once(b"HTTP/1.1 204 No Content\r\n\r\n").await;
        assert_eq!(
            check(&Probe::Http("/".into()), &route_to(&[ok]), Duration::from_secs(5)).await,
            Ok(())
        );
        let bad = serve_once(b"HTTP/1.1 503 Service Unavailable\r\n\r\n").await;
        let cause = check(
            &Probe::Http("/healthz".into()),
            &route_to(&[bad]),
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert_eq!(cause.id, CauseId::ProbeFailed);
        assert!(cause.message.contains("GET /healthz answered 503"), "{}", cause.message);
    }

    #[tokio::test]
    async fn tls_probe_fails_on_plain_tcp() {
        let plain = serve_once(b"SSH-2.0-nope\r\n").await;
        let cause = check(&Probe::Tls, &route_to(&[plain]), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(cause.id, CauseId::ProbeFailed);
    }

    #[tokio::test]
    async fn connect_tries_the_next_node_and_names_failures() {
        // A port that was just free: binding and dropping leaves nothing listening there.
        let dead = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let live = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut route = route_to(&[dead]);
        route.node_port = live.local_addr().unwrap().port();
        route.targets.push(NodeTarget {
            node: "b".into(),
            host: Host::Ip(live.local_addr().unwrap().ip()),
        });
        // Both targets share the nodePort; the first is a different loopback address with nothing on it.
        route.targets[0].host = Host::Ip("127.0.0.254".parse().unwrap());
        assert!(route.connect(Duration::from_secs(5)).await.is_ok());
        route.targets.truncate(1);
        let cause = route.connect(Duration::from_secs(5)).await.unwrap_err();
        assert_eq!(cause.id, CauseId::NodeUnreachable);
        assert!(cause.message.contains("127.0.0.254"), "{}", cause.message);
    }
}
