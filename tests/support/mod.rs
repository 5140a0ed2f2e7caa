//! Shared helpers for pullkeeper's integration tests, which run against the real test platform
//! started by `tests/cluster/up DIR` and `tests/peers/up DIR` (see tests/cluster/README.md; `make
//! test` does all of it). Use from a test file with `mod support;`.
//!
//! The platform is described by environment variables (the "env contract", written to DIR/env and
//! DIR/peers.env). A missing variable is a broken setup, never a reason to skip: every accessor
//! panics naming the variable.
//!
//! Each test gets its own throw-away namespaces from [`TestNamespaces`], so tests run in parallel.

// Every integration test binary compiles this module; each uses only part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::GroupVersionKind;
use kube::discovery::Scope;
use kube::{Client, Config};
use serde::Deserialize as _;

/// Label on every namespace a test creates (so leftovers can be found: `-l pullkeeper.dev/test=true`).
pub const TEST_LABEL: &str = "pullkeeper.dev/test";
/// Namespace and `ServiceAccount` that `deploy/kustomize/base/rbac.yaml` grants pullkeeper's rights to.
pub const PULLKEEPER_NAMESPACE: &str = "pullkeeper";
pub const PULLKEEPER_SERVICE_ACCOUNT: &str = "pullkeeper";
/// Field manager of everything the test support applies.
const FIELD_MANAGER: &str = "pullkeeper-tests";

// ---------------------------------------------------------------------------------------------
// The env contract
// ---------------------------------------------------------------------------------------------

/// Reads a variable of the test platform's env contract, panicking with a clear message when it is
/// missing: integration tests never skip.
pub fn env(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "environment variable {name} is not set: integration tests need the test platform. \
             Run `make test`, or start it by hand: `tests/cluster/up DIR && tests/peers/up DIR && \
             . DIR/env && . DIR/peers.env` (stop it with tests/peers/down DIR; tests/cluster/down DIR)"
        ),
    }
}

/// `PK_TEST_DIR`: the platform's directory (logs, kubeconfigs, scratch files).
pub fn test_dir() -> PathBuf {
    PathBuf::from(env("PK_TEST_DIR"))
}

/// `PK_MOTO_URL`: `moto_server`'s base URL (ECR and STS), e.g. `http://127.0.0.1:PORT`.
pub fn moto_url() -> String {
    env("PK_MOTO_URL")
}

/// `PK_TEST_IMAGE`: `repository:tag` of the small image present in both registries.
pub fn test_image() -> String {
    env("PK_TEST_IMAGE")
}

/// A test registry: plain HTTP on loopback (clients need `--tls-verify=false`).
#[derive(Debug, Clone)]
pub struct Registry {
    /// `127.0.0.1:PORT`, exactly as an `auths` key and an image reference's host.
    pub host: String,
    pub username: String,
    pub password: String,
}

impl Registry {
    /// Debian docker-registry with HTTP Basic auth (bcrypt htpasswd): `PK_REGISTRY_HTPASSWD*`.
    pub fn htpasswd() -> Self {
        Self::from_env("PK_REGISTRY_HTPASSWD")
    }

    /// Debian docker-registry with Docker token auth against `tests/peers/token_server.py`:
    /// `PK_REGISTRY_TOKEN*`.
    pub fn token() -> Self {
        Self::from_env("PK_REGISTRY_TOKEN")
    }

    fn from_env(prefix: &str) -> Self {
        Self {
            host: env(prefix),
            username: env(&format!("{prefix}_USER")),
            password: env(&format!("{prefix}_PASSWORD")),
        }
    }

    /// `HOST/repository:tag` of the test image in this registry.
    pub fn test_image_ref(&self) -> String {
        format!("{}/{}", self.host, test_image())
    }

    /// A `.dockerconfigjson` holding this registry's correct credentials.
    pub fn dockerconfigjson(&self) -> String {
        dockerconfigjson(&self.host, &self.username, &self.password)
    }
}

/// `{"auths":{HOST:{"username","password","auth"}}}` with padded base64 `auth`, as a
/// `kubernetes.io/dockerconfigjson` Secret (and skopeo's `--authfile`) expects.
pub fn dockerconfigjson(host: &str, username: &str, password: &str) -> String {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
    serde_json::json!({
        "auths": { host: { "username": username, "password": password, "auth": auth } }
    })
    .to_string()
}

/// A fresh file name under `PK_TEST_DIR/<kind>/` (the directory is created).
pub fn scratch_path(kind: &str, suffix: &str) -> PathBuf {
    let dir = test_dir().join(kind);
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir.join(format!("{}{suffix}", random_suffix(10)))
}

/// Writes `contents` to a fresh file under `PK_TEST_DIR/<kind>/` and returns its path.
pub fn write_scratch_file(kind: &str, suffix: &str, contents: &str) -> PathBuf {
    let path = scratch_path(kind, suffix);
    std::fs::write(&path, contents)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    path
}

