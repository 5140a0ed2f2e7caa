//! AWS ECR (private) and ECR Public: `GetAuthorizationToken` through the AWS SDK, with the pod's
//! identity from aws-config's default chain (static keys, IRSA, EKS Pod Identity, …) and an
//! optional assume-role on top for cross-account registries.
//!
//! The configuration types always compile, so a registry file with `type: ecr` parses in a build
//! without the `ecr` feature; only the SDK clients are behind the feature.

use std::sync::Arc;

use schemars::JsonSchema;
use serde::Deserialize;

use super::web::is_http_url;
use super::{Provider, ProviderError};
use crate::problems::FieldProblems;
use crate::sensitive::Sensitive;

/// The registry host of ECR Public.
pub const ECR_PUBLIC_HOST: &str = "public.ecr.aws";

/// ECR Public's token API exists only in this region.
pub const ECR_PUBLIC_REGION: &str = "us-east-1";

/// `provider:` of `type: ecr`.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EcrConfig {
    /// AWS regions to fetch a token for (one `GetAuthorizationToken` call each); each token serves
    /// every registry of that region the identity may read.
    #[serde(default)]
    pub regions: Vec<String>,
    /// Role to assume on top of the pod's identity (cross-account registries).
    pub role_arn: Option<String>,
    /// External id required by the role's trust policy.
    pub external_id: Option<String>,
    /// Session name of the assumed role (default `pullkeeper`).
    pub session_name: Option<String>,
    /// Endpoint for every AWS call of this provider (ECR and the assume-role STS call); for tests
    /// and private endpoints. `AWS_ENDPOINT_URL_ECR` / `AWS_ENDPOINT_URL_STS` also work.
    pub endpoint_url: Option<String>,
    /// Credential-provider route only (KEP-4412): the annotation of the pulling Pod's
    /// ServiceAccount naming the role to assume with the Pod's own token
    /// (`AssumeRoleWithWebIdentity`), e.g. `eks.amazonaws.com/role-arn`. The kubelet's
    /// `tokenAttributes` must pass that annotation. Not with `roleArn`.
    pub pod_role_annotation: Option<String>,
}

/// `provider:` of `type: ecr-public`.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EcrPublicConfig {
    /// Role to assume on top of the pod's identity.
    pub role_arn: Option<String>,
    /// External id required by the role's trust policy.
    pub external_id: Option<String>,
    /// Session name of the assumed role (default `pullkeeper`).
    pub session_name: Option<String>,
    /// Endpoint for every AWS call of this provider (ECR Public and the assume-role STS call).
    pub endpoint_url: Option<String>,
}

/// Settings shared by both ECR flavours: which identity to use and where to send calls.
#[derive(Clone, Copy)]
struct Identity<'a> {
    role_arn: Option<&'a str>,
    external_id: Option<&'a str>,
    session_name: Option<&'a str>,
    endpoint_url: Option<&'a str>,
}

impl Identity<'_> {
    fn validate(self, problems: &mut FieldProblems) {
        match self.role_arn {
            Some(arn) if !is_role_arn(arn) => problems.push(
                "roleArn",
                format!(
                    "`{arn}` is not an IAM role ARN (expected arn:PARTITION:iam::ACCOUNT:role/NAME)"
                ),
            ),
            Some(_) => {}
            None => {
                if self.external_id.is_some() {
                    problems.push("externalId", "only used together with `roleArn`");
                }
                if self.session_name.is_some() {
                    problems.push("sessionName", "only used together with `roleArn`");
                }
            }
        }
        if let Some(id) = self.external_id
            && !(2..=1224).contains(&id.len())
        {
            problems.push("externalId", "must be 2 to 1224 characters long");
        }
        if let Some(name) = self.session_name
            && !is_session_name(name)
        {
            problems.push(
                "sessionName",
                "must be 2 to 64 characters of letters, digits and `+=,.@_-`",
            );
        }
        if let Some(url) = self.endpoint_url {
            match url::Url::parse(url) {
                Ok(u) if is_http_url(&u) => {}
                _ => problems.push("endpointUrl", format!("`{url}` is not an http(s) URL")),
            }
        }
    }
}

