//! The proxy's listener: its application ([`GateListener`]: connection limit,
//! HTTP/1 keep-alive holding nothing but the stream while idle) and the stream
//! wrapper every connection gets ([`HeaderDeadline`]).
//!
//! `[proxy] header_timeout_ms`: a request's header section must be complete within
//! this long of its first byte, else the connection is closed.
//!
//! Pingora reads the header section before any hook runs, and its read timeout is
//! per read: a client sending one byte every few seconds holds the connection
//! indefinitely. Pingora has no option for a total deadline, so tenantgate adds it
//! without patching Pingora: the listener's application is wrapped
//! ([`TimedHeaders`]) so every accepted stream is wrapped ([`HeaderDeadline`]).
//! The stream arms a timer on the first byte of a request; the gate marks the
//! header section complete when its first hook runs ([`headers_complete`]) and
//! the request done when it logs ([`request_done`]). While armed, a read after the
//! deadline fails with `TimedOut`, and a pending read is woken by the timer, so
//! Pingora drops the connection.
//!
//! The same wrapper puts Pingora's own error answers into the contract's shape.
//! A header section Pingora cannot parse (duplicate `Content-Length`, a space
//! before the colon, obs-fold) is answered by Pingora itself, before any hook,
//! with an empty-bodied `400` and `Server: Pingora`. Such a response is the only
//! thing written while a header section is still being read (the gate has not seen
//! the request yet), so the wrapper replaces it with the contract's JSON 400
//! (`bad_request`, a fresh request id, `Connection: close`); Pingora closes the
//! connection after it either way.

use crate::fairness::Fairness;
use crate::tls::TlsAcceptor;
use async_trait::async_trait;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, UniqueID, UniqueIDType,
    ALPN,
};
use pingora::protocols::{SocketDigest, TimingDigest};
use pingora::server::ShutdownWatch;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

type Stream = pingora::protocols::Stream;

/// Waiting for the next request's first byte.
const IDLE: u8 = 0;
/// Reading a header section: the deadline is armed.
const HEADERS: u8 = 1;
/// The header section is complete; body and response follow.
const IN_REQUEST: u8 = 2;

/// Connections closed because their header section was too slow.
pub static TIMED_OUT: AtomicU64 = AtomicU64::new(0);
/// Header sections Pingora could not parse (answered 400 in the contract's shape).
pub static PARSE_ERRORS: AtomicU64 = AtomicU64::new(0);

/// A client stream with a total deadline for each header section.
pub struct HeaderDeadline {
    inner: Stream,
    timeout: Duration,
    phase: AtomicU8,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Pingora's own error response being replaced: our bytes and how many are out.
    replacing: Option<(Vec<u8>, usize)>,
    /// A replacement was written: the rest of Pingora's response is dropped.
    replaced: bool,
    /// The first bytes of the next request, read while the connection was idle
    /// ([`HeaderDeadline::next_request`]); handed to Pingora's first read.
    early: [u8; EARLY_BYTES],
    early_at: u16,
    early_len: u16,
    /// Refusals in a row on this connection ([`crate::fairness`]).
    refusals: AtomicU32,
    /// How long to wait before reading the next request (ms; 0: don't).
    hold_ms: AtomicU32,
}

/// Bytes of the next request read by the idle wait: most request heads fit, so
/// waiting costs no extra read; a longer head is read on by Pingora as usual.
const EARLY_BYTES: usize = 512;

