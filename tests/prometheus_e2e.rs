//! End to end with a real Prometheus (Debian's `prometheus` package): it scrapes the
//! exporter running `--demo` on loopback and evaluates the alert rules; every PromQL
//! expression of the Grafana dashboard is run through its HTTP API.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::free_port;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_opswat-license-exporter");

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn http_get(port: u16, path_and_query: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path_and_query} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"
    )
    .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

fn encode(q: &str) -> String {
    let mut out = String::new();
    for b in q.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn query(port: u16, q: &str) -> Value {
    let (status, body) =
        http_get(port, &format!("/api/v1/query?query={}", encode(q))).expect("prometheus answers");
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{q}: {e}: {body}"));
    assert_eq!(status, 200, "query failed: {q}\n{body}");
    assert_eq!(v["status"], "success", "{q}: {body}");
    v
}

/// Dashboard variables replaced as Grafana would with "All" selected.
fn substitute(expr: &str) -> String {
    expr.replace("$account", ".*")
        .replace("$license", ".*")
        .replace("$product", ".*")
        .replace("$__rate_interval", "1m")
        .replace("$__range", "5m")
}

#[test]
fn prometheus_scrapes_the_demo_and_every_query_and_rule_works() {
    if Command::new("prometheus")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install prometheus (Debian package)"
        );
        eprintln!("SKIPPED: prometheus is not installed (apt-get install prometheus)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exporter_port = free_port();
    let _exporter = Killed(
        Command::new(BIN)
            .args([
                "--demo",
                "--web.listen-address",
                &format!("127.0.0.1:{exporter_port}"),
                "--log.level",
                "warn",
            ])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    // The rules as shipped, and a copy without `for:` so that alerts reach "firing" now.
    let rules = std::fs::read_to_string("dashboards/opswat-license-alerts.yml").unwrap();
    let immediate: String = rules
        .lines()
        .filter(|l| !l.trim_start().starts_with("for:"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(dir.path().join("rules.yml"), immediate).unwrap();
    let prom_port = free_port();
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\n\
             rule_files: [ {} ]\n\
             scrape_configs:\n  - job_name: opswat-license-exporter\n    static_configs: [ {{ targets: ['127.0.0.1:{exporter_port}'] }} ]\n",
            dir.path().join("rules.yml").display()
        ),
    )
    .unwrap();
    let _prometheus = Killed(
        Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    // Wait for several scrapes (rate() needs two samples) and rule evaluations.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ok = http_get(
            prom_port,
            &format!(
                "/api/v1/query?query={}",
                encode("count_over_time(up[1m]) >= 5 and up == 1")
            ),
        )
        .and_then(|(s, b)| (s == 200).then_some(b))
        .and_then(|b| serde_json::from_str::<Value>(&b).ok())
        .is_some_and(|v| {
            v["data"]["result"]
                .as_array()
                .is_some_and(|r| !r.is_empty())
        });
        if ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never scraped the exporter 5 times"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    std::thread::sleep(Duration::from_secs(3));

    // Every dashboard query parses and returns data.
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string("dashboards/opswat-licenses.json").unwrap())
            .unwrap();
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = substitute(target["expr"].as_str().unwrap());
            let v = query(prom_port, &expr);
            let result = v["data"]["result"].as_array().unwrap();
            assert!(
                !result.is_empty(),
                "panel {:?}: no data for {expr}",
                panel["title"]
            );
            checked += 1;
        }
    }
    for var in dashboard["templating"]["list"].as_array().unwrap() {
        let Some(q) = var["query"]["query"].as_str() else {
            continue;
        };
        // label_values(SELECTOR, LABEL) → count by (LABEL) (SELECTOR)
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|s| s.strip_suffix(')'))
            .unwrap();
        let (selector, label) = inner.rsplit_once(',').unwrap();
        let expr = substitute(&format!("count by ({}) ({selector})", label.trim()));
        let v = query(prom_port, &expr);
        assert!(
            !v["data"]["result"].as_array().unwrap().is_empty(),
            "variable {}: {expr}",
            var["name"]
        );
        checked += 1;
    }
    assert!(checked >= 20, "{checked}");

    // Every rule evaluates without error.
    let (_, body) = http_get(prom_port, "/api/v1/rules").unwrap();
    let rules: Value = serde_json::from_str(&body).unwrap();
    let mut names = Vec::new();
    for group in rules["data"]["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            assert_eq!(rule["health"], "ok", "{rule}");
            names.push(rule["name"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(names.len(), 12, "{names:?}");

    // The alerts the demo data should fire, and only those.
    let (_, body) = http_get(prom_port, "/api/v1/alerts").unwrap();
    let alerts: Value = serde_json::from_str(&body).unwrap();
    let mut firing: Vec<String> = alerts["data"]["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["state"] == "firing")
        .map(|a| {
            let l = &a["labels"];
            let who = l["deployment_id"]
                .as_str()
                .or(l["license"].as_str())
                .unwrap_or("-");
            format!("{} {who}", l["alertname"].as_str().unwrap())
        })
        .collect();
    firing.sort();
    let mut expected = vec![
        "OpswatLicenseExpired kiosk-lobby",
        "OpswatLicenseExpiresIn7Days email-gateway",
        "OpswatLicenseExpiresIn30Days icap-gateway",
        "OpswatLicenseExpiresIn30Days storage-trial",
        "OpswatLicenseExpiresIn60Days core-windows-dr",
        "OpswatLicenseActivationsNearLimit core-linux-prod",
        "OpswatLicenseActivationsNearLimit icap-gateway",
        "OpswatLicenseActivationsNearLimit kiosk-lobby",
        "OpswatLicenseDeploymentExpiring mail-01",
        "OpswatLicenseDeploymentExpiring KIOSK-LOBBY",
        "OpswatLicenseNeverPolled retired-key",
    ];
    expected.sort();
    assert_eq!(firing, expected);
    assert!(Path::new("dashboards/opswat-license-alerts.test.yml").exists());
}
