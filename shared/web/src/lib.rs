//! HTTPS for the gateway and the views: a TLS listener that axum serves like a TCP one.
//!
//! Handshakes run in tasks of their own, bounded in time, so a client that opens a
//! connection and sends nothing holds up no other; only finished handshakes are handed to
//! axum. Plain HTTP is for loopback, or behind a TLS-terminating proxy a deployment names
//! explicitly (`behind_tls_proxy`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;

pub mod i18n;
pub mod pages;
mod serve;
pub use serve::{ServeLimits, serve};

/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes under way at once; beyond it new connections wait in the backlog.
const MAX_PENDING_HANDSHAKES: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("cannot read the TLS certificate or key {path}: {reason}")]
    Pem { path: String, reason: String },
    #[error("the TLS certificate and key do not make a server configuration: {0}")]
    Config(#[source] rustls::Error),
    #[error(
        "refusing plain HTTP on {listen}: configure tls (cert_file, key_file), or set behind_tls_proxy when a proxy in front terminates TLS"
    )]
    Plaintext { listen: SocketAddr },
    #[error("cannot read the listener's address: {0}")]
    Address(#[source] std::io::Error),
}

/// `[…tls]`: the server's certificate chain and key (PEM files).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl TlsFiles {
    /// The rustls server configuration (HTTP/1.1; one crypto provider for the process).
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, WebError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let pem = |path: &PathBuf, reason: String| WebError::Pem { path: path.display().to_string(), reason };
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&self.cert_file)
            .map_err(|e| pem(&self.cert_file, e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| pem(&self.cert_file, e.to_string()))?;
        let key = PrivateKeyDer::from_pem_file(&self.key_file).map_err(|e| pem(&self.key_file, e.to_string()))?;
        let mut config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(WebError::Config)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// Plain HTTP is allowed on loopback, or when a proxy in front terminates TLS.
pub fn check_plaintext(listen: SocketAddr, behind_tls_proxy: bool) -> Result<(), WebError> {
    if behind_tls_proxy || listen.ip().is_loopback() { Ok(()) } else { Err(WebError::Plaintext { listen }) }
}

/// A listener that hands axum connections whose TLS handshake has finished.
#[derive(Debug)]
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local_addr: SocketAddr,
    acceptor: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    pub fn new(listener: TcpListener, config: Arc<rustls::ServerConfig>) -> Result<Self, WebError> {
        let local_addr = listener.local_addr().map_err(WebError::Address)?;
        let (tx, ready) = mpsc::channel(64);
        let acceptor = tokio::spawn(accept_loop(listener, tokio_rustls::TlsAcceptor::from(config), tx));
        Ok(Self { ready, local_addr, acceptor })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        // The accept loop and its handshakes belong to this listener.
        self.acceptor.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let mut handshakes = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept(), if handshakes.len() < MAX_PENDING_HANDSHAKES => match accepted {
                Ok((stream, addr)) => {
                    let (acceptor, ready) = (acceptor.clone(), ready.clone());
                    handshakes.spawn(async move {
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                            Ok(Ok(tls)) => {
                                let _ = ready.send((tls, addr)).await;
                            }
                            Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                            Err(_) => tracing::debug!("TLS handshake timed out"),
                        }
                    });
                }
                // Out of file descriptors and the like: wait a moment, as axum's own loop does.
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => {}
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The accept loop never ends while the listener lives.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_on_loopback_or_behind_a_named_proxy() {
        assert!(check_plaintext("127.0.0.1:8080".parse().unwrap(), false).is_ok());
        assert!(check_plaintext("[::1]:8080".parse().unwrap(), false).is_ok());
        let refused = check_plaintext("0.0.0.0:8080".parse().unwrap(), false).unwrap_err();
        assert!(refused.to_string().contains("behind_tls_proxy"), "{refused}");
        assert!(check_plaintext("0.0.0.0:8080".parse().unwrap(), true).is_ok());
    }

    #[test]
    fn a_missing_certificate_is_a_clear_error() {
        let files = TlsFiles { cert_file: "/nonexistent/cert.pem".into(), key_file: "/nonexistent/key.pem".into() };
        let error = files.server_config().unwrap_err();
        assert!(error.to_string().contains("/nonexistent/cert.pem"), "{error}");
    }
}
