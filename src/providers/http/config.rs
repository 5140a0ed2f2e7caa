//! `provider: {type: http, …}` as written in a registry file, parsed once. The URL, method,
//! headers and timeout become typed values when the file is read; a value that does not parse
//! is kept as its problem, so [`HttpConfig::validate`] reports it with every other one and
//! building never parses again.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use std::time::Duration;

use reqwest::Method;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue, PROXY_AUTHORIZATION};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use url::Url;

use super::mapping::ResponseMapping;
use crate::problems::FieldProblems;
use crate::providers::TextSource;
use crate::providers::web::{describe_url, is_http_url};

/// Used when `timeout` is not set.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings of `provider: {type: http, …}`.
#[derive(Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpConfig {
    /// The endpoint, `http://` or `https://`.
    #[serde(deserialize_with = "url")]
    #[schemars(with = "String")]
    pub url: Parsed<Url>,
    /// `GET` (default), `POST`, `PUT` or `PATCH` (Harbor's robot secret refresh), any letter case.
    #[serde(default = "default_method", deserialize_with = "method")]
    #[schemars(with = "String")]
    pub method: Parsed<Method>,
    /// Extra request headers with literal values (credentials go under `auth`).
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, String>")]
    pub headers: Headers,
    /// Request body, sent as is (`Content-Type: application/json` unless a header says otherwise).
    pub body: Option<String>,
    /// Whole-request timeout as a duration (`"10s"`, `"1m"`); 10 s when unset.
    #[serde(default = "default_timeout", deserialize_with = "timeout")]
    #[schemars(with = "String")]
    pub timeout: Parsed<Duration>,
    /// PEM file with extra root certificates trusted for an `https` endpoint.
    pub ca_file: Option<PathBuf>,
    /// How pullkeeper authenticates to the endpoint.
    #[serde(default)]
    pub auth: EndpointAuth,
    /// Where the credential is found in the JSON response.
    // Boxed: it is most of the size.
    pub response: Box<ResponseMapping>,
    /// Credential-provider route: the name of a query parameter that carries the pulled image's
    /// repository (`host/path`, no tag or digest) to the endpoint, for a broker that answers per
    /// repository. The answer then opens that repository only, and the kubelet caches it per
    /// image (`cacheKeyType: Image`). The Secret route asks without it.
    pub image_query: Option<String>,
}

/// A setting parsed once, when the file is read: its typed value, or the problem to report.
#[derive(Clone, PartialEq)]
pub struct Parsed<T>(Result<T, String>);

impl<T> Parsed<T> {
    /// The value, when it parsed.
    pub fn value(&self) -> Option<&T> {
        self.0.as_ref().ok()
    }

    fn problem(&self) -> Option<&str> {
        self.0.as_ref().err().map(String::as_str)
    }
}

impl<T: fmt::Debug> fmt::Debug for Parsed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Ok(value) => value.fmt(f),
            // The text itself is not repeated: it may be a URL with a token in its query.
            Err(_) => f.write_str("(invalid)"),
        }
    }
}

/// Reads a string and keeps what `parse` makes of it; only a value that is not a string at all
/// fails the file.
fn parse_with<'de, D: Deserializer<'de>, T>(
    deserializer: D,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<Parsed<T>, D::Error> {
    let text = String::deserialize(deserializer)?;
    Ok(Parsed(parse(&text)))
}

fn url<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Parsed<Url>, D::Error> {
    // The URL itself is not echoed: its query may hold a token.
    parse_with(deserializer, |text| {
        Url::parse(text).map_err(|e| format!("not a valid URL: {e}"))
    })
}

fn method<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Parsed<Method>, D::Error> {
    parse_with(deserializer, |text| {
        match text.to_ascii_uppercase().as_str() {
            "GET" => Ok(Method::GET),
            "POST" => Ok(Method::POST),
            "PUT" => Ok(Method::PUT),
            "PATCH" => Ok(Method::PATCH),
            _ => Err("use GET, POST, PUT or PATCH".to_string()),
        }
    })
}

fn default_method() -> Parsed<Method> {
    Parsed(Ok(Method::GET))
}

fn timeout<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Parsed<Duration>, D::Error> {
    parse_with(deserializer, |text| match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() => Err("must be longer than zero".to_string()),
        Ok(d) => Ok(d),
        Err(e) => Err(format!("not a duration like \"10s\" or \"1m\": {e}")),
    })
}

