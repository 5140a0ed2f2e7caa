use std::fs;
use std::path::Path;

use super::*;

/// A config directory holding `files`. Every file a config test writes is also one case of the
/// agreement between check and the JSON Schema (`schema::tests::assert_agrees`).
fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, text) in files {
        fs::write(dir.path().join(name), text).expect("write");
        super::schema::tests::assert_agrees(name, text);
    }
    dir
}

const GOOD: &str = "provider:\n  type: static\n  username: {value: robot}\n  password: {env: PK_PW}\nservers: [registry.example]\nsecretName: example-pull\n";

fn problems(files: &[(&str, &str)]) -> Vec<String> {
    let dir = dir_with(files);
    let errs = load_dir(dir.path()).expect_err("invalid");
    errs.iter()
        .map(|p| {
            format!(
                "{}|{}|{}",
                p.file.file_name().and_then(|n| n.to_str()).unwrap_or(""),
                p.field,
                p.message
            )
        })
        .collect()
}

#[test]
fn every_shipped_example_is_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/examples");
    let mut dirs = vec![root.clone()];
    dirs.extend(
        fs::read_dir(&root)
            .expect("config/examples")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_dir()),
    );
    let mut count = 0;
    for dir in dirs {
        // Each example file is checked alone: examples may reuse Secret names across files.
        for entry in fs::read_dir(&dir).expect("dir").filter_map(Result::ok) {
            let path = entry.path();
            if !path.extension().is_some_and(|e| e == "yaml" || e == "yml")
                || path.file_name().is_some_and(|n| n == DEFAULTS_FILE)
            {
                continue;
            }
            let one = tempfile::tempdir().expect("tempdir");
            fs::copy(&path, one.path().join(path.file_name().expect("name"))).expect("copy");
            // Examples name files that exist only inside a pod.
            if let Err(p) = load_dir_with(one.path(), false) {
                panic!("{} is invalid: {p:?}", path.display());
            }
            count += 1;
        }
    }
    assert!(count >= 2, "expected example files, found {count}");
}

#[test]
fn a_valid_file_gets_defaults_for_everything_it_leaves_out() {
    let dir = dir_with(&[("harbor.yaml", GOOD)]);
    let config = load_dir(dir.path()).expect("valid");
    let reg = &config.registries[0];
    assert_eq!(reg.name, "harbor");
    assert_eq!(reg.namespaces.include, ["*"]);
    assert_eq!(
        reg.service_accounts,
        ServiceAccountTargets::Names(BTreeSet::from(["default".to_string()]))
    );
    assert!((reg.refresh.renew_at - 2.0 / 3.0).abs() < 1e-9);
    assert_eq!(reg.refresh.min_interval, Duration::from_mins(1));
}

#[test]
fn the_defaults_file_applies_where_a_registry_file_is_silent() {
    let dir = dir_with(&[
        ("harbor.yaml", GOOD),
        (
            DEFAULTS_FILE,
            "serviceAccounts: [\"*\"]\nrefresh:\n  minInterval: 2m\n  schedule: \"0 */6 * * *\"\n",
        ),
    ]);
    let config = load_dir(dir.path()).expect("valid");
    assert_eq!(config.registries.len(), 1);
    let reg = &config.registries[0];
    assert_eq!(reg.service_accounts, ServiceAccountTargets::All);
    assert_eq!(reg.refresh.min_interval, Duration::from_mins(2));
    assert!(reg.refresh.schedule.is_some());
}

#[test]
fn unknown_fields_and_wrong_types_name_the_file_and_field() {
    let errs = problems(&[
        ("a.yaml", &format!("{GOOD}secretNmae: typo\n")),
        (
            "b.yaml",
            &GOOD.replace("servers: [registry.example]", "servers: registry.example"),
        ),
    ]);
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(
        errs[0].starts_with("a.yaml|") && errs[0].contains("secretNmae"),
        "{errs:?}"
    );
    assert!(errs[1].starts_with("b.yaml|servers|"), "{errs:?}");
}

