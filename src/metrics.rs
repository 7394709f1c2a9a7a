//! Prometheus side: licence metrics rendered from the store at scrape time, plus the
//! exporter's own telemetry (API calls, build, config reloads).

use std::sync::Arc;
use std::time::Duration;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Gauge, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};

use crate::clock::{Clock, unix_seconds};
use crate::portal::{Endpoint, RequestObserver};
use crate::store::{LicenseId, Store};

/// The Content-Type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

const CACHED: &str = "(cached: from the last poll of the portal, not fetched at scrape time)";

/// Every licence family: name, help, extra labels beyond account/license/product_id.
const FAMILIES: &[(&str, &str, &[&str])] = &[
    (
        "opswat_license_info",
        "Licence facts, value 1: product name, platform and type (purchased/evaluated)",
        &["product", "platform", "license_type"],
    ),
    (
        "opswat_license_expiry_timestamp_seconds",
        "When the licence expires, Unix seconds; absent when it never expires",
        &[],
    ),
    (
        "opswat_license_expires_in_seconds",
        "Seconds until the licence expires, computed at scrape time; negative once expired",
        &[],
    ),
    (
        "opswat_license_deployments",
        "Number of deployments of the licence",
        &[],
    ),
    (
        "opswat_license_activations",
        "Activations in use: the sum of deployment quantities",
        &[],
    ),
    (
        "opswat_license_activations_limit",
        "Purchased activation allowance, as configured (not reported by the API)",
        &[],
    ),
    (
        "opswat_license_data_generated_timestamp_seconds",
        "When the portal generated the licence data (it may lag up to 24h), Unix seconds",
        &[],
    ),
    (
        "opswat_license_deployment_quantity",
        "Activations this deployment holds",
        &["deployment_id"],
    ),
    (
        "opswat_license_deployment_expiry_timestamp_seconds",
        "When this deployment's activation expires, Unix seconds",
        &["deployment_id"],
    ),
    (
        "opswat_license_deployment_expires_in_seconds",
        "Seconds until this deployment expires, computed at scrape time; negative once expired",
        &["deployment_id"],
    ),
    (
        "opswat_license_deployment_activated_timestamp_seconds",
        "When this deployment was activated, Unix seconds",
        &["deployment_id"],
    ),
    (
        "opswat_license_deployment_info",
        "Deployment facts, value 1: the free-text description",
        &["deployment_id", "description"],
    ),
    (
        "opswat_license_poll_success",
        "1 if the last poll of this licence succeeded, 0 if it failed; absent before the first poll",
        &[],
    ),
    (
        "opswat_license_last_poll_success_timestamp_seconds",
        "When a poll of this licence last succeeded, Unix seconds",
        &[],
    ),
    (
        "opswat_license_poll_consecutive_failures",
        "Failed polls of this licence since its last success",
        &[],
    ),
];
const ACCOUNT_FAMILY: (&str, &str) = (
    "opswat_exporter_poll_interval_seconds",
    "Refresh interval in use for the account's licences: poll_interval, stretched if the rate budget requires",
);

/// Renders the store's licences as metrics at scrape time, so a series cannot outlive
/// its licence or deployment.
pub struct LicenseCollector {
    store: Arc<Store>,
    clock: Clock,
    descs: Vec<Desc>,
}

impl LicenseCollector {
    /// A collector over `store`, reading time from `clock` for the `expires_in` gauges.
    pub fn new(store: Arc<Store>, clock: Clock) -> Self {
        let mut descs: Vec<Desc> = FAMILIES
            .iter()
            .map(|(name, help, extra)| {
                let mut labels = vec![
                    "account".to_string(),
                    "license".to_string(),
                    "product_id".to_string(),
                ];
                labels.extend(extra.iter().map(|s| s.to_string()));
                Desc::new(
                    name.to_string(),
                    format!("{help} {CACHED}"),
                    labels,
                    Default::default(),
                )
                .expect("valid desc")
            })
            .collect();
        descs.push(
            Desc::new(
                ACCOUNT_FAMILY.0.to_string(),
                ACCOUNT_FAMILY.1.to_string(),
                vec!["account".to_string()],
                Default::default(),
            )
            .expect("valid desc"),
        );
        LicenseCollector {
            store,
            clock,
            descs,
        }
    }
}

