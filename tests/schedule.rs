//! Hours of schedule against the simulated portal on loopback, on a paused tokio clock:
//! the rate limits hold as the server counts them, and every licence stays fresh.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use opswat_license_exporter::clock::Clock;
use opswat_license_exporter::portal::Endpoint;
use opswat_license_exporter::sim::{Fault, Seen, max_in_window};
use tokio::time::Instant;

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

/// Arrival times of each activation key's licence calls, relative to `start`.
fn arrivals(log: &[Seen], start: Instant) -> HashMap<String, Vec<Duration>> {
    let mut by_key: HashMap<String, Vec<Duration>> = HashMap::new();
    for s in log.iter().filter(|s| s.endpoint == Some(Endpoint::License)) {
        by_key
            .entry(s.activation_key.clone().unwrap())
            .or_default()
            .push(s.at.duration_since(start));
    }
    by_key
}

#[tokio::test(start_paused = true)]
async fn fifty_licences_six_hours_within_limits() {
    let sim = sim(sim_config(&[("id-a", "secret-a", "A", 50)])).await;
    let cfg = config(
        vec![account(
            "acme",
            ("id-a", "secret-a"),
            &sim.base_url(),
            "A",
            50,
        )],
        HOUR,
    );
    let mut rig = rig(&cfg, Clock::tokio_anchored(now()));
    let start = Instant::now();
    run_for(&mut rig, 6 * HOUR).await;
    let log = sim.log();

    let statuses: Vec<u16> = log.iter().map(|s| s.status).collect();
    assert!(!statuses.contains(&429), "the portal throttled us");
    assert!(
        statuses.iter().all(|s| *s == 200),
        "unexpected statuses: {statuses:?}"
    );
    let lic_max = max_in_window(&log, Endpoint::License, None, MINUTE);
    let tok_max = max_in_window(&log, Endpoint::Token, None, MINUTE);
    assert!(lic_max <= 10, "{lic_max} licence calls within one minute");
    assert!(tok_max <= 5, "{tok_max} token calls within one minute");
    let tokens = log
        .iter()
        .filter(|s| s.endpoint == Some(Endpoint::Token))
        .count();
    assert!(
        tokens <= 7,
        "{tokens} token calls in 6 hours with expires_in 3600"
    );

    let by_key = arrivals(&log, start);
    assert_eq!(by_key.len(), 50);
    let first_fill_done = by_key.values().map(|t| t[0]).max().unwrap();
    assert!(
        first_fill_done <= 5 * MINUTE + MINUTE,
        "first fill took {first_fill_done:?}"
    );
    for (key, times) in &by_key {
        for pair in times.windows(2) {
            let gap = pair[1] - pair[0];
            assert!(
                gap <= HOUR,
                "{key}: {gap:?} between polls at {:?} and {:?}",
                pair[0],
                pair[1]
            );
        }
        // Refreshed until the end: the last poll is less than an interval before it.
        assert!(
            6 * HOUR - *times.last().unwrap() <= HOUR,
            "{key} went stale"
        );
    }
    // Spread evenly: after the first hour, no two polls closer than a minute apart
    // (50 licences per hour is one every 72 s).
    let mut steady: Vec<Duration> = by_key
        .values()
        .flatten()
        .copied()
        .filter(|t| *t > HOUR)
        .collect();
    steady.sort();
    let closest = steady.windows(2).map(|p| p[1] - p[0]).min().unwrap();
    assert!(closest >= MINUTE, "polls bunch up: {closest:?} apart");
    // Total cost: 50 per hour plus the first fill's catch-up, no more.
    let calls = log
        .iter()
        .filter(|s| s.endpoint == Some(Endpoint::License))
        .count();
    assert!(
        (300..=360).contains(&calls),
        "{calls} licence calls in 6 hours"
    );

    // And the store says so.
    let ok = rig.store.read(|i| {
        i.licenses
            .values()
            .filter(|e| e.poll.last_success_ok == Some(true))
            .count()
    });
    assert_eq!(ok, 50);
}