#[test]
fn every_problem_in_every_file_is_reported_at_once() {
    let bad = GOOD
        .replace("secretName: example-pull", "secretName: Not_Valid")
        .replace(
            "servers: [registry.example]",
            "servers: [\"https://registry.example/v2/\"]",
        )
        + "refresh:\n  schedule: \"not a cron\"\n  renewAt: 1.5\n  minInterval: 10h\n  maxInterval: 1h\nnamespaces:\n  selector: \"env in (a)\"\n";
    let errs = problems(&[
        ("bad.yaml", &bad),
        ("worse.yaml", "provider:\n  type: nosuch\nsecretName: x\n"),
    ]);
    let fields: Vec<&str> = errs
        .iter()
        .map(|e| e.split('|').nth(1).unwrap_or(""))
        .collect();
    for want in [
        "secretName",
        "servers[0]",
        "refresh.schedule",
        "refresh.renewAt",
        "refresh.minInterval",
        "namespaces.selector",
    ] {
        assert!(fields.contains(&want), "missing {want} in {errs:?}");
    }
    assert!(
        errs.iter().any(|e| e.starts_with(
            "worse.yaml|provider.type|not a known value; expected one of `static`, `http`"
        )),
        "{errs:?}"
    );
}

#[test]
fn two_files_claiming_the_same_secret_in_the_same_namespace_are_rejected() {
    let errs = problems(&[("a.yaml", GOOD), ("b.yaml", GOOD)]);
    assert!(
        errs.iter()
            .any(|e| e.starts_with("b.yaml|secretName|") && e.contains("a.yaml")),
        "{errs:?}"
    );
    // Disjoint exact namespace lists may share a Secret name.
    let a = format!("{GOOD}namespaces: {{include: [team-a]}}\n");
    let b = format!("{GOOD}namespaces: {{include: [team-b]}}\n");
    let dir = dir_with(&[("a.yaml", &a), ("b.yaml", &b)]);
    assert!(load_dir(dir.path()).is_ok());
}

#[test]
fn a_missing_directory_is_named() {
    let errs = load_dir(Path::new("/nonexistent/pullkeeper-config")).expect_err("missing");
    assert!(
        errs[0]
            .to_string()
            .starts_with("/nonexistent/pullkeeper-config: cannot read directory"),
        "{errs:?}"
    );
}

#[test]
fn configmap_mounts_are_read_through_their_symlinks_and_hidden_entries_skipped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("..2026_11_29_00_00_00.1");
    fs::create_dir(&data).expect("mkdir");
    fs::write(data.join("harbor.yaml"), GOOD).expect("write");
    std::os::unix::fs::symlink("..2026_11_29_00_00_00.1", dir.path().join("..data"))
        .expect("symlink");
    std::os::unix::fs::symlink("..data/harbor.yaml", dir.path().join("harbor.yaml"))
        .expect("symlink");
    let config = load_dir(dir.path()).expect("valid");
    assert_eq!(config.registries.len(), 1);
}

#[test]
fn a_dangling_registry_symlink_is_a_problem_not_a_removed_registry() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("harbor.yaml"), GOOD).expect("write");
    // A ConfigMap swap caught half-way: the file's symlink points at data that is gone.
    std::os::unix::fs::symlink("..data/ecr.yaml", dir.path().join("ecr.yaml")).expect("symlink");
    let errs = load_dir(dir.path()).expect_err("a registry file that cannot be read");
    assert_eq!(errs.len(), 1, "{errs:?}");
    let text = errs[0].to_string();
    assert!(
        text.starts_with(&format!(
            "{}: cannot read file: a symlink to ..data/ecr.yaml, which cannot be read",
            dir.path().join("ecr.yaml").display()
        )),
        "{text}"
    );
    // A directory that happens to end in .yaml is not a registry file.
    fs::remove_file(dir.path().join("ecr.yaml")).expect("remove");
    fs::create_dir(dir.path().join("old.yaml")).expect("mkdir");
    assert_eq!(load_dir(dir.path()).expect("valid").registries.len(), 1);
}

#[test]
fn five_field_cron_expressions_are_accepted_and_bad_ones_explained() {
    assert!(parse_cron("*/15 * * * *").is_ok());
    assert!(parse_cron("0 0 */6 * * *").is_ok());
    assert!(parse_cron("61 * * * *").is_err());
    assert!(parse_cron("* *").expect_err("short").contains("2 fields"));
}

