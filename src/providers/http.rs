//! The `http` provider: one configurable HTTP request to a credential endpoint (Harbor robot
//! accounts, Quay robot federation, Vault KV, GitLab deploy tokens, in-house brokers) and a
//! mapping from its JSON response to a login and an expiry.
//!
//! Every mapped value is an RFC 6901 JSON pointer into the response or a literal. The endpoint's
//! own credential (basic or bearer) is read from its file on every call, so a rotated projected
//! token is used as soon as it lands. Errors name the request (method and URL without query) and
//! the pointer that failed, never the response body: a body may hold the credential itself.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use chrono::{DateTime, TimeDelta, Utc};
use reqwest::header::{
    ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, PROXY_AUTHORIZATION,
    RETRY_AFTER,
};
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use url::Url;

use super::{ErrorCategory, Provider, ProviderError, TextSource};
use crate::credential::{Credential, Login};
use crate::problems::FieldProblems;
use crate::sensitive::Sensitive;

/// Used when `timeout` is not set.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Larger responses are refused rather than buffered: a credential fits in a few kilobytes.
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Settings of `provider: {type: http, …}`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpConfig {
    /// The endpoint, `http://` or `https://`.
    pub url: String,
    /// `GET` (default), `POST`, `PUT` or `PATCH` (Harbor's robot secret refresh), any letter case.
    #[serde(default = "default_method")]
    pub method: String,
    /// Extra request headers with literal values (credentials go under `auth`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Request body, sent as is (`Content-Type: application/json` unless a header says otherwise).
    pub body: Option<String>,
    /// Whole-request timeout as a duration (`"10s"`, `"1m"`); 10 s when unset.
    pub timeout: Option<String>,
    /// PEM file with extra root certificates trusted for an `https` endpoint.
    pub ca_file: Option<PathBuf>,
    /// How pullkeeper authenticates to the endpoint.
    #[serde(default)]
    pub auth: EndpointAuth,
    /// Where the credential is found in the JSON response (boxed: it is most of the size).
    pub response: Box<ResponseMapping>,
}

fn default_method() -> String {
    "GET".to_string()
}

/// Authentication to the credential endpoint itself: `none`, `{basic: …}` or `{bearer: …}`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum EndpointAuth {
    /// No `Authorization` header (`auth: none`, the default).
    #[default]
    None,
    /// HTTP basic authentication; both parts read on every call.
    Basic(BasicAuth),
    /// `Authorization: Bearer …`, the token read on every call (projected tokens rotate).
    Bearer(TextSource),
}

// By hand because YAML deserializers write enums as tags (`!basic`); the file format is the
// plain `none` / `{basic: …}` / `{bearer: …}`.
impl<'de> Deserialize<'de> for EndpointAuth {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AuthVisitor;

        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct AuthMap {
            basic: Option<BasicAuth>,
            bearer: Option<TextSource>,
        }

        impl<'de> Visitor<'de> for AuthVisitor {
            type Value = EndpointAuth;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`none`, {basic: {username: …, password: …}} or {bearer: {file: …}}")
            }

            fn visit_str<E: de::Error>(self, s: &str) -> Result<EndpointAuth, E> {
                match s {
                    "none" => Ok(EndpointAuth::None),
                    other => Err(E::unknown_variant(other, &["none", "basic", "bearer"])),
                }
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<EndpointAuth, A::Error> {
                let m = AuthMap::deserialize(de::value::MapAccessDeserializer::new(map))?;
                match (m.basic, m.bearer) {
                    (Some(basic), None) => Ok(EndpointAuth::Basic(basic)),
                    (None, Some(token)) => Ok(EndpointAuth::Bearer(token)),
                    _ => Err(de::Error::custom("set exactly one of `basic` or `bearer`")),
                }
            }
        }

        deserializer.deserialize_any(AuthVisitor)
    }
}

/// `auth: {basic: {username: …, password: …}}`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BasicAuth {
    /// `file`, `env` or `value`.
    pub username: TextSource,
    /// `file` or `env` only.
    pub password: TextSource,
}

