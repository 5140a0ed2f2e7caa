//! The `http` provider: one configurable HTTP request to a credential endpoint (Harbor robot
//! accounts, Quay robot federation, Vault KV, GitLab deploy tokens, in-house brokers) and a
//! mapping from its JSON response to a login and an expiry.
//!
//! - `config`: the settings as written, parsed once into typed values, and their validation;
//! - `mapping`: the pure step from a JSON answer to a credential;
//! - `client`: the built provider that sends the request and applies the mapping.

mod client;
mod config;
mod mapping;

pub use config::{BasicAuth, EndpointAuth, Headers, HttpConfig, Parsed};
pub use mapping::{Mapped, ResponseMapping};

#[cfg(test)]
mod testing {
    //! Builders and canaries shared by the http provider's unit tests.

    use std::path::Path;

    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use chrono::{DateTime, TimeZone, Utc};
    use serde_json::Value;

    use super::HttpConfig;
    use crate::problems::FieldProblems;

    /// The password an endpoint hands out; must never appear in an error or Debug output.
    pub const CANARY_PASSWORD: &str = "canary-pw-5e1d9";
    /// The bearer token sent to the endpoint; same rule.
    pub const CANARY_TOKEN: &str = "canary-tok-7b2c4";

    pub fn parse(yaml: &str) -> HttpConfig {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    pub fn problems_of(config: &HttpConfig) -> Vec<String> {
        let mut p = FieldProblems::new(Path::new("r.yaml"));
        p.scoped("provider", |p| config.validate(p));
        p.into_vec()
            .into_iter()
            .map(|p| format!("{}: {}", p.field, p.message))
            .collect()
    }

    pub fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(secs, 0).unwrap()
    }

    pub fn assert_no_canary(text: &str) {
        assert!(!text.contains(CANARY_PASSWORD), "password leaked: {text}");
        assert!(!text.contains(CANARY_TOKEN), "token leaked: {text}");
    }

    /// A JWT with the given payload; the signature is junk, as it is never checked.
    pub fn jwt(payload: &Value) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.encode(payload.to_string());
        format!("{header}.{payload}.c2lnbmF0dXJl")
    }
}
