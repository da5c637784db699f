//! Request ids and W3C trace context.
//!
//! `x-request-id` is kept when the client sent a sane one (1-128 visible ASCII characters),
//! else a random 128-bit hex id is generated. `traceparent` is propagated with a fresh
//! parent id (this hop's span) when valid, else a new trace is started, sampled flag kept.

use bytes::Bytes;
use http::{HeaderName, HeaderValue};

use crate::entropy;

/// Header carrying the request id (a parsed name, so that lookups do not parse it again).
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// W3C trace context header.
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// Returns the incoming id if acceptable, else a new one.
pub fn request_id(incoming: Option<&HeaderValue>) -> HeaderValue {
    if let Some(v) = incoming {
        let b = v.as_bytes();
        if !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic()) {
            return v.clone();
        }
    }
    let mut id = [0u8; 32];
    entropy::hex_into(&mut id);
    shared_value(id)
}

/// `buf` as a header value owned by a reference-counted buffer from the start: request ids
/// and `traceparent`s are cloned (upstream, response, access log), and a clone of a copied
/// slice would allocate a second time. `buf` holds visible ASCII (hex digits and dashes).
fn shared_value<const N: usize>(buf: [u8; N]) -> HeaderValue {
    HeaderValue::from_maybe_shared(Bytes::from_owner(buf))
        .unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// The `traceparent` to send upstream: the client's trace and flags with a fresh parent id
/// (this hop), or a new sampled trace when the client sent none or an invalid one. (The
/// tests hold it equal to a plain parse-and-format reference.)
pub fn child_header(incoming: Option<&HeaderValue>) -> HeaderValue {
    // 00-<32 hex trace>-<16 hex parent>-<2 hex flags>
    let mut buf = *b"00-00000000000000000000000000000000-0000000000000000-01";
    match incoming.and_then(|v| v.to_str().ok()).and_then(fields) {
        Some((trace, _, flags)) => {
            buf[3..35].copy_from_slice(trace.as_bytes());
            // Two lower-case hex digits, as `{:02x}` of their value would write them.
            buf[53..55].copy_from_slice(flags.as_bytes());
        }
        None => entropy::hex_into(&mut buf[3..35]),
    }
    entropy::hex_into(&mut buf[36..52]);
    shared_value(buf)
}

/// The trace id of a valid `traceparent` (see [`fields`]), borrowed from it.
pub fn trace_id(v: &str) -> Option<&str> {
    fields(v).map(|(trace, _, _)| trace)
}

/// The trace id, parent id and flags of a valid `traceparent` (`00-<32 hex>-<16 hex>-<2
/// hex>`, lower-case; all-zero ids are invalid), borrowed.
fn fields(v: &str) -> Option<(&str, &str, &str)> {
    let mut parts = v.trim().split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| {
        s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    if version == "ff" || !hex(version, 2) || !hex(trace, 32) || !hex(parent, 16) || !hex(flags, 2)
    {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    if trace.bytes().all(|b| b == b'0') || parent.bytes().all(|b| b == b'0') {
        return None;
    }
    Some((trace, parent, flags))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A parsed `traceparent` (version 00): the reference `child_header` is held to.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct TraceParent {
        pub trace_id: String,
        pub parent_id: String,
        pub flags: u8,
    }

    impl TraceParent {
        /// Parses `00-<32 hex>-<16 hex>-<2 hex>`; all-zero ids are invalid.
        pub fn parse(v: &str) -> Option<Self> {
            let (trace, parent, flags) = fields(v)?;
            Some(Self {
                trace_id: trace.to_string(),
                parent_id: parent.to_string(),
                flags: u8::from_str_radix(flags, 16).ok()?,
            })
        }

        /// The context to send upstream: same trace, this hop as parent.
        pub fn child_of(incoming: Option<&HeaderValue>) -> Self {
            let parsed = incoming.and_then(|v| v.to_str().ok()).and_then(Self::parse);
            match parsed {
                Some(p) => Self {
                    trace_id: p.trace_id,
                    parent_id: entropy::hex(8),
                    flags: p.flags,
                },
                None => Self {
                    trace_id: entropy::hex(16),
                    parent_id: entropy::hex(8),
                    flags: 1,
                },
            }
        }

        /// Header form.
        pub fn to_header(&self) -> String {
            format!("00-{}-{}-{:02x}", self.trace_id, self.parent_id, self.flags)
        }
    }

    #[test]
    fn keeps_valid_request_ids_and_replaces_bad_ones() {
        let ok = HeaderValue::from_static("abc-123");
        assert_eq!(request_id(Some(&ok)), ok);
        let bad = HeaderValue::from_static("has space");
        assert_eq!(request_id(Some(&bad)).len(), 32);
        let fresh = request_id(None);
        assert_eq!(fresh.len(), 32);
        assert!(
            fresh
                .as_bytes()
                .iter()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c)),
            "not lower-case hex: {fresh:?}"
        );
        // A clone (the id goes upstream and into the response) is the same value.
        assert_eq!(fresh.clone(), fresh);
        assert_ne!(request_id(None), fresh);
    }

    #[test]
    fn child_header_matches_child_of() {
        let incoming =
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
        let h = child_header(Some(&incoming));
        let p = TraceParent::parse(h.to_str().unwrap()).unwrap();
        assert_eq!(p.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(p.parent_id, "00f067aa0ba902b7");
        assert_eq!(p.flags, 0);
        let fresh = TraceParent::parse(child_header(None).to_str().unwrap()).unwrap();
        assert_eq!(fresh.flags, 1);
        assert_ne!(fresh.trace_id, p.trace_id);
        assert_eq!(request_id(None).len(), 32);
    }

    #[test]
    fn traceparent_is_propagated_with_a_new_parent() {
        let incoming =
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let child = TraceParent::child_of(Some(&incoming));
        assert_eq!(child.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(child.parent_id, "00f067aa0ba902b7");
        assert!(TraceParent::parse(&child.to_header()).is_some());
        let fresh = TraceParent::child_of(Some(&HeaderValue::from_static("garbage")));
        assert_eq!(fresh.trace_id.len(), 32);
        assert!(
            TraceParent::parse("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none()
        );
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC{0,80}") {
            drop(TraceParent::parse(&s));
        }
    }
}
