//! TLS termination: server configs built from the listener's certificates, the certificate
//! chosen by SNI (exact name, then the longest wildcard, then the first certificate), TLS 1.2
//! and 1.3 only, ALPN `h2` / `http/1.1`, optional client certificates (mTLS).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{FieldError, ListenerConfig};

/// The crypto provider used everywhere (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Picks a certificate by SNI.
#[derive(Debug)]
pub struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// (`.example.com`, key), longest suffix first.
    wildcard: Vec<(String, Arc<CertifiedKey>)>,
    default: Arc<CertifiedKey>,
}

impl SniResolver {
    /// The certificate for a server name (`None`: no SNI sent).
    pub fn pick(&self, name: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = name.map(str::to_ascii_lowercase) else {
            return Arc::clone(&self.default);
        };
        if let Some(k) = self.exact.get(&name) {
            return Arc::clone(k);
        }
        self.wildcard
            .iter()
            .find(|(suffix, _)| {
                name.len() > suffix.len()
                    && name.ends_with(suffix.as_str())
                    && !name[..name.len() - suffix.len()].contains('.')
            })
            .map_or_else(|| Arc::clone(&self.default), |(_, k)| Arc::clone(k))
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()))
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: bad PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no CERTIFICATE block found", path.display()));
    }
    Ok(certs)
}

/// Builds the TLS server config of a listener, or records errors with key paths.
pub fn server_config(
    listener: &ListenerConfig,
    errs: &mut Vec<FieldError>,
) -> Option<Arc<ServerConfig>> {
    let tls = listener.tls.as_ref()?;
    let base = format!("listeners.{}.tls", listener.name);
    let provider = provider();
    let mut push = |path: String, message: String| errs.push(FieldError { path, message });
    let mut keys = Vec::new();
    for (i, c) in tls.certificates.iter().enumerate() {
        let path = format!("{base}.certificates[{i}]");
        let certs = match read_certs(&c.cert_file) {
            Ok(c) => c,
            Err(e) => {
                push(format!("{path}.cert_file"), e);
                continue;
            }
        };
        let key = match PrivateKeyDer::from_pem_file(&c.key_file) {
            Ok(k) => k,
            Err(e) => {
                push(
                    format!("{path}.key_file"),
                    format!(
                        "cannot load a private key from {}: {e}",
                        c.key_file.display()
                    ),
                );
                continue;
            }
        };
        match CertifiedKey::from_der(certs, key, &provider) {
            Ok(k) => keys.push((Arc::new(k), c.server_names.clone())),
            Err(e) => push(
                format!("{path}.key_file"),
                format!("does not fit the certificate: {e}"),
            ),
        }
    }
    let verifier = match &tls.client_ca_file {
        None => None,
        Some(ca) => {
            let path = format!("{base}.client_ca_file");
            match read_certs(ca) {
                Err(e) => {
                    push(path, e);
                    None
                }
                Ok(cas) => {
                    let mut roots = RootCertStore::empty();
                    let (added, _ignored) = roots.add_parsable_certificates(cas);
                    if added == 0 {
                        push(path, "no usable CA certificate".to_string());
                        None
                    } else {
                        match WebPkiClientVerifier::builder_with_provider(
                            Arc::new(roots),
                            Arc::clone(&provider),
                        )
                        .build()
                        {
                            Ok(v) => Some(v),
                            Err(e) => {
                                push(path, format!("cannot build the client verifier: {e}"));
                                None
                            }
                        }
                    }
                }
            }
        }
    };
    if keys.len() != tls.certificates.len() || (tls.client_ca_file.is_some() && verifier.is_none())
    {
        return None;
    }
    let default = Arc::clone(&keys.first()?.0);
    let mut exact = HashMap::new();
    let mut wildcard = Vec::new();
    for (key, names) in &keys {
        for n in names {
            if let Some(suffix) = n.strip_prefix('*') {
                wildcard.push((suffix.to_string(), Arc::clone(key)));
            } else {
                exact.entry(n.clone()).or_insert_with(|| Arc::clone(key));
            }
        }
    }
    wildcard.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
    let resolver = Arc::new(SniResolver {
        exact,
        wildcard,
        default,
    });
    let builder = match ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
    {
        Ok(b) => b,
        Err(e) => {
            push(base, format!("cannot configure TLS: {e}"));
            return None;
        }
    };
    let mut config = match verifier {
        Some(v) => builder
            .with_client_cert_verifier(v)
            .with_cert_resolver(resolver),
        None => builder.with_no_client_auth().with_cert_resolver(resolver),
    };
    config.alpn_protocols = if listener.http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Some(Arc::new(config))
}
