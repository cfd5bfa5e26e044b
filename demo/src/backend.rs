//! Backends that stand in for pods: a TCP echo server, an HTTP server with a fixed body,
//! and a TLS echo server, each on 127.0.0.1:0, countable, stoppable and restartable.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::pki;

#[derive(Clone)]
enum Flavor {
    Echo,
    Http(Arc<str>),
    Tls(TlsAcceptor),
}

/// A running (or stopped) backend server.
pub struct Backend {
    flavor: Flavor,
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    running: Mutex<Option<Running>>,
}

struct Running {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Backend {
    /// Echoes every byte; on EOF from the client it shuts down its write side after echoing
    /// everything, so half-closed connections behave.
    pub async fn echo() -> Backend {
        Backend::start(Flavor::Echo).await
    }

    /// Answers any HTTP/1.1 request with 200 and `body`, then closes the connection.
    pub async fn http(body: &str) -> Backend {
        Backend::start(Flavor::Http(body.into())).await
    }

    /// A TLS echo server with a fresh self-signed certificate for 127.0.0.1 and localhost.
    pub async fn tls() -> Backend {
        let config = Arc::new(pki::self_signed_server_config());
        Backend::start(Flavor::Tls(TlsAcceptor::from(config))).await
    }

    async fn start(flavor: Flavor) -> Backend {
        let accepted = Arc::new(AtomicUsize::new(0));
        let (addr, running) = spawn(flavor.clone(), accepted.clone()).await;
        Backend {
            flavor,
            addr,
            accepted,
            running: Mutex::new(Some(running)),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted since the backend was created, across restarts.
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Closes the listener and every open connection; when it returns, connects are refused.
    pub async fn stop(&self) {
        if let Some(running) = self.running.lock().await.take() {
            running.stop.cancel();
            let _ = running.task.await;
        }
    }

    /// Stops the backend if it runs and starts it again on a new port.
    pub async fn restart(&mut self) {
        self.stop().await;
        let (addr, running) = spawn(self.flavor.clone(), self.accepted.clone()).await;
        self.addr = addr;
        *self.running.lock().await = Some(running);
    }
}

async fn spawn(flavor: Flavor, accepted: Arc<AtomicUsize>) -> (SocketAddr, Running) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind backend");
    let addr = listener.local_addr().expect("backend address");
    let stop = CancellationToken::new();
    let task = tokio::spawn(accept_loop(listener, flavor, accepted, stop.clone()));
    (addr, Running { stop, task })
}

async fn accept_loop(listener: TcpListener, flavor: Flavor, accepted: Arc<AtomicUsize>, stop: CancellationToken) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            result = listener.accept() => {
                let Ok((stream, _)) = result else { continue };
                accepted.fetch_add(1, Ordering::SeqCst);
                connections.spawn(serve(flavor.clone(), stream));
            }
        }
    }
    drop(listener);
    // Waits until every connection task is dropped, so their sockets are closed.
    connections.shutdown().await;
}

async fn serve(flavor: Flavor, stream: TcpStream) {
    match flavor {
        Flavor::Echo => echo(stream).await,
        Flavor::Http(body) => http(stream, &body).await,
        Flavor::Tls(acceptor) => {
            if let Ok(tls) = acceptor.accept(stream).await {
                echo(tls).await;
            }
        }
    }
}

async fn echo<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => {
                let _ = stream.shutdown().await;
                return;
            }
            Ok(n) => {
                if stream.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

async fn http(mut stream: TcpStream, body: &str) {
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(running) = self.running.get_mut().take() {
            running.stop.cancel();
        }
    }
}