struct Families(Vec<MetricFamily>);

impl Families {
    fn push(&mut self, family: usize, labels: &[(&str, &str)], value: f64) {
        let mut pairs = Vec::with_capacity(labels.len());
        for (name, value) in labels {
            let mut lp = LabelPair::default();
            lp.set_name(name.to_string());
            lp.set_value(value.to_string());
            pairs.push(lp);
        }
        let mut g = Gauge::default();
        g.set_value(value);
        let mut m = Metric::default();
        m.set_label(pairs);
        m.set_gauge(g);
        self.0[family].mut_metric().push(m);
    }
}

/// Indexes into FAMILIES.
mod f {
    pub const INFO: usize = 0;
    pub const EXPIRY: usize = 1;
    pub const EXPIRES_IN: usize = 2;
    pub const DEPLOYMENTS: usize = 3;
    pub const ACTIVATIONS: usize = 4;
    pub const LIMIT: usize = 5;
    pub const GENERATED: usize = 6;
    pub const DEP_QUANTITY: usize = 7;
    pub const DEP_EXPIRY: usize = 8;
    pub const DEP_EXPIRES_IN: usize = 9;
    pub const DEP_ACTIVATED: usize = 10;
    pub const DEP_INFO: usize = 11;
    pub const POLL_SUCCESS: usize = 12;
    pub const LAST_SUCCESS: usize = 13;
    pub const FAILURES: usize = 14;
    pub const ACCOUNT_INTERVAL: usize = 15;
}

impl Collector for LicenseCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let now = self.clock.now_unix();
        let mut out = Families(
            self.descs
                .iter()
                .map(|d| {
                    let mut mf = MetricFamily::default();
                    mf.set_name(d.fq_name.clone());
                    mf.set_help(d.help.clone());
                    mf.set_field_type(MetricType::GAUGE);
                    mf
                })
                .collect(),
        );
        self.store.read(|inner| {
            for (id, entry) in &inner.licenses {
                let pid = id.product_id.to_string();
                let base = base_labels(id, &pid);
                if let Some(limit) = entry.activations_limit {
                    out.push(f::LIMIT, &base, limit as f64);
                }
                let poll = &entry.poll;
                if let Some(ok) = poll.last_success_ok {
                    out.push(f::POLL_SUCCESS, &base, if ok { 1.0 } else { 0.0 });
                }
                if let Some(t) = poll.last_success {
                    out.push(f::LAST_SUCCESS, &base, unix_seconds(t));
                }
                out.push(f::FAILURES, &base, poll.consecutive_failures as f64);

                let Some(l) = &entry.data else { continue };
                let mut info = base.to_vec();
                info.extend([
                    ("product", l.product.as_str()),
                    ("platform", l.platform.as_str()),
                    ("license_type", l.license_type.as_str()),
                ]);
                out.push(f::INFO, &info, 1.0);
                if let Some(t) = l.expiry {
                    let t = unix_seconds(t);
                    out.push(f::EXPIRY, &base, t);
                    out.push(f::EXPIRES_IN, &base, t - now);
                }
                if let Some(t) = l.generated_at {
                    out.push(f::GENERATED, &base, unix_seconds(t));
                }
                if let (Some(n), Some(a)) = (l.deployment_count(), l.activations()) {
                    out.push(f::DEPLOYMENTS, &base, n as f64);
                    out.push(f::ACTIVATIONS, &base, a);
                }
                for d in l.deployments.iter().flatten() {
                    let mut labels = base.to_vec();
                    labels.push(("deployment_id", d.id.as_str()));
                    if let Some(q) = d.quantity {
                        out.push(f::DEP_QUANTITY, &labels, q);
                    }
                    if let Some(t) = d.expiry {
                        let t = unix_seconds(t);
                        out.push(f::DEP_EXPIRY, &labels, t);
                        out.push(f::DEP_EXPIRES_IN, &labels, t - now);
                    }
                    if let Some(t) = d.activated_at {
                        out.push(f::DEP_ACTIVATED, &labels, unix_seconds(t));
                    }
                    labels.push(("description", d.description.as_str()));
                    out.push(f::DEP_INFO, &labels, 1.0);
                }
            }
            for (name, status) in &inner.accounts {
                out.push(
                    f::ACCOUNT_INTERVAL,
                    &[("account", name.as_str())],
                    status.effective_interval.as_secs_f64(),
                );
            }
        });
        out.0
            .into_iter()
            .filter(|mf| !mf.get_metric().is_empty())
            .collect()
    }
}

