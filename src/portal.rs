//! The My OPSWAT Public API client: token cache and licence calls, every one of them
//! through the account's rate budgets.
//!
//! It knows nothing of Prometheus: it reports each call to a [`RequestObserver`].

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use serde_json::Value;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::clock::Clock;
use crate::config::{Account, PortalSettings};
use crate::license::{self, AnswerError, Parsed};
use crate::ratelimit::{RateBudget, SAFETY_MARGIN};
use crate::secret::Secret;

/// Path of the token endpoint, below the base URL.
pub const TOKEN_PATH: &str = "portal/oauth2/token";
/// Path of the licence endpoint, below the base URL.
pub const LICENSE_PATH: &str = "portal/product/license/active-deployments";
/// Largest body we read; real answers are a few KiB (10,000 deployments are ~2 MiB).
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
/// Tokens are renewed at least this often, whatever `expires_in` says.
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// The longest wait a 429's headers may impose; longer values are taken as bogus.
const MAX_RATE_LIMIT_WAIT: Duration = Duration::from_secs(3600);

/// The two API endpoints, as the `endpoint` label says them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `POST /portal/oauth2/token`
    Token,
    /// `GET /portal/product/license/active-deployments`
    License,
}

impl Endpoint {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Token => "token",
            Endpoint::License => "license",
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Receives every API call and every odd answer (the metrics side implements it).
pub trait RequestObserver: Send + Sync {
    /// One call finished: `code` is the HTTP status, `transport` or `timeout`.
    fn request(&self, account: &str, endpoint: Endpoint, code: &str, duration: Duration);
    /// An answer (HTTP 200 or not) could not be used as a whole.
    fn invalid_answer(&self, account: &str, endpoint: Endpoint, reason: &str);
    /// A field of a licence answer was dropped.
    fn dropped_field(&self, account: &str, field: &str);
}

/// How a failure should be treated by the scheduler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// Transient (5xx, timeout, transport, odd answer): back off and try again.
    Backoff,
    /// The portal said no for this licence (400, 403, 404): next interval.
    NextInterval,
    /// Throttled: the whole endpoint waits; then try again.
    After(Duration),
}

/// A failed call. Messages never contain secrets or the request URL.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PortalError {
    /// HTTP 429.
    #[error("{endpoint}: rate limited (HTTP 429), the endpoint waits {}", humantime::format_duration(*.wait))]
    RateLimited {
        /// Endpoint.
        endpoint: Endpoint,
        /// How long the endpoint now waits.
        wait: Duration,
    },
    /// Any other non-200 status.
    #[error("{endpoint}: HTTP {status}{message}")]
    Status {
        /// Endpoint.
        endpoint: Endpoint,
        /// Status code.
        status: u16,
        /// The portal's own error message, if any (prefixed with `: `).
        message: String,
    },
    /// The request did not complete within the configured timeout.
    #[error("{endpoint}: timed out")]
    Timeout {
        /// Endpoint.
        endpoint: Endpoint,
    },
    /// Connection refused, name not resolved, TLS failure, connection reset…
    #[error("{endpoint}: {message}")]
    Transport {
        /// Endpoint.
        endpoint: Endpoint,
        /// What happened, without the URL.
        message: String,
    },
    /// The body was larger than [`MAX_BODY_BYTES`].
    #[error("{endpoint}: answer (HTTP {status}) larger than {MAX_BODY_BYTES} bytes, refused")]
    TooLarge {
        /// Endpoint.
        endpoint: Endpoint,
        /// The status that came with it.
        status: u16,
    },
    /// HTTP 200 with a body we cannot use.
    #[error("{endpoint}: {message}")]
    InvalidAnswer {
        /// Endpoint.
        endpoint: Endpoint,
        /// What is wrong with it.
        message: String,
    },
}

impl PortalError {
    /// What the scheduler should do about it.
    pub fn retry(&self) -> Retry {
        match self {
            PortalError::RateLimited { wait, .. } => Retry::After(*wait),
            PortalError::Status {
                endpoint: Endpoint::License,
                status: 400 | 403 | 404,
                ..
            } => Retry::NextInterval,
            _ => Retry::Backoff,
        }
    }

    /// The endpoint that failed.
    pub fn endpoint(&self) -> Endpoint {
        match self {
            PortalError::RateLimited { endpoint, .. }
            | PortalError::Status { endpoint, .. }
            | PortalError::Timeout { endpoint }
            | PortalError::Transport { endpoint, .. }
            | PortalError::TooLarge { endpoint, .. }
            | PortalError::InvalidAnswer { endpoint, .. } => *endpoint,
        }
    }

