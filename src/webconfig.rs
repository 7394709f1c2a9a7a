//! `--web.config.file`: TLS and basic auth for the HTTP endpoints, in the format of the
//! Prometheus exporter-toolkit, so the same file works for this exporter and the Go ones.
//!
//! Supported: `tls_server_config` (`cert_file`, `key_file`, `client_auth_type`,
//! `client_ca_file`, `min_version`, `max_version`), `basic_auth_users` (bcrypt hashes) and
//! `http_server_config.headers`. Anything else is an error, not silently ignored.

use std::collections::{BTreeMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use hyper::header::{HeaderName, HeaderValue};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use tokio_rustls::rustls;

use crate::config::{ConfigError, Segment, error_at, read_source};

/// The web configuration in force (empty: plain HTTP, no auth).
#[derive(Default)]
pub struct WebConfig {
    /// TLS server settings, when TLS is on.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// `user → bcrypt hash`; empty means no authentication.
    users: BTreeMap<String, String>,
    /// Extra response headers.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Credentials already verified (keyed hashes, never the password), so bcrypt's
    /// deliberate slowness is paid once per client, not once per scrape.
    verified: Mutex<HashSet<u64>>,
    hasher: RandomState,
    /// Checked against for unknown users, so timing does not tell which names exist.
    dummy_hash: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebConfig {
    tls_server_config: Option<RawTls>,
    basic_auth_users: Option<BTreeMap<String, String>>,
    http_server_config: Option<RawHttp>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert_file: PathBuf,
    key_file: PathBuf,
    client_auth_type: Option<String>,
    client_ca_file: Option<PathBuf>,
    min_version: Option<String>,
    max_version: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    headers: Option<BTreeMap<String, String>>,
}

/// Headers the exporter sets itself, and ones that describe the connection or the
/// body's encoding: a web config may not set them.
const RESERVED_HEADERS: [&str; 13] = [
    "content-type",
    "content-length",
    "content-encoding",
    "www-authenticate",
    "allow",
    "cache-control",
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
];

impl WebConfig {
    /// Reads and checks a web config file. Relative paths are relative to the file.
    pub fn load(path: &Path) -> Result<WebConfig, ConfigError> {
        let source = read_source(path, "web config")?;
        let base = path.parent().unwrap_or(Path::new("."));
        let err = |at: &[Segment], message: String| error_at(path, &source, at, message);
        if source.trim().is_empty() {
            return Ok(WebConfig::default());
        }
        let raw: RawWebConfig = serde_yaml::from_str(&source).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            location: e.location().map(|l| (l.line(), l.column())),
            message: crate::config::clean_serde_message(&e.to_string()),
        })?;
        use Segment::Key as K;

        let tls = match raw.tls_server_config {
            None => None,
            Some(t) => Some(Arc::new(tls_config(&t, base, &err)?)),
        };
        let mut users = BTreeMap::new();
        for (user, hash) in raw.basic_auth_users.unwrap_or_default() {
            if user.is_empty() || user.contains(':') {
                return Err(err(
                    &[K("basic_auth_users")],
                    format!(
                        "user {user:?}: a user name is not empty and has no ':' (Basic auth could never match it)"
                    ),
                ));
            }
            if !is_bcrypt_hash(&hash) {
                return Err(err(
                    &[K("basic_auth_users")],
                    format!(
                        "the password hash of user {user:?} is not a bcrypt hash ($2a$, $2b$ or $2y$, cost 4 to 31; make one with `htpasswd -nBC 10 \"\" | tr -d ':\\n'`)"
                    ),
                ));
            }
            users.insert(user, hash);
        }
        let mut headers = Vec::new();
        for (name, value) in raw
            .http_server_config
            .and_then(|h| h.headers)
            .unwrap_or_default()
        {
            let at = [K("http_server_config"), K("headers")];
            let n = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| err(&at, format!("{name:?} is not a header name")))?;
            if RESERVED_HEADERS.contains(&n.as_str()) {
                return Err(err(&at, format!("{name} is set by the exporter itself")));
            }
            let v = HeaderValue::from_str(&value).map_err(|_| {
                err(
                    &at,
                    format!("the value of {name} is not a valid header value"),
                )
            })?;
            headers.push((n, v));
        }
        // Unknown users are checked against a real user's hash, so they cost the same.
        let dummy_hash = users.values().next().cloned().unwrap_or_default();
        Ok(WebConfig {
            tls,
            users,
            headers,
            verified: Mutex::default(),
            hasher: RandomState::new(),
            dummy_hash,
        })
    }

    /// True when requests must authenticate.
    pub fn requires_auth(&self) -> bool {
        !self.users.is_empty()
    }

    /// Checks an `Authorization` header value. bcrypt runs on the blocking pool.
    pub async fn authorized(self: &Arc<Self>, header: Option<&str>) -> bool {
        if self.users.is_empty() {
            return true;
        }
        let Some((user, password)) = header.and_then(parse_basic) else {
            return false;
        };
        let Some(hash) = self.users.get(&user).cloned() else {
            let dummy = self.dummy_hash.clone();
            let _ = tokio::task::spawn_blocking(move || bcrypt::verify(password, &dummy)).await;
            return false;
        };
        let key = self.hasher.hash_one((&user, &password, &hash));
        if self.verified.lock().expect("auth cache").contains(&key) {
            return true;
        }
        let ok =
            tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
                .await
                .unwrap_or(false);
        if ok {
            let mut cache = self.verified.lock().expect("auth cache");
            if cache.len() >= 1024 {
                cache.clear();
            }
            cache.insert(key);
        }
        ok
    }
}

