//! The `response:` mapping of the `http` provider and the pure step that turns an endpoint's
//! JSON answer into a credential: every part is an RFC 6901 JSON pointer into the answer or a
//! literal, and the expiry is read in the order absolute time, issued time plus lifetime,
//! received time plus lifetime, JWT `exp`. Errors name the field and the pointer, never a value.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use chrono::{DateTime, TimeDelta, Utc};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::credential::{Credential, Login};
use crate::problems::FieldProblems;
use crate::providers::web::{jwt_exp, unix_seconds};
use crate::providers::{ErrorCategory, ProviderError};
use crate::sensitive::Sensitive;

/// Where each part of the credential is found in the endpoint's JSON response.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ResponseMapping {
    /// The registry username (with `password`; or use `auth`).
    pub username: Option<Mapped>,
    /// The registry password or token (with `username`).
    pub password: Option<Mapped>,
    /// Base64 of `username:password`, as in a dockerconfigjson `auth` (instead of the two above).
    pub auth: Option<Mapped>,
    /// The registry host the login is for; when set, the registry file may omit `servers`.
    pub registry: Option<Mapped>,
    /// Absolute expiry: an RFC 3339 time or unix seconds. Checked first.
    pub expires_at: Option<Mapped>,
    /// Lifetime in seconds (number or numeric string), counted from `issuedAt` when that is
    /// mapped and present, otherwise from when the response was received.
    pub expires_in: Option<Mapped>,
    /// When the credential was issued (RFC 3339 or unix seconds): the base of `expiresIn`, as in
    /// the Docker token protocol's `issued_at`.
    pub issued_at: Option<Mapped>,
    /// A JWT whose payload's `exp` is the expiry. Checked last.
    pub jwt_exp: Option<Mapped>,
}

/// One mapped value: a JSON pointer into the response (`"/data/token"`) or `{value: LITERAL}`.
#[derive(Clone, PartialEq)]
pub enum Mapped {
    /// An RFC 6901 pointer, resolved with [`serde_json::Value::pointer`].
    Pointer(String),
    /// A fixed value, for parts that are not secret (a robot username, the registry host).
    Literal(Value),
}

impl fmt::Debug for Mapped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pointer(p) => write!(f, "Pointer({p:?})"),
            // A literal is rejected for secrets by `validate`, but Debug runs before that.
            Self::Literal(_) => f.write_str("Literal(***)"),
        }
    }
}

impl<'de> Deserialize<'de> for Mapped {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MappedVisitor;

        impl<'de> Visitor<'de> for MappedVisitor {
            type Value = Mapped;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON pointer such as \"/token\", or {value: LITERAL}")
            }

            fn visit_str<E: de::Error>(self, s: &str) -> Result<Mapped, E> {
                Ok(Mapped::Pointer(s.to_owned()))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Mapped, A::Error> {
                Literal::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(|l| Mapped::Literal(l.value))
            }
        }

        deserializer.deserialize_any(MappedVisitor)
    }
}

/// The map form of a mapped value.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Literal {
    /// A fixed value, for a part that is not secret.
    value: Value,
}

// The file format is a pointer string or `{value: LITERAL}` (see the `Deserialize` impl).
impl JsonSchema for Mapped {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Mapped".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let pointer = generator.subschema_for::<String>();
        let literal = generator.subschema_for::<Literal>();
        json_schema!({
            "description": "A JSON pointer into the response (\"/data/token\"), or {value: LITERAL} \
                for a part that is not secret.",
            "anyOf": [pointer, literal]
        })
    }
}

impl Mapped {
    /// How the value is named in errors: its pointer, or `(literal)`.
    fn describe(&self) -> &str {
        match self {
            Self::Pointer(p) => p,
            Self::Literal(_) => "(literal)",
        }
    }