    /// A short stable word for the kind of failure (logs, landing page).
    pub fn kind(&self) -> String {
        match self {
            PortalError::RateLimited { .. } => "rate_limited".into(),
            PortalError::Status { status, .. } => format!("http_{status}"),
            PortalError::Timeout { .. } => "timeout".into(),
            PortalError::Transport { .. } => "transport".into(),
            PortalError::TooLarge { .. } => "too_large".into(),
            PortalError::InvalidAnswer { .. } => "invalid_answer".into(),
        }
    }
}

/// Proxy choice for the HTTP client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProxyChoice {
    /// `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY` from the environment (the default).
    Environment,
    /// Never a proxy (demo, tests: the portal is on loopback).
    Direct,
    /// This proxy for everything.
    Url(Url),
}

/// Builds the HTTP client for one account's portal settings.
pub fn http_client(
    settings: &PortalSettings,
    proxy: &ProxyChoice,
) -> anyhow::Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .timeout(settings.timeout)
        .connect_timeout(settings.connect_timeout)
        .user_agent(concat!(
            "opswat-license-exporter/",
            env!("CARGO_PKG_VERSION")
        ))
        .redirect(reqwest::redirect::Policy::none())
        .pool_idle_timeout(Duration::from_secs(50));
    let proxy = match &settings.proxy_url {
        Some(u) => ProxyChoice::Url(u.clone()),
        None => proxy.clone(),
    };
    match proxy {
        ProxyChoice::Environment => {}
        ProxyChoice::Direct => b = b.no_proxy(),
        ProxyChoice::Url(u) => b = b.proxy(reqwest::Proxy::all(u)?),
    }
    if let Some(path) = &settings.ca_file {
        let pem = std::fs::read(path)?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)?;
        b = b.tls_certs_merge(certs);
    }
    Ok(b.build()?)
}

struct CachedToken {
    value: Secret,
    /// When to fetch a new one; `None`: the portal gave no lifetime, so until rejected.
    refresh_at: Option<Instant>,
}

/// A client of one account: its credentials, token cache and budgets.
pub struct PortalClient {
    account: String,
    http: reqwest::Client,
    token_url: Url,
    license_url: Url,
    client_id: Secret,
    client_secret: Secret,
    token: Mutex<Option<CachedToken>>,
    token_budget: Arc<RateBudget>,
    license_budget: Arc<RateBudget>,
    observer: Arc<dyn RequestObserver>,
    clock: Clock,
    secrets: Vec<Secret>,
}

impl PortalClient {
    /// A client for `account` with fresh budgets.
    pub fn new(
        account: &Account,
        proxy: &ProxyChoice,
        observer: Arc<dyn RequestObserver>,
        clock: Clock,
    ) -> anyhow::Result<Self> {
        let http = http_client(&account.portal, proxy)?;
        let mut base = account.portal.base_url.clone();
        if !base.path().ends_with('/') {
            let p = format!("{}/", base.path());
            base.set_path(&p);
        }
        let secrets = vec![account.client_id.clone(), account.client_secret.clone()];
        Ok(PortalClient {
            account: account.name.clone(),
            http,
            token_url: base.join(TOKEN_PATH)?,
            license_url: base.join(LICENSE_PATH)?,
            client_id: account.client_id.clone(),
            client_secret: account.client_secret.clone(),
            token: Mutex::new(None),
            token_budget: RateBudget::new(account.portal.token_rate_limit),
            license_budget: RateBudget::new(account.portal.license_rate_limit),
            observer,
            clock,
            secrets,
        })
    }

    /// The budget of the token endpoint.
    pub fn token_budget(&self) -> &Arc<RateBudget> {
        &self.token_budget
    }

    /// The budget of the licence endpoint.
    pub fn license_budget(&self) -> &Arc<RateBudget> {
        &self.license_budget
    }

    /// Fetches one licence. A 401 drops the token and retries once with a new one.
    pub async fn fetch_license(
        &self,
        key: &Secret,
        product_id: u32,
    ) -> Result<Parsed, PortalError> {
        self.fetch_license_inner(key, product_id)
            .await
            .map_err(|e| redact_error(e, std::slice::from_ref(key)))
    }

