//! One port-forward stream (`v4.channel.k8s.io`) read and written in place by whoever holds
//! it: the relay of a connection, a probe, the pool checking a held stream.
//!
//! kube's `Portforwarder` puts a task and two in-memory pipes between the WebSocket and its
//! user, re-chunks what is sent into 4 KiB, and its WebSocket reads through a 128 KiB buffer
//! held for the stream's life. Here the upgraded connection itself is the `AsyncRead +
//! AsyncWrite`, speaking the few WebSocket frames the protocol uses: a data frame's payload is
//! read straight into the caller's buffer, and a frame sent is built in a buffer that lives only
//! until it is written. An idle stream holds a few dozen bytes of state.
//!
//! The protocol, one port per WebSocket: the server first sends the port number (two bytes,
//! little-endian) on channel 0 (data) and on channel 1 (error), each message's first byte
//! naming its channel; then data on channel 0, and at most one message on channel 1, a failure
//! (the API server's Status when it cannot reach the kubelet, the kubelet's text when the pod
//! refuses the port), after which the stream is over. The client sends data on channel 0, in
//! masked frames (RFC 6455 §5.3); it cannot half-close.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most one frame sent carries: what the relay reads from its client at once. The frame's
/// buffer lives until it is written.
pub(super) const FRAME_MAX: usize = 32 * 1024;

/// The most kept of a message on the error channel.
const VERDICT_MAX: usize = 64 * 1024;

/// A failure the far side reported on the error channel, carried in an [`io::Error`] of kind
/// `ConnectionRefused`; [`refusal`] finds it again.
#[derive(Debug)]
struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// The error a report on the error channel turns into: kind `ConnectionRefused`, found again
/// by [`refusal`].
pub fn refused(report: &str) -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionRefused, Refused(report.to_string()))
}

/// The far side's report when `error` came from the error channel.
pub fn refusal(error: &io::Error) -> Option<&str> {
    error
        .get_ref()
        .and_then(|e| e.downcast_ref::<Refused>())
        .map(|r| r.0.as_str())
}

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// What the payload being read goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sink {
    /// The message's first byte: its channel.
    Channel,
    /// Data on channel 0: straight to the reader.
    Data,
    /// A port number opening channel 0 or 1, or the error channel's report: kept in `held`.
    Opening(u8),
    Verdict,
    /// A control frame's payload, kept in `control`: it may come between a message's
    /// fragments.
    Control(u8),
}

/// The frame being read.
#[derive(Debug, Clone, Copy)]
struct Frame {
    /// Payload bytes still to come.
    remaining: u64,
    /// Whether it ends its message.
    fin: bool,
    sink: Sink,
    /// A server must not mask; one that does is still read right.
    mask: Option<([u8; 4], usize)>,
}

/// A port-forward stream to one port over the upgraded connection `S`.
pub struct PortStream<S> {
    io: S,
    port: u16,
    /// Whether channels 0 and 1 have sent their port number.
    opened: [bool; 2],
    /// What the far side said on the error channel.
    verdict: Option<String>,
    /// The WebSocket ended: a Close, or the connection's end.
    ended: bool,
    /// The frame header being read (2 to 14 bytes).
    head: [u8; 14],
    head_len: usize,
    frame: Option<Frame>,
    /// The data message being read continues in the next frame; or the message on another
    /// channel, by its sink.
    message: Option<Sink>,
    /// A message being kept: a port number, a report.
    held: Vec<u8>,
    /// A control frame's payload.
    control: Vec<u8>,
    /// A frame being written, and how much of it has gone. Empty when none is.
    out: Vec<u8>,
    out_sent: usize,
    /// A ping's payload to answer once `out` is free.
    pong: Option<Vec<u8>>,
    /// Bytes written to the connection and not yet flushed (TLS may hold them).
    unflushed: bool,
    /// A protocol error, repeated by every read after it: what follows it cannot be framed.
    failed: Option<String>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> PortStream<S> {
    pub fn new(io: S, port: u16) -> PortStream<S> {
        PortStream {
            io,
            port,
            opened: [false; 2],
            verdict: None,
            ended: false,
            head: [0; 14],
            head_len: 0,
            frame: None,
            message: None,
            held: Vec::new(),
            control: Vec::new(),
            out: Vec::new(),
            out_sent: 0,
            pong: None,
            unflushed: false,
            failed: None,
        }
    }

    /// What the far side reported on the error channel, once a read has come to it.
    pub fn verdict(&self) -> Option<&str> {
        self.verdict.as_deref()
    }

    /// Reads what has already arrived, data dropped, to find a report on the error channel that
    /// no read came to (a write failed first). Never waits.
    pub fn verdict_now(&mut self) -> Option<&str> {
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut scratch = [0u8; 4096];
        while self.verdict.is_none() && !self.ended {
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut *self).poll_read(&mut cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {}
                _ => break,
            }
        }
        self.verdict()
    }