/// Where each part of the credential is found in the endpoint's JSON response.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
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

        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Literal {
            value: Value,
        }

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
    fn validate(&self, problems: &mut FieldProblems) {
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

    /// Turns a response body into a credential. `received` is when the response arrived (the
    /// base of `expiresIn`); `what` names the request in errors.
    fn extract(
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
        let expires_at = self.expiry(body, received, what)?;
        if let Some(at) = expires_at
            && at <= received
        {
            return Err(bad_response(format!(
                "the credential from {what} had already expired when it arrived ({at})"
            )));
        }
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

fn unix_seconds(secs: f64) -> Option<DateTime<Utc>> {
    if !secs.is_finite() || secs <= 0.0 || secs > 1e13 {
        return None;
    }
    DateTime::from_timestamp_millis((secs * 1000.0).round() as i64)
}

/// The `exp` claim of a JWT. The signature is deliberately NOT verified: the token is only read
/// to learn when to renew it, and the registry that receives it is what verifies it.
fn jwt_exp(token: &str) -> Option<DateTime<Utc>> {
    let mut parts = token.trim().split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    unix_seconds(claims.get("exp")?.as_f64()?)
}

/// How `method` maps to a request method; `None` for unsupported ones.
fn parse_method(method: &str) -> Option<reqwest::Method> {
    match method.to_ascii_uppercase().as_str() {
        "GET" => Some(reqwest::Method::GET),
        "POST" => Some(reqwest::Method::POST),
        "PUT" => Some(reqwest::Method::PUT),
        "PATCH" => Some(reqwest::Method::PATCH),
        _ => None,
    }
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() => Err("must be longer than zero".to_string()),
        Ok(d) => Ok(d),
        Err(e) => Err(format!("not a duration like \"10s\" or \"1m\": {e}")),
    }
}

/// `METHOD scheme://host[:port]/path`: the request as named in errors and logs.
fn describe_request(method: &reqwest::Method, url: &Url) -> String {
    format!("{method} {}", describe_url(url))
}

/// The URL without query, fragment and userinfo, which may carry tokens.
fn describe_url(url: &Url) -> String {
    let mut shown = url.clone();
    shown.set_query(None);
    shown.set_fragment(None);
    // Only fails for URLs that cannot have credentials, which then have none to hide.
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.to_string()
}

/// The delay a 429 or 503 answer asks for: delta-seconds or an HTTP date.
fn retry_after(headers: &HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
    let text = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = DateTime::parse_from_rfc2822(text).ok()?.with_timezone(&Utc);
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

fn config_error(message: String) -> ProviderError {
    ProviderError::new(ErrorCategory::LocalInput, message)
}

impl fmt::Debug for HttpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Header values, the body and the URL's query are literals that should hold no secret,
        // but a config Debug may reach a log: show their shape only.
        let url =
            Url::parse(&self.url).map_or_else(|_| "(invalid)".to_string(), |u| describe_url(&u));
        f.debug_struct("HttpConfig")
            .field("url", &url)
            .field("method", &self.method)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field(
                "body",
                &self.body.as_ref().map(|b| format!("({} bytes)", b.len())),
            )
            .field("timeout", &self.timeout)
            .field("ca_file", &self.ca_file)
            .field("auth", &self.auth)
            .field("response", &self.response)
            .finish()
    }
}

impl HttpConfig {
    /// Whether the response mapping names the registry host, so `servers` may be omitted.
    pub fn provides_servers(&self) -> bool {
        self.response.registry.is_some()
    }

    /// Checks everything serde cannot, reporting every problem (fields relative to `provider`).
    pub fn validate(&self, problems: &mut FieldProblems) {
        match Url::parse(&self.url) {
            // The URL itself is not echoed: its query may hold a token.
            Err(e) => problems.push("url", format!("not a valid URL: {e}")),
            Ok(url) => {
                if !matches!(url.scheme(), "http" | "https") {
                    problems.push("url", "use an http:// or https:// URL");
                }
                if !url.username().is_empty() || url.password().is_some() {
                    problems.push(
                        "url",
                        "credentials in the URL are not accepted; use `auth.basic`",
                    );
                }
            }
        }
        if parse_method(&self.method).is_none() {
            problems.push("method", "use GET, POST, PUT or PATCH");
        }
        for (name, value) in &self.headers {
            let field = format!("headers.{name}");
            match HeaderName::from_bytes(name.as_bytes()) {
                Err(_) => problems.push(&field, "not a valid HTTP header name"),
                Ok(h) if h == AUTHORIZATION || h == PROXY_AUTHORIZATION => problems.push(
                    &field,
                    "credentials are not accepted in clear in config files; use `auth`",
                ),
                Ok(_) => {}
            }
            if HeaderValue::from_str(value).is_err() {
                problems.push(&field, "not a valid HTTP header value");
            }
        }
        if let Some(Err(msg)) = self.timeout.as_deref().map(parse_timeout) {
            problems.push("timeout", msg);
        }
        if self
            .ca_file
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            problems.push("caFile", "must name a PEM file");
        } else if let Some(path) = &self.ca_file {
            problems.require_file("caFile", path);
        }
        problems.scoped("auth", |p| match &self.auth {
            EndpointAuth::None => {}
            EndpointAuth::Basic(basic) => p.scoped("basic", |p| {
                basic.username.validate(p, "username", false);
                basic.password.validate(p, "password", true);
            }),
            EndpointAuth::Bearer(token) => token.validate(p, "bearer", true),
        });
        problems.scoped("response", |p| self.response.validate(p));
    }

    /// Builds the provider: one HTTP client (timeout, extra CA) reused by every fetch.
    pub async fn build(&self) -> Result<Arc<dyn Provider>, ProviderError> {
        let url = Url::parse(&self.url)
            .map_err(|e| config_error(format!("invalid endpoint URL: {e}")))?;
        let method = parse_method(&self.method)
            .ok_or_else(|| config_error("unsupported HTTP method".to_string()))?;
        let what = describe_request(&method, &url);
        let timeout = match &self.timeout {
            Some(text) => parse_timeout(text)
                .map_err(|e| config_error(format!("invalid timeout for {what}: {e}")))?,
            None => DEFAULT_TIMEOUT,
        };

        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        if self.body.is_some() {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        for (name, value) in &self.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| config_error(format!("invalid header name for {what}")))?;
            let value = HeaderValue::from_str(value)
                .map_err(|_| config_error(format!("invalid value of header {name} for {what}")))?;
            headers.insert(name, value);
        }

        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .user_agent(concat!("pullkeeper/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &self.ca_file {
            let pem = tokio::fs::read(path).await.map_err(|e| {
                config_error(format!("cannot read CA file {}: {e}", path.display()))
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .ok()
                .filter(|c| !c.is_empty())
                .ok_or_else(|| {
                    config_error(format!(
                        "CA file {} holds no PEM certificate",
                        path.display()
                    ))
                })?;
            builder = builder.tls_certs_merge(certs);
        }
        let client = builder
            .build()
            .map_err(|e| config_error(format!("cannot build the HTTP client for {what}: {e}")))?;

        Ok(Arc::new(HttpProvider {
            client,
            method,
            url,
            what,
            headers,
            body: self.body.clone(),
            auth: self.auth.clone(),
            mapping: (*self.response).clone(),
        }))
    }
}

/// A built `http` provider.
struct HttpProvider {
    client: reqwest::Client,
    method: reqwest::Method,
    url: Url,
    /// The request as named in errors (no query string).
    what: String,
    headers: HeaderMap,
    body: Option<String>,
    auth: EndpointAuth,
    mapping: ResponseMapping,
}

impl fmt::Debug for HttpProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL's query and the body are left out: either may carry a token.
        f.debug_struct("HttpProvider")
            .field("request", &self.what)
            .finish_non_exhaustive()
    }
}