    /// The value in `body`; `None` when the pointer leads nowhere or to `null`.
    fn lookup<'a>(&'a self, body: &'a Value) -> Option<&'a Value> {
        match self {
            Self::Pointer(p) => body.pointer(p).filter(|v| !v.is_null()),
            Self::Literal(v) => Some(v),
        }
    }
}

/// What a literal may be for each mapped field.
#[derive(Clone, Copy)]
enum LiteralRule {
    NonEmptyString,
    Seconds,
    Rejected(&'static str),
}

impl ResponseMapping {
    pub(super) fn validate(&self, problems: &mut FieldProblems) {
        const SECRET: &str =
            "secrets are not accepted in clear in config files; map it from the response";
        let fields = [
            ("username", &self.username, LiteralRule::NonEmptyString),
            ("password", &self.password, LiteralRule::Rejected(SECRET)),
            ("auth", &self.auth, LiteralRule::Rejected(SECRET)),
            ("registry", &self.registry, LiteralRule::NonEmptyString),
            (
                "expiresAt",
                &self.expires_at,
                LiteralRule::Rejected(
                    "a fixed expiry time would soon be in the past; map it from the response or use `expiresIn`",
                ),
            ),
            ("expiresIn", &self.expires_in, LiteralRule::Seconds),
            (
                "issuedAt",
                &self.issued_at,
                LiteralRule::Rejected("the issue time must come from the response"),
            ),
            (
                "jwtExp",
                &self.jwt_exp,
                LiteralRule::Rejected("the JWT must come from the response; give its JSON pointer"),
            ),
        ];
        for (name, mapped, rule) in fields {
            match mapped {
                None => {}
                Some(Mapped::Pointer(p)) => {
                    if let Err(msg) = check_pointer(p) {
                        problems.push(name, msg);
                    }
                }
                Some(Mapped::Literal(v)) => match rule {
                    LiteralRule::NonEmptyString => {
                        if v.as_str().is_none_or(|s| s.trim().is_empty()) {
                            problems.push(format!("{name}.value"), "must be a non-empty string");
                        }
                    }
                    LiteralRule::Seconds => {
                        if seconds_of(v).is_none() {
                            problems.push(
                                format!("{name}.value"),
                                "must be a non-negative number of seconds",
                            );
                        }
                    }
                    LiteralRule::Rejected(why) => problems.push(format!("{name}.value"), why),
                },
            }
        }
        match (&self.username, &self.password, &self.auth) {
            (Some(_), Some(_), None) | (None, None, Some(_)) => {}
            (_, _, Some(_)) => problems.push(
                "auth",
                "map either `auth` or `username` and `password`, not both",
            ),
            (None, None, None) => problems.push("", "map `username` and `password`, or `auth`"),
            (Some(_), None, None) => problems.push("password", "map `password` too"),
            (None, Some(_), None) => problems.push("username", "map `username` too"),
        }
    }

    /// Turns the bytes of a successful answer into a credential: JSON, then [`Self::extract`].
    pub fn map_body(
        &self,
        bytes: &[u8],
        received: DateTime<Utc>,
        what: &str,
    ) -> Result<Credential, ProviderError> {
        // serde_json's syntax errors carry a position, never the input; still only the position
        // is kept, so no part of the body can reach the message.
        let body: Value = serde_json::from_slice(bytes).map_err(|e| {
            bad_response(format!(
                "the response from {what} is not valid JSON (line {}, column {})",
                e.line(),
                e.column()
            ))
        })?;
        self.extract(&body, received, what)
    }

