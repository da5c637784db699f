//! End-to-end: TLS to upstreams (HTTP/1.1 and HTTP/2 by ALPN), server verification with a CA
//! file, SNI override, client certificates (mTLS to the member), and config errors.

// Certificate helpers below are test code outside #[test] functions.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::*;
use http::{StatusCode, Version};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;

fn new_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// A server config for a member: a certificate for `names` signed by `ca`, ALPN h2 and
/// http/1.1, and client certificates from `client_ca` required when given.
fn member_tls(
    ca: &CertifiedIssuer<'static, KeyPair>,
    names: &[&str],
    client_ca: Option<&CertifiedIssuer<'static, KeyPair>>,
) -> Arc<rustls::ServerConfig> {
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
        .unwrap()
        .signed_by(&key, ca)
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        Some(client_ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(client_ca.der().clone()).unwrap();
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder
        .with_single_cert(
            vec![CertificateDer::from(cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(cfg)
}

#[tokio::test]
async fn tls_upstreams_speak_http1_and_h2_and_verify_the_member() {
    let dir = TempDir::new();
    let ca = new_ca("upstream ca");
    dir.write("ca.pem", &ca.pem());
    let other_ca = new_ca("some other ca");
    dir.write("other-ca.pem", &other_ca.pem());
    // The gateway's client certificate, for the member that requires one.
    let client_ca = new_ca("gateway client ca");
    let client_key = KeyPair::generate().unwrap();
    let client_cert = CertificateParams::new(vec!["gateway".to_string()])
        .unwrap()
        .signed_by(&client_key, &client_ca)
        .unwrap();
    dir.write("gw.pem", &client_cert.pem());
    dir.write("gw.key", &client_key.serialize_pem());

    // Verified by IP address (the member address); answers HTTP/1.1.
    let h1 = TestUpstream::start_tls("h1", member_tls(&ca, &["127.0.0.1"], None)).await;
    // Verified by the configured name; HTTP/2 by ALPN; requires our client certificate.
    let h2 =
        TestUpstream::start_tls("h2", member_tls(&ca, &["api.internal"], Some(&client_ca))).await;
    let text = format!(
        r#"
[listeners.web]
listen = "127.0.0.1:0"

[upstreams.tls1]
members = [{{ address = "{h1}" }}]
[upstreams.tls1.tls]
ca_file = "ca.pem"

[upstreams.tls2]
protocol = "h2"
members = [{{ address = "{h2}" }}]
[upstreams.tls2.tls]
ca_file = "ca.pem"
server_name = "api.internal"
cert_file = "gw.pem"
key_file = "gw.key"

[upstreams.untrusted]
members = [{{ address = "{h1}" }}]
retry = {{ max_retries = 0 }}
[upstreams.untrusted.tls]
ca_file = "other-ca.pem"

[upstreams.nocert]
protocol = "h2"
members = [{{ address = "{h2}" }}]
retry = {{ max_retries = 0 }}
[upstreams.nocert.tls]
ca_file = "ca.pem"
server_name = "api.internal"

[[routes]]
upstream = "tls1"
match = {{ path_prefix = "/one" }}
[[routes]]
upstream = "tls2"
match = {{ path_prefix = "/two" }}
[[routes]]
upstream = "untrusted"
match = {{ path_prefix = "/untrusted" }}
[[routes]]
upstream = "nocert"
match = {{ path_prefix = "/nocert" }}
"#,
        h1 = h1.addr,
        h2 = h2.addr,
    );
    let path = dir.write("gateway.toml", &text);
    let gw = TestGateway::start_file(dir, path).await;
    let c = client();
    for _ in 0..3 {
        let (status, _, body) = get(&c, &gw.url("web", "/one/a")).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "h1 /one/a 0"));
        let (status, _, body) = get(&c, &gw.url("web", "/two/b")).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "h2 /two/b 0"));
    }
    assert!(
        h1.state
            .versions
            .lock()
            .unwrap()
            .iter()
            .all(|v| *v == Version::HTTP_11)
    );
    assert!(
        h2.state
            .versions
            .lock()
            .unwrap()
            .iter()
            .all(|v| *v == Version::HTTP_2)
    );
    assert_eq!((h1.hits(), h2.hits()), (3, 3));
    // Kept alive: one TLS connection per member for the three requests.
    let metrics = gw.gw().shared().metrics.render().unwrap();
    for up in ["tls1", "tls2"] {
        let line = format!("lb_gateway_upstream_connections_opened_total{{upstream=\"{up}\"}} 1");
        assert!(metrics.contains(&line), "{line} not in {metrics}");
    }
    // A member whose certificate our CA did not sign, and a member that wants a client
    // certificate we do not send: 502, and the request never reached the upstream's handler.
    let (status, _, _) = get(&c, &gw.url("web", "/untrusted")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let (status, _, _) = get(&c, &gw.url("web", "/nocert")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!((h1.hits(), h2.hits()), (3, 3));
}

#[tokio::test]
async fn upstream_tls_config_errors_name_their_keys() {
    let dir = TempDir::new();
    let path = dir.write(
        "gateway.toml",
        r#"
[listeners.web]
listen = "127.0.0.1:0"

[upstreams.a]
protocol = "h2"
members = [{ address = "127.0.0.1:1" }]

[upstreams.b]
protocol = "h2c"
members = [{ address = "127.0.0.1:1" }]
[upstreams.b.tls]
ca_file = "missing.pem"
cert_file = "x.pem"

[upstreams.c]
members = [{ address = "127.0.0.1:1" }]
[upstreams.c.tls]
ca_file = "missing.pem"

[[routes]]
upstream = "a"
"#,
    );
    let msgs = lb_gateway::server::check_config(&path)
        .unwrap_err()
        .messages();
    for key in [
        "upstreams.a.protocol: `h2` is HTTP/2 over TLS and needs `tls`",
        "upstreams.b.protocol: `h2c` is cleartext",
        "upstreams.b.tls.key_file: is required with `cert_file`",
    ] {
        assert!(
            msgs.iter().any(|m| m.starts_with(key)),
            "{key} missing in {msgs:#?}"
        );
    }
    // The CA file is read when the snapshot is built (check-config does that too).
    let path = dir.write(
        "gateway2.toml",
        "[listeners.web]\nlisten = \"127.0.0.1:0\"\n[upstreams.c]\nmembers = [{ address = \"127.0.0.1:1\" }]\n[upstreams.c.tls]\nca_file = \"missing.pem\"\n[[routes]]\nupstream = \"c\"\n",
    );
    let msgs = lb_gateway::server::check_config(&path)
        .unwrap_err()
        .messages();
    assert!(
        msgs.iter()
            .any(|m| m.starts_with("upstreams.c.tls.ca_file: cannot read")),
        "{msgs:#?}"
    );
}