fn random_suffix(len: usize) -> String {
    use rand::Rng as _;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Kubernetes clients
// ---------------------------------------------------------------------------------------------

fn admin_kubeconfig() -> Kubeconfig {
    let path = env("KUBECONFIG");
    Kubeconfig::read_from(&path).unwrap_or_else(|e| panic!("cannot read KUBECONFIG={path}: {e}"))
}

async fn client_from_kubeconfig(kubeconfig: Kubeconfig, what: &str) -> Client {
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("invalid kubeconfig for {what}: {e}"));
    Client::try_from(config).unwrap_or_else(|e| panic!("cannot build a client for {what}: {e}"))
}

/// A client with the admin identity of `KUBECONFIG` (group `system:masters`).
pub async fn admin_client() -> Client {
    client_from_kubeconfig(admin_kubeconfig(), "the admin (KUBECONFIG)").await
}

/// Writes a kubeconfig with the admin's server and CA but only `token` as the identity, so a
/// subprocess (e.g. the pullkeeper binary) runs with exactly that token's rights.
pub fn kubeconfig_for_token(token: &str) -> PathBuf {
    let admin = admin_kubeconfig();
    let context_name = admin
        .current_context
        .clone()
        .expect("the admin kubeconfig has no current-context");
    let cluster_name = admin
        .contexts
        .iter()
        .find(|c| c.name == context_name)
        .and_then(|c| c.context.as_ref())
        .map(|c| c.cluster.clone())
        .expect("the admin kubeconfig's current context names no cluster");
    let cluster = admin
        .clusters
        .iter()
        .find(|c| c.name == cluster_name)
        .and_then(|c| c.cluster.clone())
        .expect("the admin kubeconfig's cluster is missing");
    let server = cluster
        .server
        .expect("the admin kubeconfig's cluster has no server");
    let ca_data = match (
        cluster.certificate_authority_data,
        cluster.certificate_authority,
    ) {
        (Some(data), _) => data,
        (None, Some(path)) => base64::engine::general_purpose::STANDARD.encode(
            std::fs::read(&path)
                .unwrap_or_else(|e| panic!("cannot read the cluster CA {path}: {e}")),
        ),
        (None, None) => panic!("the admin kubeconfig's cluster has no CA"),
    };
    let kubeconfig = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "pk-test", "cluster": {
            "server": server, "certificate-authority-data": ca_data}}],
        "users": [{"name": "token", "user": {"token": token}}],
        "contexts": [{"name": "pk-test", "context": {"cluster": "pk-test", "user": "token"}}],
        "current-context": "pk-test",
    });
    let text = serde_yaml_ng::to_string(&kubeconfig).expect("kubeconfig serializes");
    write_scratch_file("kubeconfigs", ".yaml", &text)
}

/// A client whose only identity is `token` (built from [`kubeconfig_for_token`]).
pub async fn client_for_token(token: &str) -> Client {
    let path = kubeconfig_for_token(token);
    let kubeconfig = Kubeconfig::read_from(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    client_from_kubeconfig(kubeconfig, "a token identity").await
}

/// Mints a token for `ServiceAccount` `ns/sa` with the `TokenRequest` API (valid for one hour).
pub async fn sa_token(client: &Client, ns: &str, sa: &str) -> String {
    let request = TokenRequest {
        metadata: ObjectMeta::default(),
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(3600),
            ..TokenRequestSpec::default()
        }),
        status: None,
    };
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let response = api
        .create_token_request(sa, &PostParams::default(), &request)
        .await
        .unwrap_or_else(|e| panic!("TokenRequest for ServiceAccount {ns}/{sa} failed: {e}"));
    response
        .status
        .and_then(|s| s.token)
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| panic!("TokenRequest for {ns}/{sa} returned no token"))
}

/// True when `err` is the API server's 403 Forbidden.
pub fn is_forbidden(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == 403)
}

/// True when `err` is the API server's 404 Not Found.
pub fn is_not_found(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == 404)
}

// ---------------------------------------------------------------------------------------------
// Throw-away namespaces
// ---------------------------------------------------------------------------------------------

/// Creates uniquely named namespaces for one test (`pk-<test>-<random>`, labelled
/// `pullkeeper.dev/test=true`) and deletes them at the end: call `cleanup().await` at the end of
/// the test; if the test panics first, `Drop` still deletes them (best effort, on its own thread).
pub struct TestNamespaces {
    client: Client,
    test: String,
    created: Mutex<Vec<String>>,
}

