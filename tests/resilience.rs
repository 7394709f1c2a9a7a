//! Every failure the portal can produce is survived, visible, and loses nothing.
//! Paused tokio clock; the simulated portal on loopback.

mod common;

use std::time::Duration;

use common::*;
use opswat_license_exporter::clock::Clock;
use opswat_license_exporter::portal::Endpoint;
use opswat_license_exporter::sim::{Fault, RetryAfterStyle, Seen, SimPortal};
use tokio::time::Instant;

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

fn licence_calls(log: &[Seen]) -> Vec<&Seen> {
    log.iter()
        .filter(|s| s.endpoint == Some(Endpoint::License))
        .collect()
}

fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    text.lines().find(|l| l.starts_with(prefix))
}

#[tokio::test(start_paused = true)]
async fn throttling_holds_the_whole_endpoint_for_as_long_as_told() {
    for (style, told) in [
        (RetryAfterStyle::Seconds, Some(120)),
        (RetryAfterStyle::HttpDate, Some(120)),
        (RetryAfterStyle::ResetIn, Some(120)),
        (RetryAfterStyle::RateLimitReset, Some(120)),
        (RetryAfterStyle::None, None),
    ] {
        let sim = sim(sim_config(&[("id", "s", "A", 5)])).await;
        let header: Vec<(String, String)> = match (style, told) {
            (RetryAfterStyle::Seconds, Some(s)) => vec![("retry-after".into(), s.to_string())],
            (RetryAfterStyle::HttpDate, Some(s)) => vec![(
                "retry-after".into(),
                httpdate::fmt_http_date(now() + Duration::from_secs(s)),
            )],
            (RetryAfterStyle::ResetIn, Some(s)) => {
                vec![("x-ratelimit-reset-in".into(), s.to_string())]
            }
            (RetryAfterStyle::RateLimitReset, Some(s)) => {
                vec![("ratelimit-reset".into(), s.to_string())]
            }
            _ => vec![],
        };
        // The third licence's call is throttled.
        sim.push_key_fault(
            &key("A", 2),
            Fault::Status {
                status: 429,
                body: "{}".into(),
                headers: header,
            },
        );
        let cfg = config(
            vec![account("acme", ("id", "s"), &sim.base_url(), "A", 5)],
            HOUR,
        );
        let mut rig = rig(&cfg, Clock::tokio_anchored(now()));
        run_for(&mut rig, 10 * MINUTE).await;
        let log = sim.log();
        let calls = licence_calls(&log);
        let throttled_at = calls
            .iter()
            .find(|s| s.status == 429)
            .expect("no 429 served")
            .at;
        let next = calls
            .iter()
            .find(|s| s.at > throttled_at)
            .expect("never resumed")
            .at;
        let waited = next - throttled_at;
        let expected = Duration::from_secs(told.unwrap_or(60));
        assert!(
            waited >= expected,
            "{style:?}: resumed after {waited:?}, told {expected:?}"
        );
        assert!(
            waited <= expected + Duration::from_secs(2),
            "{style:?}: waited {waited:?}"
        );
        // All five were polled in the end, with one 429 only.
        assert_eq!(calls.iter().filter(|s| s.status == 429).count(), 1);
        let ok: std::collections::HashSet<_> = calls
            .iter()
            .filter(|s| s.status == 200)
            .map(|s| s.activation_key.clone())
            .collect();
        assert_eq!(ok.len(), 5, "{style:?}");
        assert_eq!(
            rig.metrics
                .telemetry
                .request_count("acme", Endpoint::License, "429"),
            1
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_token_revoked_early_is_renewed_once_within_budget() {
    let sim = sim(sim_config(&[("id", "s", "A", 3)])).await;
    let cfg = config(
        vec![account("acme", ("id", "s"), &sim.base_url(), "A", 3)],
        HOUR,
    );
    let mut rig = rig(&cfg, Clock::tokio_anchored(now()));
    sim.push_key_fault(&key("A", 1), Fault::RevokeTokens);
    let failures = rig.workers[0].poll_all_once().await;
    assert!(failures.is_empty(), "{failures:?}");
    let log = sim.log();
    let statuses: Vec<(Option<Endpoint>, u16)> =
        log.iter().map(|s| (s.endpoint, s.status)).collect();
    assert_eq!(
        statuses,
        [
            (Some(Endpoint::Token), 200),
            (Some(Endpoint::License), 200),
            (Some(Endpoint::License), 401),
            (Some(Endpoint::Token), 200),
            (Some(Endpoint::License), 200),
            (Some(Endpoint::License), 200),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn odd_answers_keep_the_last_good_data_and_are_counted() {
    let faults: Vec<(&str, Fault, &str, Option<&str>)> = vec![
        ("500", Fault::status(500), "500", None),
        (
            "502 html",
            Fault::Status {
                status: 502,
                body: "<html><body>Bad Gateway</body></html>".into(),
                headers: vec![],
            },
            "502",
            None,
        ),
        ("503", Fault::status(503), "503", None),
        ("empty body", Fault::ok_body(""), "200", Some("not_json")),
        (
            "html with 200",
            Fault::ok_body("<!DOCTYPE html><p>maintenance</p>"),
            "200",
            Some("not_json"),
        ),
        (
            "truncated",
            Fault::ok_body(r#"{"success":true,"data":{"expiry":"2027-"#),
            "200",
            Some("not_json"),
        ),
        (
            "success false",
            Fault::ok_body(r#"{"success":false,"error":"internal"}"#),
            "200",
            Some("success_false"),
        ),
        (
            "no data",
            Fault::ok_body(r#"{"success":true}"#),
            "200",
            Some("no_data"),
        ),
        (
            "data of wrong type",
            Fault::ok_body(r#"{"success":true,"data":[1,2]}"#),
            "200",
            Some("no_data"),
        ),
        (
            "huge",
            Fault::HugeBody(64 * 1024 * 1024),
            "200",
            Some("too_large"),
        ),
    ];
    for (what, fault, code, reason) in faults {
        let sim = sim(sim_config(&[("id", "s", "A", 1)])).await;
        let cfg = config(
            vec![account("acme", ("id", "s"), &sim.base_url(), "A", 1)],
            HOUR,
        );
        let mut rig = rig(&cfg, Clock::tokio_anchored(now()));
        assert!(rig.workers[0].poll_all_once().await.is_empty());
        let good = rig.metrics.render();
        let expiry = line(&good, "opswat_license_expiry_timestamp_seconds{")
            .unwrap()
            .to_string();
        let deployments = line(&good, "opswat_license_deployments{")
            .unwrap()
            .to_string();

        sim.push_fault(Endpoint::License, fault);
        let failures = rig.workers[0].poll_all_once().await;
        assert_eq!(failures.len(), 1, "{what}");
        let text = rig.metrics.render();
        assert!(text.contains(&expiry), "{what}: expiry lost\n{text}");
        assert!(text.contains(&deployments), "{what}: deployments lost");
        assert!(
            text.contains(
                r#"opswat_license_poll_success{account="acme",license="lic-0000",product_id="1"} 0"#
            ),
            "{what}"
        );
        assert!(text.contains(r#"opswat_license_poll_consecutive_failures{account="acme",license="lic-0000",product_id="1"} 1"#), "{what}");
        let want = format!(
            r#"opswat_portal_requests_total{{account="acme",code="{code}",endpoint="license"}}"#
        );
        assert!(
            line(&text, &want).is_some_and(|l| l.ends_with(if code == "200" {
                " 2"
            } else {
                " 1"
            })),
            "{what}: {want}\n{text}"
        );
        if let Some(reason) = reason {
            let want = format!(
                r#"opswat_portal_invalid_answers_total{{account="acme",endpoint="license",reason="{reason}"}} 1"#
            );
            assert!(text.contains(&want), "{what}: {want}");
        }
        // And it recovers on the next poll.
        assert!(rig.workers[0].poll_all_once().await.is_empty(), "{what}");
        assert!(rig.metrics.render().contains(
            r#"opswat_license_poll_success{account="acme",license="lic-0000",product_id="1"} 1"#
        ));
    }
}

#[tokio::test(start_paused = true)]
async fn missing_fields_wrong_types_and_extras_are_tolerated() {
    let sim = sim(sim_config(&[("id", "s", "A", 1)])).await;
    sim.set_license(
        &key("A", 0),
        1,
        Some(serde_json::json!({
            "type": 7, "expiry": 20270630, "product": {"name": "x"},
            "deployments": [{"deployment_id": "a", "quantity": "2", "activated_at": true, "extra": [1]}],
            "brand_new_field": {"nested": [null]}
        })),
    );
    let cfg = config(
        vec![account("acme", ("id", "s"), &sim.base_url(), "A", 1)],
        HOUR,
    );
    let mut rig = rig(&cfg, Clock::tokio_anchored(now()));
    assert!(rig.workers[0].poll_all_once().await.is_empty());
    let text = rig.metrics.render();
    assert!(
        !text.contains("opswat_license_expiry_timestamp_seconds{"),
        "a numeric expiry was guessed"
    );
    assert!(
        text.contains(r#"product="MetaDefender Core""#),
        "product from the id table: {text}"
    );
    assert!(text.contains(r#"license_type="7""#));
    assert!(text.contains(r#"deployment_id="a"} 2"#));
    for field in ["expiry", "product", "deployments.activated_at"] {
        let want =
            format!(r#"opswat_portal_dropped_fields_total{{account="acme",field="{field}"}} 1"#);
        assert!(text.contains(&want), "{want}\n{text}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_hanging_portal_times_out_and_the_other_licences_go_on() {
    let sim = sim(sim_config(&[("id", "s", "A", 5)])).await;
    sim.push_key_fault(&key("A", 1), Fault::Hang);
    let cfg = config(
        vec![account("acme", ("id", "s"), &sim.base_url(), "A", 5)],
        HOUR,
    );
    let mut rig = rig(&cfg, Clock::tokio_anchored(now()));
    let start = Instant::now();
    run_for(&mut rig, 5 * MINUTE).await;
    let log = sim.log();
    let calls = licence_calls(&log);
    let hung = calls.iter().find(|s| s.status == 0).expect("no hang");
    assert_eq!(hung.activation_key.as_deref(), Some(key("A", 1).as_str()));
    // The others were polled right after the 30 s timeout, and the hung one retried.
    for i in [0, 2, 3, 4] {
        let first = calls
            .iter()
            .find(|s| s.activation_key.as_deref() == Some(key("A", i).as_str()))
            .unwrap();
        assert!(
            first.at - start <= Duration::from_secs(31),
            "licence {i} waited {:?}",
            first.at - start
        );
    }
    assert!(
        calls
            .iter()
            .any(|s| s.activation_key.as_deref() == Some(key("A", 1).as_str()) && s.status == 200)
    );
    assert_eq!(
        rig.metrics
            .telemetry
            .request_count("acme", Endpoint::License, "timeout"),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn definitive_refusals_wait_for_the_next_interval() {
    let sim = sim(sim_config(&[("id", "s", "A", 3)])).await;
    sim.set_license(&key("A", 0), 1, None); // 404 forever
    for _ in 0..100 {
        sim.push_key_fault(&key("A", 1), Fault::status(403));
        sim.push_key_fault(&key("A", 2), Fault::status(400));
    }
    let cfg = config(
        vec![account("acme", ("id", "s"), &sim.base_url(), "A", 3)],
        HOUR,
    );
    let mut rig = rig(&cfg, Clock::tokio_anchored(now()));
    run_for(&mut rig, 3 * HOUR + MINUTE).await;
    let log = sim.log();
    for i in 0..3 {
        let n = licence_calls(&log)
            .iter()
            .filter(|s| s.activation_key.as_deref() == Some(key("A", i).as_str()))
            .count();
        assert!((3..=5).contains(&n), "licence {i}: {n} calls in 3 hours");
    }
    assert!(rig.store.ready(), "definitive answers count as polled");
    let text = rig.metrics.render();
    for code in ["404", "403", "400"] {
        assert!(
            text.contains(&format!(r#"code="{code}",endpoint="license"}}"#)),
            "{code}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_portal_is_retried_with_capped_backoff_and_recovers_by_itself() {
    // Reserve a port with nothing listening on it.
    let probe = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = probe.local_addr().unwrap();
    drop(probe);
    let cfg = config(
        vec![account(
            "acme",
            ("id", "s"),
            &format!("http://{addr}"),
            "A",
            4,
        )],
        HOUR,
    );
    let mut rig = rig(&cfg, Clock::tokio_anchored(now()));
    run_for(&mut rig, 5 * HOUR).await;
    let attempts = rig
        .metrics
        .telemetry
        .request_count("acme", Endpoint::Token, "transport");
    // 5 s, 10 s, 20 s … capped at 1 h with jitter: about a dozen tries in 5 hours, not thousands.
    assert!(
        (8..=25).contains(&attempts),
        "{attempts} connection attempts in 5 hours"
    );
    rig.store.read(|i| {
        for e in i.licenses.values() {
            assert_eq!(e.poll.last_success_ok, Some(false));
            assert!(e.poll.consecutive_failures >= 8);
        }
    });

    // The portal comes back on the same address.
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let sim = SimPortal::start(listener, sim_config(&[("id", "s", "A", 4)])).unwrap();
    run_for(&mut rig, HOUR + MINUTE).await;
    let log = sim.log();
    let ok: std::collections::HashSet<_> = licence_calls(&log)
        .iter()
        .filter(|s| s.status == 200)
        .map(|s| s.activation_key.clone())
        .collect();
    assert_eq!(ok.len(), 4, "not every licence recovered");
    assert!(
        licence_calls(&log).len() <= 8,
        "{} calls in the hour after recovery",
        licence_calls(&log).len()
    );
    rig.store.read(|i| {
        assert!(
            i.licenses
                .values()
                .all(|e| e.poll.last_success_ok == Some(true))
        )
    });
}

#[tokio::test(start_paused = true)]
async fn ten_thousand_deployments_zero_deployments_and_odd_quantities() {
    let sim = sim(sim_config(&[("id", "s", "A", 3)])).await;
    let many: Vec<serde_json::Value> = (0..10_000)
        .map(|i| serde_json::json!({"deployment_id": format!("node-{i:05}"), "description": "autoscaled",
                                     "expiration": "2027-06-30", "activated_at": "2026-11-01T10:00:00Z", "quantity": 1}))
        .collect();
    let mut data = license_data("2027-06-30", &[]);
    data["deployments"] = serde_json::Value::Array(many);
    sim.set_license(&key("A", 0), 1, Some(data));
    sim.set_license(&key("A", 1), 1, Some(license_data("2027-06-30", &[])));
    let mut odd = license_data("2027-06-30", &[]);
    odd["deployments"] = serde_json::json!([
        {"deployment_id": "half", "quantity": 0.5},
        {"deployment_id": "none", "quantity": null},
        {"deployment_id": "negative", "quantity": -2},
    ]);
    sim.set_license(&key("A", 2), 1, Some(odd));
    let cfg = config(
        vec![account("acme", ("id", "s"), &sim.base_url(), "A", 3)],
        HOUR,
    );
    let mut rig = rig(&cfg, Clock::tokio_anchored(now()));
    assert!(rig.workers[0].poll_all_once().await.is_empty());
    let text = rig.metrics.render();
    assert!(text.contains(
        r#"opswat_license_deployments{account="acme",license="lic-0000",product_id="1"} 10000"#
    ));
    assert!(text.contains(
        r#"opswat_license_activations{account="acme",license="lic-0000",product_id="1"} 10000"#
    ));
    assert_eq!(
        text.matches("opswat_license_deployment_info{").count(),
        10_000 + 3
    );
    assert!(text.contains(
        r#"opswat_license_deployments{account="acme",license="lic-0001",product_id="1"} 0"#
    ));
    assert!(text.contains(
        r#"opswat_license_activations{account="acme",license="lic-0001",product_id="1"} 0"#
    ));
    // 0.5 as given; null and negative count as one activation each, without a quantity series.
    assert!(text.contains(
        r#"opswat_license_activations{account="acme",license="lic-0002",product_id="1"} 2.5"#
    ));
    assert!(text.contains(r#"deployment_id="half"} 0.5"#));
    assert!(!text.contains(r#"opswat_license_deployment_quantity{account="acme",license="lic-0002",product_id="1",deployment_id="none"}"#));
    assert!(text.contains(
        r#"opswat_portal_dropped_fields_total{account="acme",field="deployments.quantity"} 1"#
    ));
}

#[tokio::test(start_paused = true)]
async fn an_unreadable_field_keeps_its_last_good_value() {
    let sim = sim(sim_config(&[("id", "s", "A", 1)])).await;
    let cfg = config(
        vec![account("acme", ("id", "s"), &sim.base_url(), "A", 1)],
        HOUR,
    );
    let mut rig = rig(&cfg, Clock::tokio_anchored(now()));
    assert!(rig.workers[0].poll_all_once().await.is_empty());
    let good = rig.metrics.render();
    let keep: Vec<String> = good
        .lines()
        .filter(|l| {
            l.starts_with("opswat_license_expiry_timestamp_seconds{")
                || l.starts_with("opswat_license_deployments{")
                || l.starts_with("opswat_license_deployment_expiry_timestamp_seconds{")
        })
        .map(str::to_string)
        .collect();
    assert_eq!(keep.len(), 3);

    // The next answer has an ambiguous licence expiry and an unreadable deployment date.
    let mut odd = license_data("2027-06-30", &[("dep-a", 1)]);
    odd["expiry"] = "11/08/2027".into();
    odd["deployments"][0]["expiration"] = "soon".into();
    sim.set_license(&key("A", 0), 1, Some(odd));
    assert!(rig.workers[0].poll_all_once().await.is_empty());
    let text = rig.metrics.render();
    for l in &keep {
        assert!(text.contains(l.as_str()), "lost {l}");
    }
    // A list that is not a list keeps the last good deployments; success "false" is a failure.
    let mut odd = license_data("2027-06-30", &[]);
    odd["deployments"] = "oops".into();
    sim.set_license(&key("A", 0), 1, Some(odd));
    assert!(rig.workers[0].poll_all_once().await.is_empty());
    assert!(rig.metrics.render().contains(&keep[1]));
    // Entries that lost their deployment_id (a renamed field) keep the last good list.
    let mut renamed = license_data("2027-06-30", &[]);
    renamed["deployments"] =
        serde_json::json!([{"id": "a", "quantity": 1}, {"id": "b", "quantity": 1}]);
    sim.set_license(&key("A", 0), 1, Some(renamed));
    assert!(rig.workers[0].poll_all_once().await.is_empty());
    assert!(
        rig.metrics.render().contains(&keep[1]),
        "deployments wiped by unidentified entries"
    );
    sim.push_fault(
        Endpoint::License,
        Fault::ok_body(r#"{"success":"false","data":{"expiry":null}}"#),
    );
    assert_eq!(rig.workers[0].poll_all_once().await.len(), 1);
    assert!(rig.metrics.render().contains(&keep[0]));
}

#[tokio::test(start_paused = true)]
async fn absurd_numbers_from_the_portal_do_not_crash_anything() {
    let sim = sim(sim_config(&[("id", "s", "A", 2)])).await;
    // A token "valid" for 1e30 seconds, then a 429 asking for 1e20 seconds.
    sim.push_fault(
        Endpoint::Token,
        Fault::ok_body(r#"{"data":{"access_token":"sim-token-forever","expires_in":1e30}}"#),
    );
    sim.push_key_fault(
        &key("A", 1),
        Fault::Status {
            status: 429,
            body: String::new(),
            headers: vec![("retry-after".into(), "1e20".into())],
        },
    );
    let cfg = config(
        vec![account("acme", ("id", "s"), &sim.base_url(), "A", 2)],
        HOUR,
    );
    let mut rig = rig(&cfg, Clock::tokio_anchored(now()));
    // The forged token is unknown to the simulator (401), so it is renewed once; the 429's
    // wait is capped at an hour; nothing panics and both licences end up polled.
    run_for(&mut rig, 3 * HOUR).await;
    let log = sim.log();
    let ok: std::collections::HashSet<_> = licence_calls(&log)
        .iter()
        .filter(|s| s.status == 200)
        .map(|s| s.activation_key.clone())
        .collect();
    assert_eq!(ok.len(), 2, "{log:?}");
}

#[tokio::test(start_paused = true)]
async fn a_portal_echoing_the_bearer_token_is_redacted() {
    let sim = sim(sim_config(&[("id", "s", "A", 1)])).await;
    sim.push_fault(
        Endpoint::Token,
        Fault::ok_body(r#"{"data":{"access_token":"sim-token-c4n4ry","expires_in":3600}}"#),
    );
    sim.push_fault(
        Endpoint::License,
        Fault::Status {
            status: 403,
            body: r#"{"error":"bearer sim-token-c4n4ry may not read this"}"#.into(),
            headers: vec![],
        },
    );
    let cfg = config(
        vec![account("acme", ("id", "s"), &sim.base_url(), "A", 1)],
        HOUR,
    );
    let mut rig = rig(&cfg, Clock::tokio_anchored(now()));
    let failures = rig.workers[0].poll_all_once().await;
    let message = failures[0].1.to_string();
    assert!(message.contains("bearer ****n4ry may not"), "{message}");
    let stored = rig.store.read(|i| {
        i.licenses
            .values()
            .next()
            .unwrap()
            .poll
            .last_error
            .clone()
            .unwrap()
    });
    assert!(!stored.contains("c4n4ry"), "{stored}");
}

#[tokio::test(start_paused = true)]
async fn a_name_that_does_not_resolve_is_a_transport_failure_with_backoff() {
    // `.invalid` never resolves (RFC 2606).
    let cfg = config(
        vec![account(
            "acme",
            ("id", "s"),
            "http://opswat-portal.invalid:8080",
            "A",
            2,
        )],
        HOUR,
    );
    let mut rig = rig(&cfg, Clock::tokio_anchored(now()));
    run_for(&mut rig, 3 * HOUR).await;
    let attempts = rig
        .metrics
        .telemetry
        .request_count("acme", Endpoint::Token, "transport");
    assert!(
        (5..=20).contains(&attempts),
        "{attempts} attempts in 3 hours"
    );
    let error = rig.store.read(|i| {
        i.licenses
            .values()
            .next()
            .unwrap()
            .poll
            .last_error
            .clone()
            .unwrap()
    });
    assert!(
        error.contains("dns") || error.contains("resolve") || error.contains("lookup"),
        "{error}"
    );
}
