//! `opswat-license-exporter`: the command line.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use opswat_license_exporter::app::{Exporter, Options};
use opswat_license_exporter::clock::Clock;
use opswat_license_exporter::config::{self, Account, Config, LicenseConfig, PortalSettings};
use opswat_license_exporter::logging::{self, LogFormat, LogLevel};
use opswat_license_exporter::portal::ProxyChoice;
use opswat_license_exporter::secret::Secret;
use opswat_license_exporter::server::{self, ReloadRequest, WebState};
use opswat_license_exporter::sim::{self, SimPortal};
use opswat_license_exporter::webconfig::WebConfig;
use opswat_license_exporter::{VERSION, products};

/// Prometheus exporter for My OPSWAT licences: expiry dates and deployments, polled
/// within the API's rate limits and served at /metrics.
#[derive(Parser, Debug)]
#[command(name = "opswat-license-exporter", version = VERSION)]
struct Cli {
    /// YAML config file.
    #[arg(
        long = "config.file",
        value_name = "PATH",
        default_value = "config.yaml"
    )]
    config_file: PathBuf,
    /// Validate the config, print the polling plan, exit 0 (valid) or 2 (invalid).
    #[arg(long = "config.check")]
    config_check: bool,
    /// Address to listen on; overrides web.listen_address.
    #[arg(long = "web.listen-address", value_name = "ADDR")]
    listen_address: Option<String>,
    /// Path of the metrics endpoint.
    #[arg(
        long = "web.telemetry-path",
        value_name = "PATH",
        default_value = "/metrics"
    )]
    telemetry_path: String,
    /// TLS and basic auth for the HTTP endpoints, in the exporter-toolkit web-config format.
    #[arg(long = "web.config.file", value_name = "PATH")]
    web_config_file: Option<PathBuf>,
    /// Poll every licence once, print the metrics to stdout, exit 1 if any poll failed.
    #[arg(long)]
    once: bool,
    /// Start an embedded simulated portal with sample licences and watch those (no account needed).
    #[arg(long)]
    demo: bool,
    /// Log level.
    #[arg(long = "log.level", value_enum, default_value = "info")]
    log_level: LogLevel,
    /// Log format.
    #[arg(long = "log.format", value_enum, default_value = "logfmt")]
    log_format: LogFormat,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_level, cli.log_format, std::io::stderr);
    if let Err(e) = check_telemetry_path(&cli.telemetry_path) {
        eprintln!("--web.telemetry-path: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(run(cli))
}

/// A plain path that does not shadow another endpoint.
fn check_telemetry_path(path: &str) -> Result<(), String> {
    let plain = path.starts_with('/')
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-' | b'.'));
    if !plain {
        return Err(format!(
            "{path:?} must start with / and use only letters, digits, /, _, - and ."
        ));
    }
    if ["/", "/healthz", "/readyz", "/-/reload"].contains(&path) {
        return Err(format!("{path:?} is taken by another endpoint"));
    }
    Ok(())
}

async fn run(cli: Cli) -> ExitCode {
    let clock = Clock::system();
    // The demo's simulator lives as long as the exporter.
    let mut _sim = None;
    let (mut config, proxy) = if cli.demo {
        match demo_config(&clock).await {
            Ok((sim, config)) => {
                tracing::info!(portal = %sim.base_url(), "demo mode: watching sample licences on an embedded simulated portal");
                _sim = Some(sim);
                (config, ProxyChoice::Direct)
            }
            Err(e) => {
                eprintln!("cannot start the demo portal: {e:#}");
                return ExitCode::from(1);
            }
        }
    } else {
        match Config::load(&cli.config_file) {
            Ok(c) => (c, ProxyChoice::Environment),
            Err(e) => {
                eprintln!("invalid config: {e}");
                return ExitCode::from(2);
            }
        }
    };
    if let Some(addr) = &cli.listen_address {
        match config::parse_listen_address(addr) {
            Ok(a) => config.listen_address = a,
            Err(e) => {
                eprintln!("--web.listen-address: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let web = match &cli.web_config_file {
        None => WebConfig::default(),
        Some(path) => match WebConfig::load(path) {
            Ok(w) => w,
            Err(e) => {
                eprintln!("invalid web config: {e}");
                return ExitCode::from(2);
            }
        },
    };
    if cli.config_check {
        print_plan(&config);
        if let Some(path) = &cli.web_config_file {
            println!(
                "web config OK: {} (TLS {}, basic auth {})",
                path.display(),
                if web.tls.is_some() { "on" } else { "off" },
                if web.requires_auth() { "on" } else { "off" }
            );
        }
        return ExitCode::SUCCESS;
    }
    for w in &config.warnings {
        tracing::warn!(file = %config.path.display(), "{w}");
    }

    let options = Options {
        proxy,
        clock: clock.clone(),
        process_metrics: true,
    };
    let mut exporter = match Exporter::new(config, options) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("cannot start: {e:#}");
            return ExitCode::from(1);
        }
    };

    if cli.once {
        return match exporter.poll_once().await {
            Ok(failures) => {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(exporter.metrics.render().as_bytes());
                let _ = out.flush();
                for (id, e) in &failures {
                    eprintln!(
                        "poll failed: account={} license={} product_id={}: {e}",
                        id.account, id.license, id.product_id
                    );
                }
                if failures.is_empty() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                }
            }
            Err(e) => {
                eprintln!("cannot poll: {e:#}");
                ExitCode::from(1)
            }
        };
    }

    match serve(
        cli,
        exporter.config().listen_address,
        &mut exporter,
        clock,
        web,
    )
    .await
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e:#}");
            ExitCode::from(1)
        }
    }
}

