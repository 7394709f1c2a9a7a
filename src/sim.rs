//! A simulated My OPSWAT portal: both endpoints as the API documentation shows them,
//! rate limits enforced as strict sliding windows (429 with `Retry-After`), expiring
//! tokens, and scriptable faults. `--demo` runs it with sample licences; the tests run
//! it on loopback and read its request log to prove what the exporter sent.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::clock::Clock;
use crate::config::RateLimit;
use crate::portal::Endpoint;

type SimBody = BoxBody<Bytes, Infallible>;

/// How a 429 says when to come back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryAfterStyle {
    /// `Retry-After: <seconds>`
    Seconds,
    /// `Retry-After: <HTTP date>`
    HttpDate,
    /// `X-RateLimit-Reset-In: <seconds>`
    ResetIn,
    /// `RateLimit-Reset: <seconds>`
    RateLimitReset,
    /// No hint at all.
    None,
}

/// A scripted misbehaviour, served instead of the normal answer.
#[derive(Clone, Debug)]
pub enum Fault {
    /// This status, body and headers.
    Status {
        /// HTTP status.
        status: u16,
        /// Body bytes.
        body: String,
        /// Extra headers.
        headers: Vec<(String, String)>,
    },
    /// Accept the request and never answer.
    Hang,
    /// Answer normally after this delay.
    Delay(Duration),
    /// HTTP 200 with this many bytes of JSON-looking filler, streamed.
    HugeBody(usize),
    /// Revoke every token, then answer normally (which for a licence call means 401).
    RevokeTokens,
}

impl Fault {
    /// A status with a JSON error body.
    pub fn status(status: u16) -> Fault {
        Fault::Status {
            status,
            body:
                json!({"success": false, "error": {"code": status, "message": "simulated failure"}})
                    .to_string(),
            headers: vec![],
        }
    }

    /// HTTP 200 with this body.
    pub fn ok_body(body: impl Into<String>) -> Fault {
        Fault::Status {
            status: 200,
            body: body.into(),
            headers: vec![],
        }
    }
}

/// One request as the simulated server saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    /// Arrival (tokio clock).
    pub at: Instant,
    /// Which endpoint (`None` for anything else).
    pub endpoint: Option<Endpoint>,
    /// The client (token owner or `client_id`), if known.
    pub client: Option<String>,
    /// The activation key asked for (licence calls).
    pub activation_key: Option<String>,
    /// Status answered (0 when it never answered).
    pub status: u16,
}

/// Static setup of a simulated portal.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// `client_id → client_secret`.
    pub clients: HashMap<String, String>,
    /// `(activation_key, product_id) → data object` of the licence answer.
    pub licenses: HashMap<(String, u32), Value>,
    /// Lifetime given to tokens (`expires_in`).
    pub token_lifetime: Duration,
    /// Token endpoint limit, per client.
    pub token_limit: RateLimit,
    /// Licence endpoint limit, per client.
    pub license_limit: RateLimit,
    /// How 429s announce their end.
    pub retry_after: RetryAfterStyle,
    /// Wall clock for HTTP dates in `Retry-After`.
    pub clock: Clock,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            clients: HashMap::new(),
            licenses: HashMap::new(),
            token_lifetime: Duration::from_secs(3600),
            token_limit: RateLimit {
                requests: 5,
                per: Duration::from_secs(60),
            },
            license_limit: RateLimit {
                requests: 10,
                per: Duration::from_secs(60),
            },
            retry_after: RetryAfterStyle::Seconds,
            clock: Clock::system(),
        }
    }
}

#[derive(Default)]
struct State {
    config: SimConfig,
    tokens: HashMap<String, (String, Instant)>,
    windows: HashMap<(String, Endpoint), VecDeque<Instant>>,
    faults: HashMap<Endpoint, VecDeque<Fault>>,
    /// Faults for one activation key (licence calls), served before the normal answer.
    key_faults: HashMap<String, VecDeque<Fault>>,
    sticky: HashMap<Endpoint, Fault>,
    log: Vec<Seen>,
    next_token: u64,
}

/// A running simulated portal. Dropping it stops the server.
pub struct SimPortal {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl Drop for SimPortal {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SimPortal {
    /// Serves `config` on `listener` until dropped.
    pub fn start(listener: TcpListener, config: SimConfig) -> std::io::Result<SimPortal> {
        SimPortal::start_with(listener, config, None)
    }

