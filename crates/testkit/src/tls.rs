//! Certificates for tests of mutual TLS: a CA and the node certificates it
//! signs, made by the same code as `patina tls` ([`CertAuthority`]) and
//! written as PEM files.

use std::path::{Path, PathBuf};

use patina_transport::{CertAuthority, NodeCertRequest, TlsFiles};
use patina_wire::ClusterName;

/// A certificate authority that signs node certificates.
pub struct Ca(CertAuthority);

impl Ca {
    pub fn new(name: &str) -> Ca {
        Ca(CertAuthority::generate(name, 30).expect("test CA"))
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> &str {
        self.0.cert_pem()
    }

    pub fn authority(&self) -> &CertAuthority {
        &self.0
    }
}

/// Writes, into `dir`, a certificate for node `name` that may join
/// `clusters`, signed by `ca`, its key, and `trust`'s certificate as the CA
/// file; returns the TLS config.
pub fn node_tls(dir: &Path, name: &str, clusters: &[&str], ca: &Ca, trust: &Ca) -> TlsFiles {
    let cert =
        ca.0.issue(&NodeCertRequest {
            node: name.to_string(),
            clusters: clusters
                .iter()
                .map(|c| ClusterName::new(*c).expect("valid cluster name"))
                .collect(),
            actor: None,
            days: 30,
        })
        .expect("sign node cert");
    let path = |suffix: &str| -> PathBuf { dir.join(format!("{name}.{suffix}")) };
    std::fs::write(path("pem"), cert.cert_pem).expect("write cert");
    std::fs::write(path("key"), cert.key_pem).expect("write key");
    std::fs::write(path("ca.pem"), trust.pem()).expect("write ca");
    TlsFiles {
        cert_file: path("pem"),
        key_file: path("key"),
        ca_file: Some(path("ca.pem")),
    }
}
