//! Wiring: one portal client and one scheduler task per account over a shared store and
//! registry; start, poll once, reload, stop.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::clock::Clock;
use crate::config::{Account, Config};
use crate::metrics::Metrics;
use crate::portal::{PortalClient, PortalError, ProxyChoice};
use crate::ratelimit::RateBudget;
use crate::scheduler::{AccountWorker, Slot, Update};
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
    updates: mpsc::UnboundedSender<Update>,
    task: JoinHandle<AccountWorker>,
}

impl Running {
    /// Same name, credentials and portal settings: the worker and its client can stay.
    fn serves(&self, account: &Account) -> bool {
        self.account.name == account.name
            && self.account.client_id == account.client_id
            && self.account.client_secret == account.client_secret
            && self.account.portal == account.portal
    }

    async fn stop(self) -> Vec<Slot> {
        let _ = self.stop.send(());
        match self.task.await {
            Ok(worker) => worker.into_slots(),
            Err(_) => Vec::new(),
        }
    }
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

    fn new_client(&self, account: &Account) -> anyhow::Result<Arc<PortalClient>> {
        Ok(Arc::new(PortalClient::new(
            account,
            &self.options.proxy,
            self.metrics.telemetry.clone(),
            self.options.clock.clone(),
        )?))
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
        let (updates, updates_rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(worker.run_with_updates(
            async move {
                let _ = stopped.await;
            },
            updates_rx,
        ));
        Running {
            account: account.clone(),
            client,
            stop,
            updates,
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
            let client = self.new_client(a)?;
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
            let client = self.new_client(a)?;
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
    ///
    /// An account whose name, credentials and portal settings stay keeps its worker and
    /// client (a poll in flight finishes). Any other account gets a new client whose
    /// budgets start with the history of the organisation's previous client, taken
    /// after that client's worker stopped, so a call it abandoned still counts.
    pub async fn reload(&mut self, config: Config) -> anyhow::Result<()> {
        // Build the new clients first: a failure leaves the running config untouched.
        let mut fresh = Vec::new();
        for a in &config.accounts {
            if !self.running.iter().any(|r| r.serves(a)) {
                match self.new_client(a) {
                    Ok(c) => fresh.push((a.name.clone(), c)),
                    Err(e) => {
                        self.reload_failed();
                        return Err(e);
                    }
                }
            }
        }
        self.config = config;
        self.store.sync(&self.config);

        // Keep what serves an account as it is now; stop the rest.
        let mut kept = Vec::new();
        let mut stopped: Vec<(Account, Arc<PortalClient>, Vec<Slot>)> = Vec::new();
        for r in std::mem::take(&mut self.running) {
            match self.config.accounts.iter().find(|a| r.serves(a)) {
                Some(a) => {
                    let _ = r.updates.send(Update {
                        account: a.clone(),
                        poll_interval: self.config.poll_interval,
                    });
                    kept.push(r);
                }
                None => {
                    let (account, client) = (r.account.clone(), Arc::clone(&r.client));
                    let slots = r.stop().await;
                    if !self.config.accounts.iter().any(|a| a.name == account.name) {
                        self.metrics.telemetry.remove_account(&account.name);
                    }
                    stopped.push((account, client, slots));
                }
            }
        }
        let accounts = self.config.accounts.clone();
        for a in &accounts {
            self.metrics.telemetry.init_account(&a.name);
            if let Some(i) = kept.iter().position(|r| r.account.name == a.name) {
                let mut r = kept.remove(i);
                r.account = a.clone();
                self.running.push(r);
                continue;
            }
            let client = fresh
                .iter()
                .find(|(n, _)| *n == a.name)
                .map(|(_, c)| Arc::clone(c))
                .expect("a client was built for every account without a worker");
            // The same organisation may come back under another name: match the
            // credentials first. Its server-side window still holds the old calls.
            let previous = stopped
                .iter()
                .find(|(old, _, _)| old.client_id == a.client_id)
                .or_else(|| stopped.iter().find(|(old, _, _)| old.name == a.name));
            let mut slots = Vec::new();
            if let Some((old, old_client, old_slots)) = previous {
                RateBudget::inherit(client.token_budget(), old_client.token_budget());
                RateBudget::inherit(client.license_budget(), old_client.license_budget());
                if old.name == a.name {
                    slots = old_slots.clone();
                }
            }
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
            r.stop().await;
        }
    }
}
