//! The YAML config file: strict parsing, defaults, secrets and validation.
//!
//! Syntax and type errors come from serde with a path and a position. Checks that need
//! more than one value (both or neither secret form, duplicates, unreadable files) run
//! after parsing; their position is found by walking the document again to the path of
//! the offending value (see [`locate`]), so every message names file, field and line.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::products;
use crate::secret::Secret;

/// The API's documented server.
pub const DEFAULT_BASE_URL: &str = "https://apiv1.my.opswat.com";
/// Default listen address, as in DESIGN.md.
pub const DEFAULT_LISTEN_ADDRESS: &str = "0.0.0.0:9877";
const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(3600);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// No configured duration is longer: keeps every clock sum far from overflowing.
const MAX_DURATION: Duration = Duration::from_secs(366 * 86400);

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where it was read from (for messages and reloads).
    pub path: PathBuf,
    /// `web.listen_address`.
    pub listen_address: SocketAddr,
    /// How often each licence is refreshed (before any stretching for the rate budget).
    pub poll_interval: Duration,
    /// Accounts in file order.
    pub accounts: Vec<Account>,
    /// Non-fatal findings (unknown product ids), to be logged by the caller.
    pub warnings: Vec<String>,
}

/// No more than `requests` calls in any sliding window of length `per`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Calls allowed per window (at least 1).
    pub requests: u32,
    /// Window length (positive).
    pub per: Duration,
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} per {}",
            self.requests,
            humantime::format_duration(self.per)
        )
    }
}

/// How to reach the portal, after merging the top-level defaults and an account's override.
#[derive(Clone, Debug, PartialEq)]
pub struct PortalSettings {
    /// Scheme, host and optional path prefix of the API.
    pub base_url: reqwest::Url,
    /// Whole request, body included.
    pub timeout: Duration,
    /// TCP (and TLS) connection establishment.
    pub connect_timeout: Duration,
    /// Budget of `POST /portal/oauth2/token`.
    pub token_rate_limit: RateLimit,
    /// Budget of `GET /portal/product/license/active-deployments`.
    pub license_rate_limit: RateLimit,
    /// Explicit proxy; `None` means the environment's `HTTPS_PROXY`/`NO_PROXY`.
    pub proxy_url: Option<reqwest::Url>,
    /// Extra PEM CA bundle trusted besides the system roots.
    pub ca_file: Option<PathBuf>,
}

impl Default for PortalSettings {
    fn default() -> Self {
        PortalSettings {
            base_url: reqwest::Url::parse(DEFAULT_BASE_URL).expect("valid default URL"),
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            token_rate_limit: RateLimit {
                requests: 5,
                per: Duration::from_secs(60),
            },
            license_rate_limit: RateLimit {
                requests: 10,
                per: Duration::from_secs(60),
            },
            proxy_url: None,
            ca_file: None,
        }
    }
}

/// One My OPSWAT API client (an organisation's secret key) and the licences it watches.
#[derive(Clone, Debug)]
pub struct Account {
    /// Label value `account`.
    pub name: String,
    /// OAuth client id.
    pub client_id: Secret,
    /// OAuth client secret.
    pub client_secret: Secret,
    /// Effective portal settings.
    pub portal: PortalSettings,
    /// Licences in file order.
    pub licenses: Vec<LicenseConfig>,
}

/// One (activation key, product id) pair to watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LicenseConfig {
    /// Label value `license` (default: the masked key).
    pub name: String,
    /// The activation key (a secret).
    pub activation_key: Secret,
    /// Licensed product id.
    pub product_id: u32,
    /// Purchased allowance, if the user configured it.
    pub activations_limit: Option<u64>,
}

/// A config that cannot be used: file, position and a message that names the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The config file.
    pub file: PathBuf,
    /// 1-based line and column, where known.
    pub location: Option<(usize, usize)>,
    /// What is wrong, starting with the field's path.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((line, column)) = self.location {
            write!(f, ":{line}:{column}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Reads a YAML file (`what`: "config", "web config").
pub(crate) fn read_source(path: &Path, what: &str) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        location: None,
        message: format!("cannot read {what} file: {e}"),
    })
}