impl HttpProvider {
    async fn request(&self) -> Result<reqwest::Request, ProviderError> {
        let what = &self.what;
        let mut request = self
            .client
            .request(self.method.clone(), self.url.clone())
            .headers(self.headers.clone());
        if let Some(body) = &self.body {
            request = request.body(body.clone());
        }
        request = match &self.auth {
            EndpointAuth::None => request,
            EndpointAuth::Basic(basic) => {
                let user = read_part(&basic.username, "basic auth username", what).await?;
                let pass = read_part(&basic.password, "basic auth password", what).await?;
                request.basic_auth(user.expose().trim(), Some(pass.expose()))
            }
            EndpointAuth::Bearer(token) => {
                let token = read_part(token, "bearer token", what).await?;
                request.bearer_auth(token.expose().trim())
            }
        };
        // Fails only on header values that cannot be sent, i.e. a token with control characters.
        request.build().map_err(|_| {
            config_error(format!(
                "cannot build the request to {what}: the endpoint credential is not a valid header value"
            ))
        })
    }
}

/// Reads one part of the endpoint credential now. An empty one (a projected token not written
/// yet) is a local problem, not something to send and have refused.
async fn read_part(
    source: &TextSource,
    part: &str,
    what: &str,
) -> Result<Sensitive, ProviderError> {
    let text = source.read().await.map_err(|mut e| {
        e.message = format!("cannot read the {part} for {what}: {}", e.message);
        e
    })?;
    if text.is_empty() {
        return Err(config_error(format!("the {part} for {what} is empty")));
    }
    Ok(text)
}

#[async_trait]
impl Provider for HttpProvider {
    async fn fetch(&self) -> Result<Credential, ProviderError> {
        let what = &self.what;
        let request = self.request().await?;
        let mut response = self
            .client
            .execute(request)
            .await
            .map_err(|e| ProviderError::from_reqwest(e, what))?;
        let received = Utc::now();
        let status = response.status();
        if !status.is_success() {
            let mut err = ProviderError::from_status(status.as_u16(), what);
            err.retry_after = retry_after(response.headers(), received);
            return Err(err);
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| ProviderError::from_reqwest(e, what))?
        {
            if bytes.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(bad_response(format!(
                    "the response from {what} is larger than {MAX_BODY_BYTES} bytes"
                )));
            }
            bytes.extend_from_slice(&chunk);
        }
        // serde_json's syntax errors carry a position, never the input; still only the position
        // is kept, so no part of the body can reach the message.
        let body: Value = serde_json::from_slice(&bytes).map_err(|e| {
            bad_response(format!(
                "the response from {what} is not valid JSON (line {}, column {})",
                e.line(),
                e.column()
            ))
        })?;
        self.mapping.extract(&body, received, what)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::path::Path;
    use std::sync::Mutex;

    use axum::Router;
    use axum::body::{Body, to_bytes};
    use axum::extract::Request;
    use axum::http::{Response, StatusCode};
    use chrono::TimeZone;
    use serde_json::json;

    use super::*;

    /// The password an endpoint hands out; must never appear in an error or Debug output.
    const CANARY_PASSWORD: &str = "canary-pw-5e1d9";
    /// The bearer token sent to the endpoint; same rule.
    const CANARY_TOKEN: &str = "canary-tok-7b2c4";