async fn serve(
    cli: Cli,
    addr: std::net::SocketAddr,
    exporter: &mut Exporter,
    clock: Clock,
    web: WebConfig,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    exporter.start()?;
    let (reload_tx, mut reload_rx) = mpsc::channel::<ReloadRequest>(4);
    let state = Arc::new(WebState {
        metrics: Arc::clone(&exporter.metrics),
        store: Arc::clone(&exporter.store),
        telemetry_path: cli.telemetry_path.clone(),
        reload: (!cli.demo).then(|| reload_tx.clone()),
        clock,
        web: Arc::new(web),
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut server_stop = stop_rx.clone();
    let server = tokio::spawn(server::serve(listener, state, async move {
        let _ = server_stop.wait_for(|s| *s).await;
    }));
    tracing::info!(address = %addr, version = VERSION, accounts = exporter.config().accounts.len(), "listening");

    let mut sighup = signal(tokio::signal::unix::SignalKind::hangup())?;
    let mut sigterm = signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
            _ = sighup.recv() => {
                if cli.demo {
                    tracing::info!("SIGHUP ignored in demo mode");
                } else {
                    let _ = reload(&cli, exporter).await;
                }
            }
            Some(answer) = reload_rx.recv() => {
                let result = reload(&cli, exporter).await;
                let _ = answer.send(result);
            }
        }
    }
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    exporter.stop().await;
    match tokio::time::timeout(Duration::from_secs(6), server).await {
        Ok(Ok(r)) => r?,
        Ok(Err(e)) => return Err(e.into()),
        Err(_) => tracing::warn!("HTTP server did not stop in time"),
    }
    Ok(())
}

fn signal(kind: tokio::signal::unix::SignalKind) -> anyhow::Result<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(kind).context("cannot install a signal handler")
}

async fn reload(cli: &Cli, exporter: &mut Exporter) -> Result<(), String> {
    let mut config = match Config::load(&cli.config_file) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "config reload rejected; the running config stays");
            exporter.reload_failed();
            return Err(e.to_string());
        }
    };
    // The listener is already bound: a changed address needs a restart.
    let listen = exporter.config().listen_address;
    if config.listen_address != listen && cli.listen_address.is_none() {
        tracing::warn!(running = %listen, configured = %config.listen_address, "web.listen_address changed; restart to apply it");
    }
    config.listen_address = listen;
    for w in &config.warnings {
        tracing::warn!(file = %config.path.display(), "{w}");
    }
    match exporter.reload(config).await {
        Ok(()) => {
            tracing::info!(file = %cli.config_file.display(), "config reloaded");
            Ok(())
        }
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "config reload rejected; the running config stays");
            Err(format!("{e:#}"))
        }
    }
}

fn print_plan(config: &Config) {
    println!("config OK: {}", config.path.display());
    println!(
        "poll_interval {}, listen address {}",
        humantime::format_duration(config.poll_interval),
        config.listen_address
    );
    for (account, plan) in config.accounts.iter().zip(config.plan()) {
        let p = &account.portal;
        println!(
            "account {:?}: {} licence(s) at {}; licence budget {}, token budget {}",
            plan.account,
            plan.licenses,
            config::display_url(&p.base_url),
            p.license_rate_limit,
            p.token_rate_limit
        );
        println!(
            "  shortest refresh interval the budget allows: {}; effective interval: {}",
            humantime::format_duration(plan.min_interval),
            humantime::format_duration(plan.effective_interval)
        );
        if plan.stretched {
            println!(
                "  warning: poll_interval {} is shorter than the budget allows; each licence is refreshed every {} instead",
                humantime::format_duration(config.poll_interval),
                humantime::format_duration(plan.effective_interval)
            );
        }
        for l in &account.licenses {
            let product = products::lookup(l.product_id)
                .map(|(n, p)| {
                    if p.is_empty() {
                        n.to_string()
                    } else {
                        format!("{n} ({p})")
                    }
                })
                .unwrap_or_else(|| "unknown product id".to_string());
            let limit = l
                .activations_limit
                .map(|n| format!(", allowance {n}"))
                .unwrap_or_default();
            println!(
                "  - {} (product_id {}: {product}{limit})",
                l.name, l.product_id
            );
        }
    }
    for w in &config.warnings {
        println!("warning: {w}");
    }
}

/// Starts the simulated portal on loopback and a config watching its sample licences.
async fn demo_config(clock: &Clock) -> anyhow::Result<(SimPortal, Config)> {
    let sim = SimPortal::bind(sim::demo_config(clock)).await?;
    let portal = PortalSettings {
        base_url: sim.base_url().parse()?,
        ..PortalSettings::default()
    };
    let licenses = sim::demo_licenses(clock)
        .into_iter()
        .map(|l| LicenseConfig {
            name: l.name.to_string(),
            activation_key: Secret::new(l.key),
            product_id: l.product_id,
            activations_limit: l.activations_limit,
        })
        .collect();
    let config = Config {
        path: PathBuf::from("(demo)"),
        // A demo is for the person at this machine: loopback unless told otherwise.
        listen_address: "127.0.0.1:9877".parse()?,
        poll_interval: Duration::from_secs(300),
        accounts: vec![Account {
            name: "demo".to_string(),
            client_id: Secret::new(sim::DEMO_CLIENT_ID),
            client_secret: Secret::new(sim::DEMO_CLIENT_SECRET),
            portal,
            licenses,
        }],
        warnings: Vec::new(),
    };
    Ok((sim, config))
}
