//! TLS for the cluster transport: which certificate a node presents and how
//! it checks its peers'.
//!
//! Three modes, chosen by `[gossip.tls]`:
//! - `cert_file` + `key_file` + `ca_file`: mutual TLS. Both sides present
//!   their certificate and require the peer's to chain to the CA *and* to
//!   name this cluster in a SAN URI (`patina://cluster/<name>`, see
//!   [`identity`](crate::identity)); a peer without a certificate, with one
//!   from another CA, or with one issued for other clusters fails the
//!   handshake (the last counted in `certs_refused` and logged). Peers are
//!   dialed by IP address (taken from membership), so no host name is
//!   checked: the CA and the cluster URIs it signs are the trust boundary.
//!   One CA can serve every region, while a certificate issued for `ams`
//!   cannot join `ord` or `global`. The node's own certificate must name its
//!   cluster too, else the transport refuses to start.
//! - `cert_file` + `key_file`, no `ca_file`: the node presents its
//!   certificate but verifies no peer (a warning is logged at start). Only
//!   the handshake signatures are checked, which proves the peer holds the
//!   key of the certificate it sent, not that anyone vouches for it.
//! - no `[gossip.tls]`: a self-signed certificate is generated at start
//!   and peers are not verified (dev clusters; a warning is logged). The
//!   agent allows this only with `gossip.insecure = true`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

use patina_wire::{ActorId, ClusterName};
use prometheus_client::metrics::counter::Counter;

use crate::error::TransportError;
use crate::identity::{cluster_uri, CertIdentity};

/// The ALPN protocol both sides must offer: a peer speaking something else
/// (another program on the port, a future incompatible Patina) fails the
/// handshake instead of exchanging frames it cannot read.
pub const ALPN: &[u8] = b"patina/1";

/// The name a client puts in its handshake. Certificates are not checked
/// against it (see the module docs); it only has to be a valid DNS name.
pub(crate) const SERVER_NAME: &str = "patina";

/// The certificate files of `[gossip.tls]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain this node presents, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key of `cert_file`.
    pub key_file: PathBuf,
    /// With it, peers must present certificates this CA signed (mutual TLS).
    pub ca_file: Option<PathBuf>,
}

pub(crate) struct TlsConfigs {
    pub server: rustls::ServerConfig,
    pub client: rustls::ClientConfig,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_file_error(path: &Path, why: impl std::fmt::Display) -> TransportError {
    TransportError::TlsFile {
        path: path.to_path_buf(),
        why: why.to_string(),
    }
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| tls_file_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_file_error(path, e))?;
    if certs.is_empty() {
        return Err(tls_file_error(path, "no PEM CERTIFICATE block found"));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TransportError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| tls_file_error(path, e))
}

fn load_roots(path: &Path) -> Result<RootCertStore, TransportError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| tls_file_error(path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}

fn tls_error(e: impl std::fmt::Display) -> TransportError {
    TransportError::Tls(e.to_string())
}

/// Who this transport is, for checking its own certificate and its peers'.
pub(crate) struct Local<'a> {
    pub cluster: &'a ClusterName,
    pub actor: ActorId,
    /// Incremented for each peer certificate refused for not naming
    /// `cluster` (a clone of `TransportStats::certs_refused`).
    pub certs_refused: Counter,
}

/// Builds both rustls configs for one transport.
pub(crate) fn configs(
    files: Option<&TlsFiles>,
    local: Local<'_>,
) -> Result<TlsConfigs, TransportError> {
    let provider = provider();
    let (certs, key) = match files {
        Some(f) => (load_certs(&f.cert_file)?, load_key(&f.key_file)?),
        None => {
            // The global cluster's section is [global_gossip.tls].
            let section = if local.cluster.as_str() == "global" {
                "global_gossip"
            } else {
                "gossip"
            };
            tracing::warn!(
                cluster = %local.cluster,
                "{section} runs INSECURE (no [{section}.tls]): using a generated self-signed \
                 certificate and NOT verifying peers; anyone who can reach the port can \
                 join and send changes. Configure cert_file, key_file and ca_file for production"
            );
            self_signed()?
        }
    };
    let roots = match files.and_then(|f| f.ca_file.as_deref()) {
        Some(ca) => Some(Arc::new(load_roots(ca)?)),
        None => {
            if files.is_some() {
                tracing::warn!(
                    "[gossip.tls] has no ca_file: presenting our certificate but NOT verifying \
                     peers; set ca_file to require peers to present certificates your CA signed"
                );
            }
            None
        }
    };
    // Under mutual TLS peers check that our certificate names the cluster:
    // a node whose own does not would be refused by every peer, so it is
    // better refused here, once, with the fix.
    if let (Some(f), Some(_)) = (files, &roots) {
        check_own_cert(&f.cert_file, &certs[0], &local)?;
    }
    let cluster = ClusterCheck {
        cluster: local.cluster.as_str().to_string(),
        refused: local.certs_refused,
    };

    let server_builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?;
    let server_builder = match &roots {
        Some(roots) => {
            let chain = rustls::server::WebPkiClientVerifier::builder_with_provider(
                roots.clone(),
                provider.clone(),
            )
            .build()
            .map_err(tls_error)?;
            server_builder.with_client_cert_verifier(Arc::new(ClusterClientVerifier {
                chain,
                cluster: cluster.clone(),
            }))
        }
        None => server_builder.with_no_client_auth(),
    };
    let mut server = server_builder
        .with_single_cert(certs.clone(), key.clone_key())
        .map_err(|e| TransportError::Tls(format!("certificate and key do not match: {e}")))?;
    server.alpn_protocols = vec![ALPN.to_vec()];

    let verifier: Arc<dyn ServerCertVerifier> = Arc::new(PeerVerifier {
        roots,
        provider: provider.clone(),
        cluster,
    });
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(certs, key)
        .map_err(|e| TransportError::Tls(format!("certificate and key do not match: {e}")))?;
    client.alpn_protocols = vec![ALPN.to_vec()];
    Ok(TlsConfigs { server, client })
}