impl EcrConfig {
    fn identity(&self) -> Identity<'_> {
        Identity {
            role_arn: self.role_arn.as_deref(),
            external_id: self.external_id.as_deref(),
            session_name: self.session_name.as_deref(),
            endpoint_url: self.endpoint_url.as_deref(),
        }
    }

    /// Checks the regions, the role and the endpoint; fields are relative to `provider`.
    pub fn validate(&self, problems: &mut FieldProblems) {
        if self.pod_role_annotation.is_some() && self.role_arn.is_some() {
            problems.push(
                "podRoleAnnotation",
                "not with `roleArn`: the role comes from the pulling Pod's ServiceAccount",
            );
        }
        if self
            .pod_role_annotation
            .as_deref()
            .is_some_and(|a| a.trim().is_empty())
        {
            problems.push("podRoleAnnotation", "name an annotation key");
        }
        if self.regions.is_empty() {
            problems.push("regions", "name at least one AWS region (e.g. `eu-west-1`)");
        }
        for (i, region) in self.regions.iter().enumerate() {
            if !is_region_name(region) {
                problems.push(
                    format!("regions[{i}]"),
                    format!("`{region}` is not an AWS region name (expected e.g. `eu-west-1`)"),
                );
            } else if self.regions[..i].contains(region) {
                problems.push(
                    format!("regions[{i}]"),
                    format!("`{region}` is listed twice"),
                );
            }
        }
        self.identity().validate(problems);
    }

    /// For an entry of the registry file's `servers`: a problem when it is a private ECR host of
    /// a region this provider fetches no token for (the Secret would carry a login that the
    /// registry refuses). Other hosts are aliases and fine.
    pub fn server_problem(&self, server: &str) -> Option<String> {
        if let Some(port) = ecr_server_port_problem(server) {
            return Some(port);
        }
        let region = ecr_host_region(server)?;
        (!self.regions.iter().any(|r| r == region)).then(|| {
            format!(
                "`{server}` is an ECR registry in {region}, which `provider.regions` does not list"
            )
        })
    }

    /// Builds the provider on the pod's default AWS identity chain.
    pub async fn build(&self) -> Result<Arc<dyn Provider>, ProviderError> {
        #[cfg(feature = "ecr")]
        {
            let fallback = self
                .regions
                .first()
                .map_or(ECR_PUBLIC_REGION, String::as_str);
            let base = client::default_sdk_config(fallback).await;
            self.build_with_sdk_config(&base).await
        }
        #[cfg(not(feature = "ecr"))]
        {
            Err(without_feature())
        }
    }

    /// Builds the provider for one credential-provider request. With `podRoleAnnotation`, the
    /// role named in that annotation of the pulling Pod's ServiceAccount is assumed with the
    /// Pod's token (`AssumeRoleWithWebIdentity`, per-workload identity); a request without the
    /// token or the annotation fails, saying which. Without it, as [`EcrConfig::build`].
    pub async fn build_for_pod(
        &self,
        pod_token: Option<&Sensitive>,
        annotations: &std::collections::BTreeMap<String, String>,
    ) -> Result<Arc<dyn Provider>, ProviderError> {
        let Some(key) = self.pod_role_annotation.as_deref() else {
            return self.build().await;
        };
        let local = |m: String| ProviderError::new(crate::providers::ErrorCategory::LocalInput, m);
        let token = super::pod_token(pod_token, "`podRoleAnnotation`", "an audience")?;
        let role = super::pod_annotation(
            annotations.get(key).map(String::as_str),
            key,
            "no role to assume",
        )?;
        if !is_role_arn(role) {
            return Err(local(format!(
                "annotation `{key}` is `{role}`, not an IAM role ARN (arn:PARTITION:iam::ACCOUNT:role/NAME)"
            )));
        }
        #[cfg(feature = "ecr")]
        {
            let fallback = self
                .regions
                .first()
                .map_or(ECR_PUBLIC_REGION, String::as_str);
            let base = client::default_sdk_config(fallback).await;
            let mut id = self.identity();
            id.role_arn = None;
            let sdk = client::effective_sdk_config(&base, id).await;
            let session = self.session_name.as_deref().unwrap_or("pullkeeper");
            let credentials = client::web_identity(&sdk, role, session, token).await?;
            let sdk = sdk
                .into_builder()
                .credentials_provider(
                    aws_credential_types::provider::SharedCredentialsProvider::new(credentials),
                )
                .build();
            Ok(self.clients(&sdk))
        }
        #[cfg(not(feature = "ecr"))]
        {
            let _ = (token, role);
            Err(without_feature())
        }
    }

    /// Builds the provider on top of a given AWS SDK configuration instead of the process
    /// environment: lets tests pin the identity chain's environment without touching the
    /// process-wide one.
    #[cfg(feature = "ecr")]
    #[doc(hidden)]
    pub async fn build_with_sdk_config(
        &self,
        base: &aws_config::SdkConfig,
    ) -> Result<Arc<dyn Provider>, ProviderError> {
        let sdk = client::effective_sdk_config(base, self.identity()).await;
        Ok(self.clients(&sdk))
    }

    /// One ECR client per region on an SDK configuration.
    #[cfg(feature = "ecr")]
    fn clients(&self, sdk: &aws_config::SdkConfig) -> Arc<dyn Provider> {
        let clients = self
            .regions
            .iter()
            .map(|region| {
                let conf = aws_sdk_ecr::config::Builder::from(sdk)
                    .region(aws_config::Region::new(region.clone()))
                    .build();
                (region.clone(), aws_sdk_ecr::Client::from_conf(conf))
            })
            .collect();
        Arc::new(client::EcrProvider { clients })
    }
}

impl EcrPublicConfig {
    fn identity(&self) -> Identity<'_> {
        Identity {
            role_arn: self.role_arn.as_deref(),
            external_id: self.external_id.as_deref(),
            session_name: self.session_name.as_deref(),
            endpoint_url: self.endpoint_url.as_deref(),
        }
    }

    /// Checks the role and the endpoint; fields are relative to `provider`.
    pub fn validate(&self, problems: &mut FieldProblems) {
        self.identity().validate(problems);
    }

    /// For an entry of the registry file's `servers`: a problem when it is a private ECR host,
    /// which an ECR Public token does not open.
    pub fn server_problem(&self, server: &str) -> Option<String> {
        ecr_host_region(server).map(|_| {
            format!("`{server}` is a private ECR registry; ECR Public tokens only work on {ECR_PUBLIC_HOST}; use `type: ecr`")
        })
    }

    /// Builds the provider on the pod's default AWS identity chain.
    pub async fn build(&self) -> Result<Arc<dyn Provider>, ProviderError> {
        #[cfg(feature = "ecr")]
        {
            let base = client::default_sdk_config(ECR_PUBLIC_REGION).await;
            self.build_with_sdk_config(&base).await
        }
        #[cfg(not(feature = "ecr"))]
        {
            Err(without_feature())
        }
    }

    /// Builds the provider on top of a given AWS SDK configuration (see
    /// [`EcrConfig::build_with_sdk_config`]).
    #[cfg(feature = "ecr")]
    #[doc(hidden)]
    pub async fn build_with_sdk_config(
        &self,
        base: &aws_config::SdkConfig,
    ) -> Result<Arc<dyn Provider>, ProviderError> {
        let sdk = client::effective_sdk_config(base, self.identity()).await;
        let conf = aws_sdk_ecrpublic::config::Builder::from(&sdk)
            .region(aws_config::Region::from_static(ECR_PUBLIC_REGION))
            .build();
        Ok(Arc::new(client::EcrPublicProvider {
            client: aws_sdk_ecrpublic::Client::from_conf(conf),
        }))
    }
}

