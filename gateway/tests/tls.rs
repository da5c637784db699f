//! End-to-end: TLS termination with SNI certificate choice, ALPN h2, TLS versions, mTLS.

// Certificate and client helpers below are test code outside #[test] functions.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

struct Pki {
    ca_der: CertificateDer<'static>,
    client_ca_der: CertificateDer<'static>,
    a_der: CertificateDer<'static>,
    b_der: CertificateDer<'static>,
    client_chain: Vec<CertificateDer<'static>>,
    client_key: Vec<u8>,
}

fn new_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// Writes certificates into `dir` and returns what clients need.
fn make_pki(dir: &TempDir) -> Pki {
    let ca = new_ca("test ca");
    let leaf = |names: Vec<String>, file: &str| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        dir.write(&format!("{file}.pem"), &cert.pem());
        dir.write(&format!("{file}.key"), &key.serialize_pem());
        cert.der().clone()
    };
    let a_der = leaf(vec!["a.example.com".into()], "a");
    let b_der = leaf(vec!["*.b.example.com".into()], "b");
    let client_ca = new_ca("client ca");
    dir.write("client-ca.pem", &client_ca.pem());
    let client_key = KeyPair::generate().unwrap();
    let client_cert = CertificateParams::new(vec!["client".to_string()])
        .unwrap()
        .signed_by(&client_key, &client_ca)
        .unwrap();
    Pki {
        ca_der: ca.der().clone(),
        client_ca_der: client_ca.der().clone(),
        a_der,
        b_der,
        client_chain: vec![client_cert.der().clone()],
        client_key: client_key.serialize_der(),
    }
}

fn config(up: &TestUpstream, mtls: bool) -> String {
    let client_ca = if mtls {
        "client_ca_file = \"client-ca.pem\""
    } else {
        ""
    };
    format!(
        r#"
[listeners.secure]
listen = "127.0.0.1:0"
[listeners.secure.tls]
{client_ca}
certificates = [
  {{ cert_file = "a.pem", key_file = "a.key", server_names = ["a.example.com"] }},
  {{ cert_file = "b.pem", key_file = "b.key", server_names = ["*.b.example.com"] }},
]

[upstreams.api]
{members}

[[routes]]
upstream = "api"
"#,
        members = members(&[up])
    )
}

struct Answer {
    status: StatusCode,
    version: Version,
    body: String,
    peer_cert: CertificateDer<'static>,
    alpn: Option<Vec<u8>>,
}

async fn request(
    addr: std::net::SocketAddr,
    sni: &str,
    pki: &Pki,
    client_auth: bool,
    alpn: &[&[u8]],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<Answer, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_der.clone()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(roots);
    let mut cfg = if client_auth {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.client_key.clone()));
        builder
            .with_client_auth_cert(pki.client_chain.clone(), key)
            .unwrap()
    } else {
        builder.with_no_client_auth()
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from(sni.to_string()).unwrap(), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (_, conn) = tls.get_ref();
    let peer_cert = conn.peer_certificates().unwrap()[0].clone();
    let negotiated = conn.alpn_protocol().map(<[u8]>::to_vec);
    let io = TokioIo::new(tls);
    let req = Request::get(format!("https://{sni}/hello"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = if negotiated.as_deref() == Some(b"h2") {
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        send.send_request(req).await.map_err(|e| e.to_string())?
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let mut req = req;
        req.headers_mut().insert("host", sni.parse().unwrap());
        *req.uri_mut() = "/hello".parse().unwrap();
        send.send_request(req).await.map_err(|e| e.to_string())?
    };
    let status = res.status();
    let version = res.version();
    let body = res
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(Answer {
        status,
        version,
        body: String::from_utf8_lossy(&body).into_owned(),
        peer_cert,
        alpn: negotiated,
    })
}

const BOTH: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

async fn start(mtls: bool) -> (TestUpstream, TestGateway, Pki) {
    let up = TestUpstream::start("a", false).await;
    let dir = TempDir::new();
    let pki = make_pki(&dir);
    let path = dir.write("gateway.toml", &config(&up, mtls));
    (up, TestGateway::start_file(dir, path).await, pki)
}

#[tokio::test]
async fn sni_picks_the_certificate() {
    let (up, gw, pki) = start(false).await;
    let addr = gw.addr("secure");
    let a = request(addr, "a.example.com", &pki, false, &[b"http/1.1"], BOTH)
        .await
        .unwrap();
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.peer_cert, pki.a_der);
    assert_eq!(a.body, "a /hello 0");
    let b = request(addr, "api.b.example.com", &pki, false, &[b"http/1.1"], BOTH)
        .await
        .unwrap();
    assert_eq!(b.peer_cert, pki.b_der);
    // Unknown names get the first certificate (and fail verification for that name).
    assert!(
        request(addr, "other.example.com", &pki, false, &[], BOTH)
            .await
            .is_err()
    );
    let seen = up.state.seen.lock().unwrap();
    assert!(
        seen.iter()
            .all(|(_, h, _)| h["x-forwarded-proto"] == "https")
    );
}

#[tokio::test]
async fn tls12_and_tls13_both_work() {
    let (_up, gw, pki) = start(false).await;
    let addr = gw.addr("secure");
    for v in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let r = request(addr, "a.example.com", &pki, false, &[], &[v])
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::OK);
    }
}

