//! Issuing the certificates mutual TLS needs (`patina tls ca`,
//! `patina tls cert`, and the test CAs): a CA, and node certificates whose
//! SAN URIs name the clusters the node may join (see
//! [`identity`](crate::identity)).

use patina_wire::{ActorId, ClusterName};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SanType,
};
use time::{Duration, OffsetDateTime};

use crate::identity::{cluster_uri, ACTOR_URI_PREFIX, NODE_URI_PREFIX};

/// Certificates start to be valid this long before they are issued, so a
/// peer whose clock is a little behind does not refuse a fresh one.
const BACKDATE: Duration = Duration::hours(1);

/// Why a certificate could not be issued.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("invalid node name {0:?}: use 1 to 63 characters of a-z, 0-9, - and ., e.g. \"web1\"")]
    NodeName(String),
    #[error("a node certificate must name at least one cluster the node may join (--cluster)")]
    NoCluster,
    #[error("a validity of {0} days is out of range: give 1 to 36500")]
    Days(u32),
    #[error("the CA cannot be used: {0}; give the ca.pem and ca.key that `patina tls ca` wrote")]
    BadCa(String),
    #[error("cannot make the certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// What a node certificate is for.
#[derive(Debug, Clone)]
pub struct NodeCertRequest {
    /// The node's name (CN and `patina://node/<name>`).
    pub node: String,
    /// The clusters the node may join: a region, and `global` for a global
    /// member.
    pub clusters: Vec<ClusterName>,
    /// Pins the one actor id the node may speak as, when known.
    pub actor: Option<ActorId>,
    pub days: u32,
}

/// A certificate and its private key, PEM.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A CA that signs node certificates.
pub struct CertAuthority {
    cert_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for CertAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("CertAuthority").finish_non_exhaustive()
    }
}

fn validity(params: &mut CertificateParams, days: u32) -> Result<(), CertError> {
    if !(1..=36_500).contains(&days) {
        return Err(CertError::Days(days));
    }
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + Duration::days(i64::from(days));
    Ok(())
}

impl CertAuthority {
    /// A new CA named `name`, valid for `days`.
    pub fn generate(name: &str, days: u32) -> Result<CertAuthority, CertError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        // It signs node certificates only, never another CA.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params, days)?;
        let cert = params.self_signed(&key)?;
        Ok(CertAuthority {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA `patina tls ca` wrote: its certificate and key, PEM.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<CertAuthority, CertError> {
        let key = KeyPair::from_pem(key_pem)
            .map_err(|e| CertError::BadCa(format!("the key is not a PEM private key ({e})")))?;
        let der = rustls::pki_types::CertificateDer::from(pem_der(cert_pem).ok_or_else(|| {
            CertError::BadCa("the certificate is not a PEM CERTIFICATE".to_string())
        })?);
        let (_, parsed) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| CertError::BadCa(format!("the certificate does not parse ({e})")))?;
        if !parsed.is_ca() {
            return Err(CertError::BadCa(
                "the certificate is not a CA certificate".to_string(),
            ));
        }
        if parsed.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(CertError::BadCa(
                "the key does not belong to the certificate".to_string(),
            ));
        }
        let issuer = Issuer::from_ca_cert_der(&der, key)
            .map_err(|e| CertError::BadCa(format!("the certificate cannot sign ({e})")))?;
        Ok(CertAuthority {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
            issuer,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// A node certificate (with a new key) for `req`, signed by this CA.
    pub fn issue(&self, req: &NodeCertRequest) -> Result<IssuedCert, CertError> {
        if !valid_node_name(&req.node) {
            return Err(CertError::NodeName(req.node.clone()));
        }
        if req.clusters.is_empty() {
            return Err(CertError::NoCluster);
        }
        let mut uris = vec![format!("{NODE_URI_PREFIX}{}", req.node)];
        uris.extend(req.clusters.iter().map(|c| cluster_uri(c.as_str())));
        if let Some(actor) = req.actor {
            uris.push(format!("{ACTOR_URI_PREFIX}{actor}"));
        }
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        for uri in uris {
            params.subject_alt_names.push(SanType::URI(uri.try_into()?));
        }
        params
            .distinguished_name
            .push(DnType::CommonName, req.node.as_str());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        // Every node is both a QUIC client (dialing) and a server.
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        validity(&mut params, req.days)?;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// The DER of the first PEM CERTIFICATE block of `pem`.
fn pem_der(pem: &str) -> Option<Vec<u8>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .ok()
        .map(|c| c.to_vec())
}

/// A node name: what fits a DNS label-ish name and a URI path unescaped.
pub fn valid_node_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::CertIdentity;

    fn cluster(name: &str) -> ClusterName {
        ClusterName::new(name).unwrap()
    }

    #[test]
    fn node_certificates_name_their_clusters_and_survive_a_pem_round_trip() {
        let ca = CertAuthority::generate("test CA", 10).unwrap();
        // What `patina tls cert` does: the CA read back from its files.
        let ca = CertAuthority::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
        let actor = ActorId::random();
        let cert = ca
            .issue(&NodeCertRequest {
                node: "web1".to_string(),
                clusters: vec![cluster("ams"), cluster("global")],
                actor: Some(actor),
                days: 30,
            })
            .unwrap();
        let der = pem_der(&cert.cert_pem).unwrap();
        let id = CertIdentity::from_der(&der).unwrap();
        assert_eq!(id.node.as_deref(), Some("web1"));
        assert_eq!(id.clusters, ["ams", "global"]);
        assert_eq!(id.actor, Some(actor));
        assert!(id.admits("ams") && id.admits("global") && !id.admits("ord"));
    }

    #[test]
    fn bad_requests_and_bad_cas_are_refused_with_reasons() {
        let ca = CertAuthority::generate("test CA", 10).unwrap();
        let req = |node: &str, clusters: Vec<ClusterName>| NodeCertRequest {
            node: node.to_string(),
            clusters,
            actor: None,
            days: 30,
        };
        assert!(matches!(
            ca.issue(&req("Web 1", vec![cluster("ams")])),
            Err(CertError::NodeName(_))
        ));
        assert!(matches!(
            ca.issue(&req("web1", vec![])),
            Err(CertError::NoCluster)
        ));
        let other = CertAuthority::generate("other CA", 10).unwrap();
        let err = CertAuthority::from_pem(ca.cert_pem(), other.key_pem()).unwrap_err();
        assert!(err.to_string().contains("does not belong"), "{err}");
        let leaf = ca.issue(&req("web1", vec![cluster("ams")])).unwrap();
        let err = CertAuthority::from_pem(&leaf.cert_pem, &leaf.key_pem).unwrap_err();
        assert!(err.to_string().contains("not a CA"), "{err}");
    }
}