#[cfg(not(feature = "ecr"))]
fn without_feature() -> ProviderError {
    ProviderError::new(
        super::ErrorCategory::LocalInput,
        "pullkeeper was built without the `ecr` feature",
    )
}

/// The geography codes that AWS region names start with (`eusc`: the AWS European Sovereign
/// Cloud, `eusc-de-east-1`).
const REGION_GEOGRAPHIES: [&str; 11] = [
    "af", "ap", "ca", "cn", "eu", "eusc", "il", "me", "mx", "sa", "us",
];

/// `eu-west-1`, `us-gov-west-1`, `cn-north-1`: a known geography, one or more words, a number.
fn is_region_name(region: &str) -> bool {
    let parts: Vec<&str> = region.split('-').collect();
    let [first, middle @ .., last] = parts.as_slice() else {
        return false;
    };
    REGION_GEOGRAPHIES.contains(first)
        && !middle.is_empty()
        && middle
            .iter()
            .all(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase()))
        && !last.is_empty()
        && last.bytes().all(|b| b.is_ascii_digit())
}

/// The DNS suffix of each AWS partition's registry hosts, with the region prefix that partition's
/// regions carry (the partition data the AWS SDKs ship: `dnsSuffix` and `regionRegex`). The
/// commercial partition (`aws`) takes every region no other prefix claims. Longest prefix first.
const PARTITION_SUFFIXES: [(&str, &str); 8] = [
    ("us-isob-", "sc2s.sgov.gov"),
    ("us-isof-", "csp.hci.ic.gov"),
    ("eu-isoe-", "cloud.adc-e.uk"),
    ("us-iso-", "c2s.ic.gov"),
    ("us-gov-", "amazonaws.com"),
    ("eusc-", "amazonaws.eu"),
    ("cn-", "amazonaws.com.cn"),
    ("", "amazonaws.com"),
];

/// The DNS suffix of the registry hosts of `region`'s partition.
fn partition_suffix(region: &str) -> &'static str {
    PARTITION_SUFFIXES
        .iter()
        .find(|(prefix, _)| region.starts_with(prefix))
        .map_or("amazonaws.com", |(_, suffix)| suffix)
}

/// A private ECR registry host, in any of the forms AWS hands out (config/README.md lists them):
///
/// - `ACCOUNT.dkr.ecr.REGION.SUFFIX` and FIPS `ACCOUNT.dkr.ecr-fips.REGION.SUFFIX`, where SUFFIX
///   is the region's partition's: `amazonaws.com` (commercial, GovCloud), `amazonaws.com.cn`
///   (China), `amazonaws.eu` (European Sovereign Cloud), `c2s.ic.gov`, `sc2s.sgov.gov`,
///   `cloud.adc-e.uk`, `csp.hci.ic.gov` (the isolated partitions);
/// - dual-stack `ACCOUNT.dkr-ecr.REGION.on.aws` and `ACCOUNT.dkr-ecr-fips.REGION.on.aws`, for
///   regions of the partitions whose suffix is `amazonaws.com`.
///
/// The region must be a region name of the suffix's partition: `…ecr.cn-north-1.amazonaws.com`
/// is no ECR host. A port (`:443`) is allowed here; [`ecr_server_port_problem`] reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EcrHost<'a> {
    pub account: &'a str,
    pub region: &'a str,
    pub fips: bool,
    pub dual_stack: bool,
}

impl<'a> EcrHost<'a> {
    /// Recognizes `server` (`host[:port]`) as a private ECR registry host.
    pub fn parse(server: &'a str) -> Option<Self> {
        let host = server.split(':').next().unwrap_or(server);
        let (account, rest) = host.split_once('.')?;
        if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let (service, rest) = rest.split_once('.')?;
        // (fips, dual_stack) and what follows the service labels.
        let ((fips, dual_stack), rest) = match service {
            "dkr" => match rest.split_once('.')? {
                ("ecr", rest) => ((false, false), rest),
                ("ecr-fips", rest) => ((true, false), rest),
                _ => return None,
            },
            "dkr-ecr" => ((false, true), rest),
            "dkr-ecr-fips" => ((true, true), rest),
            _ => return None,
        };
        let (region, suffix) = rest.split_once('.')?;
        if !is_region_name(region) {
            return None;
        }
        let partition = partition_suffix(region);
        let fits = if dual_stack {
            suffix == "on.aws" && partition == "amazonaws.com"
        } else {
            suffix == partition
        };
        fits.then_some(Self {
            account,
            region,
            fips,
            dual_stack,
        })
    }
}

/// The region of a private ECR host in any form ([`EcrHost`]).
pub fn ecr_host_region(server: &str) -> Option<&str> {
    EcrHost::parse(server).map(|h| h.region)
}