    /// Serves `config` over TLS (a portal behind a TLS-intercepting proxy, say).
    pub fn start_tls(
        listener: TcpListener,
        config: SimConfig,
        tls: Arc<tokio_rustls::rustls::ServerConfig>,
    ) -> std::io::Result<SimPortal> {
        SimPortal::start_with(listener, config, Some(tokio_rustls::TlsAcceptor::from(tls)))
    }

    fn start_with(
        listener: TcpListener,
        config: SimConfig,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> std::io::Result<SimPortal> {
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State {
            config,
            ..State::default()
        }));
        let st = Arc::clone(&state);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let st = Arc::clone(&st);
                let tls = tls.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(Arc::clone(&st), req));
                    let http = http1::Builder::new().timer(TokioTimer::new()).clone();
                    match tls {
                        None => {
                            let _ = http.serve_connection(TokioIo::new(stream), svc).await;
                        }
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = http.serve_connection(TokioIo::new(stream), svc).await;
                            }
                        }
                    }
                });
            }
        });
        Ok(SimPortal { addr, state, task })
    }

    /// Binds 127.0.0.1 on a free port and serves `config`.
    pub async fn bind(config: SimConfig) -> std::io::Result<SimPortal> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        SimPortal::start(listener, config)
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its base URL.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request seen so far.
    pub fn log(&self) -> Vec<Seen> {
        self.state.lock().expect("sim lock").log.clone()
    }

    /// Forgets the request log (long tests that measure memory).
    pub fn clear_log(&self) {
        self.state.lock().expect("sim lock").log = Vec::new();
    }

    /// Serves `fault` for the next call of `endpoint` (queued in order).
    pub fn push_fault(&self, endpoint: Endpoint, fault: Fault) {
        let mut st = self.state.lock().expect("sim lock");
        st.faults.entry(endpoint).or_default().push_back(fault);
    }

    /// Serves `fault` for the next licence call asking for `activation_key`.
    pub fn push_key_fault(&self, activation_key: &str, fault: Fault) {
        let mut st = self.state.lock().expect("sim lock");
        st.key_faults
            .entry(activation_key.to_string())
            .or_default()
            .push_back(fault);
    }

    /// Serves `fault` for every call of `endpoint` until cleared.
    pub fn set_sticky_fault(&self, endpoint: Endpoint, fault: Option<Fault>) {
        let mut st = self.state.lock().expect("sim lock");
        match fault {
            Some(f) => st.sticky.insert(endpoint, f),
            None => st.sticky.remove(&endpoint),
        };
    }

    /// Replaces (or with `None` removes) the data of one licence.
    pub fn set_license(&self, activation_key: &str, product_id: u32, data: Option<Value>) {
        let mut st = self.state.lock().expect("sim lock");
        let key = (activation_key.to_string(), product_id);
        match data {
            Some(d) => st.config.licenses.insert(key, d),
            None => st.config.licenses.remove(&key),
        };
    }

    /// Invalidates every token issued so far.
    pub fn revoke_tokens(&self) {
        self.state.lock().expect("sim lock").tokens.clear();
    }

    /// Changes the lifetime of tokens issued from now on.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.state.lock().expect("sim lock").config.token_lifetime = lifetime;
    }
}

/// Counts arrivals in a sliding window; `Err(wait)` when one more would exceed it.
fn admit(window: &mut VecDeque<Instant>, limit: RateLimit, now: Instant) -> Result<(), Duration> {
    while window
        .front()
        .is_some_and(|t| now.duration_since(*t) >= limit.per)
    {
        window.pop_front();
    }
    let result = if window.len() < limit.requests as usize {
        Ok(())
    } else {
        Err(limit.per - now.duration_since(window[window.len() - limit.requests as usize]))
    };
    // Every arrival counts, throttled ones too, as at a strict gateway.
    window.push_back(now);
    result
}

fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<SimBody> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(body.into()).boxed())
        .expect("valid response")
}

fn throttled(style: RetryAfterStyle, clock: &Clock, wait: Duration) -> Response<SimBody> {
    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    let mut r = full(
        StatusCode::TOO_MANY_REQUESTS,
        json!({"success": false, "error": {"code": 429, "message": "Too many requests"}})
            .to_string(),
    );
    let h = r.headers_mut();
    let v = |s: String| s.parse().expect("valid header");
    match style {
        RetryAfterStyle::Seconds => {
            h.insert("retry-after", v(secs.to_string()));
        }
        RetryAfterStyle::HttpDate => {
            // An HTTP date has whole seconds: round up so "after" stays after.
            let at = clock.now() + Duration::from_secs(secs + 1);
            h.insert("retry-after", v(httpdate::fmt_http_date(at)));
        }
        RetryAfterStyle::ResetIn => {
            h.insert("x-ratelimit-reset-in", v(secs.to_string()));
        }
        RetryAfterStyle::RateLimitReset => {
            h.insert("ratelimit-reset", v(secs.to_string()));
        }
        RetryAfterStyle::None => {}
    }
    r
}

