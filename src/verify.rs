//! Proving a freshly fetched credential against the registry before it is written: the
//! registry API's `/v2/` handshake (open, Basic, or Bearer through the registry's token
//! service) and, when a repository is configured, a `HEAD` of one of its manifests to show the
//! credential may pull. A credential that fails is not written; the last good Secret stays.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::header::{ACCEPT, HeaderMap, WWW_AUTHENTICATE};
use reqwest::{Client, RequestBuilder, StatusCode};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::problems::FieldProblems;
use crate::providers::web::{self, Causes, ClientOptions, is_http_url};
use crate::sensitive::Sensitive;

/// Verification waits this long for each registry request unless `timeout` says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The tag checked when `repository` is set and `reference` is not.
pub const DEFAULT_REFERENCE: &str = "latest";

/// Manifest media types a pull accepts, newest first: an OCI or Docker index, then a single
/// OCI or Docker image manifest.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json";

/// `verify:` of a registry file: optional proof of a new credential against the registry.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VerifySpec {
    /// A repository the credential must be able to pull from (`team/app`); without it only the
    /// `/v2/` login is checked.
    pub repository: Option<String>,
    /// Tag or digest whose manifest is checked (default `latest`).
    pub reference: Option<String>,
    /// `https` (default) or `http` (a registry served without TLS).
    pub scheme: Option<String>,
    /// Per-request timeout, e.g. `10s` (default 10s).
    pub timeout: Option<String>,
    /// PEM bundle of extra CA certificates trusted for the registry and its token service.
    pub ca_file: Option<PathBuf>,
}

impl VerifySpec {
    /// Checks every field; problems are relative to `verify`.
    pub fn validate(&self, problems: &mut FieldProblems) {
        if let Some(repo) = &self.repository
            && !is_repository(repo)
        {
            problems.push(
                "repository",
                format!("`{repo}` is not a repository path (lowercase, e.g. `team/app`)"),
            );
        }
        if let Some(reference) = &self.reference {
            if self.repository.is_none() {
                problems.push("reference", "only used together with `repository`");
            }
            if !is_reference(reference) {
                problems.push(
                    "reference",
                    format!("`{reference}` is not a tag or a digest (`sha256:…`)"),
                );
            }
        }
        match self.scheme.as_deref() {
            None | Some("https") => {}
            Some("http") => {
                if self.ca_file.is_some() {
                    problems.push("caFile", "not used with `scheme: http`");
                }
            }
            Some(other) => problems.push("scheme", format!("`{other}` is not `https` or `http`")),
        }
        if let Some(t) = &self.timeout {
            match humantime::parse_duration(t) {
                Ok(d) if d > Duration::ZERO && d <= Duration::from_mins(5) => {}
                Ok(_) => problems.push("timeout", "must be more than 0s and at most 5m"),
                Err(e) => problems.push("timeout", format!("`{t}` is not a duration: {e}")),
            }
        }
        match &self.ca_file {
            Some(p) if !p.is_absolute() => problems.push("caFile", "must be an absolute path"),
            Some(p) => problems.require_file("caFile", p),
            None => {}
        }
    }

    /// The per-request timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
            .as_deref()
            .and_then(|t| humantime::parse_duration(t).ok())
            .unwrap_or(DEFAULT_TIMEOUT)
    }

    /// `https` or `http`.
    pub fn scheme(&self) -> &str {
        self.scheme.as_deref().unwrap_or("https")
    }

    /// The manifest reference checked when a repository is set.
    pub fn reference(&self) -> &str {
        self.reference.as_deref().unwrap_or(DEFAULT_REFERENCE)
    }
}

/// Why verification failed. Messages name the server and what it answered, never a credential.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The registry (or its token service) refused the credential, or it may not pull.
    #[error("{server} refused the credential: {reason}")]
    Rejected { server: String, reason: String },
    /// The registry or its token service could not be reached in time.
    #[error("cannot reach {server}: {reason}")]
    Unreachable { server: String, reason: String },
    /// The registry answered something the registry API does not allow.
    #[error("{server} answered unexpectedly: {reason}")]
    BadResponse { server: String, reason: String },
    /// A local input of the verification (the CA file) is unusable.
    #[error("cannot verify against {server}: {reason}")]
    LocalInput { server: String, reason: String },
}

