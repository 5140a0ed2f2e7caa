//! The bad-input corpus (`tests/corpus/`): what nobody meant to write, read by the real code.
//!
//! - `corpus/config/CASE/`: a config directory (registry files, maybe a `defaults.yaml`) that
//!   `pullkeeper check` must refuse — exit 2, nothing on stdout, no panic, in a bounded time —
//!   printing exactly the lines of `CASE/expected` (`FILE: FIELD: message`, the directory's own
//!   path taken out). Two cases too big to commit (files over the size limit) are made here.
//! - `corpus/providers/PROVIDER/CASE.txt`: one answer of a provider's endpoint (status, headers,
//!   body: error pages, truncated or huge or mistyped JSON, impossible expiries). A loopback
//!   server sends it byte for byte to the real provider, built from its config as a registry
//!   file would build it; the fetch must end in the case's error category (or `ok`, or
//!   `invalid_credential` when the credential fails the rules every credential obeys) and its
//!   message must not quote the body.
//!
//! `PK_WRITE_CORPUS=1` rewrites every `expected` file from what check prints now: review the
//! diff, never commit it unread.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pullkeeper::providers::{Provider, ProviderSpec};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

fn sorted_entries(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("entry").path())
        .collect();
    out.sort();
    out
}

/// What `pullkeeper check` did with one directory.
struct Checked {
    code: Option<i32>,
    stdout: String,
    /// stderr with the directory's path taken out (`DIR` where it is the whole path).
    lines: Vec<String>,
    took: Duration,
}

fn check(dir: &Path) -> Checked {
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_pullkeeper"))
        .args(["check", "--config"])
        .arg(dir)
        .env_remove("PULLKEEPER_ALLOW_EMPTY_CONFIG")
        .output()
        .expect("run pullkeeper check");
    let took = start.elapsed();
    let shown = dir.display().to_string();
    let stderr = String::from_utf8_lossy(&out.stderr)
        .replace(&format!("{shown}/"), "")
        .replace(&shown, "DIR");
    Checked {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        lines: stderr.lines().map(str::to_owned).collect(),
        took,
    }
}

/// Asserts what every refusal has in common, and returns its lines.
fn refused(name: &str, dir: &Path) -> Vec<String> {
    let c = check(dir);
    let text = c.lines.join("\n");
    assert!(
        !text.contains("panicked"),
        "{name}: check panicked:\n{text}"
    );
    assert_eq!(c.code, Some(2), "{name}: exit code; stderr:\n{text}");
    assert!(c.stdout.is_empty(), "{name}: stdout: {}", c.stdout);
    assert!(
        c.took < Duration::from_secs(20),
        "{name}: check took {:?}",
        c.took
    );
    assert!(
        c.lines
            .last()
            .is_some_and(|l| l.ends_with("problem(s); config is invalid")),
        "{name}: {text}"
    );
    for line in &c.lines {
        assert!(line.len() < 600, "{name}: a line of {} bytes", line.len());
    }
    c.lines
}