impl TestNamespaces {
    /// `test` names the test (it becomes part of the namespace names and a label).
    pub fn new(client: Client, test: &str) -> Self {
        let test: String = test
            .to_ascii_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let test = test.trim_matches('-').chars().take(40).collect::<String>();
        Self {
            client,
            test: test.trim_end_matches('-').to_string(),
            created: Mutex::new(Vec::new()),
        }
    }

    /// Creates a new namespace and returns its name.
    pub async fn create(&self) -> String {
        self.create_labelled(BTreeMap::new()).await
    }

    /// Creates a new namespace with extra labels and returns its name.
    pub async fn create_labelled(&self, labels: BTreeMap<String, String>) -> String {
        let name = format!("pk-{}-{}", self.test, random_suffix(6));
        let mut all = labels;
        all.insert(TEST_LABEL.to_string(), "true".to_string());
        all.insert(format!("{TEST_LABEL}-name"), self.test.clone());
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(all),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        // Record before creating, so a namespace is cleaned up even if the create response is lost.
        self.created
            .lock()
            .expect("namespace list lock")
            .push(name.clone());
        Api::<Namespace>::all(self.client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("creating namespace {name} failed: {e}"));
        name
    }

    /// The names created so far.
    pub fn names(&self) -> Vec<String> {
        self.created.lock().expect("namespace list lock").clone()
    }

    /// Deletes every namespace this helper created (the namespace controller finishes the job).
    pub async fn cleanup(self) {
        let names = std::mem::take(&mut *self.created.lock().expect("namespace list lock"));
        delete_namespaces(&self.client, &names).await;
    }
}

async fn delete_namespaces(client: &Client, names: &[String]) {
    let api = Api::<Namespace>::all(client.clone());
    for name in names {
        match api.delete(name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => panic!("deleting namespace {name} failed: {e}"),
        }
    }
}

impl Drop for TestNamespaces {
    fn drop(&mut self) {
        let names = match self.created.lock() {
            Ok(mut guard) => std::mem::take(&mut *guard),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        };
        if names.is_empty() {
            return;
        }
        // We may be inside the test's runtime (which a blocked thread would stall), so use a
        // fresh thread with its own runtime and its own client.
        let outcome = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for namespace cleanup");
            runtime.block_on(async {
                let client = admin_client().await;
                delete_namespaces(&client, &names).await;
            });
        })
        .join();
        if outcome.is_err() && !std::thread::panicking() {
            eprintln!("warning: best-effort cleanup of test namespaces failed");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// pullkeeper's RBAC from deploy/
// ---------------------------------------------------------------------------------------------

/// The RBAC manifest the daemon ships with.
pub const RBAC_MANIFEST: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/kustomize/base/rbac.yaml"
);

/// The admission guardrails the daemon ships with (bound to its ServiceAccount).
pub const ADMISSION_POLICY_MANIFEST: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/kustomize/base/admission-policy.yaml"
);

/// Applies `deploy/kustomize/base/rbac.yaml` (creating namespace `pullkeeper` first) with
/// server-side apply, idempotently (safe from parallel tests), and waits until the API server's
/// authorizer has seen every binding in it (checked with `SubjectAccessReviews`), so a token minted
/// right after is authorized as the manifest says.
pub async fn install_rbac(client: &Client) {
    let apply = PatchParams::apply(FIELD_MANAGER).force();
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(PULLKEEPER_NAMESPACE.to_string()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    let ns_json = serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": ns.metadata,
    });
    Api::<Namespace>::all(client.clone())
        .patch(PULLKEEPER_NAMESPACE, &apply, &Patch::Apply(&ns_json))
        .await
        .unwrap_or_else(|e| panic!("applying namespace {PULLKEEPER_NAMESPACE} failed: {e}"));

    let mut objects = Vec::new();
    for manifest in [RBAC_MANIFEST, ADMISSION_POLICY_MANIFEST] {
        let text = std::fs::read_to_string(manifest)
            .unwrap_or_else(|e| panic!("cannot read {manifest}: {e}"));
        objects.extend(parse_manifest(&text));
    }
    apply_objects(client, &objects).await;
    wait_until_bindings_authorize(client, &objects).await;
}

/// The other identity tests run the daemon as (tests/recovery.rs: the base role plus the
/// optional pod-recovery one).
pub const RECOVERY_SERVICE_ACCOUNT: &str = "pullkeeper-recovery";

/// Applies the shipped admission policy again for another of pullkeeper's identities (same
/// validations, matched to `system:serviceaccount:NS:NAME`, named after it), as an installation
/// under that name would have it.
pub async fn install_policy_for(client: &Client, namespace: &str, name: &str) {
    let text = std::fs::read_to_string(ADMISSION_POLICY_MANIFEST)
        .unwrap_or_else(|e| panic!("cannot read {ADMISSION_POLICY_MANIFEST}: {e}"))
        .replace(
            "system:serviceaccount:pullkeeper:pullkeeper",
            &format!("system:serviceaccount:{namespace}:{name}"),
        )
        .replace("pullkeeper-guardrails", &format!("{name}-guardrails"));
    apply_objects(client, &parse_manifest(&text)).await;
}