/// Pingora's answer to a header section it could not parse, in the contract's shape.
fn contract_400() -> Vec<u8> {
    let request_id = crate::headers::new_request_id();
    let body = crate::reject::Reject::BadRequest("the request is malformed")
        .body(request_id.to_str().unwrap_or("-"));
    let mut out = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-request-id: {}\r\nconnection: close\r\n\r\n",
        body.len(),
        request_id.to_str().unwrap_or("-")
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

impl std::fmt::Debug for HeaderDeadline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeaderDeadline")
            .field("timeout", &self.timeout)
            .field("phase", &self.phase.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl HeaderDeadline {
    pub fn new(inner: Stream, timeout: Duration) -> Self {
        HeaderDeadline {
            inner,
            timeout,
            phase: AtomicU8::new(IDLE),
            timer: None,
            replacing: None,
            replaced: false,
            early: [0; EARLY_BYTES],
            early_at: 0,
            early_len: 0,
            refusals: AtomicU32::new(0),
            hold_ms: AtomicU32::new(0),
        }
    }

    /// Waits for the next request on an idle connection; its first bytes are kept
    /// for Pingora's first read. False when the client closed or the read failed.
    async fn next_request(&mut self) -> bool {
        use tokio::io::AsyncReadExt;
        // Nothing of the last request stays while idle (its header timer included).
        self.timer = None;
        self.phase.store(IDLE, Ordering::Relaxed);
        match self.inner.read(&mut self.early).await {
            Ok(n) if n > 0 => {
                self.early_at = 0;
                self.early_len = u16::try_from(n).unwrap_or(0);
                // The first byte of a request: its header deadline starts now.
                self.phase.store(HEADERS, Ordering::Relaxed);
                self.timer = Some(Box::pin(tokio::time::sleep(self.timeout)));
                self.early_len > 0
            }
            _ => false,
        }
    }
}

fn deadline_of(stream: &Stream) -> Option<&HeaderDeadline> {
    // `**`: the object inside the box, not the box itself.
    (**stream).as_any().downcast_ref::<HeaderDeadline>()
}

/// The gate's first hook ran: this request's header section is complete.
pub fn headers_complete(stream: Option<&Stream>) {
    if let Some(d) = stream.and_then(deadline_of) {
        d.phase.store(IN_REQUEST, Ordering::Relaxed);
    }
}

/// The request is over: the next byte starts the next request's deadline.
pub fn request_done(stream: Option<&Stream>) {
    if let Some(d) = stream.and_then(deadline_of) {
        d.phase.store(IDLE, Ordering::Relaxed);
    }
}

/// Ends the connection's streak of refusals.
pub fn reset_refusals(stream: Option<&Stream>) {
    if let Some(d) = stream.and_then(deadline_of) {
        if d.refusals.load(Ordering::Relaxed) != 0 {
            d.refusals.store(0, Ordering::Relaxed);
        }
    }
}

/// Adds a refusal to the connection's streak; the streak (0: no connection state,
/// e.g. HTTP/2).
pub fn add_refusal(stream: Option<&Stream>) -> u32 {
    stream.and_then(deadline_of).map_or(0, |d| {
        d.refusals.fetch_add(1, Ordering::Relaxed).saturating_add(1)
    })
}

/// The connection's next request is read only after `delay`.
pub fn hold_next_read(stream: Option<&Stream>, delay: Duration) {
    if let Some(d) = stream.and_then(deadline_of) {
        let ms = u32::try_from(delay.as_millis()).unwrap_or(u32::MAX);
        d.hold_ms.store(ms, Ordering::Relaxed);
    }
}

/// The wait set by [`hold_next_read`], cleared.
fn take_hold(stream: &Stream) -> Option<Duration> {
    let d = deadline_of(stream)?;
    match d.hold_ms.swap(0, Ordering::Relaxed) {
        0 => None,
        ms => Some(Duration::from_millis(u64::from(ms))),
    }
}

impl AsyncRead for HeaderDeadline {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        let phase = me.phase.load(Ordering::Relaxed);
        if phase == HEADERS {
            if let Some(timer) = me.timer.as_mut() {
                if timer.as_mut().poll(cx).is_ready() {
                    TIMED_OUT.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(
                        timeout_ms = me.timeout.as_millis() as u64,
                        "closing a connection: its request headers did not complete in time"
                    );
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "request header section not complete within proxy.header_timeout_ms",
                    )));
                }
            }
        } else if me.timer.is_some() {
            me.timer = None;
        }
        if me.early_at < me.early_len {
            let early = me
                .early
                .get(usize::from(me.early_at)..usize::from(me.early_len))
                .unwrap_or_default();
            let n = early.len().min(buf.remaining());
            buf.put_slice(early.get(..n).unwrap_or_default());
            me.early_at += u16::try_from(n).unwrap_or(0);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut me.inner).poll_read(cx, buf);
        if phase == IDLE && buf.filled().len() > before {
            me.phase.store(HEADERS, Ordering::Relaxed);
            me.timer = Some(Box::pin(tokio::time::sleep(me.timeout)));
        }
        polled
    }
}

