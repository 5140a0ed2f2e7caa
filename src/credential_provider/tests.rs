use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeDelta, TimeZone, Utc};
use serde_json::{Value, json};

use super::*;
use crate::credential::Login;
use crate::providers::ProviderSpec;
use crate::testing::registry;

const CANARY: &str = "canary-pw-7f3a";

fn credential(expires_in: Option<i64>, now: DateTime<Utc>) -> Credential {
    Credential {
        logins: vec![Login {
            server: None,
            username: "robot".into(),
            password: Sensitive::new(CANARY),
        }],
        expires_at: expires_in.map(|s| now + TimeDelta::seconds(s)),
    }
}

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 6, 4, 0, 0)
        .single()
        .expect("valid time")
}

#[test]
fn a_request_of_the_v1_api_is_read_with_its_optional_identity_fields() {
    let minimal = parse_request(
        r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderRequest","image":"registry.example/app:v1"}"#,
    )
    .expect("minimal request parses");
    assert_eq!(minimal.image, "registry.example/app:v1");
    assert!(minimal.service_account_token.is_none());
    assert!(minimal.service_account_annotations.is_empty());

    let with_token = parse_request(&format!(
        r#"{{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderRequest","image":"x.example/a","serviceAccountToken":"{CANARY}","serviceAccountAnnotations":{{"pullkeeper.dev/role":"r"}}}}"#
    ))
    .expect("request with a token parses");
    assert_eq!(
        with_token
            .service_account_token
            .as_ref()
            .map(Sensitive::expose),
        Some(CANARY)
    );
    assert_eq!(
        with_token.service_account_annotations["pullkeeper.dev/role"],
        "r"
    );
    assert!(!format!("{with_token:?}").contains(CANARY));
}

#[test]
fn another_api_version_or_kind_is_refused_by_name() {
    for text in [
        r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1beta1","kind":"CredentialProviderRequest","image":"a"}"#,
        r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"Other","image":"a"}"#,
    ] {
        let e = parse_request(text).expect_err("refused");
        assert_eq!(e.category(), "bad_request");
        assert!(e.to_string().contains(API_VERSION), "{e}");
    }
    assert_eq!(
        parse_request("not json").expect_err("refused").category(),
        "bad_request"
    );
}

#[test]
fn the_response_has_the_v1_shape_keyed_by_the_images_host() {
    let r = Arc::new(registry("example", |r| {
        r.servers = vec!["registry.example:5000".into()];
    }));
    let regs = vec![r];
    let m = match_registry(&regs, "registry.example:5000/team/app:v1").expect("matched");
    let response = respond(&m, credential(Some(3600), now()), now()).expect("served");
    let json: Value = serde_json::from_str(&response.to_json().expect("json")).expect("parses");
    assert_eq!(
        json,
        json!({
            "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
            "kind": "CredentialProviderResponse",
            "cacheKeyType": "Registry",
            "cacheDuration": "2400s",
            "auth": {"registry.example:5000": {"username": "robot", "password": CANARY}},
        })
    );
    assert!(!format!("{response:?}").contains(CANARY));
}

#[test]
fn no_matching_file_gives_an_empty_auth_not_cached() {
    let regs = vec![Arc::new(registry("example", |_| {}))];
    assert!(match_registry(&regs, "other.example/app").is_none());
    assert!(match_registry(&regs, "registry.example:5000/app").is_none());
    assert!(match_registry(&regs, "nginx").is_none());
    let json: Value =
        serde_json::from_str(&Response::empty().to_json().expect("json")).expect("parses");
    assert_eq!(json["auth"], json!({}));
    assert_eq!(json["cacheDuration"], "0s");
    assert_eq!(json["cacheKeyType"], "Registry");
}

