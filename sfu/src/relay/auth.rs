//! How node links secure themselves: QUIC with TLS 1.3 for encryption, and a proof of the
//! cluster secret from each side, bound to the TLS session (an HMAC over keying material
//! exported from it). Node certificates are self-signed and not checked: what admits a peer
//! is the proof, which a machine in the middle cannot produce or replay, since its two TLS
//! sessions export different material.

use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::hmac;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use ting_protocol::NodeId;

/// ALPN and server name of node links.
pub const ALPN: &[u8] = b"ting-relay/1";
pub const SERVER_NAME: &str = "ting-relay";
/// Relayed packets must fit a datagram: a 1500-byte path minus IPv6 and UDP headers.
const INITIAL_MTU: u16 = 1452;
/// A link whose peer stays silent this long is dead (keep-alives go every second).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(3);

/// Who sent a proof: the two sides sign different labels, so one cannot be reflected.
#[derive(Debug, Clone, Copy)]
pub enum Side {
    Dialer,
    Listener,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("keying material unavailable")]
    Export,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn transport() -> Arc<quinn::TransportConfig> {
    let mut transport = quinn::TransportConfig::default();
    transport
        .keep_alive_interval(Some(Duration::from_secs(1)))
        .initial_mtu(INITIAL_MTU)
        .datagram_receive_buffer_size(Some(8 << 20))
        .datagram_send_buffer_size(8 << 20);
    if let Ok(idle) = quinn::IdleTimeout::try_from(IDLE_TIMEOUT) {
        transport.max_idle_timeout(Some(idle));
    }
    Arc::new(transport)
}

pub fn server_config() -> Result<quinn::ServerConfig, AuthError> {
    let tls = |e: &dyn std::fmt::Display| AuthError::Tls(e.to_string());
    let certified =
        rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_owned()]).map_err(|e| tls(&e))?;
    let cert = CertificateDer::from(certified.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    let mut crypto = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls(&e))?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .map_err(|e| tls(&e))?;
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicServerConfig::try_from(crypto).map_err(|e| tls(&e))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport());
    Ok(config)
}

pub fn client_config() -> Result<quinn::ClientConfig, AuthError> {
    let tls = |e: &dyn std::fmt::Display| AuthError::Tls(e.to_string());
    let provider = provider();
    let mut crypto = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls(&e))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyNodeCertificate(provider)))
        .with_no_client_auth();
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicClientConfig::try_from(crypto).map_err(|e| tls(&e))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport());
    Ok(config)
}

/// The key node links prove with, derived from the cluster secret.
pub fn link_key(cluster_secret: &[u8]) -> hmac::Key {
    let root = hmac::Key::new(hmac::HMAC_SHA256, cluster_secret);
    let derived = hmac::sign(&root, b"ting node link v1");
    hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref())
}

fn message(
    connection: &quinn::Connection,
    side: Side,
    node: &NodeId,
) -> Result<Vec<u8>, AuthError> {
    let mut material = [0u8; 32];
    connection
        .export_keying_material(&mut material, b"ting node link", b"")
        .map_err(|_| AuthError::Export)?;
    let label: &[u8] = match side {
        Side::Dialer => b"dialer",
        Side::Listener => b"listener",
    };
    let mut message = material.to_vec();
    message.extend_from_slice(label);
    message.extend_from_slice(node.as_str().as_bytes());
    Ok(message)
}

/// This side's proof, hex encoded.
pub fn prove(
    key: &hmac::Key,
    connection: &quinn::Connection,
    side: Side,
    node: &NodeId,
) -> Result<String, AuthError> {
    let tag = hmac::sign(key, &message(connection, side, node)?);
    Ok(tag.as_ref().iter().map(|b| format!("{b:02x}")).collect())
}

/// Whether the other side's `proof` is right for `node` on this connection.
pub fn verify(
    key: &hmac::Key,
    connection: &quinn::Connection,
    side: Side,
    node: &NodeId,
    proof: &str,
) -> bool {
    let Ok(message) = message(connection, side, node) else {
        return false;
    };
    let Some(tag) = decode_hex(proof) else {
        return false;
    };
    hmac::verify(key, &message, &tag).is_ok()
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || text.len() > 128 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Accepts any node certificate; the peer is authenticated by its proof instead (see the
/// module comment). Signatures are still checked, so the handshake itself is sound.
#[derive(Debug)]
struct AnyNodeCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyNodeCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
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
            &self.0.signature_verification_algorithms,
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
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
