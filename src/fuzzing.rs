//! Entry points for the fuzz targets (`fuzz/`, a crate of its own): thin public wrappers over
//! parsers that are private to their modules, so the fuzzers run exactly the code the daemon
//! runs. Not an API: hidden from the docs and free to change with the fuzz targets.

use chrono::{DateTime, Utc};

/// The `exp` of a JWT's unverified payload, as every provider reads it (`web::jwt_exp`).
pub fn jwt_exp(token: &str) -> Option<DateTime<Utc>> {
    crate::providers::web::jwt_exp(token)
}

/// The schemes and parameters of a `WWW-Authenticate` value, as verification reads a
/// registry's challenge.
pub fn www_authenticate(text: &str) -> Vec<(String, Vec<(String, String)>)> {
    crate::verify::parse_challenges(text)
}
