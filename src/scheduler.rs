//! One task per account: decides which licence to poll when, within the account's budget.
//!
//! - **First fill**: every licence not yet polled goes at once; the rate budget paces them.
//! - **Steady state**: one licence every `interval / n` ("pace"), always the one polled
//!   longest ago, so each licence is refreshed every `interval` and the calls are spread
//!   evenly instead of bursting at the top of the hour. A tick is never later than the
//!   oldest licence's `last + interval`, so no licence waits longer than the interval.
//! - **Failures**: 5xx, timeouts, transport errors and odd answers retry with exponential
//!   backoff and jitter, capped at the interval; 400/403/404 wait for the next interval;
//!   429 holds the whole endpoint for `Retry-After` (else one window); a failing token
//!   call holds the whole account with the same backoff, since no licence can be polled
//!   without a token.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

use crate::clock::Clock;
use crate::config::{Account, AccountPlan};
use crate::portal::{Endpoint, PortalClient, PortalError, Retry};
use crate::secret::Secret;
use crate::store::{LicenseId, Store};

/// First retry after a transient failure; doubles with each further failure.
const BACKOFF_BASE: Duration = Duration::from_secs(5);

/// A licence as the scheduler tracks it.
#[derive(Clone, Debug)]
pub struct Slot {
    /// Store identity.
    pub id: LicenseId,
    key: Secret,
    product_id: u32,
    /// When the last attempt started.
    pub last_attempt: Option<Instant>,
    /// A retry is due at this time (transient failure, throttling).
    pub retry_at: Option<Instant>,
    failures: u32,
    /// The kind of the current failure, to log state changes only.
    failing: Option<String>,
}

impl Slot {
    /// A licence never polled.
    pub fn new(id: LicenseId, key: Secret, product_id: u32) -> Self {
        Slot {
            id,
            key,
            product_id,
            last_attempt: None,
            retry_at: None,
            failures: 0,
            failing: None,
        }
    }

    /// Same licence (labels and key).
    pub fn same_as(&self, other: &Slot) -> bool {
        self.id == other.id && self.key == other.key && self.product_id == other.product_id
    }
}

/// A reload's news for a running worker.
#[derive(Clone, Debug)]
pub struct Update {
    /// The account as now configured (same name, credentials and portal settings).
    pub account: Account,
    /// The configured poll interval.
    pub poll_interval: Duration,
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86400 * 365)
}

/// The slots of an account's configured licences.
pub fn slots_for(account: &Account) -> Vec<Slot> {
    account
        .licenses
        .iter()
        .map(|l| {
            Slot::new(
                LicenseId {
                    account: account.name.clone(),
                    license: l.name.clone(),
                    product_id: l.product_id,
                },
                l.activation_key.clone(),
                l.product_id,
            )
        })
        .collect()
}

/// The polling loop of one account.
pub struct AccountWorker {
    name: String,
    client: Arc<PortalClient>,
    store: Arc<Store>,
    clock: Clock,
    interval: Duration,
    slots: Vec<Slot>,
    last_tick: Option<Instant>,
    /// Token trouble: nothing is polled before this.
    hold_until: Option<Instant>,
    token_failures: u32,
    token_failing: Option<String>,
    rng: u64,
}