    fn parse(yaml: &str) -> HttpConfig {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    fn problems_of(config: &HttpConfig) -> Vec<String> {
        let mut p = FieldProblems::new(Path::new("r.yaml"));
        p.scoped("provider", |p| config.validate(p));
        p.into_vec()
            .into_iter()
            .map(|p| format!("{}: {}", p.field, p.message))
            .collect()
    }

    fn mapping(yaml: &str) -> ResponseMapping {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(secs, 0).unwrap()
    }

    fn assert_no_canary(text: &str) {
        assert!(!text.contains(CANARY_PASSWORD), "password leaked: {text}");
        assert!(!text.contains(CANARY_TOKEN), "token leaked: {text}");
    }

    /// A JWT with the given payload; the signature is junk, as it is never checked.
    fn jwt(payload: &Value) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.encode(payload.to_string());
        format!("{header}.{payload}.c2lnbmF0dXJl")
    }

    // ---- parsing and validation ----

    #[test]
    fn a_full_config_parses_with_every_field() {
        let c = parse(
            r#"
url: https://harbor.example.com/api/v2.0/robots?x=1
method: post
headers: {X-Request-Id: pullkeeper}
body: '{"duration": 1}'
timeout: 30s
caFile: /etc/pullkeeper/ca.pem
auth:
  basic:
    username: {value: admin}
    password: {file: /run/secrets/harbor/password}
response:
  username: /name
  password: /secret
  registry: {value: harbor.example.com}
  expiresAt: /expires_at
  expiresIn: /expires_in
  jwtExp: /secret
"#,
        );
        assert_eq!(c.method, "post");
        assert_eq!(c.headers["X-Request-Id"], "pullkeeper");
        assert!(matches!(c.auth, EndpointAuth::Basic(_)));
        assert_eq!(c.response.username, Some(Mapped::Pointer("/name".into())));
        assert_eq!(
            c.response.registry,
            Some(Mapped::Literal(json!("harbor.example.com")))
        );
        assert!(c.provides_servers());
        assert!(problems_of(&c).is_empty(), "{:?}", problems_of(&c));
    }

    #[test]
    fn auth_defaults_to_none_and_accepts_none_basic_and_bearer() {
        let minimal = "url: http://broker.local/token\nresponse: {auth: /auth}\n";
        let c = parse(minimal);
        assert_eq!(c.auth, EndpointAuth::None);
        assert_eq!(c.method, "GET");
        assert!(!c.provides_servers());
        assert!(problems_of(&c).is_empty());
        let c = parse(&format!("{minimal}auth: none\n"));
        assert_eq!(c.auth, EndpointAuth::None);
        let c = parse(&format!(
            "{minimal}auth: {{bearer: {{file: /var/run/token}}}}\n"
        ));
        assert_eq!(
            c.auth,
            EndpointAuth::Bearer(TextSource {
                file: Some("/var/run/token".into()),
                ..TextSource::default()
            })
        );
    }

    #[test]
    fn unknown_fields_are_rejected_at_every_level() {
        let base = "url: http://h/t\nresponse: {auth: /a}\n";
        for (yaml, field) in [
            (
                format!("{base}insecureSkipTlsVerify: true\n"),
                "insecureSkipTlsVerify",
            ),
            (
                "url: http://h/t\nresponse: {auth: /a, token: /t}\n".to_string(),
                "token",
            ),
            (
                "url: http://h/t\nresponse: {username: {value: u, file: /x}, password: /p}\n"
                    .to_string(),
                "file",
            ),
            (format!("{base}auth: {{digest: {{}}}}\n"), "digest"),
        ] {
            let err = serde_yaml_ng::from_str::<HttpConfig>(&yaml).unwrap_err();
            assert!(err.to_string().contains(field), "{yaml}: {err}");
        }
    }

    #[test]
    fn auth_must_be_none_or_exactly_one_of_basic_and_bearer() {
        let base = "url: http://h/t\nresponse: {auth: /a}\n";
        for (auth, expected) in [
            ("basic", "unknown variant `basic`"),
            ("{}", "set exactly one of `basic` or `bearer`"),
            (
                "{bearer: {file: /t}, basic: {username: {value: u}, password: {file: /p}}}",
                "set exactly one of `basic` or `bearer`",
            ),
        ] {
            let yaml = format!("{base}auth: {auth}\n");
            let err = serde_yaml_ng::from_str::<HttpConfig>(&yaml).unwrap_err();
            assert!(err.to_string().contains(expected), "{auth}: {err}");
        }
    }

    #[test]
    fn validate_reports_every_problem_with_its_field() {
        let c = parse(
            r#"
url: ftp://user:pw@h/t
method: DELETE
headers: {Authorization: Bearer x, "bad header": v}
timeout: soon
auth: {bearer: {value: literal-token}}
response:
  username: name
  password: {value: literal-password}
  auth: /auth
  expiresAt: {value: "2030-01-01T00:00:00Z"}
  expiresIn: {value: -5}
  jwtExp: /a~2b
"#,
        );
        let problems = problems_of(&c);
        let fields: Vec<&str> = problems
            .iter()
            .map(|p| p.split(": ").next().unwrap())
            .collect();
        assert_eq!(
            fields,
            [
                "provider.url",
                "provider.url",
                "provider.method",
                "provider.headers.Authorization",
                "provider.headers.bad header",
                "provider.timeout",
                "provider.auth.bearer.value",
                "provider.response.username",
                "provider.response.password.value",
                "provider.response.expiresAt.value",
                "provider.response.expiresIn.value",
                "provider.response.jwtExp",
                "provider.response.auth",
            ],
            "{problems:#?}"
        );
        let all = problems.join("\n");
        for secret in ["literal-token", "literal-password", "pw@"] {
            assert!(!all.contains(secret), "{all}");
        }
    }