/// `$2a$`/`$2b$`/`$2y$`, a two-digit cost from 4 to 31, then 53 characters of
/// bcrypt's base64: checked by shape, so loading never pays the hash's cost.
fn is_bcrypt_hash(hash: &str) -> bool {
    let b = hash.as_bytes();
    let prefix_ok = ["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p));
    if b.len() != 60 || !prefix_ok {
        return false;
    }
    let cost = std::str::from_utf8(&b[4..6])
        .ok()
        .and_then(|c| c.parse::<u32>().ok());
    b[6] == b'$'
        && cost.is_some_and(|c| (4..=31).contains(&c))
        && b[7..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'.' || *c == b'/')
}

fn parse_basic(header: &str) -> Option<(String, String)> {
    use base64::Engine as _;
    // The scheme is case-insensitive (RFC 7617).
    let (scheme, encoded) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

fn tls_config(
    t: &RawTls,
    base: &Path,
    err: &dyn Fn(&[Segment], String) -> ConfigError,
) -> Result<rustls::ServerConfig, ConfigError> {
    use Segment::Key as K;
    let at = |f: &'static str| [K("tls_server_config"), K(f)];
    let cert_path = base.join(&t.cert_file);
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            err(
                &at("cert_file"),
                format!("cannot read certificates from {}: {e}", cert_path.display()),
            )
        })?;
    if certs.is_empty() {
        return Err(err(
            &at("cert_file"),
            format!("{} holds no certificate", cert_path.display()),
        ));
    }
    let key_path = base.join(&t.key_file);
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| {
        err(
            &at("key_file"),
            format!("cannot read a private key from {}: {e}", key_path.display()),
        )
    })?;

    let version = |v: &Option<String>, field: &'static str| -> Result<Option<u8>, ConfigError> {
        match v.as_deref() {
            None => Ok(None),
            Some("TLS12") => Ok(Some(12)),
            Some("TLS13") => Ok(Some(13)),
            Some(other) => Err(err(
                &at(field),
                format!("{other:?} is not supported: use TLS12 or TLS13"),
            )),
        }
    };
    let min = version(&t.min_version, "min_version")?.unwrap_or(12);
    let max = version(&t.max_version, "max_version")?.unwrap_or(13);
    let versions: Vec<&'static rustls::SupportedProtocolVersion> =
        [(12, &rustls::version::TLS12), (13, &rustls::version::TLS13)]
            .into_iter()
            .filter(|(v, _)| (min..=max).contains(v))
            .map(|(_, p)| p)
            .collect();
    if versions.is_empty() {
        return Err(err(
            &at("min_version"),
            "min_version is above max_version".into(),
        ));
    }

    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&versions)
        .map_err(|e| err(&at("min_version"), e.to_string()))?;
    let auth = t.client_auth_type.as_deref().unwrap_or("NoClientCert");
    let builder = match auth {
        "NoClientCert" => builder.with_no_client_auth(),
        "RequireAndVerifyClientCert" | "VerifyClientCertIfGiven" => {
            let Some(ca) = &t.client_ca_file else {
                return Err(err(
                    &at("client_ca_file"),
                    format!("client_auth_type {auth} needs client_ca_file"),
                ));
            };
            let ca_path = base.join(ca);
            let mut roots = rustls::RootCertStore::empty();
            let cas = CertificateDer::pem_file_iter(&ca_path)
                .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    err(
                        &at("client_ca_file"),
                        format!("cannot read {}: {e}", ca_path.display()),
                    )
                })?;
            for c in cas {
                roots.add(c).map_err(|e| {
                    err(&at("client_ca_file"), format!("{}: {e}", ca_path.display()))
                })?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            );
            let verifier = if auth == "VerifyClientCertIfGiven" {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier
                .build()
                .map_err(|e| err(&at("client_ca_file"), e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        other => {
            return Err(err(
                &at("client_auth_type"),
                format!(
                    "{other:?} is not supported: use NoClientCert, VerifyClientCertIfGiven or RequireAndVerifyClientCert"
                ),
            ));
        }
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        err(
            &at("key_file"),
            format!("the key does not fit the certificate: {e}"),
        )
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
