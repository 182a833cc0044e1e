//! The Pingora `ProxyHttp` service: the hot path as a list of stages.
//!
//! `request_filter`: route → scrub → authenticate → tenant → authorize → rate limit
//! (a rejection is written here as the contract's JSON, keeping the connection);
//! `upstream_request_filter`: inject; `response_filter`: rate-limit fields;
//! `fail_to_proxy`: upstream failures as 502/504 JSON; `logging`: meter + metrics.

use crate::admit::{Admission, Described, Mode, Pipeline, Silent};
use crate::fairness::Fairness;
use crate::headers::{self, X_API_KEY, X_REQUEST_ID, X_TENANT_ASSERTION};
use crate::listener;
use crate::meter::{Meter, Sample};
use crate::metrics::ProxyMetrics;
use crate::reject::Reject;
use crate::route::{choose_upstream, UpstreamGroup};
use async_trait::async_trait;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{ErrorSource, ErrorType};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Timeouts and limits of the proxy.
#[derive(Debug, Clone)]
pub struct GateOptions {
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub upstream_idle_timeout: Duration,
    /// Request bodies up to this size are drained before a rejection so the
    /// connection can be kept; larger ones close it.
    pub max_drain_bytes: usize,
    /// Largest accepted request header section (names + values), bytes.
    pub max_header_bytes: usize,
}

impl Default for GateOptions {
    fn default() -> Self {
        GateOptions {
            connect_timeout: Duration::from_secs(2),
            read_timeout: Duration::from_secs(30),
            upstream_idle_timeout: Duration::from_secs(60),
            max_drain_bytes: 64 * 1024,
            max_header_bytes: 64 * 1024,
        }
    }
}

/// The pools of a request whose tenant names none.
static NO_POOLS: std::sync::LazyLock<std::collections::HashMap<Box<str>, Arc<UpstreamGroup>>> =
    std::sync::LazyLock::new(std::collections::HashMap::new);

pub struct Gate {
    /// Stages 1–6, shared with the proxy's `POST /explain`.
    pub pipeline: Arc<Pipeline>,
    pub meter: Arc<Meter>,
    pub metrics: Arc<ProxyMetrics>,
    pub fairness: Arc<Fairness>,
    pub opts: GateOptions,
}

/// What one phase learned for the next.
pub struct Ctx {
    start: Instant,
    start_unix_ms: i64,
    /// The client's (when sane) or a new UUID v4; ASCII, so also a `&str`.
    request_id: HeaderValue,
    /// What stages 1–6 learned.
    adm: Admission,
    reject: Option<Reject>,
    upstream_error: bool,
    /// Counted in the route's in-flight signal (admitted, to be forwarded).
    in_flight: bool,
}

impl Gate {
    /// Stages 1–6 ([`Pipeline::run`]), then the request edits they decided: the
    /// normalised path and the scrubbed identity headers. `Ok` means: proxy it.
    async fn admit(&self, session: &mut Session, ctx: &mut Ctx) -> Result<(), Reject> {
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let digest = session.as_downstream().digest();
        let proto = match digest {
            Some(d) if d.ssl_digest.is_some() => "https",
            _ => "http",
        };
        let client_cert =
            digest.and_then(|d| crate::tls::client_fingerprint(d.ssl_digest.as_deref()));
        let header = session.req_header();
        let req = Described {
            method: &header.method,
            uri: &header.uri,
            headers: &header.headers,
            peer,
            proto,
            client_cert,
            request_id: request_id_str(&ctx.request_id),
            start: ctx.start,
            start_unix_ms: ctx.start_unix_ms,
        };
        let result = self
            .pipeline
            .run(&req, &mut ctx.adm, Mode::Enforce, &mut Silent)
            .await;
        for name in std::mem::take(&mut ctx.adm.scrubbed) {
            session.req_header_mut().remove_header(&name);
        }
        // The upstream gets the path that was matched and authorised.
        if let (Ok(()), Some(normal)) = (&result, ctx.adm.normal.take()) {
            let uri = session.req_header().uri.clone();
            let target = match uri.query() {
                Some(q) => format!("{normal}?{q}"),
                None => normal,
            };
            let mut parts = uri.into_parts();
            parts.path_and_query = Some(
                target
                    .parse()
                    .map_err(|_| Reject::BadRequest("the request path cannot be normalised"))?,
            );
            let rebuilt = http::Uri::from_parts(parts)
                .map_err(|_| Reject::BadRequest("the request path cannot be normalised"))?;
            session.req_header_mut().set_uri(rebuilt);
        }
        result
    }

