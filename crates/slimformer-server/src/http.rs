//! The HTTP listener: connections under limits that abusive clients cannot wear
//! down. A connection whose request head is not complete within the header read
//! timeout is closed (slowloris), one with no traffic and no request in flight for
//! the idle timeout is closed, a request body must arrive within the body read
//! timeout (else 408), and past the connection limit new connections are closed at
//! once rather than queued, so descriptors and memory stay bounded. With a certificate
//! and key, connections are TLS (rustls).

use crate::metrics::Metrics;
use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

/// How long clients may take, and how many may be connected.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// A request head (request line and headers) must be complete within this.
    pub header_read_timeout: Duration,
    /// A request body must be complete within this.
    pub body_read_timeout: Duration,
    /// A connection with no bytes either way and no request in flight is closed after this.
    pub idle_timeout: Duration,
    /// Connections open at once; more are closed as they arrive.
    pub max_connections: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(30),
            body_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: 16384,
        }
    }
}

/// When a connection last moved bytes, and how many of its requests are in flight.
struct Activity {
    started: Instant,
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            last_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let now = self.started.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }

    fn busy(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) > 0
    }
}

/// Marks a request in flight on its connection while it lives.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(activity: &Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// A connection's stream (TCP, or TLS over TCP) that records when it last read or wrote.
struct Tracked<S> {
    stream: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.stream).poll_write(cx, buf);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        poll
    }

    // Forwarded so that hyper sees the stream's vectored writes: without them it copies
    // every response body into one per-connection buffer, which keeps the capacity of
    // the largest answer the connection ever sent for as long as it stays open.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Reads the whole body within the body read timeout (a body streamed slowly holds
/// a connection and its buffers, never longer), then passes the request on.
async fn with_body_deadline(
    app: Router,
    request: Request<Incoming>,
    limits: ConnectionLimits,
    body_limit: usize,
) -> Response {
    let (parts, body) = request.into_parts();
    let read = axum::body::to_bytes(Body::new(body), body_limit);
    let bytes = match tokio::time::timeout(limits.body_read_timeout, read).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(_)) => {
            return crate::errors::ApiError::new(
                crate::errors::ErrorType::PayloadTooLarge,
                format!("the request body is larger than {body_limit} bytes"),
            )
            .into_response()
        }
        Err(_) => {
            return crate::errors::ApiError::new(
                crate::errors::ErrorType::RequestTimeout,
                format!(
                    "the request body did not arrive within {} s",
                    limits.body_read_timeout.as_secs_f64()
                ),
            )
            .into_response()
        }
    };
    let request = Request::from_parts(parts, Body::from(bytes));
    match app.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// Serves `app` on `listener` (over TLS when `tls` is given) under `limits` until
/// `shutdown` resolves; then stops accepting, lets the requests in flight finish (up
/// to `drain`), and returns.
#[allow(clippy::too_many_arguments)]
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<TlsAcceptor>,
    limits: ConnectionLimits,
    body_limit: usize,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) {
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors or memory: back off instead of spinning.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.connections_refused.fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            app: app.clone(),
            limits,
            body_limit,
            watcher: graceful.watcher(),
        };
        let (tls, metrics) = (tls.clone(), metrics.clone());
        metrics.connections_open.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let _slot = slot;
            match tls {
                // The handshake is part of the request head's time.
                Some(acceptor) => {
                    let handshake = acceptor.accept(stream);
                    match tokio::time::timeout(limits.header_read_timeout, handshake).await {
                        Ok(Ok(stream)) => connection.run(stream).await,
                        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                }
                None => connection.run(stream).await,
            }
            metrics.connections_open.fetch_sub(1, Ordering::Relaxed);
        });
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("stopped with connections still open after the drain time");
    }
}

/// What one connection needs to be served.
struct Connection {
    app: Router,
    limits: ConnectionLimits,
    body_limit: usize,
    watcher: Watcher,
}

impl Connection {
    /// Serves HTTP/1 on `stream` until the client closes it, a timeout cuts it, or
    /// the server shuts down.
    async fn run<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(self, stream: S) {
        let Connection {
            app,
            limits,
            body_limit,
            watcher,
        } = self;
        let activity = Arc::new(Activity::new());
        let io = TokioIo::new(Tracked {
            stream,
            activity: activity.clone(),
        });
        let requests = activity.clone();
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let in_flight = InFlight::new(&requests);
            let app = app.clone();
            async move {
                let response = with_body_deadline(app, request, limits, body_limit).await;
                drop(in_flight);
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            // Bodies are queued and written from their own buffers, never flattened into
            // the connection's (see `Tracked::is_write_vectored`), whatever the stream
            // reports: a kept-alive connection holds no copy of its largest answer.
            .writev(true)
            .serve_connection(io, service);
        let connection = watcher.watch(connection);
        tokio::pin!(connection);
        let check = (limits.idle_timeout / 4).max(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = &mut connection => break,
                _ = tokio::time::sleep(check) => {
                    if !activity.busy() && activity.idle_for() >= limits.idle_timeout {
                        break;
                    }
                }
            }
        }
    }
}

/// The TLS side of `--tls-cert` and `--tls-key`: a PEM certificate chain and its
/// PEM private key (PKCS#8, PKCS#1 or SEC1), HTTP/1.1 over TLS 1.2 and 1.3.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect())
        .map_err(|e| format!("{}: not a PEM certificate chain ({e})", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in the file", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("{}: not a PEM private key ({e})", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("the certificate and the key do not go together: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Lets the process open as many descriptors as its hard limit allows, so that the
/// connection limit, not the default soft limit of 1,024, is what bounds clients.
pub fn raise_descriptor_limit() {
    #[cfg(unix)]
    // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
