//! Moving bytes between two connected sockets, both ways, with correct half-close.
//!
//! On Linux the bytes never enter user space: `splice(2)` moves them socket → pipe → socket, with
//! pipes borrowed from a small pool only while data is in flight, so an idle connection costs no
//! buffer at all. Elsewhere a buffer is allocated on the first readable event, for the same reason.

use std::io;
use std::net::Shutdown;
use std::sync::atomic::AtomicU64;

use tokio::net::TcpStream;

/// A relay holds two descriptors per connection: lift the soft limit to the hard one, as Go
/// programs do at start. macOS caps the soft limit at `OPEN_MAX` (10240) whatever the hard limit.
pub fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write a struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return;
        }
        let wanted = if cfg!(target_os = "macos") {
            limit.rlim_max.min(10240)
        } else {
            limit.rlim_max
        };
        if wanted > limit.rlim_cur {
            limit.rlim_cur = wanted;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Keepalive on the upstream socket: a peer that vanishes without a reset (a deleted node
/// container, a network change) is noticed after about a minute and a half of silence.
const KEEPALIVE: socket2::TcpKeepalive = socket2::TcpKeepalive::new()
    .with_time(std::time::Duration::from_secs(60))
    .with_interval(std::time::Duration::from_secs(10));

/// Socket options every relayed connection gets: no Nagle delay either way, and keepalive on
/// the upstream side (a local client that dies is reset by the kernel; a remote node may not be).
pub fn prepare(client: &TcpStream, upstream: &TcpStream) {
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let _ = socket2::SockRef::from(upstream).set_tcp_keepalive(&KEEPALIVE);
}

/// Relays until both directions have seen end-of-file, or either fails.
///
/// `up` counts bytes from `client` to `upstream`, `down` the reverse. On an error (a reset), both
/// sockets are closed with a reset too, so neither peer mistakes a failure for a clean end.
pub async fn relay(client: &TcpStream, upstream: &TcpStream, up: &AtomicU64, down: &AtomicU64) -> io::Result<()> {
    let result = tokio::try_join!(pump(client, upstream, up), pump(upstream, client, down));
    if result.is_err() {
        for s in [client, upstream] {
            let _ = socket2::SockRef::from(s).set_linger(Some(std::time::Duration::ZERO));
        }
    }
    result.map(|_| ())
}

/// Ends the write side of `dst` after the source's end-of-file: the half-close travels on.
fn half_close(dst: &TcpStream) -> io::Result<()> {
    match socket2::SockRef::from(dst).shutdown(Shutdown::Write) {
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
        other => other,
    }
}

/// Splice pipes with data in flight, at most, in the whole process (Linux): 16 MiB of the user's
/// pipe budget. A direction that finds none free (slow readers holding them) moves its bytes
/// through a small buffer of its own instead, so the user's other programs keep full-size pipes
/// and no connection waits for another. Elsewhere every direction uses its own buffer.
pub const PIPES_MAX: usize = 16;

#[cfg(target_os = "linux")]
use splice::pump;

#[cfg(target_os = "linux")]
mod splice {
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

    use tokio::io::Interest;
    use tokio::net::TcpStream;

    /// Bytes a pipe holds: 1 MiB, the unprivileged maximum, for throughput (256 KiB pipes
    /// measured 40% slower) and for 256 slots, which lets small reads skip a syscall (see
    /// `pump`). Pipe pages count against a per-user budget shared with every program of the
    /// user (`/proc/sys/fs/pipe-user-pages-soft`, 64 MiB by default), so only a few are pooled:
    /// idle, Porthole holds 4 MiB of it; each direction with data in flight 1 MiB more.
    const PIPE_SIZE: usize = 1 << 20;
    /// The smallest pipe slot: one page.
    const PAGE: usize = 4096;
    /// A first read this large means a bulk transfer: worth topping the pipe up.
    const BULK: usize = 64 * 1024;
    /// Pipes kept for reuse; beyond this, returned pipes are closed.
    const POOL_MAX: usize = 4;
    use super::PIPES_MAX;
    /// The buffer of a direction without a pipe.
    const FALLBACK_BUFFER: usize = 16 * 1024;

    struct Pipe {
        read: OwnedFd,
        write: OwnedFd,
        capacity: usize,
    }

    static POOL: Mutex<Vec<Pipe>> = Mutex::new(Vec::new());
    /// Pipes out of the pool (in use), and the most there have been.
    static LEASED: AtomicUsize = AtomicUsize::new(0);
    static LEASED_PEAK: AtomicUsize = AtomicUsize::new(0);
    /// Reads that went through a fallback buffer.
    static FALLBACKS: AtomicU64 = AtomicU64::new(0);

    /// Pipes in use now, the most ever in use at once, and the reads that found none free.
    pub fn pipes() -> (usize, usize, u64) {
        (
            LEASED.load(Ordering::Relaxed),
            LEASED_PEAK.load(Ordering::Relaxed),
            FALLBACKS.load(Ordering::Relaxed),
        )
    }

    /// A pipe out of the pool, counted until it goes back or is closed.
    struct Lease(Option<Pipe>);

    impl std::ops::Deref for Lease {
        type Target = Pipe;
        fn deref(&self) -> &Pipe {
            self.0.as_ref().expect("a lease holds its pipe until it ends")
        }
    }

    impl Lease {
        /// A pipe, unless [`PIPES_MAX`] are in use or the system will not make one.
        fn take() -> Option<Lease> {
            let mut leased = LEASED.load(Ordering::Relaxed);
            loop {
                if leased >= PIPES_MAX {
                    return None;
                }
                match LEASED.compare_exchange_weak(leased, leased + 1, Ordering::AcqRel, Ordering::Relaxed) {
                    Ok(_) => break,
                    Err(now) => leased = now,
                }
            }
            LEASED_PEAK.fetch_max(leased + 1, Ordering::Relaxed);
            match Pipe::take() {
                Ok(pipe) => Some(Lease(Some(pipe))),
                Err(_) => {
                    // Out of descriptors or pipe budget: the fallback buffer does the job.
                    LEASED.fetch_sub(1, Ordering::AcqRel);
                    None
                }
            }
        }

        /// Returns an empty pipe to the pool.
        fn give_back(mut self) {
            if let Some(pipe) = self.0.take() {
                pipe.give_back();
            }
        }
    }

    impl Drop for Lease {
        fn drop(&mut self) {
            // Given back or closed (a pipe with data left in it is never pooled).
            LEASED.fetch_sub(1, Ordering::AcqRel);
        }
    }

    impl Pipe {
        fn take() -> io::Result<Pipe> {
            // The lock is never held across a panic point; a poisoned pool is still a valid Vec.
            if let Some(pipe) = POOL.lock().unwrap_or_else(|p| p.into_inner()).pop() {
                return Ok(pipe);
            }
            let mut fds = [0 as RawFd; 2];
            // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
            if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody else.
            let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
            // SAFETY: fcntl on a pipe we own. If the budget refuses the size, the pipe keeps the
            // size it has, which F_GETPIPE_SZ reports.
            let size = unsafe {
                match libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE as libc::c_int) {
                    n if n > 0 => n,
                    _ => libc::fcntl(write.as_raw_fd(), libc::F_GETPIPE_SZ),
                }
            };
            let capacity = if size > 0 { size as usize } else { PAGE };
            Ok(Pipe { read, write, capacity })
        }

        /// Returns an empty pipe to the pool.
        fn give_back(self) {
            let mut pool = POOL.lock().unwrap_or_else(|p| p.into_inner());
            if pool.len() < POOL_MAX {
                pool.push(self);
            }
        }
    }

    fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
        // SAFETY: both fds are open for the duration of the call; null offsets are valid for
        // sockets and pipes.
        let n = unsafe {
            libc::splice(
                from,
                std::ptr::null_mut(),
                to,
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// One direction: `src` → pipe → `dst`, until end-of-file on `src`.
    pub(super) async fn pump(src: &TcpStream, dst: &TcpStream, count: &AtomicU64) -> io::Result<()> {
        let mut pipe: Option<Lease> = None;
        let mut fallback = Vec::new();
        loop {
            src.readable().await?;
            let p = match pipe.take().or_else(Lease::take) {
                Some(p) => {
                    fallback = Vec::new();
                    p
                }
                None => {
                    FALLBACKS.fetch_add(1, Ordering::Relaxed);
                    match super::copy_once(src, dst, &mut fallback, FALLBACK_BUFFER, count).await? {
                        super::Copied::End => return super::half_close(dst),
                        super::Copied::Some | super::Copied::Idle => continue,
                    }
                }
            };
            // The pipe is empty here, so EAGAIN can only mean the socket has nothing to read.
            let mut drained = 0;
            let filled = src.try_io(Interest::READABLE, || {
                let n = splice(src.as_raw_fd(), p.write.as_raw_fd(), p.capacity)?;
                // Fewer bytes than the pipe has slots (each holds at least one byte) means the
                // pipe did not fill up: the socket is drained. Say so now, as tokio's own reads
                // do after a short read, instead of paying a syscall to hear EAGAIN. Readiness
                // that arrived meanwhile is newer and is kept.
                if n > 0 && n < p.capacity / PAGE {
                    drained = n;
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(n)
            });
            let mut pending = match filled {
                Ok(0) => {
                    p.give_back();
                    return super::half_close(dst);
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && drained > 0 => drained,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Idle: an idle connection holds no pipe.
                    p.give_back();
                    continue;
                }
                Err(e) => return Err(e),
            };
            // In a bulk transfer, top the pipe up while the socket has more, so each write to
            // `dst` moves more (small messages skip this: it would cost them a syscall). Called
            // directly, not through `try_io`: an EAGAIN here may mean "pipe full", which must not
            // clear the socket's readiness.
            let mut eof = false;
            while pending >= BULK && pending < p.capacity {
                match splice(src.as_raw_fd(), p.write.as_raw_fd(), p.capacity - pending) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => pending += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
            while pending > 0 {
                dst.writable().await?;
                // The pipe holds data, so EAGAIN can only mean the socket's send buffer is full.
                match dst.try_io(Interest::WRITABLE, || {
                    splice(p.read.as_raw_fd(), dst.as_raw_fd(), pending)
                }) {
                    Ok(n) => {
                        pending -= n;
                        count.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    // A pipe with data left in it is dropped, not pooled.
                    Err(e) => return Err(e),
                }
            }
            if eof {
                p.give_back();
                return super::half_close(dst);
            }
            if drained > 0 {
                // The socket is empty and this task is about to wait: an idle connection holds
                // no pipe.
                p.give_back();
            } else {
                pipe = Some(p);
            }
        }
    }
}

#[cfg(target_os = "linux")]
pub use splice::pipes;

/// One direction with a user-space buffer: as much as one read gives, passed on whole.
#[cfg(not(target_os = "linux"))]
async fn pump(src: &TcpStream, dst: &TcpStream, count: &AtomicU64) -> io::Result<()> {
    const BUFFER: usize = 64 * 1024;
    let mut buf = Vec::new();
    loop {
        src.readable().await?;
        if let Copied::End = copy_once(src, dst, &mut buf, BUFFER, count).await? {
            return half_close(dst);
        }
    }
}

/// What one [`copy_once`] did.
enum Copied {
    /// Bytes were passed on.
    Some,
    /// The readiness was stale: nothing to read.
    Idle,
    /// End of file.
    End,
}

/// One read from a readable `src` into `buf` (allocated to `size` on the first readable event,
/// freed when the readiness was stale: an idle connection holds no buffer), written whole to
/// `dst`.
async fn copy_once(
    src: &TcpStream,
    dst: &TcpStream,
    buf: &mut Vec<u8>,
    size: usize,
    count: &AtomicU64,
) -> io::Result<Copied> {
    if buf.is_empty() {
        *buf = vec![0; size];
    }
    let n = match src.try_read(buf) {
        Ok(0) => return Ok(Copied::End),
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            *buf = Vec::new();
            return Ok(Copied::Idle);
        }
        Err(e) => return Err(e),
    };
    let mut written = 0;
    while written < n {
        dst.writable().await?;
        match dst.try_write(&buf[written..n]) {
            Ok(m) => written += m,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    count.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    Ok(Copied::Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (a.unwrap(), b.unwrap().0)
    }

    #[tokio::test]
    async fn relays_both_ways_and_passes_half_close_on() {
        let (mut client, client_side) = pair().await;
        let (upstream_side, mut server) = pair().await;
        let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
        let relay = relay(&client_side, &upstream_side, &up, &down);
        let peers = async {
            client.write_all(b"hello").await.unwrap();
            client.shutdown().await.unwrap();
            let mut got = Vec::new();
            server.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"hello");
            // The server can still answer after the client's half-close.
            server.write_all(b"world!").await.unwrap();
            server.shutdown().await.unwrap();
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.unwrap();
            assert_eq!(back, b"world!");
        };
        let (result, ()) = tokio::join!(relay, peers);
        result.unwrap();
        assert_eq!((up.load(Ordering::Relaxed), down.load(Ordering::Relaxed)), (5, 6));
    }

    /// Held by the tests that count this process's pipes, so they do not count each other's.
    #[cfg(target_os = "linux")]
    static PIPE_COUNTING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    /// Pipes this process holds open (other tests running alongside use sockets, not pipes,
    /// except the ones that hold [`PIPE_COUNTING`]).
    #[cfg(target_os = "linux")]
    fn open_pipes() -> usize {
        let fds = std::fs::read_dir("/proc/self/fd").unwrap().flatten();
        fds.filter(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t.to_string_lossy().starts_with("pipe:")))
            .count()
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn idle_connections_hold_no_pipes() {
        let _alone = PIPE_COUNTING.lock().await;
        const CONNS: usize = 100;
        let before = open_pipes();
        let mut held = Vec::new();
        for i in 0..CONNS {
            let (mut client, client_side) = pair().await;
            let (upstream_side, mut server) = pair().await;
            tokio::spawn(async move {
                let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
                let _ = relay(&client_side, &upstream_side, &up, &down).await;
            });
            let msg = [i as u8; 64];
            client.write_all(&msg).await.unwrap();
            let mut got = [0u8; 64];
            server.read_exact(&mut got).await.unwrap();
            server.write_all(&got).await.unwrap();
            client.read_exact(&mut got).await.unwrap();
            assert_eq!(got, msg);
            held.push((client, server));
        }
        // The pool keeps a few pipes for reuse; a held pipe per connection would be hundreds.
        let extra = open_pipes().saturating_sub(before);
        assert!(
            extra <= 2 * 8,
            "{extra} pipe descriptors for {CONNS} idle connections: pipes are held"
        );
    }

    #[tokio::test]
    async fn a_reset_on_one_side_resets_the_other() {
        let (mut client, client_side) = pair().await;
        let (upstream_side, server) = pair().await;
        let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
        socket2::SockRef::from(&server)
            .set_linger(Some(std::time::Duration::ZERO))
            .unwrap();
        let relay = async {
            let r = relay(&client_side, &upstream_side, &up, &down).await;
            drop((client_side, upstream_side));
            r
        };
        let peer = async move {
            client.write_all(b"x").await.unwrap();
            drop(server);
            let mut buf = [0u8; 8];
            client.read(&mut buf).await
        };
        let (result, read) = tokio::join!(relay, peer);
        assert!(result.is_err());
        assert_eq!(read.unwrap_err().kind(), io::ErrorKind::ConnectionReset);
    }

    /// Pipes in use stay at the cap however many slow readers there are; directions beyond it
    /// move their bytes through a small buffer, intact.
    #[cfg(target_os = "linux")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slow_readers_hold_at_most_the_pipe_cap_and_every_byte_arrives() {
        let _alone = PIPE_COUNTING.lock().await;
        const CONNS: usize = PIPES_MAX * 2 + 8;
        const CHUNK: usize = 64 * 1024;
        const CHUNKS: usize = 128; // 8 MiB each: far more than the socket buffers take
        let chunk = |i: usize| -> Vec<u8> { (0..CHUNK).map(|j| (i * 31 + j * 7) as u8).collect() };
        let (_, _, fallbacks_before) = pipes();
        let mut servers = Vec::new();
        for i in 0..CONNS {
            let (mut client, client_side) = pair().await;
            let (upstream_side, server) = pair().await;
            tokio::spawn(async move {
                let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
                let _ = relay(&client_side, &upstream_side, &up, &down).await;
            });
            let data = chunk(i);
            tokio::spawn(async move {
                for _ in 0..CHUNKS {
                    client.write_all(&data).await.unwrap();
                }
                client.shutdown().await.unwrap();
                // Kept open until the server has read everything.
                let mut rest = Vec::new();
                let _ = client.read_to_end(&mut rest).await;
            });
            servers.push(server);
        }
        // Nobody reads: every direction fills up. Wait until the cap is reached and others fall
        // back (state that announces nothing: polled).
        tokio::time::timeout(std::time::Duration::from_secs(60), async {
            loop {
                let (leased, _, fallbacks) = pipes();
                if leased == PIPES_MAX && fallbacks > fallbacks_before {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the pipe cap reached under slow readers");
        let pipe_fds = open_pipes();
        assert!(
            pipe_fds <= 2 * (PIPES_MAX + 4),
            "{pipe_fds} pipe descriptors for {CONNS} stuck connections: the cap is {PIPES_MAX} pipes"
        );
        let reads = servers.into_iter().enumerate().map(|(i, mut server)| async move {
            let mut got = Vec::new();
            server.read_to_end(&mut got).await.unwrap();
            let expected = chunk(i);
            assert_eq!(got.len(), CHUNK * CHUNKS, "connection {i}");
            assert!(
                got.chunks(CHUNK).all(|c| c == expected),
                "connection {i}'s bytes intact"
            );
        });
        futures::future::join_all(reads).await;
        assert!(pipes().1 <= PIPES_MAX, "never more than the cap in use");
    }
}
