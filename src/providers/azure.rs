//! Azure Container Registry: an Entra ID access token (AKS workload identity, managed identity
//! through IMDS, or a client secret) exchanged at the registry's `/oauth2/exchange` for an ACR
//! refresh token, which is the pull password of the null-GUID user.

use std::path::PathBuf;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::Deserialize;

use super::web::{is_host_port, is_http_url, is_loopback_host, is_safe_url};
use super::{Provider, ProviderError, TextSource};
use crate::problems::FieldProblems;
use crate::sensitive::Sensitive;

/// The username ACR expects with a refresh token.
pub const ACR_USERNAME: &str = "00000000-0000-0000-0000-000000000000";

/// Default Entra authority; `AZURE_AUTHORITY_HOST` and then `authorityHost` override it.
pub const DEFAULT_AUTHORITY_HOST: &str = "https://login.microsoftonline.com/";

/// Default managed identity endpoint (IMDS).
pub const DEFAULT_IMDS_ENDPOINT: &str = "http://169.254.169.254/metadata/identity/oauth2/token";

/// Where the Entra token comes from.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum AzureSource {
    /// AKS workload identity: a projected, federated `ServiceAccount` token.
    WorkloadIdentity,
    /// The managed identity of the node (IMDS).
    ManagedIdentity,
    /// An app registration's client secret, from a file or an environment variable.
    ClientSecret,
    /// Credential-provider route: the pulling Pod's own ServiceAccount token, which the kubelet
    /// passes (KEP-4412), federated to the app registration that Pod's ServiceAccount names in
    /// [`CLIENT_ID_ANNOTATION`] (tenant: [`TENANT_ID_ANNOTATION`], else `tenantId`).
    PodWorkloadIdentity,
}

/// The ServiceAccount annotation naming the app registration (client id) a Pod pulls as, the
/// one AKS workload identity uses.
pub const CLIENT_ID_ANNOTATION: &str = "azure.workload.identity/client-id";
/// The ServiceAccount annotation naming that app's tenant, when it is not `tenantId`.
pub const TENANT_ID_ANNOTATION: &str = "azure.workload.identity/tenant-id";

/// `provider:` of `type: azure`.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AzureConfig {
    /// The registry host, e.g. `myregistry.azurecr.io`; the written Secret's server.
    #[serde(default)]
    pub registry: Option<String>,
    pub source: AzureSource,
    /// Entra tenant; defaults to `AZURE_TENANT_ID` (set by the workload identity webhook).
    pub tenant_id: Option<String>,
    /// Application (client) id; defaults to `AZURE_CLIENT_ID`. With a managed identity it picks a
    /// user-assigned identity.
    pub client_id: Option<String>,
    /// Federated token file (workload identity); defaults to `AZURE_FEDERATED_TOKEN_FILE`.
    pub token_file: Option<PathBuf>,
    /// Entra authority; defaults to `AZURE_AUTHORITY_HOST`, then the public cloud.
    pub authority_host: Option<String>,
    /// Managed identity token endpoint (managed identity).
    pub imds_endpoint: Option<String>,
    /// The client secret (client secret source): `file` or `env`.
    pub client_secret: Option<TextSource>,
    /// `https` (default), or `http` for a loopback test registry.
    pub registry_scheme: Option<String>,
}