    async fn fetch_license_inner(
        &self,
        key: &Secret,
        product_id: u32,
    ) -> Result<Parsed, PortalError> {
        let mut url = self.license_url.clone();
        url.query_pairs_mut()
            .append_pair("activation_key", key.expose())
            .append_pair("product_id", &product_id.to_string());
        let mut renewed = false;
        loop {
            let token = self.token().await?;
            let request = self
                .http
                .get(url.clone())
                .bearer_auth(token.expose())
                .header(reqwest::header::ACCEPT, "application/json");
            let scrub = |e: PortalError| redact_error(e, std::slice::from_ref(&token));
            let (status, headers, body) =
                self.send(Endpoint::License, request).await.map_err(scrub)?;
            match status {
                StatusCode::OK => {
                    return match license::parse_answer(&body, product_id) {
                        Ok(parsed) => {
                            for d in &parsed.dropped {
                                self.observer.dropped_field(&self.account, d.field);
                            }
                            Ok(parsed)
                        }
                        Err(e) => Err(scrub(self.invalid(Endpoint::License, &e))),
                    };
                }
                StatusCode::UNAUTHORIZED if !renewed => {
                    tracing::info!(account = %self.account, "licence call answered 401: renewing the token once");
                    self.invalidate_token(&token).await;
                    renewed = true;
                }
                _ => {
                    return Err(scrub(self.status_error(
                        Endpoint::License,
                        status,
                        &headers,
                        &body,
                    )));
                }
            }
        }
    }

