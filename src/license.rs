//! The licence domain: what an answer of `active-deployments` means, parsed at the edge.
//!
//! The portal's JSON is read leniently, field by field: a field we cannot read for sure
//! is dropped and reported (see [`Parsed::dropped`]), never guessed, and never takes the
//! whole answer down with it.

use std::collections::HashMap;
use std::time::SystemTime;

use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{Date, OffsetDateTime, PrimitiveDateTime};

use crate::products;

/// A licence as last reported by the portal.
#[derive(Clone, Debug, PartialEq)]
pub struct License {
    /// Product name (from the answer, else the product-id table).
    pub product: String,
    /// Platform (from the answer, else the product-id table).
    pub platform: String,
    /// `purchased`, `evaluated`, or the portal's own word in lower case; empty if absent.
    pub license_type: String,
    /// The moment the licence stops being valid; `None` when it never expires.
    pub expiry: Option<SystemTime>,
    /// When the portal generated the data.
    pub generated_at: Option<SystemTime>,
    /// Deployments, one per `deployment_id` (duplicates merged), sorted by id.
    /// `None` when the answer's list could not be read.
    pub deployments: Option<Vec<Deployment>>,
}

/// One deployment (an activated product instance) of a licence.
#[derive(Clone, Debug, PartialEq)]
pub struct Deployment {
    /// The instance fingerprint.
    pub id: String,
    /// Free-text note.
    pub description: String,
    /// When this deployment's activation expires.
    pub expiry: Option<SystemTime>,
    /// When it was activated.
    pub activated_at: Option<SystemTime>,
    /// Activations it holds; `None` when the portal gave no usable number.
    pub quantity: Option<f64>,
}

impl License {
    /// Number of deployments, if known.
    pub fn deployment_count(&self) -> Option<usize> {
        self.deployments.as_ref().map(Vec::len)
    }

