//! What a scrape and a poll cost, measured in one run so the figures compare with each
//! other (the machines are shared and noisy: read the ratios, not the absolute times).
//!
//! `cargo bench --bench scrape`
//!
//! - render: `/metrics` text for stores of growing size; the cost per series should stay
//!   flat (linear scaling), and the heap a scrape allocates is reported.
//! - parse: reading an `active-deployments` answer with 10, 1,000 and 10,000 deployments.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use opswat_license_exporter::clock::{Clock, from_unix};
use opswat_license_exporter::license::{License, parse_answer};
use opswat_license_exporter::metrics::Metrics;
use opswat_license_exporter::store::{LicenseId, PollState, Store};

struct Counting;
static ALLOCATED: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size(), Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn answer(deployments: usize) -> Vec<u8> {
    let deps: Vec<String> = (0..deployments)
        .map(|i| {
            format!(
                r#"{{"deployment_id":"6f1c2a9e-4b1d-4c3e-9a51-{i:012}","description":"scan-node-{i}","expiration":"2027-06-30","activated_at":"2026-03-01T09:30:00Z","quantity":1}}"#
            )
        })
        .collect();
    format!(
        r#"{{"success":true,"data":{{"license_key":"K","type":"PURCHASED","expiry":"2027-06-30","product":"MetaDefender Core","platform":"Linux","generated_at":"2026-12-02T21:15:00Z","deployments":[{}]}}}}"#,
        deps.join(",")
    )
    .into_bytes()
}

fn license(deployments: usize) -> License {
    parse_answer(&answer(deployments), 1).unwrap().license
}

/// Median time of `f` over enough runs to fill about `budget`.
fn time<R>(budget: Duration, mut f: impl FnMut() -> R) -> (Duration, usize) {
    black_box(f());
    let t = Instant::now();
    black_box(f());
    let once = t.elapsed().max(Duration::from_micros(1));
    let runs = (budget.as_nanos() / once.as_nanos()).clamp(5, 2000) as usize;
    let mut samples: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            black_box(f());
            t.elapsed()
        })
        .collect();
    samples.sort();
    (samples[runs / 2], runs)
}

fn main() {
    println!("render /metrics (licences × deployments each)");
    println!(
        "{:>10} {:>8} {:>12} {:>14} {:>14}",
        "licences", "deps", "series", "median", "ns/series"
    );
    let mut per_series = Vec::new();
    for (licences, deps) in [(10, 3), (100, 10), (1000, 10), (10, 1000)] {
        let store = Store::new();
        let poll = PollState {
            last_attempt: Some(from_unix(1_796_256_000)),
            last_success_ok: Some(true),
            last_success: Some(from_unix(1_796_256_000)),
            consecutive_failures: 0,
            last_error: None,
            settled: true,
        };
        let data = license(deps);
        for i in 0..licences {
            let id = LicenseId {
                account: format!("account-{}", i % 3),
                license: format!("licence-{i:05}"),
                product_id: 1,
            };
            store.insert_for_test(id, Some(10), Some(data.clone()), poll.clone());
        }
        let metrics = Metrics::new(
            Arc::clone(&store),
            Clock::fixed(from_unix(1_796_300_000)),
            false,
        )
        .unwrap();
        let text = metrics.render();
        let series = text.lines().filter(|l| !l.starts_with('#')).count();
        let before = ALLOCATED.load(Relaxed);
        black_box(metrics.render());
        let allocated = ALLOCATED.load(Relaxed) - before;
        let (median, _) = time(Duration::from_millis(800), || metrics.render());
        let ns = median.as_nanos() as f64 / series as f64;
        per_series.push(ns);
        println!(
            "{licences:>10} {deps:>8} {series:>12} {:>14?} {ns:>14.0}   ({} KiB allocated per scrape, {} KiB of text)",
            median,
            allocated / 1024,
            text.len() / 1024
        );
    }
    let spread = per_series.iter().cloned().fold(f64::MIN, f64::max)
        / per_series.iter().cloned().fold(f64::MAX, f64::min);
    println!("cost per series, largest/smallest: {spread:.2} (≈1 is linear scaling)\n");

    println!("parse an active-deployments answer");
    println!(
        "{:>12} {:>10} {:>14} {:>12}",
        "deployments", "bytes", "median", "MB/s"
    );
    for deps in [10, 1000, 10_000] {
        let body = answer(deps);
        let (median, _) = time(Duration::from_millis(800), || {
            parse_answer(&body, 1).unwrap()
        });
        let mbs = body.len() as f64 / median.as_secs_f64() / 1e6;
        println!("{deps:>12} {:>10} {:>14?} {mbs:>12.0}", body.len(), median);
    }
}
