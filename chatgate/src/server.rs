//! The accept loop and graceful shutdown.
//!
//! [`run`] takes a bound listener and any shutdown future (mini-redis
//! style), so tests bind `127.0.0.1:0` and drive the real server. Each
//! connection holds a permit of a semaphore sized `server.max_connections`;
//! at the cap, accepting pauses and new clients wait in the kernel backlog.
//! On shutdown it stops accepting, lets in-flight requests finish (keep-alive
//! connections close after their current request), and gives up after the
//! grace period.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use slog::{error, info, warn};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::router;
use crate::App;

/// Serves `app` on `listener` until `shutdown` resolves, then drains.
///
/// Returns once every connection has closed or `grace` has passed.
pub async fn run(listener: TcpListener, app: Arc<App>, shutdown: impl Future<Output = ()>) {
    let permits = Arc::new(Semaphore::new(app.max_connections));
    let graceful = GracefulShutdown::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(app.header_timeout)
        .keep_alive(true)
        .max_buf_size(app.max_body_bytes.max(8192) + 16 * 1024);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&permits).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, _peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(conn) => conn,
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    warn!(app.log, "accept failed"; "error" => %e);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let app2 = Arc::clone(&app);
        let svc = service_fn(move |req| router::serve(Arc::clone(&app2), req));
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), svc));
        tokio::spawn(async move {
            // Client resets and header timeouts end up here; they are the
            // client's business, not an error of ours.
            let _ = conn.await;
            drop(permit);
        });
    }
    drop(listener);
    info!(app.log, "shutting down"; "grace_ms" => app.shutdown_grace.as_millis() as u64);
    if tokio::time::timeout(app.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        error!(
            app.log,
            "shutdown grace period passed with requests still in flight"
        );
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
