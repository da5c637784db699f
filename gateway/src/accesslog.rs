//! The access log: one JSON object per line and request, written when the response body ends
//! (or the client goes away).
//!
//! Inner stages fill a shared [`RequestLog`] (route, upstream, member, attempts, error) carried
//! in the request extensions; the observe layer formats the line with [`AccessLog::write`].
//!
//! The line is formatted once (by [`AccessLine::encode`]: constant keys, escaped string values;
//! strings that come from raw header bytes are converted lossily first, so the line is always
//! valid UTF-8) into a reusable per-thread buffer, and appended to an in-memory batch. A dedicated writer thread writes the batch to the output
//! (stdout in the binary) when it reaches [`FLUSH_BYTES`], at the latest [`FLUSH_INTERVAL`]
//! after its first line, on [`AccessLog::flush`] and when the log is dropped. The request path
//! therefore never waits for the output: when the output is slower than the traffic and the
//! batch reaches [`MAX_PENDING_BYTES`], further lines are dropped and counted
//! (`lb_gateway_access_log_dropped_lines_total`) instead.

use std::cell::RefCell;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant, SystemTime};

use crate::config::RouteConfig;
use crate::upstream::{Member, Upstream};

/// Fields filled in while the request is processed (shared references, so filling them in
/// allocates nothing).
#[derive(Debug, Clone, Default)]
pub struct LogFields {
    pub route: Option<Arc<RouteConfig>>,
    pub upstream: Option<Arc<Upstream>>,
    pub member: Option<Arc<Member>>,
    /// The `traceparent` sent upstream (the gateway's child of the client's, or a new trace).
    pub traceparent: Option<http::HeaderValue>,
    pub attempts: u32,
    pub error: Option<String>,
    pub error_origin: Option<&'static str>,
}

/// Shared slot for [`LogFields`] (cheap to clone).
#[derive(Debug, Clone, Default)]
pub struct RequestLog(Arc<Mutex<LogFields>>);

impl RequestLog {
    fn with<T>(&self, f: impl FnOnce(&mut LogFields) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Records the matched route.
    pub fn set_route(&self, route: &Arc<RouteConfig>) {
        self.with(|l| l.route = Some(Arc::clone(route)));
    }

    /// Records the upstream pool and the `traceparent` the request goes there with.
    pub fn set_upstream(&self, upstream: &Arc<Upstream>, traceparent: &http::HeaderValue) {
        self.with(|l| {
            l.upstream = Some(Arc::clone(upstream));
            l.traceparent = Some(traceparent.clone());
        });
    }

    /// Records the member of the current attempt.
    pub fn set_member(&self, member: &Arc<Member>, attempt: u32) {
        self.with(|l| {
            l.member = Some(Arc::clone(member));
            l.attempts = attempt;
        });
    }

    /// Records the error that became the response.
    pub fn set_error(&self, error: String, origin: &'static str) {
        self.with(|l| {
            l.error = Some(error);
            l.error_origin = Some(origin);
        });
    }

    /// A copy of the fields.
    pub fn fields(&self) -> LogFields {
        self.with(|l| l.clone())
    }
}

/// One access-log line (without the `timestamp` and `target` that [`AccessLog::write`] puts
/// first). Durations are written as milliseconds with three decimals.
#[derive(Debug)]
pub struct AccessLine<'a> {
    pub request_id: &'a str,
    pub trace_id: Option<&'a str>,
    pub listener: &'a str,
    /// The client's `IP:port`.
    pub client_addr: &'a str,
    pub method: &'a str,
    pub host: Option<&'a str>,
    pub path: &'a str,
    pub protocol: &'a str,
    pub status: u16,
    pub route: Option<&'a str>,
    pub upstream: Option<&'a str>,
    pub member: Option<&'a str>,
    pub attempts: u32,
    pub bytes_sent: u64,
    pub complete: bool,
    pub duration: Duration,
    /// `None`: no response was sent (the client went away first).
    pub ttfb: Option<Duration>,
    pub error: Option<&'a str>,
    pub error_origin: Option<&'a str>,
}

