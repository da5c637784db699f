//! The admin API client `lbctl` uses: the local Unix socket, or HTTPS with a bearer token
//! (and a CA file to trust the agent's certificate).
use std::{path::PathBuf, sync::Arc, time::Duration};

use bytes::Bytes;
use http::StatusCode;
use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject as _};

use super::http::{self as raw, Call, HttpError};

/// Where the agent is.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// The local socket.
    Unix(PathBuf),
    /// A remote agent over HTTPS.
    Https {
        /// `host:port`; `host` is also the name checked in the certificate.
        authority: String,
        token: String,
        /// PEM file with the CA that signed the agent's certificate.
        ca_file: PathBuf,
    },
}

/// A call that did not get a response.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the agent at {target}: {reason}")]
    Unreachable { target: String, reason: String },
    #[error(transparent)]
    Http(#[from] HttpError),
}

/// Sends one call to the agent.
pub async fn call(
    endpoint: &Endpoint,
    call: &Call<'_>,
    timeout: Duration,
) -> Result<(StatusCode, Bytes), ClientError> {
    let work = async {
        match endpoint {
            Endpoint::Unix(path) => {
                let target = path.display().to_string();
                let stream = tokio::net::UnixStream::connect(path).await.map_err(|e| {
                    ClientError::Unreachable {
                        target: target.clone(),
                        reason: e.to_string(),
                    }
                })?;
                Ok(raw::exchange(stream, "localhost", call, &target).await?)
            }
            Endpoint::Https {
                authority,
                token,
                ca_file,
            } => {
                let target = format!("https://{authority}");
                let unreachable = |reason: String| ClientError::Unreachable {
                    target: target.clone(),
                    reason,
                };
                let mut roots = rustls::RootCertStore::empty();
                let certs = CertificateDer::pem_file_iter(ca_file)
                    .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| unreachable(format!("{}: {e}", ca_file.display())))?;
                for c in certs {
                    roots
                        .add(c)
                        .map_err(|e| unreachable(format!("{}: {e}", ca_file.display())))?;
                }
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| unreachable(e.to_string()))?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                let host = authority
                    .rsplit_once(':')
                    .map_or(authority.as_str(), |(h, _)| h)
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned();
                let name = ServerName::try_from(host)
                    .map_err(|e| unreachable(format!("server name: {e}")))?;
                let tcp = tokio::net::TcpStream::connect(authority.as_str())
                    .await
                    .map_err(|e| unreachable(e.to_string()))?;
                let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                    .connect(name, tcp)
                    .await
                    .map_err(|e| unreachable(format!("TLS: {e}")))?;
                let mut with_token = call.clone();
                with_token.token = Some(token);
                Ok(raw::exchange(tls, authority, &with_token, &target).await?)
            }
        }
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(ClientError::Http(HttpError::Timeout {
            target: match endpoint {
                Endpoint::Unix(p) => p.display().to_string(),
                Endpoint::Https { authority, .. } => authority.clone(),
            },
            after: timeout,
        })),
    }
}
