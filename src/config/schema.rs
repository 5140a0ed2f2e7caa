//! The JSON Schemas of a registry file and of `defaults.yaml`, generated from the raw types
//! (`raw.rs` and the providers' settings, through `schemars`' derive), for editors:
//! `config/registry.schema.json` and `config/defaults.schema.json` are these documents, and a
//! unit test fails when they differ (`PK_WRITE_SCHEMA=1 cargo test --lib config::schema`
//! rewrites them).
//!
//! A schema says what the file's *shape* may be, as serde reads it: fields, types, which
//! provider `type`s exist, unknown fields refused. What `pullkeeper check` decides beyond the
//! shape (the rules config/README.md lists under "What the schema cannot say") is not in it.

use schemars::JsonSchema;
use schemars::generate::SchemaSettings;
use serde_json::Value;

use super::raw::{RawDefaults, RawRegistry};

/// The file names of the committed schemas, in `config/`.
pub const REGISTRY_SCHEMA_FILE: &str = "registry.schema.json";
pub const DEFAULTS_SCHEMA_FILE: &str = "defaults.schema.json";

/// The schema of a registry file.
pub fn registry_schema() -> Value {
    generate::<RawRegistry>(
        "pullkeeper registry file",
        "One registry: its credential provider, the Secret written from it, and where.",
    )
}

/// The schema of `defaults.yaml`.
pub fn defaults_schema() -> Value {
    generate::<RawDefaults>(
        "pullkeeper defaults.yaml",
        "Values used by every registry file of the directory that does not set them.",
    )
}

/// The schema as committed: pretty JSON and a final newline.
pub fn to_text(schema: &Value) -> String {
    // A `Value` always serializes.
    serde_json::to_string_pretty(schema).unwrap_or_default() + "\n"
}

/// Draft 7: what YAML editors (yaml-language-server, IntelliJ) understand best.
fn generate<T: JsonSchema>(title: &str, description: &str) -> Value {
    let generator = SchemaSettings::draft07().for_deserialize().into_generator();
    let mut schema = generator.into_root_schema_for::<T>().to_value();
    if let Some(root) = schema.as_object_mut() {
        root.insert("title".into(), title.into());
        root.insert("description".into(), description.into());
    }
    widen_plain_scalars(&mut schema);
    schema
}

/// Outside `provider`, pullkeeper reads a plain scalar where it expects text as it is written:
/// `secretName: 123` and `reference: 1.10` are the strings `123` and `1.10` (config/shape.rs),
/// while an editor sees a number. So the text fields of the registry file, its `namespaces`,
/// `refresh` and `verify` (and of `defaults.yaml`) accept numbers and booleans too. Inside
/// `provider` (an internally tagged enum, read from a buffered tree) a number is a number and is
/// refused where text is expected, so its definitions are left as generated.
fn widen_plain_scalars(schema: &mut Value) {
    const READ_AS_WRITTEN: [&str; 3] = ["RawNamespaces", "RawRefresh", "VerifySpec"];
    widen(schema);
    if let Some(definitions) = schema.get_mut("definitions").and_then(Value::as_object_mut) {
        for (name, definition) in definitions.iter_mut() {
            if READ_AS_WRITTEN.contains(&name.as_str()) {
                widen(definition);
            }
        }
    }
}