#[test]
fn a_server_the_provider_cannot_open_is_named() {
    let ecr = "provider:\n  type: ecr\n  regions: [eu-west-1]\nservers: [\"123456789012.dkr.ecr.us-east-1.amazonaws.com\"]\nsecretName: ecr-pull\n";
    let errs = problems(&[("ecr.yaml", ecr)]);
    assert!(
        errs.iter()
            .any(|e| e.starts_with("ecr.yaml|servers[0]|") && e.contains("us-east-1")),
        "{errs:?}"
    );
}

#[test]
fn a_configmap_update_swapping_the_data_symlink_changes_the_loaded_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mount = |stamp: &str, text: &str| {
        let data = dir.path().join(stamp);
        fs::create_dir(&data).expect("mkdir");
        fs::write(data.join("harbor.yaml"), text).expect("write");
        // The kubelet's swap: a new `..data_tmp` link renamed over `..data` in one step.
        let tmp = dir.path().join("..data_tmp");
        std::os::unix::fs::symlink(stamp, &tmp).expect("symlink");
        fs::rename(&tmp, dir.path().join("..data")).expect("swap");
    };
    mount("..2026_11_29_00_00_00.1", GOOD);
    std::os::unix::fs::symlink("..data/harbor.yaml", dir.path().join("harbor.yaml"))
        .expect("symlink");
    let before = load_dir(dir.path()).expect("valid");
    mount(
        "..2026_11_29_00_05_00.2",
        &GOOD.replace("example-pull", "renamed-pull"),
    );
    let after = load_dir(dir.path()).expect("valid");
    assert_ne!(before.fingerprint, after.fingerprint);
    assert_eq!(after.registries[0].secret_name, "renamed-pull");
}

#[test]
fn a_missing_file_and_a_colon_in_a_username_are_named_at_check() {
    let bad = "provider:\n  type: static\n  username: {value: \"a:b\"}\n  password: {file: /nonexistent/pk-password}\nservers: [r.test]\nsecretName: s\n";
    let errs = problems(&[("static.yaml", bad)]);
    assert!(
        errs.iter().any(|e| e.starts_with(
            "static.yaml|provider.password.file|cannot read /nonexistent/pk-password"
        )),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.starts_with("static.yaml|provider.username.value|")),
        "{errs:?}"
    );
    // Validating a pod's config elsewhere can skip the file checks, not the others.
    let dir = dir_with(&[("static.yaml", bad)]);
    let errs = load_dir_with(dir.path(), false).expect_err("still invalid");
    assert_eq!(errs.len(), 1, "{errs:?}");
}

fn targets(include: &[&str], exclude: &[&str], selector: &str) -> NamespaceTargets {
    NamespaceTargets {
        include: include.iter().map(ToString::to_string).collect(),
        exclude: exclude.iter().map(ToString::to_string).collect(),
        selector: selector.parse().expect("selector"),
    }
}

fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn a_namespace_named_exactly_in_include_is_still_removed_by_exclude() {
    let t = targets(&["team-a", "team-*"], &["team-a"], "");
    assert!(!t.matches("team-a", &labels(&[])));
    assert!(t.matches("team-b", &labels(&[])));
}

#[test]
fn a_namespace_named_exactly_in_include_must_still_satisfy_the_selector() {
    let t = targets(&["team-a"], &[], "pull=true");
    assert!(!t.matches("team-a", &labels(&[])));
    assert!(!t.matches("team-a", &labels(&[("pull", "false")])));
    assert!(t.matches("team-a", &labels(&[("pull", "true")])));
}

#[test]
fn a_glob_includes_what_it_matches_minus_exclude_and_selector() {
    let t = targets(&["team-*"], &["team-sandbox"], "!legacy");
    assert!(t.matches("team-a", &labels(&[])));
    assert!(!t.matches("team-a", &labels(&[("legacy", "")])));
    assert!(!t.matches("team-sandbox", &labels(&[])));
    assert!(!t.matches("other", &labels(&[])));
}

