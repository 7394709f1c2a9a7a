//! Secrets (client ids and secrets, activation keys, tokens) that must never be printed.

use std::fmt;
use std::sync::Arc;

/// A secret string. `Debug` is redacted and there is no `Display`, so a secret can only
/// leave the process through an explicit [`Secret::expose`].
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Secret(Arc<str>);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<Arc<str>>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for the one place that must send it (a request).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `****` followed by the last four characters: enough to tell keys apart in a
    /// dashboard, useless for activating anything.
    pub fn masked(&self) -> String {
        let chars: Vec<char> = self.0.chars().collect();
        let tail: String = chars[chars.len().saturating_sub(4)..].iter().collect();
        format!("****{tail}")
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(\"****\")")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted_and_mask_keeps_four() {
        let s = Secret::new("ABCD-EFGH-1A2B");
        assert_eq!(format!("{s:?}"), "Secret(\"****\")");
        assert_eq!(s.masked(), "****1A2B");
        assert_eq!(Secret::new("ab").masked(), "****ab");
    }
}
