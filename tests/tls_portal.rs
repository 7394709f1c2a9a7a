//! `portal.ca_file`: a portal behind a TLS-intercepting proxy presents a certificate from
//! a private CA. With the CA configured the exporter trusts it; without, it refuses.

mod common;

use std::path::Path;

use common::*;
use opswat_license_exporter::clock::Clock;
use opswat_license_exporter::config::Config;
use opswat_license_exporter::portal::Endpoint;
use opswat_license_exporter::sim::SimPortal;
use opswat_license_exporter::webconfig::WebConfig;

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/tls/{name}", env!("CARGO_MANIFEST_DIR"))
}

// Real clock: TLS handshakes are CPU work the paused clock would run past.
#[tokio::test]
async fn a_private_ca_is_trusted_only_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let web = dir.path().join("web.yml");
    std::fs::write(
        &web,
        format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\n",
            fixture("server.crt"),
            fixture("server.key")
        ),
    )
    .unwrap();
    let tls = WebConfig::load(&web).unwrap().tls.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let sim = SimPortal::start_tls(listener, sim_config(&[("id", "s", "A", 1)]), tls).unwrap();

    let yaml = |ca: &str| {
        format!(
            "accounts:\n  - name: acme\n    client_id: id\n    client_secret: s\n    portal: {{ base_url: \"https://127.0.0.1:{port}\"{ca} }}\n    licenses: [{{ name: one, activation_key: {}, product_id: 1 }}]\n",
            key("A", 0)
        )
    };
    let parse = |text: String| {
        Config::parse(&text, Path::new("t.yaml"), Path::new("/"), &|_| None).unwrap()
    };

    let trusted = parse(yaml(&format!(", ca_file: {}", fixture("ca.crt"))));
    let mut rig = rig(&trusted, Clock::system());
    let failures = rig.workers[0].poll_all_once().await;
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(sim.log().iter().filter(|s| s.status == 200).count(), 2);

    let untrusted = parse(yaml(""));
    let mut rig = common::rig(&untrusted, Clock::system());
    let failures = rig.workers[0].poll_all_once().await;
    assert_eq!(failures.len(), 1);
    let message = failures[0].1.to_string();
    assert!(message.to_lowercase().contains("certificate"), "{message}");
    assert_eq!(
        rig.metrics
            .telemetry
            .request_count("acme", Endpoint::Token, "transport"),
        1
    );
}