#[test]
fn every_bad_config_in_the_corpus_is_refused_by_check_with_its_expected_problems() {
    let write = std::env::var_os("PK_WRITE_CORPUS").is_some();
    let mut cases = 0;
    let mut files = 0;
    let mut failures = Vec::new();
    for case in sorted_entries(&corpus().join("config")) {
        if !case.is_dir() {
            continue;
        }
        let name = case.file_name().and_then(|n| n.to_str()).expect("name");
        // A copy, so the paths check prints are a temporary directory's, taken out below.
        let dir = tempfile::tempdir().expect("tempdir");
        for file in sorted_entries(&case) {
            let fname = file.file_name().expect("file name");
            if fname == "expected" {
                continue;
            }
            std::fs::copy(&file, dir.path().join(fname)).expect("copy");
            files += 1;
        }
        let got = refused(name, dir.path());
        let expected_path = case.join("expected");
        if write {
            std::fs::write(&expected_path, got.join("\n") + "\n").expect("write expected");
        }
        let want = std::fs::read_to_string(&expected_path)
            .unwrap_or_else(|_| panic!("{name}: no expected file (PK_WRITE_CORPUS=1 writes it)"));
        let want: Vec<&str> = want.lines().collect();
        if got != want {
            failures.push(format!("{name}:\n  want: {want:#?}\n  got:  {got:#?}"));
        }
        cases += 1;
    }
    assert!(
        failures.is_empty(),
        "{} of {cases} cases differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(cases >= 60 && files >= 60, "{cases} cases, {files} files");
    println!("config corpus: {cases} cases, {files} files, each refused as expected");
}

const GOOD: &str = "provider:\n  type: static\n  username: {value: robot}\n  password: {env: PK_PW}\nservers: [registry.example]\nsecretName: example-pull\n";

#[test]
fn files_over_the_size_limit_are_refused_without_being_read_whole() {
    // Valid YAML all along: only the size is wrong. One just under the limit passes.
    let padding = |bytes: usize| {
        "# padding padding padding padding padding padding padding\n".repeat(bytes / 58 + 1)
    };
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("a.yaml"),
        format!("{GOOD}{}", padding(1000 * 1024)),
    )
    .expect("write");
    let c = check(dir.path());
    assert_eq!(c.code, Some(0), "{:?}", c.lines);

    for (file, size) in [
        ("registry.yaml", 2 * 1024 * 1024),
        ("defaults.yaml", 64 * 1024 * 1024),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("good.yaml"), GOOD).expect("write");
        if file == "defaults.yaml" {
            // Sparse: 64 MiB of zero bytes that cost no disk.
            let f = std::fs::File::create(dir.path().join(file)).expect("create");
            f.set_len(size).expect("set_len");
        } else {
            std::fs::write(
                dir.path().join(file),
                format!("{GOOD}{}", padding(size as usize)),
            )
            .expect("write");
        }
        let lines = refused(file, dir.path());
        assert_eq!(
            lines,
            [
                format!(
                    "{file}: larger than 1024 KiB; a config file is at most that (a ConfigMap's limit)"
                ),
                "1 problem(s); config is invalid".to_string(),
            ]
        );
    }
}

// ---- provider answers ----

/// One answer from the corpus.
#[derive(Debug)]
struct Answer {
    name: String,
    provider: String,
    /// Which of the provider's requests gets this answer (the others get a good one).
    step: String,
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Claim this many more bytes than are sent, then close: a body cut short.
    cut: usize,
    expect: String,
    retry_after: Option<u64>,
}

fn parse_answer(path: &Path) -> Answer {
    let name = path
        .file_stem()
        .and_then(|n| n.to_str())
        .expect("name")
        .to_string();
    let provider = path
        .parent()
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
        .expect("provider dir")
        .to_string();
    let raw = std::fs::read(path).expect("read case");
    let split = raw
        .windows(5)
        .position(|w| w == b"\n---\n")
        .unwrap_or_else(|| panic!("{name}: no `---` line before the body"));
    let head = std::str::from_utf8(&raw[..split]).expect("head is text");
    let mut body = raw[split + 5..].to_vec();
    let mut answer = Answer {
        name: name.clone(),
        provider,
        step: String::new(),
        status: 200,
        headers: Vec::new(),
        body: Vec::new(),
        cut: 0,
        expect: String::new(),
        retry_after: None,
    };
    let mut repeat = 1;
    for line in head
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let (k, v) = line
            .split_once(':')
            .unwrap_or_else(|| panic!("{name}: bad head line {line:?}"));
        let v = v.trim();
        match k.trim() {
            "step" => answer.step = v.to_string(),
            "status" => answer.status = v.parse().expect("status"),
            "header" => {
                let (hk, hv) = v.split_once(':').expect("header: name: value");
                answer.headers.push((hk.trim().into(), hv.trim().into()));
            }
            "repeat" => repeat = v.parse().expect("repeat"),
            "cut" => answer.cut = v.parse().expect("cut"),
            "expect" => answer.expect = v.to_string(),
            "retry-after" => answer.retry_after = Some(v.parse().expect("retry-after")),
            other => panic!("{name}: unknown head key {other:?}"),
        }
    }
    // The body ends at the file's last newline (files end with one); `repeat` makes huge ones.
    if body.last() == Some(&b'\n') {
        body.pop();
    }
    answer.body = body.repeat(repeat);
    assert!(!answer.expect.is_empty(), "{name}: no `expect:`");
    answer
}

