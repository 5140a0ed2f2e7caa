//! TLS to a credential endpoint and to a registry: an `openssl s_server` with a certificate
//! signed by a throw-away CA is trusted only through `caFile`, by the `http` provider and by
//! verification alike, both of which build their client in one place. Needs the `openssl`
//! command; without it these tests fail rather than skip.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use pullkeeper::providers::{ErrorCategory, Provider, ProviderError, ProviderSpec};
use pullkeeper::sensitive::Sensitive;
use pullkeeper::verify::{VerifySpec, verify};
use serde_json::json;

/// The password the endpoint hands out; must never appear in an error.
const CANARY_PASSWORD: &str = "canary-pw-5e1d9";

/// Parses `yaml` as an `http` provider, checks it validates clean and builds it.
async fn provider(yaml: &str) -> Arc<dyn Provider> {
    let spec: ProviderSpec = serde_yaml_ng::from_str(&format!("type: http\n{yaml}")).unwrap();
    let mut problems = pullkeeper::problems::FieldProblems::new(Path::new("r.yaml"));
    spec.validate(&mut problems);
    assert!(problems.is_empty(), "{:?}", problems.into_vec());
    spec.build().await.unwrap()
}

async fn fetch_err(yaml: &str) -> ProviderError {
    let err = provider(yaml).await.fetch().await.unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(!text.contains(CANARY_PASSWORD), "password leaked: {text}");
    err
}

/// An HTTPS endpoint: `openssl s_server -WWW` serving files from a temp dir with a
/// certificate for 127.0.0.1 signed by a fresh CA. The `openssl` command is required (as by
/// `tests/peers/up`); without it the test fails rather than skips.
struct TlsStub {
    child: std::process::Child,
    base: String,
    ca: std::path::PathBuf,
    dir: tempfile::TempDir,
}

impl TlsStub {
    /// The folder `s_server -WWW` serves.
    fn root(&self) -> &Path {
        self.dir.path()
    }
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
        dir,
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
async fn verification_trusts_an_https_registry_through_ca_file_and_only_then() {
    // `s_server -WWW` answers 200 for a directory: an open registry's `/v2/`.
    let stub = tls_stub(&[]).await;
    std::fs::create_dir(stub.root().join("v2")).unwrap();
    let server = stub.base.trim_start_matches("https://");
    let password = Sensitive::new(CANARY_PASSWORD);

    let untrusted = VerifySpec::default();
    let err = verify(&untrusted, server, "robot", &password)
        .await
        .unwrap_err();
    assert_eq!(err.category(), "unreachable", "{err}");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );

    let trusted = VerifySpec {
        ca_file: Some(stub.ca.clone()),
        ..VerifySpec::default()
    };
    verify(&trusted, server, "robot", &password).await.unwrap();
}

#[tokio::test]
async fn a_ca_file_without_a_certificate_is_refused_by_the_provider_and_by_verification() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let spec: ProviderSpec = serde_yaml_ng::from_str(&format!(
        "type: http\nurl: https://127.0.0.1:9/cred.json\ncaFile: {}\nresponse: {{auth: /a}}\n",
        junk.display()
    ))
    .unwrap();
    let err = spec.build().await.unwrap_err();
    assert_eq!(err.category, ErrorCategory::LocalInput);
    let expected = format!("CA file {} holds no PEM certificate", junk.display());
    assert_eq!(err.message, expected);

    let verify_spec = VerifySpec {
        ca_file: Some(junk.clone()),
        ..VerifySpec::default()
    };
    // Nothing listens on the discard port: the file is refused before any request.
    let err = verify(
        &verify_spec,
        "127.0.0.1:9",
        "robot",
        &Sensitive::new(CANARY_PASSWORD),
    )
    .await
    .unwrap_err();
    assert_eq!(err.category(), "local_input", "{err}");
    assert!(err.to_string().ends_with(&expected), "{err}");
}
