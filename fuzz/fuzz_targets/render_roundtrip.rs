//! dockerconfigjson render → parse: whatever the login's text, the rendered JSON reads back to
//! the same username and password under every server, `auth` is base64 of `username:password`,
//! and the hash is the bytes' SHA-256. A credential `render` refuses is one `validate` refuses.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use libfuzzer_sys::fuzz_target;
use pullkeeper::config::{
    LabelSelector, NamespaceTargets, RefreshPolicy, Registry, ServiceAccountTargets,
};
use pullkeeper::credential::{Credential, Login};
use pullkeeper::sensitive::Sensitive;
use sha2::Digest as _;

fn registry(servers: Vec<String>) -> Registry {
    Registry {
        name: "fuzz".into(),
        file: PathBuf::from("/fuzz/r.yaml"),
        source_hash: String::new(),
        provider: serde_yaml_ng::from_str(
            "type: static\nusername: {value: robot}\npassword: {env: PK_PW}\n",
        )
        .expect("provider"),
        servers,
        secret_name: "fuzz-pull".into(),
        namespaces: NamespaceTargets {
            include: vec!["*".into()],
            exclude: vec![],
            selector: LabelSelector::default(),
        },
        service_accounts: ServiceAccountTargets::Names(BTreeSet::from(["default".to_string()])),
        refresh: RefreshPolicy {
            schedule: None,
            renew_at: 0.5,
            min_interval: Duration::from_secs(60),
            max_interval: Duration::from_secs(3600),
            jitter: 0.0,
            backoff_initial: Duration::from_secs(10),
            backoff_max: Duration::from_secs(300),
            default_lifetime: Duration::from_secs(3600),
        },
        verify: None,
        secret_labels: BTreeMap::new(),
    }
}

fuzz_target!(|data: &[u8]| {
    // NUL-separated: username, password, then servers; a server starting with '@' is the
    // login's own (as a provider names it), the others are the registry file's.
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\0');
    let username = parts.next().unwrap_or_default().to_string();
    let password = parts.next().unwrap_or_default().to_string();
    let mut own = None;
    let mut listed = Vec::new();
    for s in parts.take(4) {
        match s.strip_prefix('@') {
            Some(o) => own = Some(o.to_string()),
            None => listed.push(s.to_string()),
        }
    }
    let registry = registry(listed);
    let credential = Credential {
        logins: vec![Login {
            server: own,
            username: username.clone(),
            password: Sensitive::new(password.clone()),
        }],
        expires_at: None,
    };
    match pullkeeper::render::render(&registry, &credential) {
        Ok(rendered) => {
            assert!(credential.validate().is_ok());
            assert_eq!(
                rendered.hash,
                hex::encode(sha2::Sha256::digest(&rendered.bytes))
            );
            let doc: serde_json::Value = serde_json::from_slice(&rendered.bytes).expect("JSON");
            let auths = doc["auths"].as_object().expect("auths");
            assert_eq!(auths.len(), rendered.servers.len());
            for server in &rendered.servers {
                let entry = &auths[server.as_str()];
                assert_eq!(entry["username"].as_str(), Some(username.as_str()));
                assert_eq!(entry["password"].as_str(), Some(password.as_str()));
                let auth = STANDARD
                    .decode(entry["auth"].as_str().expect("auth"))
                    .expect("base64");
                assert_eq!(auth, format!("{username}:{password}").into_bytes());
            }
        }
        Err(_) => assert!(
            credential.validate().is_err()
                || (credential.logins[0].server.is_none() && registry.servers.is_empty())
        ),
    }
});
