//! Test helpers: a simulated portal on loopback and exporter parts pointed at it.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use opswat_license_exporter::app::Options;
use opswat_license_exporter::clock::{Clock, from_unix};
use opswat_license_exporter::config::{Account, Config, LicenseConfig, PortalSettings};
use opswat_license_exporter::metrics::Metrics;
use opswat_license_exporter::portal::{PortalClient, ProxyChoice};
use opswat_license_exporter::scheduler::AccountWorker;
use opswat_license_exporter::secret::Secret;
use opswat_license_exporter::sim::{SimConfig, SimPortal};
use opswat_license_exporter::store::Store;
use serde_json::{Value, json};

/// 2026-12-03T00:00:00Z: the fixed "now" of the tests.
pub const NOW: i64 = 1_796_256_000;

pub fn now() -> SystemTime {
    from_unix(NOW)
}

/// A licence answer's `data` object.
pub fn license_data(expiry: &str, deployments: &[(&str, u32)]) -> Value {
    let deps: Vec<Value> = deployments
        .iter()
        .map(|(id, q)| {
            json!({"deployment_id": id, "description": format!("host {id}"), "expiration": expiry,
                   "activated_at": "2026-01-15T08:30:00Z", "quantity": q})
        })
        .collect();
    json!({"license_key": "ignored", "type": "PURCHASED", "expiry": expiry,
           "product": "MetaDefender Core", "platform": "Linux",
           "generated_at": "2026-12-02T21:00:00Z", "deployments": deps})
}

/// A key per licence: `{prefix}-KEY-{i:04}`.
pub fn key(prefix: &str, i: usize) -> String {
    format!("{prefix}-KEY-{i:04}")
}

/// A simulator serving `n` licences (product 1) for each `(client_id, secret, prefix)`.
pub fn sim_config(clients: &[(&str, &str, &str, usize)]) -> SimConfig {
    let mut c = SimConfig::default();
    for (id, secret, prefix, n) in clients {
        c.clients.insert(id.to_string(), secret.to_string());
        for i in 0..*n {
            c.licenses.insert(
                (key(prefix, i), 1),
                license_data("2027-06-30", &[("dep-a", 1)]),
            );
        }
    }
    c
}

/// An account polling `n` licences of `prefix` at `base_url`.
pub fn account(
    name: &str,
    client: (&str, &str),
    base_url: &str,
    prefix: &str,
    n: usize,
) -> Account {
    Account {
        name: name.to_string(),
        client_id: Secret::new(client.0),
        client_secret: Secret::new(client.1),
        portal: PortalSettings {
            base_url: base_url.parse().unwrap(),
            timeout: Duration::from_secs(30),
            ..PortalSettings::default()
        },
        licenses: (0..n)
            .map(|i| LicenseConfig {
                name: format!("lic-{i:04}"),
                activation_key: Secret::new(key(prefix, i)),
                product_id: 1,
                activations_limit: None,
            })
            .collect(),
    }
}

pub fn config(accounts: Vec<Account>, poll_interval: Duration) -> Config {
    Config {
        path: "test.yaml".into(),
        listen_address: "127.0.0.1:0".parse().unwrap(),
        poll_interval,
        accounts,
        warnings: vec![],
    }
}

pub fn options(clock: Clock) -> Options {
    Options {
        proxy: ProxyChoice::Direct,
        clock,
        process_metrics: false,
    }
}

/// Store, metrics and one worker per account, not yet running.
pub struct Rig {
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    pub workers: Vec<AccountWorker>,
    pub clock: Clock,
}

pub fn rig(config: &Config, clock: Clock) -> Rig {
    let store = Store::new();
    store.sync(config);
    let metrics = Arc::new(Metrics::new(Arc::clone(&store), clock.clone(), false).unwrap());
    let workers = config
        .accounts
        .iter()
        .map(|a| {
            let client = PortalClient::new(
                a,
                &ProxyChoice::Direct,
                metrics.telemetry.clone(),
                clock.clone(),
            )
            .unwrap();
            AccountWorker::new(
                a,
                config.poll_interval,
                Arc::new(client),
                Arc::clone(&store),
                clock.clone(),
            )
        })
        .collect();
    Rig {
        store,
        metrics,
        workers,
        clock,
    }
}

/// Runs every worker of `rig` for `d` of (virtual) time.
pub async fn run_for(rig: &mut Rig, d: Duration) {
    let workers = std::mem::take(&mut rig.workers);
    let handles: Vec<_> = workers
        .into_iter()
        .map(|w| tokio::spawn(w.run(tokio::time::sleep(d))))
        .collect();
    for h in handles {
        rig.workers.push(h.await.unwrap());
    }
}

/// A loopback port nothing listens on (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub async fn sim(config: SimConfig) -> SimPortal {
    SimPortal::bind(config).await.unwrap()
}