/// A loopback HTTP/1.1 server that answers every request with whatever `reply` returns for its
/// path, written as raw bytes (so bodies may be cut short or not be UTF-8).
struct Server {
    addr: String,
}

type Reply = Arc<dyn Fn(&str) -> Vec<u8> + Send + Sync>;

impl Server {
    async fn start(reply: Reply) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                let reply = reply.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    // The head, then as much body as Content-Length says.
                    let head_end = loop {
                        let Ok(n) = conn.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                    let length: usize = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse().ok())?
                        })
                        .unwrap_or(0);
                    while buf.len() < head_end + length {
                        let Ok(n) = conn.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            break;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    let path = head
                        .split_whitespace()
                        .nth(1)
                        .unwrap_or("/")
                        .split('?')
                        .next()
                        .unwrap_or("/")
                        .to_string();
                    let _ = conn.write_all(&reply(&path)).await;
                    let _ = conn.shutdown().await;
                });
            }
        });
        Self { addr }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn response(status: u16, headers: &[(String, String)], body: &[u8], cut: usize) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status} Answer\r\nconnection: close\r\n").into_bytes();
    let mut typed = false;
    for (k, v) in headers {
        typed |= k.eq_ignore_ascii_case("content-type");
        out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    if !typed {
        out.extend_from_slice(b"content-type: application/json\r\n");
    }
    out.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len() + cut).as_bytes());
    out.extend_from_slice(body);
    out
}

fn ok_json(body: &str) -> Vec<u8> {
    response(200, &[], body.as_bytes(), 0)
}