fn default_timeout() -> Parsed<Duration> {
    Parsed(Ok(DEFAULT_TIMEOUT))
}

/// `headers:`, checked when the file is read: the valid ones as they will be sent, and a
/// problem for each name or value that is invalid or that would carry a credential.
#[derive(Clone, Default)]
pub struct Headers {
    /// Boxed: a header map is large, and this config sits in the `ProviderSpec` enum.
    valid: Box<HeaderMap>,
    /// `(name as written, problem)`.
    problems: Vec<(String, &'static str)>,
}

impl Headers {
    /// The headers to send, besides `Accept`, `Content-Type` and the endpoint's credential.
    pub fn valid(&self) -> &HeaderMap {
        &self.valid
    }

    /// The value of a valid header, when it is text.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.valid.get(name).and_then(|v| v.to_str().ok())
    }
}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Names only: the values are literals that should hold no secret, but may.
        f.debug_list().entries(self.valid.keys()).finish()
    }
}

impl<'de> Deserialize<'de> for Headers {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let written = BTreeMap::<String, String>::deserialize(deserializer)?;
        let mut headers = Headers::default();
        for (name, value) in written {
            let parsed_name = match HeaderName::from_bytes(name.as_bytes()) {
                Err(_) => Err("not a valid HTTP header name"),
                Ok(h) if h == AUTHORIZATION || h == PROXY_AUTHORIZATION => {
                    Err("credentials are not accepted in clear in config files; use `auth`")
                }
                Ok(h) => Ok(h),
            };
            let parsed_value =
                HeaderValue::from_str(&value).map_err(|_| "not a valid HTTP header value");
            match (parsed_name, parsed_value) {
                (Ok(name), Ok(value)) => {
                    headers.valid.insert(name, value);
                }
                (name_problem, value_problem) => {
                    for problem in [name_problem.err(), value_problem.err()]
                        .into_iter()
                        .flatten()
                    {
                        headers.problems.push((name.clone(), problem));
                    }
                }
            }
        }
        Ok(headers)
    }
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
    /// `Authorization: Bearer` with the pulling Pod's ServiceAccount token, which the kubelet
    /// hands the credential provider (KEP-4412, `tokenAttributes`): per-workload identity at the
    /// broker. Credential-provider route only (`auth: podServiceAccountToken`).
    PodServiceAccountToken,
}

// By hand because YAML deserializers write enums as tags (`!basic`); the file format is the
// plain `none` / `{basic: …}` / `{bearer: …}`.
impl<'de> Deserialize<'de> for EndpointAuth {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AuthVisitor;

        impl<'de> Visitor<'de> for AuthVisitor {
            type Value = EndpointAuth;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`none`, `podServiceAccountToken`, {basic: {username: …, password: …}} or {bearer: {file: …}}")
            }

            fn visit_str<E: de::Error>(self, s: &str) -> Result<EndpointAuth, E> {
                match s {
                    "none" => Ok(EndpointAuth::None),
                    "podServiceAccountToken" => Ok(EndpointAuth::PodServiceAccountToken),
                    other => Err(E::unknown_variant(
                        other,
                        &["none", "podServiceAccountToken", "basic", "bearer"],
                    )),
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

/// The map form of `auth`: exactly one of the two.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct AuthMap {
    /// HTTP basic authentication; both parts read on every call.
    basic: Option<BasicAuth>,
    /// `Authorization: Bearer …`, the token read on every call: `file` or `env`.
    bearer: Option<TextSource>,
}

// The file format is `none` or the map above (see the `Deserialize` impl).
impl JsonSchema for EndpointAuth {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "EndpointAuth".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let map = generator.subschema_for::<AuthMap>();
        json_schema!({
            "description": "How pullkeeper authenticates to the endpoint: `none` (the default), \
                `podServiceAccountToken` (the pulling Pod's token, credential-provider route only), \
                {basic: {username, password}} or {bearer: {file|env}}.",
            "anyOf": [{"const": "none"}, {"const": "podServiceAccountToken"}, map]
        })
    }
}

/// `auth: {basic: {username: …, password: …}}`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BasicAuth {
    /// `file`, `env` or `value`.
    pub username: TextSource,
    /// `file` or `env` only.
    pub password: TextSource,
}