/// An error about the value at `path` in `source`. A defaulted field (a licence without
/// `name`) is not in the file: the location is that of the nearest enclosing value.
pub(crate) fn error_at(
    file: &Path,
    source: &str,
    path: &[Segment],
    message: impl fmt::Display,
) -> ConfigError {
    ConfigError {
        file: file.to_path_buf(),
        location: (0..=path.len())
            .rev()
            .find_map(|n| locate(source, &path[..n])),
        message: format!("{}: {message}", display_path(path)),
    }
}

impl Config {
    /// Reads and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let source = read_source(path, "config")?;
        let base_dir = path.parent().unwrap_or(Path::new("."));
        Config::parse(&source, path, base_dir, &|name| std::env::var(name).ok())
    }

    /// Parses and validates `source`. `file` names it in messages; relative `*_file`
    /// paths are read from `base_dir`; `env` resolves `${VAR}` references.
    pub fn parse(
        source: &str,
        file: &Path,
        base_dir: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        if source.trim().is_empty() {
            return Err(ConfigError {
                file: file.to_path_buf(),
                location: None,
                message: "the config file is empty: `accounts` is required".into(),
            });
        }
        let raw: RawConfig = serde_yaml::from_str(source).map_err(|e| ConfigError {
            file: file.to_path_buf(),
            location: e.location().map(|l| (l.line(), l.column())),
            message: clean_serde_message(&e.to_string()),
        })?;
        let v = Validator {
            source,
            file,
            base_dir,
            env,
        };
        v.validate(raw)
    }

    /// The licence list and budget of each account, for `--config.check` and start-up.
    pub fn plan(&self) -> Vec<AccountPlan> {
        self.accounts
            .iter()
            .map(|a| AccountPlan::new(a, self.poll_interval))
            .collect()
    }
}

/// How one account's licences fit its rate budget.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountPlan {
    /// Account name.
    pub account: String,
    /// Number of licences.
    pub licenses: usize,
    /// The shortest refresh interval the licence budget allows for all licences.
    pub min_interval: Duration,
    /// The interval actually used: `max(poll_interval, min_interval)`.
    pub effective_interval: Duration,
    /// True when `poll_interval` had to be stretched.
    pub stretched: bool,
}

impl AccountPlan {
    /// The plan of `account` for a configured `poll_interval`.
    pub fn new(account: &Account, poll_interval: Duration) -> Self {
        let min_interval =
            min_refresh_interval(account.licenses.len(), account.portal.license_rate_limit);
        AccountPlan {
            account: account.name.clone(),
            licenses: account.licenses.len(),
            min_interval,
            effective_interval: poll_interval.max(min_interval),
            stretched: poll_interval < min_interval,
        }
    }
}

/// A stretched interval is never longer than this (a year): beyond it, the budget is
/// simply too small for the licences, which `--config.check` shows.
pub const MAX_REFRESH_INTERVAL: Duration = Duration::from_secs(366 * 86400);

/// Every licence once per interval costs `n` calls; the budget gives `requests` per `per`.
/// Keep a fifth of the budget free for retries and token-revocation repeats, so a few
/// failures do not push regular polls past their interval.
pub fn min_refresh_interval(licenses: usize, limit: RateLimit) -> Duration {
    let usable = (u64::from(limit.requests) * 4).div_ceil(5).max(1);
    let windows = (licenses as u64).div_ceil(usable).max(1);
    limit
        .per
        .checked_mul(u32::try_from(windows).unwrap_or(u32::MAX))
        .unwrap_or(Duration::MAX)
        .min(MAX_REFRESH_INTERVAL)
}