impl VerifyError {
    /// Every value [`VerifyError::category`] can return.
    pub const CATEGORIES: [&'static str; 4] =
        ["rejected", "unreachable", "bad_response", "local_input"];

    /// A bounded label for metrics and event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Rejected { .. } => "rejected",
            Self::Unreachable { .. } => "unreachable",
            Self::BadResponse { .. } => "bad_response",
            Self::LocalInput { .. } => "local_input",
        }
    }
}

/// Proves `username`/`password` against the registry at `server` (`host[:port]`).
///
/// `GET /v2/` without credentials tells how the registry authenticates: 200 means it is open;
/// a `Basic` challenge is answered with the credential; a `Bearer` challenge sends the
/// credential to the token service named in `realm` (asking for pull on the configured
/// repository) and the token it returns to the registry. With a repository configured, its
/// manifest must then answer a `HEAD`.
pub async fn verify(
    spec: &VerifySpec,
    server: &str,
    username: &str,
    password: &Sensitive,
) -> Result<(), VerifyError> {
    let check = Check::new(spec, server, username, password).await?;
    check.run().await
}

/// How requests to the registry are authorised once the handshake succeeded.
enum Auth {
    None,
    Basic,
    Bearer(Sensitive),
}

struct Check<'a> {
    spec: &'a VerifySpec,
    server: &'a str,
    base: String,
    username: &'a str,
    password: &'a Sensitive,
    http: Client,
}

