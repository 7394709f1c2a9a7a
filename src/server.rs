//! The HTTP side: `/metrics`, `/`, `/healthz`, `/readyz`, `POST /-/reload`.
//!
//! It renders what the store and the registry hold and never calls the portal.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use crate::clock::{Clock, unix_seconds};
use crate::metrics::{CONTENT_TYPE as METRICS_CONTENT_TYPE, Metrics};
use crate::store::Store;
use crate::webconfig::WebConfig;

/// A reload request: the answer says whether the new config was taken.
pub type ReloadRequest = oneshot::Sender<Result<(), String>>;

/// What the handlers read.
pub struct WebState {
    /// The registry to render.
    pub metrics: Arc<Metrics>,
    /// Licences, for the landing page and readiness.
    pub store: Arc<Store>,
    /// Path of the metrics endpoint (default `/metrics`).
    pub telemetry_path: String,
    /// Where `POST /-/reload` is sent; `None` when reloading is not possible (demo).
    pub reload: Option<mpsc::Sender<ReloadRequest>>,
    /// Time for "days left" on the landing page.
    pub clock: Clock,
    /// TLS, basic auth and extra headers (`--web.config.file`).
    pub web: Arc<WebConfig>,
}

/// Serves until `shutdown` resolves, then lets open requests finish (5 s at most).
pub async fn serve(
    listener: TcpListener,
    state: Arc<WebState>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    let tls = state.web.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: wait a little, go on.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let st = Arc::clone(&state);
                let watcher = graceful.watcher();
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        None => serve_connection(TokioIo::new(stream), st, watcher).await,
                        Some(acceptor) => {
                            // A client that never finishes the handshake is dropped.
                            match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                                Ok(Ok(tls_stream)) => serve_connection(TokioIo::new(tls_stream), st, watcher).await,
                                Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                                Err(_) => tracing::debug!("TLS handshake timed out"),
                            }
                        }
                    }
                });
            }
            _ = shutdown.as_mut() => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(5), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!("open connections did not finish in 5s; closing");
    }
    Ok(())
}

async fn serve_connection<I>(
    io: I,
    state: Arc<WebState>,
    watcher: hyper_util::server::graceful::Watcher,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .max_buf_size(64 * 1024)
        .serve_connection(io, service_fn(move |req| handle(Arc::clone(&state), req)));
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

type Body = Full<Bytes>;

fn response(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, content_type)
        .header(CACHE_CONTROL, "no-store")
        .body(Full::new(body.into()))
        .expect("valid response")
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    response(status, "text/plain; charset=utf-8", body)
}

async fn handle(
    state: Arc<WebState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let mut response = route(&state, req).await;
    for (name, value) in &state.web.headers {
        response.headers_mut().insert(name.clone(), value.clone());
    }
    Ok(response)
}

async fn route(state: &Arc<WebState>, req: Request<Incoming>) -> Response<Body> {
    if state.web.requires_auth() {
        let header = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if !state.web.authorized(header).await {
            let mut r = text(StatusCode::UNAUTHORIZED, "401 unauthorized\n");
            r.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                "Basic realm=\"opswat-license-exporter\""
                    .parse()
                    .expect("valid header"),
            );
            return r;
        }
    }
    let path = req.uri().path();
    let read_only = [state.telemetry_path.as_str(), "/", "/healthz", "/readyz"];
    if path == "/-/reload" {
        if req.method() != Method::POST {
            return not_allowed("POST");
        }
        return reload(state).await;
    }
    if !read_only.contains(&path) {
        return text(StatusCode::NOT_FOUND, "404 page not found\n");
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return not_allowed("GET, HEAD");
    }
    if path == state.telemetry_path {
        response(StatusCode::OK, METRICS_CONTENT_TYPE, state.metrics.render())
    } else if path == "/healthz" {
        text(StatusCode::OK, "OK\n")
    } else if path == "/readyz" {
        let (settled, total) = state.store.settled_count();
        if settled == total {
            text(StatusCode::OK, "ready\n")
        } else {
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "not ready: {} of {total} licences have no answer from the portal yet (neither data nor a definitive refusal)\n",
                    total - settled
                ),
            )
        }
    } else {
        response(StatusCode::OK, "text/html; charset=utf-8", landing(state))
    }
}