/// Rewrites every `"type": "string"` (or `["string", "null"]`) below `node` to also take numbers
/// and booleans, without following `$ref`s or entering `definitions`.
fn widen(node: &mut Value) {
    match node {
        Value::Object(map) => {
            let plain_text = !map.contains_key("enum") && !map.contains_key("const");
            if plain_text && let Some(kind) = map.get_mut("type") {
                let kinds = match kind {
                    Value::String(one) => vec![one.clone()],
                    Value::Array(many) => many
                        .iter()
                        .filter_map(|k| k.as_str().map(str::to_string))
                        .collect(),
                    _ => Vec::new(),
                };
                if kinds.iter().any(|k| k == "string") {
                    let mut widened = kinds;
                    for extra in ["number", "boolean"] {
                        if !widened.iter().any(|k| k == extra) {
                            widened.push(extra.to_string());
                        }
                    }
                    *kind = Value::Array(widened.into_iter().map(Value::String).collect());
                }
            }
            for (key, child) in map.iter_mut() {
                if key != "definitions" {
                    widen(child);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(widen),
        _ => {}
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::fs;
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::config::{DEFAULTS_FILE, load_dir_with, shape};

    fn config_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config")
    }

    fn validator(schema: &Value) -> jsonschema::Validator {
        jsonschema::draft7::new(schema).expect("the schema is a valid draft-7 schema")
    }

    /// The committed files are exactly what the raw types generate; with `PK_WRITE_SCHEMA=1`
    /// they are written instead.
    #[test]
    fn the_committed_schemas_are_generated_from_the_raw_types() {
        for (file, schema) in [
            (REGISTRY_SCHEMA_FILE, registry_schema()),
            (DEFAULTS_SCHEMA_FILE, defaults_schema()),
        ] {
            let path = config_dir().join(file);
            let want = to_text(&schema);
            if std::env::var_os("PK_WRITE_SCHEMA").is_some() {
                fs::write(&path, &want).expect("write the schema");
            }
            let committed = fs::read_to_string(&path).unwrap_or_default();
            assert!(
                committed == want,
                "config/{file} is not what the raw config types generate; regenerate it with \
                 `PK_WRITE_SCHEMA=1 cargo test --lib config::schema` and commit it"
            );
            // A real validator compiles it.
            validator(&schema);
        }
    }

    /// The YAML files under `dir` (recursively), sorted.
    fn yaml_files(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut dirs = vec![dir.to_path_buf()];
        while let Some(d) = dirs.pop() {
            for entry in fs::read_dir(&d).expect("read dir").filter_map(Result::ok) {
                let path = entry.path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                    out.push(path);
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn every_example_names_its_schema_and_is_valid_against_it() {
        let examples = config_dir().join("examples");
        let files = yaml_files(&examples);
        assert!(files.len() >= 7, "examples: {files:?}");
        for path in files {
            let text = fs::read_to_string(&path).expect("read example");
            let line = text
                .lines()
                .find_map(|l| l.strip_prefix("# yaml-language-server: $schema="))
                .unwrap_or_else(|| {
                    panic!(
                        "{} has no `# yaml-language-server: $schema=…` line",
                        path.display()
                    )
                });
            let named = path.parent().expect("dir").join(line.trim());
            let want = if is_defaults(&path) {
                DEFAULTS_SCHEMA_FILE
            } else {
                REGISTRY_SCHEMA_FILE
            };
            assert_eq!(
                fs::canonicalize(&named).ok(),
                fs::canonicalize(config_dir().join(want)).ok(),
                "{}: $schema={line} is not config/{want}",
                path.display()
            );
            let name = path.file_name().and_then(|n| n.to_str()).expect("name");
            let verdict = verdicts(name, &text);
            assert!(
                verdict.check.is_ok() && verdict.schema.is_ok(),
                "{}: {verdict:?}",
                path.display()
            );
        }
    }

    /// The bad-input corpus (tests/corpus/config, once it exists) and the examples: check and
    /// the schema agree on every file. The config tests' own files are checked as they write
    /// them (`config::tests::dir_with`).
    #[test]
    fn check_and_the_schema_agree_on_the_corpus_and_the_examples() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files = yaml_files(&root.join("config/examples"));
        let corpus = root.join("tests/corpus/config");
        if corpus.is_dir() {
            files.extend(yaml_files(&corpus));
        }
        let mut semantic_only = 0;
        for path in &files {
            // A corpus file may hold bytes that are not UTF-8: check reads text, so does this.
            let Ok(text) = fs::read_to_string(path) else {
                continue;
            };
            let name = if is_defaults(path) {
                DEFAULTS_FILE
            } else {
                path.file_name().and_then(|n| n.to_str()).expect("name")
            };
            if assert_agrees(name, &text) == Agreement::SemanticOnly {
                semantic_only += 1;
            }
        }
        println!(
            "{} files: check and the schema agree; {semantic_only} rejected by check for \
             reasons the schema cannot express",
            files.len()
        );
    }

    /// A corpus or example file meant as `defaults.yaml`.
    fn is_defaults(path: &Path) -> bool {
        path.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("defaults"))
            || path
                .parent()
                .and_then(Path::file_name)
                .is_some_and(|d| d == "defaults")
    }

    /// What check and the schema each say about one file.
    #[derive(Debug)]
    pub(in crate::config) struct Verdicts {
        /// serde's reading of the file (`config::shape`): the part the schema describes.
        shape: Result<(), Vec<String>>,
        /// `pullkeeper check` on a directory holding only this file (files it names need not
        /// exist).
        check: Result<(), Vec<String>>,
        schema: Result<(), Vec<String>>,
    }

    #[derive(Debug, PartialEq, Eq)]
    pub(in crate::config) enum Agreement {
        BothAccept,
        BothReject,
        /// check rejects it for rules beyond the shape, which the schema accepts.
        SemanticOnly,
    }

    fn verdicts(name: &str, text: &str) -> Verdicts {
        let path = Path::new(name);
        let strings = |problems: Vec<crate::problems::Problem>| {
            problems.iter().map(ToString::to_string).collect::<Vec<_>>()
        };
        let shape = if name == DEFAULTS_FILE {
            shape::parse::<RawDefaults>(path, text, false).map(drop)
        } else {
            shape::parse::<RawRegistry>(path, text, true).map(drop)
        }
        .map_err(strings);
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join(name), text).expect("write");
        let check = load_dir_with(dir.path(), false).map(drop).map_err(strings);
        let schema = if name == DEFAULTS_FILE {
            defaults_schema()
        } else {
            registry_schema()
        };
        Verdicts {
            shape,
            check,
            schema: schema_verdict(&schema, text),
        }
    }

    /// The schema's verdict on a YAML text, as an editor gets it: the YAML as JSON (an empty
    /// document is an empty map, as check reads it).
    fn schema_verdict(schema: &Value, text: &str) -> Result<(), Vec<String>> {
        let yaml: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(text).map_err(|e| vec![format!("not YAML: {e}")])?;
        let json = match yaml {
            serde_yaml_ng::Value::Null => Value::Object(serde_json::Map::new()),
            other => serde_json::to_value(other).map_err(|e| vec![format!("not JSON: {e}")])?,
        };
        let errors: Vec<String> = validator(schema)
            .iter_errors(&json)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// Panics when check and the schema disagree about `text` (a file named `name`): a file
    /// whose shape serde refuses must be refused by the schema, and a file check accepts must be
    /// accepted by it. A file check refuses only for rules beyond the shape may pass the schema.
    pub(in crate::config) fn assert_agrees(name: &str, text: &str) -> Agreement {
        let v = verdicts(name, text);
        match (&v.shape, &v.check, &v.schema) {
            (Ok(()), Ok(()), Ok(())) => Agreement::BothAccept,
            (Err(_), _, Err(_)) => Agreement::BothReject,
            (Ok(()), Err(_), Err(_)) => Agreement::BothReject,
            (Ok(()), Err(_), Ok(())) => Agreement::SemanticOnly,
            (Err(_), _, Ok(())) => {
                panic!("the schema accepts {name}, whose shape check refuses:\n{text}\n{v:#?}")
            }
            (Ok(()), Ok(()), Err(_)) => {
                panic!("the schema refuses {name}, which check accepts:\n{text}\n{v:#?}")
            }
        }
    }

    #[test]
    fn plain_scalars_outside_the_provider_are_text_as_check_reads_them() {
        let base =
            "provider:\n  type: static\n  username: {value: robot}\n  password: {env: PK_PW}\n";
        for (text, want) in [
            // Read as text by check: accepted by both.
            (format!("{base}servers: [5000]\nsecretName: pull\n"), Agreement::BothAccept),
            (
                format!("{base}servers: [r.example]\nsecretName: pull\nverify: {{repository: team/app, reference: 1.10}}\n"),
                Agreement::BothAccept,
            ),
            // Inside `provider` a number is refused where text is expected, by both.
            (
                "provider:\n  type: static\n  username: {value: 123}\n  password: {env: PK_PW}\nservers: [r.example]\nsecretName: pull\n".to_string(),
                Agreement::BothReject,
            ),
            // A list where text is expected: a shape error for both.
            (format!("{base}servers: [r.example]\nsecretName: [a]\n"), Agreement::BothReject),
            (format!("{base}servers: [r.example]\nsecretName: pull\nflavour: x\n"), Agreement::BothReject),
            // Semantic only: a Secret name that is no DNS name.
            (format!("{base}servers: [r.example]\nsecretName: Not_A_Name\n"), Agreement::SemanticOnly),
        ] {
            assert_eq!(assert_agrees("r.yaml", &text), want, "{text}");
        }
        assert_eq!(
            assert_agrees(
                DEFAULTS_FILE,
                "refresh: {renewAt: 0.5}\nserviceAccounts: [default]\n"
            ),
            Agreement::BothAccept
        );
        assert_eq!(
            assert_agrees(DEFAULTS_FILE, "secretName: x\n"),
            Agreement::BothReject
        );
        assert_eq!(assert_agrees(DEFAULTS_FILE, ""), Agreement::BothAccept);
    }
}
