//! The deployment examples stay in step with the product: the PrometheusRule carries the
//! tested alert rules, the Kubernetes manifests keep their hardening, the example configs
//! parse, the systemd unit verifies, and the Dockerfile builds the way CI does.

use std::path::Path;
use std::process::Command;

use opswat_license_exporter::config::Config;
use serde_yaml::Value;

fn yaml(path: &str) -> Value {
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn prometheus_rule_carries_the_tested_alert_rules() {
    let rules = yaml("dashboards/opswat-license-alerts.yml");
    let crd = yaml("examples/kubernetes/prometheusrule.yaml");
    assert_eq!(crd["kind"], "PrometheusRule");
    assert_eq!(
        crd["spec"]["groups"], rules["groups"],
        "regenerate prometheusrule.yaml from the alerts file"
    );
}

#[test]
fn kubernetes_deployment_is_hardened_and_probed() {
    let d = yaml("examples/kubernetes/deployment.yaml");
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let c = &pod["containers"][0];
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["capabilities"]["drop"][0], "ALL");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert!(c["resources"]["limits"]["memory"].is_string());
    assert_eq!(d["spec"]["replicas"], 1);
    for f in ["service", "servicemonitor", "secret", "configmap"] {
        let v = yaml(&format!("examples/kubernetes/{f}.yaml"));
        assert!(v["kind"].is_string(), "{f}");
    }
}

/// Parses a config whose secret files live elsewhere, with the files provided.
fn parse_with_secrets(text: &str, secret_dir: &str, names: &[&str]) -> Config {
    let dir = tempfile::tempdir().unwrap();
    for n in names {
        std::fs::write(dir.path().join(n), format!("{n}-value\n")).unwrap();
    }
    let text = text.replace(secret_dir, &format!("{}/", dir.path().display()));
    Config::parse(&text, Path::new("example.yaml"), dir.path(), &|_| None)
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn example_configs_parse() {
    let cm = yaml("examples/kubernetes/configmap.yaml");
    let c = parse_with_secrets(
        cm["data"]["config.yaml"].as_str().unwrap(),
        "/etc/opswat-license-exporter/secrets/",
        &["client_id", "client_secret", "core_prod_key"],
    );
    assert_eq!(c.accounts[0].licenses.len(), 1);
    let text = std::fs::read_to_string("examples/systemd/config.yaml").unwrap();
    let c = parse_with_secrets(
        &text,
        "/run/credentials/opswat-license-exporter.service/",
        &["client_id", "client_secret", "core_prod_key"],
    );
    assert_eq!(c.accounts[0].client_secret.expose(), "client_secret-value");
    // The systemd unit loads exactly the credentials the config reads.
    let unit = std::fs::read_to_string("examples/systemd/opswat-license-exporter.service").unwrap();
    for n in ["client_id", "client_secret", "core_prod_key"] {
        assert!(unit.contains(&format!("LoadCredential={n}:")), "{n}");
    }
}

#[test]
fn compose_files_point_at_real_files() {
    let compose = yaml("examples/docker-compose.yml");
    for service in ["exporter", "prometheus", "grafana"] {
        for v in compose["services"][service]["volumes"]
            .as_sequence()
            .into_iter()
            .flatten()
        {
            let host = v.as_str().unwrap().split(':').next().unwrap();
            assert!(
                Path::new("examples").join(host).exists(),
                "{service}: {host} does not exist"
            );
        }
    }
    assert_eq!(compose["services"]["exporter"]["command"][0], "--demo");
}

#[test]
fn systemd_unit_verifies() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: systemd-analyze is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string("examples/systemd/opswat-license-exporter.service")
        .unwrap()
        .replace(
            "/usr/local/bin/opswat-license-exporter",
            env!("CARGO_BIN_EXE_opswat-license-exporter"),
        );
    let path = dir.path().join("opswat-license-exporter.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let problems: Vec<&str> = said
        .lines()
        .filter(|l| l.contains("opswat-license-exporter.service"))
        .collect();
    assert!(problems.is_empty(), "{said}");
}

#[test]
fn dockerfile_builds_the_way_ci_does() {
    let dockerfile = std::fs::read_to_string("Dockerfile").unwrap();
    let ci = std::fs::read_to_string(".ci/run").unwrap();
    let build = "cargo build --release --locked";
    assert!(
        dockerfile.contains(build) && ci.contains(build),
        "Dockerfile and .ci/run must both run `{build}`"
    );
    assert!(dockerfile.contains("USER 65532"), "non-root");
    assert!(dockerfile.contains("EXPOSE 9877"));
    assert!(dockerfile.contains(r#""--config.file", "/etc/opswat-license-exporter/config.yaml""#));
}