#[test]
fn kube_namespaces_need_an_exact_name_and_obey_exclude_and_selector_too() {
    // A glob, even one written for them, never reaches kube-* namespaces.
    assert!(!targets(&["*"], &[], "").matches("kube-public", &labels(&[])));
    assert!(!targets(&["kube-*"], &[], "").matches("kube-public", &labels(&[])));
    // Named exactly, they are in scope like any other namespace...
    assert!(targets(&["*", "kube-public"], &[], "").matches("kube-public", &labels(&[])));
    // ...and still removed by exclude (exact or glob) and held to the selector.
    assert!(!targets(&["kube-public"], &["kube-public"], "").matches("kube-public", &labels(&[])));
    assert!(!targets(&["kube-public"], &["kube-*"], "").matches("kube-public", &labels(&[])));
    let selected = targets(&["kube-public"], &[], "pull=true");
    assert!(!selected.matches("kube-public", &labels(&[])));
    assert!(selected.matches("kube-public", &labels(&[("pull", "true")])));
}

#[test]
fn a_bad_cron_expression_is_one_line_quoting_only_what_was_written_and_naming_the_field() {
    let cases = [
        ("61 * * * *", "minute"),
        ("0 25 * * *", "hour"),
        ("0 0 32 * *", "day of month"),
        ("0 0 * 13 *", "month"),
        ("0 0 * JANX *", "month"),
        ("0 0 * * 9", "weekday"),
        ("60 0 0 * * *", "second"),
    ];
    for (expr, field) in cases {
        let why = parse_cron(expr).expect_err(expr);
        assert!(!why.contains('\n'), "{expr}: several lines: {why:?}");
        assert!(why.starts_with(&format!("{expr:?} ")), "{expr}: {why:?}");
        // The seconds field pullkeeper adds to a 5-field expression is never shown.
        assert!(!why.contains(&format!("0 {expr}")), "{expr}: {why:?}");
        assert!(
            why.contains(&format!("the {field} field")),
            "{expr}: {why:?}"
        );
    }
    let why = parse_cron("61 * * * *").expect_err("out of range");
    assert!(
        why.contains("out of range") && why.contains("0-59"),
        "{why:?}"
    );
}

#[test]
fn five_field_weekdays_count_from_sunday_as_zero_like_kubernetes_cronjobs() {
    use chrono::{Datelike, TimeZone, Weekday};
    // 2026-12-01 is a Tuesday.
    let after = chrono::Utc
        .with_ymd_and_hms(2026, 12, 1, 12, 0, 0)
        .single()
        .expect("time");
    let days = |expr: &str| -> Vec<Weekday> {
        let schedule = parse_cron(expr).expect(expr);
        schedule
            .after(&after)
            .take(7)
            .map(|t| t.weekday())
            .collect()
    };
    assert_eq!(days("0 0 * * 1")[0], Weekday::Mon);
    assert_eq!(days("0 0 * * 0")[0], Weekday::Sun);
    assert_eq!(days("0 0 * * 7")[0], Weekday::Sun);
    assert_eq!(days("0 0 * * sun")[0], Weekday::Sun);
    let mut workdays = days("0 0 * * 1-5");
    workdays.truncate(5);
    assert_eq!(
        workdays,
        [
            Weekday::Wed,
            Weekday::Thu,
            Weekday::Fri,
            Weekday::Mon,
            Weekday::Tue
        ]
    );
    assert_eq!(
        days("0 0 * * 5-7")[..3],
        [Weekday::Fri, Weekday::Sat, Weekday::Sun]
    );
    assert_eq!(
        days("0 0 * * */3")[..3],
        [Weekday::Wed, Weekday::Sat, Weekday::Sun]
    );
    // The six-field form keeps the cron crate's numbering (1 = Sunday).
    assert_eq!(days("0 0 0 * * 1")[0], Weekday::Sun);
}

