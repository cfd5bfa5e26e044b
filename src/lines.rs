//! Reading newline-delimited messages with a bound on each line: the control socket and the
//! settings window's link read JSON lines from another process, which must not make this one
//! buffer without end.

use std::io;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};

/// Lines of at most `max` bytes (without the newline); a longer one is an `InvalidData` error,
/// after which the reader should be dropped (the rest of that line is still unread).
pub struct BoundedLines<R> {
    inner: BufReader<R>,
    max: usize,
    buf: Vec<u8>,
}

impl<R: AsyncRead + Unpin> BoundedLines<R> {
    pub fn new(read: R, max: usize) -> BoundedLines<R> {
        BoundedLines {
            inner: BufReader::new(read),
            max,
            buf: Vec::new(),
        }
    }

    /// The next line without its `\n` (or `\r\n`); `None` at the end of the stream. A last line
    /// without a newline is a line.
    pub async fn next_line(&mut self) -> io::Result<Option<String>> {
        self.buf.clear();
        // One byte more than the bound, for the newline that must end a line of `max` bytes.
        let limit = self.max as u64 + 1;
        let read = (&mut self.inner).take(limit).read_until(b'\n', &mut self.buf).await?;
        if read == 0 {
            return Ok(None);
        }
        if self.buf.last() == Some(&b'\n') {
            self.buf.pop();
            if self.buf.last() == Some(&b'\r') {
                self.buf.pop();
            }
        } else if read as u64 == limit {
            self.buf.clear();
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a line longer than {} bytes", self.max),
            ));
        }
        String::from_utf8(std::mem::take(&mut self.buf))
            .map(Some)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "a line that is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_up_to_the_bound_pass_and_a_longer_one_is_refused() {
        let text = b"abcd\r\nabcde\nlast".to_vec();
        let mut lines = BoundedLines::new(&text[..], 5);
        assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("abcd"));
        assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("abcde"));
        assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("last"));
        assert_eq!(lines.next_line().await.unwrap(), None);
        let long = b"abcdef\nnext\n".to_vec();
        let mut lines = BoundedLines::new(&long[..], 5);
        let error = lines.next_line().await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(error.to_string().contains("longer than 5 bytes"), "{error}");
        // Endless input without a newline costs the bound, not memory without end.
        let mut endless = BoundedLines::new(tokio::io::repeat(b'x'), 1 << 16);
        let read = tokio::time::timeout(std::time::Duration::from_secs(10), endless.next_line()).await;
        assert!(read.expect("gives up at the bound").is_err());
        assert!(endless.buf.capacity() <= 1 << 17, "{}", endless.buf.capacity());
    }
}