type CertAndKey = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

fn self_signed() -> Result<CertAndKey, TransportError> {
    let generated = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string()])
        .map_err(|e| TransportError::Tls(format!("cannot generate a self-signed cert: {e}")))?;
    let key = PrivateKeyDer::try_from(generated.signing_key.serialize_der())
        .map_err(|e| TransportError::Tls(format!("generated key unusable: {e}")))?;
    Ok((vec![generated.cert.der().clone()], key))
}

fn check_own_cert(
    path: &Path,
    leaf: &CertificateDer<'_>,
    local: &Local<'_>,
) -> Result<(), TransportError> {
    let cluster = local.cluster.as_str();
    let id = CertIdentity::from_der(leaf).map_err(|why| tls_file_error(path, why))?;
    if !id.admits(cluster) {
        return Err(tls_file_error(
            path,
            format!(
                "this certificate is for {}, not for cluster {cluster:?} (it lacks the SAN URI \
                 {}); peers would refuse it. Issue one with `patina tls cert --cluster {cluster} \
                 --node NAME`",
                id.describe(),
                cluster_uri(cluster)
            ),
        ));
    }
    if let Some(pinned) = id.actor.filter(|a| *a != local.actor) {
        return Err(tls_file_error(
            path,
            format!(
                "this certificate pins actor {pinned}, but this node's actor id is {} (kept in \
                 the data directory); issue one with `--actor {}` or without --actor",
                local.actor, local.actor
            ),
        ));
    }
    Ok(())
}

/// The check both directions make after the CA's: the peer's certificate
/// names this cluster. Refusals are counted and logged (the handshake's
/// alert alone would tell the operator nothing on this side).
#[derive(Debug, Clone)]
struct ClusterCheck {
    cluster: String,
    refused: Counter,
}

impl ClusterCheck {
    fn check(&self, end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let why = match CertIdentity::from_der(end_entity) {
            Ok(id) if id.admits(&self.cluster) => return Ok(()),
            Ok(id) => format!(
                "it is for {}, not cluster {:?}; issue it with `patina tls cert --cluster {}`",
                id.describe(),
                self.cluster,
                self.cluster
            ),
            Err(e) => e,
        };
        self.refused.inc();
        tracing::warn!(cluster = %self.cluster, "refused a peer's certificate, signed by our CA: {why}");
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::ApplicationVerificationFailure,
        ))
    }
}

/// The server side's check of a client certificate: the CA's, then the
/// cluster's.
#[derive(Debug)]
struct ClusterClientVerifier {
    chain: Arc<dyn ClientCertVerifier>,
    cluster: ClusterCheck,
}

impl ClientCertVerifier for ClusterClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.chain.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.chain.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.chain.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .chain
            .verify_client_cert(end_entity, intermediates, now)?;
        self.cluster.check(end_entity)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

/// The client side's check of a server certificate: chain to the CA and
/// name this cluster when there is a CA (no host name check, see the
/// module docs), nothing otherwise. Handshake signatures are always
/// verified.
#[derive(Debug)]
struct PeerVerifier {
    roots: Option<Arc<RootCertStore>>,
    provider: Arc<CryptoProvider>,
    cluster: ClusterCheck,
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.provider.signature_verification_algorithms.all,
            )?;
            self.cluster.check(end_entity)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
