//! The accept loop and graceful shutdown.
//!
//! [`run`] takes a bound listener and any shutdown future (mini-redis
//! style), so tests bind `127.0.0.1:0` and drive the real server. Each
//! connection holds a permit of a semaphore sized `server.max_connections`;
//! at the cap, accepting pauses and new clients wait in the kernel backlog.
//! On shutdown it stops accepting, lets in-flight requests finish (keep-alive
//! connections close after their current request), and gives up after the
//! grace period.
//!
//! Every phase of a connection is bounded in time, so no client holds a
//! slot by sending or reading nothing: hyper's header timeout covers a
//! request's headers and an idle keep-alive connection (it runs whenever a
//! connection waits for a request), `server.body_timeout` the body (in
//! the handlers), and [`StallGuard`] a response the client stopped reading.
//! A live stream that keeps flowing is never cut.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use slog::{error, info, warn};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
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
        let (stream, peer) = tokio::select! {
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
        let peer = peer.ip();
        let svc = service_fn(move |req| router::serve(Arc::clone(&app2), req, peer));
        let io = TokioIo::new(StallGuard::new(stream, app.write_timeout));
        let conn = graceful.watch(http.serve_connection(io, svc));
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

/// A connection whose writes fail once they have made no progress for
/// `limit`: a client that stops reading its response (or a stream) would
/// otherwise hold its connection, and whatever the response holds
/// upstream, for ever. Reads pass through untouched. The timer exists only
/// while a write is blocked, so the common path costs nothing.
#[derive(Debug)]
pub struct StallGuard<T> {
    io: T,
    limit: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> StallGuard<T> {
    /// Guards `io`.
    pub fn new(io: T, limit: Duration) -> Self {
        StallGuard {
            io,
            limit,
            stalled: None,
        }
    }

    /// Maps a write's poll: progress clears the timer, a block starts it,
    /// and a block that outlives `limit` becomes an error.
    fn watch<R>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        match polled {
            Poll::Ready(out) => {
                self.stalled = None;
                Poll::Ready(out)
            }
            Poll::Pending => {
                let limit = self.limit;
                let timer = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client stopped reading its response",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for StallGuard<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for StallGuard<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.watch(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        self.watch(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
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