impl AzureConfig {
    /// Checks the registry host, the scheme and that the fields fit the source; fields are
    /// relative to `provider`.
    // One check per field of the three identity sources, in the order the file reads them.
    #[allow(clippy::too_many_lines)]
    pub fn validate(&self, problems: &mut FieldProblems) {
        match self.registry.as_deref() {
            None | Some("") => problems.push(
                "registry",
                "required: the registry host, e.g. `myregistry.azurecr.io`",
            ),
            Some(host) if !is_host_port(host) => problems.push(
                "registry",
                format!("`{host}` is not a registry host (no scheme, no path)"),
            ),
            Some(_) => {}
        }
        match self.registry_scheme.as_deref() {
            None | Some("https") => {}
            Some("http") => {
                if self
                    .registry
                    .as_deref()
                    .is_some_and(|h| !is_loopback_host(h))
                {
                    problems.push(
                        "registryScheme",
                        "`http` is only allowed for a loopback registry; credentials would travel in clear",
                    );
                }
            }
            Some(other) => {
                problems.push(
                    "registryScheme",
                    format!("`{other}` is not `https` or `http`"),
                );
            }
        }
        for (field, value) in [("tenantId", &self.tenant_id), ("clientId", &self.client_id)] {
            if let Some(v) = value
                && !is_id(v)
            {
                problems.push(field, format!("`{v}` is not a tenant/client id or domain"));
            }
        }
        let url_field = |problems: &mut FieldProblems, field: &str, value: &Option<String>| {
            if let Some(v) = value
                && !url::Url::parse(v).is_ok_and(|u| is_safe_url(&u))
            {
                problems.push(
                    field,
                    format!("`{v}` is not an https URL (http only on loopback)"),
                );
            }
        };
        let unused = |problems: &mut FieldProblems, field: &str, set: bool, source: &str| {
            if set {
                problems.push(field, format!("not used with `source: {source}`"));
            }
        };
        match self.source {
            AzureSource::WorkloadIdentity => {
                match &self.token_file {
                    Some(p) if !p.is_absolute() => {
                        problems.push("tokenFile", "must be an absolute path");
                    }
                    Some(p) => problems.require_file("tokenFile", p),
                    None => {}
                }
                url_field(problems, "authorityHost", &self.authority_host);
                unused(
                    problems,
                    "imdsEndpoint",
                    self.imds_endpoint.is_some(),
                    "workloadIdentity",
                );
                unused(
                    problems,
                    "clientSecret",
                    self.client_secret.is_some(),
                    "workloadIdentity",
                );
            }
            AzureSource::ManagedIdentity => {
                if let Some(v) = &self.imds_endpoint
                    && !url::Url::parse(v).is_ok_and(|u| is_http_url(&u))
                {
                    problems.push("imdsEndpoint", format!("`{v}` is not an http(s) URL"));
                }
                unused(
                    problems,
                    "tokenFile",
                    self.token_file.is_some(),
                    "managedIdentity",
                );
                unused(
                    problems,
                    "authorityHost",
                    self.authority_host.is_some(),
                    "managedIdentity",
                );
                unused(
                    problems,
                    "clientSecret",
                    self.client_secret.is_some(),
                    "managedIdentity",
                );
            }
            AzureSource::PodWorkloadIdentity => {
                url_field(problems, "authorityHost", &self.authority_host);
                if self.client_id.is_some() {
                    problems.push(
                        "clientId",
                        format!(
                            "not used with `source: podWorkloadIdentity`: each Pod's ServiceAccount names its app in the annotation `{CLIENT_ID_ANNOTATION}`"
                        ),
                    );
                }
                for (field, set) in [
                    ("tokenFile", self.token_file.is_some()),
                    ("imdsEndpoint", self.imds_endpoint.is_some()),
                    ("clientSecret", self.client_secret.is_some()),
                ] {
                    unused(problems, field, set, "podWorkloadIdentity");
                }
            }
            AzureSource::ClientSecret => {
                match &self.client_secret {
                    None => problems.push("clientSecret", "required with `source: clientSecret`"),
                    Some(s) => s.validate(problems, "clientSecret", true),
                }
                if self.tenant_id.is_none() {
                    problems.push("tenantId", "required with `source: clientSecret`");
                }
                if self.client_id.is_none() {
                    problems.push("clientId", "required with `source: clientSecret`");
                }
                url_field(problems, "authorityHost", &self.authority_host);
                unused(
                    problems,
                    "tokenFile",
                    self.token_file.is_some(),
                    "clientSecret",
                );
                unused(
                    problems,
                    "imdsEndpoint",
                    self.imds_endpoint.is_some(),
                    "clientSecret",
                );
            }
        }
    }

    /// For an entry of the registry file's `servers`: a problem when it is another Azure
    /// container registry than `registry` (an ACR refresh token opens only its own registry).
    pub fn server_problem(&self, server: &str) -> Option<String> {
        let registry = self.registry.as_deref()?;
        let host = server
            .split(':')
            .next()
            .unwrap_or(server)
            .to_ascii_lowercase();
        let is_acr = [".azurecr.io", ".azurecr.cn", ".azurecr.us", ".azurecr.de"]
            .iter()
            .any(|suffix| host.ends_with(suffix));
        (is_acr && !host.eq_ignore_ascii_case(registry)).then(|| {
            format!("`{server}` is another Azure container registry than `provider.registry` ({registry}); its token would not work there")
        })
    }

    /// Builds the provider: resolves the identity settings from the config and the workload
    /// identity environment. No network call and no file read happen here.
    pub async fn build(&self) -> Result<Arc<dyn Provider>, ProviderError> {
        self.build_for_pod(None, &std::collections::BTreeMap::new())
            .await
    }