    /// Where `dropped` says a field of this answer could not be read, keeps the value the
    /// previous good answer had: an unreadable expiry must not make expiry alerts resolve.
    pub fn keep_from(&mut self, previous: &License, dropped: &[DroppedField]) {
        for d in dropped {
            match (d.field, &d.deployment_id) {
                ("expiry", _) => self.expiry = previous.expiry,
                ("generated_at", _) => self.generated_at = previous.generated_at,
                ("product", _) => self.product = previous.product.clone(),
                ("platform", _) => self.platform = previous.platform.clone(),
                ("type", _) => self.license_type = previous.license_type.clone(),
                ("deployments", None) if self.deployments.is_none() => {
                    self.deployments = previous.deployments.clone();
                }
                (field, Some(id)) => {
                    let old = previous.deployments.iter().flatten().find(|p| &p.id == id);
                    let new = self.deployments.iter_mut().flatten().find(|n| &n.id == id);
                    if let (Some(old), Some(new)) = (old, new) {
                        match field {
                            "deployments.expiration" => new.expiry = old.expiry,
                            "deployments.activated_at" => new.activated_at = old.activated_at,
                            "deployments.quantity" => new.quantity = old.quantity,
                            "deployments.description" => new.description = old.description.clone(),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// Activations in use: the sum of deployment quantities. A deployment without a
    /// usable quantity still holds an activation and counts as one.
    pub fn activations(&self) -> Option<f64> {
        self.deployments
            .as_ref()
            // fold from +0.0: `sum()` of no f64 is -0.0, which would print as "-0".
            .map(|ds| {
                ds.iter()
                    .fold(0.0, |acc, d| acc + d.quantity.unwrap_or(1.0))
            })
    }
}

/// A field of the answer that was present but could not be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DroppedField {
    /// Field name, e.g. `expiry` or `deployments.expiration`.
    pub field: &'static str,
    /// Why, without the value itself when the value might be sensitive.
    pub reason: String,
    /// For a field of a deployment: which one.
    pub deployment_id: Option<String>,
}

/// The result of reading one answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Parsed {
    /// The licence.
    pub license: License,
    /// Fields that were dropped.
    pub dropped: Vec<DroppedField>,
}

/// Why an answer as a whole is unusable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    /// Not JSON at all (an HTML page from a gateway, a truncated body, nothing).
    #[error("the answer is not JSON: {0}")]
    NotJson(String),
    /// `success: false`, possibly with HTTP 200.
    #[error("the portal answered success=false{0}")]
    Unsuccessful(String),
    /// No `data` object.
    #[error("the answer has no `data` object")]
    NoData,
}

impl AnswerError {
    /// Short reason for a metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            AnswerError::NotJson(_) => "not_json",
            AnswerError::Unsuccessful(_) => "success_false",
            AnswerError::NoData => "no_data",
        }
    }
}

/// Reads a body of `active-deployments`.
pub fn parse_answer(body: &[u8], product_id: u32) -> Result<Parsed, AnswerError> {
    let root: Value =
        serde_json::from_slice(body).map_err(|e| AnswerError::NotJson(e.to_string()))?;
    if unsuccessful(&root) {
        return Err(AnswerError::Unsuccessful(error_summary(&root)));
    }
    let data = root
        .get("data")
        .filter(|d| d.is_object())
        .ok_or(AnswerError::NoData)?;
    let mut dropped = Vec::new();
    let table = products::lookup(product_id);

    let product = text(data, "product", &mut dropped)
        .or_else(|| table.map(|t| t.0.to_string()))
        .unwrap_or_default();
    let platform = text(data, "platform", &mut dropped)
        .or_else(|| table.map(|t| t.1.to_string()))
        .unwrap_or_default();
    let license_type = text(data, "type", &mut dropped)
        .map(|t| t.to_ascii_lowercase())
        .unwrap_or_default();
    let expiry = date_field(
        data,
        "expiry",
        "expiry",
        DateMeaning::ValidThrough,
        &mut dropped,
    );
    let generated_at = date_field(
        data,
        "generated_at",
        "generated_at",
        DateMeaning::Instant,
        &mut dropped,
    );
    let deployments = match data.get("deployments") {
        None | Some(Value::Null) => Some(Vec::new()),
        Some(Value::Array(items)) => deployments(items, &mut dropped),
        Some(_) => {
            dropped.push(DroppedField {
                field: "deployments",
                reason: "not a list".into(),
                deployment_id: None,
            });
            None
        }
    };
    Ok(Parsed {
        license: License {
            product,
            platform,
            license_type,
            expiry,
            generated_at,
            deployments,
        },
        dropped,
    })
}

/// `success` says no: `false`, or the same as a string or a number (`"false"`, `0`).
pub fn unsuccessful(root: &Value) -> bool {
    match root.get("success") {
        Some(Value::Bool(b)) => !b,
        Some(Value::String(s)) => {
            matches!(s.trim().to_ascii_lowercase().as_str(), "false" | "0" | "no")
        }
        Some(Value::Number(n)) => n.as_f64() == Some(0.0),
        _ => false,
    }
}

/// A short, safe description of an error body: the portal's own message fields only.
pub fn error_summary(root: &Value) -> String {
    let pick = |v: &Value| -> Option<String> {
        match v {
            Value::String(s) => Some(s.clone()),
            Value::Object(o) => ["message", "error_description", "description", "code"]
                .iter()
                .find_map(|k| o.get(*k).and_then(Value::as_str).map(str::to_string)),
            _ => None,
        }
    };
    let found = ["error", "message", "errors"]
        .iter()
        .find_map(|k| root.get(*k).and_then(pick));
    match found {
        Some(m) => {
            let m: String = m.chars().filter(|c| !c.is_control()).take(200).collect();
            format!(": {m}")
        }
        None => String::new(),
    }
}

/// The deployments, or `None` when an entry could not be identified: counts built from
/// part of a list would be wrong, so the last good list is kept instead.
fn deployments(items: &[Value], dropped: &mut Vec<DroppedField>) -> Option<Vec<Deployment>> {
    let mut merged: HashMap<String, Deployment> = HashMap::with_capacity(items.len());
    let mut unidentified = 0usize;
    for item in items {
        let id = match item.get("deployment_id") {
            Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
            Some(Value::Number(n)) => n.to_string(),
            _ => {
                unidentified += 1;
                continue;
            }
        };
        let first_drop = dropped.len();
        let description = text(item, "description", dropped).unwrap_or_default();
        let expiry = date_field(
            item,
            "expiration",
            "deployments.expiration",
            DateMeaning::ValidThrough,
            dropped,
        );
        let activated_at = date_field(
            item,
            "activated_at",
            "deployments.activated_at",
            DateMeaning::Instant,
            dropped,
        );
        let quantity = quantity(item, dropped);
        for d in &mut dropped[first_drop..] {
            d.deployment_id = Some(id.clone());
            if d.field == "description" {
                d.field = "deployments.description";
            }
        }
        let d = Deployment {
            id: id.clone(),
            description,
            expiry,
            activated_at,
            quantity,
        };
        match merged.get_mut(&id) {
            None => {
                merged.insert(id, d);
            }
            Some(prev) => merge(prev, d),
        }
    }
    if unidentified > 0 {
        dropped.push(DroppedField {
            field: "deployments",
            reason: format!(
                "{unidentified} of {} entries without a deployment_id: list not used",
                items.len()
            ),
            deployment_id: None,
        });
        return None;
    }
    let mut out: Vec<Deployment> = merged.into_values().collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Some(out)
}

/// The same id twice: quantities summed, earliest expiry and activation kept.
fn merge(prev: &mut Deployment, d: Deployment) {
    prev.quantity = match (prev.quantity, d.quantity) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or(1.0) + b.unwrap_or(1.0)),
    };
    prev.expiry = earliest(prev.expiry, d.expiry);
    prev.activated_at = earliest(prev.activated_at, d.activated_at);
    if prev.description.is_empty() {
        prev.description = d.description;
    }
}