    /// The cached token, or a new one (single-flight: concurrent callers wait for one fetch).
    async fn token(&self) -> Result<Secret, PortalError> {
        let mut cached = self.token.lock().await;
        if let Some(t) = cached.as_ref()
            && t.refresh_at.is_none_or(|at| Instant::now() < at)
        {
            return Ok(t.value.clone());
        }
        *cached = None;
        let body = serde_json::json!({
            "client_id": self.client_id.expose(),
            "client_secret": self.client_secret.expose(),
            "grant_type": "client_credentials",
        });
        let request = self
            .http
            .post(self.token_url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .json(&body);
        let (status, headers, body) = self.send(Endpoint::Token, request).await?;
        if status != StatusCode::OK {
            return Err(self.status_error(Endpoint::Token, status, &headers, &body));
        }
        let received = Instant::now();
        let (value, expires_in) =
            parse_token(&body).map_err(|e| self.invalid(Endpoint::Token, &e))?;
        let refresh_at = match expires_in {
            Some(secs) => {
                // A lifetime beyond a day is taken as a day: renewing daily costs one
                // call, and absurd values cannot overflow the clock.
                let life = Duration::from_secs(secs.min(MAX_TOKEN_LIFETIME.as_secs()));
                // Renew a little early: a token must not expire between our check and
                // the portal's.
                let margin = (life / 10).min(Duration::from_secs(60));
                Some(received + life - margin)
            }
            None => {
                tracing::warn!(account = %self.account, "token answer has no usable expires_in: using the token until the portal rejects it");
                None
            }
        };
        tracing::debug!(account = %self.account, expires_in = ?expires_in, "new access token");
        *cached = Some(CachedToken {
            value: value.clone(),
            refresh_at,
        });
        Ok(value)
    }

    async fn invalidate_token(&self, used: &Secret) {
        let mut cached = self.token.lock().await;
        if cached.as_ref().is_some_and(|t| &t.value == used) {
            *cached = None;
        }
    }

    /// Sends through the endpoint's budget, reads the body with a cap, and reports the call.
    async fn send(
        &self,
        endpoint: Endpoint,
        request: reqwest::RequestBuilder,
    ) -> Result<(StatusCode, HeaderMap, Vec<u8>), PortalError> {
        let budget = match endpoint {
            Endpoint::Token => &self.token_budget,
            Endpoint::License => &self.license_budget,
        };
        let permit = budget.acquire().await;
        let started = Instant::now();
        let result = exchange(request, endpoint).await;
        drop(permit);
        let elapsed = started.elapsed();
        let code = match &result {
            Ok((status, _, _)) => status.as_str().to_string(),
            Err(PortalError::Timeout { .. }) => "timeout".to_string(),
            Err(PortalError::TooLarge { status, .. }) => status.to_string(),
            Err(_) => "transport".to_string(),
        };
        self.observer
            .request(&self.account, endpoint, &code, elapsed);
        if let Err(PortalError::TooLarge { .. }) = &result {
            self.observer
                .invalid_answer(&self.account, endpoint, "too_large");
        }
        result.map_err(|e| redact_error(e, &self.secrets))
    }

    fn invalid(&self, endpoint: Endpoint, e: &AnswerError) -> PortalError {
        self.observer
            .invalid_answer(&self.account, endpoint, e.reason());
        PortalError::InvalidAnswer {
            endpoint,
            message: self.redact(&e.to_string()),
        }
    }

    fn status_error(
        &self,
        endpoint: Endpoint,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
    ) -> PortalError {
        if status == StatusCode::TOO_MANY_REQUESTS {
            let budget = match endpoint {
                Endpoint::Token => &self.token_budget,
                Endpoint::License => &self.license_budget,
            };
            let wait = rate_limit_wait(headers, self.clock.now()).unwrap_or(budget.limit().per);
            budget.block_until(Instant::now() + wait + SAFETY_MARGIN);
            return PortalError::RateLimited { endpoint, wait };
        }
        let message = serde_json::from_slice::<Value>(body)
            .map(|v| license::error_summary(&v))
            .unwrap_or_default();
        PortalError::Status {
            endpoint,
            status: status.as_u16(),
            message: self.redact(&message),
        }
    }

    /// The portal may echo what it was sent; no secret leaves through a message.
    fn redact(&self, s: &str) -> String {
        redact(s, &self.secrets)
    }
}

/// The error with every secret in its message masked.
fn redact_error(e: PortalError, secrets: &[Secret]) -> PortalError {
    match e {
        PortalError::Transport { endpoint, message } => PortalError::Transport {
            endpoint,
            message: redact(&message, secrets),
        },
        PortalError::Status {
            endpoint,
            status,
            message,
        } => PortalError::Status {
            endpoint,
            status,
            message: redact(&message, secrets),
        },
        PortalError::InvalidAnswer { endpoint, message } => PortalError::InvalidAnswer {
            endpoint,
            message: redact(&message, secrets),
        },
        other => other,
    }
}

/// Replaces every occurrence of each secret with its mask.
pub fn redact(s: &str, secrets: &[Secret]) -> String {
    let mut out = s.to_string();
    for secret in secrets {
        if secret.expose().len() >= 4 && out.contains(secret.expose()) {
            out = out.replace(secret.expose(), &secret.masked());
        }
    }
    out
}

async fn exchange(
    request: reqwest::RequestBuilder,
    endpoint: Endpoint,
) -> Result<(StatusCode, HeaderMap, Vec<u8>), PortalError> {
    let mut resp = request.send().await.map_err(|e| transport(e, endpoint))?;
    let status = resp.status();
    let headers = resp.headers().clone();
    if resp
        .content_length()
        .is_some_and(|n| n > MAX_BODY_BYTES as u64)
    {
        return Err(PortalError::TooLarge {
            endpoint,
            status: status.as_u16(),
        });
    }
    let mut body = Vec::with_capacity(resp.content_length().unwrap_or(4096).min(65536) as usize);
    while let Some(chunk) = resp.chunk().await.map_err(|e| transport(e, endpoint))? {
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(PortalError::TooLarge {
                endpoint,
                status: status.as_u16(),
            });
        }
        if body.len() + chunk.len() > body.capacity() {
            // Grow by doubling, but never past the cap: a refused body costs at most
            // the cap (plus half of it during the last reallocation).
            let want = (body.capacity() * 2)
                .max(body.len() + chunk.len())
                .min(MAX_BODY_BYTES);
            body.reserve_exact(want - body.len());
        }
        body.extend_from_slice(&chunk);
    }
    Ok((status, headers, body))
}

/// A reqwest error without its URL (the activation key is in the query string).
fn transport(e: reqwest::Error, endpoint: Endpoint) -> PortalError {
    if e.is_timeout() {
        return PortalError::Timeout { endpoint };
    }
    let e = e.without_url();
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        let text = s.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = s.source();
    }
    PortalError::Transport { endpoint, message }
}