impl AccessLine<'_> {
    /// Appends the line as one JSON object (no newline).
    ///
    /// Hand-written rather than `serde_json`: the keys are constants written as they are, and
    /// only the string values go through [`json_string`]; `serde_json` escaped every key and
    /// value byte by byte and formatted the address through `Display`, which made the line
    /// cost about four times as many instructions as the rest of the log path. Every string
    /// value is escaped (see [`json_string`]), so hostile input cannot break out of its value;
    /// the tests parse the output with `serde_json`.
    fn encode(&self, timestamp: &str, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"timestamp\":");
        json_string(out, timestamp);
        out.extend_from_slice(b",\"target\":\"access_log\",\"request_id\":");
        json_string(out, self.request_id);
        out.extend_from_slice(b",\"trace_id\":");
        json_opt(out, self.trace_id);
        out.extend_from_slice(b",\"listener\":");
        json_string(out, self.listener);
        out.extend_from_slice(b",\"client_addr\":");
        json_string(out, self.client_addr);
        out.extend_from_slice(b",\"method\":");
        json_string(out, self.method);
        out.extend_from_slice(b",\"host\":");
        json_opt(out, self.host);
        out.extend_from_slice(b",\"path\":");
        json_string(out, self.path);
        out.extend_from_slice(b",\"protocol\":");
        json_string(out, self.protocol);
        out.extend_from_slice(b",\"status\":");
        out.extend_from_slice(itoa::Buffer::new().format(self.status).as_bytes());
        out.extend_from_slice(b",\"route\":");
        json_opt(out, self.route);
        out.extend_from_slice(b",\"upstream\":");
        json_opt(out, self.upstream);
        out.extend_from_slice(b",\"member\":");
        json_opt(out, self.member);
        out.extend_from_slice(b",\"attempts\":");
        out.extend_from_slice(itoa::Buffer::new().format(self.attempts).as_bytes());
        out.extend_from_slice(b",\"bytes_sent\":");
        out.extend_from_slice(itoa::Buffer::new().format(self.bytes_sent).as_bytes());
        out.extend_from_slice(if self.complete {
            b",\"complete\":true,\"duration_ms\":"
        } else {
            b",\"complete\":false,\"duration_ms\":"
        });
        json_millis(out, self.duration);
        out.extend_from_slice(b",\"ttfb_ms\":");
        match self.ttfb {
            Some(t) => json_millis(out, t),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"error\":");
        json_opt(out, self.error);
        out.extend_from_slice(b",\"error_origin\":");
        json_opt(out, self.error_origin);
        out.push(b'}');
    }
}

/// Appends `s` as a JSON string: `"` and `\` get a backslash, the control characters
/// U+0000..U+001F (the only others JSON requires escaping) become `\n`, `\r`, `\t` or
/// `\u00XX`; everything else, multi-byte UTF-8 included, is copied in runs.
pub fn json_string(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(s.len() + 2);
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut run = 0;
    let mut i = next_escape(bytes, 0);
    while let Some(&b) = bytes.get(i) {
        out.extend_from_slice(&bytes[run..i]);
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]),
        }
        run = i + 1;
        i = next_escape(bytes, run);
    }
    out.extend_from_slice(&bytes[run..]);
    out.push(b'"');
}

/// Whether JSON needs byte `b` escaped.
fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// The index of the first byte at or after `from` that JSON needs escaped, or `bytes.len()`.
/// Eight bytes at a time: the zero-byte test of one word (`(x - 0x01..) & !x & 0x80..`, no
/// false negatives) applied to "below 0x20", `"` and `\`; a word that may hold one is looked
/// at byte by byte.
fn next_escape(bytes: &[u8], from: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH != 0;
    let mut i = from;
    while let Some(chunk) = bytes.get(i..i + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let v = u64::from_le_bytes(word);
        let below_space = v.wrapping_sub(0x20 * ONES) & !v & HIGH != 0;
        if (below_space
            || has_zero(v ^ (u64::from(b'"') * ONES))
            || has_zero(v ^ (u64::from(b'\\') * ONES)))
            && let Some(j) = chunk.iter().position(|&b| needs_escape(b))
        {
            return i + j;
        }
        i += 8;
    }
    bytes
        .get(i..)
        .and_then(|tail| tail.iter().position(|&b| needs_escape(b)))
        .map_or(bytes.len(), |j| i + j)
}

