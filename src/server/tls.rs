//! TLS with rustls: the certificate and key from PEM files, ALPN for `h2` and `http/1.1`,
//! and client certificates (mTLS) checked against `client_ca` when it is set.
//!
//! The server config is rebuilt on reload and swapped whole; a handshake in progress keeps
//! the config it started with.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{ClientAuth, TlsConfig};

/// Builds the rustls server config from `server.tls`. Every problem is a sentence naming
/// the file.
pub fn server_config(c: &TlsConfig) -> Result<Arc<rustls::ServerConfig>, crate::build::BuildError> {
    build(c).map_err(|reason| crate::build::BuildError::new("server.tls", reason))
}

fn build(c: &TlsConfig) -> Result<Arc<rustls::ServerConfig>, String> {
    let certs = read_certs(&c.cert)?;
    let key = PrivateKeyDer::from_pem_file(&c.key)
        .map_err(|e| format!("{}: no usable private key: {e}", c.key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = match &c.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(ca)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: not a usable CA certificate: {e}", ca.display()))?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            let verifier = match c.client_auth {
                ClientAuth::Required => verifier,
                ClientAuth::Optional => verifier.allow_unauthenticated(),
            };
            let verifier = verifier
                .build()
                .map_err(|e| format!("{}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        format!(
            "{}: the key does not fit the certificate: {e}",
            c.key.display()
        )
    })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no PEM certificate in the file",
            path.display()
        ));
    }
    Ok(certs)
}