fn fault_response(f: Fault) -> Response<SimBody> {
    match f {
        Fault::Status {
            status,
            body,
            headers,
        } => {
            let mut r = full(StatusCode::from_u16(status).expect("valid status"), body);
            for (k, v) in headers {
                r.headers_mut().insert(
                    hyper::header::HeaderName::from_bytes(k.as_bytes()).expect("valid header name"),
                    v.parse().expect("valid header value"),
                );
            }
            r
        }
        Fault::HugeBody(n) => Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .body(Filler { remaining: n }.boxed())
            .expect("valid response"),
        Fault::Hang | Fault::Delay(_) | Fault::RevokeTokens => unreachable!("handled before"),
    }
}

/// A body of `remaining` bytes produced on the fly, never held in memory.
struct Filler {
    remaining: usize,
}

impl Body for Filler {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        static CHUNK: [u8; 64 * 1024] = [b' '; 64 * 1024];
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(CHUNK.len());
        self.remaining -= n;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&CHUNK[..n])))))
    }
}

async fn handle(
    state: Arc<Mutex<State>>,
    req: Request<Incoming>,
) -> Result<Response<SimBody>, Infallible> {
    let now = Instant::now();
    let endpoint = match (req.method(), req.uri().path()) {
        (&Method::POST, "/portal/oauth2/token") => Endpoint::Token,
        (&Method::GET, "/portal/product/license/active-deployments") => Endpoint::License,
        _ => {
            let mut st = state.lock().expect("sim lock");
            st.log.push(Seen {
                at: now,
                endpoint: None,
                client: None,
                activation_key: None,
                status: 404,
            });
            return Ok(full(
                StatusCode::NOT_FOUND,
                r#"{"success":false,"error":"not found"}"#,
            ));
        }
    };
    let query: HashMap<String, String> = req.uri().query().map(url_pairs).unwrap_or_default();
    let bearer = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let body = match Limited::new(req.into_body(), 64 * 1024).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };

    // Decide under the lock; wait (hang, delay) outside it.
    let (fault, response) = {
        let mut st = state.lock().expect("sim lock");
        let client = match endpoint {
            Endpoint::Token => serde_json::from_slice::<Value>(&body).ok().and_then(|v| {
                v.get("client_id")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            }),
            Endpoint::License => bearer
                .as_ref()
                .and_then(|t| st.tokens.get(t))
                .map(|(c, _)| c.clone()),
        };
        let activation_key = query.get("activation_key").cloned();
        let limit = match endpoint {
            Endpoint::Token => st.config.token_limit,
            Endpoint::License => st.config.license_limit,
        };
        let style = st.config.retry_after;
        let clock = st.config.clock.clone();
        let window_key = (
            client.clone().unwrap_or_else(|| "anonymous".into()),
            endpoint,
        );
        let admitted = admit(st.windows.entry(window_key).or_default(), limit, now);
        let mut fault = match admitted {
            Err(_) => None,
            Ok(()) => {
                let keyed = match (&activation_key, endpoint) {
                    (Some(k), Endpoint::License) => {
                        st.key_faults.get_mut(k).and_then(VecDeque::pop_front)
                    }
                    _ => None,
                };
                keyed
                    .or_else(|| st.faults.get_mut(&endpoint).and_then(VecDeque::pop_front))
                    .or_else(|| st.sticky.get(&endpoint).cloned())
            }
        };
        if let Some(Fault::RevokeTokens) = fault {
            st.tokens.clear();
            fault = None;
        }
        let response = match (admitted, &fault) {
            (Err(wait), _) => Some(throttled(style, &clock, wait)),
            (Ok(()), Some(Fault::Status { .. } | Fault::HugeBody(_))) => {
                Some(fault_response(fault.take().expect("fault present")))
            }
            (Ok(()), Some(Fault::Hang)) => None,
            (Ok(()), _) => Some(match endpoint {
                Endpoint::Token => token_answer(&mut st, &body, now),
                Endpoint::License => license_answer(&mut st, bearer.as_deref(), &query, now),
            }),
        };
        st.log.push(Seen {
            at: now,
            endpoint: Some(endpoint),
            client,
            activation_key,
            status: response.as_ref().map_or(0, |r| r.status().as_u16()),
        });
        (fault, response)
    };
    match (fault, response) {
        (Some(Fault::Hang), _) | (_, None) => {
            std::future::pending::<()>().await;
            unreachable!()
        }
        (Some(Fault::Delay(d)), Some(r)) => {
            tokio::time::sleep(d).await;
            Ok(r)
        }
        (_, Some(r)) => Ok(r),
    }
}

