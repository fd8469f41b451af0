//! Accepting connections and serving HTTP/1.1 on them, with the bounds `axum::serve` does
//! not set: a client must send a request's head within `header_read` (an idle keep-alive
//! connection is closed after the same time), and at shutdown open connections get `drain`
//! to finish before the host stops regardless.

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::time::Duration;
use tokio::net::TcpListener;

/// How long connections may take.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// To send a request's head, and to stay idle between requests.
    pub header_read: Duration,
    /// For open connections to finish at shutdown.
    pub drain: Duration,
}

/// Serve `app` on `listener` until `shutdown` completes, then let open connections finish
/// for at most `limits.drain`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_read);
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, or a connection reset before it was accepted:
                    // wait a moment instead of spinning.
                    tracing::warn!("accepting a connection failed: {error}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let connection =
            builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!("a connection ended with an error: {error}");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.drain, graceful.shutdown()).await.is_err() {
        tracing::warn!("connections still open {:?} after shutdown began; stopping anyway", limits.drain);
    }
}