fn parse_token(body: &[u8]) -> Result<(Secret, Option<u64>), AnswerError> {
    let root: Value =
        serde_json::from_slice(body).map_err(|e| AnswerError::NotJson(e.to_string()))?;
    if license::unsuccessful(&root) {
        return Err(AnswerError::Unsuccessful(license::error_summary(&root)));
    }
    // The documented shape is `{data: {...}}`; plain OAuth puts the fields at the top.
    let data = root.get("data").filter(|d| d.is_object()).unwrap_or(&root);
    let token = data
        .get("access_token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or(AnswerError::NoData)?;
    let expires_in = match data.get("expires_in") {
        Some(Value::Number(n)) => n.as_u64().or_else(|| n.as_f64().map(|f| f as u64)),
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|s| *s > 0);
    Ok((Secret::new(token), expires_in))
}

/// How long a 429 asks us to wait: `Retry-After` (seconds or HTTP date), else
/// `X-RateLimit-Reset-In`, `RateLimit-Reset` or `X-RateLimit-Reset` (seconds, or a Unix
/// time when large). At least one second, at most an hour.
pub fn rate_limit_wait(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let from_seconds = |s: &str, allow_epoch: bool| -> Option<Duration> {
        let secs: f64 = s
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite() && *v >= 0.0)?;
        // Clamped before converting: a header of 1e300 must not overflow a Duration.
        let max = MAX_RATE_LIMIT_WAIT.as_secs_f64();
        if allow_epoch && secs > 1_000_000_000.0 {
            let now = crate::clock::unix_seconds(now);
            return Some(Duration::from_secs_f64((secs - now).clamp(0.0, max)));
        }
        Some(Duration::from_secs_f64(secs.min(max)))
    };
    let wait = get(RETRY_AFTER.as_str())
        .and_then(|v| {
            from_seconds(v, false).or_else(|| {
                httpdate::parse_http_date(v)
                    .ok()
                    .map(|at| at.duration_since(now).unwrap_or(Duration::ZERO))
            })
        })
        .or_else(|| get("x-ratelimit-reset-in").and_then(|v| from_seconds(v, false)))
        .or_else(|| get("ratelimit-reset").and_then(|v| from_seconds(v, true)))
        .or_else(|| get("x-ratelimit-reset").and_then(|v| from_seconds(v, true)))?;
    Some(wait.clamp(Duration::from_secs(1), MAX_RATE_LIMIT_WAIT))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn retry_after_forms() {
        let now = crate::clock::from_unix(1_800_000_000);
        let s = |n| Some(Duration::from_secs(n));
        assert_eq!(
            rate_limit_wait(&headers(&[("retry-after", "17")]), now),
            s(17)
        );
        let date = httpdate::fmt_http_date(now + Duration::from_secs(42));
        assert_eq!(
            rate_limit_wait(&headers(&[("retry-after", &date)]), now),
            s(42)
        );
        assert_eq!(
            rate_limit_wait(&headers(&[("x-ratelimit-reset-in", "9")]), now),
            s(9)
        );
        assert_eq!(
            rate_limit_wait(&headers(&[("ratelimit-reset", "30")]), now),
            s(30)
        );
        assert_eq!(
            rate_limit_wait(&headers(&[("x-ratelimit-reset", "1800000025")]), now),
            s(25)
        );
        assert_eq!(
            rate_limit_wait(&headers(&[("retry-after", "0")]), now),
            s(1)
        );
        assert_eq!(
            rate_limit_wait(&headers(&[("retry-after", "999999")]), now),
            s(3600)
        );
        assert_eq!(
            rate_limit_wait(&headers(&[("retry-after", "soon")]), now),
            None
        );
        assert_eq!(rate_limit_wait(&HeaderMap::new(), now), None);
        for absurd in [
            ("retry-after", "1e20"),
            ("x-ratelimit-reset", "1e300"),
            ("retry-after", "Fri, 31 Dec 9999 23:59:59 GMT"),
        ] {
            assert_eq!(
                rate_limit_wait(&headers(&[absurd]), now),
                s(3600),
                "{absurd:?}"
            );
        }
    }

    #[test]
    fn token_shapes() {
        let (t, e) = parse_token(
            br#"{"data":{"access_token":"abc","token_type":"Bearer","expires_in":3600}}"#,
        )
        .unwrap();
        assert_eq!((t.expose(), e), ("abc", Some(3600)));
        let (_, e) = parse_token(br#"{"access_token":"abc","expires_in":"60"}"#).unwrap();
        assert_eq!(e, Some(60));
        let (_, e) = parse_token(br#"{"data":{"access_token":"abc"}}"#).unwrap();
        assert_eq!(e, None);
        assert!(parse_token(br#"{"data":{}}"#).is_err());
        assert!(parse_token(b"<html>").is_err());
    }

    #[test]
    fn redaction() {
        let secrets = [Secret::new("SECRET-KEY-1234"), Secret::new("ab")];
        assert_eq!(
            redact("key SECRET-KEY-1234 not found", &secrets),
            "key ****1234 not found"
        );
    }
}