/// Grants pullkeeper's ServiceAccounts the Secret verbs on these names, as a user adds them to
/// the shipped role's `resourceNames`: a ClusterRole and binding per name (tests running in
/// parallel share names, and each applies the same objects), then waits until the authorizer
/// agrees.
pub async fn grant_secret_names(client: &Client, names: &[String]) {
    for name in names {
        let object = format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: pullkeeper-test-secret-{name}\n\
             rules:\n  - apiGroups: [\"\"]\n    resources: [\"secrets\"]\n    resourceNames: [\"{name}\"]\n    verbs: [\"get\", \"list\", \"watch\", \"patch\", \"delete\"]\n\
             ---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata:\n  name: pullkeeper-test-secret-{name}\n\
             roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: pullkeeper-test-secret-{name}}}\n\
             subjects: [{{kind: ServiceAccount, name: {PULLKEEPER_SERVICE_ACCOUNT}, namespace: {PULLKEEPER_NAMESPACE}}}, \
             {{kind: ServiceAccount, name: {RECOVERY_SERVICE_ACCOUNT}, namespace: {PULLKEEPER_NAMESPACE}}}]\n"
        );
        let objects = parse_manifest(&object);
        apply_objects(client, &objects).await;
        wait_until_bindings_authorize(client, &objects).await;
    }
}

/// Applies objects by server-side apply (cluster-scoped, or in their namespace).
async fn apply_objects(client: &Client, objects: &[DynamicObject]) {
    let apply = PatchParams::apply(FIELD_MANAGER).force();
    for obj in objects {
        let types = obj
            .types
            .as_ref()
            .unwrap_or_else(|| panic!("{RBAC_MANIFEST}: an object without apiVersion/kind"));
        let gvk = GroupVersionKind::try_from(types)
            .unwrap_or_else(|e| panic!("{RBAC_MANIFEST}: bad apiVersion/kind: {e}"));
        let name = obj
            .metadata
            .name
            .clone()
            .unwrap_or_else(|| panic!("{RBAC_MANIFEST}: a {} without a name", gvk.kind));
        let (resource, caps) = kube::discovery::pinned_kind(client, &gvk)
            .await
            .unwrap_or_else(|e| panic!("the API server does not serve {gvk:?}: {e}"));
        let api: Api<DynamicObject> = if caps.scope == Scope::Namespaced {
            let ns = obj
                .metadata
                .namespace
                .as_deref()
                .unwrap_or(PULLKEEPER_NAMESPACE);
            Api::namespaced_with(client.clone(), ns, &resource)
        } else {
            Api::all_with(client.clone(), &resource)
        };
        api.patch(&name, &apply, &Patch::Apply(obj))
            .await
            .unwrap_or_else(|e| panic!("applying {} {name} failed: {e}", gvk.kind));
    }
}

fn parse_manifest(text: &str) -> Vec<DynamicObject> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| {
            serde_yaml_ng::Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{RBAC_MANIFEST} is not valid YAML: {e}"))
        })
        .filter(|value| !value.is_null())
        .map(|value| {
            serde_yaml_ng::from_value::<DynamicObject>(value)
                .unwrap_or_else(|e| panic!("{RBAC_MANIFEST}: not a Kubernetes object: {e}"))
        })
        .collect()
}

/// RBAC is enforced from informer caches: a fresh binding takes a moment to count. For every
/// `ServiceAccount` subject of every binding in `objects`, and every rule of the role it binds, asks
/// the authorizer (`SubjectAccessReview`) until the first verb on the first resource is allowed.
async fn wait_until_bindings_authorize(client: &Client, objects: &[DynamicObject]) {
    let kind_of = |o: &DynamicObject| o.types.as_ref().map(|t| t.kind.clone()).unwrap_or_default();
    for binding in objects
        .iter()
        .filter(|o| matches!(kind_of(o).as_str(), "RoleBinding" | "ClusterRoleBinding"))
    {
        let binding_ns = if kind_of(binding) == "RoleBinding" {
            Some(
                binding
                    .metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| PULLKEEPER_NAMESPACE.to_string()),
            )
        } else {
            None
        };
        let role_kind = binding.data["roleRef"]["kind"].as_str().unwrap_or_default();
        let role_name = binding.data["roleRef"]["name"].as_str().unwrap_or_default();
        let Some(role) = objects
            .iter()
            .find(|o| kind_of(o) == role_kind && o.metadata.name.as_deref() == Some(role_name))
        else {
            continue; // binds a role defined elsewhere (e.g. a built-in one)
        };
        let subjects = binding.data["subjects"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for subject in subjects
            .iter()
            .filter(|s| s["kind"].as_str() == Some("ServiceAccount"))
        {
            let user = format!(
                "system:serviceaccount:{}:{}",
                subject["namespace"]
                    .as_str()
                    .or(binding_ns.as_deref())
                    .unwrap_or(PULLKEEPER_NAMESPACE),
                subject["name"].as_str().unwrap_or_default()
            );
            for rule in role.data["rules"].as_array().cloned().unwrap_or_default() {
                let first = |field: &str| {
                    rule[field]
                        .as_array()
                        .and_then(|a| a.first())
                        .and_then(|v| v.as_str())
                        .map(str::to_string)
                };
                let (Some(verb), Some(resource)) = (first("verbs"), first("resources")) else {
                    continue;
                };
                let attrs = ResourceAttributes {
                    namespace: binding_ns.clone(),
                    verb: Some(verb),
                    group: first("apiGroups"),
                    resource: Some(resource),
                    // A rule by name grants nothing nameless.
                    name: first("resourceNames"),
                    ..ResourceAttributes::default()
                };
                wait_for_allowed(client, &user, attrs).await;
            }
        }
    }
}

