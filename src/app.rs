//! Wiring: one portal client and one scheduler task per account over a shared store and
//! registry; start, poll once, reload, stop.

use std::sync::Arc;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::clock::Clock;
use crate::config::{Account, Config};
use crate::metrics::Metrics;
use crate::portal::{PortalClient, PortalError, ProxyChoice};
use crate::ratelimit::RateBudget;
use crate::scheduler::{AccountWorker, Slot};
use crate::store::{LicenseId, Store};

/// How the exporter reaches the portal and tells time.
#[derive(Clone, Debug)]
pub struct Options {
    /// Proxy choice when the config names none.
    pub proxy: ProxyChoice,
    /// Wall clock for timestamps.
    pub clock: Clock,
    /// Register the process collector (off in golden tests).
    pub process_metrics: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            proxy: ProxyChoice::Environment,
            clock: Clock::system(),
            process_metrics: true,
        }
    }
}

struct Running {
    account: Account,
    client: Arc<PortalClient>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<AccountWorker>,
}

/// The exporter's moving parts.
pub struct Exporter {
    /// Shared licence state.
    pub store: Arc<Store>,
    /// Registry and telemetry.
    pub metrics: Arc<Metrics>,
    options: Options,
    config: Config,
    running: Vec<Running>,
}

impl Exporter {
    /// Builds the store and registry for `config`; nothing runs yet.
    pub fn new(config: Config, options: Options) -> anyhow::Result<Self> {
        let store = Store::new();
        store.sync(&config);
        let metrics = Arc::new(Metrics::new(
            Arc::clone(&store),
            options.clock.clone(),
            options.process_metrics,
        )?);
        metrics
            .telemetry
            .config_loaded(true, options.clock.now_unix());
        for a in &config.accounts {
            metrics.telemetry.init_account(&a.name);
        }
        Ok(Exporter {
            store,
            metrics,
            options,
            config,
            running: Vec::new(),
        })
    }

    /// The config in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    fn client(
        &self,
        account: &Account,
        previous: Option<&Running>,
    ) -> anyhow::Result<Arc<PortalClient>> {
        if let Some(p) = previous
            && p.account.name == account.name
            && p.account.client_id == account.client_id
            && p.account.client_secret == account.client_secret
            && p.account.portal == account.portal
        {
            return Ok(Arc::clone(&p.client));
        }
        let client = PortalClient::new(
            account,
            &self.options.proxy,
            self.metrics.telemetry.clone(),
            self.options.clock.clone(),
        )?;
        if let Some(p) = previous {
            // Same organisation (same account name): the server still counts the calls
            // of the old client, so the new budgets start with their history.
            RateBudget::inherit(client.token_budget(), p.client.token_budget());
            RateBudget::inherit(client.license_budget(), p.client.license_budget());
        }
        Ok(Arc::new(client))
    }

    fn spawn(&self, account: &Account, client: Arc<PortalClient>, slots: Vec<Slot>) -> Running {
        let mut worker = AccountWorker::new(
            account,
            self.config.poll_interval,
            Arc::clone(&client),
            Arc::clone(&self.store),
            self.options.clock.clone(),
        );
        worker.adopt(slots);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(worker.run(async move {
            let _ = stopped.await;
        }));
        Running {
            account: account.clone(),
            client,
            stop,
            task,
        }
    }

    /// Starts one polling task per account.
    pub fn start(&mut self) -> anyhow::Result<()> {
        for plan in self.config.plan() {
            if plan.stretched {
                tracing::warn!(account = %plan.account, licenses = plan.licenses, poll_interval = %humantime::format_duration(self.config.poll_interval), effective_interval = %humantime::format_duration(plan.effective_interval), "the licence rate budget cannot refresh every licence within poll_interval; stretching the interval");
            }
        }
        let accounts = self.config.accounts.clone();
        for a in &accounts {
            let client = self.client(a, None)?;
            let running = self.spawn(a, client, Vec::new());
            self.running.push(running);
        }
        Ok(())
    }

    /// Polls every licence once (within the budgets), accounts in parallel. Returns the
    /// failures.
    pub async fn poll_once(&self) -> anyhow::Result<Vec<(LicenseId, PortalError)>> {
        let mut set = tokio::task::JoinSet::new();
        for a in &self.config.accounts {
            let client = self.client(a, None)?;
            let mut worker = AccountWorker::new(
                a,
                self.config.poll_interval,
                client,
                Arc::clone(&self.store),
                self.options.clock.clone(),
            );
            set.spawn(async move { worker.poll_all_once().await });
        }
        let mut failures = Vec::new();
        while let Some(r) = set.join_next().await {
            failures.extend(r?);
        }
        Ok(failures)
    }

    /// Takes a new config: licences that stay keep their data, poll state and schedule;
    /// removed ones lose their series at once; added ones are polled within the budget.
    pub async fn reload(&mut self, config: Config) -> anyhow::Result<()> {
        // Build every client first: a failure here leaves the running config untouched.
        let mut old: Vec<Running> = std::mem::take(&mut self.running);
        let mut clients = Vec::with_capacity(config.accounts.len());
        for a in &config.accounts {
            // The same organisation may come back under another name: the server still
            // counts its calls, so match on the credentials first.
            let previous = old
                .iter()
                .find(|r| r.account.client_id == a.client_id)
                .or_else(|| old.iter().find(|r| r.account.name == a.name));
            match self.client(a, previous) {
                Ok(c) => clients.push(c),
                Err(e) => {
                    self.running = old;
                    self.metrics
                        .telemetry
                        .config_loaded(false, self.options.clock.now_unix());
                    return Err(e);
                }
            }
        }
        let mut slots_by_account = Vec::new();
        for r in old.drain(..) {
            let _ = r.stop.send(());
            let slots = match r.task.await {
                Ok(worker) => worker.into_slots(),
                Err(_) => Vec::new(),
            };
            if !config.accounts.iter().any(|a| a.name == r.account.name) {
                self.metrics.telemetry.remove_account(&r.account.name);
            }
            slots_by_account.push((r.account.name, slots));
        }
        self.config = config;
        self.store.sync(&self.config);
        let accounts = self.config.accounts.clone();
        for (a, client) in accounts.iter().zip(clients) {
            self.metrics.telemetry.init_account(&a.name);
            let slots = slots_by_account
                .iter_mut()
                .find(|(n, _)| *n == a.name)
                .map(|(_, s)| std::mem::take(s))
                .unwrap_or_default();
            let running = self.spawn(a, client, slots);
            self.running.push(running);
        }
        self.metrics
            .telemetry
            .config_loaded(true, self.options.clock.now_unix());
        Ok(())
    }

    /// Records a config that could not be loaded (the running one stays).
    pub fn reload_failed(&self) {
        self.metrics
            .telemetry
            .config_loaded(false, self.options.clock.now_unix());
    }

    /// Stops every polling task; polls in flight are abandoned.
    pub async fn stop(&mut self) {
        for r in self.running.drain(..) {
            let _ = r.stop.send(());
            let _ = r.task.await;
        }
    }
}
