//! lb-gateway: the L7 gateway that runs on every node (config reference: `gateway/CONFIG.md`).
//!
//! The request path, outermost first: [`listener`] (accept, TLS, limits, timeouts) ->
//! [`layers`] (request id -> observe: span, metrics, access log -> error-to-response) ->
//! [`proxy`] (route, then upstream: balancer, retries, timeouts). Routes, upstreams and
//! certificates live in one immutable [`snapshot::Snapshot`] behind one atomic swap
//! ([`server::Shared`]); [`admin`] serves health, metrics, connection counts and reload.

pub mod accesslog;
pub mod admin;
pub mod allocator;
pub mod body;
pub mod clock;
pub mod config;
pub mod conn;
pub mod discovery;
pub mod entropy;
pub mod error;
pub mod framing;
pub mod health;
pub mod layers;
pub mod listener;
pub mod metrics;
pub mod proxy;
pub mod request_body;
pub mod retry;
pub mod router;
pub mod server;
pub mod snapshot;
pub mod tls;
pub mod trace;
pub mod upstream;