async fn wait_for_allowed(client: &Client, user: &str, attrs: ResourceAttributes) {
    let api = Api::<SubjectAccessReview>::all(client.clone());
    let review = SubjectAccessReview {
        metadata: ObjectMeta::default(),
        spec: SubjectAccessReviewSpec {
            user: Some(user.to_string()),
            groups: Some(vec![
                "system:serviceaccounts".to_string(),
                "system:authenticated".to_string(),
            ]),
            resource_attributes: Some(attrs.clone()),
            ..SubjectAccessReviewSpec::default()
        },
        status: None,
    };
    let what = format!("RBAC to allow {user} {attrs:?}");
    wait_for_named(&what, Duration::from_secs(30), || {
        let api = api.clone();
        let review = review.clone();
        async move {
            match api.create(&PostParams::default(), &review).await {
                Ok(r) if r.status.as_ref().is_some_and(|s| s.allowed) => Ok(()),
                Ok(r) => Err(format!("not allowed yet: {:?}", r.status)),
                Err(e) => Err(e.to_string()),
            }
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// skopeo
// ---------------------------------------------------------------------------------------------

/// Pulls `image_ref` (`HOST/repository:tag`, plain HTTP on loopback) with skopeo using only the
/// credentials in `authfile` (a dockerconfigjson), into a throw-away OCI layout. `Err` carries
/// skopeo's message (for a refused login it contains "unauthorized").
pub async fn skopeo_pull(image_ref: &str, authfile: &Path) -> Result<(), String> {
    let dest = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
    let mut cmd = tokio::process::Command::new("skopeo");
    if let Ok(policy) = std::env::var("PK_SKOPEO_POLICY") {
        cmd.arg("--policy").arg(policy);
    }
    cmd.args(["copy", "--quiet", "--src-tls-verify=false", "--authfile"])
        .arg(authfile)
        .arg(format!("docker://{image_ref}"))
        .arg(format!("oci:{}:pulled", dest.path().display()))
        .env_remove("REGISTRY_AUTH_FILE")
        .kill_on_drop(true);
    let output = cmd.output().await.unwrap_or_else(|e| {
        panic!("cannot run skopeo (is it installed? make test installs it): {e}")
    });
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "skopeo copy docker://{image_ref} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Polling
// ---------------------------------------------------------------------------------------------

/// What a polled condition returns: `true`/`Some`/`Ok` means done.
pub trait Poll {
    type Output;
    /// `Ok(value)` when the condition holds, else `Err(why not, for the timeout message)`.
    fn into_result(self) -> Result<Self::Output, String>;
}

impl Poll for bool {
    type Output = ();
    fn into_result(self) -> Result<(), String> {
        if self {
            Ok(())
        } else {
            Err("condition was false".to_string())
        }
    }
}

impl<T> Poll for Option<T> {
    type Output = T;
    fn into_result(self) -> Result<T, String> {
        self.ok_or_else(|| "condition returned None".to_string())
    }
}

impl<T, E: std::fmt::Display> Poll for Result<T, E> {
    type Output = T;
    fn into_result(self) -> Result<T, String> {
        self.map_err(|e| e.to_string())
    }
}

/// Polls `check` every 100 ms until it holds, returning its value; panics after `timeout` with the
/// last reason it did not hold. `timeout` is a liveness bound, not a performance assertion: pick a
/// generous one.
pub async fn wait_for<F, Fut, P>(timeout: Duration, check: F) -> P::Output
where
    F: FnMut() -> Fut,
    Fut: Future<Output = P>,
    P: Poll,
{
    wait_for_named("condition", timeout, check).await
}

/// [`wait_for`] with a description of what is awaited, for the panic message.
pub async fn wait_for_named<F, Fut, P>(what: &str, timeout: Duration, mut check: F) -> P::Output
where
    F: FnMut() -> Fut,
    Fut: Future<Output = P>,
    P: Poll,
{
    // Real time, not tokio's clock: a test with a paused clock must not time out while the API
    // server answers.
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let last = match check().await.into_result() {
            Ok(v) => return v,
            Err(why) => why,
        };
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}; last: {last}"
        );
        // A real-time pause that neither blocks the runtime nor depends on its (maybe paused) clock.
        tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_millis(100)))
            .await
            .expect("sleep thread");
    }
}

