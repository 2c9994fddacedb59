//! TLS to PostgreSQL, with rustls: the URL's `sslmode` read as libpq reads
//! it. `disable` (and no `sslmode` at all) connects in plain text, as
//! before TLS was supported; `prefer` and `require` encrypt without
//! checking who answers (libpq's meaning), unless a CA file is given, when
//! `require` checks the certificate as `verify-ca` does; `verify-ca` checks
//! that the certificate chains to the roots (the system's, or the CA
//! file's); `verify-full` also that it names the host.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::{Error, Result};

/// What `sslmode` asks of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SslMode {
    /// No TLS.
    Plain,
    /// TLS, whoever answers.
    Encrypt,
    /// TLS, with a certificate that chains to the roots.
    VerifyCa,
    /// TLS, with a certificate that chains to the roots and names the host.
    VerifyFull,
}

/// The `sslmode` of `url` (a URL's query or a key-value string), and the
/// URL as tokio-postgres reads it: it knows `disable`, `prefer` and
/// `require`, so the verifying modes are handed to it as `require` (TLS
/// or nothing) and checked here.
pub(super) fn sslmode(url: &str) -> Result<(String, SslMode)> {
    let Some(at) = url.find("sslmode=") else {
        return Ok((url.to_owned(), SslMode::Plain));
    };
    let start = at + "sslmode=".len();
    let end = url[start..]
        .find(['&', ' '])
        .map_or(url.len(), |i| start + i);
    let (mode, as_read) = match &url[start..end] {
        "disable" => (SslMode::Plain, "disable"),
        "allow" | "prefer" => (SslMode::Encrypt, "prefer"),
        "require" => (SslMode::Encrypt, "require"),
        "verify-ca" => (SslMode::VerifyCa, "require"),
        "verify-full" => (SslMode::VerifyFull, "require"),
        _ => {
            return Err(Error::invalid(
                "url",
                "sslmode must be disable, allow, prefer, require, verify-ca or verify-full",
            ))
        }
    };
    Ok((format!("{}{as_read}{}", &url[..start], &url[end..]), mode))
}

/// The connector for `mode`: roots from `ca_file` (PEM), else the
/// system's. With a CA file, `require` checks the chain too, as libpq does.
pub(super) fn connector(mode: SslMode, ca_file: Option<&Path>) -> Result<MakeRustlsConnect> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(Error::internal)?;
    let mode = match (mode, ca_file) {
        (SslMode::Encrypt, Some(_)) => SslMode::VerifyCa,
        (mode, _) => mode,
    };
    let config = match mode {
        SslMode::Plain | SslMode::Encrypt => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
            .with_no_client_auth(),
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let roots = Arc::new(roots(ca_file)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| Error::invalid("ca_file", format!("unusable roots: {e}")))?;
            let verifier: Arc<dyn ServerCertVerifier> = if mode == SslMode::VerifyCa {
                Arc::new(AnyName(webpki))
            } else {
                webpki
            };
            builder
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_no_client_auth()
        }
    };
    Ok(MakeRustlsConnect::new(config))
}

/// The roots certificates are checked against.
fn roots(ca_file: Option<&Path>) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let shown = path.display();
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<std::result::Result<Vec<_>, _>>())
                .map_err(|e| Error::invalid("ca_file", format!("cannot read {shown}: {e}")))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(Error::invalid(
                    "ca_file",
                    format!("{shown} holds no usable certificate"),
                ));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
        }
    }
    Ok(roots)
}

/// `verify-ca`: the chain is checked, the name is not.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `require` and `prefer`: encrypted, whoever answers (the handshake's
/// signatures are still checked).
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_is_read_as_libpq_reads_it() {
        let (url, mode) = sslmode("postgres://u@db/chat").unwrap();
        assert_eq!(
            (url.as_str(), mode),
            ("postgres://u@db/chat", SslMode::Plain)
        );
        let (url, mode) =
            sslmode("postgres://u@db/chat?sslmode=verify-full&application_name=x").unwrap();
        assert_eq!(
            url,
            "postgres://u@db/chat?sslmode=require&application_name=x"
        );
        assert_eq!(mode, SslMode::VerifyFull);
        let (url, mode) = sslmode("host=db sslmode=verify-ca user=u").unwrap();
        assert_eq!(url, "host=db sslmode=require user=u");
        assert_eq!(mode, SslMode::VerifyCa);
        assert_eq!(
            sslmode("postgres://db/c?sslmode=require").unwrap().1,
            SslMode::Encrypt
        );
        assert_eq!(
            sslmode("postgres://db/c?sslmode=disable").unwrap().1,
            SslMode::Plain
        );
        assert!(sslmode("postgres://db/c?sslmode=sometimes").is_err());
    }
}