    /// Reads the next frame's header; `Ok(false)`: the connection ended.
    fn poll_head(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        loop {
            let needed = match self.head_len {
                0 | 1 => 2,
                _ => {
                    let extended = match self.head[1] & 0x7f {
                        126 => 2,
                        127 => 8,
                        _ => 0,
                    };
                    let mask = if self.head[1] & 0x80 != 0 { 4 } else { 0 };
                    2 + extended + mask
                }
            };
            if self.head_len == needed {
                break;
            }
            let mut buf = ReadBuf::new(&mut self.head[self.head_len..needed]);
            ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf))?;
            let n = buf.filled().len();
            if n == 0 {
                return Poll::Ready(Ok(false));
            }
            self.head_len += n;
        }
        let head = &self.head[..self.head_len];
        self.head_len = 0;
        let (fin, opcode) = (head[0] & 0x80 != 0, head[0] & 0x0f);
        if head[0] & 0x70 != 0 {
            return Poll::Ready(Err(protocol(
                "a frame with reserved bits set (no extension was agreed)",
            )));
        }
        let (length, rest) = match head[1] & 0x7f {
            126 => (u64::from(u16::from_be_bytes([head[2], head[3]])), &head[4..]),
            127 => (
                u64::from_be_bytes(head[2..10].try_into().unwrap_or_default()),
                &head[10..],
            ),
            short => (u64::from(short), &head[2..]),
        };
        let mask = (head[1] & 0x80 != 0).then(|| ([rest[0], rest[1], rest[2], rest[3]], 0));
        let sink = match opcode {
            OP_CLOSE | OP_PING | OP_PONG => {
                if !fin || length > 125 {
                    return Poll::Ready(Err(protocol("a control frame fragmented or over 125 bytes")));
                }
                self.control.clear();
                Sink::Control(opcode)
            }
            OP_TEXT | OP_BINARY if self.message.is_none() => Sink::Channel,
            OP_CONTINUATION => match self.message {
                Some(sink) => sink,
                None => return Poll::Ready(Err(protocol("a continuation with no message to continue"))),
            },
            OP_TEXT | OP_BINARY => return Poll::Ready(Err(protocol("a new message before the last one ended"))),
            other => return Poll::Ready(Err(protocol(&format!("a frame of unknown opcode {other:#x}")))),
        };
        if !matches!(sink, Sink::Control(_)) {
            self.message = Some(sink);
        }
        self.frame = Some(Frame {
            remaining: length,
            fin,
            sink,
            mask,
        });
        Poll::Ready(Ok(true))
    }

    /// Reads some of the current frame's payload into `buf`; the count read (0: the end).
    fn poll_payload(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let Some(frame) = &mut self.frame else {
            return Poll::Ready(Ok(0));
        };
        let want = buf.len().min(usize::try_from(frame.remaining).unwrap_or(usize::MAX));
        let mut read = ReadBuf::new(&mut buf[..want]);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut read))?;
        let n = read.filled().len();
        if let Some((key, offset)) = &mut frame.mask {
            for byte in &mut buf[..n] {
                *byte ^= key[*offset % 4];
                *offset += 1;
            }
        }
        frame.remaining -= n as u64;
        Poll::Ready(Ok(n))
    }

    /// The current frame is all read: what its end means.
    fn frame_done(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let Some(frame) = self.frame.take() else {
            return Ok(());
        };
        match frame.sink {
            Sink::Control(OP_CLOSE) => self.ended = true,
            Sink::Control(OP_PING) => {
                self.pong = Some(std::mem::take(&mut self.control));
                // Answered now if the connection takes it; else with the next write.
                let _ = self.poll_send(cx);
            }
            Sink::Control(_) => self.control = Vec::new(),
            sink if frame.fin => {
                self.message = None;
                match sink {
                    Sink::Opening(channel) => {
                        let port = (self.held.len() == 2).then(|| u16::from_le_bytes([self.held[0], self.held[1]]));
                        if port != Some(self.port) {
                            return Err(io::Error::new(
                                io::ErrorKind::InvalidData,
                                format!(
                                    "the port-forward opened channel {channel} with {:?}, not with port {}",
                                    self.held, self.port
                                ),
                            ));
                        }
                        self.opened[usize::from(channel)] = true;
                        self.held = Vec::new();
                    }
                    Sink::Verdict => {
                        let text = std::mem::take(&mut self.held);
                        if !text.is_empty() && self.verdict.is_none() {
                            self.verdict = Some(String::from_utf8_lossy(&text).into_owned());
                        }
                    }
                    Sink::Channel | Sink::Data | Sink::Control(_) => {}
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Reads the first byte of a message: its channel, and so where the rest goes.
    fn poll_channel(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut byte = [0u8; 1];
        let n = ready!(self.poll_payload(cx, &mut byte))?;
        if n == 0 {
            // The connection ended inside the frame.
            self.ended = true;
            return Poll::Ready(Ok(()));
        }
        let channel = byte[0];
        let sink = match channel {
            0 | 1 if !self.opened[usize::from(channel)] => Sink::Opening(channel),
            0 => Sink::Data,
            1 => Sink::Verdict,
            other => {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("the port-forward sent on channel {other}, and only 0 and 1 exist for one port"),
                )));
            }
        };
        self.held.clear();
        self.message = Some(sink);
        if let Some(frame) = &mut self.frame {
            frame.sink = sink;
        }
        Poll::Ready(Ok(()))
    }

    /// Sends what waits to be sent (a frame written without a flush after it, a pong) and
    /// flushes it, as far as the connection takes it now; a read calls this, so that what waits
    /// goes out even when nobody writes or flushes any more, and the reader is woken to go on.
    fn poll_pending_output(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.out.is_empty() && self.pong.is_none() && !self.unflushed {
            return Ok(());
        }
        if let Poll::Ready(Err(e)) = self.poll_send(cx) {
            return Err(e);
        }
        if self.out.is_empty() {
            match Pin::new(&mut self.io).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.unflushed = false,
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => {}
            }
        }
        Ok(())
    }

    /// Writes what `out` holds, then the pong that waits, if any.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            while self.out_sent < self.out.len() {
                let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.out[self.out_sent..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.out_sent += n;
                self.unflushed = true;
            }
            // Written: the buffer goes with it.
            self.out = Vec::new();
            self.out_sent = 0;
            match self.pong.take() {
                Some(payload) => self.out = frame(OP_PONG, &[], &payload),
                None => return Poll::Ready(Ok(())),
            }
        }
    }
}