fn not_allowed(allow: &'static str) -> Response<Body> {
    let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "405 method not allowed\n");
    r.headers_mut()
        .insert(ALLOW, allow.parse().expect("valid header"));
    r
}

async fn reload(state: &WebState) -> Response<Body> {
    let Some(tx) = &state.reload else {
        return text(
            StatusCode::BAD_REQUEST,
            "reloading is not available in this mode\n",
        );
    };
    let (answer_tx, answer_rx) = oneshot::channel();
    if tx.send(answer_tx).await.is_err() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
    }
    match answer_rx.await {
        Ok(Ok(())) => text(StatusCode::OK, "config reloaded\n"),
        Ok(Err(e)) => text(
            StatusCode::BAD_REQUEST,
            format!("config rejected, the running one stays: {e}\n"),
        ),
        Err(_) => text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n"),
    }
}

/// Escapes text for HTML element content and attribute values.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn landing(state: &WebState) -> String {
    let now = state.clock.now_unix();
    let mut rows = String::new();
    state.store.read(|inner| {
        for (id, e) in &inner.licenses {
            let (product, days, class) = match &e.data {
                Some(l) => {
                    let (days, class) = match l.expiry {
                        Some(t) => {
                            let d = (unix_seconds(t) - now) / 86400.0;
                            let class = if d < 0.0 {
                                "expired"
                            } else if d < 7.0 {
                                "crit"
                            } else if d < 30.0 {
                                "warn"
                            } else if d < 60.0 {
                                "soon"
                            } else {
                                "ok"
                            };
                            (format!("{d:.1}"), class)
                        }
                        None => ("never expires".to_string(), "ok"),
                    };
                    (l.product.clone(), days, class)
                }
                None => (
                    crate::products::lookup(id.product_id)
                        .map(|(name, _)| name.to_string())
                        .unwrap_or_default(),
                    "unknown".to_string(),
                    "none",
                ),
            };
            let activations = match (e.data.as_ref().and_then(|l| l.activations()), e.activations_limit) {
                (Some(a), Some(l)) => format!("{a} / {l}"),
                (Some(a), None) => format!("{a}"),
                (None, Some(l)) => format!("? / {l}"),
                (None, None) => String::new(),
            };
            let last_ok = e.poll.last_success.map_or("never".to_string(), |t| {
                let t = time::OffsetDateTime::from(t);
                t.format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default()
            });
            let poll_state = match (e.poll.last_success_ok, &e.poll.last_error) {
                (None, _) => "pending".to_string(),
                (Some(true), _) => "ok".to_string(),
                (Some(false), Some(err)) => format!("failing ({} in a row): {err}", e.poll.consecutive_failures),
                (Some(false), None) => "failing".to_string(),
            };
            rows.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"{class}\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                escape_html(&id.account),
                escape_html(&id.license),
                id.product_id,
                escape_html(&product),
                escape_html(&days),
                escape_html(&activations),
                escape_html(&last_ok),
                escape_html(&poll_state),
            ));
        }
    });
    let path = escape_html(&state.telemetry_path);
    format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>OPSWAT licence exporter</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}
.expired,.crit{{background:#f8d0d0}}.warn{{background:#fde2c4}}.soon{{background:#fdf5c4}}.ok{{background:#d8f0d8}}</style></head>
<body><h1>OPSWAT licence exporter</h1>
<p>Version {version}, revision {revision}. Data is cached from the last poll of My OPSWAT; a scrape never calls the portal.</p>
<p><a href="{path}">Metrics</a> · <a href="/healthz">Health</a> · <a href="/readyz">Readiness</a></p>
<table><thead><tr><th>Account</th><th>Licence</th><th>Product id</th><th>Product</th><th>Days left</th><th>Activations</th><th>Last successful poll (UTC)</th><th>State</th></tr></thead>
<tbody>
{rows}</tbody></table>
</body></html>
"#,
        version = env!("CARGO_PKG_VERSION"),
        revision = env!("OLE_GIT_REVISION"),
    )
}
