//! Raw configuration: the TOML file exactly as written, before validation.
//!
//! Every struct rejects unknown keys so that a typo is an error instead of a silently ignored
//! setting. Nothing here is trusted: [`super::validate`] turns these into typed values and
//! reports every problem with its key path.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The root of the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub global: Option<RawGlobal>,
    pub admin: Option<RawAdmin>,
    #[serde(default)]
    pub listeners: BTreeMap<String, RawListener>,
    #[serde(default)]
    pub upstreams: BTreeMap<String, RawUpstream>,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
}

/// `[global]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGlobal {
    pub drain_timeout: Option<String>,
    pub access_log: Option<bool>,
    pub dns_refresh: Option<String>,
}

/// `[admin]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<String>,
}

/// `[listeners.NAME]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub listen: Option<String>,
    pub http2: Option<bool>,
    pub max_connections: Option<i64>,
    pub max_header_bytes: Option<i64>,
    pub max_body_bytes: Option<i64>,
    pub header_timeout: Option<String>,
    pub body_timeout: Option<String>,
    pub send_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub max_requests_per_connection: Option<i64>,
    pub max_connection_age: Option<String>,
    pub max_concurrent_streams: Option<i64>,
    pub tls: Option<RawTls>,
}

/// `[listeners.NAME.tls]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    #[serde(default)]
    pub certificates: Vec<RawCertificate>,
    pub client_ca_file: Option<String>,
}

/// `[[listeners.NAME.tls.certificates]]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    #[serde(default)]
    pub server_names: Vec<String>,
}

/// `[upstreams.NAME]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub algorithm: Option<String>,
    pub protocol: Option<String>,
    #[serde(default)]
    pub members: Vec<RawMember>,
    pub hash: Option<RawHash>,
    pub connect_timeout: Option<String>,
    pub try_timeout: Option<String>,
    pub read_timeout: Option<String>,
    pub tunnel_idle_timeout: Option<String>,
    pub timeout: Option<String>,
    pub pool_idle_timeout: Option<String>,
    pub pool_max_idle_per_member: Option<i64>,
    pub max_requests_per_member: Option<i64>,
    pub queue_timeout: Option<String>,
    pub health_check: Option<RawHealthCheck>,
    pub outlier: Option<RawOutlier>,
    pub retry: Option<RawRetry>,
    pub tls: Option<RawUpstreamTls>,
}

/// `[upstreams.NAME.tls]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTls {
    pub ca_file: Option<String>,
    pub server_name: Option<String>,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
}

/// `[[upstreams.NAME.members]]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMember {
    pub address: Option<String>,
    pub weight: Option<i64>,
    pub discover: Option<bool>,
}

/// `[upstreams.NAME.hash]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHash {
    pub source: Option<String>,
    pub name: Option<String>,
}

/// `[upstreams.NAME.health_check]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    pub kind: Option<String>,
    pub path: Option<String>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub rise: Option<i64>,
    pub fall: Option<i64>,
}

/// `[upstreams.NAME.outlier]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutlier {
    pub consecutive_failures: Option<i64>,
    pub base_ejection: Option<String>,
    pub max_ejection: Option<String>,
    pub max_ejected_percent: Option<i64>,
}

/// `[upstreams.NAME.retry]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    pub max_retries: Option<i64>,
    pub budget_percent: Option<i64>,
    pub budget_min_per_second: Option<i64>,
    pub buffer_bytes: Option<i64>,
}

/// `[[routes]]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: Option<String>,
    pub listeners: Option<Vec<String>>,
    #[serde(rename = "match")]
    pub matches: Option<RawMatch>,
    pub upstream: Option<String>,
    pub redirect: Option<RawRedirect>,
    pub respond: Option<RawRespond>,
    pub strip_prefix: Option<bool>,
    pub rewrite_prefix: Option<String>,
    pub request_headers: Option<RawHeaderOps>,
    pub response_headers: Option<RawHeaderOps>,
}

/// `[routes.match]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    #[serde(default)]
    pub hosts: Vec<String>,
    pub path_exact: Option<String>,
    pub path_prefix: Option<String>,
    pub path_pattern: Option<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub headers: Vec<RawNameValue>,
    #[serde(default)]
    pub query: Vec<RawNameValue>,
}

/// One `{ name = "...", value = "..." }` condition; no value means "present".
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNameValue {
    pub name: Option<String>,
    pub value: Option<String>,
}

/// `[routes.redirect]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedirect {
    pub location: Option<String>,
    pub status: Option<i64>,
}

/// `[routes.respond]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRespond {
    pub status: Option<i64>,
    pub body: Option<String>,
    pub content_type: Option<String>,
}

/// `[routes.request_headers]` / `[routes.response_headers]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderOps {
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}
