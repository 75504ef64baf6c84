//! Serving a router with bounds no client can stretch: the request head must arrive within
//! a timeout (no slowloris), a connection cap stops accepting while it is reached, and each
//! request's handling is bounded in time. Every request carries its peer address
//! (`ConnectInfo<SocketAddr>`) for per-address limits.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::extract::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::Semaphore;

/// `[…limits]`: how long a client may take and how many may be connected at once.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeLimits {
    /// A connection whose request head has not fully arrived by then is closed (also the
    /// idle time allowed between requests on a kept-alive connection).
    pub header_read_timeout_ms: u64,
    /// At most this many connections at once; beyond it new ones wait in the backlog.
    pub max_connections: usize,
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self { header_read_timeout_ms: 10_000, max_connections: 1024 }
    }
}

/// Serves `app` on `listener` until `shutdown`, then lets the requests in flight finish.
pub async fn serve<L>(
    mut listener: L,
    app: Router,
    limits: &ServeLimits,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()>
where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    // HTTP/1.1 only, as the TLS configuration offers: no version sniffing before hyper's own
    // header-read timer runs, so a connection that sends nothing at all is closed in time too.
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(Duration::from_millis(limits.header_read_timeout_ms.max(1)));
    let connections = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&connections).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (io, peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let service =
            tower::ServiceExt::map_request(app.clone(), move |mut request: Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                request
            });
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(service)));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    // In-flight requests finish; idle and half-sent connections are closed.
    if tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await.is_err() {
        tracing::warn!("connections still open 10 s after shutdown; dropping them");
    }
    Ok(())
}