    /// Builds the provider for one credential-provider request: with `source:
    /// podWorkloadIdentity`, the pulling Pod's token and its ServiceAccount's annotations are
    /// the identity (without them, fetching says what is missing).
    pub async fn build_for_pod(
        &self,
        pod_token: Option<&Sensitive>,
        annotations: &std::collections::BTreeMap<String, String>,
    ) -> Result<Arc<dyn Provider>, ProviderError> {
        #[cfg(feature = "azure")]
        {
            client::build(self, pod_token, annotations).await
        }
        #[cfg(not(feature = "azure"))]
        {
            let _ = (pod_token, annotations);
            Err(ProviderError::new(
                super::ErrorCategory::LocalInput,
                "pullkeeper was built without the `azure` feature",
            ))
        }
    }
}

/// A GUID, or a tenant's domain name.
fn is_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

#[cfg(feature = "azure")]
mod client {
    //! Fetching: Entra token, then the ACR exchange.

    use std::fmt;
    use std::path::PathBuf;
    use std::sync::Arc;
    use std::time::Duration;

    use async_trait::async_trait;
    use chrono::Utc;
    use serde::Deserialize;

    use super::{
        ACR_USERNAME, AzureConfig, AzureSource, CLIENT_ID_ANNOTATION, DEFAULT_AUTHORITY_HOST,
        DEFAULT_IMDS_ENDPOINT, TENANT_ID_ANNOTATION,
    };
    use crate::credential::{Credential, Login};
    use crate::providers::web::{self, ClientOptions, json_answer, jwt_exp};
    use crate::providers::{
        ErrorCategory, Provider, ProviderError, TextSource, pod_annotation, pod_token,
    };
    use crate::sensitive::Sensitive;

    const TIMEOUT: Duration = Duration::from_secs(30);
    const ACR_SCOPE: &str = "https://containerregistry.azure.net/.default";
    const ACR_RESOURCE: &str = "https://containerregistry.azure.net";

    pub(super) async fn build(
        config: &AzureConfig,
        pod_token: Option<&Sensitive>,
        annotations: &std::collections::BTreeMap<String, String>,
    ) -> Result<Arc<dyn Provider>, ProviderError> {
        let local = |msg: &str| ProviderError::new(ErrorCategory::LocalInput, msg.to_string());
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let registry = config
            .registry
            .clone()
            .ok_or_else(|| local("no registry configured"))?;
        let pod_source = config.source == AzureSource::PodWorkloadIdentity;
        let tenant = annotations
            .get(TENANT_ID_ANNOTATION)
            .filter(|_| pod_source)
            .cloned()
            .or_else(|| config.tenant_id.clone())
            .or_else(|| env("AZURE_TENANT_ID"));
        let client_id = config.client_id.clone().or_else(|| env("AZURE_CLIENT_ID"));
        let authority = || {
            let host = config
                .authority_host
                .clone()
                .or_else(|| env("AZURE_AUTHORITY_HOST"))
                .unwrap_or_else(|| DEFAULT_AUTHORITY_HOST.to_string());
            format!("{}/", host.trim_end_matches('/'))
        };
        let token_url = |tenant: &Option<String>| -> Result<String, ProviderError> {
            let tenant = tenant
                .as_deref()
                .ok_or_else(|| local("no tenant: set provider.tenantId or AZURE_TENANT_ID"))?;
            Ok(format!("{}{tenant}/oauth2/v2.0/token", authority()))
        };
        let need_client_id = || {
            client_id
                .clone()
                .ok_or_else(|| local("no client id: set provider.clientId or AZURE_CLIENT_ID"))
        };
        let entra = match config.source {
            AzureSource::WorkloadIdentity => Entra::Federated {
                token_url: token_url(&tenant)?,
                client_id: need_client_id()?,
                token_file: config
                    .token_file
                    .clone()
                    .or_else(|| env("AZURE_FEDERATED_TOKEN_FILE").map(PathBuf::from))
                    .ok_or_else(|| {
                        local(
                            "no federated token file: set provider.tokenFile or AZURE_FEDERATED_TOKEN_FILE",
                        )
                    })?,
            },
            AzureSource::ManagedIdentity => Entra::Managed {
                endpoint: config
                    .imds_endpoint
                    .clone()
                    .unwrap_or_else(|| DEFAULT_IMDS_ENDPOINT.to_string()),
                client_id: client_id.clone(),
            },
            AzureSource::ClientSecret => Entra::Secret {
                token_url: token_url(&tenant)?,
                client_id: need_client_id()?,
                secret: config
                    .client_secret
                    .clone()
                    .ok_or_else(|| local("no client secret configured"))?,
            },
            // What is missing is said when fetching: the Secret route builds this file too.
            AzureSource::PodWorkloadIdentity => Entra::Pod {
                token_url: token_url(&tenant).map_err(|e| e.message),
                client_id: annotations.get(CLIENT_ID_ANNOTATION).cloned(),
                token: pod_token.cloned(),
            },
        };
        let scheme = config.registry_scheme.as_deref().unwrap_or("https");
        let http = web::client(ClientOptions::with_timeout(TIMEOUT)).await?;
        // IMDS is on the node's link: never through a proxy.
        let imds = web::client(ClientOptions {
            direct: true,
            ..ClientOptions::with_timeout(TIMEOUT)
        })
        .await?;
        Ok(Arc::new(AcrProvider {
            http,
            imds,
            exchange_url: format!("{scheme}://{registry}/oauth2/exchange"),
            registry,
            tenant,
            entra,
        }))
    }