/// A port on an ECR host in `servers`: the kubelet matches an `auths` key with a port only
/// against images named with that port, and ECR images never name one.
fn ecr_server_port_problem(server: &str) -> Option<String> {
    let (host, _) = server.split_once(':')?;
    EcrHost::parse(host).map(|_| {
        format!(
            "`{server}`: write ECR hosts without a port; the kubelet would match this `auths` key \
             only for images named with `:PORT`, and ECR images are named without one"
        )
    })
}

/// `arn:aws:iam::123456789012:role/path/name` (any partition).
fn is_role_arn(arn: &str) -> bool {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    matches!(
        parts.as_slice(),
        ["arn", partition, "iam", "", account, resource]
            if partition.starts_with("aws")
                && account.len() == 12
                && account.bytes().all(|b| b.is_ascii_digit())
                && resource.strip_prefix("role/").is_some_and(|n| !n.is_empty())
    )
}

fn is_session_name(name: &str) -> bool {
    (2..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b))
}

#[cfg(feature = "ecr")]
mod client {
    //! The SDK side: clients, the fetch, and mapping SDK errors onto [`ErrorCategory`].

    use std::error::Error as StdError;
    use std::fmt;
    use std::time::Duration;

    use async_trait::async_trait;
    use aws_config::{BehaviorVersion, Region, SdkConfig};
    use aws_credential_types::provider::SharedCredentialsProvider;
    use aws_credential_types::provider::error::CredentialsError;
    use aws_sdk_ecr::error::{ConnectorError, ErrorMetadata, SdkError};
    use base64::Engine as _;
    use chrono::{DateTime, Utc};

    use super::{ECR_PUBLIC_HOST, Identity};
    use crate::credential::{Credential, Login};
    use crate::providers::{ErrorCategory, Provider, ProviderError};
    use crate::sensitive::Sensitive;

    /// Bounds one whole `GetAuthorizationToken` call, retries included.
    const OPERATION_TIMEOUT: Duration = Duration::from_mins(1);