// ---------------------------------------------------------------------------------------------
// The test node (tests/cluster/up starts one: containerd, runc, the kubelet, kube-scheduler)
// ---------------------------------------------------------------------------------------------

/// `PK_NODE_NAME`: the name of the one Node of the test platform.
pub fn node_name() -> String {
    env("PK_NODE_NAME")
}

/// `PK_NODE_POD_LOGS_DIR`: the kubelet's `podLogsDir`. Container logs are read from here, never
/// through `kubectl logs` (which would dial the node's address).
pub fn node_pod_logs_dir() -> PathBuf {
    PathBuf::from(env("PK_NODE_POD_LOGS_DIR"))
}

/// `PK_TEST_IMAGE_DIGEST`: the test image's manifest digest as the registries serve it.
pub fn test_image_digest() -> String {
    env("PK_TEST_IMAGE_DIGEST")
}

/// A Pod spec for the test node: host network (the test image needs none), one container per
/// `(name, image)`, `imagePullPolicy` as given. `node_name: None` leaves placement to the
/// scheduler.
pub fn node_pod_spec(
    containers: &[(&str, &str)],
    pull_policy: &str,
    node_name: Option<&str>,
) -> serde_json::Value {
    let containers: Vec<serde_json::Value> = containers
        .iter()
        .map(|(name, image)| {
            serde_json::json!({"name": name, "image": image, "imagePullPolicy": pull_policy})
        })
        .collect();
    let mut spec = serde_json::json!({
        "hostNetwork": true,
        "terminationGracePeriodSeconds": 5,
        "containers": containers,
    });
    if let Some(node) = node_name {
        spec["nodeName"] = serde_json::Value::from(node);
    }
    spec
}

/// Creates Pod `name` in `ns` with [`node_pod_spec`] on the test node, and returns it.
pub async fn create_node_pod(
    client: &Client,
    ns: &str,
    name: &str,
    containers: &[(&str, &str)],
    pull_policy: &str,
) -> k8s_openapi::api::core::v1::Pod {
    use k8s_openapi::api::core::v1::Pod;
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": node_pod_spec(containers, pull_policy, Some(&node_name())),
    }))
    .expect("a valid Pod");
    Api::<Pod>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap_or_else(|e| panic!("creating Pod {ns}/{name} failed: {e}"))
}

/// The Events whose `involvedObject.uid` is `uid` (a recreated Pod's name matches old Events).
pub async fn events_of(
    client: &Client,
    ns: &str,
    uid: &str,
) -> Vec<k8s_openapi::api::core::v1::Event> {
    use k8s_openapi::api::core::v1::Event;
    Api::<Event>::namespaced(client.clone(), ns)
        .list(&kube::api::ListParams::default().fields(&format!("involvedObject.uid={uid}")))
        .await
        .unwrap_or_else(|e| panic!("listing the Events of {uid} in {ns} failed: {e}"))
        .items
}

/// One line on where a Pod stands: phase and each container's state, for timeout messages.
pub fn pod_summary(pod: &k8s_openapi::api::core::v1::Pod) -> String {
    let status = pod.status.clone().unwrap_or_default();
    let containers: Vec<String> = status
        .container_statuses
        .unwrap_or_default()
        .iter()
        .map(|c| {
            let state = c.state.clone().unwrap_or_default();
            if state.running.is_some() {
                format!("{}: running", c.name)
            } else if let Some(w) = state.waiting {
                format!(
                    "{}: waiting {} ({})",
                    c.name,
                    w.reason.unwrap_or_default(),
                    w.message.unwrap_or_default()
                )
            } else if let Some(t) = state.terminated {
                format!("{}: terminated {}", c.name, t.reason.unwrap_or_default())
            } else {
                format!("{}: no state", c.name)
            }
        })
        .collect();
    format!(
        "phase {} on {}; {}",
        status.phase.unwrap_or_default(),
        pod.spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_else(|| "no node".into()),
        containers.join("; ")
    )
}