impl fmt::Debug for HttpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Header values, the body and the URL's query are literals that should hold no secret,
        // but a config Debug may reach a log: show their shape only.
        let url = self
            .url
            .value()
            .map_or_else(|| "(invalid)".to_string(), describe_url);
        f.debug_struct("HttpConfig")
            .field("url", &url)
            .field("method", &self.method)
            .field("headers", &self.headers)
            .field(
                "body",
                &self.body.as_ref().map(|b| format!("({} bytes)", b.len())),
            )
            .field("timeout", &self.timeout)
            .field("ca_file", &self.ca_file)
            .field("auth", &self.auth)
            .field("response", &self.response)
            .field("image_query", &self.image_query)
            .finish()
    }
}

impl HttpConfig {
    /// Whether the response mapping names the registry host, so `servers` may be omitted.
    pub fn provides_servers(&self) -> bool {
        self.response.registry.is_some()
    }

    /// Reports every problem, those found while parsing included (fields relative to
    /// `provider`).
    pub fn validate(&self, problems: &mut FieldProblems) {
        match &self.url.0 {
            Err(msg) => problems.push("url", msg),
            Ok(url) => {
                if !is_http_url(url) {
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
        if let Some(msg) = self.method.problem() {
            problems.push("method", msg);
        }
        for (name, msg) in &self.headers.problems {
            problems.push(format!("headers.{name}"), *msg);
        }
        if let Some(msg) = self.timeout.problem() {
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
            EndpointAuth::None | EndpointAuth::PodServiceAccountToken => {}
            EndpointAuth::Basic(basic) => p.scoped("basic", |p| {
                basic.username.validate(p, "username", false);
                basic.password.validate(p, "password", true);
            }),
            EndpointAuth::Bearer(token) => token.validate(p, "bearer", true),
        });
        problems.scoped("response", |p| self.response.validate(p));
        if let Some(name) = &self.image_query {
            let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
            if name.is_empty() || !name.chars().all(plain) {
                problems.push(
                    "imageQuery",
                    "must be a query parameter name (letters, digits, '-', '_' or '.')",
                );
            } else if self
                .url
                .value()
                .is_some_and(|u| u.query_pairs().any(|(k, _)| k == name.as_str()))
            {
                problems.push(
                    "imageQuery",
                    format!("the url already has a `{name}` parameter"),
                );
            }
        }
    }

    /// Whether each answer is for one repository (`imageQuery`), so the kubelet must cache it
    /// per image.
    pub fn per_repository(&self) -> bool {
        self.image_query.is_some()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::mapping::Mapped;
    use super::*;
    use crate::providers::http::testing::{parse, problems_of};

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
        assert_eq!(c.method.value(), Some(&Method::POST));
        assert_eq!(c.headers.get("X-Request-Id"), Some("pullkeeper"));
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
    fn image_query_must_be_a_plain_parameter_name_not_already_in_the_url() {
        let with = |query: &str| {
            parse(&format!(
                "url: http://broker.local/token?repo=x\nimageQuery: {query}\nresponse: {{auth: /auth}}\n"
            ))
        };
        assert!(problems_of(&with("image")).is_empty());
        assert!(with("image").per_repository());
        assert_eq!(
            problems_of(&with("\"a b\"")),
            vec![
                "provider.imageQuery: must be a query parameter name (letters, digits, '-', '_' or '.')"
            ]
        );
        assert_eq!(
            problems_of(&with("repo")),
            vec!["provider.imageQuery: the url already has a `repo` parameter"]
        );
    }

    #[test]
    fn auth_defaults_to_none_and_accepts_none_basic_and_bearer() {
        let minimal = "url: http://broker.local/token\nresponse: {auth: /auth}\n";
        let c = parse(minimal);
        assert_eq!(c.auth, EndpointAuth::None);
        assert_eq!(c.method.value(), Some(&Method::GET));
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
}
