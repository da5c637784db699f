//! The one error type of the request path: where it came from and whether a retry is safe.
//!
//! Errors become responses in exactly one place, [`crate::layers::ErrorLayer`], using
//! [`ProxyError::status`].

use std::time::Duration;

use http::StatusCode;

/// Which side caused an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The client sent something invalid or too large.
    Client,
    /// An upstream failed, timed out or was unavailable.
    Upstream,
    /// A bug or a broken invariant in the gateway.
    Internal,
}

impl Origin {
    /// Lower-case name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Upstream => "upstream",
            Self::Internal => "internal",
        }
    }
}

/// An error on the request path.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("request body exceeds {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("request headers exceed {limit} bytes")]
    HeadersTooLarge { limit: usize },
    #[error("malformed request: {reason}")]
    BadRequest { reason: &'static str },
    #[error("the client sent no request body data for {timeout:?}")]
    BodyTimeout { timeout: Duration },
    #[error("reading the request body failed: {source}")]
    ClientBody {
        #[source]
        source: hyper::Error,
    },
    #[error("no route matches the request")]
    NoRoute,
    #[error("upstream `{upstream}` has no available member")]
    NoMember { upstream: String },
    #[error(
        "upstream `{upstream}`: every available member has {limit} requests in flight (max_requests_per_member)"
    )]
    Overflow { upstream: String, limit: u64 },
    #[error("upstream `{upstream}` member {member}: connect failed: {source}")]
    Connect {
        upstream: String,
        member: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("upstream `{upstream}` member {member}: request failed: {source}")]
    UpstreamRequest {
        upstream: String,
        member: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("upstream `{upstream}` member {member}: no response within {timeout:?}")]
    TryTimeout {
        upstream: String,
        member: String,
        timeout: Duration,
    },
    #[error("upstream `{upstream}`: no response within the overall timeout {timeout:?}")]
    Timeout { upstream: String, timeout: Duration },
    #[error("internal error: {0}")]
    Internal(String),
}

impl ProxyError {
    /// Which side caused the error.
    pub fn origin(&self) -> Origin {
        match self {
            Self::BodyTooLarge { .. }
            | Self::HeadersTooLarge { .. }
            | Self::BadRequest { .. }
            | Self::ClientBody { .. }
            | Self::BodyTimeout { .. }
            | Self::NoRoute => Origin::Client,
            Self::NoMember { .. }
            | Self::Overflow { .. }
            | Self::Connect { .. }
            | Self::UpstreamRequest { .. }
            | Self::TryTimeout { .. }
            | Self::Timeout { .. } => Origin::Upstream,
            Self::Internal(_) => Origin::Internal,
        }
    }

    /// Whether the request may be sent again to another member.
    ///
    /// A failed connect never reached an upstream, so any method may be retried; a request
    /// that may have reached one is retried only when its method is idempotent.
    pub fn retry_safe(&self, idempotent: bool) -> bool {
        match self {
            Self::Connect { .. } => true,
            Self::UpstreamRequest { .. } | Self::TryTimeout { .. } => idempotent,
            _ => false,
        }
    }

    /// The status the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::BadRequest { .. } | Self::ClientBody { .. } => StatusCode::BAD_REQUEST,
            Self::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::NoMember { .. } | Self::Overflow { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Connect { .. } | Self::UpstreamRequest { .. } => StatusCode::BAD_GATEWAY,
            Self::TryTimeout { .. } | Self::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_safety_depends_on_where_it_failed() {
        let t = ProxyError::TryTimeout {
            upstream: "u".into(),
            member: "m".into(),
            timeout: Duration::from_secs(1),
        };
        assert!(t.retry_safe(true));
        assert!(!t.retry_safe(false));
        assert_eq!(t.origin(), Origin::Upstream);
        assert_eq!(t.status(), StatusCode::GATEWAY_TIMEOUT);
        let b = ProxyError::BodyTooLarge { limit: 1 };
        assert!(!b.retry_safe(true));
        assert_eq!(b.origin(), Origin::Client);
        assert_eq!(b.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }
}
