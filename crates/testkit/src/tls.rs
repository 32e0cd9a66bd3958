//! Certificates for tests of mutual TLS: a CA made with rcgen, and node
//! certificates it signs, written as PEM files.

use std::path::{Path, PathBuf};

use patina_transport::TlsFiles;

/// A certificate authority that signs node certificates.
pub struct Ca {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pem: String,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = rcgen::KeyPair::generate().expect("CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("CA cert");
        Ca {
            pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }
}

/// Writes, into `dir`, a certificate for `name` signed by `ca`, its key, and
/// `trust`'s certificate as the CA file; returns the TLS config.
pub fn node_tls(dir: &Path, name: &str, ca: &Ca, trust: &Ca) -> TlsFiles {
    let key = rcgen::KeyPair::generate().expect("node key");
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).expect("params");
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params.signed_by(&key, &ca.issuer).expect("sign node cert");
    let path = |suffix: &str| -> PathBuf { dir.join(format!("{name}.{suffix}")) };
    std::fs::write(path("pem"), cert.pem()).expect("write cert");
    std::fs::write(path("key"), key.serialize_pem()).expect("write key");
    std::fs::write(path("ca.pem"), &trust.pem).expect("write ca");
    TlsFiles {
        cert_file: path("pem"),
        key_file: path("key"),
        ca_file: Some(path("ca.pem")),
    }
}
