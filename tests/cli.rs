//! The binary as a user runs it: flags, exit codes, --once, --demo, serving, reload,
//! SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_opswat-license-exporter");

/// The DESIGN.md families the demo must show (days renamed to seconds, see README).
const FAMILIES: &[&str] = &[
    "opswat_license_info",
    "opswat_license_expiry_timestamp_seconds",
    "opswat_license_expires_in_seconds",
    "opswat_license_deployments",
    "opswat_license_activations",
    "opswat_license_activations_limit",
    "opswat_license_data_generated_timestamp_seconds",
    "opswat_license_deployment_quantity",
    "opswat_license_deployment_expiry_timestamp_seconds",
    "opswat_license_deployment_expires_in_seconds",
    "opswat_license_deployment_activated_timestamp_seconds",
    "opswat_license_deployment_info",
    "opswat_license_poll_success",
    "opswat_license_last_poll_success_timestamp_seconds",
    "opswat_license_poll_consecutive_failures",
    "opswat_portal_requests_total",
    "opswat_portal_request_duration_seconds",
    "opswat_exporter_build_info",
    "opswat_exporter_config_last_reload_successful",
    "opswat_exporter_config_last_reload_success_timestamp_seconds",
    "process_resident_memory_bytes",
];

fn exporter() -> Command {
    let mut c = Command::new(BIN);
    for v in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        c.env_remove(v);
    }
    c
}

fn run(args: &[&str]) -> Output {
    exporter().args(args).output().unwrap()
}