#[test]
fn every_shape_problem_of_a_file_is_reported_not_only_the_first() {
    // Unknown fields at three levels (top, refresh, inside provider), a value of the wrong type,
    // and a missing required field (secretName).
    let text = "provider:\n  type: http\n  url: https://broker.test/token\n  timout: 5s\n  response:\n    password: /token\n    usernme: {value: robot}\nservers: [r.test]\nsecretNmae: typo\nrefresh:\n  renewAt: 0.5\n  schedul: \"0 * * * *\"\nnamespaces:\n  include: team-a\nverify: {repository: app, colour: blue}\n";
    let errs = problems(&[("all.yaml", text)]);
    let fields: Vec<&str> = errs
        .iter()
        .map(|e| e.split('|').nth(1).unwrap_or(""))
        .collect();
    for want in [
        "provider.timout",
        "provider.response.usernme",
        "secretNmae",
        "refresh.schedul",
        "namespaces.include",
        "verify.colour",
        "secretName",
    ] {
        assert!(fields.contains(&want), "missing {want} in {errs:?}");
    }
    assert_eq!(errs.len(), 7, "{errs:?}");
    assert!(errs.iter().all(|e| e.starts_with("all.yaml|")), "{errs:?}");
    assert!(
        errs.contains(&"all.yaml|secretName|required field is missing".to_string()),
        "{errs:?}"
    );
    assert!(
        errs.contains(
            &"all.yaml|namespaces.include|expected a sequence, found a string".to_string()
        ),
        "{errs:?}"
    );
    // No value from the file is repeated (any of them could be a secret).
    for value in ["typo", "team-a", "blue", "robot", "5s", "/token"] {
        assert!(
            errs.iter().all(|e| !e.contains(value)),
            "{value} quoted in {errs:?}"
        );
    }
}

#[test]
fn a_misspelt_field_gets_the_nearest_known_name_and_a_far_off_one_gets_none() {
    let errs = problems(&[("a.yaml", &format!("{GOOD}secretNmae: typo\nflavour: x\n"))]);
    assert!(
        errs.contains(&"a.yaml|secretNmae|unknown field; did you mean `secretName`?".to_string()),
        "{errs:?}"
    );
    let flavour = errs
        .iter()
        .find(|e| e.starts_with("a.yaml|flavour|"))
        .expect("flavour reported");
    assert!(!flavour.contains("did you mean"), "{flavour}");
    assert!(
        flavour.contains("expected one of `name`, `provider`"),
        "{flavour}"
    );
    let errs = problems(&[(
        "b.yaml",
        &GOOD
            .replace("type: static", "type: statik")
            .replace("password", "pasword"),
    )]);
    assert!(
        errs.iter()
            .any(|e| e == "b.yaml|provider.type|not a known value; did you mean `static`?"),
        "{errs:?}"
    );
}

#[test]
fn shape_problems_inside_the_provider_name_their_own_field() {
    let text = GOOD.replace(
        "password: {env: PK_PW}",
        "pasword: {env: PK_PW}\n  extra: [1]",
    );
    let errs = problems(&[("s.yaml", &text)]);
    assert_eq!(
        errs,
        [
            "s.yaml|provider.pasword|unknown field; did you mean `password`?",
            "s.yaml|provider.extra|unknown field; expected one of `username`, `password`",
            "s.yaml|provider.password|required field is missing",
        ],
        "{errs:?}"
    );
}

#[test]
fn plain_scalars_that_look_like_numbers_stay_strings_next_to_a_real_problem() {
    // The streaming reader takes `secretName: 123` as the string "123"; the error search must not
    // report it while looking for the real problem.
    let text = GOOD.replace(
        "secretName: example-pull",
        "secretName: 123\nverify: {repository: app, reference: 1.10}\nbogus: 1",
    );
    let errs = problems(&[("n.yaml", &text)]);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with("n.yaml|bogus|unknown field"),
        "{errs:?}"
    );
}

#[test]
fn a_yaml_syntax_error_is_one_problem_with_its_line_and_column() {
    let errs = problems(&[("y.yaml", "provider: {type: static\nsecretName: [a\n")]);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with("y.yaml||not valid YAML: ") && errs[0].contains("line 2 column"),
        "{errs:?}"
    );
}

#[test]
fn an_empty_registry_file_names_every_required_field() {
    assert_eq!(
        problems(&[("e.yaml", "")]),
        [
            "e.yaml|provider|required field is missing",
            "e.yaml|secretName|required field is missing",
        ]
    );
}
