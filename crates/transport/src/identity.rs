//! What a node certificate says about its holder, in SAN URIs:
//! `patina://cluster/<name>` for each cluster the node may join,
//! `patina://node/<name>` for the node's name, and optionally
//! `patina://actor/<hex>` pinning the one actor id the node may speak as.
//!
//! URIs rather than DNS names: peers are dialed by IP address, so DNS names
//! are never matched against anything, and a URI cannot be mistaken for a
//! host name by other TLS tooling. The CA vouches for every URI it signs,
//! which is what makes one CA safe to share between regions: it is the
//! cluster URI, not the CA, that admits a node to a cluster.

use patina_wire::ActorId;

/// Prefix of the SAN URI naming a cluster the holder may join.
pub const CLUSTER_URI_PREFIX: &str = "patina://cluster/";
/// Prefix of the SAN URI naming the holder.
pub const NODE_URI_PREFIX: &str = "patina://node/";
/// Prefix of the SAN URI pinning the holder's actor id.
pub const ACTOR_URI_PREFIX: &str = "patina://actor/";

/// The SAN URI admitting a certificate's holder to `cluster`.
pub fn cluster_uri(cluster: &str) -> String {
    format!("{CLUSTER_URI_PREFIX}{cluster}")
}

/// What a certificate's Patina SAN URIs say. Other SANs are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertIdentity {
    /// From `patina://node/<name>`.
    pub node: Option<String>,
    /// From every `patina://cluster/<name>`, in certificate order.
    pub clusters: Vec<String>,
    /// From `patina://actor/<hex>`.
    pub actor: Option<ActorId>,
}

impl CertIdentity {
    /// Reads the SAN URIs of a DER certificate. Fails on a certificate that
    /// does not parse, or that names two nodes or two actors (a CA would
    /// not sign that on purpose; refusing keeps the binding unambiguous).
    pub fn from_der(der: &[u8]) -> Result<CertIdentity, String> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| format!("not a readable X.509 certificate: {e}"))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| format!("unreadable subjectAltName extension: {e}"))?;
        let mut id = CertIdentity::default();
        let Some(san) = san else {
            return Ok(id);
        };
        for name in &san.value.general_names {
            let x509_parser::extensions::GeneralName::URI(uri) = name else {
                continue;
            };
            if let Some(cluster) = uri.strip_prefix(CLUSTER_URI_PREFIX) {
                id.clusters.push(cluster.to_string());
            } else if let Some(node) = uri.strip_prefix(NODE_URI_PREFIX) {
                if id.node.replace(node.to_string()).is_some() {
                    return Err("the certificate names more than one node".to_string());
                }
            } else if let Some(hex) = uri.strip_prefix(ACTOR_URI_PREFIX) {
                let actor = hex
                    .parse()
                    .map_err(|_| format!("{uri:?} does not hold a 32-hex-digit actor id"))?;
                if id.actor.replace(actor).is_some() {
                    return Err("the certificate names more than one actor".to_string());
                }
            }
        }
        Ok(id)
    }

    /// Whether the holder may join `cluster`.
    pub fn admits(&self, cluster: &str) -> bool {
        self.clusters.iter().any(|c| c == cluster)
    }

    /// "node web1 (clusters ams, global)", for logs and errors.
    pub fn describe(&self) -> String {
        let node = self.node.as_deref().unwrap_or("<unnamed>");
        if self.clusters.is_empty() {
            format!("node {node} (no patina://cluster/ URI)")
        } else {
            format!("node {node} (clusters {})", self.clusters.join(", "))
        }
    }
}