    /// Turns a response body into a credential. `received` is when the response arrived (the
    /// base of `expiresIn`); `what` names the request in errors.
    pub(super) fn extract(
        &self,
        body: &Value,
        received: DateTime<Utc>,
        what: &str,
    ) -> Result<Credential, ProviderError> {
        let (username, password) = match (&self.username, &self.password, &self.auth) {
            (Some(user), Some(pass), None) => (
                required_str(user, body, "username", what)?.to_owned(),
                Sensitive::new(required_str(pass, body, "password", what)?),
            ),
            (None, None, Some(auth)) => split_auth(required_str(auth, body, "auth", what)?)
                .ok_or_else(|| {
                    bad_response(format!(
                        "the `auth` value at {} in the response from {what} is not base64 of \
                         username:password",
                        auth.describe()
                    ))
                })?,
            _ => {
                return Err(ProviderError::new(
                    ErrorCategory::LocalInput,
                    format!("the response mapping for {what} is incomplete"),
                ));
            }
        };
        let server = match &self.registry {
            Some(m) => Some(registry_host(required_str(m, body, "registry", what)?)),
            None => None,
        };
        // A stated expiry already past is handled like every provider's, by the refresh:
        // the credential is written as if it stated none.
        let expires_at = self.expiry(body, received, what)?;
        Ok(Credential {
            logins: vec![Login {
                server,
                username,
                password,
            }],
            expires_at,
        })
    }

    /// The first mapped expiry present in the response, in the order `expiresAt`, `expiresIn`
    /// (from `issuedAt`, else from `received`), `jwtExp`. A present but unreadable value is an
    /// error, not a reason to try the next one. `None` only when no expiry is mapped; mapped ones
    /// that are all absent are an error.
    fn expiry(
        &self,
        body: &Value,
        received: DateTime<Utc>,
        what: &str,
    ) -> Result<Option<DateTime<Utc>>, ProviderError> {
        let issued = match self.issued_at.as_ref().map(|m| (m, m.lookup(body))) {
            Some((m, Some(v))) => Some(absolute_time(v).ok_or_else(|| {
                bad_response(format!(
                    "`issuedAt` at {} in the response from {what} is not an RFC 3339 time or \
                     unix seconds",
                    m.describe()
                ))
            })?),
            _ => None,
        };
        let base = issued.unwrap_or(received);
        type Reader = fn(&Value, DateTime<Utc>) -> Option<DateTime<Utc>>;
        let candidates: [(&str, &Option<Mapped>, Reader, &str); 3] = [
            (
                "expiresAt",
                &self.expires_at,
                |v, _| absolute_time(v),
                "an RFC 3339 time or unix seconds",
            ),
            (
                "expiresIn",
                &self.expires_in,
                |v, base| {
                    let millis = (seconds_of(v)? * 1000.0).round();
                    // Out-of-range lifetimes (centuries) are refused instead of saturating.
                    if millis > 1e15 {
                        return None;
                    }
                    base.checked_add_signed(TimeDelta::try_milliseconds(millis as i64)?)
                },
                "a non-negative number of seconds",
            ),
            (
                "jwtExp",
                &self.jwt_exp,
                |v, _| jwt_exp(v.as_str()?),
                "a JWT whose payload has a numeric `exp`",
            ),
        ];
        let mut tried = Vec::new();
        for (name, mapped, read, expected) in candidates {
            let Some(mapped) = mapped else { continue };
            let Some(value) = mapped.lookup(body) else {
                tried.push(mapped.describe());
                continue;
            };
            return read(value, base).map(Some).ok_or_else(|| {
                bad_response(format!(
                    "`{name}` at {} in the response from {what} is not {expected}",
                    mapped.describe()
                ))
            });
        }
        if tried.is_empty() {
            Ok(None)
        } else {
            Err(bad_response(format!(
                "the response from {what} has no expiry at {}",
                tried.join(" nor at ")
            )))
        }
    }
}

/// Checks RFC 6901 syntax: a leading `/`, and `~` only as `~0` or `~1`.
fn check_pointer(pointer: &str) -> Result<(), &'static str> {
    if !pointer.starts_with('/') {
        return Err(
            "a JSON pointer must start with `/` (RFC 6901), like \"/token\"; for a fixed value write {value: …}",
        );
    }
    let mut chars = pointer.chars();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
            return Err(
                "in a JSON pointer `~` must be followed by 0 or 1 (`~0` is `~`, `~1` is `/`)",
            );
        }
    }
    Ok(())
}

