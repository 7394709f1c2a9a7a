//! Golden `/metrics` text: fixed answers (tests/fixtures), a fixed store and a fixed
//! clock. Also: the output does not depend on the host's timezone.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use opswat_license_exporter::clock::{Clock, from_unix};
use opswat_license_exporter::license::parse_answer;
use opswat_license_exporter::metrics::{LicenseCollector, render};
use opswat_license_exporter::store::{LicenseId, PollState, Store};
use prometheus::Registry;

const GOLDEN: &str = "tests/golden/metrics.txt";

fn fixture(name: &str, product_id: u32) -> opswat_license_exporter::license::License {
    let body = std::fs::read(format!("tests/fixtures/{name}")).unwrap();
    parse_answer(&body, product_id).unwrap().license
}

fn id(license: &str, product_id: u32) -> LicenseId {
    LicenseId {
        account: "acme".into(),
        license: license.into(),
        product_id,
    }
}

/// The store of the golden test: three answered licences, one never answered.
pub fn golden_text() -> String {
    let store = Store::new();
    let polled = PollState {
        last_attempt: Some(from_unix(NOW - 600)),
        last_success_ok: Some(true),
        last_success: Some(from_unix(NOW - 600)),
        consecutive_failures: 0,
        last_error: None,
        settled: true,
    };
    store.insert_for_test(
        id("core-linux-prod", 1),
        Some(10),
        Some(fixture("core-linux.json", 1)),
        polled.clone(),
    );
    store.insert_for_test(
        id("storage-trial", 4),
        None,
        Some(fixture("evaluation-expired.json", 4)),
        PollState {
            last_attempt: Some(from_unix(NOW - 60)),
            last_success_ok: Some(false),
            consecutive_failures: 3,
            last_error: Some("license: HTTP 503".into()),
            ..polled.clone()
        },
    );
    store.insert_for_test(
        id("****7777", 9),
        None,
        Some(fixture("perpetual-odd.json", 9)),
        polled,
    );
    store.insert_for_test(id("not-yet", 2), Some(1), None, PollState::default());
    store.set_account_for_test("acme", Duration::from_secs(3600));
    // 2026-12-03T06:00:00Z: a quarter day past midnight, so days come out fractional.
    let clock = Clock::fixed(from_unix(NOW + 6 * 3600));
    let registry = Registry::new();
    registry
        .register(Box::new(LicenseCollector::new(Arc::clone(&store), clock)))
        .unwrap();
    render(&registry)
}

#[test]
fn golden_metrics_text() {
    let text = golden_text();
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(GOLDEN, &text).unwrap();
    }
    let want = std::fs::read_to_string(GOLDEN).expect("golden file (UPDATE_GOLDEN=1 writes it)");
    assert_eq!(
        text, want,
        "the /metrics text changed; review it and run with UPDATE_GOLDEN=1"
    );
}

#[test]
fn golden_semantics() {
    let text = golden_text();
    let line = |prefix: &str| {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line {prefix}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse::<f64>()
            .unwrap()
    };
    let core = r#"{account="acme",license="core-linux-prod",product_id="1"}"#;
    // Valid through 2027-06-30: expires at 2027-07-01T00:00:00Z.
    assert_eq!(
        line(&format!("opswat_license_expiry_timestamp_seconds{core}")),
        1_814_400_000.0
    );
    assert_eq!(
        line(&format!("opswat_license_expires_in_seconds{core}")),
        1_814_400_000.0 - (NOW + 6 * 3600) as f64
    );
    // Expired through 2026-11-30 = ended 2026-12-01T00:00Z; now is 2026-12-03T06:00Z.
    let eval = r#"{account="acme",license="storage-trial",product_id="4"}"#;
    assert_eq!(
        line(&format!("opswat_license_expires_in_seconds{eval}")) / 86400.0,
        -2.25
    );
    // Duplicated deployment merged: 2 + 1, earliest expiry (valid through 2027-05-31).
    assert_eq!(line(&format!("opswat_license_activations{core}")), 4.0);
    assert_eq!(line(&format!("opswat_license_deployments{core}")), 2.0);
    assert_eq!(
        line(
            r#"opswat_license_deployment_quantity{account="acme",license="core-linux-prod",product_id="1",deployment_id="6f1c2a9e-4b1d-4c3e-9a51-1f0e2d3c4b5a"}"#
        ),
        3.0
    );
    assert_eq!(
        line(
            r#"opswat_license_deployment_expiry_timestamp_seconds{account="acme",license="core-linux-prod",product_id="1",deployment_id="6f1c2a9e-4b1d-4c3e-9a51-1f0e2d3c4b5a"}"#
        ),
        1_811_808_000.0
    );
    // +02:00 midnight is 22:00Z the day before.
    assert_eq!(
        line(
            r#"opswat_license_deployment_expiry_timestamp_seconds{account="acme",license="core-linux-prod",product_id="1",deployment_id="0b7e4d21-93c5-4f6a-8e2b-7c1d0a9f8e7d"}"#
        ),
        1_814_306_400.0
    );
    // No expiry: no expiry series at all; an unreadable date drops only that field.
    assert!(
        !text.contains(
            r#"opswat_license_expiry_timestamp_seconds{account="acme",license="****7777""#
        )
    );
    assert!(!text.contains(
        r#"opswat_license_deployment_expiry_timestamp_seconds{account="acme",license="****7777""#
    ));
    assert!(text.contains(r#"opswat_license_deployment_info{account="acme",license="****7777",product_id="9",deployment_id="KIOSK \"LOBBY\"",description="front desk\nline 2"} 1"#));
    // Product from the id table when the answer has none.
    assert!(text.contains(r#"opswat_license_info{account="acme",license="storage-trial",product_id="4",product="MetaDefender Storage Security",platform="",license_type="evaluated"} 1"#));
    // A failed poll keeps the data and says so.
    assert_eq!(line(&format!("opswat_license_poll_success{eval}")), 0.0);
    assert_eq!(
        line(&format!("opswat_license_poll_consecutive_failures{eval}")),
        3.0
    );
    // Never polled: only what the config knows.
    let never: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(r#"license="not-yet""#))
        .collect();
    assert_eq!(
        never,
        [
            r#"opswat_license_activations_limit{account="acme",license="not-yet",product_id="2"} 1"#,
            r#"opswat_license_poll_consecutive_failures{account="acme",license="not-yet",product_id="2"} 0"#,
        ]
    );
}

#[test]
fn same_output_in_any_timezone() {
    let exe = std::env::current_exe().unwrap();
    for tz in ["Asia/Tokyo", "America/Los_Angeles", "UTC"] {
        let out = std::process::Command::new(&exe)
            .args(["golden_metrics_text", "--exact", "--test-threads=1"])
            .env("TZ", tz)
            .env_remove("UPDATE_GOLDEN")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "TZ={tz}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("1 passed"), "TZ={tz}: {stdout}");
    }
}