fn json_opt(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => json_string(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// Milliseconds with three decimals (microsecond resolution), e.g. `12.345`.
fn json_millis(out: &mut Vec<u8>, d: Duration) {
    let micros = d.as_micros();
    out.extend_from_slice(itoa::Buffer::new().format(micros / 1000).as_bytes());
    let frac = (micros % 1000) as u16;
    out.extend_from_slice(&[
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ]);
}

/// A batch this large is handed to the writer thread at once.
pub const FLUSH_BYTES: usize = 64 * 1024;
/// Longest time a line waits in the batch.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// Lines that would grow the batch beyond this (the output is stuck or too slow) are dropped.
pub const MAX_PENDING_BYTES: usize = 8 * 1024 * 1024;

/// Where access-log lines go: a handle to the batch and its writer thread (cheap to clone).
#[derive(Clone)]
pub struct AccessLog {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog").finish_non_exhaustive()
    }
}

struct Inner {
    batch: Mutex<Batch>,
    /// Wakes the writer thread: first line of an empty batch, batch full, or closing.
    wake: Condvar,
    /// Held while writing, so that batches reach the output in order whoever writes them
    /// (the writer thread or [`AccessLog::flush`]). Lock order: `output`, then `batch`.
    output: Mutex<Box<dyn Write + Send>>,
    dropped: prometheus::IntCounter,
    /// Whether the writer thread was started (see [`AccessLog::start`]).
    started: Mutex<bool>,
}

#[derive(Default)]
struct Batch {
    lines: Vec<u8>,
    /// The buffer written last, cleared, to take the next lines.
    spare: Vec<u8>,
    /// The writer waits for a first line (no interval running): the next line wakes it.
    idle: bool,
}

/// Per-thread state of the request path: the line buffer and the formatted timestamp of the
/// current second.
struct Local {
    line: Vec<u8>,
    second: i64,
    timestamp: [u8; 27],
}

impl Local {
    const fn new() -> Self {
        Self {
            line: Vec::new(),
            second: i64::MIN,
            timestamp: *b"1970-01-01T00:00:00.000000Z",
        }
    }
}

thread_local! {
    static LOCAL: RefCell<Local> = const { RefCell::new(Local::new()) };
}

/// Why the writer could not be started.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the access-log writer thread: {0}")]
pub struct AccessLogError(#[from] std::io::Error);

impl AccessLog {
    /// Lines to stdout.
    pub fn stdout(dropped: prometheus::IntCounter) -> Self {
        Self::new(Box::new(std::io::stdout()), dropped)
    }

    /// Lines to `output`, written by a thread of their own once [`Self::start`] has started
    /// it; `dropped` counts lines dropped because the output could not keep up (or failed).
    pub fn new(output: Box<dyn Write + Send>, dropped: prometheus::IntCounter) -> Self {
        Self {
            inner: Arc::new(Inner {
                batch: Mutex::new(Batch::default()),
                wake: Condvar::new(),
                output: Mutex::new(output),
                dropped,
                started: Mutex::new(false),
            }),
        }
    }

    /// Starts the writer thread, once; the gateway calls it when a config turns the access
    /// log on. Until then the process has no thread besides the runtime's: a process with
    /// one thread takes the kernel's cheaper path to a socket on every system call (no
    /// reference counting of the file), and libc's socket calls skip their
    /// thread-cancellation bookkeeping.
    pub fn start(&self) -> Result<(), AccessLogError> {
        let mut started = self
            .inner
            .started
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !*started {
            let weak = Arc::downgrade(&self.inner);
            std::thread::Builder::new()
                .name("access-log".into())
                .spawn(move || writer(&weak))?;
            *started = true;
        }
        Ok(())
    }

    /// Formats `line` and adds it to the batch (never waits for the output). Lines written
    /// before [`Self::start`] wait in the batch (up to its limit) for the writer or a
    /// [`Self::flush`].
    pub fn write(&self, line: &AccessLine<'_>) {
        LOCAL.with_borrow_mut(|local| {
            let now = SystemTime::now();
            local.set_time(now);
            local.line.clear();
            let timestamp = std::str::from_utf8(&local.timestamp).unwrap_or("-");
            line.encode(timestamp, &mut local.line);
            local.line.push(b'\n');
            self.inner.append(&local.line);
            // Keep the per-thread buffer from holding on to an unusually long line.
            if local.line.capacity() > 16 * 1024 {
                local.line = Vec::new();
            }
        });
    }

    /// Writes out everything logged so far and flushes the output (shutdown, tests).
    pub fn flush(&self) {
        self.inner.write_out(true);
    }
}

impl Local {
    /// Sets `timestamp` to `now` as RFC 3339 UTC with microseconds; the date and time of day
    /// are computed once per second.
    fn set_time(&mut self, now: SystemTime) {
        let (second, micros) = match now.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(d) => (
                i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                d.subsec_micros(),
            ),
            Err(_) => (0, 0),
        };
        if second != self.second
            && let Ok(t) = time::OffsetDateTime::from_unix_timestamp(second)
        {
            self.second = second;
            let mut head = &mut self.timestamp[..19];
            // Fits: a four-digit year (from_unix_timestamp limits it to ±9999).
            if write!(
                head,
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            )
            .is_err()
            {
                self.timestamp[..19].copy_from_slice(b"1970-01-01T00:00:00");
            }
        }
        let mut m = micros;
        for d in self.timestamp[20..26].iter_mut().rev() {
            *d = b'0' + (m % 10) as u8;
            m /= 10;
        }
    }
}

impl Inner {
    fn lock_batch(&self) -> MutexGuard<'_, Batch> {
        self.batch.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn append(&self, line: &[u8]) {
        let mut batch = self.lock_batch();
        let before = batch.lines.len();
        if before + line.len() > MAX_PENDING_BYTES {
            drop(batch);
            self.dropped.inc();
            return;
        }
        batch.lines.extend_from_slice(line);
        let after = batch.lines.len();
        let first = before == 0 && batch.idle;
        drop(batch);
        // Only two events need the writer: a first line while it is idle (it starts an
        // interval), or a full batch. Other appends wake nobody (no system call): a busy
        // writer waits out its interval, which bounds how long a line waits.
        if first || (before < FLUSH_BYTES && after >= FLUSH_BYTES) {
            self.wake.notify_one();
        }
    }

    /// Takes the batch and writes it, holding the output lock throughout so batches keep
    /// their order. `flush` also flushes the output.
    fn write_out(&self, flush: bool) {
        let mut output = self.output.lock().unwrap_or_else(PoisonError::into_inner);
        let mut lines = {
            let mut batch = self.lock_batch();
            let spare = std::mem::take(&mut batch.spare);
            std::mem::replace(&mut batch.lines, spare)
        };
        if !lines.is_empty()
            && let Err(e) = output.write_all(&lines)
        {
            // Counted only on failure: a pass over every batch would cost more than the write.
            let count = lines.iter().filter(|b| **b == b'\n').count();
            self.dropped.inc_by(count as u64);
            tracing::warn!(error = %e, lines = count, "cannot write the access log");
        }
        if (flush || !lines.is_empty())
            && let Err(e) = output.flush()
        {
            tracing::warn!(error = %e, "cannot flush the access log");
        }
        // The two buffers take turns, so the steady state allocates nothing; one grown by a
        // burst is let go.
        lines.clear();
        if lines.capacity() <= 4 * FLUSH_BYTES {
            self.lock_batch().spare = lines;
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.write_out(true);
    }
}

/// The writer thread. Idle, it waits for a first line; then it gives the batch one
/// interval to fill (a full batch cuts it short) and writes it; after a write it goes
/// straight into the next interval, and back to idle only after an interval with no line.
/// Under load that is one wake-up per full batch. Exits when the last [`AccessLog`] is gone
/// (its last batch is written by `Inner`'s drop).
fn writer(inner: &Weak<Inner>) {
    let mut busy = false;
    loop {
        let Some(log) = inner.upgrade() else { return };
        {
            let mut batch = log.lock_batch();
            if batch.lines.is_empty() && !busy {
                // The timeout only bounds how long this thread outlives the last handle
                // (dropping it wakes nobody).
                batch.idle = true;
                let (b, timeout) = log
                    .wake
                    .wait_timeout(batch, Duration::from_secs(1))
                    .unwrap_or_else(PoisonError::into_inner);
                batch = b;
                batch.idle = false;
                if timeout.timed_out() && Arc::strong_count(&log) == 1 {
                    return;
                }
                if batch.lines.is_empty() {
                    continue;
                }
            }
            let deadline = Instant::now() + FLUSH_INTERVAL;
            while batch.lines.len() < FLUSH_BYTES {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                batch = log
                    .wake
                    .wait_timeout(batch, left)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            busy = !batch.lines.is_empty();
        }
        if busy {
            log.write_out(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An output the test can read.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn counter() -> prometheus::IntCounter {
        prometheus::IntCounter::new("dropped", "dropped").unwrap()
    }

    fn line<'a>(path: &'a str, host: Option<&'a str>, request_id: &'a str) -> AccessLine<'a> {
        AccessLine {
            request_id,
            trace_id: None,
            listener: "web",
            client_addr: "127.0.0.1:4000",
            method: "GET",
            host,
            path,
            protocol: "HTTP/1.1",
            status: 200,
            route: Some("r"),
            upstream: None,
            member: None,
            attempts: 0,
            bytes_sent: 12,
            complete: true,
            duration: Duration::from_micros(250),
            ttfb: Some(Duration::from_micros(1_125_007)),
            error: None,
            error_origin: None,
        }
    }

    #[test]
    fn hostile_fields_give_one_valid_json_line_each() {
        let out = Shared::default();
        let log = AccessLog::new(Box::new(out.clone()), counter());
        let path = "/a\"b\\c\nd\re\t\u{1}\u{7f}\u{2028}é";
        // Header bytes that are not UTF-8 reach the line through a lossy conversion.
        let host = String::from_utf8_lossy(b"h\xffst\"\\").into_owned();
        let id = "x\"}{\\";
        log.write(&line(path, Some(&host), id));
        log.write(&line("/plain", None, "id2"));
        log.flush();
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.split_terminator('\n').collect();
        assert_eq!(lines.len(), 2, "{text}");
        let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(v["path"], path);
        assert_eq!(v["host"], "h\u{fffd}st\"\\");
        assert_eq!(v["request_id"], id);
        assert_eq!(v["target"], "access_log");
        assert_eq!(v["status"], 200);
        assert_eq!(v["duration_ms"], 0.25);
        assert_eq!(v["ttfb_ms"], 1125.007);
        assert_eq!(v["complete"], true);
        assert_eq!(v["trace_id"], serde_json::Value::Null);
        assert_eq!(v["attempts"], 0);
        assert_eq!(v["bytes_sent"], 12);
        assert_eq!(v["client_addr"], "127.0.0.1:4000");
        let ts = v["timestamp"].as_str().unwrap();
        assert_eq!(ts.len(), 27, "{ts}");
        assert!(ts.ends_with('Z') && ts.as_bytes()[10] == b'T', "{ts}");
        let v: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(v["host"], serde_json::Value::Null);
        assert_eq!(v["path"], "/plain");
    }

    proptest::proptest! {
        #[test]
        fn any_string_round_trips_through_json_string(s in "\\PC*|[\\x00-\\x7f]{0,40}|.{0,40}") {
            let mut out = Vec::new();
            json_string(&mut out, &s);
            let text = String::from_utf8(out).unwrap();
            proptest::prop_assert!(!text.contains('\n'));
            let back: String = serde_json::from_str(&text).unwrap();
            proptest::prop_assert_eq!(back, s);
        }
    }

    /// Each byte that needs escaping, at every position of strings around the word size,
    /// among ASCII and multi-byte characters: the escaped string parses back to itself.
    #[test]
    fn escapes_are_found_at_every_position_of_a_word() {
        for special in ['"', '\\', '\n', '\u{1}', '\u{1f}', ' ', '\u{7f}', 'é'] {
            for filler in ['a', 'ü', '~'] {
                for len in 0..20 {
                    for at in 0..=len {
                        let mut s: String = std::iter::repeat_n(filler, len).collect();
                        let at = s.char_indices().nth(at).map_or(s.len(), |(i, _)| i);
                        s.insert(at, special);
                        let mut out = Vec::new();
                        json_string(&mut out, &s);
                        let back: String = serde_json::from_slice(&out).unwrap();
                        assert_eq!(back, s);
                        let escaped = matches!(special, '"' | '\\' | '\n' | '\u{1}' | '\u{1f}');
                        assert_eq!(out.len() == s.len() + 2, !escaped, "{s:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn every_line_is_the_documented_object() {
        let mut out = Vec::new();
        let mut l = line("/p", Some("h"), "id");
        l.trace_id = Some("4bf92f3577b34da6a3ce929d0e0e4736");
        l.upstream = Some("u");
        l.member = Some("10.0.0.1:80");
        l.attempts = 2;
        l.complete = false;
        l.error = Some("upstream `u`: \"bad\"");
        l.error_origin = Some("upstream");
        l.encode("2023-11-14T22:13:20.123456Z", &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut documented = [
            "timestamp",
            "target",
            "request_id",
            "trace_id",
            "listener",
            "client_addr",
            "method",
            "host",
            "path",
            "protocol",
            "status",
            "route",
            "upstream",
            "member",
            "attempts",
            "bytes_sent",
            "complete",
            "duration_ms",
            "ttfb_ms",
            "error",
            "error_origin",
        ];
        keys.sort_unstable();
        documented.sort_unstable();
        assert_eq!(keys, documented);
        assert_eq!(v["error"], "upstream `u`: \"bad\"");
        assert_eq!(v["complete"], false);
        assert_eq!(v["attempts"], 2);
        assert_eq!(v["duration_ms"], 0.25);
        let mut ms = Vec::new();
        json_millis(&mut ms, Duration::from_micros(5));
        assert_eq!(ms, b"0.005");
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds() {
        let mut local = Local::new();
        let t = SystemTime::UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
        local.set_time(t);
        assert_eq!(&local.timestamp, b"2023-11-14T22:13:20.123456Z");
        // Same second: only the fraction changes.
        local.set_time(t + Duration::from_micros(500_000));
        assert_eq!(&local.timestamp, b"2023-11-14T22:13:20.623456Z");
        local.set_time(SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400));
        assert_eq!(&local.timestamp, b"2000-02-29T00:00:00.000000Z");
    }

    #[test]
    fn lines_are_written_by_the_timer_without_a_flush() {
        let out = Shared::default();
        let log = AccessLog::new(Box::new(out.clone()), counter());
        // A line written before the writer starts waits for it.
        log.write(&line("/timer", None, "id"));
        std::thread::sleep(FLUSH_INTERVAL * 2);
        assert!(out.0.lock().unwrap().is_empty(), "written with no writer");
        log.start().unwrap();
        log.start().unwrap();
        let written = |path: &str| {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
                if text.contains(&format!("\"{path}\"")) {
                    assert!(text.ends_with("\n"), "{text}");
                    return;
                }
                assert!(Instant::now() < deadline, "{path} never written");
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        written("/timer");
        // Right after a write the writer is in its next interval (no wake-up for a first
        // line), ...
        log.write(&line("/busy", None, "id"));
        written("/busy");
        // ... and after an interval with no line it is idle again, woken by the next one.
        std::thread::sleep(FLUSH_INTERVAL * 4);
        log.write(&line("/idle", None, "id"));
        written("/idle");
    }

    #[test]
    fn a_stuck_output_drops_and_counts_lines_instead_of_blocking() {
        /// An output that blocks until released.
        struct Stuck(Arc<(Mutex<bool>, Condvar)>);
        impl Write for Stuck {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                let (m, c) = &*self.0;
                let mut released = m.lock().unwrap();
                while !*released {
                    released = c.wait(released).unwrap();
                }
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let dropped = counter();
        let log = AccessLog::new(Box::new(Stuck(Arc::clone(&gate))), dropped.clone());
        log.start().unwrap();
        let path = "/".repeat(1000);
        // More than the batch limit: the writer is stuck on its first batch at most.
        let lines = 3 * MAX_PENDING_BYTES / 1000;
        for _ in 0..lines {
            log.write(&line(&path, None, "id"));
        }
        assert!(dropped.get() > 0);
        assert!(dropped.get() < lines as u64);
        let (m, c) = &*gate;
        *m.lock().unwrap() = true;
        c.notify_all();
        log.flush();
    }
}