    /// The SDK configuration from the process environment. The region comes from `AWS_REGION`
    /// (set by the IRSA and Pod Identity webhooks) or the first configured region; it only
    /// steers STS, since every ECR client names its own region. IMDS is deliberately not asked
    /// for the region.
    pub(super) async fn default_sdk_config(fallback_region: &str) -> SdkConfig {
        let region = aws_config::meta::region::RegionProviderChain::first_try(
            aws_config::environment::EnvironmentVariableRegionProvider::new(),
        )
        .or_else(Region::new(fallback_region.to_string()));
        // The SDK's default HTTP client honours HTTPS_PROXY/HTTP_PROXY/NO_PROXY (either case)
        // from behavior version 2025-08-07 on; `latest()` keeps that (tests/proxy.rs proves every
        // AWS call, STS included, goes through the proxy).
        aws_config::defaults(BehaviorVersion::latest())
            .region(region)
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .operation_timeout(OPERATION_TIMEOUT)
                    .build(),
            )
            .load()
            .await
    }

    /// Applies the endpoint override and the optional assumed role.
    pub(super) async fn effective_sdk_config(base: &SdkConfig, id: Identity<'_>) -> SdkConfig {
        let mut builder = base.to_builder();
        if let Some(url) = id.endpoint_url {
            builder = builder.endpoint_url(url);
        }
        let sdk = builder.build();
        let Some(role) = id.role_arn else {
            return sdk;
        };
        let mut assume = aws_config::sts::AssumeRoleProvider::builder(role)
            .session_name(id.session_name.unwrap_or("pullkeeper"))
            .configure(&sdk);
        if let Some(external_id) = id.external_id {
            assume = assume.external_id(external_id);
        }
        let assumed = assume.build().await;
        sdk.into_builder()
            .credentials_provider(SharedCredentialsProvider::new(assumed))
            .build()
    }

    /// Temporary credentials for `role` from the pulling Pod's token
    /// (`sts:AssumeRoleWithWebIdentity`, an unsigned call): per-workload identity.
    pub(super) async fn web_identity(
        sdk: &SdkConfig,
        role: &str,
        session: &str,
        token: &Sensitive,
    ) -> Result<aws_credential_types::Credentials, ProviderError> {
        let out = aws_sdk_sts::Client::new(sdk)
            .assume_role_with_web_identity()
            .role_arn(role)
            .role_session_name(session)
            .web_identity_token(token.expose())
            .send()
            .await
            .map_err(|e| map_sdk_error(&e, "sts:AssumeRoleWithWebIdentity"))?;
        let c = out.credentials.ok_or_else(|| {
            bad(
                "sts:AssumeRoleWithWebIdentity",
                "the answer holds no credentials",
            )
        })?;
        Ok(aws_credential_types::Credentials::new(
            c.access_key_id,
            c.secret_access_key,
            Some(c.session_token),
            std::time::SystemTime::try_from(c.expiration).ok(),
            "pullkeeper-pod-web-identity",
        ))
    }

    pub(super) struct EcrProvider {
        pub(super) clients: Vec<(String, aws_sdk_ecr::Client)>,
    }

    impl fmt::Debug for EcrProvider {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let regions: Vec<&str> = self.clients.iter().map(|(r, _)| r.as_str()).collect();
            f.debug_struct("EcrProvider")
                .field("regions", &regions)
                .finish()
        }
    }

    #[async_trait]
    impl Provider for EcrProvider {
        async fn fetch(&self) -> Result<Credential, ProviderError> {
            let per_region = futures::future::try_join_all(
                self.clients
                    .iter()
                    .map(|(region, client)| fetch_region(region, client)),
            )
            .await?;
            let mut logins = Vec::new();
            let mut expires_at: Option<DateTime<Utc>> = None;
            for (region_logins, region_expiry) in per_region {
                logins.extend(region_logins);
                expires_at = earliest(expires_at, region_expiry);
            }
            Ok(Credential { logins, expires_at })
        }
    }

    async fn fetch_region(
        region: &str,
        client: &aws_sdk_ecr::Client,
    ) -> Result<(Vec<Login>, Option<DateTime<Utc>>), ProviderError> {
        let what = format!("ecr GetAuthorizationToken in {region}");
        let out = client
            .get_authorization_token()
            .send()
            .await
            .map_err(|e| map_sdk_error(&e, &what))?;
        let data = out.authorization_data.unwrap_or_default();
        if data.is_empty() {
            return Err(bad(&what, "the response carries no authorizationData"));
        }
        let mut logins = Vec::with_capacity(data.len());
        let mut expires_at = None;
        for item in data {
            let endpoint = item
                .proxy_endpoint
                .ok_or_else(|| bad(&what, "authorizationData has no proxyEndpoint"))?;
            let server = host_of_endpoint(&endpoint)
                .ok_or_else(|| bad(&what, "proxyEndpoint is not a registry URL"))?;
            let (username, password) = decode_token(item.authorization_token.as_deref(), &what)?;
            logins.push(Login {
                server: Some(server),
                username,
                password,
            });
            expires_at = earliest(expires_at, item.expires_at.and_then(to_chrono));
        }
        Ok((logins, expires_at))
    }

    pub(super) struct EcrPublicProvider {
        pub(super) client: aws_sdk_ecrpublic::Client,
    }

    impl fmt::Debug for EcrPublicProvider {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("EcrPublicProvider").finish_non_exhaustive()
        }
    }

    #[async_trait]
    impl Provider for EcrPublicProvider {
        async fn fetch(&self) -> Result<Credential, ProviderError> {
            let what = "ecr-public GetAuthorizationToken";
            let out = self
                .client
                .get_authorization_token()
                .send()
                .await
                .map_err(|e| map_sdk_error(&e, what))?;
            let data = out
                .authorization_data
                .ok_or_else(|| bad(what, "the response carries no authorizationData"))?;
            let (username, password) = decode_token(data.authorization_token.as_deref(), what)?;
            Ok(Credential {
                logins: vec![Login {
                    server: Some(ECR_PUBLIC_HOST.to_string()),
                    username,
                    password,
                }],
                expires_at: data.expires_at.and_then(to_chrono),
            })
        }
    }

    fn bad(what: &str, message: &str) -> ProviderError {
        ProviderError::new(ErrorCategory::BadResponse, format!("{what}: {message}"))
    }

    fn earliest(a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn to_chrono(t: aws_sdk_ecr::primitives::DateTime) -> Option<DateTime<Utc>> {
        DateTime::from_timestamp(t.secs(), t.subsec_nanos())
    }

    /// `https://123456789012.dkr.ecr.eu-west-1.amazonaws.com` → the bare host (and port).
    pub(super) fn host_of_endpoint(endpoint: &str) -> Option<String> {
        let rest = endpoint
            .strip_prefix("https://")
            .or_else(|| endpoint.strip_prefix("http://"))
            .unwrap_or(endpoint);
        let host = rest.split('/').next().unwrap_or_default();
        (!host.is_empty()).then(|| host.to_string())
    }

    /// Splits a decoded ECR token `AWS:password` at the first `:`.
    pub(super) fn split_token(decoded: &str) -> Option<(&str, &str)> {
        decoded.split_once(':')
    }

    /// Decodes base64(`AWS:password`). Errors never include the token.
    pub(super) fn decode_token(
        token: Option<&str>,
        what: &str,
    ) -> Result<(String, Sensitive), ProviderError> {
        let token = token.ok_or_else(|| bad(what, "authorizationData has no token"))?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(token.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| bad(what, "the authorization token is not base64 text"))?;
        let (user, password) = split_token(&decoded)
            .ok_or_else(|| bad(what, "the authorization token is not `user:password`"))?;
        Ok((user.to_string(), Sensitive::new(password)))
    }

    /// Maps an SDK failure onto a category by what it is made of, never by its text. The most
    /// telling part of the source chain wins: an AWS error code (from ECR or from STS inside
    /// the identity chain), then a connection failure, then a local file problem, then the
    /// kind of credentials error.
    pub(super) fn map_sdk_error<E, R>(err: &SdkError<E, R>, what: &str) -> ProviderError
    where
        E: StdError + aws_sdk_ecr::error::ProvideErrorMetadata + 'static,
        R: fmt::Debug + 'static,
    {
        let mut by_code = None;
        let mut by_connector = None;
        let mut by_io = None;
        let mut by_credentials = None;
        let mut source: Option<&(dyn StdError + 'static)> = Some(err);
        while let Some(e) = source {
            if by_code.is_none()
                && let Some(meta) = e.downcast_ref::<ErrorMetadata>()
                && let Some(code) = meta.code()
            {
                by_code = Some(category_of_code(code));
            }
            if by_connector.is_none()
                && let Some(c) = e.downcast_ref::<ConnectorError>()
                && (c.is_io() || c.is_timeout())
            {
                by_connector = Some(ErrorCategory::Unreachable);
            }
            if by_io.is_none() && e.downcast_ref::<std::io::Error>().is_some() {
                by_io = Some(ErrorCategory::LocalInput);
            }
            if by_credentials.is_none()
                && let Some(c) = e.downcast_ref::<CredentialsError>()
            {
                by_credentials = Some(match c {
                    CredentialsError::CredentialsNotLoaded(_)
                    | CredentialsError::InvalidConfiguration(_) => ErrorCategory::LocalInput,
                    CredentialsError::ProviderTimedOut(_) => ErrorCategory::Unreachable,
                    CredentialsError::ProviderError(_) => ErrorCategory::AuthDenied,
                    _ => ErrorCategory::BadResponse,
                });
            }
            source = e.source();
        }
        let service_code = match err {
            SdkError::ServiceError(ctx) => {
                aws_sdk_ecr::error::ProvideErrorMetadata::code(ctx.err()).map(category_of_code)
            }
            _ => None,
        };
        let fallback = match err {
            SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => ErrorCategory::Unreachable,
            _ => ErrorCategory::BadResponse,
        };
        let category = service_code
            .or(by_code)
            .or(by_connector)
            .or(by_io)
            .or(by_credentials)
            .unwrap_or(fallback);
        let mut detail = error_chain(err);
        truncate(&mut detail, 600);
        ProviderError::new(category, format!("{what} failed: {detail}"))
    }

    /// AWS error codes → category. Codes come from ECR, ECR Public and STS.
    pub(super) fn category_of_code(code: &str) -> ErrorCategory {
        match code {
            "AccessDenied"
            | "AccessDeniedException"
            | "UnrecognizedClientException"
            | "InvalidClientTokenId"
            | "ExpiredToken"
            | "ExpiredTokenException"
            | "InvalidIdentityToken"
            | "IDPRejectedClaim"
            | "InvalidSignatureException"
            | "SignatureDoesNotMatch"
            | "MissingAuthenticationToken"
            | "UnauthorizedOperation"
            | "RegionDisabledException" => ErrorCategory::AuthDenied,
            "Throttling"
            | "ThrottlingException"
            | "ThrottledException"
            | "TooManyRequestsException"
            | "RequestLimitExceeded"
            | "LimitExceededException" => ErrorCategory::Throttled,
            "IDPCommunicationError" | "ServiceUnavailable" | "ServiceUnavailableException" => {
                ErrorCategory::Unreachable
            }
            _ => ErrorCategory::BadResponse,
        }
    }

    /// The error and its sources, each by its `Display`. Never the `Debug` form (which the
    /// SDK's `DisplayErrorContext` appends): for a response error it holds the raw HTTP
    /// response, body included, and the body of a malformed success is the token itself.
    fn error_chain(err: &(dyn StdError + 'static)) -> String {
        let mut out = err.to_string();
        let mut source = err.source();
        while let Some(e) = source {
            let text = e.to_string();
            // Wrappers often repeat their source's text: say it once.
            if !out.ends_with(&text) {
                out.push_str(": ");
                out.push_str(&text);
            }
            source = e.source();
        }
        out
    }

    fn truncate(s: &mut String, max: usize) {
        if s.len() > max {
            let mut end = max;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s.truncate(end);
            s.push('…');
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn problems_of(yaml: &str, ecr_public: bool) -> Vec<String> {
        let mut p = FieldProblems::new(Path::new("r.yaml"));
        p.scoped("provider", |p| {
            if ecr_public {
                let c: EcrPublicConfig = serde_yaml_ng::from_str(yaml).expect("parses");
                c.validate(p);
            } else {
                let c: EcrConfig = serde_yaml_ng::from_str(yaml).expect("parses");
                c.validate(p);
            }
        });
        p.into_vec().iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_complete_ecr_config_has_no_problems() {
        let yaml = "regions: [eu-west-1, us-gov-west-1, cn-north-1, ap-southeast-5, il-central-1]\n\
                    roleArn: arn:aws:iam::123456789012:role/puller\n\
                    externalId: ext-42\nsessionName: pullkeeper-prod\n\
                    endpointUrl: http://127.0.0.1:5000\n";
        assert_eq!(problems_of(yaml, false), Vec::<String>::new());
    }

    #[test]
    fn region_names_that_cannot_exist_are_reported_by_index() {
        let yaml = "regions: [eu-west-1, EU-WEST-1, euwest1, us-east, eu-west-1, xx-west-1]";
        assert_eq!(
            problems_of(yaml, false),
            [
                "r.yaml: provider.regions[1]: `EU-WEST-1` is not an AWS region name (expected e.g. `eu-west-1`)",
                "r.yaml: provider.regions[2]: `euwest1` is not an AWS region name (expected e.g. `eu-west-1`)",
                "r.yaml: provider.regions[3]: `us-east` is not an AWS region name (expected e.g. `eu-west-1`)",
                "r.yaml: provider.regions[4]: `eu-west-1` is listed twice",
                "r.yaml: provider.regions[5]: `xx-west-1` is not an AWS region name (expected e.g. `eu-west-1`)",
            ]
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let yaml = "externalId: x\nsessionName: 'bad name'\nendpointUrl: 'ftp://x'";
        let got = problems_of(yaml, false);
        assert_eq!(got.len(), 6, "{got:#?}");
        assert!(got[0].contains("provider.regions: name at least one"));
        assert!(
            got.iter()
                .any(|p| p.contains("provider.externalId: only used"))
        );
        assert!(
            got.iter()
                .any(|p| p.contains("provider.sessionName: only used"))
        );
        assert!(
            got.iter()
                .any(|p| p.contains("provider.externalId: must be 2"))
        );
        assert!(
            got.iter()
                .any(|p| p.contains("provider.sessionName: must be 2"))
        );
        assert!(got.iter().any(|p| p.contains("provider.endpointUrl")));
    }

    #[test]
    fn role_arns_are_checked_for_shape() {
        for good in [
            "arn:aws:iam::123456789012:role/x",
            "arn:aws-cn:iam::123456789012:role/path/x",
            "arn:aws-us-gov:iam::123456789012:role/x",
        ] {
            assert!(is_role_arn(good), "{good}");
        }
        for bad in [
            "arn:aws:iam::123456789012:user/x",
            "arn:aws:iam::12345:role/x",
            "arn:aws:sts::123456789012:role/x",
            "role/x",
            "arn:aws:iam::123456789012:role/",
        ] {
            assert!(!is_role_arn(bad), "{bad}");
        }
        let got = problems_of("roleArn: arn:aws:iam::1:user/x", true);
        assert_eq!(got.len(), 1);
        assert!(got[0].starts_with("r.yaml: provider.roleArn: "));
    }

    #[test]
    fn listed_ecr_hosts_must_belong_to_a_fetched_region() {
        let c: EcrConfig = serde_yaml_ng::from_str("regions: [eu-west-1]").expect("parses");
        assert_eq!(
            c.server_problem("123456789012.dkr.ecr.eu-west-1.amazonaws.com"),
            None
        );
        assert_eq!(c.server_problem("mirror.example.com"), None);
        assert_eq!(
            c.server_problem("123456789012.dkr.ecr.us-east-1.amazonaws.com")
                .as_deref(),
            Some(
                "`123456789012.dkr.ecr.us-east-1.amazonaws.com` is an ECR registry in us-east-1, \
                 which `provider.regions` does not list"
            )
        );
        assert_eq!(
            ecr_host_region("123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn"),
            Some("cn-north-1")
        );
        assert_eq!(
            ecr_host_region("123456789012.dkr.ecr-fips.us-east-1.amazonaws.com:443"),
            Some("us-east-1")
        );
        let public = EcrPublicConfig::default();
        assert_eq!(public.server_problem("public.ecr.aws"), None);
        assert!(
            public
                .server_problem("123456789012.dkr.ecr.eu-west-1.amazonaws.com")
                .is_some()
        );
    }

    /// Every registry host form of every AWS partition (config/README.md, "ECR registry hosts").
    #[test]
    fn every_partitions_registry_host_forms_are_recognized() {
        let host = |account, region, fips, dual_stack| EcrHost {
            account,
            region,
            fips,
            dual_stack,
        };
        let a = "123456789012";
        for (server, want) in [
            // commercial: IPv4, FIPS, dual-stack, dual-stack FIPS
            (
                "123456789012.dkr.ecr.eu-west-1.amazonaws.com",
                host(a, "eu-west-1", false, false),
            ),
            (
                "123456789012.dkr.ecr-fips.us-east-1.amazonaws.com",
                host(a, "us-east-1", true, false),
            ),
            (
                "123456789012.dkr-ecr.us-east-2.on.aws",
                host(a, "us-east-2", false, true),
            ),
            (
                "123456789012.dkr-ecr-fips.us-east-2.on.aws",
                host(a, "us-east-2", true, true),
            ),
            (
                "123456789012.dkr.ecr.il-central-1.amazonaws.com",
                host(a, "il-central-1", false, false),
            ),
            // GovCloud
            (
                "123456789012.dkr.ecr.us-gov-west-1.amazonaws.com",
                host(a, "us-gov-west-1", false, false),
            ),
            (
                "123456789012.dkr.ecr-fips.us-gov-east-1.amazonaws.com",
                host(a, "us-gov-east-1", true, false),
            ),
            (
                "123456789012.dkr-ecr.us-gov-west-1.on.aws",
                host(a, "us-gov-west-1", false, true),
            ),
            // China
            (
                "123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn",
                host(a, "cn-north-1", false, false),
            ),
            (
                "123456789012.dkr.ecr.cn-northwest-1.amazonaws.com.cn",
                host(a, "cn-northwest-1", false, false),
            ),
            // European Sovereign Cloud
            (
                "123456789012.dkr.ecr.eusc-de-east-1.amazonaws.eu",
                host(a, "eusc-de-east-1", false, false),
            ),
            // the isolated partitions
            (
                "123456789012.dkr.ecr.us-iso-east-1.c2s.ic.gov",
                host(a, "us-iso-east-1", false, false),
            ),
            (
                "123456789012.dkr.ecr.us-isob-east-1.sc2s.sgov.gov",
                host(a, "us-isob-east-1", false, false),
            ),
            (
                "123456789012.dkr.ecr.eu-isoe-west-1.cloud.adc-e.uk",
                host(a, "eu-isoe-west-1", false, false),
            ),
            (
                "123456789012.dkr.ecr.us-isof-south-1.csp.hci.ic.gov",
                host(a, "us-isof-south-1", false, false),
            ),
            // with a port (reported separately in `servers`)
            (
                "123456789012.dkr.ecr.eu-west-1.amazonaws.com:443",
                host(a, "eu-west-1", false, false),
            ),
        ] {
            assert_eq!(EcrHost::parse(server), Some(want), "{server}");
        }
        for not_ecr in [
            "public.ecr.aws",
            "mirror.example.com",
            "12345.dkr.ecr.eu-west-1.amazonaws.com", // account not 12 digits
            "123456789012.dkr.ecr.eu-west-1.amazonaws.com.evil", // another domain
            "123456789012.dkr.ecr.cn-north-1.amazonaws.com", // China region, commercial suffix
            "123456789012.dkr.ecr.eu-west-1.amazonaws.com.cn", // commercial region, China suffix
            "123456789012.dkr.ecr.us-iso-east-1.amazonaws.com", // isolated region, public suffix
            "123456789012.dkr.ecr.us-east-1.c2s.ic.gov", // public region, isolated suffix
            "123456789012.dkr-ecr.cn-north-1.on.aws", // no documented China dual-stack form
            "123456789012.dkr-ecr.us-iso-east-1.on.aws",
            "123456789012.dkr.ecr-dualstack.us-east-1.amazonaws.com",
            "123456789012.api.ecr.us-east-1.amazonaws.com", // the API, not the registry
            "123456789012.dkr.ecr.euwest1.amazonaws.com",
        ] {
            assert_eq!(EcrHost::parse(not_ecr), None, "{not_ecr}");
        }
    }

    #[test]
    fn listed_ecr_hosts_of_every_form_are_checked_against_the_regions() {
        let c: EcrConfig =
            serde_yaml_ng::from_str("regions: [us-east-2, us-gov-west-1, eusc-de-east-1]")
                .expect("parses");
        for fetched in [
            "123456789012.dkr-ecr.us-east-2.on.aws",
            "123456789012.dkr-ecr-fips.us-east-2.on.aws",
            "123456789012.dkr.ecr-fips.us-gov-west-1.amazonaws.com",
            "123456789012.dkr.ecr.eusc-de-east-1.amazonaws.eu",
        ] {
            assert_eq!(c.server_problem(fetched), None, "{fetched}");
        }
        assert_eq!(
            c.server_problem("123456789012.dkr-ecr.eu-west-1.on.aws")
                .as_deref(),
            Some(
                "`123456789012.dkr-ecr.eu-west-1.on.aws` is an ECR registry in eu-west-1, \
                 which `provider.regions` does not list"
            )
        );
        assert!(
            c.server_problem("123456789012.dkr.ecr.us-isob-east-1.sc2s.sgov.gov")
                .is_some_and(|p| p.contains("us-isob-east-1"))
        );
        let port = c
            .server_problem("123456789012.dkr-ecr.us-east-2.on.aws:443")
            .expect("a port is a problem");
        assert!(port.contains("without a port"), "{port}");
        // ECR Public refuses every private form.
        let public = EcrPublicConfig::default();
        for private in [
            "123456789012.dkr-ecr.us-east-1.on.aws",
            "123456789012.dkr.ecr.us-iso-east-1.c2s.ic.gov",
        ] {
            assert!(public.server_problem(private).is_some(), "{private}");
        }
        // The partitions' regions are region names.
        let c: EcrConfig = serde_yaml_ng::from_str(
            "regions: [eusc-de-east-1, us-iso-east-1, us-isob-east-1, eu-isoe-west-1, us-isof-south-1]",
        )
        .expect("parses");
        let mut p = FieldProblems::new(Path::new("r.yaml"));
        c.validate(&mut p);
        assert!(p.is_empty(), "{:?}", p.into_vec());
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(serde_yaml_ng::from_str::<EcrConfig>("region: eu-west-1").is_err());
        assert!(serde_yaml_ng::from_str::<EcrPublicConfig>("regions: [eu-west-1]").is_err());
    }

    #[cfg(not(feature = "ecr"))]
    #[tokio::test]
    async fn building_without_the_feature_says_so() {
        use crate::providers::ErrorCategory;
        let err = EcrConfig::default().build().await.expect_err("no feature");
        assert_eq!(err.category, ErrorCategory::LocalInput);
        assert_eq!(
            err.message,
            "pullkeeper was built without the `ecr` feature"
        );
        let err = EcrPublicConfig::default()
            .build()
            .await
            .expect_err("no feature");
        assert_eq!(err.category, ErrorCategory::LocalInput);
    }

    #[cfg(feature = "ecr")]
    mod sdk {
        use super::super::client::*;
        use crate::providers::ErrorCategory;

        #[test]
        fn the_token_splits_at_the_first_colon() {
            assert_eq!(split_token("AWS:pa:ss"), Some(("AWS", "pa:ss")));
            assert_eq!(split_token("nocolon"), None);
        }

        #[test]
        fn proxy_endpoints_become_bare_hosts() {
            assert_eq!(
                host_of_endpoint("https://123456789012.dkr.ecr.eu-west-1.amazonaws.com").as_deref(),
                Some("123456789012.dkr.ecr.eu-west-1.amazonaws.com")
            );
            assert_eq!(
                host_of_endpoint("http://127.0.0.1:5000/").as_deref(),
                Some("127.0.0.1:5000")
            );
            assert_eq!(host_of_endpoint("https://"), None);
        }

        #[test]
        fn tokens_decode_without_leaking_into_errors() {
            let (user, pw) = decode_token(Some("QVdTOnNlY3JldA=="), "t").expect("decodes");
            assert_eq!((user.as_str(), pw.expose()), ("AWS", "secret"));
            // base64("AWSsecret"): no colon.
            let err = decode_token(Some("QVdTc2VjcmV0"), "t").expect_err("no colon");
            assert_eq!(err.category, ErrorCategory::BadResponse);
            assert!(!err.message.contains("QVdTc2VjcmV0") && !err.message.contains("secret"));
            let err = decode_token(Some("%%%"), "t").expect_err("not base64");
            assert!(!err.message.contains("%%%"));
        }

        #[test]
        fn aws_error_codes_map_to_bounded_categories() {
            assert_eq!(
                category_of_code("AccessDeniedException"),
                ErrorCategory::AuthDenied
            );
            assert_eq!(
                category_of_code("UnrecognizedClientException"),
                ErrorCategory::AuthDenied
            );
            assert_eq!(category_of_code("ExpiredToken"), ErrorCategory::AuthDenied);
            assert_eq!(
                category_of_code("ThrottlingException"),
                ErrorCategory::Throttled
            );
            assert_eq!(
                category_of_code("ServerException"),
                ErrorCategory::BadResponse
            );
        }
    }
}
