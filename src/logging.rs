//! Logs: logfmt (default) or JSON, one line per event, UTC timestamps.
//!
//! `--log.level` applies to this crate. Dependencies are capped at `warn`: their debug and
//! trace output is noise to an operator, and it is not reviewed for secrets (our request
//! URLs carry the activation key in the query string; reqwest's verbose connection
//! tracing prints raw request bytes).

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `ts=… level=info msg="…" key=value`
    Logfmt,
    /// One JSON object per line.
    Json,
}

/// Log level names as Prometheus exporters spell them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogLevel {
    /// Everything, including each request.
    Trace,
    /// Each poll.
    Debug,
    /// State changes (default).
    Info,
    /// Problems.
    Warn,
    /// Failures only.
    Error,
}

impl LogLevel {
    fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

/// The filter: our crate at `level`, dependencies at `warn` (or `error`).
pub fn filter(level: LogLevel) -> EnvFilter {
    let deps = if level == LogLevel::Error {
        "error"
    } else {
        "warn"
    };
    EnvFilter::new(format!("{deps},opswat_license_exporter={}", level.as_str()))
}

/// Installs the global subscriber writing to `writer`.
pub fn init<W>(level: LogLevel, format: LogFormat, writer: W)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(level))
        .with_writer(writer);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_timer(tracing_subscriber::fmt::time::UtcTime::rfc_3339())
            .try_init(),
        LogFormat::Logfmt => builder.event_format(Logfmt).try_init(),
    };
}

/// A logfmt line per event.
pub struct Logfmt;

impl<S, N> FormatEvent<S, N> for Logfmt
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let now = time::OffsetDateTime::now_utc();
        let ts = now
            .format(&time::format_description::well_known::Rfc3339)
            .map_err(|_| fmt::Error)?;
        let level = match *event.metadata().level() {
            Level::TRACE => "trace",
            Level::DEBUG => "debug",
            Level::INFO => "info",
            Level::WARN => "warn",
            Level::ERROR => "error",
        };
        let mut v = LogfmtVisitor {
            msg: String::new(),
            fields: String::new(),
        };
        event.record(&mut v);
        write!(
            w,
            "ts={ts} level={level} target={}",
            event.metadata().target()
        )?;
        write!(w, " msg=")?;
        write_value(&mut w, &v.msg)?;
        writeln!(w, "{}", v.fields)
    }
}

struct LogfmtVisitor {
    msg: String,
    fields: String,
}

impl Visit for LogfmtVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.msg = value.to_string();
        } else {
            let _ = write!(self.fields, " {}=", field.name());
            let _ = write_value(&mut self.fields, value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.record_str(field, &format!("{value:?}"));
    }
}

/// Writes a logfmt value, quoted when it needs to be.
fn write_value(w: &mut impl fmt::Write, value: &str) -> fmt::Result {
    let plain = !value.is_empty()
        && value
            .chars()
            .all(|c| !c.is_whitespace() && c != '"' && c != '=' && c != '\\' && !c.is_control());
    if plain {
        return w.write_str(value);
    }
    w.write_char('"')?;
    for c in value.chars() {
        match c {
            '"' => w.write_str("\\\"")?,
            '\\' => w.write_str("\\\\")?,
            '\n' => w.write_str("\\n")?,
            c if c.is_control() => write!(w, "\\u{{{:x}}}", c as u32)?,
            c => w.write_char(c)?,
        }
    }
    w.write_char('"')
}

#[cfg(test)]
mod tests {
    #[test]
    fn quoting() {
        let mut s = String::new();
        super::write_value(&mut s, "a b\"c").unwrap();
        assert_eq!(s, r#""a b\"c""#);
        let mut s = String::new();
        super::write_value(&mut s, "plain").unwrap();
        assert_eq!(s, "plain");
    }
}