/// serde_yaml's message without " at line L column C" (the location is printed
/// separately) and without quoted string values (`invalid type: string "…"`): a value
/// in the wrong place may be a secret.
pub(crate) fn clean_serde_message(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(i) = rest.find(" at line ") {
        out.push_str(&rest[..i]);
        let after = &rest[i + " at line ".len()..];
        let digits = after
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(after.len());
        let tail = &after[digits..];
        match tail.strip_prefix(" column ") {
            Some(t) if digits > 0 => {
                let d2 = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
                rest = &t[d2..];
            }
            _ => {
                out.push_str(" at line ");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    // The file's shapes are private types: name what the user writes instead.
    let mut named = redact_unknown_field_values(&redact_quoted_strings(&out));
    while let Some(i) = named.find("struct Raw") {
        let end = named[i + "struct Raw".len()..]
            .find(|c: char| !c.is_ascii_alphanumeric())
            .map_or(named.len(), |n| i + "struct Raw".len() + n);
        named.replace_range(i..end, "a mapping");
    }
    named
}

/// `key:value` without a space after the colon is one plain scalar, reported as an
/// unknown field that carries the value (perhaps a key): keep only the part before `:`.
fn redact_unknown_field_values(message: &str) -> String {
    const MARK: &str = "unknown field `";
    let Some(start) = message.find(MARK).map(|i| i + MARK.len()) else {
        return message.to_string();
    };
    let Some(len) = message[start..].find('`') else {
        return message.to_string();
    };
    let field = &message[start..start + len];
    match field.split_once(':') {
        Some((key, _)) => format!(
            "{}{key}:…{} (is a space missing after the colon?)",
            &message[..start],
            &message[start + len..]
        ),
        None => message.to_string(),
    }
}

fn redact_quoted_strings(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(i) = rest.find("string \"") {
        out.push_str(&rest[..i]);
        out.push_str("a string");
        let after = &rest[i + "string \"".len()..];
        // serde writes the value with Rust escaping: skip to the unescaped closing quote.
        let mut end = after.len();
        let mut escaped = false;
        for (j, c) in after.char_indices() {
            match c {
                '\\' if !escaped => escaped = true,
                '"' if !escaped => {
                    end = j + 1;
                    break;
                }
                _ => escaped = false,
            }
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

// ---------------------------------------------------------------------------------------
// The file's shape. Every struct rejects unknown keys.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    web: RawWeb,
    poll_interval: Option<PositiveDuration>,
    #[serde(default)]
    portal: RawPortal,
    accounts: Vec<RawAccount>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawWeb {
    listen_address: Option<String>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawPortal {
    base_url: Option<String>,
    timeout: Option<PositiveDuration>,
    connect_timeout: Option<PositiveDuration>,
    token_rate_limit: Option<RawRateLimit>,
    license_rate_limit: Option<RawRateLimit>,
    proxy_url: Option<String>,
    ca_file: Option<PathBuf>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    requests: Requests,
    per: PositiveDuration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccount {
    name: String,
    client_id: Option<String>,
    client_id_file: Option<PathBuf>,
    client_secret: Option<String>,
    client_secret_file: Option<PathBuf>,
    portal: Option<RawPortal>,
    licenses: Vec<RawLicense>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLicense {
    name: Option<String>,
    activation_key: Option<String>,
    activation_key_file: Option<PathBuf>,
    product_id: u32,
    activations_limit: Option<u64>,
}

/// A humantime duration greater than zero.
#[derive(Clone, Copy)]
struct PositiveDuration(Duration);

impl<'de> Deserialize<'de> for PositiveDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = PositiveDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as 90s, 5m, 1h or 7d")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<PositiveDuration, E> {
                let d = humantime::parse_duration(s.trim()).map_err(|e| {
                    E::custom(format!(
                        "invalid duration {s:?} ({e}); use a duration such as 90s, 5m, 1h or 7d"
                    ))
                })?;
                if d.is_zero() {
                    return Err(E::custom("must be greater than zero"));
                }
                if d > MAX_DURATION {
                    return Err(E::custom(
                        "must be at most 366d (longer waits are surely a mistake)",
                    ));
                }
                Ok(PositiveDuration(d))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<PositiveDuration, E> {
                Err(E::custom(format!(
                    "invalid duration {n}: give a unit, such as {n}s or {n}m"
                )))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<PositiveDuration, E> {
                self.visit_u64(n.unsigned_abs())
            }
        }
        d.deserialize_any(V)
    }
}

/// A request count of at least one.
#[derive(Clone, Copy)]
struct Requests(u32);

impl<'de> Deserialize<'de> for Requests {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Requests;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a whole number of requests, at least 1")
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Requests, E> {
                match u32::try_from(n) {
                    Ok(0) => Err(E::custom(
                        "must be at least 1 (a limit of zero requests could never poll)",
                    )),
                    Ok(n) => Ok(Requests(n)),
                    Err(_) => Err(E::custom(format!("{n} is too large"))),
                }
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Requests, E> {
                match u64::try_from(n) {
                    Ok(n) => self.visit_u64(n),
                    Err(_) => Err(E::custom(format!("must be at least 1, not {n}"))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

// ---------------------------------------------------------------------------------------
// Checks across values.

struct Validator<'a> {
    source: &'a str,
    file: &'a Path,
    base_dir: &'a Path,
    env: &'a dyn Fn(&str) -> Option<String>,
}

impl Validator<'_> {
    fn error(&self, path: &[Segment], message: impl fmt::Display) -> ConfigError {
        error_at(self.file, self.source, path, message)
    }

    fn validate(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        use Segment::{Index as I, Key as K};

        let listen_address = match &raw.web.listen_address {
            None => DEFAULT_LISTEN_ADDRESS.parse().expect("valid default"),
            Some(s) => parse_listen_address(s)
                .map_err(|m| self.error(&[K("web"), K("listen_address")], m))?,
        };
        let defaults = self.portal(PortalSettings::default(), &raw.portal, &[K("portal")])?;

        if raw.accounts.is_empty() {
            return Err(self.error(&[K("accounts")], "at least one account is required"));
        }
        let mut warnings = Vec::new();
        let mut account_names = HashSet::new();
        let mut accounts = Vec::with_capacity(raw.accounts.len());
        for (i, ra) in raw.accounts.iter().enumerate() {
            let at = [K("accounts"), I(i)];
            let name = ra.name.trim().to_string();
            if name.is_empty() || is_yaml_null(&name) {
                return Err(self.error(
                    &[K("accounts"), I(i), K("name")],
                    "must be a name, not empty or null",
                ));
            }
            if !account_names.insert(name.clone()) {
                return Err(self.error(
                    &[K("accounts"), I(i), K("name")],
                    format!("account {name:?} is listed twice; account names must be unique"),
                ));
            }
            let portal = match &ra.portal {
                None => defaults.clone(),
                Some(p) => self.portal(defaults.clone(), p, &[K("accounts"), I(i), K("portal")])?,
            };
            let client_id = self.secret(
                &at,
                "client_id",
                ra.client_id.as_deref(),
                ra.client_id_file.as_deref(),
            )?;
            if let Some(j) = accounts
                .iter()
                .position(|b: &Account| b.client_id == client_id)
            {
                return Err(self.error(
                    &[K("accounts"), I(i), K("client_id")],
                    format!(
                        "the same client_id as accounts[{j}]: the API's limits are per organisation, \
                         so list all its licences under one account"
                    ),
                ));
            }
            let client_secret = self.secret(
                &at,
                "client_secret",
                ra.client_secret.as_deref(),
                ra.client_secret_file.as_deref(),
            )?;
            if ra.licenses.is_empty() {
                return Err(self.error(
                    &[K("accounts"), I(i), K("licenses")],
                    "at least one licence is required",
                ));
            }
            let mut seen_keys = HashSet::new();
            let mut seen_labels = HashSet::new();
            let mut licenses = Vec::with_capacity(ra.licenses.len());
            for (j, rl) in ra.licenses.iter().enumerate() {
                let lat = [K("accounts"), I(i), K("licenses"), I(j)];
                let key = self.secret(
                    &lat,
                    "activation_key",
                    rl.activation_key.as_deref(),
                    rl.activation_key_file.as_deref(),
                )?;
                if !seen_keys.insert((key.clone(), rl.product_id)) {
                    return Err(self.error(
                        &lat,
                        format!(
                            "this activation key and product_id {} are already listed in account {name:?}",
                            rl.product_id
                        ),
                    ));
                }
                let license_name = match &rl.name {
                    Some(n) if n.trim().is_empty() || is_yaml_null(n.trim()) => {
                        return Err(self.error(
                            &[K("accounts"), I(i), K("licenses"), I(j), K("name")],
                            "must be a name, not empty or null (leave it out to use the masked key)",
                        ));
                    }
                    Some(n) => n.trim().to_string(),
                    None => key.masked(),
                };
                if !seen_labels.insert((license_name.clone(), rl.product_id)) {
                    return Err(self.error(
                        &[K("accounts"), I(i), K("licenses"), I(j), K("name")],
                        format!(
                            "licence name {license_name:?} with product_id {} is used twice in account {name:?}; \
                             the labels would collide",
                            rl.product_id
                        ),
                    ));
                }
                if products::lookup(rl.product_id).is_none() {
                    warnings.push(format!(
                        "{}: product_id {} is not in the API documentation's product table; \
                         polling it anyway",
                        display_path(&[K("accounts"), I(i), K("licenses"), I(j), K("product_id")]),
                        rl.product_id
                    ));
                }
                licenses.push(LicenseConfig {
                    name: license_name,
                    activation_key: key,
                    product_id: rl.product_id,
                    activations_limit: rl.activations_limit,
                });
            }
            accounts.push(Account {
                name,
                client_id,
                client_secret,
                portal,
                licenses,
            });
        }

        Ok(Config {
            path: self.file.to_path_buf(),
            listen_address,
            poll_interval: raw.poll_interval.map_or(DEFAULT_POLL_INTERVAL, |d| d.0),
            accounts,
            warnings,
        })
    }

    fn portal(
        &self,
        mut s: PortalSettings,
        raw: &RawPortal,
        at: &[Segment],
    ) -> Result<PortalSettings, ConfigError> {
        let field = |name: &'static str| {
            let mut p = at.to_vec();
            p.push(Segment::Key(name));
            p
        };
        if let Some(u) = &raw.base_url {
            s.base_url = parse_http_url(u).map_err(|m| self.error(&field("base_url"), m))?;
        }
        if let Some(u) = &raw.proxy_url {
            s.proxy_url = Some(parse_http_url(u).map_err(|m| self.error(&field("proxy_url"), m))?);
        }
        if let Some(d) = raw.timeout {
            s.timeout = d.0;
        }
        if let Some(d) = raw.connect_timeout {
            s.connect_timeout = d.0;
        }
        if let Some(r) = raw.token_rate_limit {
            s.token_rate_limit = RateLimit {
                requests: r.requests.0,
                per: r.per.0,
            };
        }
        if let Some(r) = raw.license_rate_limit {
            s.license_rate_limit = RateLimit {
                requests: r.requests.0,
                per: r.per.0,
            };
        }
        if let Some(p) = &raw.ca_file {
            let path = self.base_dir.join(p);
            let pem = std::fs::read(&path).map_err(|e| {
                self.error(
                    &field("ca_file"),
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                self.error(
                    &field("ca_file"),
                    format!("{} is not a PEM certificate bundle: {e}", path.display()),
                )
            })?;
            if certs.is_empty() {
                return Err(self.error(
                    &field("ca_file"),
                    format!("{} holds no PEM certificate", path.display()),
                ));
            }
            // Parsing PEM does not check the certificates; building a TLS client does.
            reqwest::Client::builder()
                .tls_certs_merge(certs)
                .build()
                .map_err(|e| {
                    let detail = std::error::Error::source(&e)
                        .map(|s| format!(": {s}"))
                        .unwrap_or_default();
                    self.error(
                        &field("ca_file"),
                        format!("{} holds an unusable certificate{detail}", path.display()),
                    )
                })?;
            s.ca_file = Some(path);
        }
        Ok(s)
    }

    /// Resolves `<field>` (inline, with `${VAR}`) or `<field>_file`: exactly one of them.
    fn secret(
        &self,
        at: &[Segment],
        field: &'static str,
        inline: Option<&str>,
        file: Option<&Path>,
    ) -> Result<Secret, ConfigError> {
        let file_field = file_field_name(field);
        let path_to = |name: &'static str| {
            let mut p = at.to_vec();
            p.push(Segment::Key(name));
            p
        };
        let value = match (inline, file) {
            (Some(_), Some(_)) => {
                return Err(self.error(
                    &path_to(field),
                    format!("give either {field} or {file_field}, not both"),
                ));
            }
            (None, None) => {
                return Err(self.error(
                    at,
                    format!("{field} is required (inline, or as {file_field})"),
                ));
            }
            (Some(v), None) => {
                expand_env(v, self.env).map_err(|m| self.error(&path_to(field), m))?
            }
            (None, Some(p)) => {
                let path = self.base_dir.join(p);
                let mut s = std::fs::read_to_string(&path).map_err(|e| {
                    self.error(
                        &path_to(file_field),
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                while s.ends_with('\n') || s.ends_with('\r') {
                    s.pop();
                }
                s
            }
        };
        if value.trim().is_empty() {
            let name = if file.is_some() { file_field } else { field };
            return Err(self.error(&path_to(name), "the secret is empty"));
        }
        Ok(Secret::new(value))
    }
}

/// serde_yaml hands `~` and `null` to a string field as text.
fn is_yaml_null(s: &str) -> bool {
    matches!(s, "~" | "null" | "Null" | "NULL")
}

fn file_field_name(field: &'static str) -> &'static str {
    match field {
        "client_id" => "client_id_file",
        "client_secret" => "client_secret_file",
        "activation_key" => "activation_key_file",
        _ => "file",
    }
}

/// An http(s) URL. Messages never repeat the value: it may hold a proxy password.
fn parse_http_url(s: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(s.trim()).map_err(|e| format!("invalid URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err("invalid URL: must be http:// or https:// with a host".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("invalid URL: must not have a query or fragment".into());
    }
    Ok(url)
}

/// A URL for display: any password replaced by `****`.
pub fn display_url(url: &reqwest::Url) -> String {
    let mut u = url.clone();
    if u.password().is_some() {
        let _ = u.set_password(Some("****"));
    }
    u.to_string()
}

/// `HOST:PORT` with an IP host, or `:PORT` for every interface.
pub fn parse_listen_address(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    let full = if s.starts_with(':') {
        format!("0.0.0.0{s}")
    } else {
        s.to_string()
    };
    full.parse().map_err(|_| {
        format!("invalid listen address {s:?}: expected IP:PORT such as 0.0.0.0:9877 or [::]:9877")
    })
}

/// Replaces `${VAR}` with the variable's value; `$$` is a literal `$`.
fn expand_env(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body.find('}').ok_or_else(|| {
                "unterminated ${...} reference (write $$ for a literal $)".to_string()
            })?;
            let name = &body[..end];
            let valid = !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit());
            if !valid {
                // Not echoed: the text between the braces may be part of a secret.
                return Err(
                    "invalid ${...} reference: a variable name is letters, digits \
                            and _ (write $$ for a literal $)"
                        .into(),
                );
            }
            let value =
                env(name).ok_or_else(|| format!("environment variable {name} is not set"))?;
            out.push_str(&value);
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Finding the line of a path: walk the document again, stop at the path with an error,
// and let serde_yaml say where that was.

/// One step of a path into the document.
#[derive(Clone, Copy, Debug)]
pub enum Segment {
    /// A mapping key.
    Key(&'static str),
    /// A sequence index.
    Index(usize),
}

fn display_path(path: &[Segment]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Segment::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Segment::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

const PROBE_HIT: &str = "\u{0}probe-hit";

/// Line and column (1-based) of the value at `path` in `source`, if it exists.
pub fn locate(source: &str, path: &[Segment]) -> Option<(usize, usize)> {
    let de = serde_yaml::Deserializer::from_str(source);
    match Probe(path).deserialize(de) {
        Err(e) if e.to_string().contains(PROBE_HIT) => e.location().map(|l| (l.line(), l.column())),
        _ => None,
    }
}

struct Probe<'p>(&'p [Segment]);

impl<'de> DeserializeSeed<'de> for Probe<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        match self.0.first() {
            None => d.deserialize_any(Hit),
            Some(Segment::Key(_)) => d.deserialize_map(self),
            Some(Segment::Index(_)) => d.deserialize_seq(self),
        }
    }
}

impl<'de> Visitor<'de> for Probe<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("anything")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Some(Segment::Key(want)) = self.0.first() else {
            return Ok(());
        };
        while let Some(key) = map.next_key::<String>()? {
            if key == *want {
                return map.next_value_seed(Probe(&self.0[1..]));
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Some(Segment::Index(want)) = self.0.first() else {
            return Ok(());
        };
        for _ in 0..*want {
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return Ok(());
            }
        }
        seq.next_element_seed(Probe(&self.0[1..]))?;
        Ok(())
    }
    // Any other shape means the path does not exist.
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
}

struct Hit;

impl<'de> Visitor<'de> for Hit {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("anything")
    }
    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(de::Error::custom(PROBE_HIT))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(de::Error::custom(PROBE_HIT))
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(E::custom(PROBE_HIT))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Err(E::custom(PROBE_HIT))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Err(E::custom(PROBE_HIT))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Err(E::custom(PROBE_HIT))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Err(E::custom(PROBE_HIT))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Err(E::custom(PROBE_HIT))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(src: &str) -> Result<Config, ConfigError> {
        let env = |name: &str| match name {
            "SECRET" => Some("from-env".to_string()),
            _ => None,
        };
        Config::parse(src, Path::new("test.yaml"), Path::new("/nonexistent"), &env)
    }

    const GOOD: &str = "\
poll_interval: 2h
portal:
  license_rate_limit: { requests: 5, per: 1m }
accounts:
  - name: acme
    client_id: id
    client_secret: ${SECRET}
    licenses:
      - activation_key: KEY-0001-1A2B
        product_id: 1
      - name: ws
        activation_key: KEY-0002
        product_id: 99
        activations_limit: 3
";

    #[test]
    fn good_config_with_defaults_and_env() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.poll_interval, Duration::from_secs(7200));
        assert_eq!(c.listen_address, "0.0.0.0:9877".parse().unwrap());
        let a = &c.accounts[0];
        assert_eq!(a.client_secret.expose(), "from-env");
        assert_eq!(a.portal.license_rate_limit.requests, 5);
        assert_eq!(a.portal.token_rate_limit.requests, 5);
        assert_eq!(a.portal.base_url.as_str(), "https://apiv1.my.opswat.com/");
        assert_eq!(a.licenses[0].name, "****1A2B");
        assert_eq!(a.licenses[1].activations_limit, Some(3));
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        assert!(c.warnings[0].contains("product_id 99"));
    }

    #[test]
    fn unknown_key_has_line() {
        let err = parse(&GOOD.replace(
            "        product_id: 1\n",
            "        product_id: 1\n        colour: red\n",
        ))
        .unwrap_err();
        assert_eq!(err.location.map(|l| l.0), Some(11), "{err}");
        assert!(err.message.contains("unknown field `colour`"), "{err}");
        assert!(err.message.starts_with("accounts[0].licenses[0]"), "{err}");
    }

    #[test]
    fn semantic_errors_are_located() {
        let err =
            parse(&GOOD.replace("client_secret: ${SECRET}", "client_secret: ${NOPE}")).unwrap_err();
        assert_eq!(err.location.map(|l| l.0), Some(7), "{err}");
        assert!(
            err.to_string()
                .contains("accounts[0].client_secret: environment variable NOPE is not set"),
            "{err}"
        );

        let dup = GOOD
            .replace("KEY-0002", "KEY-0001-1A2B")
            .replace("product_id: 99", "product_id: 1");
        let err = parse(&dup).unwrap_err();
        assert_eq!(err.location.map(|l| l.0), Some(11), "{err}");
        assert!(err.message.contains("already listed"), "{err}");
    }

    #[test]
    fn locate_finds_nested_paths() {
        use Segment::{Index as I, Key as K};
        assert_eq!(
            locate(GOOD, &[K("accounts"), I(0), K("licenses"), I(1), K("name")]),
            Some((11, 15))
        );
        assert_eq!(locate(GOOD, &[K("accounts"), I(3)]), None);
    }

    #[test]
    fn env_expansion() {
        let env = |n: &str| (n == "A").then(|| "x".to_string());
        assert_eq!(expand_env("p${A}q$$r$", &env).unwrap(), "pxq$r$");
        assert!(
            expand_env("${B}", &env)
                .unwrap_err()
                .contains("B is not set")
        );
        assert!(expand_env("${A", &env).is_err());
    }

    #[test]
    fn refresh_interval_arithmetic() {
        let l = RateLimit {
            requests: 10,
            per: Duration::from_secs(60),
        };
        assert_eq!(min_refresh_interval(1, l), Duration::from_secs(60));
        assert_eq!(min_refresh_interval(8, l), Duration::from_secs(60));
        assert_eq!(min_refresh_interval(50, l), Duration::from_secs(7 * 60));
        assert_eq!(min_refresh_interval(1000, l), Duration::from_secs(125 * 60));
    }
}
