//! Serving HTTPS: the certificate chain and private key `serve` terminates
//! TLS with (`[tls] cert_file`/`key_file`, `--tls-cert`/`--tls-key`), as a
//! rustls acceptor (ring provider, TLS 1.2 and 1.3, ALPN `http/1.1`).

use crate::config::Config;
use crate::error::{Error, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

/// The server's certificate and key, ready to accept TLS connections.
#[derive(Clone)]
pub struct ServerTls {
    pub(crate) acceptor: TlsAcceptor,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerTls")
    }
}

impl ServerTls {
    /// The certificate of `[tls] cert_file` and `key_file`, or `None` (plain
    /// HTTP) when neither is set.
    pub fn from_config(config: &Config) -> Result<Option<ServerTls>> {
        match (&config.tls.cert_file, &config.tls.key_file) {
            (Some(cert), Some(key)) => Self::from_pem_files(cert, key).map(Some),
            (None, None) => Ok(None),
            _ => Err(Error::invalid(
                "tls: give both cert_file and key_file (--tls-cert and --tls-key) to serve HTTPS, or neither",
            )),
        }
    }

    /// Reads a PEM certificate chain (the server's certificate first) and a
    /// PEM private key (PKCS#8, PKCS#1 or SEC1), and checks they match.
    pub fn from_pem_files(cert_file: &Path, key_file: &Path) -> Result<ServerTls> {
        crate::transport::TlsTrust::install_crypto_provider();
        let read = |field: &str, path: &Path| {
            std::fs::read(path).map_err(|e| {
                Error::invalid(format!("{field} {}: cannot read it ({e})", path.display()))
            })
        };
        let cert_pem = read("tls.cert_file", cert_file)?;
        let key_pem = read("tls.key_file", key_file)?;
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| {
                Error::invalid(format!(
                    "tls.cert_file {}: not a PEM certificate chain ({e})",
                    cert_file.display()
                ))
            })?;
        if chain.is_empty() {
            return Err(Error::invalid(format!(
                "tls.cert_file {}: holds no `-----BEGIN CERTIFICATE-----` block",
                cert_file.display()
            )));
        }
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            Error::invalid(format!(
                "tls.key_file {}: no PEM private key found ({e}); give the key of tls.cert_file",
                key_file.display()
            ))
        })?;
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::internal("cannot configure TLS", e))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| {
            Error::invalid(format!(
                "tls.cert_file {} and tls.key_file {} do not make a usable pair ({e})",
                cert_file.display(),
                key_file.display()
            ))
        })?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(ServerTls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }
}