    /// Counts a refusal against its connection and client address; a client that
    /// keeps being refused is made to wait, now or before its next request, or
    /// has its connection closed after this refusal (see [`crate::fairness`]).
    async fn shed(&self, session: &mut Session, ctx: &Ctx, reject: &Reject) {
        let client = ctx
            .adm
            .forwarded
            .as_ref()
            .and_then(|f| f.client)
            .or_else(|| {
                session
                    .client_addr()
                    .and_then(|a| a.as_inet())
                    .map(|a| a.ip())
            });
        let verdict = self.fairness.refused(
            session.as_downstream().stream(),
            client,
            reject,
            ctx.start_unix_ms.div_euclid(1000),
        );
        if verdict.shed {
            if let Some(view) = &ctx.adm.view {
                self.metrics.observe_shed(view.tenant_id.as_str());
            }
        }
        let mut close = verdict.close;
        if let Some(delay) = verdict.delay_now {
            close |= !self.fairness.wait(delay, None).await;
        }
        if close {
            session.set_keepalive(None);
        }
    }

    /// Writes the rejection as JSON, keeping the connection when the request body
    /// (if any) is small enough to drain.
    async fn respond(&self, session: &mut Session, ctx: &mut Ctx, reject: Reject) -> Result<()> {
        let body = reject.body(request_id_str(&ctx.request_id));
        let fixed = [
            (CONTENT_TYPE, HeaderValue::from_static("application/json")),
            (CONTENT_LENGTH, HeaderValue::from(body.len())),
            (X_REQUEST_ID.clone(), ctx.request_id.clone()),
        ];
        let h = headers::new_response(reject.status(), fixed.into_iter().chain(reject.headers()))?;
        if !session.is_body_empty() {
            let small = session
                .req_header()
                .headers
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<usize>().ok())
                .is_some_and(|n| n <= self.opts.max_drain_bytes);
            let drained = small
                && matches!(
                    tokio::time::timeout(Duration::from_secs(1), session.drain_request_body())
                        .await,
                    Ok(Ok(()))
                );
            if !drained {
                session.set_keepalive(None);
            }
        }
        ctx.reject = Some(reject);
        session.write_response_header(Box::new(h), false).await?;
        session
            .write_response_body(Some(Bytes::from(body)), true)
            .await?;
        Ok(())
    }
}

/// A request id header value as text (it is always ASCII: checked or generated).
fn request_id_str(v: &HeaderValue) -> &str {
    v.to_str().unwrap_or("")
}