fn base_labels<'a>(id: &'a LicenseId, pid: &'a str) -> [(&'static str, &'a str); 3] {
    [
        ("account", id.account.as_str()),
        ("license", id.license.as_str()),
        ("product_id", pid),
    ]
}

/// The exporter's own counters and gauges; also the portal client's observer.
pub struct Telemetry {
    requests: IntCounterVec,
    duration: HistogramVec,
    invalid_answers: IntCounterVec,
    dropped_fields: IntCounterVec,
    reload_ok: prometheus::Gauge,
    reload_timestamp: prometheus::Gauge,
    /// Label sets in use per vec, so a removed account's series can be deleted.
    seen: std::sync::Mutex<std::collections::BTreeSet<(Vec_, [String; 3])>>,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Vec_ {
    Requests,
    Duration,
    Invalid,
    Dropped,
}

impl Telemetry {
    /// Creates and registers the telemetry metrics and the build info in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Arc<Self>> {
        let requests = IntCounterVec::new(
            Opts::new(
                "opswat_portal_requests_total",
                "Calls to the My OPSWAT API by endpoint and result: HTTP status, transport or timeout",
            ),
            &["account", "endpoint", "code"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "opswat_portal_request_duration_seconds",
                "Latency of calls to the My OPSWAT API, body included",
            )
            .buckets(vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]),
            &["account", "endpoint"],
        )?;
        let invalid_answers = IntCounterVec::new(
            Opts::new(
                "opswat_portal_invalid_answers_total",
                "API answers that could not be used as a whole (not JSON, success=false, no data, too large)",
            ),
            &["account", "endpoint", "reason"],
        )?;
        let dropped_fields = IntCounterVec::new(
            Opts::new(
                "opswat_portal_dropped_fields_total",
                "Fields of licence answers that were dropped because they could not be read for sure (for example an ambiguous date)",
            ),
            &["account", "field"],
        )?;
        let build = prometheus::Gauge::with_opts(
            Opts::new(
                "opswat_exporter_build_info",
                "Build of the exporter, value 1",
            )
            .const_label("version", env!("CARGO_PKG_VERSION"))
            .const_label("revision", env!("OLE_GIT_REVISION")),
        )?;
        build.set(1.0);
        let reload_ok = prometheus::Gauge::new(
            "opswat_exporter_config_last_reload_successful",
            "1 if the last attempt to load the config succeeded, 0 after a rejected reload",
        )?;
        let reload_timestamp = prometheus::Gauge::new(
            "opswat_exporter_config_last_reload_success_timestamp_seconds",
            "When the config was last loaded successfully, Unix seconds",
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(invalid_answers.clone()))?;
        registry.register(Box::new(dropped_fields.clone()))?;
        registry.register(Box::new(build))?;
        registry.register(Box::new(reload_ok.clone()))?;
        registry.register(Box::new(reload_timestamp.clone()))?;
        Ok(Arc::new(Telemetry {
            requests,
            duration,
            invalid_answers,
            dropped_fields,
            reload_ok,
            reload_timestamp,
            seen: Default::default(),
        }))
    }

    /// Records the outcome of loading the config.
    pub fn config_loaded(&self, ok: bool, at: f64) {
        self.reload_ok.set(if ok { 1.0 } else { 0.0 });
        if ok {
            self.reload_timestamp.set(at);
        }
    }

    /// Calls so far for one label set (tests).
    pub fn request_count(&self, account: &str, endpoint: Endpoint, code: &str) -> u64 {
        self.requests
            .with_label_values(&[account, endpoint.as_str(), code])
            .get()
    }

    /// Makes the counters of `account` exist at zero, so `increase()` sees the first call.
    pub fn init_account(&self, account: &str) {
        for endpoint in [Endpoint::Token, Endpoint::License] {
            let e = endpoint.as_str();
            self.duration.with_label_values(&[account, e]);
            self.note(Vec_::Duration, [account, e, ""]);
            for code in ["200", "429"] {
                self.requests.with_label_values(&[account, e, code]);
                self.note(Vec_::Requests, [account, e, code]);
            }
            for reason in ["not_json", "success_false", "no_data", "too_large"] {
                self.invalid_answers
                    .with_label_values(&[account, e, reason]);
                self.note(Vec_::Invalid, [account, e, reason]);
            }
        }
        for field in [
            "expiry",
            "generated_at",
            "deployments",
            "deployments.expiration",
            "deployments.quantity",
        ] {
            self.dropped_fields.with_label_values(&[account, field]);
            self.note(Vec_::Dropped, [account, field, ""]);
        }
    }

    fn note(&self, which: Vec_, labels: [&str; 3]) {
        let key = (which, labels.map(str::to_string));
        let mut seen = self.seen.lock().expect("telemetry lock");
        if !seen.contains(&key) {
            seen.insert(key);
        }
    }

    /// Forgets every series of an account that is no longer configured.
    pub fn remove_account(&self, account: &str) {
        let mut seen = self.seen.lock().expect("telemetry lock");
        seen.retain(|(which, l)| {
            if l[0] != account {
                return true;
            }
            let _ = match which {
                Vec_::Requests => self.requests.remove_label_values(&[&l[0], &l[1], &l[2]]),
                Vec_::Duration => self.duration.remove_label_values(&[&l[0], &l[1]]),
                Vec_::Invalid => self
                    .invalid_answers
                    .remove_label_values(&[&l[0], &l[1], &l[2]]),
                Vec_::Dropped => self.dropped_fields.remove_label_values(&[&l[0], &l[1]]),
            };
            false
        });
    }
}