fn url_pairs(q: &str) -> HashMap<String, String> {
    reqwest::Url::parse(&format!("http://x/?{q}"))
        .map(|u| u.query_pairs().into_owned().collect())
        .unwrap_or_default()
}

fn token_answer(st: &mut State, body: &[u8], now: Instant) -> Response<SimBody> {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return full(
            StatusCode::BAD_REQUEST,
            r#"{"success":false,"error":"invalid JSON"}"#,
        );
    };
    let field = |k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let (id, secret, grant) = (
        field("client_id"),
        field("client_secret"),
        field("grant_type"),
    );
    if grant != "client_credentials" || id.is_empty() {
        return full(
            StatusCode::BAD_REQUEST,
            r#"{"success":false,"error":"validation error"}"#,
        );
    }
    if st.config.clients.get(&id) != Some(&secret) {
        return full(
            StatusCode::UNAUTHORIZED,
            r#"{"success":false,"error":"Authentication failed due to invalid credentials"}"#,
        );
    }
    st.next_token += 1;
    let token = format!("sim-token-{}-{}", st.next_token, now.elapsed().as_nanos());
    let lifetime = st.config.token_lifetime;
    st.tokens.insert(token.clone(), (id, now + lifetime));
    full(
        StatusCode::OK,
        json!({"data": {"access_token": token, "token_type": "Bearer", "expires_in": lifetime.as_secs()}})
            .to_string(),
    )
}

fn license_answer(
    st: &mut State,
    bearer: Option<&str>,
    query: &HashMap<String, String>,
    now: Instant,
) -> Response<SimBody> {
    let valid = bearer
        .and_then(|t| st.tokens.get(t))
        .is_some_and(|(_, expires)| now < *expires);
    if !valid {
        return full(
            StatusCode::UNAUTHORIZED,
            r#"{"success":false,"error":"Unauthorized - invalid or missing token"}"#,
        );
    }
    let (Some(key), Some(Ok(product))) = (
        query.get("activation_key"),
        query.get("product_id").map(|p| p.parse::<u32>()),
    ) else {
        return full(
            StatusCode::BAD_REQUEST,
            r#"{"success":false,"error":"Validation Error"}"#,
        );
    };
    match st.config.licenses.get(&(key.clone(), product)) {
        Some(data) => full(
            StatusCode::OK,
            json!({"success": true, "data": data}).to_string(),
        ),
        None => full(
            StatusCode::NOT_FOUND,
            r#"{"success":false,"error":"License key not found"}"#,
        ),
    }
}

// ---------------------------------------------------------------------------------------
// Sample licences for `--demo`, dated relative to today.

/// Client credentials of the demo account (not secrets: they only open the simulator).
pub const DEMO_CLIENT_ID: &str = "demo-client";
/// See [`DEMO_CLIENT_ID`].
pub const DEMO_CLIENT_SECRET: &str = "demo-secret";

/// One demo licence: config name, key, product, allowance, and its data (`None`: 404).
pub struct DemoLicense {
    /// `license` label.
    pub name: &'static str,
    /// Activation key the simulator knows it by.
    pub key: &'static str,
    /// Product id.
    pub product_id: u32,
    /// Configured allowance.
    pub activations_limit: Option<u64>,
    /// The `data` object, or `None` for an unknown key (404).
    pub data: Option<Value>,
}