impl AccountWorker {
    /// A worker for `account`, polling at `poll_interval` (stretched if the budget needs).
    pub fn new(
        account: &Account,
        poll_interval: Duration,
        client: Arc<PortalClient>,
        store: Arc<Store>,
        clock: Clock,
    ) -> Self {
        let plan = AccountPlan::new(account, poll_interval);
        let seed = account.name.bytes().fold(0x9E37_79B9_7F4A_7C15u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3)
        });
        AccountWorker {
            name: account.name.clone(),
            client,
            store,
            clock,
            interval: plan.effective_interval,
            slots: slots_for(account),
            last_tick: None,
            hold_until: None,
            token_failures: 0,
            token_failing: None,
            rng: seed | 1,
        }
    }

    /// Carries the schedule of licences that stay over from a previous worker (reload).
    pub fn adopt(&mut self, previous: Vec<Slot>) {
        for slot in &mut self.slots {
            if let Some(old) = previous.iter().find(|o| o.same_as(slot)) {
                *slot = old.clone();
            }
        }
    }

    /// The slots (to hand over on reload).
    pub fn into_slots(self) -> Vec<Slot> {
        self.slots
    }

    fn pace(&self) -> Duration {
        self.interval / self.slots.len().max(1) as u32
    }

    /// What to poll next and when.
    fn next(&self) -> Option<(usize, Instant, bool)> {
        let now = Instant::now();
        let hold = self.hold_until.unwrap_or(now);
        // First fill: never polled and not waiting for a retry.
        if let Some(i) = self
            .slots
            .iter()
            .position(|s| s.last_attempt.is_none() && s.retry_at.is_none())
        {
            return Some((i, hold.max(now), true));
        }
        let retry = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.retry_at.map(|t| (i, t)))
            .min_by_key(|(_, t)| *t);
        let oldest = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.retry_at.is_none())
            .filter_map(|(i, s)| s.last_attempt.map(|t| (i, t)))
            .min_by_key(|(_, t)| *t);
        let tick = oldest.map(|(i, last)| {
            let by_interval = last + self.interval;
            let by_pace = self.last_tick.map_or(by_interval, |t| t + self.pace());
            (i, by_interval.min(by_pace))
        });
        let (i, at, is_tick) = match (retry, tick) {
            (Some((_, rt)), Some((ti, tt))) if tt < rt => (ti, tt, true),
            (Some((ri, rt)), _) => (ri, rt, false),
            (None, Some((ti, tt))) => (ti, tt, true),
            (None, None) => return None,
        };
        Some((i, at.max(hold), is_tick))
    }

    /// Polls until `shutdown` resolves.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) -> Self {
        let (_keep, updates) = mpsc::unbounded_channel();
        self.run_with_updates(shutdown, updates).await
    }

    /// Polls until `shutdown` resolves, taking new licence lists from `updates` between
    /// polls (a reload that keeps the account's client never interrupts a poll).
    pub async fn run_with_updates(
        mut self,
        shutdown: impl std::future::Future<Output = ()>,
        mut updates: mpsc::UnboundedReceiver<Update>,
    ) -> Self {
        tokio::pin!(shutdown);
        loop {
            let next = self.next();
            tokio::select! {
                biased;
                _ = shutdown.as_mut() => return self,
                Some(update) = updates.recv() => {
                    self.apply(update);
                    continue;
                }
                _ = sleep_until(next.map_or_else(far_future, |(_, at, _)| at)) => {}
            }
            let Some((i, _, is_tick)) = next else {
                continue;
            };
            if is_tick {
                self.last_tick = Some(Instant::now());
            }
            // An abandoned poll did not happen: the licence keeps its place in the queue.
            let before = (self.slots[i].last_attempt, self.slots[i].retry_at);
            tokio::select! {
                biased;
                _ = shutdown.as_mut() => {
                    (self.slots[i].last_attempt, self.slots[i].retry_at) = before;
                    return self;
                }
                _ = self.poll(i) => {}
            }
        }
    }

    /// Takes a new licence list (and interval) for the same account and client.
    pub fn apply(&mut self, update: Update) {
        let previous = std::mem::take(&mut self.slots);
        self.slots = slots_for(&update.account);
        self.adopt(previous);
        self.interval = AccountPlan::new(&update.account, update.poll_interval).effective_interval;
    }

    /// Polls every licence once, in order (for `--once`). Returns the failures.
    pub async fn poll_all_once(&mut self) -> Vec<(LicenseId, PortalError)> {
        let mut failures = Vec::new();
        for i in 0..self.slots.len() {
            if let Some(e) = self.poll(i).await {
                failures.push((self.slots[i].id.clone(), e));
            }
        }
        failures
    }

    /// One poll of slot `i`, with all bookkeeping. Returns the error, if any.
    async fn poll(&mut self, i: usize) -> Option<PortalError> {
        let started = Instant::now();
        let (key, product_id) = (self.slots[i].key.clone(), self.slots[i].product_id);
        self.slots[i].last_attempt = Some(started);
        self.slots[i].retry_at = None;
        let result = self.client.fetch_license(&key, product_id).await;
        let now_wall = self.clock.now();
        let id = self.slots[i].id.clone();
        match result {
            Ok(parsed) => {
                for d in &parsed.dropped {
                    tracing::warn!(account = %id.account, license = %id.license, product_id, field = d.field, reason = %d.reason, "dropped a field of the portal's answer");
                }
                self.store
                    .record_success(&id, parsed.license, &parsed.dropped, now_wall);
                let slot = &mut self.slots[i];
                if let Some(kind) = slot.failing.take() {
                    tracing::info!(account = %id.account, license = %id.license, product_id, after_failures = slot.failures, previous = %kind, "licence poll recovered");
                } else {
                    tracing::debug!(account = %id.account, license = %id.license, product_id, "licence polled");
                }
                slot.failures = 0;
                self.token_ok();
                None
            }
            Err(e) => {
                self.failed(i, &e);
                Some(e)
            }
        }
    }

    fn token_ok(&mut self) {
        if let Some(kind) = self.token_failing.take() {
            tracing::info!(account = %self.name, previous = %kind, "token endpoint recovered");
        }
        self.token_failures = 0;
        self.hold_until = None;
    }

    fn failed(&mut self, i: usize, e: &PortalError) {
        let now = Instant::now();
        let now_wall = self.clock.now();
        let kind = e.kind();
        let message = e.to_string();

        if e.endpoint() == Endpoint::Token {
            // No token, no licence: the whole account waits and every licence says so.
            let wait = match e.retry() {
                Retry::After(w) => w,
                _ => {
                    self.token_failures += 1;
                    self.backoff(self.token_failures)
                }
            };
            let until = now + wait;
            self.hold_until = Some(until);
            if self.token_failing.as_deref() != Some(kind.as_str()) {
                tracing::warn!(account = %self.name, error = %message, retry_in = %humantime::format_duration(round(wait)), "cannot get an access token; every licence of the account waits");
                self.token_failing = Some(kind.clone());
            } else {
                tracing::debug!(account = %self.name, error = %message, retry_in = %humantime::format_duration(round(wait)), "token still failing");
            }
            for slot in &mut self.slots {
                self.store
                    .record_failure(&slot.id, message.clone(), false, now_wall);
                slot.failing = Some(kind.clone());
            }
            self.slots[i].retry_at = Some(until);
            return;
        }

        let retry = e.retry();
        let failures = {
            let slot = &mut self.slots[i];
            slot.failures += 1;
            slot.failures
        };
        let retry_at = match retry {
            Retry::After(w) => Some(now + w),
            Retry::Backoff => Some(now + self.backoff(failures)),
            Retry::NextInterval => None,
        };
        let slot = &mut self.slots[i];
        slot.retry_at = retry_at;
        let id = slot.id.clone();
        self.store
            .record_failure(&id, message.clone(), retry == Retry::NextInterval, now_wall);
        let retry_in = retry_at.map_or(self.interval, |t| t - now);
        if slot.failing.as_deref() != Some(kind.as_str()) {
            tracing::warn!(account = %id.account, license = %id.license, product_id = id.product_id, error = %message, retry_in = %humantime::format_duration(round(retry_in)), "licence poll failed");
            slot.failing = Some(kind);
        } else {
            tracing::debug!(account = %id.account, license = %id.license, product_id = id.product_id, error = %message, failures, "licence poll still failing");
        }
    }

    /// `BACKOFF_BASE · 2^(n-1)`, capped at the interval, with jitter in [½, 1].
    fn backoff(&mut self, failures: u32) -> Duration {
        let exp = BACKOFF_BASE.saturating_mul(1u32 << failures.saturating_sub(1).min(20));
        let capped = exp.min(self.interval);
        // xorshift64: cheap, seeded per account; enough to de-synchronise retries.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let frac = 0.5 + (self.rng % 1000) as f64 / 2000.0;
        capped.mul_f64(frac)
    }
}

fn round(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs())
}