fn write_config(dir: &Path, base_url: &str, n: usize, extra: &str) -> std::path::PathBuf {
    let mut yaml = format!(
        "{extra}poll_interval: 1h\naccounts:\n  - name: acme\n    client_id: id\n    client_secret_file: secret.txt\n    portal: {{ base_url: \"{base_url}\" }}\n    licenses:\n"
    );
    for i in 0..n {
        yaml.push_str(&format!(
            "      - name: lic-{i}\n        activation_key: {}\n        product_id: 1\n",
            key("A", i)
        ));
    }
    std::fs::write(dir.join("secret.txt"), "s\n").unwrap();
    let path = dir.join("config.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

#[test]
fn version_and_usage_errors() {
    let out = run(&["--version"]);
    assert!(out.status.success());
    let v = String::from_utf8_lossy(&out.stdout);
    assert!(
        v.contains(env!("CARGO_PKG_VERSION")) && v.contains("rustc"),
        "{v}"
    );
    assert_eq!(run(&["--no-such-flag"]).status.code(), Some(2));
    for bad in [
        "metrics",
        "/healthz",
        "/",
        "/-/reload",
        "/metrics?x=1",
        "/a b",
        "/métrics",
    ] {
        assert_eq!(
            run(&["--web.telemetry-path", bad]).status.code(),
            Some(2),
            "{bad}"
        );
    }
}

#[test]
fn config_check_prints_the_plan_or_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "https://apiv1.my.opswat.com", 30, "");
    let out = run(&["--config.file", path.to_str().unwrap(), "--config.check"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(r#"account "acme": 30 licence(s)"#),
        "{stdout}"
    );
    assert!(
        stdout.contains("licence budget 10 per 1m, token budget 5 per 1m"),
        "{stdout}"
    );
    assert!(
        stdout.contains("shortest refresh interval the budget allows: 4m; effective interval: 1h"),
        "{stdout}"
    );

    let stretched = std::fs::read_to_string(&path)
        .unwrap()
        .replace("poll_interval: 1h", "poll_interval: 1m");
    std::fs::write(&path, stretched).unwrap();
    let out = run(&["--config.file", path.to_str().unwrap(), "--config.check"]);
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("warning: poll_interval 1m is shorter than the budget allows")
    );

    let out = run(&[
        "--config.file",
        "tests/bad-configs/unknown-key.yaml",
        "--config.check",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("tests/bad-configs/unknown-key.yaml:9:9: accounts[0].licenses[0]: unknown field `expiry_warning`"), "{stderr}");
    let out = run(&["--config.file", "/nonexistent/config.yaml"]);
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_against_a_portal_started_separately() {
    let sim = sim(sim_config(&[("id", "s", "A", 3)])).await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &sim.base_url(), 3, "");
    let out = tokio::task::spawn_blocking(move || {
        run(&["--config.file", path.to_str().unwrap(), "--once"])
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout
            .matches("opswat_license_expiry_timestamp_seconds{")
            .count(),
        3,
        "{stdout}"
    );
    assert_eq!(sim.log().iter().filter(|s| s.status == 200).count(), 4); // 1 token + 3 licences

    // A failing poll makes --once exit 1.
    sim.set_license(&key("A", 1), 1, None);
    let dir2 = tempfile::tempdir().unwrap();
    let path = write_config(dir2.path(), &sim.base_url(), 3, "");
    let out = tokio::task::spawn_blocking(move || {
        run(&["--config.file", path.to_str().unwrap(), "--once"])
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("license=lic-1 product_id=1: license: HTTP 404")
    );
}

#[test]
fn demo_once_shows_every_family() {
    let out = run(&["--demo", "--once"]);
    // The demo has an unknown key (404) on purpose, so --once reports a failure.
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for f in FAMILIES {
        assert!(stdout.contains(&format!("\n# TYPE {f} ")), "{f} missing");
    }
    assert!(stdout.contains(r#"license_type="evaluated""#));
    // Expired, 5, 25, 50 days, over a year.
    let days: Vec<f64> = stdout
        .lines()
        .filter(|l| l.starts_with("opswat_license_expires_in_seconds{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap() / 86400.0)
        .collect();
    for (lo, hi) in [
        (-11.0, -9.0),
        (5.0, 6.0),
        (25.0, 26.0),
        (50.0, 51.0),
        (365.0, 500.0),
    ] {
        assert!(
            days.iter().any(|d| *d > lo && *d < hi),
            "no licence with {lo}..{hi} days: {days:?}"
        );
    }
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn get(url: &str) -> (u16, String) {
    // A tiny HTTP/1.0 client: the test needs no runtime for it.
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest
        .split_once('/')
        .map(|(h, p)| (h, format!("/{p}")))
        .unwrap();
    let Ok(mut s) = std::net::TcpStream::connect(host) else {
        return (0, String::new());
    };
    let method = if path == "/-/reload" { "POST" } else { "GET" };
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let status = buf
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn wait_ready(base: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(&format!("{base}/readyz")).0 != 200 {
        assert!(Instant::now() < deadline, "never ready");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn send_signal(child: &Running, signal: &str) {
    let pid = child.0.id().to_string();
    let sent = Command::new("kill").args([signal, &pid]).status().unwrap();
    assert!(sent.success(), "kill {signal} {pid}");
}

fn sigterm_exits_zero(mut child: Running) {
    send_signal(&child, "-TERM");
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            assert_eq!(status.code(), Some(0));
            return;
        }
        assert!(Instant::now() < deadline, "still running 3s after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn demo_serves_metrics_and_stops_on_sigterm() {
    let port = free_port();
    let child = Running(
        exporter()
            .args([
                "--demo",
                "--web.listen-address",
                &format!("127.0.0.1:{port}"),
                "--log.format",
                "json",
            ])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&base);
    let (status, body) = get(&format!("{base}/metrics"));
    assert_eq!(status, 200);
    for f in FAMILIES {
        assert!(body.contains(&format!("\n# TYPE {f} ")), "{f} missing");
    }
    let (status, page) = get(&format!("{base}/"));
    assert_eq!(status, 200);
    assert!(page.contains("core-linux-prod"));
    sigterm_exits_zero(child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_by_http_and_sighup() {
    let sim = sim(sim_config(&[("id", "s", "A", 3)])).await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &sim.base_url(), 3, "");
    let port = free_port();
    let mut child = exporter()
        .args([
            "--config.file",
            path.to_str().unwrap(),
            "--web.listen-address",
            &format!("127.0.0.1:{port}"),
            "--log.format",
            "json",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let child = Running(child);
    let base = format!("http://127.0.0.1:{port}");
    let b = base.clone();
    tokio::task::spawn_blocking(move || wait_ready(&b))
        .await
        .unwrap();
    let calls = sim.log().len();

    // Remove one licence, reload over HTTP.
    write_config(dir.path(), &sim.base_url(), 2, "");
    let b = base.clone();
    let (status, body) = tokio::task::spawn_blocking(move || get(&format!("{b}/-/reload")))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let b = base.clone();
    let metrics = tokio::task::spawn_blocking(move || get(&format!("{b}/metrics")).1)
        .await
        .unwrap();
    assert!(!metrics.contains(r#"license="lic-2""#));
    assert!(metrics.contains(r#"license="lic-1""#));
    assert!(metrics.contains("opswat_exporter_config_last_reload_successful 1"));
    assert_eq!(sim.log().len(), calls, "licences that stay were re-polled");

    // A broken config is rejected; the running one stays.
    std::fs::write(&path, "accounts: [\n").unwrap();
    let b = base.clone();
    let (status, body) = tokio::task::spawn_blocking(move || get(&format!("{b}/-/reload")))
        .await
        .unwrap();
    assert_eq!(status, 400);
    assert!(body.contains("config.yaml"), "{body}");
    let b = base.clone();
    let metrics = tokio::task::spawn_blocking(move || get(&format!("{b}/metrics")).1)
        .await
        .unwrap();
    assert!(metrics.contains("opswat_exporter_config_last_reload_successful 0"));
    assert!(metrics.contains(r#"license="lic-1""#));

    // SIGHUP with a good config adds a licence back.
    write_config(dir.path(), &sim.base_url(), 3, "");
    send_signal(&child, "-HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let b = base.clone();
        let metrics = tokio::task::spawn_blocking(move || get(&format!("{b}/metrics")).1)
            .await
            .unwrap();
        if metrics
            .contains(r#"opswat_license_expiry_timestamp_seconds{account="acme",license="lic-2""#)
            && metrics.contains("opswat_exporter_config_last_reload_successful 1")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "SIGHUP reload did not add the licence"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::task::spawn_blocking(move || sigterm_exits_zero(child))
        .await
        .unwrap();

    // Logs are one JSON object per line.
    let lines: Vec<String> = BufReader::new(stderr).lines().map(Result::unwrap).collect();
    assert!(lines.len() >= 3);
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}"));
        assert!(
            v.get("level").is_some() && v.get("timestamp").is_some(),
            "{l}"
        );
    }
    assert!(lines.iter().any(|l| l.contains("config reload rejected")));
}