#[tokio::test]
async fn alpn_selects_h2() {
    let (_up, gw, pki) = start(false).await;
    let r = request(
        gw.addr("secure"),
        "a.example.com",
        &pki,
        false,
        &[b"h2", b"http/1.1"],
        BOTH,
    )
    .await
    .unwrap();
    assert_eq!(r.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(r.version, Version::HTTP_2);
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "a /hello 0"));
}

#[tokio::test]
async fn mtls_requires_a_client_certificate() {
    let (up, gw, pki) = start(true).await;
    let addr = gw.addr("secure");
    // TLS 1.3 reports a missing client certificate after the handshake, on first use.
    let without = request(addr, "a.example.com", &pki, false, &[], BOTH).await;
    assert!(
        without.is_err(),
        "request without client certificate succeeded"
    );
    assert_eq!(up.hits(), 0);
    let with = request(addr, "a.example.com", &pki, true, &[], BOTH)
        .await
        .unwrap();
    assert_eq!(with.status, StatusCode::OK);
    assert_eq!(up.hits(), 1);
    let _ = &pki.client_ca_der;
}

#[tokio::test]
async fn bad_certificate_paths_are_config_errors_with_key_paths() {
    let up = TestUpstream::start("a", false).await;
    let dir = TempDir::new();
    let path = dir.write("gateway.toml", &config(&up, true));
    let err = lb_gateway::server::check_config(&path).unwrap_err();
    let msgs = err.messages();
    for key in [
        "listeners.secure.tls.certificates[0].cert_file",
        "listeners.secure.tls.certificates[1].cert_file",
        "listeners.secure.tls.client_ca_file",
    ] {
        assert!(
            msgs.iter().any(|m| m.starts_with(key)),
            "{key} missing in {msgs:#?}"
        );
    }
}

#[tokio::test]
async fn reload_swaps_certificates() {
    let (_up, gw, pki) = start(false).await;
    let addr = gw.addr("secure");
    let before = request(addr, "a.example.com", &pki, false, &[], BOTH)
        .await
        .unwrap();
    assert_eq!(before.peer_cert, pki.a_der);
    // Serve the wildcard certificate's files for `a.example.com`'s slot: the name no longer
    // verifies, which proves the new certificate is in use.
    let text = std::fs::read_to_string(&gw.config).unwrap().replace(
        "cert_file = \"a.pem\", key_file = \"a.key\"",
        "cert_file = \"b.pem\", key_file = \"b.key\"",
    );
    gw.rewrite(&text);
    gw.gw().reload().unwrap();
    let after = request(addr, "a.example.com", &pki, false, &[], BOTH).await;
    assert!(after.is_err(), "old certificate still served");
    let b = request(addr, "x.b.example.com", &pki, false, &[], BOTH)
        .await
        .unwrap();
    assert_eq!(b.peer_cert, pki.b_der);
}

/// A client that connects and never starts the TLS handshake is dropped after
/// `header_timeout`, and counted.
#[tokio::test]
async fn a_tls_handshake_that_never_comes_is_dropped_after_header_timeout() {
    use tokio::io::AsyncReadExt;
    let up = TestUpstream::start("a", false).await;
    let dir = TempDir::new();
    let _pki = make_pki(&dir);
    let text = config(&up, false).replace(
        "listen = \"127.0.0.1:0\"\n[listeners.secure.tls]",
        "listen = \"127.0.0.1:0\"\nheader_timeout = \"300ms\"\n[listeners.secure.tls]",
    );
    assert!(text.contains("header_timeout"));
    let path = dir.write("gateway.toml", &text);
    let gw = TestGateway::start_file(dir, path).await;
    let mut s = TcpStream::connect(gw.addr("secure")).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(DEADLINE, s.read(&mut buf))
        .await
        .expect("the silent connection was never closed");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert_eq!(gw.gw().shared().metrics.timeouts.header.get(), 1);
}