/// Waits until every container of Pod `ns/name` runs, and returns the Pod.
pub async fn wait_pod_running(
    client: &Client,
    ns: &str,
    name: &str,
    timeout: Duration,
) -> k8s_openapi::api::core::v1::Pod {
    use k8s_openapi::api::core::v1::Pod;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    wait_for_named(&format!("Pod {ns}/{name} Running"), timeout, || async {
        let pod = pods.get(name).await.map_err(|e| e.to_string())?;
        let status = pod.status.clone().unwrap_or_default();
        let statuses = status.container_statuses.clone().unwrap_or_default();
        let all_running = !statuses.is_empty()
            && statuses
                .iter()
                .all(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()));
        if status.phase.as_deref() == Some("Running") && all_running {
            Ok(pod)
        } else {
            Err(pod_summary(&pod))
        }
    })
    .await
}

/// Waits until a container of Pod `ns/name` waits with `reason` (e.g. `ImagePullBackOff`).
pub async fn wait_container_waiting(
    client: &Client,
    ns: &str,
    name: &str,
    reason: &str,
    timeout: Duration,
) -> k8s_openapi::api::core::v1::Pod {
    use k8s_openapi::api::core::v1::Pod;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    wait_for_named(
        &format!("a container of Pod {ns}/{name} waiting in {reason}"),
        timeout,
        || async {
            let pod = pods.get(name).await.map_err(|e| e.to_string())?;
            let waiting = pod
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .is_some_and(|cs| {
                    cs.iter().any(|c| {
                        c.state
                            .as_ref()
                            .and_then(|s| s.waiting.as_ref())
                            .and_then(|w| w.reason.as_deref())
                            == Some(reason)
                    })
                });
            if waiting {
                Ok(pod)
            } else {
                Err(pod_summary(&pod))
            }
        },
    )
    .await
}

/// The kubelet's log of `container` of a Pod (first run), read from `podLogsDir`; `None` until
/// the kubelet has written it.
pub fn node_container_log(
    pod: &k8s_openapi::api::core::v1::Pod,
    container: &str,
) -> Option<String> {
    let meta = &pod.metadata;
    let dir = node_pod_logs_dir().join(format!(
        "{}_{}_{}",
        meta.namespace.as_deref()?,
        meta.name.as_deref()?,
        meta.uid.as_deref()?
    ));
    std::fs::read_to_string(dir.join(container).join("0.log")).ok()
}

static TOKEN_USERS_LOCK: Mutex<()> = Mutex::new(());

/// Sets (or with `None` removes) one user of the token-auth registry's token server, which
/// re-reads `PK_REGISTRY_TOKEN_USERS_FILE` on every request: a test rotates a credential of its
/// own without touching the shared one. The file is replaced atomically.
pub fn set_token_registry_user(user: &str, password: Option<&str>) {
    let _guard = TOKEN_USERS_LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let path = PathBuf::from(env("PK_REGISTRY_TOKEN_USERS_FILE"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut users: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not a JSON object: {e}", path.display()));
    match password {
        Some(p) => users.insert(user.to_string(), serde_json::Value::from(p)),
        None => users.remove(user),
    };
    let tmp = path.with_extension(format!("json.{}.tmp", random_suffix(6)));
    std::fs::write(&tmp, serde_json::Value::Object(users).to_string())
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", tmp.display()));
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
            .unwrap_or_else(|e| panic!("cannot restrict {}: {e}", tmp.display()));
    }
    std::fs::rename(&tmp, &path)
        .unwrap_or_else(|e| panic!("cannot replace {}: {e}", path.display()));
}

/// A random string for throw-away passwords and user names.
pub fn random_string(len: usize) -> String {
    random_suffix(len)
}

// ---------------------------------------------------------------------------------------------
// pullkeeper's Secrets and ServiceAccount entries, as tests look at them
// ---------------------------------------------------------------------------------------------

/// Liveness bound of the shared waits below: generous, never a performance figure.
pub const WAIT: Duration = Duration::from_secs(150);

/// The label selector of one test's namespaces (`TestNamespaces::new(client, test)`).
pub fn test_selector(test: &str) -> String {
    format!("{TEST_LABEL}-name={test}")
}

/// Secret `ns/name`, `None` when absent.
pub async fn get_secret(client: &Client, ns: &str, name: &str) -> Option<Secret> {
    Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .expect("get secret")
}

/// The password stored for `server` in a dockerconfigjson Secret.
pub fn password_in(secret: &Secret, server: &str) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(".dockerconfigjson")?;
    let doc: serde_json::Value = serde_json::from_slice(&bytes.0).ok()?;
    doc.pointer(&format!("/auths/{server}/password"))?
        .as_str()
        .map(String::from)
}

/// Waits until Secret `ns/name` holds `want` as the password for `server`, and returns it.
pub async fn wait_password(
    client: &Client,
    ns: &str,
    name: &str,
    server: &str,
    want: &str,
) -> Secret {
    wait_for_named(
        &format!("secret {ns}/{name} with the expected password"),
        WAIT,
        || async {
            get_secret(client, ns, name)
                .await
                .filter(|s| password_in(s, server).as_deref() == Some(want))
        },
    )
    .await
}