impl<'a> Check<'a> {
    async fn new(
        spec: &'a VerifySpec,
        server: &'a str,
        username: &'a str,
        password: &'a Sensitive,
    ) -> Result<Self, VerifyError> {
        let http = web::client(ClientOptions {
            ca_file: spec.ca_file.as_deref(),
            ..ClientOptions::with_timeout(spec.timeout())
        })
        .await
        .map_err(|e| VerifyError::LocalInput {
            server: server.to_string(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            spec,
            server,
            base: format!("{}://{server}", spec.scheme()),
            username,
            password,
            http,
        })
    }

    async fn run(&self) -> Result<(), VerifyError> {
        let v2 = format!("{}/v2/", self.base);
        let resp = self.send(self.http.get(&v2), "GET /v2/").await?;
        let auth = match resp.status() {
            StatusCode::OK => Auth::None,
            StatusCode::UNAUTHORIZED => {
                let auth = match challenge_of(resp.headers()) {
                    Some(Challenge::Basic) => Auth::Basic,
                    Some(Challenge::Bearer {
                        realm,
                        service,
                        scope,
                    }) => Auth::Bearer(self.token(&realm, service.as_deref(), scope).await?),
                    None => {
                        return Err(self.bad(
                            "GET /v2/ answered 401 without a Basic or Bearer challenge".into(),
                        ));
                    }
                };
                let resp = self
                    .send(self.authorise(self.http.get(&v2), &auth), "GET /v2/")
                    .await?;
                match resp.status() {
                    StatusCode::OK => {}
                    s @ (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => {
                        return Err(self.rejected(format!("GET /v2/ answered HTTP {}", s.as_u16())));
                    }
                    s => return Err(self.status_error("GET /v2/", s)),
                }
                auth
            }
            s => return Err(self.status_error("GET /v2/", s)),
        };
        let Some(repo) = &self.spec.repository else {
            return Ok(());
        };
        let what = format!("HEAD /v2/{repo}/manifests/{}", self.spec.reference());
        let url = format!(
            "{}/v2/{repo}/manifests/{}",
            self.base,
            self.spec.reference()
        );
        // An open registry still gets the credential: it may be needed for this repository.
        let auth = match auth {
            Auth::None => Auth::Basic,
            other => other,
        };
        let request = self
            .authorise(self.http.head(&url), &auth)
            .header(ACCEPT, MANIFEST_ACCEPT);
        let resp = self.send(request, &what).await?;
        match resp.status() {
            s if s.is_success() => Ok(()),
            s @ (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => Err(self.rejected(format!(
                "{what} answered HTTP {}: no pull access to {repo}",
                s.as_u16()
            ))),
            StatusCode::NOT_FOUND => Err(self.rejected(format!(
                "{what} answered HTTP 404: {repo}:{} does not exist or is not visible to this credential",
                self.spec.reference()
            ))),
            s => Err(self.status_error(&what, s)),
        }
    }

    /// Asks the token service for a pull token with the credential.
    async fn token(
        &self,
        realm: &str,
        service: Option<&str>,
        challenge_scope: Option<String>,
    ) -> Result<Sensitive, VerifyError> {
        let realm_url = url::Url::parse(realm)
            .ok()
            .filter(is_http_url)
            .ok_or_else(|| self.bad("the Bearer challenge's realm is not an http(s) URL".into()))?;
        if self.spec.scheme() == "https" && realm_url.scheme() != "https" {
            return Err(self.bad(format!(
                "the token service {} is not https; the credential is not sent in clear",
                realm_url.host_str().unwrap_or_default()
            )));
        }
        let scope = match &self.spec.repository {
            Some(repo) => Some(format!("repository:{repo}:pull")),
            None => challenge_scope,
        };
        let mut query: Vec<(&str, &str)> = Vec::new();
        if let Some(service) = service {
            query.push(("service", service));
        }
        if let Some(scope) = &scope {
            query.push(("scope", scope));
        }
        let what = format!(
            "the token service {}",
            realm_url.host_str().unwrap_or_default()
        );
        let request = self
            .http
            .get(realm_url.clone())
            .query(&query)
            .basic_auth(self.username, Some(self.password.expose()));
        let resp = self.send(request, &what).await?;
        match resp.status() {
            s if s.is_success() => {}
            s @ (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => {
                return Err(self.rejected(format!("{what} answered HTTP {}", s.as_u16())));
            }
            s => return Err(self.status_error(&what, s)),
        }
        #[derive(Deserialize)]
        struct TokenAnswer {
            token: Option<String>,
            access_token: Option<String>,
        }
        let body = resp.bytes().await.map_err(|e| self.transport(&what, &e))?;
        let answer: TokenAnswer = serde_json::from_slice(&body)
            .map_err(|_| self.bad(format!("{what} answered a body that is not a token")))?;
        answer
            .token
            .or(answer.access_token)
            .filter(|t| !t.trim().is_empty())
            .map(Sensitive::new)
            .ok_or_else(|| self.bad(format!("{what} answered no token")))
    }

    fn authorise(&self, request: RequestBuilder, auth: &Auth) -> RequestBuilder {
        match auth {
            Auth::None => request,
            Auth::Basic => request.basic_auth(self.username, Some(self.password.expose())),
            Auth::Bearer(token) => request.bearer_auth(token.expose()),
        }
    }

    async fn send(
        &self,
        request: RequestBuilder,
        what: &str,
    ) -> Result<reqwest::Response, VerifyError> {
        request.send().await.map_err(|e| self.transport(what, &e))
    }

    fn transport(&self, what: &str, err: &reqwest::Error) -> VerifyError {
        // Without the URL: a token service's URL could carry a query we built.
        let causes = Causes(err).to_string();
        let reason = if causes.is_empty() {
            format!("{what}: request failed")
        } else {
            format!("{what}: {causes}")
        };
        if err.is_timeout() || err.is_connect() || err.is_request() {
            VerifyError::Unreachable {
                server: self.server.to_string(),
                reason,
            }
        } else {
            self.bad(reason)
        }
    }

    fn status_error(&self, what: &str, status: StatusCode) -> VerifyError {
        let reason = format!("{what} answered HTTP {}", status.as_u16());
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            // The registry is there but cannot serve us now.
            VerifyError::Unreachable {
                server: self.server.to_string(),
                reason,
            }
        } else {
            self.bad(reason)
        }
    }

    fn rejected(&self, reason: String) -> VerifyError {
        VerifyError::Rejected {
            server: self.server.to_string(),
            reason,
        }
    }

    fn bad(&self, reason: String) -> VerifyError {
        VerifyError::BadResponse {
            server: self.server.to_string(),
            reason,
        }
    }
}

/// The authentication a registry asks for.
#[derive(Debug, PartialEq, Eq)]
enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// The most useful challenge among the `WWW-Authenticate` headers: Bearer over Basic.
fn challenge_of(headers: &HeaderMap) -> Option<Challenge> {
    let mut found = None;
    for value in headers.get_all(WWW_AUTHENTICATE) {
        let Ok(text) = value.to_str() else { continue };
        for (scheme, params) in parse_challenges(text) {
            if scheme.eq_ignore_ascii_case("bearer") {
                let get = |k: &str| {
                    params
                        .iter()
                        .find(|(n, _)| n.eq_ignore_ascii_case(k))
                        .map(|(_, v)| v.clone())
                };
                if let Some(realm) = get("realm") {
                    return Some(Challenge::Bearer {
                        realm,
                        service: get("service"),
                        scope: get("scope"),
                    });
                }
            } else if scheme.eq_ignore_ascii_case("basic") {
                found = Some(Challenge::Basic);
            }
        }
    }
    found
}

/// Parses `Scheme k=v, k="v, with comma", Other k=v` (RFC 9110 §11.6.1) into schemes and their
/// parameters.
pub(crate) fn parse_challenges(text: &str) -> Vec<(String, Vec<(String, String)>)> {
    let mut out: Vec<(String, Vec<(String, String)>)> = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    let skip = |i: &mut usize, pred: &dyn Fn(u8) -> bool| {
        while *i < bytes.len() && pred(bytes[*i]) {
            *i += 1;
        }
    };
    let is_token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/".contains(&b);
    while i < bytes.len() {
        skip(&mut i, &|b| b == b' ' || b == b',' || b == b'\t');
        let start = i;
        skip(&mut i, &is_token);
        if start == i {
            // Not a token: skip the stray byte.
            i += 1;
            continue;
        }
        let word = &text[start..i];
        let after_ws = {
            let mut j = i;
            skip(&mut j, &|b| b == b' ' || b == b'\t');
            j
        };
        if after_ws < bytes.len() && bytes[after_ws] == b'=' && !out.is_empty() {
            // A parameter of the current challenge.
            i = after_ws + 1;
            skip(&mut i, &|b| b == b' ' || b == b'\t');
            let value = if i < bytes.len() && bytes[i] == b'"' {
                i += 1;
                let mut v = String::new();
                while i < bytes.len() && bytes[i] != b'"' {
                    if bytes[i] == b'\\' && i + 1 < bytes.len() {
                        i += 1;
                    }
                    let ch_len = text[i..].chars().next().map_or(1, char::len_utf8);
                    v.push_str(&text[i..i + ch_len]);
                    i += ch_len;
                }
                i += 1;
                v
            } else {
                let vs = i;
                skip(&mut i, &|b| b != b',' && b != b' ' && b != b'\t');
                text[vs..i].to_string()
            };
            if let Some((_, params)) = out.last_mut() {
                params.push((word.to_string(), value));
            }
        } else {
            out.push((word.to_string(), Vec::new()));
        }
    }
    out
}

/// `team/app`, `library/nginx`, `a.b/c-d/e_f`: lowercase path components.
fn is_repository(repo: &str) -> bool {
    !repo.is_empty()
        && repo.len() <= 255
        && repo.split('/').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && part.as_bytes()[0].is_ascii_alphanumeric()
                && part.as_bytes()[part.len() - 1].is_ascii_alphanumeric()
        })
}

/// A tag (`v1.2`, up to 128 characters) or a digest (`sha256:<hex>`).
fn is_reference(reference: &str) -> bool {
    if let Some((algorithm, hex)) = reference.split_once(':') {
        return !algorithm.is_empty()
            && algorithm
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b))
            && hex.len() >= 32
            && hex.bytes().all(|b| b.is_ascii_hexdigit());
    }
    let b = reference.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn problems_of(yaml: &str) -> Vec<String> {
        let spec: VerifySpec = serde_yaml_ng::from_str(yaml).expect("parses");
        let mut p = FieldProblems::new(Path::new("r.yaml"));
        p.scoped("verify", |p| spec.validate(p));
        p.into_vec().iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_complete_spec_has_no_problems() {
        assert!(
            problems_of(
                "repository: team/app\nreference: v1.2.3\nscheme: https\ntimeout: 5s\ncaFile: /etc/ca.pem"
            )
            .is_empty()
        );
        assert!(problems_of("{}").is_empty());
        assert!(
            problems_of(
                "repository: a/b\nreference: sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
            )
            .is_empty()
        );
    }

    #[test]
    fn every_bad_field_is_reported_at_once() {
        let got = problems_of(
            "repository: Team/App\nreference: ':bad'\nscheme: ftp\ntimeout: soon\ncaFile: ca.pem",
        );
        let want = [
            "r.yaml: verify.repository: `Team/App` is not a repository path",
            "r.yaml: verify.reference: `:bad` is not a tag or a digest",
            "r.yaml: verify.scheme: `ftp` is not `https` or `http`",
            "r.yaml: verify.timeout: `soon` is not a duration: ",
            "r.yaml: verify.caFile: must be an absolute path",
        ];
        assert_eq!(got.len(), want.len(), "{got:#?}");
        for (got, want) in got.iter().zip(want) {
            assert!(got.starts_with(want), "{got} does not start with {want}");
        }
        assert_eq!(
            problems_of("reference: v1\nscheme: http\ncaFile: /ca.pem\ntimeout: 0s"),
            [
                "r.yaml: verify.reference: only used together with `repository`",
                "r.yaml: verify.caFile: not used with `scheme: http`",
                "r.yaml: verify.timeout: must be more than 0s and at most 5m",
            ]
        );
        assert!(serde_yaml_ng::from_str::<VerifySpec>("repo: x").is_err());
    }

    #[test]
    fn defaults_apply_when_fields_are_absent() {
        let spec = VerifySpec::default();
        assert_eq!(spec.timeout(), DEFAULT_TIMEOUT);
        assert_eq!(spec.scheme(), "https");
        assert_eq!(spec.reference(), "latest");
    }

    #[test]
    fn bearer_challenges_parse_with_quoted_commas() {
        let parsed = parse_challenges(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(
            parsed,
            vec![(
                "Bearer".to_string(),
                vec![
                    ("realm".into(), "https://auth.example/token".into()),
                    ("service".into(), "registry.example".into()),
                    ("scope".into(), "repository:a/b:pull,push".into()),
                ]
            )]
        );
        let two = parse_challenges(r#"Basic realm="r", Bearer realm="https://t/",service=s"#);
        assert_eq!(two.len(), 2);
        assert_eq!(two[1].1[1], ("service".into(), "s".into()));
    }

    #[test]
    fn bearer_is_preferred_over_basic_and_needs_a_realm() {
        let mut h = HeaderMap::new();
        h.append(
            WWW_AUTHENTICATE,
            "Basic realm=\"x\"".parse().expect("value"),
        );
        assert_eq!(challenge_of(&h), Some(Challenge::Basic));
        h.append(
            WWW_AUTHENTICATE,
            "Bearer realm=\"http://127.0.0.1/t\",service=\"reg\""
                .parse()
                .expect("value"),
        );
        assert_eq!(
            challenge_of(&h),
            Some(Challenge::Bearer {
                realm: "http://127.0.0.1/t".into(),
                service: Some("reg".into()),
                scope: None
            })
        );
        let mut h = HeaderMap::new();
        h.append(
            WWW_AUTHENTICATE,
            "Bearer service=\"reg\"".parse().expect("value"),
        );
        assert_eq!(challenge_of(&h), None);
    }

    #[test]
    fn references_and_repositories_follow_the_distribution_grammar() {
        assert!(is_repository("library/nginx") && is_repository("a.b/c-d/e_f"));
        assert!(!is_repository("") && !is_repository("a//b") && !is_repository("-a"));
        assert!(is_reference("latest") && is_reference("v1.2_3-rc"));
        assert!(!is_reference("-x") && !is_reference("sha256:zz"));
    }

    #[tokio::test]
    async fn a_ca_file_without_a_certificate_is_a_local_input_error_before_any_request() {
        let dir = tempfile::tempdir().expect("temp dir");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").expect("write");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").expect("write");
        for path in [junk, empty] {
            let spec = VerifySpec {
                ca_file: Some(path.clone()),
                ..VerifySpec::default()
            };
            // Nothing listens on the discard port: the CA file must be refused first.
            let err = verify(&spec, "127.0.0.1:9", "u", &Sensitive::new("p"))
                .await
                .expect_err("a CA file without a certificate is refused");
            assert_eq!(err.category(), "local_input", "{err}");
            assert!(
                err.to_string().contains(&format!(
                    "CA file {} holds no PEM certificate",
                    path.display()
                )),
                "{err}"
            );
        }
    }

    #[test]
    fn categories_are_bounded() {
        let e = |f: fn(String, String) -> VerifyError| f("s".into(), "r".into()).category();
        let got = [
            e(|server, reason| VerifyError::Rejected { server, reason }),
            e(|server, reason| VerifyError::Unreachable { server, reason }),
            e(|server, reason| VerifyError::BadResponse { server, reason }),
            e(|server, reason| VerifyError::LocalInput { server, reason }),
        ];
        assert_eq!(got, VerifyError::CATEGORIES);
    }
}
