//! Memory, measured with a counting allocator: flat over 1,000 failed token cycles, and
//! a 64 MiB answer is refused at the cap without being read into memory.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use opswat_license_exporter::clock::Clock;
use opswat_license_exporter::logging::{self, LogLevel};
use opswat_license_exporter::portal::{Endpoint, MAX_BODY_BYTES};
use opswat_license_exporter::sim::Fault;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Relaxed) + layout.size();
            PEAK.fetch_max(now, Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Relaxed);
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl Write for Lines {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// One test function: the allocator counts every thread of the process.
#[tokio::test(start_paused = true)]
async fn memory_stays_flat_and_bodies_are_capped() {
    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(logging::filter(LogLevel::Info))
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    // --- 1,000+ failed token cycles: the secret was disabled in the portal.
    let sim = sim(sim_config(&[("id", "right", "A", 5)])).await;
    let cfg = config(
        vec![account("acme", ("id", "wrong"), &sim.base_url(), "A", 5)],
        Duration::from_secs(600),
    );
    let mut rig = rig(&cfg, Clock::tokio_anchored(now()));
    let hour = Duration::from_secs(3600);
    run_for(&mut rig, 20 * hour).await;
    sim.clear_log();
    let cycles_before = rig
        .metrics
        .telemetry
        .request_count("acme", Endpoint::Token, "401");
    let live_before = LIVE.load(Relaxed);
    run_for(&mut rig, 200 * hour).await;
    sim.clear_log();
    let cycles = rig
        .metrics
        .telemetry
        .request_count("acme", Endpoint::Token, "401");
    let live_after = LIVE.load(Relaxed);
    assert!(
        cycles - cycles_before >= 1000,
        "only {} failed cycles",
        cycles - cycles_before
    );
    let growth = live_after as i64 - live_before as i64;
    eprintln!(
        "{} failed token cycles: live heap {live_before} -> {live_after} bytes ({growth:+})",
        cycles - cycles_before
    );
    assert!(
        growth < 64 * 1024,
        "heap grew by {growth} bytes over {} failed cycles",
        cycles - cycles_before
    );
    // No log flood: one warning when it started failing, nothing per retry.
    let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
    let warnings = text
        .lines()
        .filter(|l| l.contains("cannot get an access token"))
        .count();
    assert_eq!(warnings, 1, "{text}");
    assert!(text.lines().count() <= 3, "{text}");
    // The licences say so, and keep saying so.
    rig.store.read(|i| {
        assert!(
            i.licenses
                .values()
                .all(|e| e.poll.last_success_ok == Some(false))
        )
    });

    // --- A 64 MiB answer.
    let huge = common::sim(sim_config(&[("id", "s", "A", 1)])).await;
    let cfg = config(
        vec![account("acme", ("id", "s"), &huge.base_url(), "A", 1)],
        hour,
    );
    let mut rig = common::rig(&cfg, Clock::tokio_anchored(now()));
    huge.push_fault(Endpoint::License, Fault::HugeBody(64 * 1024 * 1024));
    let base = LIVE.load(Relaxed);
    PEAK.store(base, Relaxed);
    let failures = rig.workers[0].poll_all_once().await;
    let peak = PEAK.load(Relaxed) - base;
    eprintln!("64 MiB answer: peak extra heap {peak} bytes (cap {MAX_BODY_BYTES})");
    assert_eq!(failures.len(), 1);
    assert!(
        failures[0].1.to_string().contains("larger than"),
        "{}",
        failures[0].1
    );
    assert!(
        peak < 2 * MAX_BODY_BYTES + 1024 * 1024,
        "peak {peak} bytes while refusing a 64 MiB body"
    );
}
