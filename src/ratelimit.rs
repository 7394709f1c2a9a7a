//! A hard sliding-window budget: never more than `requests` calls in any window of `per`,
//! as the server counts them.
//!
//! The server sees a call at some moment between our sending it and our receiving the
//! answer, so a call holds its slot from the moment it is sent until `per` (plus a small
//! margin) after it *completed*. Calls in flight therefore count in full, and however the
//! network delays or reorders them, no `requests + 1` calls can arrive within `per`.
//! There is no burst allowance beyond the window itself.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::{Instant, sleep_until};

use crate::config::RateLimit;

/// Slack added to every window against clock-rate differences with the server.
pub const SAFETY_MARGIN: Duration = Duration::from_millis(500);

/// The budget of one endpoint of one account.
#[derive(Debug)]
pub struct RateBudget {
    limit: RateLimit,
    state: Mutex<State>,
    freed: Notify,
}

#[derive(Debug, Default)]
struct State {
    /// Completion times of finished calls still inside the window, oldest first.
    completed: VecDeque<Instant>,
    in_flight: usize,
    /// Set after a 429: nobody calls before this.
    blocked_until: Option<Instant>,
}

/// A slot held by a call in flight; dropping it records the call's completion.
#[must_use = "the slot is released when the permit is dropped"]
#[derive(Debug)]
pub struct Permit {
    budget: Arc<RateBudget>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let now = Instant::now();
        let mut st = self.budget.state.lock().expect("rate budget lock");
        st.in_flight -= 1;
        st.completed.push_back(now);
        drop(st);
        self.budget.freed.notify_waiters();
    }
}

impl RateBudget {
    /// A fresh budget with nothing spent.
    pub fn new(limit: RateLimit) -> Arc<Self> {
        Arc::new(RateBudget {
            limit,
            state: Mutex::new(State::default()),
            freed: Notify::new(),
        })
    }

    /// The limit this budget keeps.
    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    fn window(&self) -> Duration {
        self.limit.per + SAFETY_MARGIN
    }

    /// Waits until a call may be sent and takes its slot.
    pub async fn acquire(self: &Arc<Self>) -> Permit {
        loop {
            let notified = self.freed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.try_acquire_at(Instant::now()) {
                Ok(()) => {
                    return Permit {
                        budget: Arc::clone(self),
                    };
                }
                Err(Some(at)) => {
                    tokio::select! {
                        _ = sleep_until(at) => {}
                        _ = &mut notified => {}
                    }
                }
                Err(None) => notified.await,
            }
        }
    }

    /// When a call could start if asked now (`now` if free). `None`: only when a call in
    /// flight finishes.
    pub fn next_free(&self) -> Option<Instant> {
        let now = Instant::now();
        let mut st = self.state.lock().expect("rate budget lock");
        self.free_at(&mut st, now)
    }

    /// Takes a slot at `now`, or says when to try again (`None`: when a call completes).
    fn try_acquire_at(&self, now: Instant) -> Result<(), Option<Instant>> {
        let mut st = self.state.lock().expect("rate budget lock");
        match self.free_at(&mut st, now) {
            Some(at) if at <= now => {
                st.in_flight += 1;
                Ok(())
            }
            other => Err(other),
        }
    }

    fn free_at(&self, st: &mut State, now: Instant) -> Option<Instant> {
        let window = self.window();
        while st.completed.front().is_some_and(|t| *t + window <= now) {
            st.completed.pop_front();
        }
        if let Some(until) = st.blocked_until {
            if until > now {
                return Some(until);
            }
            st.blocked_until = None;
        }
        let max = self.limit.requests as usize;
        let used = st.completed.len() + st.in_flight;
        if used < max {
            return Some(now);
        }
        // Full. If enough finished calls will age out, the earliest moment is when the
        // oldest one that must leave has left; otherwise wait for calls in flight.
        let must_leave = used - max + 1;
        if must_leave <= st.completed.len() {
            Some(st.completed[must_leave - 1] + window)
        } else {
            None
        }
    }

    /// Starts `new` with the history of `old` (a replaced client of the same account: the
    /// server still counts the old calls).
    pub fn inherit(new: &RateBudget, old: &RateBudget) {
        let old = old.state.lock().expect("rate budget lock");
        let mut st = new.state.lock().expect("rate budget lock");
        st.completed = old.completed.clone();
        st.blocked_until = old.blocked_until;
    }

    /// The server said 429: nobody sends before `until` (a later block is kept).
    pub fn block_until(&self, until: Instant) {
        let mut st = self.state.lock().expect("rate budget lock");
        st.blocked_until = Some(st.blocked_until.map_or(until, |b| b.max(until)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(n: u32, secs: u64) -> Arc<RateBudget> {
        RateBudget::new(RateLimit {
            requests: n,
            per: Duration::from_secs(secs),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn never_more_than_n_in_any_window() {
        let b = budget(5, 60);
        let start = Instant::now();
        let mut sent = Vec::new();
        for _ in 0..23 {
            let p = b.acquire().await;
            sent.push(start.elapsed());
            tokio::time::sleep(Duration::from_millis(300)).await; // the call takes a while
            drop(p);
        }
        for (i, t) in sent.iter().enumerate() {
            let in_window = sent[i..]
                .iter()
                .filter(|u| **u < *t + Duration::from_secs(60))
                .count();
            assert!(
                in_window <= 5,
                "{in_window} calls in the window starting at {t:?}"
            );
        }
        // Full speed otherwise: 5 at once, then 5 per window (plus call time and margin).
        assert_eq!(sent[4], Duration::from_millis(1200));
        assert!(sent[5] <= Duration::from_secs(61), "{:?}", sent[5]);
        assert!(sent[22] < Duration::from_secs(4 * 61 + 5), "{:?}", sent[22]);
    }

    #[tokio::test(start_paused = true)]
    async fn in_flight_calls_hold_their_slot() {
        let b = budget(2, 60);
        let p1 = b.acquire().await;
        let p2 = b.acquire().await;
        assert_eq!(b.next_free(), None);
        let b2 = Arc::clone(&b);
        let waiter = tokio::spawn(async move {
            let _p = b2.acquire().await;
            Instant::now()
        });
        tokio::time::sleep(Duration::from_secs(100)).await;
        assert!(!waiter.is_finished());
        let released = Instant::now();
        drop(p1);
        let got = waiter.await.unwrap();
        assert_eq!(got, released + Duration::from_secs(60) + SAFETY_MARGIN);
        drop(p2);
    }

    #[tokio::test(start_paused = true)]
    async fn block_until_holds_everyone() {
        let b = budget(10, 60);
        let until = Instant::now() + Duration::from_secs(30);
        b.block_until(until);
        b.block_until(Instant::now() + Duration::from_secs(5));
        let _p = b.acquire().await;
        assert_eq!(Instant::now(), until);
    }
}