impl RequestObserver for Telemetry {
    fn request(&self, account: &str, endpoint: Endpoint, code: &str, duration: Duration) {
        self.note(Vec_::Requests, [account, endpoint.as_str(), code]);
        self.note(Vec_::Duration, [account, endpoint.as_str(), ""]);
        self.requests
            .with_label_values(&[account, endpoint.as_str(), code])
            .inc();
        self.duration
            .with_label_values(&[account, endpoint.as_str()])
            .observe(duration.as_secs_f64());
    }

    fn invalid_answer(&self, account: &str, endpoint: Endpoint, reason: &str) {
        self.note(Vec_::Invalid, [account, endpoint.as_str(), reason]);
        self.invalid_answers
            .with_label_values(&[account, endpoint.as_str(), reason])
            .inc();
    }

    fn dropped_field(&self, account: &str, field: &str) {
        self.note(Vec_::Dropped, [account, field, ""]);
        self.dropped_fields
            .with_label_values(&[account, field])
            .inc();
    }
}

/// The exporter's registry: licences, telemetry and (on Linux) the process collector.
pub struct Metrics {
    /// Everything `/metrics` serves.
    pub registry: Registry,
    /// The telemetry part (observer of the portal clients).
    pub telemetry: Arc<Telemetry>,
}

impl Metrics {
    /// Builds the registry over `store`.
    pub fn new(store: Arc<Store>, clock: Clock, with_process: bool) -> prometheus::Result<Self> {
        let registry = Registry::new();
        registry.register(Box::new(LicenseCollector::new(store, clock)))?;
        let telemetry = Telemetry::register(&registry)?;
        if with_process {
            #[cfg(target_os = "linux")]
            registry.register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))?;
        }
        Ok(Metrics {
            registry,
            telemetry,
        })
    }

    /// The text exposition of everything.
    pub fn render(&self) -> String {
        render(&self.registry)
    }
}

/// The text exposition of a registry.
pub fn render(registry: &Registry) -> String {
    let mut buf = Vec::with_capacity(16 * 1024);
    TextEncoder::new()
        .encode(&registry.gather(), &mut buf)
        .expect("text encoding of gauges cannot fail");
    String::from_utf8(buf).expect("the text format is UTF-8")
}