#[tokio::test(start_paused = true)]
async fn stretches_interval_when_the_budget_cannot_meet_it() {
    // 30 licences at 10/min cannot all be refreshed every minute.
    let sim = sim(sim_config(&[("id-a", "secret-a", "A", 30)])).await;
    let cfg = config(
        vec![account(
            "acme",
            ("id-a", "secret-a"),
            &sim.base_url(),
            "A",
            30,
        )],
        MINUTE,
    );
    let plan = &cfg.plan()[0];
    assert!(plan.stretched);
    assert_eq!(plan.effective_interval, 4 * MINUTE);
    let mut rig = rig(&cfg, Clock::tokio_anchored(now()));
    run_for(&mut rig, 2 * HOUR).await;
    let log = sim.log();
    assert!(log.iter().all(|s| s.status == 200));
    assert!(max_in_window(&log, Endpoint::License, None, MINUTE) <= 10);
    let start = log[0].at;
    for (key, times) in arrivals(&log, start) {
        for pair in times.windows(2) {
            assert!(
                pair[1] - pair[0] <= 4 * MINUTE,
                "{key}: {:?}",
                pair[1] - pair[0]
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn two_accounts_keep_their_own_budgets() {
    let sim = sim(sim_config(&[
        ("id-a", "sa", "A", 30),
        ("id-b", "sb", "B", 30),
    ]))
    .await;
    let cfg = config(
        vec![
            account("a", ("id-a", "sa"), &sim.base_url(), "A", 30),
            account("b", ("id-b", "sb"), &sim.base_url(), "B", 30),
        ],
        HOUR,
    );
    let mut rig = rig(&cfg, Clock::tokio_anchored(now()));
    run_for(&mut rig, 2 * HOUR).await;
    let log = sim.log();
    assert!(log.iter().all(|s| s.status == 200));
    for client in ["id-a", "id-b"] {
        let n = max_in_window(&log, Endpoint::License, Some(client), MINUTE);
        assert_eq!(n, 10, "{client}: each account uses its own full budget");
    }
    // Both filled in parallel: together 20 calls in the first minute.
    assert_eq!(max_in_window(&log, Endpoint::License, None, MINUTE), 20);
}

#[tokio::test(start_paused = true)]
async fn a_failing_account_does_not_slow_the_other() {
    let bad = sim(sim_config(&[("id-a", "sa", "A", 10)])).await;
    bad.set_sticky_fault(Endpoint::License, Some(Fault::Hang));
    let good = sim(sim_config(&[("id-b", "sb", "B", 20)])).await;
    let cfg = config(
        vec![
            account("a", ("id-a", "sa"), &bad.base_url(), "A", 10),
            account("b", ("id-b", "sb"), &good.base_url(), "B", 20),
        ],
        HOUR,
    );
    let mut rig = rig(&cfg, Clock::tokio_anchored(now()));
    let start = Instant::now();
    run_for(&mut rig, 3 * HOUR).await;

    // The good account fills as if alone: 20 licences in two windows.
    let by_key = arrivals(&good.log(), start);
    assert_eq!(by_key.len(), 20);
    let filled = by_key.values().map(|t| t[0]).max().unwrap();
    assert!(filled <= 2 * MINUTE, "good account filled after {filled:?}");
    for times in by_key.values() {
        for pair in times.windows(2) {
            assert!(pair[1] - pair[0] <= HOUR);
        }
    }
    // The bad one timed out, kept trying with backoff, and says so.
    let bad_calls = bad
        .log()
        .iter()
        .filter(|s| s.endpoint == Some(Endpoint::License))
        .count();
    assert!(bad_calls >= 10, "{bad_calls}");
    assert!(max_in_window(&bad.log(), Endpoint::License, None, MINUTE) <= 10);
    let timeouts = rig
        .metrics
        .telemetry
        .request_count("a", Endpoint::License, "timeout");
    assert_eq!(timeouts as usize, bad_calls);
    rig.store.read(|i| {
        for (id, e) in &i.licenses {
            if id.account == "a" {
                assert_eq!(e.poll.last_success_ok, Some(false));
                assert!(e.poll.consecutive_failures >= 1);
            } else {
                assert_eq!(e.poll.last_success_ok, Some(true));
            }
        }
    });
}