    enum Entra {
        Federated {
            token_url: String,
            client_id: String,
            token_file: PathBuf,
        },
        Managed {
            endpoint: String,
            client_id: Option<String>,
        },
        Secret {
            token_url: String,
            client_id: String,
            secret: TextSource,
        },
        /// The pulling Pod's token and the app its ServiceAccount names.
        Pod {
            token_url: Result<String, String>,
            client_id: Option<String>,
            token: Option<Sensitive>,
        },
    }

    struct AcrProvider {
        http: reqwest::Client,
        imds: reqwest::Client,
        registry: String,
        exchange_url: String,
        tenant: Option<String>,
        entra: Entra,
    }

    impl fmt::Debug for AcrProvider {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let source = match self.entra {
                Entra::Federated { .. } => "workloadIdentity",
                Entra::Managed { .. } => "managedIdentity",
                Entra::Secret { .. } => "clientSecret",
                Entra::Pod { .. } => "podWorkloadIdentity",
            };
            f.debug_struct("AcrProvider")
                .field("registry", &self.registry)
                .field("source", &source)
                .finish_non_exhaustive()
        }
    }

    #[derive(Deserialize)]
    struct AccessToken {
        access_token: String,
    }

    #[derive(Deserialize)]
    struct RefreshToken {
        refresh_token: String,
    }

    #[async_trait]
    impl Provider for AcrProvider {
        async fn fetch(&self) -> Result<Credential, ProviderError> {
            let entra_token = self.entra_token().await?;
            let what = format!("the ACR token exchange of {}", self.registry);
            let mut form = vec![
                ("grant_type", "access_token"),
                ("service", self.registry.as_str()),
                ("access_token", entra_token.expose()),
            ];
            if let Some(tenant) = &self.tenant {
                form.push(("tenant", tenant.as_str()));
            }
            let resp = self
                .http
                .post(&self.exchange_url)
                .form(&form)
                .send()
                .await
                .map_err(|e| ProviderError::from_reqwest(e, &what))?;
            let refresh: RefreshToken = json_answer(resp, &what).await?;
            if refresh.refresh_token.trim().is_empty() {
                return Err(ProviderError::new(
                    ErrorCategory::BadResponse,
                    format!("{what} answered an empty refresh_token"),
                ));
            }
            let expires_at = jwt_exp(&refresh.refresh_token);
            Ok(Credential {
                logins: vec![Login {
                    server: Some(self.registry.clone()),
                    username: ACR_USERNAME.to_string(),
                    password: Sensitive::new(refresh.refresh_token),
                }],
                expires_at,
            })
        }
    }

    impl AcrProvider {
        /// The client-credentials request with a federated token as the client's assertion.
        fn federated(
            &self,
            token_url: &str,
            client_id: &str,
            assertion: &str,
        ) -> reqwest::RequestBuilder {
            self.http.post(token_url).form(&[
                ("grant_type", "client_credentials"),
                ("client_id", client_id),
                ("scope", ACR_SCOPE),
                (
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ),
                ("client_assertion", assertion),
            ])
        }

        /// The federated request with the pulling Pod's token, for the app its ServiceAccount
        /// names; what is missing is a local error naming it.
        fn for_pod(
            &self,
            token_url: &Result<String, String>,
            client_id: Option<&str>,
            token: Option<&Sensitive>,
        ) -> Result<reqwest::RequestBuilder, ProviderError> {
            let local = |m: String| ProviderError::new(ErrorCategory::LocalInput, m);
            let token = pod_token(
                token,
                "`source: podWorkloadIdentity`",
                "the audience api://AzureADTokenExchange",
            )?;
            let client_id = pod_annotation(
                client_id,
                CLIENT_ID_ANNOTATION,
                "no app registration to federate to",
            )?;
            if !super::is_id(client_id) {
                return Err(local(format!(
                    "annotation `{CLIENT_ID_ANNOTATION}` is `{client_id}`, not a client id"
                )));
            }
            let token_url = token_url.as_ref().map_err(|m| {
                local(format!(
                    "{m} (or annotate the ServiceAccount with `{TENANT_ID_ANNOTATION}`)"
                ))
            })?;
            Ok(self.federated(token_url, client_id, token.expose().trim()))
        }

        async fn entra_token(&self) -> Result<Sensitive, ProviderError> {
            let (what, request) = match &self.entra {
                Entra::Federated {
                    token_url,
                    client_id,
                    token_file,
                } => {
                    let local = |m: String| ProviderError::new(ErrorCategory::LocalInput, m);
                    let text = tokio::fs::read_to_string(token_file).await.map_err(|e| {
                        local(format!(
                            "cannot read the federated token file {}: {e}",
                            token_file.display()
                        ))
                    })?;
                    let assertion = text.trim();
                    if assertion.is_empty() {
                        return Err(local(format!(
                            "the federated token file {} is empty",
                            token_file.display()
                        )));
                    }
                    if let Some(exp) = jwt_exp(assertion)
                        && exp <= Utc::now()
                    {
                        return Err(local(format!(
                            "the federated token in {} expired at {}; is the projected token still refreshed?",
                            token_file.display(),
                            exp.to_rfc3339()
                        )));
                    }
                    (
                        "the Entra token endpoint",
                        self.federated(token_url, client_id, assertion),
                    )
                }
                Entra::Managed {
                    endpoint,
                    client_id,
                } => {
                    let mut query = vec![("api-version", "2018-02-01"), ("resource", ACR_RESOURCE)];
                    if let Some(id) = client_id {
                        query.push(("client_id", id.as_str()));
                    }
                    let req = self
                        .imds
                        .get(endpoint)
                        .header("Metadata", "true")
                        .query(&query);
                    ("the managed identity endpoint", req)
                }
                Entra::Pod {
                    token_url,
                    client_id,
                    token,
                } => (
                    "the Entra token endpoint",
                    self.for_pod(token_url, client_id.as_deref(), token.as_ref())?,
                ),
                Entra::Secret {
                    token_url,
                    client_id,
                    secret,
                } => {
                    let secret = secret.read().await?;
                    let req = self.http.post(token_url).form(&[
                        ("grant_type", "client_credentials"),
                        ("client_id", client_id.as_str()),
                        ("scope", ACR_SCOPE),
                        ("client_secret", secret.expose()),
                    ]);
                    ("the Entra token endpoint", req)
                }
            };
            let resp = request
                .send()
                .await
                .map_err(|e| ProviderError::from_reqwest(e, what))?;
            let token: AccessToken = json_answer(resp, what).await?;
            if token.access_token.trim().is_empty() {
                return Err(ProviderError::new(
                    ErrorCategory::BadResponse,
                    format!("{what} answered an empty access_token"),
                ));
            }
            Ok(Sensitive::new(token.access_token))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn problems_of(yaml: &str) -> Vec<String> {
        let c: AzureConfig = serde_yaml_ng::from_str(yaml).expect("parses");
        let mut p = FieldProblems::new(Path::new("a.yaml"));
        p.scoped("provider", |p| c.validate(p));
        p.into_vec().iter().map(ToString::to_string).collect()
    }

    #[test]
    fn each_source_validates_clean_when_complete() {
        assert!(problems_of("registry: myreg.azurecr.io\nsource: workloadIdentity").is_empty());
        assert!(
            problems_of(
                "registry: 127.0.0.1:5000\nregistryScheme: http\nsource: workloadIdentity\n\
                 tenantId: contoso.onmicrosoft.com\nclientId: 11111111-2222-3333-4444-555555555555\n\
                 tokenFile: /var/run/secrets/azure/tokens/azure-identity-token\n\
                 authorityHost: http://127.0.0.1:9000/"
            )
            .is_empty()
        );
        assert!(
            problems_of("registry: myreg.azurecr.io\nsource: managedIdentity\nimdsEndpoint: http://127.0.0.1:1/x")
                .is_empty()
        );
        assert!(
            problems_of(
                "registry: myreg.azurecr.io\nsource: clientSecret\ntenantId: t\nclientId: c\n\
                 clientSecret: {file: /s/secret}"
            )
            .is_empty()
        );
    }

    #[test]
    fn pod_workload_identity_takes_its_app_from_the_service_account_not_the_file() {
        assert!(problems_of("registry: myreg.azurecr.io\nsource: podWorkloadIdentity").is_empty());
        assert_eq!(
            problems_of(
                "registry: myreg.azurecr.io\nsource: podWorkloadIdentity\nclientId: c\ntokenFile: /t"
            ),
            [
                "a.yaml: provider.clientId: not used with `source: podWorkloadIdentity`: each Pod's ServiceAccount names its app in the annotation `azure.workload.identity/client-id`",
                "a.yaml: provider.tokenFile: not used with `source: podWorkloadIdentity`",
            ]
        );
    }

    #[test]
    fn a_missing_or_malformed_registry_is_named() {
        assert_eq!(
            problems_of("source: managedIdentity"),
            [
                "a.yaml: provider.registry: required: the registry host, e.g. `myregistry.azurecr.io`"
            ]
        );
        assert_eq!(
            problems_of("registry: https://myreg.azurecr.io\nsource: managedIdentity"),
            [
                "a.yaml: provider.registry: `https://myreg.azurecr.io` is not a registry host (no scheme, no path)"
            ]
        );
    }

    #[test]
    fn plain_http_is_refused_except_on_loopback() {
        let got = problems_of(
            "registry: myreg.azurecr.io\nregistryScheme: http\nsource: managedIdentity",
        );
        assert_eq!(got.len(), 1);
        assert!(got[0].starts_with("a.yaml: provider.registryScheme: `http` is only allowed"));
        let got = problems_of(
            "registry: myreg.azurecr.io\nsource: workloadIdentity\nauthorityHost: http://login.example.com/",
        );
        assert_eq!(got.len(), 1);
        assert!(got[0].starts_with("a.yaml: provider.authorityHost: "));
    }

    #[test]
    fn a_client_secret_source_reports_every_missing_field() {
        assert_eq!(
            problems_of(
                "registry: r.azurecr.io\nsource: clientSecret\ntokenFile: /t\nimdsEndpoint: http://127.0.0.1/"
            ),
            [
                "a.yaml: provider.clientSecret: required with `source: clientSecret`",
                "a.yaml: provider.tenantId: required with `source: clientSecret`",
                "a.yaml: provider.clientId: required with `source: clientSecret`",
                "a.yaml: provider.tokenFile: not used with `source: clientSecret`",
                "a.yaml: provider.imdsEndpoint: not used with `source: clientSecret`",
            ]
        );
        let got = problems_of(
            "registry: r.azurecr.io\nsource: clientSecret\ntenantId: t\nclientId: c\nclientSecret: {value: hunter2}",
        );
        assert!(
            got.iter()
                .any(|p| p.contains("provider.clientSecret.value: secrets are not accepted"))
        );
        assert!(got.iter().all(|p| !p.contains("hunter2")));
    }

    #[test]
    fn listed_acr_hosts_must_be_the_configured_registry() {
        let c: AzureConfig =
            serde_yaml_ng::from_str("registry: myreg.azurecr.io\nsource: managedIdentity")
                .expect("parses");
        assert_eq!(c.server_problem("myreg.azurecr.io"), None);
        assert_eq!(c.server_problem("MyReg.azurecr.io"), None);
        assert_eq!(c.server_problem("mirror.example.com"), None);
        assert!(
            c.server_problem("other.azurecr.io")
                .is_some_and(|m| m.contains("other.azurecr.io") && m.contains("myreg.azurecr.io"))
        );
    }

    #[cfg(not(feature = "azure"))]
    #[tokio::test]
    async fn building_without_the_feature_says_so() {
        let c: AzureConfig =
            serde_yaml_ng::from_str("registry: r.azurecr.io\nsource: managedIdentity")
                .expect("parses");
        let err = c.build().await.expect_err("no feature");
        assert_eq!(err.category, crate::providers::ErrorCategory::LocalInput);
        assert_eq!(
            err.message,
            "pullkeeper was built without the `azure` feature"
        );
    }
}
