//! Proxies: HTTP(S)_PROXY and NO_PROXY from the environment are honoured, and
//! `portal.proxy_url` overrides them. A small forward/CONNECT proxy on loopback records
//! what it was asked.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::thread;

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_opswat-license-exporter");

/// A proxy that records each request line. CONNECT to loopback is tunnelled, CONNECT
/// elsewhere refused; absolute-form requests are forwarded to loopback targets.
fn start_proxy() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = Arc::clone(&seen);
    thread::spawn(move || {
        for conn in listener.incoming().take(200) {
            let Ok(conn) = conn else { continue };
            let s = Arc::clone(&s);
            thread::spawn(move || handle(conn, s));
        }
    });
    (format!("http://{addr}"), seen)
}

fn handle(client: TcpStream, seen: Arc<Mutex<Vec<String>>>) {
    let mut reader = BufReader::new(client.try_clone().unwrap());
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let end = line == "\r\n";
        head.push(line);
        if end {
            break;
        }
    }
    let request_line = head[0].trim_end().to_string();
    seen.lock().unwrap().push(request_line.clone());
    let mut parts = request_line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let mut client = client;
    if method == "CONNECT" {
        if !target.starts_with("127.0.0.1:") {
            let _ = client.write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n");
            return;
        }
        let Ok(upstream) = TcpStream::connect(target) else {
            return;
        };
        let _ = client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n");
        pipe(reader, client, upstream);
        return;
    }
    // Absolute form: http://127.0.0.1:PORT/path → origin form to that host.
    let Some(rest) = target.strip_prefix("http://") else {
        return;
    };
    let (host, path) = rest
        .split_once('/')
        .map(|(h, p)| (h, format!("/{p}")))
        .unwrap_or((rest, "/".into()));
    let Ok(mut upstream) = TcpStream::connect(host) else {
        return;
    };
    // One request per connection, so every request line is seen here.
    let mut out = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    for h in head[1..].iter().filter(|h| {
        let l = h.to_ascii_lowercase();
        !l.starts_with("connection:") && !l.starts_with("proxy-connection:")
    }) {
        out.push_str(h);
    }
    let _ = upstream.write_all(out.as_bytes());
    pipe(reader, client, upstream);
}

/// Copies both ways until either side closes (only this request's connection).
fn pipe(mut from_client: BufReader<TcpStream>, mut to_client: TcpStream, upstream: TcpStream) {
    let mut up_read = upstream.try_clone().unwrap();
    let mut up_write = upstream;
    let t = thread::spawn(move || {
        let _ = std::io::copy(&mut up_read, &mut to_client);
        let _ = to_client.shutdown(std::net::Shutdown::Both);
    });
    let mut buf = [0u8; 8192];
    loop {
        match from_client.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if up_write.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = up_write.shutdown(std::net::Shutdown::Both);
    let _ = t.join();
}

fn write_config(
    dir: &std::path::Path,
    base_url: &str,
    proxy_url: Option<&str>,
) -> std::path::PathBuf {
    let proxy = proxy_url
        .map(|p| format!(", proxy_url: \"{p}\""))
        .unwrap_or_default();
    let yaml = format!(
        "accounts:\n  - name: acme\n    client_id: id\n    client_secret: s\n    portal: {{ base_url: \"{base_url}\", timeout: 5s{proxy} }}\n    licenses:\n      - {{ name: one, activation_key: {}, product_id: 1 }}\n",
        key("A", 0)
    );
    let path = dir.join("config.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

fn once(config: &std::path::Path, env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(BIN);
    for v in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "NO_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "no_proxy",
    ] {
        c.env_remove(v);
    }
    c.args(["--config.file", config.to_str().unwrap(), "--once"])
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn dead_proxy() -> String {
    format!("http://127.0.0.1:{}", free_port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_proxies_and_the_config_override() {
    let sim = sim(sim_config(&[("id", "s", "A", 1)])).await;
    let (proxy, seen) = start_proxy();
    let dir = tempfile::tempdir().unwrap();

    // HTTP_PROXY from the environment carries both calls.
    let cfg = write_config(dir.path(), &sim.base_url(), None);
    let env_proxy = proxy.clone();
    let out = tokio::task::spawn_blocking(move || once(&cfg, &[("HTTP_PROXY", &env_proxy)]))
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = seen.lock().unwrap().clone();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("POST http://127.0.0.1") && l.contains("/portal/oauth2/token")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("GET http://127.0.0.1") && l.contains("active-deployments")),
        "{lines:?}"
    );
    seen.lock().unwrap().clear();

    // NO_PROXY exempts the portal: a dead proxy does not matter.
    let cfg = write_config(dir.path(), &sim.base_url(), None);
    let dead = dead_proxy();
    let out = tokio::task::spawn_blocking(move || {
        once(&cfg, &[("HTTP_PROXY", &dead), ("NO_PROXY", "127.0.0.1")])
    })
    .await
    .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // portal.proxy_url overrides a (dead) environment proxy.
    let cfg = write_config(dir.path(), &sim.base_url(), Some(&proxy));
    let dead = dead_proxy();
    let out = tokio::task::spawn_blocking(move || once(&cfg, &[("HTTP_PROXY", &dead)]))
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!seen.lock().unwrap().is_empty());
    seen.lock().unwrap().clear();

    // HTTPS targets go through HTTPS_PROXY with CONNECT (refused here: no network).
    let cfg = write_config(dir.path(), "https://apiv1.my.opswat.com", None);
    let env_proxy = proxy.clone();
    let out = tokio::task::spawn_blocking(move || once(&cfg, &[("HTTPS_PROXY", &env_proxy)]))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let lines = seen.lock().unwrap().clone();
    assert_eq!(
        lines.first().map(String::as_str),
        Some("CONNECT apiv1.my.opswat.com:443 HTTP/1.1"),
        "{lines:?}"
    );
    // The CONNECT line carries no secret, and the error no URL.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains(&key("A", 0)), "{stderr}");
}