fn earliest(a: Option<SystemTime>, b: Option<SystemTime>) -> Option<SystemTime> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// More activations than any real deployment holds: taken as garbage, not summed.
const MAX_QUANTITY: f64 = 1e9;

fn quantity(item: &Value, dropped: &mut Vec<DroppedField>) -> Option<f64> {
    let v = item.get("quantity")?;
    let n = match v {
        Value::Null => return None,
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    match n {
        // `+ 0.0` turns -0 into 0, which would otherwise print as "-0".
        Some(q) if q.is_finite() && (0.0..=MAX_QUANTITY).contains(&q) => Some(q + 0.0),
        Some(_) => {
            dropped.push(DroppedField {
                field: "deployments.quantity",
                reason: format!("negative, not finite or above {MAX_QUANTITY}"),
                deployment_id: None,
            });
            None
        }
        None => {
            dropped.push(DroppedField {
                field: "deployments.quantity",
                reason: "not a number".into(),
                deployment_id: None,
            });
            None
        }
    }
}

fn text(obj: &Value, key: &'static str, dropped: &mut Vec<DroppedField>) -> Option<String> {
    match obj.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            let s = s.trim();
            (!s.is_empty()).then(|| s.to_string())
        }
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(Value::Bool(b)) => Some(b.to_string()),
        Some(_) => {
            dropped.push(DroppedField {
                field: key,
                reason: "not a string".into(),
                deployment_id: None,
            });
            None
        }
    }
}

/// What a date without a time of day stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DateMeaning {
    /// An expiry: valid through that whole UTC day, so the end is the next midnight.
    ValidThrough,
    /// A moment: the start of that UTC day.
    Instant,
}

fn date_field(
    obj: &Value,
    key: &str,
    field: &'static str,
    meaning: DateMeaning,
    dropped: &mut Vec<DroppedField>,
) -> Option<SystemTime> {
    let raw = match obj.get(key) {
        None | Some(Value::Null) => return None,
        Some(Value::String(s)) => s.as_str(),
        Some(_) => {
            dropped.push(DroppedField {
                field,
                reason: "not a string".into(),
                deployment_id: None,
            });
            return None;
        }
    };
    match parse_date(raw, meaning) {
        Ok(t) => t,
        Err(reason) => {
            dropped.push(DroppedField {
                field,
                reason,
                deployment_id: None,
            });
            None
        }
    }
}

/// Parses a portal date. `Ok(None)` means "no expiry" (empty, `N/A`, `Perpetual`, …).
/// Forms that could be read two ways (`11/08/2025`) are refused, never guessed.
pub fn parse_date(raw: &str, meaning: DateMeaning) -> Result<Option<SystemTime>, String> {
    let s = raw.trim();
    let lower = s.to_ascii_lowercase();
    if matches!(
        lower.as_str(),
        "" | "n/a" | "na" | "none" | "null" | "never" | "perpetual" | "unlimited" | "-"
    ) {
        return Ok(None);
    }
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Ok(Some(t.into()));
    }
    // RFC 3339 allows a space or a lower-case t/z; `time` wants `T` and `Z`.
    let normalised = normalise_datetime(s);
    if let Ok(t) = OffsetDateTime::parse(&normalised, &Rfc3339) {
        return Ok(Some(t.into()));
    }
    // A date-time without an offset is taken as UTC (documented).
    let naive = format_description!(
        version = 2,
        "[year]-[month]-[day]T[hour]:[minute]:[second][optional [.[subsecond]]]"
    );
    if let Ok(t) = PrimitiveDateTime::parse(&normalised, naive) {
        return Ok(Some(t.assume_utc().into()));
    }
    let date_only = format_description!(version = 2, "[year]-[month]-[day]");
    if let Ok(d) = Date::parse(s, date_only) {
        let day = match meaning {
            DateMeaning::ValidThrough => d
                .next_day()
                .ok_or_else(|| "date out of range".to_string())?,
            DateMeaning::Instant => d,
        };
        return Ok(Some(day.midnight().assume_utc().into()));
    }
    if s.contains('/') {
        return Err("ambiguous date format (day or month first?): not guessed".into());
    }
    Err("unrecognised date format".into())
}