#[test]
fn the_first_file_listing_the_host_serves_it_else_a_provider_naming_it() {
    let ecr: ProviderSpec =
        serde_yaml_ng::from_str("type: ecr\nregions: [eu-west-1]\n").expect("ecr spec");
    let regs = vec![
        Arc::new(registry("a", |r| r.servers = vec!["one.example".into()])),
        Arc::new(registry("b", |r| {
            r.servers = vec!["one.example".into(), "two.example".into()];
        })),
        Arc::new(registry("c", |r| {
            r.provider = ecr;
            r.servers = vec![];
        })),
    ];
    let name = |image: &str| match_registry(&regs, image).map(|m| m.registry.name.clone());
    assert_eq!(name("one.example/x").as_deref(), Some("a"));
    assert_eq!(name("two.example/x:1").as_deref(), Some("b"));
    assert_eq!(
        name("123456789012.dkr.ecr.eu-west-1.amazonaws.com/app:v1").as_deref(),
        Some("c")
    );
    // A region the file does not fetch, or a port, is not ECR's to serve.
    assert_eq!(
        name("123456789012.dkr.ecr.us-east-1.amazonaws.com/app"),
        None
    );
    assert_eq!(
        name("123456789012.dkr.ecr.eu-west-1.amazonaws.com:443/app"),
        None
    );
}

#[test]
fn an_ecr_host_gets_the_login_of_its_region_under_its_own_name() {
    let ecr: ProviderSpec =
        serde_yaml_ng::from_str("type: ecr\nregions: [eu-west-1]\n").expect("ecr spec");
    let regs = vec![Arc::new(registry("ecr", |r| {
        r.provider = ecr;
        r.servers = vec![];
    }))];
    let host = "210987654321.dkr.ecr.eu-west-1.amazonaws.com";
    let m = match_registry(&regs, &format!("{host}/app:v1")).expect("matched");
    let mut c = credential(Some(12 * 3600), now());
    c.logins[0].server = Some("123456789012.dkr.ecr.eu-west-1.amazonaws.com".into());
    let response = respond(&m, c, now()).expect("served");
    assert_eq!(response.auth.keys().collect::<Vec<_>>(), vec![host]);
    assert_eq!(response.cache_duration, Duration::from_hours(8));
}

#[test]
fn a_provider_login_for_another_host_only_is_an_error_without_the_credential() {
    let regs = vec![Arc::new(registry("http", |r| {
        r.servers = vec!["alias.example".into()];
    }))];
    let m = match_registry(&regs, "alias.example/app").expect("matched");
    let mut c = credential(None, now());
    c.logins[0].server = Some("elsewhere.example".into());
    // `servers` adds aliases to a provider-named host, as in the Secret's `auths`.
    assert!(respond(&m, c.clone(), now()).is_ok());
    c.logins.clear();
    let e = respond(&m, c, now()).expect_err("no login");
    assert_eq!(e.category(), "invalid_credential");
    assert!(!error_line(&e).contains(CANARY));
}

#[test]
fn cache_duration_is_the_renew_share_of_the_lifetime_capped_by_max_interval() {
    let at = now();
    let reg = registry("r", |r| {
        r.refresh.renew_at = 0.5;
        r.refresh.max_interval = Duration::from_hours(6);
        r.refresh.default_lifetime = Duration::from_secs(90);
    });
    // Stated expiry: half of it.
    assert_eq!(
        cache_duration(&reg, at, Some(at + TimeDelta::hours(2))),
        Duration::from_hours(1)
    );
    // Capped by maxInterval (ECR's 12 h at 0.5 would be 6 h; 24 h would be 12 h).
    assert_eq!(
        cache_duration(&reg, at, Some(at + TimeDelta::hours(24))),
        Duration::from_hours(6)
    );
    // No expiry (static): the default lifetime's share.
    assert_eq!(cache_duration(&reg, at, None), Duration::from_secs(45));
    // Past expiry: not believed, as in the Secret route.
    assert_eq!(
        cache_duration(&reg, at, Some(at - TimeDelta::hours(1))),
        Duration::from_secs(45)
    );
    // Whole seconds, rounded down: never past the renewal point.
    assert_eq!(
        cache_duration(&reg, at, Some(at + TimeDelta::milliseconds(3999))),
        Duration::from_secs(1)
    );
    // Always shorter than the credential's life left.
    for secs in [2, 61, 3600, 43_200] {
        let d = cache_duration(&reg, at, Some(at + TimeDelta::seconds(secs)));
        assert!(
            d < Duration::from_secs(secs.unsigned_abs()),
            "{secs}: {d:?}"
        );
    }
}