fn bad_response(message: String) -> ProviderError {
    ProviderError::new(ErrorCategory::BadResponse, message)
}

/// A mapped string that must be present. Errors name the field and pointer, never the value.
fn required_str<'a>(
    mapped: &'a Mapped,
    body: &'a Value,
    name: &str,
    what: &str,
) -> Result<&'a str, ProviderError> {
    match mapped.lookup(body) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(bad_response(format!(
            "`{name}` at {} in the response from {what} is not a string",
            mapped.describe()
        ))),
        None => Err(bad_response(format!(
            "the response from {what} has no `{name}` at {}",
            mapped.describe()
        ))),
    }
}

/// Decodes a dockerconfigjson-style `auth` (base64 of `user:password`, padding optional).
fn split_auth(encoded: &str) -> Option<(String, Sensitive)> {
    let encoded = encoded.trim();
    let bytes = STANDARD
        .decode(encoded)
        .or_else(|_| STANDARD_NO_PAD.decode(encoded))
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (user, pass) = text.split_once(':')?;
    Some((user.to_owned(), Sensitive::new(pass)))
}

/// Registry hosts are written as bare `host[:port]` keys; endpoints often answer with a URL.
fn registry_host(value: &str) -> String {
    let value = value.trim();
    let value = value
        .strip_prefix("https://")
        .or_else(|| value.strip_prefix("http://"))
        .unwrap_or(value);
    value.trim_end_matches('/').to_owned()
}