    #[test]
    fn a_mapping_needs_username_and_password_or_auth() {
        let url = "url: https://h/t\n";
        let p = problems_of(&parse(&format!("{url}response: {{}}\n")));
        assert_eq!(
            p,
            ["provider.response: map `username` and `password`, or `auth`"]
        );
        let p = problems_of(&parse(&format!("{url}response: {{username: /u}}\n")));
        assert_eq!(p, ["provider.response.password: map `password` too"]);
        let p = problems_of(&parse(&format!("{url}response: {{password: /p}}\n")));
        assert_eq!(p, ["provider.response.username: map `username` too"]);
        let p = problems_of(&parse(&format!(
            "{url}response: {{password: /p, auth: /a}}\n"
        )));
        assert_eq!(p.len(), 1);
        assert!(
            p[0].starts_with("provider.response.auth: map either"),
            "{p:?}"
        );
    }

    #[test]
    fn basic_auth_rejects_a_literal_password_but_not_a_literal_username() {
        let c = parse(
            "url: https://h/t\nresponse: {auth: /a}\nauth: {basic: {username: {value: ci}, \
             password: {value: nope}}}\n",
        );
        assert_eq!(
            problems_of(&c),
            [
                "provider.auth.basic.password.value: secrets are not accepted in clear in config \
              files; use `file` or `env`"
            ]
        );
    }

    #[test]
    fn request_descriptions_drop_query_fragment_and_userinfo() {
        let url = Url::parse("https://u:p@vault.local:8200/v1/kv/data/ci?token=abc#frag").unwrap();
        assert_eq!(
            describe_request(&reqwest::Method::GET, &url),
            "GET https://vault.local:8200/v1/kv/data/ci"
        );
    }