/// A masked frame, as a client sends it: `prefix` then `payload`.
fn frame(opcode: u8, prefix: &[u8], payload: &[u8]) -> Vec<u8> {
    let length = prefix.len() + payload.len();
    let mut out = Vec::with_capacity(14 + length);
    out.push(0x80 | opcode);
    match length {
        0..=125 => out.push(0x80 | length as u8),
        126..=0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(length as u16).to_be_bytes());
        }
        _ => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(length as u64).to_be_bytes());
        }
    }
    let key: [u8; 4] = rand::random();
    out.extend_from_slice(&key);
    let start = out.len();
    out.extend_from_slice(prefix);
    out.extend_from_slice(payload);
    mask(&mut out[start..], key);
    out
}

/// XORs `bytes` with `key` repeated, eight bytes at a time.
fn mask(bytes: &mut [u8], key: [u8; 4]) {
    let wide = u64::from_ne_bytes([key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3]]);
    let mut chunks = bytes.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let word = u64::from_ne_bytes(chunk.try_into().unwrap_or_default()) ^ wide;
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    // What is left starts at a multiple of 8, so at the key's first byte.
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= key[i % 4];
    }
}

fn protocol(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("the port-forward's WebSocket sent {what}"),
    )
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for PortStream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(failure) = &this.failed {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, failure.clone())));
        }
        let read = this.poll_read_frames(cx, buf);
        if let Poll::Ready(Err(e)) = &read
            && e.kind() == io::ErrorKind::InvalidData
        {
            this.failed = Some(e.to_string());
        }
        read
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> PortStream<S> {
    fn poll_read_frames(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self;
        this.poll_pending_output(cx)?;
        loop {
            if let Some(verdict) = &this.verdict {
                return Poll::Ready(Err(refused(verdict)));
            }
            if this.ended || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            let Some(frame) = this.frame else {
                if !ready!(this.poll_head(cx))? {
                    // The connection's end, with or without a Close: the API server drops the
                    // connection when the kubelet's stream ends.
                    this.ended = true;
                }
                continue;
            };
            if frame.remaining == 0 {
                this.frame_done(cx)?;
                continue;
            }
            match frame.sink {
                Sink::Channel => ready!(this.poll_channel(cx))?,
                Sink::Data => {
                    let n = ready!(this.poll_payload(cx, buf.initialize_unfilled()))?;
                    if n == 0 {
                        this.ended = true;
                        continue;
                    }
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Sink::Opening(_) | Sink::Verdict | Sink::Control(_) => {
                    let mut chunk = [0u8; 512];
                    let n = ready!(this.poll_payload(cx, &mut chunk))?;
                    if n == 0 {
                        this.ended = true;
                        continue;
                    }
                    let kept = if matches!(frame.sink, Sink::Control(_)) {
                        &mut this.control
                    } else {
                        &mut this.held
                    };
                    let room = VERDICT_MAX.saturating_sub(kept.len());
                    kept.extend_from_slice(&chunk[..n.min(room)]);
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for PortStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        // The frame before (or a pong) goes first.
        ready!(this.poll_send(cx))?;
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = data.len().min(FRAME_MAX);
        this.out = frame(OP_BINARY, &[0], &data[..n]);
        // On its way at once; what cannot go now goes with the next write or flush.
        if let Poll::Ready(Err(e)) = this.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_send(cx))?;
        ready!(Pin::new(&mut self.io).poll_flush(cx))?;
        self.unflushed = false;
        Poll::Ready(Ok(()))
    }

    /// The protocol cannot pass a half-close on: the stream's end closes the WebSocket.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_send(cx))?;
        if !self.ended {
            self.ended = true;
            self.out = frame(OP_CLOSE, &[], &[]);
            ready!(self.poll_send(cx))?;
        }
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::protocol::Role;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::{Frame as WsFrame, FrameHeader};
    use tokio_tungstenite::tungstenite::{Bytes, Message};

    /// A port-forward stream to `port`, and the API server's end of its WebSocket (tungstenite,
    /// which refuses a client's frame that is not masked), over a pipe.
    async fn pair(port: u16) -> (PortStream<DuplexStream>, WebSocketStream<DuplexStream>) {
        let (a, b) = tokio::io::duplex(256 * 1024);
        let server = WebSocketStream::from_raw_socket(b, Role::Server, None).await;
        (PortStream::new(a, port), server)
    }

    fn message(channel: u8, payload: &[u8]) -> Message {
        let mut bytes = vec![channel];
        bytes.extend_from_slice(payload);
        Message::Binary(bytes.into())
    }

    async fn open(server: &mut WebSocketStream<DuplexStream>, port: u16) {
        server.send(message(0, &port.to_le_bytes())).await.unwrap();
        server.send(message(1, &port.to_le_bytes())).await.unwrap();
    }

    #[tokio::test]
    async fn data_flows_both_ways_in_frames_on_channel_zero() {
        let (mut stream, mut server) = pair(8080).await;
        open(&mut server, 8080).await;
        stream.write_all(b"GET /").await.unwrap();
        stream.flush().await.unwrap();
        let Some(Ok(Message::Binary(sent))) = server.next().await else {
            panic!("no frame")
        };
        assert_eq!(&sent[..], b"\0GET /");
        server.send(message(0, b"HTTP/1.1 200")).await.unwrap();
        server.send(message(0, b" OK")).await.unwrap();
        let mut got = [0u8; 15];
        stream.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"HTTP/1.1 200 OK");
        // A read smaller than a frame leaves the rest for the next.
        server.send(message(0, b"abcdef")).await.unwrap();
        let mut two = [0u8; 2];
        stream.read_exact(&mut two).await.unwrap();
        assert_eq!(&two, b"ab");
        stream.read_exact(&mut two).await.unwrap();
        assert_eq!(&two, b"cd");
        // Frames of every length encoding, one of them empty.
        let long: Vec<u8> = (0..70_000u32).map(|i| i as u8).collect();
        for size in [0usize, 125, 126, 65_535, 65_536, 70_000] {
            server.send(message(0, &long[..size])).await.unwrap();
        }
        server.send(Message::Close(None)).await.unwrap();
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).await.unwrap();
        let mut expected = b"ef".to_vec();
        for size in [0usize, 125, 126, 65_535, 65_536, 70_000] {
            expected.extend_from_slice(&long[..size]);
        }
        assert!(rest == expected, "the data before the Close, in order, then the end");
        assert_eq!(stream.verdict(), None);
    }

    #[tokio::test]
    async fn a_large_write_goes_in_frames_of_at_most_the_bound() {
        let (mut stream, mut server) = pair(80).await;
        let data: Vec<u8> = (0..FRAME_MAX * 2 + 10).map(|i| i as u8).collect();
        let writing = async {
            stream.write_all(&data).await.unwrap();
            stream.flush().await.unwrap();
        };
        let reading = async {
            let mut got = Vec::new();
            let mut frames = 0;
            while got.len() < data.len() {
                let Some(Ok(Message::Binary(sent))) = server.next().await else {
                    panic!("no frame")
                };
                assert_eq!(sent[0], 0, "data goes on channel 0");
                assert!(sent.len() <= FRAME_MAX + 1);
                got.extend_from_slice(&sent[1..]);
                frames += 1;
            }
            (got, frames)
        };
        let ((), (got, frames)) = tokio::join!(writing, reading);
        assert!(got == data);
        assert_eq!(frames, 3);
    }

    /// The error channel's message fails the next read, after the data that came before it,
    /// and is found again by `refusal`.
    #[tokio::test]
    async fn the_error_channel_fails_reads_after_the_data_before_it() {
        let (mut stream, mut server) = pair(5432).await;
        open(&mut server, 5432).await;
        server.send(message(0, b"hello")).await.unwrap();
        let refused = "error forwarding port 5432 to pod abc: connection refused";
        server.send(message(1, refused.as_bytes())).await.unwrap();
        server.send(Message::Close(None)).await.unwrap();
        let mut got = [0u8; 5];
        stream.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
        let error = stream.read(&mut got).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::ConnectionRefused);
        assert_eq!(refusal(&error), Some(refused));
        assert_eq!(stream.verdict(), Some(refused));
        // It stays failed.
        assert!(stream.read(&mut got).await.is_err());
    }

    /// A report no read came to is found without waiting.
    #[tokio::test]
    async fn a_verdict_already_arrived_is_found_without_a_read() {
        let (mut stream, mut server) = pair(80).await;
        assert_eq!(stream.verdict_now(), None, "nothing has arrived: no wait");
        open(&mut server, 80).await;
        server.send(message(0, b"dropped")).await.unwrap();
        server.send(message(1, b"error dialing backend")).await.unwrap();
        assert_eq!(stream.verdict_now(), Some("error dialing backend"));
    }

    #[tokio::test]
    async fn a_wrong_port_number_or_channel_is_a_protocol_error() {
        let (mut stream, mut server) = pair(80).await;
        server.send(message(0, &81u16.to_le_bytes())).await.unwrap();
        let error = stream.read(&mut [0u8; 4]).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(error.to_string().contains("not with port 80"), "{error}");

        let (mut stream, mut server) = pair(80).await;
        open(&mut server, 80).await;
        server.send(message(4, b"\x01x")).await.unwrap();
        let error = stream.read(&mut [0u8; 4]).await.unwrap_err();
        assert!(error.to_string().contains("channel 4"), "{error}");
        // What follows cannot be framed: the error stays, and nothing in the rest of that
        // message (a 1 where a channel byte would be) is taken for a report.
        server.send(message(1, b"not a report")).await.unwrap();
        let again = stream.read(&mut [0u8; 4]).await.unwrap_err();
        assert_eq!(again.to_string(), error.to_string());
        assert_eq!(stream.verdict_now(), None);
    }

    /// A frame written without a flush (the connection took only part of it) goes out while
    /// the stream waits to read the answer to it.
    #[tokio::test]
    async fn a_frame_not_flushed_goes_out_while_the_stream_reads() {
        let (ours, theirs) = tokio::io::duplex(64);
        let mut server = WebSocketStream::from_raw_socket(theirs, Role::Server, None).await;
        let mut stream = PortStream::new(ours, 80);
        stream.write_all(&[b'q'; 1000]).await.unwrap();
        let serve = async {
            open(&mut server, 80).await;
            let Some(Ok(Message::Binary(request))) = server.next().await else {
                panic!("no frame")
            };
            assert_eq!(request.len(), 1001);
            server.send(message(0, b"answer")).await.unwrap();
        };
        let read = async {
            let mut answer = [0u8; 6];
            stream.read_exact(&mut answer).await.unwrap();
            answer
        };
        let both = tokio::time::timeout(std::time::Duration::from_secs(10), async { tokio::join!(serve, read) });
        let ((), answer) = both.await.expect("the request went out and was answered");
        assert_eq!(&answer, b"answer");
    }

    /// A message in fragments, with a ping between them: the data arrives whole, in order,
    /// and the ping is answered with its payload.
    #[tokio::test]
    async fn fragments_and_pings_between_them_are_read_right() {
        let (mut stream, mut server) = pair(80).await;
        open(&mut server, 80).await;
        let part = |opcode, fin, payload: &[u8]| {
            let header = FrameHeader {
                is_final: fin,
                opcode,
                ..FrameHeader::default()
            };
            WsFrame::from_payload(header, Bytes::copy_from_slice(payload))
        };
        server
            .send(Message::Frame(part(OpCode::Data(Data::Binary), false, b"\0frag")))
            .await
            .unwrap();
        server
            .send(Message::Ping(Bytes::from_static(b"are you there")))
            .await
            .unwrap();
        server
            .send(Message::Frame(part(OpCode::Data(Data::Continue), false, b"ments ")))
            .await
            .unwrap();
        server
            .send(Message::Frame(part(OpCode::Data(Data::Continue), true, b"whole")))
            .await
            .unwrap();
        let mut got = [0u8; 15];
        stream.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"fragments whole");
        // The error channel's report in fragments too.
        server
            .send(Message::Frame(part(OpCode::Data(Data::Binary), false, b"\x01error ")))
            .await
            .unwrap();
        server
            .send(Message::Frame(part(
                OpCode::Data(Data::Continue),
                true,
                b"dialing backend",
            )))
            .await
            .unwrap();
        let error = stream.read(&mut got).await.unwrap_err();
        assert_eq!(refusal(&error), Some("error dialing backend"));
        // The pong went out (tungstenite would have refused it unmasked).
        let mut pong = None;
        while let Some(Ok(message)) = server.next().await {
            if let Message::Pong(payload) = message {
                pong = Some(payload);
                break;
            }
        }
        assert_eq!(pong.as_deref(), Some(&b"are you there"[..]));
    }

    /// The connection's end without a Close is an end of file; a write after it fails.
    #[tokio::test]
    async fn the_connections_end_is_an_end_of_file() {
        let (mut stream, mut server) = pair(80).await;
        open(&mut server, 80).await;
        drop(server);
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        let wrote = async {
            stream.write_all(b"late").await?;
            stream.flush().await
        };
        assert!(wrote.await.is_err());
    }

    #[test]
    fn masking_eight_at_a_time_is_masking_one_at_a_time() {
        let key = [0x12, 0x34, 0x56, 0x78];
        for len in [0usize, 1, 7, 8, 9, 15, 16, 17, 1000] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let mut fast = data.clone();
            mask(&mut fast, key);
            let slow: Vec<u8> = data.iter().enumerate().map(|(i, b)| b ^ key[i % 4]).collect();
            assert_eq!(fast, slow, "{len} bytes");
        }
    }

    /// A connection that ends inside a frame (its header, its channel byte, its data) is an
    /// end of file, not a read that waits for ever.
    #[tokio::test]
    async fn a_connection_cut_inside_a_frame_ends_the_stream() {
        let opening: &[u8] = &[0x82, 3, 0, 80, 0, 0x82, 3, 1, 80, 0];
        for cut in [
            &[0x82][..],
            &[0x82, 126, 0][..],
            &[0x82, 5][..],
            &[0x82, 5, 0, b'a'][..],
        ] {
            let (ours, mut theirs) = tokio::io::duplex(1024);
            let mut stream = PortStream::new(ours, 80);
            theirs.write_all(opening).await.unwrap();
            theirs.write_all(cut).await.unwrap();
            drop(theirs);
            let mut got = Vec::new();
            let read = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read_to_end(&mut got));
            read.await.expect("the read ended").unwrap();
            let data: &[u8] = if cut.len() == 4 { b"a" } else { b"" };
            assert_eq!(got, data, "cut after {cut:?}");
        }
    }

    /// Shutting the stream down sends a Close.
    #[tokio::test]
    async fn a_shutdown_sends_a_close() {
        let (mut stream, mut server) = pair(80).await;
        stream.shutdown().await.unwrap();
        assert!(matches!(server.next().await, Some(Ok(Message::Close(_)))));
    }
}