#[test]
fn a_past_expiry_from_the_provider_is_cached_as_if_none_was_stated() {
    let regs = vec![Arc::new(registry("r", |_| {}))];
    let m = match_registry(&regs, "registry.example/app").expect("matched");
    let response = respond(&m, credential(Some(-60), now()), now()).expect("served");
    // policy(): default lifetime 1 h, renewAt 2/3.
    assert_eq!(response.cache_duration, Duration::from_mins(40));
}

#[tokio::test]
async fn one_invocation_reads_the_files_fetches_once_and_records_no_credential() {
    let dir = tempfile::tempdir().expect("tempdir");
    let password = dir.path().join("password");
    std::fs::write(&password, format!("{CANARY}\n")).expect("password file");
    let config = dir.path().join("config");
    std::fs::create_dir(&config).expect("config dir");
    std::fs::write(
        config.join("local.yaml"),
        format!(
            "provider:\n  type: static\n  username: {{value: robot}}\n  password: {{file: {}}}\n\
             servers: [\"127.0.0.1:5000\"]\nsecretName: local-pull\nrefresh: {{defaultLifetime: 3m, renewAt: 0.5}}\n",
            password.display()
        ),
    )
    .expect("registry file");
    let settings = Settings {
        config_dir: &config,
        fetch_timeout: Duration::from_secs(10),
    };
    let request = |image: &str| {
        format!(
            r#"{{"apiVersion":"{API_VERSION}","kind":"CredentialProviderRequest","image":"{image}"}}"#
        )
    };
    let new_record = || Invocation::starting(String::new());

    let mut out = Vec::new();
    let mut record = new_record();
    serve(
        &settings,
        &request("127.0.0.1:5000/team/app:v1"),
        &mut out,
        &mut record,
    )
    .await
    .expect("served");
    let json: Value = serde_json::from_slice(&out).expect("one JSON document");
    assert_eq!(json["auth"]["127.0.0.1:5000"]["password"], CANARY);
    assert_eq!(json["cacheDuration"], "90s");
    assert_eq!(record.outcome, "served");
    assert_eq!(record.registry.as_deref(), Some("local"));
    let logged = serde_json::to_string(&record).expect("record");
    assert!(!logged.contains(CANARY), "{logged}");

    let mut out = Vec::new();
    let mut record = new_record();
    serve(
        &settings,
        &request("127.0.0.1:5001/app"),
        &mut out,
        &mut record,
    )
    .await
    .expect("no match is no error");
    let json: Value = serde_json::from_slice(&out).expect("one JSON document");
    assert_eq!(json["auth"], json!({}));
    assert_eq!(record.outcome, "no_match");

    // The password file gone: an error naming the file, nothing on stdout.
    std::fs::remove_file(&password).expect("remove");
    let mut out = Vec::new();
    let mut record = new_record();
    let e = serve(
        &settings,
        &request("127.0.0.1:5000/app"),
        &mut out,
        &mut record,
    )
    .await
    .expect_err("the config names a missing file");
    assert!(out.is_empty());
    assert_eq!(e.category(), "invalid_config");
    assert!(error_line(&e).contains("password"), "{}", error_line(&e));
    assert!(!error_line(&e).contains('\n'));
}