#[async_trait]
impl ProxyHttp for Gate {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            start: Instant::now(),
            start_unix_ms: tenantgate_core::time::now_ms(),
            request_id: HeaderValue::from_static(""),
            adm: Admission::default(),
            reject: None,
            upstream_error: false,
            in_flight: false,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        listener::headers_complete(session.as_downstream().stream());
        ctx.request_id = match session.req_header().headers.get(&X_REQUEST_ID) {
            Some(v) if headers::valid_request_id(v.as_bytes()) => v.clone(),
            _ => headers::new_request_id(),
        };
        match self.admit(session, ctx).await {
            Ok(()) => {
                self.fairness.admitted(session.as_downstream().stream());
                if let Some(route) = &ctx.adm.route {
                    route.signals.started();
                    ctx.in_flight = true;
                }
                Ok(false)
            }
            Err(reject) => {
                self.shed(session, ctx, &reject).await;
                self.respond(session, ctx, reject).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let route = ctx
            .adm
            .route
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route in context"))?;
        // Silo tenants (the route's `tenant_upstreams`, the tenant's pool) are
        // known from the tenant view admission already resolved.
        let tenant = ctx
            .adm
            .view
            .as_deref()
            .map(|v| (v.tenant_id.as_str(), v.upstream_pool.as_deref()));
        // The pools in force are read only for a tenant that names one.
        let routing = tenant
            .is_some_and(|(_, pool)| pool.is_some())
            .then(|| self.pipeline.routes.load());
        let pools = routing.as_deref().map_or(&*NO_POOLS, |r| &r.pools);
        let group = choose_upstream(route, pools, tenant);
        let addr = group
            .select()
            .ok_or_else(|| Error::explain(ErrorType::ConnectNoRoute, "no upstream backend"))?;
        let mut peer = match &group.tls {
            // Verified against the route's CA file or the system roots, for the
            // backend's host name.
            // Plain HTTP for Pingora over a connection the route's connector made
            // with TLS (see `crate::tls::upstream`).
            Some(tls) => {
                let mut peer = HttpPeer::new(addr, false, String::new());
                peer.group_key = tls.pool_key;
                peer.options.custom_l4 = Some(tls.clone());
                peer
            }
            None => HttpPeer::new(addr, false, String::new()),
        };
        peer.options.connection_timeout = Some(self.opts.connect_timeout);
        peer.options.read_timeout = Some(self.opts.read_timeout);
        peer.options.write_timeout = Some(self.opts.read_timeout);
        peer.options.idle_timeout = Some(self.opts.upstream_idle_timeout);
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let request_id = (X_REQUEST_ID.clone(), ctx.request_id.clone());
        let (forward_set, forward_remove) = match ctx.adm.forwarded.take() {
            Some(f) => (f.set, f.remove),
            None => (Vec::new(), Vec::new()),
        };
        match &ctx.adm.who {
            // The upstream trusts the injected identity; it never sees the secret.
            Some(who) => {
                const CREDENTIALS: [&HeaderName; 2] = [&X_API_KEY, &AUTHORIZATION];
                let more: Vec<&HeaderName>;
                let remove: &[&HeaderName] = if forward_remove.is_empty() {
                    &CREDENTIALS
                } else {
                    more = CREDENTIALS.into_iter().chain(forward_remove).collect();
                    &more
                };
                headers::edit_request(
                    upstream_request,
                    remove,
                    who.principal()
                        .headers()
                        .chain([request_id])
                        .chain(
                            ctx.adm
                                .assertion
                                .take()
                                .map(|v| (X_TENANT_ASSERTION.clone(), v)),
                        )
                        .chain(forward_set),
                )
            }
            None => headers::edit_request(
                upstream_request,
                &forward_remove,
                std::iter::once(request_id).chain(forward_set),
            ),
        }
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if upstream_response.status.is_server_error() {
            ctx.upstream_error = true;
        }
        let request_id = (X_REQUEST_ID.clone(), ctx.request_id.clone());
        match &ctx.adm.limits {
            Some(l) => headers::edit_response(
                upstream_response,
                l.headers().into_iter().chain([request_id]),
            ),
            None => headers::edit_response(upstream_response, [request_id]),
        }
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let reject = match e.etype() {
            ErrorType::HTTPStatus(400) => Some(Reject::BadRequest("the request is malformed")),
            _ => match e.esource() {
                ErrorSource::Upstream => {
                    ctx.upstream_error = true;
                    Some(match e.etype() {
                        ErrorType::ConnectTimedout
                        | ErrorType::ReadTimedout
                        | ErrorType::WriteTimedout
                        | ErrorType::TLSHandshakeTimedout => Reject::UpstreamTimeout,
                        _ => Reject::UpstreamUnavailable,
                    })
                }
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed => {
                        None
                    }
                    _ => Some(Reject::BadRequest("the request is malformed")),
                },
                _ => {
                    ctx.upstream_error = true;
                    Some(Reject::UpstreamUnavailable)
                }
            },
        };
        tracing::warn!(request_id = request_id_str(&ctx.request_id), error = %e, "proxy failure");
        let Some(reject) = reject else {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        };
        let code = reject.status();
        if session.response_written().is_none() {
            session.set_keepalive(None);
            if let Err(err) = self.respond(session, ctx, reject).await {
                tracing::debug!(error = %err, "could not write the error response");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        listener::request_done(session.as_downstream().stream());
        let elapsed = ctx.start.elapsed();
        if ctx.in_flight {
            if let Some(route) = &ctx.adm.route {
                route
                    .signals
                    .finished(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX));
            }
        }
        let status = session
            .response_written()
            .map(|h| h.status.as_u16())
            .unwrap_or(0);
        let code = ctx.reject.as_ref().map(Reject::code).unwrap_or("ok");
        let view = ctx.adm.view.as_deref();
        let tenant = view.map(|v| v.tenant_id.as_str());
        if let Some(tenant) = tenant {
            let sample = Sample {
                at_unix_s: ctx.start_unix_ms.div_euclid(1000),
                rate_limited: matches!(
                    ctx.reject,
                    Some(Reject::RateLimited(_) | Reject::QuotaExceeded(_))
                ),
                denied: ctx.reject.as_ref().is_some_and(Reject::is_denied),
                upstream_error: ctx.upstream_error,
                bytes_in: session.body_bytes_read() as u64,
                bytes_out: session.body_bytes_sent() as u64,
                latency_us: u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            };
            self.meter.record(tenant, &sample);
            // The key's share, for usage `group_by=api_key`.
            if let Some(key_id) = ctx
                .adm
                .who
                .as_ref()
                .and_then(|w| w.principal().api_key_id())
            {
                self.meter.record_key(tenant, key_id, &sample);
            }
        }
        self.metrics.observe(
            code,
            status,
            elapsed.as_secs_f64(),
            view.map(|v| (v.tenant_id.as_str(), &v.series)),
        );
        if ctx.reject.is_some() || status >= 500 {
            tracing::info!(
                request_id = request_id_str(&ctx.request_id),
                method = %session.req_header().method,
                path = %session.req_header().uri.path(),
                status,
                code,
                tenant = tenant.unwrap_or(""),
                latency_us = elapsed.as_micros() as u64,
                "request"
            );
        } else {
            tracing::debug!(
                request_id = request_id_str(&ctx.request_id),
                method = %session.req_header().method,
                path = %session.req_header().uri.path(),
                status,
                tenant = tenant.unwrap_or(""),
                latency_us = elapsed.as_micros() as u64,
                "request"
            );
        }
    }
}
