//! Prometheus exporter for My OPSWAT licences.
//!
//! The flow is one-directional: [`config`] → [`scheduler`] (one task per account) →
//! [`ratelimit`] → [`portal`] (token cache, licence calls) → [`store`] → [`metrics`]
//! (rendered at scrape time) → [`server`]. The portal client knows nothing of Prometheus,
//! the server nothing of HTTP clients; the store is where they meet.

pub mod app;
pub mod clock;
pub mod config;
pub mod license;
pub mod logging;
pub mod metrics;
pub mod portal;
pub mod products;
pub mod ratelimit;
pub mod scheduler;
pub mod secret;
pub mod server;
pub mod sim;
pub mod store;
pub mod webconfig;

/// `--version` text: version, git revision, rustc.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (revision ",
    env!("OLE_GIT_REVISION"),
    ", ",
    env!("OLE_RUSTC_VERSION"),
    ")"
);
