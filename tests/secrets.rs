//! A canary secret (client id and secret, activation keys) appears nowhere: logs at trace
//! level (with the exporter's own log filter), /metrics, the landing page, error messages.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use opswat_license_exporter::clock::Clock;
use opswat_license_exporter::config::Account;
use opswat_license_exporter::logging::{self, LogLevel};
use opswat_license_exporter::portal::Endpoint;
use opswat_license_exporter::secret::Secret;
use opswat_license_exporter::sim::{Fault, SimConfig};

const CANARY: &str = "c4n4ry";

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn canary_account(name: &str, base_url: &str, n: usize) -> Account {
    let mut a = account(name, ("id", "s"), base_url, &format!("{CANARY}-{name}"), n);
    a.client_id = Secret::new(format!("{CANARY}-client-id"));
    a.client_secret = Secret::new(format!("{CANARY}-client-secret"));
    // Default licence names: the masked key.
    for l in &mut a.licenses {
        l.name = l.activation_key.masked();
    }
    a
}

#[tokio::test(start_paused = true)]
async fn canary_never_leaves() {
    let _ = tracing_log::LogTracer::init();
    let buf = Buffer::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(logging::filter(LogLevel::Trace))
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let mut sc = SimConfig::default();
    sc.clients.insert(
        format!("{CANARY}-client-id"),
        format!("{CANARY}-client-secret"),
    );
    for i in 0..8 {
        sc.licenses.insert(
            (key(&format!("{CANARY}-ok"), i), 1),
            license_data("2027-06-30", &[("d", 1)]),
        );
    }
    let sim = sim(sc).await;
    let ok_key = key(&format!("{CANARY}-ok"), 0);
    // Every failure path: the portal echoing the key, 500s, HTML, timeouts, 404s.
    sim.push_key_fault(
        &key(&format!("{CANARY}-ok"), 1),
        Fault::Status {
            status: 400,
            body: format!(
                r#"{{"success":false,"error":{{"message":"bad activation_key {}"}}}}"#,
                key(&format!("{CANARY}-ok"), 1)
            ),
            headers: vec![],
        },
    );
    sim.push_key_fault(
        &key(&format!("{CANARY}-ok"), 2),
        Fault::ok_body("<html>502 Bad Gateway</html>"),
    );
    sim.push_key_fault(&key(&format!("{CANARY}-ok"), 3), Fault::Hang);
    sim.push_key_fault(&key(&format!("{CANARY}-ok"), 4), Fault::status(500));
    sim.push_key_fault(&key(&format!("{CANARY}-ok"), 5), Fault::RevokeTokens);
    sim.push_key_fault(
        &key(&format!("{CANARY}-ok"), 6),
        Fault::Status {
            status: 429,
            body: String::new(),
            headers: vec![("retry-after".into(), "30".into())],
        },
    );
    sim.push_key_fault(
        &key(&format!("{CANARY}-ok"), 7),
        Fault::ok_body(r#"{"success":true,"data":{"expiry":"#),
    );

    let mut good = canary_account("ok", &sim.base_url(), 8);
    good.portal.timeout = Duration::from_secs(5);
    // Unknown keys (404), a refused connection, a rejected client secret.
    let unknown = canary_account("unknown", &sim.base_url(), 2);
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed_url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let refused = canary_account("refused", &closed_url, 1);
    let mut rejected = canary_account("rejected", &sim.base_url(), 1);
    rejected.client_secret = Secret::new(format!("{CANARY}-wrong-secret"));
    let cfg = config(
        vec![good, unknown, refused, rejected],
        Duration::from_secs(600),
    );

    let mut rig = rig(&cfg, Clock::tokio_anchored(now()));
    let mut errors = Vec::new();
    for w in &mut rig.workers {
        for (_, e) in w.poll_all_once().await {
            errors.push(e.to_string());
        }
    }
    run_for(&mut rig, Duration::from_secs(1800)).await;

    // The paths were really taken.
    let log = sim.log();
    assert!(log.iter().any(|s| s.status == 404));
    assert!(log.iter().any(|s| s.status == 400));
    assert!(log.iter().any(|s| s.status == 429));
    assert!(log.iter().any(|s| s.status == 0), "no hang");
    assert!(
        log.iter()
            .any(|s| s.endpoint == Some(Endpoint::Token) && s.status == 401)
    );
    assert!(
        rig.metrics
            .telemetry
            .request_count("refused", Endpoint::Token, "transport")
            > 0
    );
    assert!(
        rig.metrics
            .telemetry
            .request_count("ok", Endpoint::License, "timeout")
            > 0
    );
    assert!(errors.len() >= 6, "{errors:?}");
    assert!(
        log.iter()
            .any(|s| s.activation_key.as_deref() == Some(ok_key.as_str()) && s.status == 200)
    );

    let logs = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("licence poll failed"),
        "no logs captured:\n{logs}"
    );
    assert!(logs.lines().count() > 10);
    let metrics = rig.metrics.render();
    let last_errors: String = rig.store.read(|i| {
        i.licenses
            .values()
            .filter_map(|e| e.poll.last_error.clone())
            .collect::<Vec<_>>()
            .join("\n")
    });
    let errors_text = errors.join("\n");
    assert!(
        errors_text.contains("bad activation_key ****"),
        "{errors_text}"
    );
    for (what, text) in [
        ("logs", &logs),
        ("metrics", &metrics),
        ("errors", &errors_text),
        ("store", &last_errors),
    ] {
        assert!(
            !text.contains(CANARY),
            "the canary leaked into {what}:\n{text}"
        );
    }
}
