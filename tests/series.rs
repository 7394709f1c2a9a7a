//! A series exists only while its subject does; licences that stay keep their state.

mod common;

use std::time::Duration;

use common::*;
use opswat_license_exporter::app::Exporter;
use opswat_license_exporter::clock::Clock;
use opswat_license_exporter::portal::Endpoint;

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test(start_paused = true)]
async fn a_vanished_deployment_loses_its_series_on_the_next_poll() {
    let sim = sim(sim_config(&[("id", "s", "A", 1)])).await;
    sim.set_license(
        &key("A", 0),
        1,
        Some(license_data(
            "2027-06-30",
            &[("old-host", 1), ("new-host", 1)],
        )),
    );
    let cfg = config(
        vec![account("acme", ("id", "s"), &sim.base_url(), "A", 1)],
        HOUR,
    );
    let mut rig = rig(&cfg, Clock::tokio_anchored(now()));
    rig.workers[0].poll_all_once().await;
    let before = rig.metrics.render();
    assert!(before.contains(r#"deployment_id="old-host""#));
    assert!(before.contains(
        r#"opswat_license_deployments{account="acme",license="lic-0000",product_id="1"} 2"#
    ));

    // The machine was rebuilt: only the new fingerprint is left.
    sim.set_license(
        &key("A", 0),
        1,
        Some(license_data("2027-06-30", &[("new-host", 1)])),
    );
    rig.workers[0].poll_all_once().await;
    let after = rig.metrics.render();
    assert!(!after.contains("old-host"), "{after}");
    assert!(after.contains(r#"deployment_id="new-host""#));
    assert!(after.contains(
        r#"opswat_license_deployments{account="acme",license="lic-0000",product_id="1"} 1"#
    ));
}

#[tokio::test(start_paused = true)]
async fn reload_drops_removed_licences_and_keeps_the_rest() {
    let sim = sim(sim_config(&[("id", "s", "A", 3)])).await;
    let three = config(
        vec![account("acme", ("id", "s"), &sim.base_url(), "A", 3)],
        HOUR,
    );
    let mut exporter = Exporter::new(three, options(Clock::tokio_anchored(now()))).unwrap();
    exporter.start().unwrap();
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(exporter.store.ready());
    let text = exporter.metrics.render();
    assert_eq!(
        text.matches("opswat_license_expiry_timestamp_seconds{")
            .count(),
        3
    );
    let calls_before = sim.log().len();

    // Drop the last licence.
    let two = config(
        vec![account("acme", ("id", "s"), &sim.base_url(), "A", 2)],
        HOUR,
    );
    exporter.reload(two).await.unwrap();
    let text = exporter.metrics.render();
    assert!(
        !text.contains(r#"license="lic-0002""#),
        "a removed licence keeps series:\n{text}"
    );
    assert_eq!(
        text.matches("opswat_license_expiry_timestamp_seconds{")
            .count(),
        2
    );
    // The two that stay keep their data and are not polled again right away.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(
        sim.log().len(),
        calls_before,
        "reload re-polled licences that stay"
    );
    assert!(exporter.store.ready());
    exporter.stop().await;
}

#[tokio::test(start_paused = true)]
async fn failed_polls_keep_the_last_good_data() {
    let sim = sim(sim_config(&[("id", "s", "A", 1)])).await;
    let cfg = config(
        vec![account("acme", ("id", "s"), &sim.base_url(), "A", 1)],
        HOUR,
    );
    let mut rig = rig(&cfg, Clock::tokio_anchored(now()));
    rig.workers[0].poll_all_once().await;
    let good = rig.metrics.render();
    let expiry_line = good
        .lines()
        .find(|l| l.starts_with("opswat_license_expiry_timestamp_seconds{"))
        .unwrap()
        .to_string();

    sim.set_sticky_fault(
        Endpoint::License,
        Some(opswat_license_exporter::sim::Fault::status(503)),
    );
    rig.workers[0].poll_all_once().await;
    rig.workers[0].poll_all_once().await;
    let bad = rig.metrics.render();
    assert!(
        bad.contains(&expiry_line),
        "the expiry changed after failures:\n{bad}"
    );
    assert!(bad.contains(
        r#"opswat_license_poll_success{account="acme",license="lic-0000",product_id="1"} 0"#
    ));
    assert!(bad.contains(r#"opswat_license_poll_consecutive_failures{account="acme",license="lic-0000",product_id="1"} 2"#));
    assert!(
        bad.contains(
            r#"opswat_portal_requests_total{account="acme",code="503",endpoint="license"} 2"#
        ),
        "{bad}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_renamed_account_keeps_its_organisations_budget() {
    let sim = sim(sim_config(&[("id", "s", "A", 10)])).await;
    let before = config(
        vec![account("old-name", ("id", "s"), &sim.base_url(), "A", 10)],
        HOUR,
    );
    let mut exporter = Exporter::new(before, options(Clock::tokio_anchored(now()))).unwrap();
    exporter.start().unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    // Same credentials, new name: new series, but the server still counts the old calls.
    let after = config(
        vec![account("new-name", ("id", "s"), &sim.base_url(), "A", 10)],
        HOUR,
    );
    exporter.reload(after).await.unwrap();
    tokio::time::sleep(Duration::from_secs(180)).await;
    let log = sim.log();
    assert!(
        log.iter().all(|s| s.status == 200),
        "throttled after the rename"
    );
    let minute = Duration::from_secs(60);
    assert!(
        opswat_license_exporter::sim::max_in_window(&log, Endpoint::License, None, minute) <= 10
    );
    let text = exporter.metrics.render();
    assert!(
        !text.contains(r#"account="old-name""#),
        "the old account keeps series:\n{text}"
    );
    assert_eq!(
        text.matches(r#"opswat_license_expiry_timestamp_seconds{account="new-name""#)
            .count(),
        10
    );
    exporter.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_storm_of_reloads_neither_starves_polls_nor_breaks_the_budget() {
    let sim = sim(sim_config(&[("id", "s", "A", 20)])).await;
    sim.set_sticky_fault(
        Endpoint::License,
        Some(opswat_license_exporter::sim::Fault::Delay(
            Duration::from_secs(3),
        )),
    );
    let cfg = || {
        config(
            vec![account("acme", ("id", "s"), &sim.base_url(), "A", 20)],
            HOUR,
        )
    };
    let mut exporter = Exporter::new(cfg(), options(Clock::tokio_anchored(now()))).unwrap();
    exporter.start().unwrap();
    // 40 reloads of the same config, 2 s apart, while every call takes 3 s.
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        exporter.reload(cfg()).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(300)).await;
    assert!(exporter.store.ready(), "licences left unpolled by reloads");
    // Now reload with a changed portal setting (a new client) while calls are in flight.
    let mut changed = cfg();
    changed.accounts[0].portal.timeout = Duration::from_secs(31);
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        exporter.reload(changed.clone()).await.unwrap();
        changed.accounts[0].portal.timeout += Duration::from_secs(1);
    }
    tokio::time::sleep(Duration::from_secs(600)).await;
    let log = sim.log();
    assert!(
        log.iter().all(|s| s.status == 200 || s.status == 0),
        "throttled: {:?}",
        log.iter().filter(|s| s.status == 429).count()
    );
    let minute = Duration::from_secs(60);
    assert!(
        opswat_license_exporter::sim::max_in_window(&log, Endpoint::License, None, minute) <= 10
    );
    assert!(opswat_license_exporter::sim::max_in_window(&log, Endpoint::Token, None, minute) <= 5);
    exporter.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_poll_abandoned_by_a_reload_is_not_counted_as_done() {
    let sim = sim(sim_config(&[("id", "s", "A", 1)])).await;
    sim.push_fault(
        Endpoint::License,
        opswat_license_exporter::sim::Fault::Delay(Duration::from_secs(10)),
    );
    let mut cfg = config(
        vec![account("acme", ("id", "s"), &sim.base_url(), "A", 1)],
        HOUR,
    );
    let mut exporter = Exporter::new(cfg.clone(), options(Clock::tokio_anchored(now()))).unwrap();
    exporter.start().unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    // A changed portal setting replaces the client: the poll in flight is abandoned.
    cfg.accounts[0].portal.timeout = Duration::from_secs(20);
    exporter.reload(cfg).await.unwrap();
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert!(
        exporter.store.ready(),
        "the abandoned poll was taken as done; next try in an hour"
    );
    exporter.stop().await;
}