#[test]
fn an_images_repository_is_its_host_and_path_without_tag_or_digest() {
    assert_eq!(
        image_repository("127.0.0.1:5000/team/app:v1"),
        "127.0.0.1:5000/team/app"
    );
    assert_eq!(
        image_repository("h.example/team/app@sha256:abc"),
        "h.example/team/app"
    );
    assert_eq!(
        image_repository("h.example/team/app:v1@sha256:abc"),
        "h.example/team/app"
    );
    assert_eq!(image_repository("h.example:5000/app"), "h.example:5000/app");
    assert_eq!(image_repository("nginx:1.27"), "docker.io/library/nginx");
    assert_eq!(image_repository("team/app"), "docker.io/team/app");
}

/// `imageQuery`: the broker is asked for the pulled image's repository, and the answer opens
/// that repository only: keyed by it and cached per image. Without `imageQuery` the same broker
/// answer is keyed by the host and cached per registry.
#[tokio::test]
async fn an_http_broker_asked_per_repository_is_cached_per_image() {
    use axum::extract::RawQuery;
    let asked = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let router = axum::Router::new().route(
        "/token",
        axum::routing::get({
            let asked = asked.clone();
            move |RawQuery(query): RawQuery| async move {
                asked.lock().expect("lock").push(query.unwrap_or_default());
                format!(r#"{{"username":"robot","password":"{CANARY}","expires_in":600}}"#)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, router).await });

    let dir = tempfile::tempdir().expect("tempdir");
    let file = |query: &str| {
        format!(
            "provider:\n  type: http\n  url: http://{addr}/token?audience=pull\n{query}  response: {{username: /username, password: /password, expiresIn: /expires_in}}\n\
             servers: [\"127.0.0.1:5000\"]\nsecretName: broker-pull\nrefresh: {{renewAt: 0.5}}\n"
        )
    };
    let serve_one = |image: &'static str| {
        let config = dir.path().to_path_buf();
        async move {
            let settings = Settings {
                config_dir: &config,
                fetch_timeout: Duration::from_secs(10),
            };
            let mut record = Invocation::starting(String::new());
            let request = format!(
                r#"{{"apiVersion":"{API_VERSION}","kind":"CredentialProviderRequest","image":"{image}"}}"#
            );
            let mut out = Vec::new();
            serve(&settings, &request, &mut out, &mut record)
                .await
                .expect("served");
            serde_json::from_slice::<Value>(&out).expect("one JSON document")
        }
    };

    std::fs::write(dir.path().join("broker.yaml"), file("  imageQuery: repo\n")).expect("file");
    let json = serve_one("127.0.0.1:5000/team/app:v1").await;
    assert_eq!(json["cacheKeyType"], "Image");
    // renewAt 0.5 of expires_in 600, less the time since the broker answered.
    let cached: u64 = json["cacheDuration"]
        .as_str()
        .and_then(|d| d.strip_suffix('s')?.parse().ok())
        .expect("a duration in seconds");
    assert!((295..=300).contains(&cached), "{cached}");
    assert_eq!(json["auth"]["127.0.0.1:5000/team/app"]["password"], CANARY);
    assert_eq!(json["auth"].as_object().map(serde_json::Map::len), Some(1));

    std::fs::write(dir.path().join("broker.yaml"), file("")).expect("file");
    let json = serve_one("127.0.0.1:5000/team/app:v1").await;
    assert_eq!(json["cacheKeyType"], "Registry");
    assert_eq!(json["auth"]["127.0.0.1:5000"]["password"], CANARY);

    assert_eq!(
        *asked.lock().expect("lock"),
        vec![
            "audience=pull&repo=127.0.0.1%3A5000%2Fteam%2Fapp".to_string(),
            "audience=pull".to_string()
        ]
    );
}

#[test]
fn image_query_is_named_as_a_field_of_the_credential_provider_route() {
    let r = registry("broker", |r| {
        r.provider = serde_yaml_ng::from_str(
            "type: http\nurl: http://broker.local/token\nimageQuery: repo\nresponse: {auth: /auth}\n",
        )
        .expect("parses");
    });
    assert!(r.provider.per_repository());
    assert!(
        route_note(&r)
            .is_some_and(|n| n.contains("imageQuery") && n.contains("Secret route asks without it")),
        "{:?}",
        route_note(&r)
    );
}
