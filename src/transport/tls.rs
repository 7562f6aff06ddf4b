//! Which certificates the agent HTTP client trusts for `https://` agents,
//! health URLs and upstreams: the webpki root set (Mozilla's CA list, built
//! in, so it does not depend on the host's certificate store), plus the CAs
//! of an optional PEM file, for agents behind a private CA. TLS is rustls
//! with the `ring` provider; no OpenSSL is involved.
//!
//! There is one trust per process, like the egress address policy:
//! `switchboard serve` installs the configured one (`[tls] ca_file`,
//! `--ca-file`) before it builds the dispatcher, and library users may call
//! [`TlsTrust::install`]. A dispatcher's client reads the trust in force when
//! the dispatcher is built.

use crate::error::{Error, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, RwLock};

/// The certificates trusted for `https://` agents: the built-in webpki roots
/// and any extra CAs.
#[derive(Clone, Debug, Default)]
pub struct TlsTrust {
    extra: Vec<CertificateDer<'static>>,
    sources: Vec<PathBuf>,
}

static CURRENT: LazyLock<RwLock<Arc<TlsTrust>>> =
    LazyLock::new(|| RwLock::new(Arc::new(TlsTrust::default())));

impl TlsTrust {
    /// The built-in webpki roots only.
    pub fn new() -> Self {
        TlsTrust::default()
    }

    /// Also trusts every certificate in the PEM file at `path` (one or more
    /// `-----BEGIN CERTIFICATE-----` blocks).
    pub fn with_ca_file(mut self, path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read(path).map_err(|e| {
            Error::invalid(format!(
                "tls.ca_file {}: cannot read it ({e}); give the path of a PEM file of CA certificates",
                path.display()
            ))
        })?;
        let certs = CertificateDer::pem_slice_iter(&text)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| {
                Error::invalid(format!(
                    "tls.ca_file {}: not a PEM file of certificates ({e})",
                    path.display()
                ))
            })?;
        if certs.is_empty() {
            return Err(Error::invalid(format!(
                "tls.ca_file {}: holds no `-----BEGIN CERTIFICATE-----` block",
                path.display()
            )));
        }
        // Refuse a certificate rustls would not accept as a root now, not
        // at the first call.
        let mut store = rustls::RootCertStore::empty();
        for cert in &certs {
            store.add(cert.clone()).map_err(|e| {
                Error::invalid(format!(
                    "tls.ca_file {}: a certificate cannot be used as a CA ({e})",
                    path.display()
                ))
            })?;
        }
        self.extra.extend(certs);
        self.sources.push(path.to_path_buf());
        Ok(self)
    }

    /// How many extra CA certificates are trusted besides the built-in roots.
    pub fn extra_certificates(&self) -> usize {
        self.extra.len()
    }

    /// Makes this the trust of every dispatcher built from now on.
    pub fn install(self) {
        *CURRENT.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(self);
    }

    /// The trust in force.
    pub fn current() -> Arc<TlsTrust> {
        CURRENT.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Makes rustls's `ring` provider the process default, unless one is
    /// installed already. Switchboard calls it before it builds a client or
    /// a server configuration; a program that builds its own
    /// `reqwest::Client` in the same process (this build of reqwest has no
    /// provider of its own) calls it first.
    pub fn install_crypto_provider() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // An error means another provider is installed: it is kept.
            let _ = rustls::crypto::ring::default_provider().install_default();
        });
    }

    /// A rustls client configuration trusting these roots (ring provider,
    /// TLS 1.2 and 1.3, ALPN `http/1.1`).
    pub(crate) fn client_config(&self) -> Result<rustls::ClientConfig> {
        Self::install_crypto_provider();
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for cert in &self.extra {
            roots
                .add(cert.clone())
                .map_err(|e| Error::invalid(format!("tls.ca_file: unusable CA ({e})")))?;
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::internal("cannot configure TLS", e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_must_hold_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let err = TlsTrust::new().with_ca_file(&missing).unwrap_err();
        assert!(err.to_string().contains("tls.ca_file"), "{err}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = TlsTrust::new().with_ca_file(&empty).unwrap_err();
        assert!(
            err.to_string().contains("no `-----BEGIN CERTIFICATE"),
            "{err}"
        );
        assert!(TlsTrust::new().client_config().is_ok());
    }
}