/// A non-negative, finite number of seconds, from a JSON number or a numeric string.
fn seconds_of(value: &Value) -> Option<f64> {
    let secs = match value {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    (secs.is_finite() && secs >= 0.0).then_some(secs)
}

/// An absolute time: an RFC 3339 string, or unix seconds as a number or digit string.
fn absolute_time(value: &Value) -> Option<DateTime<Utc>> {
    match value {
        Value::String(s) => DateTime::parse_from_rfc3339(s.trim())
            .ok()
            .map(|t| t.with_timezone(&Utc))
            .or_else(|| unix_seconds(s.trim().parse::<f64>().ok()?)),
        Value::Number(n) => unix_seconds(n.as_f64()?),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::providers::http::testing::{CANARY_PASSWORD, at, jwt};

    fn mapping(yaml: &str) -> ResponseMapping {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn username_password_and_registry_are_read_by_pointer() {
        let m = mapping("{username: /data/user, password: /data/pass, registry: /endpoint}");
        let body = json!({"data": {"user": "robot$ci", "pass": CANARY_PASSWORD},
                          "endpoint": "https://harbor.local:8443/"});
        let c = m.extract(&body, at(1000), "GET http://h/t").unwrap();
        assert_eq!(c.logins[0].username, "robot$ci");
        assert_eq!(c.logins[0].password.expose(), CANARY_PASSWORD);
        assert_eq!(c.logins[0].server.as_deref(), Some("harbor.local:8443"));
        assert_eq!(c.expires_at, None);
    }

    #[test]
    fn pointers_follow_rfc_6901_escapes() {
        let m = mapping("{username: /a~1b/c~0d, password: /arr/1}");
        let body = json!({"a/b": {"c~d": "user"}, "arr": ["x", "pw"]});
        let c = m.extract(&body, at(0), "w").unwrap();
        assert_eq!(c.logins[0].username, "user");
        assert_eq!(c.logins[0].password.expose(), "pw");
    }

    #[test]
    fn an_auth_value_is_split_at_the_first_colon() {
        let m = mapping("{auth: /auth}");
        let encoded = STANDARD.encode(format!("robot:{CANARY_PASSWORD}:x"));
        let c = m.extract(&json!({"auth": encoded}), at(0), "w").unwrap();
        assert_eq!(c.logins[0].username, "robot");
        assert_eq!(
            c.logins[0].password.expose(),
            format!("{CANARY_PASSWORD}:x")
        );
        let unpadded = STANDARD_NO_PAD.encode("ab:c");
        let c = m.extract(&json!({"auth": unpadded}), at(0), "w").unwrap();
        assert_eq!(c.logins[0].username, "ab");
    }

    #[test]
    fn an_auth_value_without_a_colon_is_a_bad_response_that_hides_it() {
        let m = mapping("{auth: /auth}");
        let encoded = STANDARD.encode(CANARY_PASSWORD);
        let err = m
            .extract(&json!({"auth": encoded}), at(0), "GET http://h/t")
            .unwrap_err();
        assert_eq!(err.category, ErrorCategory::BadResponse);
        assert!(err.message.contains("/auth"), "{err}");
        assert!(!err.message.contains(&encoded), "{err}");
    }

    #[test]
    fn a_missing_or_null_field_is_a_bad_response_naming_the_pointer() {
        let m = mapping("{username: /user, password: /secret/value}");
        for body in [
            json!({"user": "u", "secret": {}}),
            json!({"user": "u", "secret": {"value": null}}),
        ] {
            let err = m.extract(&body, at(0), "GET http://h/t").unwrap_err();
            assert_eq!(err.category, ErrorCategory::BadResponse);
            assert_eq!(
                err.message,
                "the response from GET http://h/t has no `password` at /secret/value"
            );
        }
        let err = m
            .extract(&json!({"user": 7, "secret": {"value": "p"}}), at(0), "w")
            .unwrap_err();
        assert_eq!(
            err.message,
            "`username` at /user in the response from w is not a string"
        );
    }

    #[test]
    fn literal_username_and_registry_are_used_as_given() {
        let m = mapping(
            "{username: {value: oauth2accesstoken}, password: /t, registry: {value: r.io}}",
        );
        let c = m.extract(&json!({"t": "tok"}), at(0), "w").unwrap();
        assert_eq!(c.logins[0].username, "oauth2accesstoken");
        assert_eq!(c.logins[0].server.as_deref(), Some("r.io"));
    }

    #[test]
    fn expires_at_accepts_rfc_3339_and_unix_seconds() {
        let m = mapping("{auth: /a, expiresAt: /exp}");
        let a = STANDARD.encode("u:p");
        for exp in [
            json!("2030-01-01T00:00:00Z"),
            json!("2030-01-01T01:00:00+01:00"),
            json!(1_893_456_000),
            json!(1_893_456_000.0),
            json!("1893456000"),
        ] {
            let c = m.extract(&json!({"a": a, "exp": exp}), at(0), "w").unwrap();
            assert_eq!(c.expires_at, Some(at(1_893_456_000)), "{exp}");
        }
        let err = m
            .extract(&json!({"a": a, "exp": "tomorrow"}), at(0), "w")
            .unwrap_err();
        assert_eq!(
            err.message,
            "`expiresAt` at /exp in the response from w is not an RFC 3339 time or unix seconds"
        );
    }

    #[test]
    fn expires_in_counts_from_when_the_response_was_received() {
        let m = mapping("{auth: /a, expiresIn: /ttl}");
        let a = STANDARD.encode("u:p");
        for ttl in [json!(3600), json!("3600"), json!(3600.0)] {
            let c = m
                .extract(&json!({"a": a, "ttl": ttl}), at(1000), "w")
                .unwrap();
            assert_eq!(c.expires_at, Some(at(4600)), "{ttl}");
        }
        let literal = mapping("{auth: /a, expiresIn: {value: 60}}");
        let c = literal.extract(&json!({"a": a}), at(1000), "w").unwrap();
        assert_eq!(c.expires_at, Some(at(1060)));
        for bad in [json!(-1), json!("soon"), json!(true), json!(1e300)] {
            let err = m
                .extract(&json!({"a": a, "ttl": bad}), at(0), "w")
                .unwrap_err();
            assert_eq!(err.category, ErrorCategory::BadResponse, "{bad}");
        }
    }

    #[test]
    fn expires_in_counts_from_issued_at_when_the_response_has_it() {
        let m = mapping(
            "{username: {value: u}, password: /token, expiresIn: /expires_in, issuedAt: /issued_at}",
        );
        let body = json!({"token": "t", "expires_in": 300, "issued_at": "1970-01-01T00:16:40Z"});
        assert_eq!(
            m.extract(&body, at(1010), "w").unwrap().expires_at,
            Some(at(1300))
        );
        let without = json!({"token": "t", "expires_in": 300});
        assert_eq!(
            m.extract(&without, at(1010), "w").unwrap().expires_at,
            Some(at(1310))
        );
        let bad = json!({"token": "t", "expires_in": 300, "issued_at": "yesterday"});
        let err = m.extract(&bad, at(1010), "w").unwrap_err();
        assert_eq!(err.category, ErrorCategory::BadResponse);
        assert!(err.message.starts_with("`issuedAt` at /issued_at"), "{err}");
    }

    #[test]
    fn jwt_exp_is_read_from_the_unverified_payload() {
        let m = mapping("{username: {value: robot}, password: /token, jwtExp: /token}");
        let token = jwt(&json!({"sub": "robot", "exp": 1_893_456_000}));
        let c = m.extract(&json!({"token": token}), at(0), "w").unwrap();
        assert_eq!(c.expires_at, Some(at(1_893_456_000)));
        assert_eq!(c.logins[0].password.expose(), token);
    }

    #[test]
    fn a_value_that_is_not_a_jwt_is_a_bad_response_that_hides_it() {
        let m = mapping("{username: {value: robot}, password: /token, jwtExp: /token}");
        for token in [
            CANARY_PASSWORD.to_string(),
            format!("a.{CANARY_PASSWORD}.c"),
            jwt(&json!({"sub": CANARY_PASSWORD})),
            jwt(&json!({"exp": "tomorrow", "sub": CANARY_PASSWORD})),
        ] {
            let err = m.extract(&json!({"token": token}), at(0), "w").unwrap_err();
            assert_eq!(err.category, ErrorCategory::BadResponse);
            assert_eq!(
                err.message,
                "`jwtExp` at /token in the response from w is not a JWT whose payload has a \
                 numeric `exp`"
            );
        }
    }

    #[test]
    fn expiry_precedence_is_absolute_then_relative_then_jwt() {
        let m = mapping(
            "{username: {value: u}, password: /token, expiresAt: /at, expiresIn: /in, jwtExp: /token}",
        );
        let token = jwt(&json!({"exp": 3000}));
        let all = json!({"token": token, "at": 5000, "in": 1000});
        assert_eq!(
            m.extract(&all, at(100), "w").unwrap().expires_at,
            Some(at(5000))
        );
        let no_at = json!({"token": token, "at": null, "in": 1000});
        assert_eq!(
            m.extract(&no_at, at(100), "w").unwrap().expires_at,
            Some(at(1100))
        );
        let only_jwt = json!({"token": token});
        assert_eq!(
            m.extract(&only_jwt, at(100), "w").unwrap().expires_at,
            Some(at(3000))
        );
    }

    #[test]
    fn mapped_expiry_fields_all_absent_is_a_bad_response_naming_them() {
        let m = mapping("{auth: /a, expiresAt: /at, expiresIn: /in}");
        let err = m
            .extract(&json!({"a": STANDARD.encode("u:p")}), at(0), "w")
            .unwrap_err();
        assert_eq!(err.category, ErrorCategory::BadResponse);
        assert_eq!(
            err.message,
            "the response from w has no expiry at /at nor at /in"
        );
    }

    #[test]
    fn a_stated_expiry_already_past_is_passed_on_for_the_common_rule() {
        let m = mapping("{auth: /a, expiresAt: /at}");
        let body = json!({"a": STANDARD.encode("u:p"), "at": 999});
        let c = m.extract(&body, at(1000), "w").expect("extracted");
        assert_eq!(c.expires_at, Some(at(999)));
    }
}
