//! HTTP/1 framing guard against request smuggling.
//!
//! hyper resolves a request carrying both `Content-Length` and `Transfer-Encoding` by using
//! chunked framing and dropping `Content-Length` (allowed by RFC 9112 §6.3), so the service
//! cannot see the conflict. This guard follows the raw request bytes of a connection as they
//! are read (header blocks, fixed-length and chunked bodies) and flags the connection when a
//! header block names both; the proxy then answers 400 and never forwards the request.
//! Anything it cannot follow stops the guard: hyper's own parser rejects such input.

/// Longest header block followed (longer ones are refused by hyper's limit anyway).
const MAX_HEADER_BLOCK: usize = 256 * 1024;
/// Longest chunk-size or trailer line followed.
const MAX_LINE: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Headers,
    Fixed(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkEnd(u8),
    Trailers,
    Stopped,
}

/// Follows the request stream of one HTTP/1 connection.
#[derive(Debug)]
pub struct FramingGuard {
    state: State,
    buf: Vec<u8>,
    ambiguous: bool,
}

impl Default for FramingGuard {
    fn default() -> Self {
        Self {
            state: State::Headers,
            buf: Vec::new(),
            ambiguous: false,
        }
    }
}

impl FramingGuard {
    /// Feeds bytes read from the client; returns `true` once an ambiguous message was seen.
    pub fn feed(&mut self, mut data: &[u8]) -> bool {
        while !data.is_empty() && self.state != State::Stopped {
            match self.state {
                State::Headers => {
                    if self.buf.is_empty() {
                        // Empty lines before a request line are ignored.
                        let skip = data
                            .iter()
                            .take_while(|b| **b == b'\r' || **b == b'\n')
                            .count();
                        data = &data[skip..];
                        if data.is_empty() {
                            break;
                        }
                    }
                    // Only a line feed can end the block: look at those, with the bytes
                    // before them from the buffer or from `data`.
                    let end = memchr::memchr_iter(b'\n', data).find(|&i| self.ends_block(data, i));
                    match end {
                        Some(i) => {
                            // The whole block in `data` (the usual case): no copy.
                            let (state, ambiguous) = if self.buf.is_empty() {
                                header_block_state(&data[..=i])
                            } else {
                                self.buf.extend_from_slice(&data[..=i]);
                                let verdict = header_block_state(&self.buf);
                                self.buf.clear();
                                verdict
                            };
                            self.ambiguous |= ambiguous;
                            self.state = state;
                            data = &data[i + 1..];
                        }
                        None => {
                            self.buf.extend_from_slice(data);
                            data = &[];
                            if self.buf.len() > MAX_HEADER_BLOCK {
                                self.state = State::Stopped;
                            }
                        }
                    }
                }
                State::Fixed(n) => {
                    let take = data.len().min(usize::try_from(n).unwrap_or(usize::MAX));
                    data = &data[take..];
                    let left = n - take as u64;
                    self.state = if left == 0 {
                        State::Headers
                    } else {
                        State::Fixed(left)
                    };
                }
                State::ChunkData(n) => {
                    let take = data.len().min(usize::try_from(n).unwrap_or(usize::MAX));
                    data = &data[take..];
                    let left = n - take as u64;
                    self.state = if left == 0 {
                        State::ChunkEnd(2)
                    } else {
                        State::ChunkData(left)
                    };
                }
                State::ChunkEnd(n) => {
                    data = &data[1..];
                    self.state = if n <= 1 {
                        State::ChunkSize
                    } else {
                        State::ChunkEnd(n - 1)
                    };
                }
                State::ChunkSize | State::Trailers => {
                    let b = data[0];
                    data = &data[1..];
                    self.buf.push(b);
                    if b == b'\n' {
                        self.state = self.end_of_line();
                        self.buf.clear();
                    } else if self.buf.len() > MAX_LINE {
                        self.state = State::Stopped;
                    }
                }
                State::Stopped => {}
            }
        }
        self.ambiguous
    }

    /// Whether the line feed at `data[i]` ends a header block (an empty line, `\n\n` or
    /// `\r\n\r\n`), looking back into the buffered start of the block when needed.
    fn ends_block(&self, data: &[u8], i: usize) -> bool {
        let before = |back: usize| -> Option<u8> {
            if back <= i {
                Some(data[i - back])
            } else {
                let k = back - i;
                self.buf.len().checked_sub(k).map(|j| self.buf[j])
            }
        };
        let lf_lf = before(1) == Some(b'\n');
        let crlf_crlf =
            before(1) == Some(b'\r') && before(2) == Some(b'\n') && before(3) == Some(b'\r');
        lf_lf || crlf_crlf
    }

