//! `promtool check metrics` finds nothing to warn about in the exporter's output.
//! promtool comes from Debian's `prometheus` package (.ci/run installs it).

use std::io::Write;
use std::process::{Command, Stdio};

/// False (and says SKIPPED) where promtool is missing; in CI that is a failure.
fn promtool_present() -> bool {
    if Command::new("promtool").arg("--version").output().is_ok() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must install promtool (Debian package prometheus)"
    );
    eprintln!("SKIPPED: promtool is not installed (apt-get install prometheus)");
    false
}

#[test]
fn promtool_check_metrics_is_clean() {
    if !promtool_present() {
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_opswat-license-exporter"))
        .args(["--demo", "--once"])
        .output()
        .unwrap();
    let metrics = out.stdout;
    assert!(metrics.len() > 1000);
    for input in [metrics, std::fs::read("tests/golden/metrics.txt").unwrap()] {
        let mut child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&input).unwrap();
        let result = child.wait_with_output().unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&result.stdout),
            String::from_utf8_lossy(&result.stderr)
        );
        assert!(
            result.status.success() && said.trim().is_empty(),
            "promtool: {said}"
        );
    }
}

#[test]
fn promtool_checks_and_unit_tests_the_alert_rules() {
    if !promtool_present() {
        return;
    }
    for args in [
        vec!["check", "rules", "dashboards/opswat-license-alerts.yml"],
        vec!["test", "rules", "dashboards/opswat-license-alerts.test.yml"],
        vec!["check", "config", "examples/prometheus.yml"],
    ] {
        let out = Command::new("promtool").args(&args).output().unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "promtool {args:?}: {said}");
        assert!(said.contains("SUCCESS"), "promtool {args:?}: {said}");
    }
}
