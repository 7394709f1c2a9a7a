//! The HTTP endpoints, served on loopback.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use opswat_license_exporter::app::Exporter;
use opswat_license_exporter::clock::Clock;
use opswat_license_exporter::metrics::CONTENT_TYPE;
use opswat_license_exporter::portal::Endpoint;
use opswat_license_exporter::server::{self, WebState};
use opswat_license_exporter::sim::Fault;
use tokio::net::TcpListener;

struct Served {
    base: String,
    client: reqwest::Client,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn serve(exporter: &Exporter) -> Served {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let state = Arc::new(WebState {
        metrics: Arc::clone(&exporter.metrics),
        store: Arc::clone(&exporter.store),
        telemetry_path: "/metrics".into(),
        reload: None,
        clock: Clock::system(),
        web: Default::default(),
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server::serve(listener, state, async move {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    Served {
        base,
        client,
        stop,
        task,
    }
}

#[tokio::test]
async fn endpoints_status_codes_and_content_types() {
    let sim = sim(sim_config(&[("id", "s", "A", 2)])).await;
    // Hold the first licence answer back, so readiness can be seen changing.
    sim.push_key_fault(&key("A", 0), Fault::Delay(Duration::from_millis(700)));
    let mut acc = account("acme", ("id", "s"), &sim.base_url(), "A", 2);
    acc.licenses[1].name = "<script>alert(1)</script>".into();
    let mut exporter = Exporter::new(
        config(vec![acc], Duration::from_secs(3600)),
        options(Clock::system()),
    )
    .unwrap();
    let s = serve(&exporter).await;
    let get = |path: &str| s.client.get(format!("{}{path}", s.base)).send();

    assert_eq!(get("/healthz").await.unwrap().status(), 200);
    assert_eq!(get("/readyz").await.unwrap().status(), 503);
    exporter.start().unwrap();
    let mut ready = false;
    for _ in 0..100 {
        if get("/readyz").await.unwrap().status() == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "never ready");

    let r = get("/metrics").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], CONTENT_TYPE);
    let body = r.text().await.unwrap();
    assert!(body.contains("opswat_license_expiry_timestamp_seconds{"));
    assert!(body.contains("opswat_exporter_build_info{"));

    // Scrapes never call the portal.
    let before = sim.log().len();
    for _ in 0..50 {
        get("/metrics").await.unwrap().bytes().await.unwrap();
    }
    assert_eq!(sim.log().len(), before);

    let head = s
        .client
        .head(format!("{}/metrics", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(get("/nope").await.unwrap().status(), 404);
    let post = s
        .client
        .post(format!("{}/metrics", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 405);
    assert_eq!(post.headers()["allow"], "GET, HEAD");
    assert_eq!(
        s.client
            .delete(format!("{}/healthz", s.base))
            .send()
            .await
            .unwrap()
            .status(),
        405
    );
    assert_eq!(get("/-/reload").await.unwrap().status(), 405);

    let page = get("/").await.unwrap();
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let page = page.text().await.unwrap();
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(!page.contains("<script>"));
    assert!(page.contains(r#"href="/metrics""#));

    exporter.stop().await;
    s.stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(6), s.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn definitive_failures_count_as_polled_for_readiness() {
    let sim = sim(sim_config(&[("id", "s", "A", 1)])).await;
    sim.set_license(&key("A", 0), 1, None); // 404
    let mut exporter = Exporter::new(
        config(
            vec![account("acme", ("id", "s"), &sim.base_url(), "A", 1)],
            Duration::from_secs(3600),
        ),
        options(Clock::system()),
    )
    .unwrap();
    exporter.start().unwrap();
    for _ in 0..100 {
        if exporter.store.ready() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(exporter.store.ready());
    assert_eq!(
        exporter
            .metrics
            .telemetry
            .request_count("acme", Endpoint::License, "404"),
        1
    );
    exporter.stop().await;
}
