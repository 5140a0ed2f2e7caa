//! A string that never prints its content: credentials travel in this type so that a stray
//! `{:?}`, `{}` or `tracing` field can only ever show `***`.

use std::fmt;

/// Secret text. `Debug` and `Display` print `***`; the value is reachable only through
/// [`Sensitive::expose`], which makes every use greppable.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Sensitive(String);

impl Sensitive {
    /// Wraps secret text.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret text itself. Call only where the value must leave the process (a Secret, an
    /// HTTP request to the provider), never for logging.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the secret text is empty (an empty credential is never written).
    pub fn is_empty(&self) -> bool {
        self.0.trim().is_empty()
    }
}

impl From<String> for Sensitive {
    fn from(value: String) -> Self {
        Self(value)
    }
}

/// Read from JSON or YAML as a plain string (a request carrying a token), never printed back.
impl<'de> serde::Deserialize<'de> for Sensitive {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self)
    }
}

impl fmt::Debug for Sensitive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Sensitive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let s = Sensitive::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "*** ***");
        assert_eq!(s.expose(), "hunter2");
    }
}