fn b64url(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

/// The provider of a case, built as its registry file would build it, against `server`.
async fn provider_for(answer: &Answer) -> (Server, Arc<dyn Provider>) {
    let case = response(answer.status, &answer.headers, &answer.body, answer.cut);
    let step = answer.step.clone();
    let jwt = format!(
        "{}.{}.c2ln",
        b64url(r#"{"alg":"RS256","typ":"JWT"}"#),
        b64url(r#"{"exp":4102444800}"#)
    );
    let reply: Reply = match answer.provider.as_str() {
        "http" | "gcp" | "ecr" => Arc::new(move |_: &str| case.clone()),
        "azure" => Arc::new(move |path: &str| {
            let is_entra = path == "/metadata/identity/oauth2/token";
            match (is_entra, step.as_str()) {
                (true, "entra") | (false, "exchange") => case.clone(),
                (true, _) => ok_json(r#"{"access_token":"entra-token","expires_in":3599}"#),
                (false, _) => ok_json(&format!(r#"{{"refresh_token":"{jwt}"}}"#)),
            }
        }),
        other => panic!("{}: no provider {other}", answer.name),
    };
    let server = Server::start(reply).await;
    let yaml = match answer.provider.as_str() {
        "http" => format!(
            "type: http\nurl: {}/token\nresponse:\n  username: /username\n  password: /password\n  \
             expiresAt: /expiresAt\n  expiresIn: /expiresIn\n",
            server.url()
        ),
        "gcp" => format!(
            "type: gcp\nsource: metadata\nmetadataHost: {}\n",
            server.addr
        ),
        "azure" => format!(
            "type: azure\nregistry: {}\nregistryScheme: http\nsource: managedIdentity\n\
             imdsEndpoint: {}/metadata/identity/oauth2/token\n",
            server.addr,
            server.url()
        ),
        "ecr" => return server_for_ecr(server).await,
        _ => unreachable!(),
    };
    let spec: ProviderSpec = serde_yaml_ng::from_str(&yaml).expect("provider spec");
    let provider = spec.build().await.expect("provider builds");
    (server, provider)
}

#[cfg(feature = "ecr")]
async fn server_for_ecr(server: Server) -> (Server, Arc<dyn Provider>) {
    use aws_config::BehaviorVersion;
    use aws_config::retry::RetryConfig;
    use aws_types::os_shim_internal::Env;
    use pullkeeper::providers::ecr::EcrConfig;
    let env = Env::from_slice(&[
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_CONFIG_FILE", "/nonexistent/pullkeeper-test/config"),
        (
            "AWS_SHARED_CREDENTIALS_FILE",
            "/nonexistent/pullkeeper-test/credentials",
        ),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE"),
        (
            "AWS_SECRET_ACCESS_KEY",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        ),
    ]);
    let sdk = aws_config::defaults(BehaviorVersion::latest())
        .env(env)
        .retry_config(RetryConfig::disabled())
        .load()
        .await;
    let config: EcrConfig = serde_yaml_ng::from_str(&format!(
        "regions: [us-east-1]\nendpointUrl: {}\n",
        server.url()
    ))
    .expect("ecr config");
    let provider = config.build_with_sdk_config(&sdk).await.expect("builds");
    (server, provider)
}

#[cfg(not(feature = "ecr"))]
async fn server_for_ecr(_: Server) -> (Server, Arc<dyn Provider>) {
    unreachable!("ecr cases are skipped without the feature")
}

fn enabled(provider: &str) -> bool {
    match provider {
        "ecr" => cfg!(feature = "ecr"),
        "gcp" => cfg!(feature = "gcp"),
        "azure" => cfg!(feature = "azure"),
        _ => true,
    }
}

#[tokio::test]
async fn every_provider_answer_in_the_corpus_ends_in_its_expected_category() {
    let mut failures = Vec::new();
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    let mut cases = 0;
    for dir in sorted_entries(&corpus().join("providers")) {
        for path in sorted_entries(&dir) {
            let answer = parse_answer(&path);
            if !enabled(&answer.provider) {
                continue;
            }
            let (_server, provider) = provider_for(&answer).await;
            let result = tokio::time::timeout(Duration::from_secs(30), provider.fetch())
                .await
                .unwrap_or_else(|_| panic!("{}: fetch did not end", answer.name));
            let (got, message, retry) = match result {
                Ok(credential) => match credential.validate() {
                    Ok(()) => ("ok".to_string(), String::new(), None),
                    Err(e) => ("invalid_credential".to_string(), e.to_string(), None),
                },
                Err(e) => (
                    e.category().to_string(),
                    e.message.clone(),
                    e.retry_after.map(|d| d.as_secs()),
                ),
            };
            let label = format!("{}/{}", answer.provider, answer.name);
            if got != answer.expect || retry != answer.retry_after {
                failures.push(format!(
                    "{label}: want {} (retry-after {:?}), got {got} (retry-after {retry:?}): {message}",
                    answer.expect, answer.retry_after
                ));
            }
            // Bodies hold canaries where a value could leak; no message may quote them.
            assert!(
                !message.to_lowercase().contains("canary"),
                "{label}: the message quotes the body: {message}"
            );
            assert!(
                message.len() < 600,
                "{label}: {} bytes of message",
                message.len()
            );
            println!("{label}: {got}: {message}");
            *counts.entry(answer.provider.clone()).or_default() += 1;
            cases += 1;
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(cases >= 30, "{cases} cases");
    println!("provider corpus: {cases} answers {counts:?}, each in its expected category");
}