    fn end_of_line(&mut self) -> State {
        let line = String::from_utf8_lossy(&self.buf);
        let line = line.trim_end_matches(['\r', '\n']);
        match self.state {
            State::ChunkSize => {
                let size = line.split(';').next().unwrap_or("").trim();
                match u64::from_str_radix(size, 16) {
                    Ok(0) => State::Trailers,
                    Ok(n) if !size.is_empty() => State::ChunkData(n),
                    _ => State::Stopped,
                }
            }
            _ if line.is_empty() => State::Headers,
            _ => State::Trailers,
        }
    }
}

/// The state after a complete header block, and whether it names both `Content-Length` and
/// `Transfer-Encoding`.
fn header_block_state(block: &[u8]) -> (State, bool) {
    let mut content_length: Option<u64> = None;
    let mut has_cl = false;
    let mut te_chunked: Option<bool> = None;
    // The lines after the request line, without their line feeds.
    let mut feeds = memchr::memchr_iter(b'\n', block).peekable();
    while let Some(feed) = feeds.next() {
        let end = feeds.peek().copied().unwrap_or(block.len());
        let line = &block[feed + 1..end];
        // Only the two names matter: skip other lines on their first byte.
        if !matches!(
            line.trim_ascii_start().first(),
            Some(b'c' | b'C' | b't' | b'T')
        ) {
            continue;
        }
        let Some(colon) = memchr::memchr(b':', line) else {
            continue;
        };
        let name = line[..colon].trim_ascii();
        let value = line[colon + 1..].trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") {
            has_cl = true;
            content_length = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            let last = value
                .rsplit(|b| *b == b',')
                .next()
                .unwrap_or(b"")
                .trim_ascii();
            te_chunked = Some(last.eq_ignore_ascii_case(b"chunked"));
        }
    }
    let ambiguous = has_cl && te_chunked.is_some();
    let state = match (te_chunked, content_length, has_cl) {
        (Some(true), _, _) => State::ChunkSize,
        (Some(false), _, _) | (None, None, true) => State::Stopped,
        (None, Some(0), _) | (None, None, false) => State::Headers,
        (None, Some(n), _) => State::Fixed(n),
    };
    (state, ambiguous)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chunks: &[&[u8]]) -> bool {
        let mut g = FramingGuard::default();
        chunks.iter().fold(false, |_, c| g.feed(c))
    }

    #[test]
    fn flags_content_length_with_transfer_encoding() {
        assert!(run(&[b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"]));
        assert!(run(&[
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\ncontent-length: 4\r\n\r\n"
        ]));
    }

    #[test]
    fn follows_bodies_to_later_requests() {
        let first = b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
        let chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n";
        let bad = b"GET / HTTP/1.1\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(!run(&[first, chunked]));
        assert!(run(&[first, chunked, bad]));
        // Split at every position: same verdict.
        let all = [&first[..], &chunked[..], &bad[..]].concat();
        for cut in 0..all.len() {
            assert!(run(&[&all[..cut], &all[cut..]]), "cut at {cut}");
        }
    }

    #[test]
    fn body_bytes_are_not_mistaken_for_headers() {
        let body = b"Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let req = [
            format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes(),
            body,
        ]
        .concat();
        assert!(!run(&[&req]));
    }

    /// Header-ish pieces whose concatenations make request streams with every framing.
    const PIECES: &[&[u8]] = &[
        b"GET / HTTP/1.1",
        b"POST / HTTP/1.1",
        b"\r\n",
        b"\n",
        b"\r",
        b"Content-Length: 3",
        b"content-length:0",
        b"Transfer-Encoding: chunked",
        b"transfer-encoding: gzip, chunked",
        b"Host: a",
        b" x",
        b"abc",
        b"3\r\nabc\r\n0\r\n\r\n",
        b":",
    ];

    proptest::proptest! {
        /// However the stream is cut into reads, the verdict and the state are those for
        /// the whole stream: the guard's state survives every boundary (in a line, between
        /// `\r` and `\n`, between the two line feeds of a block's end).
        #[test]
        fn verdict_does_not_depend_on_read_boundaries(
            picks in proptest::collection::vec(0..PIECES.len(), 0..48),
            cuts in proptest::collection::vec(proptest::num::usize::ANY, 0..8),
        ) {
            let stream: Vec<u8> = picks.iter().flat_map(|&i| PIECES[i].iter().copied()).collect();
            let mut at: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
            at.sort_unstable();
            let mut chunks = Vec::new();
            let mut from = 0;
            for cut in at {
                chunks.push(&stream[from..cut]);
                from = cut;
            }
            chunks.push(&stream[from..]);
            let fed = |chunks: &[&[u8]]| {
                let mut g = FramingGuard::default();
                for c in chunks {
                    g.feed(c);
                }
                (g.ambiguous, g.state, g.buf)
            };
            proptest::prop_assert_eq!(fed(&chunks), fed(&[&stream]));
        }

        #[test]
        fn never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            proptest::prop_assert!(run(&[&data]) || !run(&[&data]));
        }
    }
}
