//! The TLS configuration of an HTTPS/WSS listener (the node's, the coordinator's) from a PEM
//! certificate chain and its private key. Parsing only: the callers read the files.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate: {0}")]
    Certificate(String),
    #[error("no certificate in the certificate file")]
    NoCertificate,
    #[error("private key: {0}")]
    Key(String),
    #[error("{0}")]
    Config(#[from] rustls::Error),
}

/// A server configuration (TLS 1.2 and 1.3, HTTP/1.1 over ALPN, `ring`) serving `cert_pem`
/// (the chain, leaf first) with `key_pem` (PKCS#8, PKCS#1 or SEC1).
pub fn server_config(cert_pem: &[u8], key_pem: &[u8]) -> Result<rustls::ServerConfig, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Certificate(e.to_string()))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Key(e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_certificate_and_key_make_a_config() {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let config = server_config(
            cert.cert.pem().as_bytes(),
            cert.signing_key.serialize_pem().as_bytes(),
        )
        .unwrap();
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
        // A key that is not the certificate's is refused.
        let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        assert!(server_config(
            cert.cert.pem().as_bytes(),
            other.signing_key.serialize_pem().as_bytes()
        )
        .is_err());
    }

    #[test]
    fn garbage_and_empty_files_are_refused_clearly() {
        assert!(matches!(
            server_config(b"", b""),
            Err(TlsError::NoCertificate)
        ));
        let cert = b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            server_config(cert, b""),
            Err(TlsError::Certificate(_))
        ));
    }
}
