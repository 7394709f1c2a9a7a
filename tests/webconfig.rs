//! `--web.config.file`: TLS, client certificates, basic auth and extra headers, served on
//! loopback and checked with a real TLS client. Certificates: tests/fixtures/tls.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use opswat_license_exporter::clock::Clock;
use opswat_license_exporter::metrics::Metrics;
use opswat_license_exporter::server::{self, WebState};
use opswat_license_exporter::store::Store;
use opswat_license_exporter::webconfig::WebConfig;
use tokio::net::TcpListener;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tls")
        .join(name)
}

fn write(dir: &Path, yaml: &str) -> PathBuf {
    let p = dir.join("web.yml");
    std::fs::write(&p, yaml).unwrap();
    p
}

async fn serve(web: WebConfig) -> (String, tokio::sync::oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let store = Store::new();
    let state = Arc::new(WebState {
        metrics: Arc::new(Metrics::new(Arc::clone(&store), Clock::system(), false).unwrap()),
        store,
        telemetry_path: "/metrics".into(),
        reload: None,
        clock: Clock::system(),
        web: Arc::new(web),
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server::serve(listener, state, async move {
        let _ = stopped.await;
    }));
    (format!("127.0.0.1:{port}"), stop)
}

fn tls_client(identity: bool) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(fixture("ca.crt")).unwrap()).unwrap();
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only([ca])
        .timeout(Duration::from_secs(5));
    if identity {
        let mut pem = std::fs::read(fixture("client.crt")).unwrap();
        pem.extend(std::fs::read(fixture("client.key")).unwrap());
        b = b.identity(reqwest::Identity::from_pem(&pem).unwrap());
    }
    b.build().unwrap()
}

#[tokio::test]
async fn tls_with_basic_auth_and_headers() {
    let dir = tempfile::tempdir().unwrap();
    let hash = bcrypt::hash("s3cret pass", 4).unwrap();
    let path = write(
        dir.path(),
        &format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\n  min_version: TLS12\n\
             basic_auth_users:\n  prometheus: '{hash}'\n\
             http_server_config:\n  headers:\n    X-Frame-Options: DENY\n",
            fixture("server.crt").display(),
            fixture("server.key").display()
        ),
    );
    let web = WebConfig::load(&path).unwrap();
    let (addr, _stop) = serve(web).await;
    let client = tls_client(false);
    let url = format!("https://{addr}/metrics");

    let r = client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["www-authenticate"],
        r#"Basic realm="opswat-license-exporter""#
    );
    assert_eq!(r.headers()["x-frame-options"], "DENY");
    let r = client
        .get(&url)
        .basic_auth("prometheus", Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client
        .get(&url)
        .basic_auth("nobody", Some("s3cret pass"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // The scheme is case-insensitive.
    for scheme in ["BASIC", "basic"] {
        use base64::Engine as _;
        let token = base64::engine::general_purpose::STANDARD.encode("prometheus:s3cret pass");
        let r = client
            .get(&url)
            .header("authorization", format!("{scheme} {token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{scheme}");
    }
    for _ in 0..3 {
        let r = client
            .get(&url)
            .basic_auth("prometheus", Some("s3cret pass"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(
            r.text()
                .await
                .unwrap()
                .contains("opswat_exporter_build_info")
        );
    }
    // Health checks need credentials too (as with exporter-toolkit).
    let r = client
        .get(format!("https://{addr}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Plain HTTP to the TLS port gets nowhere.
    let plain = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    assert!(
        plain
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .is_err()
    );
}

#[tokio::test]
async fn client_certificates_are_required_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        &format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {}\n",
            fixture("server.crt").display(),
            fixture("server.key").display(),
            fixture("ca.crt").display()
        ),
    );
    let (addr, _stop) = serve(WebConfig::load(&path).unwrap()).await;
    let url = format!("https://{addr}/healthz");
    assert!(
        tls_client(false).get(&url).send().await.is_err(),
        "served without a client certificate"
    );
    let r = tls_client(true).get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[test]
fn bad_web_configs_are_rejected_with_a_location() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites: [x]\n",
            "unknown field `cipher_suites`",
        ),
        (
            "tls_server_config:\n  cert_file: missing.crt\n  key_file: missing.key\n",
            "tls_server_config.cert_file: cannot read certificates",
        ),
        (
            "basic_auth_users:\n  alice: plaintext\n",
            "not a bcrypt hash",
        ),
        (
            &format!(
                "tls_server_config:\n  cert_file: {}\n  key_file: {}\n  client_auth_type: RequestClientCert\n",
                fixture("server.crt").display(),
                fixture("server.key").display()
            ),
            "client_auth_type: \"RequestClientCert\" is not supported",
        ),
        (
            &format!(
                "tls_server_config:\n  cert_file: {}\n  key_file: {}\n",
                fixture("server.crt").display(),
                fixture("client.key").display()
            ),
            "the key does not fit the certificate",
        ),
        (
            "http_server_config:\n  headers:\n    Content-Type: text/html\n",
            "set by the exporter itself",
        ),
        (
            "http_server_config:\n  headers:\n    Content-Encoding: gzip\n",
            "set by the exporter itself",
        ),
        (
            "basic_auth_users:\n  'a:b': '$2b$04$abcdefghijklmnopqrstuOabcdefghijklmnopqrstuvwxyz01234'\n",
            "has no ':'",
        ),
        (
            "basic_auth_users:\n  alice: '$2x$04$abcdefghijklmnopqrstuOabcdefghijklmnopqrstuvwxyz01234'\n",
            "not a bcrypt hash",
        ),
        (
            "basic_auth_users: '$2b$04$abcdefghijklmnopqrstuOabcdefghijklmnopqrstuvwxyz01234'\n",
            "invalid type: a string, expected a map",
        ),
    ];
    for (yaml, want) in cases {
        let path = write(dir.path(), yaml);
        let err = match WebConfig::load(&path) {
            Ok(_) => panic!("accepted: {yaml}"),
            Err(e) => e,
        };
        let text = err.to_string();
        assert!(text.contains(want), "{text}");
        assert!(
            !text.contains("abcdefghijklmnopqrstu"),
            "a hash in the message: {text}"
        );
        assert!(!text.contains("Raw"), "an internal type name: {text}");
        assert!(err.location.is_some(), "no line: {text}");
    }
    // The binary exits 2 on it.
    let path = write(dir.path(), "basic_auth_users:\n  alice: plaintext\n");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_opswat-license-exporter"))
        .args([
            "--demo",
            "--web.config.file",
            path.to_str().unwrap(),
            "--config.check",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_costly_hash_does_not_slow_loading() {
    // Cost 31 would take days to verify; loading only checks the shape.
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "basic_auth_users:\n  alice: '$2b$31$abcdefghijklmnopqrstuOabcdefghijklmnopqrstuvwxyz01234'\n",
    );
    let started = std::time::Instant::now();
    let web = WebConfig::load(&path).unwrap();
    assert!(web.requires_auth());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "loading verified the hash"
    );
}
