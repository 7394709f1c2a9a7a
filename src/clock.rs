//! Wall-clock time, swappable in tests.
//!
//! Scheduling uses `tokio::time::Instant` (so a paused tokio clock drives it); timestamps
//! that end up in metrics use this clock. The `Tokio` kind keeps both in step: wall time
//! advances exactly as the tokio clock does, so hours of paused-clock scheduling produce
//! consistent timestamps.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of the current UTC time.
#[derive(Clone, Debug)]
pub struct Clock(Arc<Kind>);

#[derive(Debug)]
enum Kind {
    System,
    Fixed(SystemTime),
    Tokio {
        wall: SystemTime,
        start: tokio::time::Instant,
    },
}

impl Clock {
    /// The host's clock.
    pub fn system() -> Self {
        Clock(Arc::new(Kind::System))
    }

    /// A clock stuck at `at` (golden tests).
    pub fn fixed(at: SystemTime) -> Self {
        Clock(Arc::new(Kind::Fixed(at)))
    }

    /// A clock that reads `wall` now and then advances with tokio's clock.
    pub fn tokio_anchored(wall: SystemTime) -> Self {
        Clock(Arc::new(Kind::Tokio {
            wall,
            start: tokio::time::Instant::now(),
        }))
    }

    /// The current time.
    pub fn now(&self) -> SystemTime {
        match &*self.0 {
            Kind::System => SystemTime::now(),
            Kind::Fixed(at) => *at,
            Kind::Tokio { wall, start } => *wall + start.elapsed(),
        }
    }

    /// The current time as fractional Unix seconds.
    pub fn now_unix(&self) -> f64 {
        unix_seconds(self.now())
    }
}

/// Fractional Unix seconds of a `SystemTime` (negative before 1970).
pub fn unix_seconds(t: SystemTime) -> f64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// A `SystemTime` from whole Unix seconds.
pub fn from_unix(secs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}