    // ---- mapping and expiry (pure) ----

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
    fn a_credential_that_already_expired_is_a_bad_response() {
        let m = mapping("{auth: /a, expiresAt: /at}");
        let body = json!({"a": STANDARD.encode("u:p"), "at": 999});
        let err = m.extract(&body, at(1000), "w").unwrap_err();
        assert_eq!(err.category, ErrorCategory::BadResponse);
        assert!(err.message.contains("already expired"), "{err}");
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h, at(0)), None);
        h.insert(RETRY_AFTER, HeaderValue::from_static("120"));
        assert_eq!(retry_after(&h, at(0)), Some(Duration::from_secs(120)));
        // 1_000_000_000 s is Sun, 09 Sep 2001 01:46:40 GMT.
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Sun, 09 Sep 2001 01:47:10 GMT"),
        );
        assert_eq!(
            retry_after(&h, at(1_000_000_000)),
            Some(Duration::from_secs(30))
        );
        h.insert(RETRY_AFTER, HeaderValue::from_static("later"));
        assert_eq!(retry_after(&h, at(0)), None);
    }

    #[test]
    fn debug_output_hides_literals_query_and_body() {
        let c = parse(&format!(
            "url: http://h/t?sig={CANARY_TOKEN}\nbody: '{CANARY_TOKEN}'\n\
             headers: {{X-Vault-Token: {CANARY_TOKEN}}}\n\
             response: {{username: {{value: {CANARY_PASSWORD}}}, password: /p}}\n"
        ));
        let config = format!("{c:?}");
        assert!(config.contains("http://h/t"), "{config}");
        assert_no_canary(&config);
        let provider = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(c.build())
            .unwrap();
        let shown = format!("{provider:?}");
        assert_eq!(shown, "HttpProvider { request: \"GET http://h/t\", .. }");
    }

    // ---- against a local HTTP server ----

    /// What the stub server saw of one request.
    #[derive(Clone, Debug)]
    struct Seen {
        method: String,
        authorization: Option<String>,
        content_type: Option<String>,
        custom: Option<String>,
        body: String,
    }

    /// A stub endpoint on 127.0.0.1 answering every request with `status`, `headers` and
    /// `body`, after `delay`. Returns its base URL and the requests it saw.
    async fn stub(
        status: u16,
        headers: &[(&'static str, &'static str)],
        body: String,
        delay: Duration,
    ) -> (String, Arc<Mutex<Vec<Seen>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let headers = headers.to_vec();
        let router = Router::new().fallback(move |req: Request| {
            let (log, headers, body) = (log.clone(), headers.clone(), body.clone());
            async move {
                // A block, so no borrow of the (non-Sync) request lives across an await.
                let mut entry = {
                    let header = |name: &str| {
                        req.headers()
                            .get(name)
                            .map(|v| v.to_str().unwrap().to_string())
                    };
                    Seen {
                        method: req.method().to_string(),
                        authorization: header("authorization"),
                        content_type: header("content-type"),
                        custom: header("x-custom"),
                        body: String::new(),
                    }
                };
                let bytes = to_bytes(req.into_body(), 1 << 20).await.unwrap();
                entry.body = String::from_utf8(bytes.to_vec()).unwrap();
                log.lock().unwrap().push(entry);
                tokio::time::sleep(delay).await;
                let mut response =
                    Response::builder().status(StatusCode::from_u16(status).unwrap());
                for (name, value) in headers {
                    response = response.header(name, value);
                }
                response.body(Body::from(body)).unwrap()
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        (format!("http://{addr}"), seen)
    }

    async fn json_stub(status: u16, body: Value) -> (String, Arc<Mutex<Vec<Seen>>>) {
        stub(status, &[], body.to_string(), Duration::ZERO).await
    }

    /// Parses, validates (must be clean) and builds a provider.
    async fn provider(yaml: &str) -> Arc<dyn Provider> {
        let config = parse(yaml);
        assert_eq!(problems_of(&config), Vec::<String>::new());
        config.build().await.unwrap()
    }

    async fn fetch_err(yaml: &str) -> ProviderError {
        let err = provider(yaml).await.fetch().await.unwrap_err();
        assert_no_canary(&format!("{err} {err:?}"));
        err
    }

    #[tokio::test]
    async fn a_post_with_headers_and_body_maps_username_and_password() {
        let (base, seen) = json_stub(
            200,
            json!({"robot": {"name": "robot$ci", "secret": CANARY_PASSWORD},
                   "registry": "https://harbor.local/"}),
        )
        .await;
        let p = provider(&format!(
            "url: {base}/api/robots?project=ci\nmethod: POST\nheaders: {{X-Custom: yes-1}}\n\
             body: '{{\"duration\": 30}}'\n\
             response: {{username: /robot/name, password: /robot/secret, registry: /registry}}\n"
        ))
        .await;
        let c = p.fetch().await.unwrap();
        assert_eq!(c.logins.len(), 1);
        assert_eq!(c.logins[0].username, "robot$ci");
        assert_eq!(c.logins[0].password.expose(), CANARY_PASSWORD);
        assert_eq!(c.logins[0].server.as_deref(), Some("harbor.local"));
        assert_eq!(c.expires_at, None);
        let seen = seen.lock().unwrap()[0].clone();
        assert_eq!(seen.method, "POST");
        assert_eq!(seen.custom.as_deref(), Some("yes-1"));
        assert_eq!(seen.content_type.as_deref(), Some("application/json"));
        assert_eq!(seen.body, r#"{"duration": 30}"#);
        assert_eq!(seen.authorization, None);
    }

    #[tokio::test]
    async fn an_auth_field_and_each_expiry_kind_come_from_the_response() {
        let token = jwt(&json!({"exp": 1_893_456_000}));
        let (base, _) = json_stub(
            200,
            json!({"auth": STANDARD.encode(format!("svc:{CANARY_PASSWORD}")),
                   "expires_at": "2031-01-01T00:00:00Z", "expires_in": "600", "jwt": token}),
        )
        .await;
        let fetch = |expiry: &'static str| {
            let base = base.clone();
            async move {
                provider(&format!(
                    "url: {base}/t\nresponse: {{auth: /auth, {expiry}}}\n"
                ))
                .await
                .fetch()
                .await
                .unwrap()
            }
        };
        let c = fetch("expiresAt: /expires_at").await;
        assert_eq!(c.logins[0].username, "svc");
        assert_eq!(c.logins[0].password.expose(), CANARY_PASSWORD);
        assert_eq!(c.expires_at, Some(at(1_924_992_000)));

        let before = Utc::now();
        let c = fetch("expiresIn: /expires_in").await;
        let after = Utc::now();
        let expires = c.expires_at.unwrap();
        assert!(expires >= before + TimeDelta::seconds(600), "{expires}");
        assert!(expires <= after + TimeDelta::seconds(600), "{expires}");

        let c = fetch("jwtExp: /jwt").await;
        assert_eq!(c.expires_at, Some(at(1_893_456_000)));
    }

    #[tokio::test]
    async fn a_bearer_token_file_is_read_again_on_every_call() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, format!("{CANARY_TOKEN}-1\n")).unwrap();
        let (base, seen) = json_stub(200, json!({"u": "u", "p": "p"})).await;
        let p = provider(&format!(
            "url: {base}/t\nauth: {{bearer: {{file: {}}}}}\nresponse: {{username: /u, password: /p}}\n",
            token.display()
        ))
        .await;
        p.fetch().await.unwrap();
        std::fs::write(&token, format!("{CANARY_TOKEN}-2")).unwrap();
        p.fetch().await.unwrap();
        let sent: Vec<_> = seen
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.authorization.clone())
            .collect();
        assert_eq!(
            sent,
            [
                Some(format!("Bearer {CANARY_TOKEN}-1")),
                Some(format!("Bearer {CANARY_TOKEN}-2"))
            ]
        );
    }

    #[tokio::test]
    async fn a_missing_bearer_token_file_is_a_local_input_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("absent-token");
        let (base, seen) = json_stub(200, json!({"a": "dTpw"})).await;
        let err = fetch_err(&format!(
            "url: {base}/t\nauth: {{bearer: {{file: {}}}}}\nresponse: {{auth: /a}}\n",
            token.display()
        ))
        .await;
        assert_eq!(err.category, ErrorCategory::LocalInput);
        assert!(err.message.contains("bearer token"), "{err}");
        assert!(err.message.contains(&token.display().to_string()), "{err}");
        assert!(
            seen.lock().unwrap().is_empty(),
            "no request without the token"
        );
    }

    #[tokio::test]
    async fn an_empty_bearer_token_file_is_a_local_input_error_and_nothing_is_sent() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "\n").unwrap();
        let (base, seen) = json_stub(200, json!({"a": "dTpw"})).await;
        let err = fetch_err(&format!(
            "url: {base}/t?k=v\nauth: {{bearer: {{file: {}}}}}\nresponse: {{auth: /a}}\n",
            token.display()
        ))
        .await;
        assert_eq!(err.category, ErrorCategory::LocalInput);
        assert_eq!(
            err.message,
            format!("the bearer token for GET {base}/t is empty")
        );
        assert!(
            seen.lock().unwrap().is_empty(),
            "no request with an empty token"
        );
    }

    #[tokio::test]
    async fn basic_auth_sends_both_parts_from_their_sources() {
        let dir = tempfile::tempdir().unwrap();
        let pass = dir.path().join("password");
        std::fs::write(&pass, CANARY_TOKEN).unwrap();
        let (base, seen) = json_stub(200, json!({"u": "u", "p": "p"})).await;
        let p = provider(&format!(
            "url: {base}/t\nauth: {{basic: {{username: {{value: ci-bot}}, password: {{file: {}}}}}}}\n\
             response: {{username: /u, password: /p}}\n",
            pass.display()
        ))
        .await;
        p.fetch().await.unwrap();
        let expected = format!(
            "Basic {}",
            STANDARD.encode(format!("ci-bot:{CANARY_TOKEN}"))
        );
        assert_eq!(seen.lock().unwrap()[0].authorization, Some(expected));
    }

    /// A config whose endpoint authenticates with the canary bearer token.
    async fn with_token(base: &str, mapping: &str) -> (String, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, CANARY_TOKEN).unwrap();
        let yaml = format!(
            "url: {base}/v1/creds?sig={CANARY_TOKEN}\nauth: {{bearer: {{file: {}}}}}\nresponse: {mapping}\n",
            token.display()
        );
        (yaml, dir)
    }

    #[tokio::test]
    async fn a_server_error_is_a_bad_response_naming_the_url_without_its_query() {
        let body = json!({"error": "boom", "password": CANARY_PASSWORD}).to_string();
        let (base, _) = stub(500, &[], body, Duration::ZERO).await;
        let (yaml, _dir) = with_token(&base, "{username: /u, password: /p}").await;
        let err = fetch_err(&yaml).await;
        assert_eq!(err.category, ErrorCategory::BadResponse);
        assert_eq!(
            err.message,
            format!("GET {base}/v1/creds answered HTTP 500")
        );
    }

    #[tokio::test]
    async fn malformed_json_is_a_bad_response_without_the_body() {
        let body = format!("{{\"password\": \"{CANARY_PASSWORD}\", oops");
        let (base, _) = stub(200, &[], body, Duration::ZERO).await;
        let (yaml, _dir) = with_token(&base, "{username: /u, password: /password}").await;
        let err = fetch_err(&yaml).await;
        assert_eq!(err.category, ErrorCategory::BadResponse);
        assert!(
            err.message.starts_with(&format!(
                "the response from GET {base}/v1/creds is not valid JSON"
            )),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_response_without_the_mapped_field_is_a_bad_response_naming_the_pointer() {
        let (base, _) = json_stub(200, json!({"data": {"token": CANARY_PASSWORD}})).await;
        let (yaml, _dir) = with_token(&base, "{username: /data/user, password: /data/token}").await;
        let err = fetch_err(&yaml).await;
        assert_eq!(err.category, ErrorCategory::BadResponse);
        assert_eq!(
            err.message,
            format!("the response from GET {base}/v1/creds has no `username` at /data/user")
        );
    }

    #[tokio::test]
    async fn unauthorized_and_forbidden_are_auth_denied() {
        for status in [401, 403] {
            let body = format!("invalid token {CANARY_TOKEN}");
            let (base, _) = stub(status, &[], body, Duration::ZERO).await;
            let (yaml, _dir) = with_token(&base, "{auth: /a}").await;
            let err = fetch_err(&yaml).await;
            assert_eq!(err.category, ErrorCategory::AuthDenied, "{status}");
            assert_eq!(err.retry_after, None);
        }
    }

    #[tokio::test]
    async fn too_many_requests_is_throttled_with_the_retry_after_delay() {
        let (base, _) = stub(
            429,
            &[("retry-after", "17")],
            "slow down".into(),
            Duration::ZERO,
        )
        .await;
        let (yaml, _dir) = with_token(&base, "{auth: /a}").await;
        let err = fetch_err(&yaml).await;
        assert_eq!(err.category, ErrorCategory::Throttled);
        assert_eq!(err.retry_after, Some(Duration::from_secs(17)));
    }

    #[tokio::test]
    async fn a_closed_port_is_unreachable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let (yaml, _dir) = with_token(&format!("http://{addr}"), "{auth: /a}").await;
        let err = fetch_err(&yaml).await;
        assert_eq!(err.category, ErrorCategory::Unreachable);
        assert!(
            err.message
                .starts_with(&format!("GET http://{addr}/v1/creds: ")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_slow_endpoint_times_out_as_unreachable() {
        let (base, _) = stub(200, &[], "{}".into(), Duration::from_secs(5)).await;
        let (yaml, _dir) = with_token(&base, "{auth: /a}").await;
        let err = fetch_err(&format!("{yaml}timeout: 200ms\n")).await;
        assert_eq!(err.category, ErrorCategory::Unreachable);
        assert!(err.message.contains("timed out"), "{err}");
    }

    #[tokio::test]
    async fn an_oversized_response_is_refused() {
        let body = format!("{{\"p\": \"{}\"}}", "x".repeat(MAX_BODY_BYTES));
        let (base, _) = stub(200, &[], body, Duration::ZERO).await;
        let (yaml, _dir) = with_token(&base, "{username: {value: u}, password: /p}").await;
        let err = fetch_err(&yaml).await;
        assert_eq!(err.category, ErrorCategory::BadResponse);
        assert!(err.message.contains("larger than"), "{err}");
    }

    /// An HTTPS endpoint: `openssl s_server -WWW` serving files from a temp dir with a
    /// certificate for 127.0.0.1 signed by a fresh CA. The `openssl` command is required (as by
    /// `tests/peers/up`); without it the test fails rather than skips.
    struct TlsStub {
        child: std::process::Child,
        base: String,
        ca: std::path::PathBuf,
        _dir: tempfile::TempDir,
    }

    impl Drop for TlsStub {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn openssl(dir: &Path, args: &[&str]) {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("this test needs the `openssl` command");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    async fn tls_stub(files: &[(&str, &str)]) -> TlsStub {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca = vec![
            "req",
            "-x509",
            "-days",
            "2",
            "-subj",
            "/CN=pullkeeper test CA",
        ];
        ca.extend(ec);
        ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
        ca.extend(["-addext", "basicConstraints=critical,CA:TRUE"]);
        ca.extend(["-addext", "keyUsage=critical,keyCertSign"]);
        openssl(d, &ca);
        let mut csr = vec!["req", "-subj", "/CN=127.0.0.1"];
        csr.extend(ec);
        csr.extend(["-keyout", "server.key", "-out", "server.csr"]);
        openssl(d, &csr);
        std::fs::write(
            d.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
        )
        .unwrap();
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "ext.cnf",
                "-out",
                "server.pem",
            ],
        );
        for (name, content) in files {
            std::fs::write(d.join(name), content).unwrap();
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let accept = format!("127.0.0.1:{port}");
        let child = std::process::Command::new("openssl")
            .args(["s_server", "-quiet", "-WWW", "-accept", &accept])
            .args(["-cert", "server.pem", "-key", "server.key"])
            .current_dir(d)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("this test needs the `openssl` command");
        let stub = TlsStub {
            child,
            base: format!("https://{accept}"),
            ca: d.join("ca.pem"),
            _dir: dir,
        };
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(&accept).await.is_ok() {
                return stub;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("openssl s_server did not listen on {accept}");
    }

    #[tokio::test]
    async fn an_https_endpoint_is_trusted_through_ca_file_and_only_then() {
        let body = json!({"user": "robot", "pass": CANARY_PASSWORD}).to_string();
        let stub = tls_stub(&[("cred.json", &body)]).await;
        let yaml = format!(
            "url: {}/cred.json\nresponse: {{username: /user, password: /pass}}\n",
            stub.base
        );

        let err = fetch_err(&yaml).await;
        assert_eq!(err.category, ErrorCategory::Unreachable);
        assert!(err.message.to_lowercase().contains("certificate"), "{err}");

        let trusted = provider(&format!("{yaml}caFile: {}\n", stub.ca.display())).await;
        let c = trusted.fetch().await.unwrap();
        assert_eq!(c.logins[0].username, "robot");
        assert_eq!(c.logins[0].password.expose(), CANARY_PASSWORD);
    }

    #[tokio::test]
    async fn a_missing_or_empty_ca_file_fails_the_build_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        for path in [dir.path().join("absent.pem"), empty] {
            let config = parse(&format!(
                "url: https://h/t\ncaFile: {}\nresponse: {{auth: /a}}\n",
                path.display()
            ));
            let err = config.build().await.unwrap_err();
            assert_eq!(err.category, ErrorCategory::LocalInput);
            assert!(err.message.contains(&path.display().to_string()), "{err}");
        }
    }
}