impl AsyncWrite for HeaderDeadline {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        if me.replaced {
            return Poll::Ready(Ok(buf.len()));
        }
        if me.replacing.is_none()
            && me.phase.load(Ordering::Relaxed) == HEADERS
            && buf.starts_with(b"HTTP/1.1 400 ")
        {
            PARSE_ERRORS.fetch_add(1, Ordering::Relaxed);
            me.replacing = Some((contract_400(), 0));
        }
        let Some((bytes, sent)) = me.replacing.as_mut() else {
            return Pin::new(&mut me.inner).poll_write(cx, buf);
        };
        while *sent < bytes.len() {
            let rest = bytes.get(*sent..).unwrap_or_default();
            match Pin::new(&mut me.inner).poll_write(cx, rest) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => *sent += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        me.replacing = None;
        me.replaced = true;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        // Only Pingora's own error answer is written during a header section.
        if me.replaced || me.replacing.is_some() || me.phase.load(Ordering::Relaxed) == HEADERS {
            let first = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &b[..]);
            return Pin::new(me).poll_write(cx, first);
        }
        Pin::new(&mut me.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for HeaderDeadline {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for HeaderDeadline {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for HeaderDeadline {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for HeaderDeadline {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for HeaderDeadline {
    fn get_proxy_digest(&self) -> Option<Arc<pingora::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for HeaderDeadline {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
}

#[async_trait]
impl Peek for HeaderDeadline {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

/// Limits of the listener.
#[derive(Debug, Clone, Copy)]
pub struct ListenerLimits {
    /// Total deadline of a header section, from its first byte.
    pub header_timeout: Duration,
    /// How long an idle keep-alive connection waits for its next request.
    pub keepalive_timeout: Duration,
    /// Connections beyond this are closed as soon as they are accepted.
    pub max_connections: usize,
}

/// Open client connections and those refused at `max_connections`.
pub static OPEN: AtomicU64 = AtomicU64::new(0);
pub static REFUSED: AtomicU64 = AtomicU64::new(0);

/// Counts a connection as open until dropped.
struct Open;

impl Drop for Open {
    fn drop(&mut self) {
        OPEN.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The proxy's listener application: every connection gets a [`HeaderDeadline`],
/// connections past `max_connections` are closed at once, and HTTP/1 keep-alive is
/// run here rather than inside Pingora's session: between requests only the
/// stream is kept, so an idle connection holds no request state, no session
/// buffers and no proxy future (Pingora's own loop keeps all of that alive while
/// it waits for the next request).
///
/// With a [`TlsAcceptor`], the listener terminates TLS first (within the header
/// deadline): HTTP/1.1 over TLS runs the same loop, HTTP/2 (ALPN `h2`) goes to
/// Pingora's HTTP/2 server.
pub struct GateListener<A> {
    inner: Arc<A>,
    limits: ListenerLimits,
    fairness: Arc<Fairness>,
    tls: Option<Arc<TlsAcceptor>>,
}

impl<A> GateListener<A> {
    pub fn new(inner: A, limits: ListenerLimits, fairness: Arc<Fairness>) -> Self {
        Self::shared(Arc::new(inner), limits, fairness, None)
    }

    /// A listener over an application shared with another listener.
    pub fn shared(
        inner: Arc<A>,
        limits: ListenerLimits,
        fairness: Arc<Fairness>,
        tls: Option<Arc<TlsAcceptor>>,
    ) -> Self {
        GateListener {
            inner,
            limits,
            fairness,
            tls,
        }
    }
}

/// TLS handshakes that failed or did not finish within the header deadline.
pub static TLS_FAILED: AtomicU64 = AtomicU64::new(0);

/// The TLS handshake, within `timeout` (the header deadline); `None` when it
/// fails or takes longer.
async fn tls_handshake(tls: &TlsAcceptor, stream: Stream, timeout: Duration) -> Option<Stream> {
    match tokio::time::timeout(timeout, tls.accept(stream)).await {
        Ok(Ok(conn)) => Some(Box::new(conn)),
        Ok(Err(e)) => {
            TLS_FAILED.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            TLS_FAILED.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("TLS handshake not complete within proxy.header_timeout_ms");
            None
        }
    }
}

/// Waits, holding nothing but the stream, until the client sends the next request
/// (the stream back), or closes, stays idle past `idle`, or the server shuts down.
async fn next_request(stream: Stream, idle: Duration, shutdown: &ShutdownWatch) -> Option<Stream> {
    if *shutdown.borrow() {
        return None;
    }
    let mut conn: Box<HeaderDeadline> = stream.into_any().downcast().ok()?;
    let mut shutdown = shutdown.clone();
    tokio::select! {
        arrived = tokio::time::timeout(idle, conn.next_request()) => {
            matches!(arrived, Ok(true)).then_some(conn as Stream)
        }
        _ = shutdown.changed() => None,
    }
}

#[async_trait]
impl<A> ServerApp for GateListener<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let open = OPEN.fetch_add(1, Ordering::Relaxed);
        let _open = Open;
        if open >= self.limits.max_connections as u64 {
            REFUSED.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(open, "connection refused: proxy.max_connections reached");
            return None;
        }
        let stream = match &self.tls {
            // Boxed: the handshake's state lives only while it runs, not in this
            // future, which every idle connection keeps.
            Some(tls) => Box::pin(tls_handshake(tls, stream, self.limits.header_timeout)).await?,
            None => stream,
        };
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            // HTTP/2: Pingora's own server (its streams are not HTTP/1 header
            // sections, so no header deadline wrapper).
            return self.inner.process_new(stream, shutdown).await;
        }
        let mut stream: Stream = if deadline_of(&stream).is_some() {
            stream
        } else {
            Box::new(HeaderDeadline::new(stream, self.limits.header_timeout))
        };
        let keepalive = self.limits.keepalive_timeout.as_secs().max(1);
        let mut carried: Option<HttpPersistentSettings> = None;
        loop {
            let mut session = ServerSession::new_http1(stream);
            match carried.take() {
                Some(settings) => settings.apply_to_session(&mut session),
                None => {
                    session.set_keepalive(Some(keepalive));
                    session.set_keepalive_reuses_remaining(
                        self.inner
                            .server_options()
                            .and_then(|o| o.keepalive_request_limit),
                    );
                }
            }
            if *shutdown.borrow() {
                session.set_keepalive(None);
            }
            let reused = self.inner.process_new_http(session, shutdown).await?;
            let (next, settings) = reused.consume();
            carried = settings;
            // A client that keeps being refused waits before its next request is
            // read (crate::fairness); no room to hold it, or shutdown: closed.
            if let Some(delay) = take_hold(&next) {
                if !self.fairness.wait(delay, Some(shutdown)).await {
                    return None;
                }
            }
            stream = next_request(next, self.limits.keepalive_timeout, shutdown).await?;
        }
    }

    async fn cleanup(&self) {
        self.inner.http_cleanup().await
    }
}

/// Prometheus samples.
pub fn render(out: &mut String) {
    use std::fmt::Write as _;
    let _ = writeln!(
        out,
        "# HELP tenantgate_proxy_header_timeouts_total Connections closed because a request's header section was not complete within proxy.header_timeout_ms.\n# TYPE tenantgate_proxy_header_timeouts_total counter\ntenantgate_proxy_header_timeouts_total {}",
        TIMED_OUT.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP tenantgate_proxy_open_connections Client connections open now.\n# TYPE tenantgate_proxy_open_connections gauge\ntenantgate_proxy_open_connections {}\n# HELP tenantgate_proxy_refused_connections_total Connections closed at accept: proxy.max_connections reached.\n# TYPE tenantgate_proxy_refused_connections_total counter\ntenantgate_proxy_refused_connections_total {}",
        OPEN.load(Ordering::Relaxed),
        REFUSED.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP tenantgate_proxy_malformed_requests_total Header sections the HTTP parser refused (answered 400 bad_request).\n# TYPE tenantgate_proxy_malformed_requests_total counter\ntenantgate_proxy_malformed_requests_total {}",
        PARSE_ERRORS.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP tenantgate_proxy_tls_handshake_failures_total TLS handshakes that failed or did not complete within proxy.header_timeout_ms.\n# TYPE tenantgate_proxy_tls_handshake_failures_total counter\ntenantgate_proxy_tls_handshake_failures_total {}",
        TLS_FAILED.load(Ordering::Relaxed)
    );
}

/// Raises the open-file soft limit to the hard limit (logging both) and returns
/// the soft limit now in force, if it could be read.
pub fn raise_open_file_limit() -> Option<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft >= hard {
        tracing::info!(soft, hard, "open-file limit");
        return Some(soft);
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => {
            tracing::info!(was = soft, now = hard, hard, "raised the open-file limit");
            Some(hard)
        }
        Err(e) => {
            tracing::warn!(soft, hard, error = %e, "could not raise the open-file limit");
            Some(soft)
        }
    }
}

/// The default `proxy.max_connections` for an open-file limit: three quarters of
/// what is left after a reserve for the store, Redis, upstream pools and logs (an
/// active client connection may hold an upstream connection too).
pub fn default_max_connections(open_file_limit: Option<u64>) -> usize {
    const RESERVE: u64 = 512;
    match open_file_limit {
        Some(limit) => {
            usize::try_from((limit.saturating_sub(RESERVE) * 3 / 4).max(64)).unwrap_or(usize::MAX)
        }
        None => 10_000,
    }
}