fn normalise_datetime(s: &str) -> String {
    let mut out: String = s.to_string();
    if out.len() > 10 && (out.as_bytes()[10] == b' ' || out.as_bytes()[10] == b't') {
        out.replace_range(10..11, "T");
    }
    if out.ends_with('z') {
        out.pop();
        out.push('Z');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{from_unix, unix_seconds};

    fn at(s: i64) -> Option<SystemTime> {
        Some(from_unix(s))
    }

    #[test]
    fn date_rules() {
        use DateMeaning::*;
        // 2027-06-30 valid through the day: ends 2027-07-01T00:00:00Z = 1814400000
        assert_eq!(
            parse_date("2027-06-30", ValidThrough).unwrap(),
            at(1_814_400_000)
        );
        assert_eq!(
            parse_date("2027-06-30", Instant).unwrap(),
            at(1_814_313_600)
        );
        assert_eq!(
            parse_date("2027-06-30T12:00:00Z", ValidThrough).unwrap(),
            at(1_814_356_800)
        );
        assert_eq!(
            parse_date("2027-06-30T14:00:00+02:00", ValidThrough).unwrap(),
            at(1_814_356_800)
        );
        assert_eq!(
            parse_date("2027-06-30 12:00:00", ValidThrough).unwrap(),
            at(1_814_356_800)
        );
        assert_eq!(
            parse_date("2027-06-30T12:00:00", ValidThrough).unwrap(),
            at(1_814_356_800)
        );
        let frac = parse_date("2027-06-30T12:00:00.250Z", ValidThrough)
            .unwrap()
            .unwrap();
        assert_eq!(unix_seconds(frac), 1_814_356_800.25);
        for none in ["", " ", "N/A", "Perpetual", "never"] {
            assert_eq!(parse_date(none, ValidThrough).unwrap(), None, "{none}");
        }
        assert!(
            parse_date("11/08/2025", ValidThrough)
                .unwrap_err()
                .contains("ambiguous")
        );
        assert!(parse_date("tomorrow", ValidThrough).is_err());
        assert!(parse_date("2027-02-30", ValidThrough).is_err());
    }

    #[test]
    fn answer_with_duplicates_and_bad_fields() {
        let body = br#"{"success":true,"data":{"license_key":"K","type":"PURCHASED",
            "expiry":"11/08/2025","product":null,"generated_at":"2026-12-01T00:00:00Z",
            "extra":{"ignored":true},
            "deployments":[
              {"deployment_id":"a","quantity":2,"expiration":"2027-01-31","description":"x"},
              {"deployment_id":"a","quantity":1,"expiration":"2027-01-15"},
              {"deployment_id":"b","quantity":null},
              {"deployment_id":"c","quantity":-3}
            ]}}"#;
        let p = parse_answer(body, 2).unwrap();
        let l = &p.license;
        assert_eq!(l.product, "MetaDefender Core");
        assert_eq!(l.platform, "Windows");
        assert_eq!(l.license_type, "purchased");
        assert_eq!(l.expiry, None);
        let ds = l.deployments.as_ref().unwrap();
        assert_eq!(
            ds.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert_eq!(ds[0].quantity, Some(3.0));
        assert_eq!(
            ds[0].expiry,
            parse_date("2027-01-15", DateMeaning::ValidThrough).unwrap()
        );
        assert_eq!(ds[0].description, "x");
        assert_eq!(ds[1].quantity, None);
        assert_eq!(l.activations(), Some(5.0));
        let fields: Vec<_> = p.dropped.iter().map(|d| d.field).collect();
        assert_eq!(fields, ["expiry", "deployments.quantity"]);
        // An entry that cannot be identified makes the whole list unusable.
        let p = parse_answer(
            br#"{"data":{"deployments":[{"deployment_id":"a"},{"id":"b"},7]}}"#,
            1,
        )
        .unwrap();
        assert_eq!(p.license.deployments, None);
        assert_eq!(p.dropped[0].field, "deployments");
        assert!(p.dropped[0].reason.starts_with("2 of 3 entries"));
    }

    #[test]
    fn whole_answer_errors() {
        assert!(matches!(
            parse_answer(b"<html>502</html>", 1),
            Err(AnswerError::NotJson(_))
        ));
        assert!(matches!(parse_answer(b"", 1), Err(AnswerError::NotJson(_))));
        assert!(matches!(
            parse_answer(br#"{"data":{"#, 1),
            Err(AnswerError::NotJson(_))
        ));
        let e =
            parse_answer(br#"{"success":false,"error":{"message":"key revoked"}}"#, 1).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the portal answered success=false: key revoked"
        );
        assert_eq!(
            parse_answer(br#"{"success":true}"#, 1),
            Err(AnswerError::NoData)
        );
        let p = parse_answer(br#"{"data":{"deployments":[]}}"#, 77).unwrap();
        assert_eq!(p.license.product, "");
        assert_eq!(p.license.deployment_count(), Some(0));
        assert_eq!(p.license.activations(), Some(0.0));
    }
}