/// The demo licences: expired, expiring in 5, 25 and 50 days, over a year, an
/// evaluation, one with several deployments, one unknown key.
pub fn demo_licenses(clock: &Clock) -> Vec<DemoLicense> {
    let now = OffsetDateTime::from(clock.now());
    let today = now.date();
    let day = |offset: i64| (today + time::Duration::days(offset)).to_string();
    let at = |offset_hours: i64| {
        (now - time::Duration::hours(offset_hours))
            .replace_nanosecond(0)
            .expect("valid")
            .format(&time::format_description::well_known::Rfc3339)
            .expect("formattable")
    };
    let generated = at(3);
    let dep = |id: &str, desc: &str, expires: i64, activated_days: i64, quantity: u32| {
        json!({"deployment_id": id, "description": desc, "expiration": day(expires),
               "activated_at": at(activated_days * 24), "quantity": quantity})
    };
    let data = |product: &str, platform: &str, kind: &str, expiry: i64, deployments: Vec<Value>| {
        json!({"license_key": "<redacted>", "note": "", "type": kind, "expiry": day(expiry),
               "product": product, "platform": platform, "generated_at": generated,
               "deployments": deployments})
    };
    vec![
        DemoLicense {
            name: "core-linux-prod",
            key: "DEMO-CORE-LINUX-0001",
            product_id: 1,
            activations_limit: Some(10),
            data: Some(data(
                "MetaDefender Core",
                "Linux",
                "PURCHASED",
                400,
                vec![
                    dep(
                        "6f1c2a9e-4b1d-4c3e-9a51-1f0e2d3c4b5a",
                        "scan-node-1",
                        400,
                        200,
                        2,
                    ),
                    dep(
                        "0b7e4d21-93c5-4f6a-8e2b-7c1d0a9f8e7d",
                        "scan-node-2",
                        400,
                        120,
                        2,
                    ),
                    dep(
                        "c3d2e1f0-aaaa-4bbb-8ccc-ddddeeeeffff",
                        "scan-node-3 (rebuilt)",
                        400,
                        3,
                        5,
                    ),
                ],
            )),
        },
        DemoLicense {
            name: "core-windows-dr",
            key: "DEMO-CORE-WIN-0002",
            product_id: 2,
            activations_limit: Some(2),
            data: Some(data(
                "MetaDefender Core",
                "Windows",
                "PURCHASED",
                50,
                vec![dep("WIN-DR-01", "disaster recovery", 50, 300, 1)],
            )),
        },
        DemoLicense {
            name: "icap-gateway",
            key: "DEMO-ICAP-0003",
            product_id: 3,
            activations_limit: Some(2),
            data: Some(data(
                "MetaDefender ICAP Server",
                "",
                "PURCHASED",
                25,
                vec![
                    dep("icap-a", "proxy A", 25, 90, 1),
                    dep("icap-b", "proxy B", 25, 90, 1),
                ],
            )),
        },
        DemoLicense {
            name: "email-gateway",
            key: "DEMO-EMAIL-0004",
            product_id: 6,
            activations_limit: None,
            data: Some(data(
                "MetaDefender Email Gateway Security",
                "",
                "PURCHASED",
                5,
                vec![dep("mail-01", "mx relay", 5, 360, 1)],
            )),
        },
        DemoLicense {
            name: "kiosk-lobby",
            key: "DEMO-KIOSK-0005",
            product_id: 9,
            activations_limit: Some(1),
            data: Some(data(
                "MetaDefender Kiosk",
                "Windows",
                "PURCHASED",
                -10,
                vec![dep("KIOSK-LOBBY", "front desk", -10, 400, 1)],
            )),
        },
        DemoLicense {
            name: "storage-trial",
            key: "DEMO-STORAGE-EVAL-0006",
            product_id: 4,
            activations_limit: Some(1),
            data: Some(data(
                "MetaDefender Storage Security",
                "",
                "EVALUATED",
                14,
                vec![],
            )),
        },
        DemoLicense {
            name: "retired-key",
            key: "DEMO-UNKNOWN-0007",
            product_id: 7,
            activations_limit: None,
            data: None,
        },
    ]
}

/// A simulator config serving the demo licences to the demo client.
pub fn demo_config(clock: &Clock) -> SimConfig {
    let mut c = SimConfig::default();
    c.clients
        .insert(DEMO_CLIENT_ID.to_string(), DEMO_CLIENT_SECRET.to_string());
    for l in demo_licenses(clock) {
        if let Some(d) = l.data {
            c.licenses.insert((l.key.to_string(), l.product_id), d);
        }
    }
    c
}

/// The most calls of `endpoint` (optionally of one client) that arrived within any
/// window of `per` (tests use it to prove the rate limits).
pub fn max_in_window(
    log: &[Seen],
    endpoint: Endpoint,
    client: Option<&str>,
    per: Duration,
) -> usize {
    let times: Vec<Instant> = log
        .iter()
        .filter(|s| {
            s.endpoint == Some(endpoint) && client.is_none_or(|c| s.client.as_deref() == Some(c))
        })
        .map(|s| s.at)
        .collect();
    let mut best = 0;
    let mut start = 0;
    for end in 0..times.len() {
        while times[end].duration_since(times[start]) >= per {
            start += 1;
        }
        best = best.max(end - start + 1);
    }
    best
}
