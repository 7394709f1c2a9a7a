//! The store: per licence, the last good answer and the poll state. Schedulers write it,
//! the collector and the landing page read it. It is where the portal side and the
//! Prometheus side meet, and neither knows the other.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use crate::config::Config;
use crate::license::{DroppedField, License};

/// The label identity of a licence: unique by config validation.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LicenseId {
    /// Label `account`.
    pub account: String,
    /// Label `license`.
    pub license: String,
    /// Label `product_id`.
    pub product_id: u32,
}

/// What the store knows of one licence.
#[derive(Clone, Debug)]
pub struct LicenseEntry {
    /// Configured allowance.
    pub activations_limit: Option<u64>,
    /// The last good answer; kept through failures.
    pub data: Option<License>,
    /// Poll bookkeeping.
    pub poll: PollState,
    /// Hash of the activation key: a reload that keeps the labels but changes the key
    /// starts afresh. Never printed.
    key_fingerprint: u64,
}

/// Poll bookkeeping of one licence.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PollState {
    /// When the last attempt ended (success or failure); `None` before the first.
    pub last_attempt: Option<SystemTime>,
    /// Whether the last attempt succeeded; `None` before the first.
    pub last_success_ok: Option<bool>,
    /// When a poll last succeeded.
    pub last_success: Option<SystemTime>,
    /// Failures since the last success.
    pub consecutive_failures: u64,
    /// The last failure, for the landing page (no secrets).
    pub last_error: Option<String>,
    /// Polled once to a conclusion: a success, or a definitive "no" from the portal.
    pub settled: bool,
}

/// Per account: the refresh interval actually used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountStatus {
    /// `max(poll_interval, what the budget allows)`.
    pub effective_interval: Duration,
}

/// Shared state.
#[derive(Debug, Default)]
pub struct Store {
    inner: RwLock<Inner>,
}

/// The store's content, read under its lock.
#[derive(Debug, Default)]
pub struct Inner {
    /// Licences in label order.
    pub licenses: BTreeMap<LicenseId, LicenseEntry>,
    /// Accounts by name.
    pub accounts: BTreeMap<String, AccountStatus>,
}

fn fingerprint(key: &str) -> u64 {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}

/// The ids of a config's licences, in config order.
pub fn license_ids(config: &Config) -> Vec<LicenseId> {
    config
        .accounts
        .iter()
        .flat_map(|a| {
            a.licenses.iter().map(|l| LicenseId {
                account: a.name.clone(),
                license: l.name.clone(),
                product_id: l.product_id,
            })
        })
        .collect()
}

impl Store {
    /// An empty store.
    pub fn new() -> Arc<Self> {
        Arc::new(Store::default())
    }

    /// Makes the store hold exactly the licences of `config`: those that stay (same labels
    /// and key) keep their data and poll state, removed ones vanish at once, new ones
    /// start empty.
    pub fn sync(&self, config: &Config) {
        let mut inner = self.inner.write().expect("store lock");
        let mut keep = BTreeSet::new();
        for a in &config.accounts {
            let interval =
                crate::config::AccountPlan::new(a, config.poll_interval).effective_interval;
            inner.accounts.insert(
                a.name.clone(),
                AccountStatus {
                    effective_interval: interval,
                },
            );
            for l in &a.licenses {
                let id = LicenseId {
                    account: a.name.clone(),
                    license: l.name.clone(),
                    product_id: l.product_id,
                };
                let fp = fingerprint(l.activation_key.expose());
                let fresh = LicenseEntry {
                    activations_limit: l.activations_limit,
                    data: None,
                    poll: PollState::default(),
                    key_fingerprint: fp,
                };
                match inner.licenses.get_mut(&id) {
                    Some(e) if e.key_fingerprint == fp => e.activations_limit = l.activations_limit,
                    Some(e) => *e = fresh,
                    None => {
                        inner.licenses.insert(id.clone(), fresh);
                    }
                }
                keep.insert(id);
            }
        }
        inner.licenses.retain(|id, _| keep.contains(id));
        let names: BTreeSet<&str> = config.accounts.iter().map(|a| a.name.as_str()).collect();
        inner
            .accounts
            .retain(|name, _| names.contains(name.as_str()));
    }

    /// A successful poll: new data replaces the old, except fields the answer had but
    /// that could not be read (`dropped`): those keep their last good value.
    pub fn record_success(
        &self,
        id: &LicenseId,
        mut license: License,
        dropped: &[DroppedField],
        at: SystemTime,
    ) {
        let mut inner = self.inner.write().expect("store lock");
        if let Some(e) = inner.licenses.get_mut(id) {
            if let Some(previous) = &e.data {
                license.keep_from(previous, dropped);
            }
            e.data = Some(license);
            e.poll.last_attempt = Some(at);
            e.poll.last_success_ok = Some(true);
            e.poll.last_success = Some(at);
            e.poll.consecutive_failures = 0;
            e.poll.last_error = None;
            e.poll.settled = true;
        }
    }

    /// A failed poll: the data stays. `definitive` when the portal said no for this
    /// licence (it counts as polled for readiness). Returns the failure count.
    pub fn record_failure(
        &self,
        id: &LicenseId,
        error: String,
        definitive: bool,
        at: SystemTime,
    ) -> u64 {
        let mut inner = self.inner.write().expect("store lock");
        let Some(e) = inner.licenses.get_mut(id) else {
            return 0;
        };
        e.poll.last_attempt = Some(at);
        e.poll.last_success_ok = Some(false);
        e.poll.consecutive_failures += 1;
        e.poll.last_error = Some(error);
        e.poll.settled |= definitive;
        e.poll.consecutive_failures
    }

    /// Reads the content under the lock.
    pub fn read<R>(&self, f: impl FnOnce(&Inner) -> R) -> R {
        f(&self.inner.read().expect("store lock"))
    }

    /// How many licences were polled to a conclusion, of how many.
    pub fn settled_count(&self) -> (usize, usize) {
        self.read(|i| {
            (
                i.licenses.values().filter(|e| e.poll.settled).count(),
                i.licenses.len(),
            )
        })
    }

    /// True once every licence has been polled to a conclusion.
    pub fn ready(&self) -> bool {
        self.read(|i| i.licenses.values().all(|e| e.poll.settled))
    }

    /// Builds a store from entries directly (golden tests, benchmarks).
    pub fn insert_for_test(
        &self,
        id: LicenseId,
        activations_limit: Option<u64>,
        data: Option<License>,
        poll: PollState,
    ) {
        let mut inner = self.inner.write().expect("store lock");
        inner.licenses.insert(
            id,
            LicenseEntry {
                activations_limit,
                data,
                poll,
                key_fingerprint: 0,
            },
        );
    }

    /// Sets an account's effective interval directly (golden tests).
    pub fn set_account_for_test(&self, name: &str, effective_interval: Duration) {
        let mut inner = self.inner.write().expect("store lock");
        inner
            .accounts
            .insert(name.to_string(), AccountStatus { effective_interval });
    }
}