/// The `imagePullSecrets` names of ServiceAccount `ns/sa`, in order (empty when it is absent).
pub async fn pull_secrets(client: &Client, ns: &str, sa: &str) -> Vec<String> {
    Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .get_opt(sa)
        .await
        .expect("get sa")
        .map(|sa| account_pull_secrets(&sa))
        .unwrap_or_default()
}

/// The `imagePullSecrets` names of a ServiceAccount, in order.
pub fn account_pull_secrets(sa: &ServiceAccount) -> Vec<String> {
    sa.image_pull_secrets
        .iter()
        .flatten()
        .map(|r| r.name.clone())
        .collect()
}

/// Waits until ServiceAccount `ns/sa` lists exactly the names in `want`, each once, in any
/// order (registries whose credentials arrive in either order append in that order).
pub async fn wait_pull_secrets_unordered(client: &Client, ns: &str, sa: &str, want: &[&str]) {
    let mut sorted_want: Vec<&str> = want.to_vec();
    sorted_want.sort_unstable();
    wait_for_named(
        &format!("serviceaccount {ns}/{sa} imagePullSecrets == {want:?} in any order"),
        WAIT,
        || async {
            let mut got = pull_secrets(client, ns, sa).await;
            got.sort();
            got == sorted_want
        },
    )
    .await;
}

/// Waits until ServiceAccount `ns/sa` lists exactly `want`, in that order.
pub async fn wait_pull_secrets(client: &Client, ns: &str, sa: &str, want: &[&str]) {
    wait_for_named(
        &format!("serviceaccount {ns}/{sa} imagePullSecrets == {want:?}"),
        WAIT,
        || async { pull_secrets(client, ns, sa).await == want },
    )
    .await;
}

/// Waits until ServiceAccount `ns/name` exists (the controller-manager makes `default` shortly
/// after its namespace).
pub async fn wait_account(client: &Client, ns: &str, name: &str) {
    wait_for_named(&format!("serviceaccount {ns}/{name}"), WAIT, || async {
        Api::<ServiceAccount>::namespaced(client.clone(), ns)
            .get_opt(name)
            .await
            .ok()
            .flatten()
    })
    .await;
}

/// The `imagePullSecrets` names of a Pod as admission left them, in order.
pub fn pod_pull_secrets(pod: &k8s_openapi::api::core::v1::Pod) -> Vec<String> {
    pod.spec
        .as_ref()
        .and_then(|s| s.image_pull_secrets.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|r| r.name)
        .collect()
}

/// A Pod's uid (a Pod read from the API has one).
pub fn pod_uid(pod: &k8s_openapi::api::core::v1::Pod) -> String {
    pod.metadata
        .uid
        .clone()
        .expect("a Pod from the API has a uid")
}

/// The writes (create, update, patch, delete) to Secrets and ServiceAccounts in `namespaces`
/// that the API server's audit log (`PK_AUDIT_LOG`: every write by a ServiceAccount) saw
/// received at or after `since`, one line each (`verb resource namespace/name -> code`).
pub fn audit_writes(namespaces: &[String], since: chrono::DateTime<chrono::Utc>) -> Vec<String> {
    let path = env("PK_AUDIT_LOG");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    text.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|e| e["stage"] == "ResponseComplete")
        .filter(|e| {
            matches!(
                e["objectRef"]["resource"].as_str(),
                Some("secrets" | "serviceaccounts")
            ) && matches!(
                e["verb"].as_str(),
                Some("create" | "update" | "patch" | "delete")
            ) && e["objectRef"]["namespace"]
                .as_str()
                .is_some_and(|ns| namespaces.iter().any(|n| n == ns))
        })
        .filter(|e| {
            e["requestReceivedTimestamp"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .is_some_and(|t| t >= since)
        })
        .map(|e| {
            format!(
                "{} {} {}/{} by {} -> {}",
                e["verb"].as_str().unwrap_or_default(),
                e["objectRef"]["resource"].as_str().unwrap_or_default(),
                e["objectRef"]["namespace"].as_str().unwrap_or_default(),
                e["objectRef"]["name"].as_str().unwrap_or_default(),
                e["user"]["username"].as_str().unwrap_or_default(),
                e["responseStatus"]["code"]
            )
        })
        .collect()
}

/// Whether a line of [`audit_writes`] is a write the API server accepted (a 2xx answer); a
/// refused one (a failed guard, a conflict) changed nothing.
pub fn accepted(write: &str) -> bool {
    write
        .rsplit_once("-> ")
        .is_some_and(|(_, code)| code.starts_with('2'))
}
