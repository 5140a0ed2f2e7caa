//! Reading one YAML file into its raw serde type, with every shape problem reported at once.
//!
//! serde stops at the first error. To find the others, the file is read again as a YAML tree and
//! deserialized repeatedly: each problem is recorded and the key it is about is taken out of the
//! tree before the next try. Messages name the field and the expected shape, never a value from
//! the file (it could be a secret).

use std::path::Path;

use serde::de::DeserializeOwned;
use serde_path_to_error::Segment;
use serde_yaml_ng::Value;

use crate::problems::Problem;
use crate::providers::{ProviderKind, azure, ecr, gcp, http, static_};

/// Deserialization tries per tree; every try removes something, so this bounds a pathological
/// file, not a normal one.
const MAX_TRIES: usize = 64;

/// A serde error from the YAML tree, with the path serde was at.
type TreeError = serde_path_to_error::Error<serde_yaml_ng::Error>;

/// Deserializes a tree as one raw type, keeping only the error.
type Check = fn(&Value) -> Result<(), TreeError>;

/// Parses `text` as `T`. On failure, returns every shape problem of the file. `with_provider`
/// says `T` has the internally tagged `provider` field, whose errors serde reports without the
/// path inside it.
pub(super) fn parse<T: DeserializeOwned>(
    path: &Path,
    text: &str,
    with_provider: bool,
) -> Result<T, Vec<Problem>> {
    let problem = |field: String, message: String| Problem {
        file: path.to_path_buf(),
        field,
        message,
    };
    // The streaming deserializer decides what the file means: it reads a plain scalar such as
    // `secretName: 123` or `reference: 1.10` as written, which the YAML tree cannot.
    let first = match serde_path_to_error::deserialize(serde_yaml_ng::Deserializer::from_str(text))
    {
        Ok(value) => return Ok(value),
        Err(e) => e,
    };
    let tree: Value = match serde_yaml_ng::from_str(text) {
        // An empty file reads as an empty map, as the streaming reader takes it.
        Ok(Value::Null) => Value::Mapping(serde_yaml_ng::Mapping::new()),
        Ok(tree) => tree,
        Err(e) => return Err(vec![problem(String::new(), format!("not valid YAML: {e}"))]),
    };
    let mut found = Found {
        problems: Vec::new(),
        with_provider,
    };
    found.collect(tree, &[], &|v: &Value| {
        serde_path_to_error::deserialize::<_, T>(v).map(drop)
    });
    if found.problems.is_empty() {
        // The tree and the stream disagree (they should not): report what the stream said.
        let at = keys(first.path());
        let message = first.into_inner().to_string();
        let field = display(&at);
        let message = message
            .strip_prefix(&format!("{field}: "))
            .map_or_else(|| message.clone(), str::to_string);
        return Err(vec![problem(field, describe(&message).text())]);
    }
    Err(found
        .problems
        .into_iter()
        .map(|(at, message)| problem(display(&at), message))
        .collect())
}

/// One step of a field path.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Key {
    Field(String),
    Index(usize),
}

fn keys(path: &serde_path_to_error::Path) -> Vec<Key> {
    let mut out = Vec::new();
    for segment in path {
        match segment {
            Segment::Map { key } => out.push(Key::Field(key.clone())),
            Segment::Seq { index } => out.push(Key::Index(*index)),
            Segment::Enum { .. } => {}
            Segment::Unknown => break,
        }
    }
    out
}

/// `provider.auth.basic`, `servers[1]`: the form every other problem uses.
fn display(path: &[Key]) -> String {
    let mut out = String::new();
    for key in path {
        match key {
            Key::Field(name) if out.is_empty() => out.push_str(name),
            Key::Field(name) => {
                out.push('.');
                out.push_str(name);
            }
            Key::Index(i) => {
                out.push('[');
                out.push_str(&i.to_string());
                out.push(']');
            }
        }
    }
    out
}

fn with(path: &[Key], key: Key) -> Vec<Key> {
    let mut out = path.to_vec();
    out.push(key);
    out
}

fn node_mut<'a>(tree: &'a mut Value, path: &[Key]) -> Option<&'a mut Value> {
    path.iter().try_fold(tree, |node, key| match key {
        Key::Field(name) => node.as_mapping_mut()?.get_mut(name.as_str()),
        Key::Index(i) => node.as_sequence_mut()?.get_mut(*i),
    })
}

/// Takes the field at `path` out of the tree. A problem inside a list removes the whole list
/// (removing one element would renumber the ones after it).
fn remove(tree: &mut Value, path: &[Key]) -> Option<Vec<Key>> {
    let end = path.iter().rposition(|k| matches!(k, Key::Field(_)))?;
    let Key::Field(name) = &path[end] else {
        return None;
    };
    node_mut(tree, &path[..end])?
        .as_mapping_mut()?
        .shift_remove(name.as_str())?;
    Some(path[..=end].to_vec())
}

struct Found {
    problems: Vec<(Vec<Key>, String)>,
    with_provider: bool,
}

impl Found {
    /// Deserializes `tree` with `de` until it succeeds or nothing more can be learnt, recording
    /// each problem under `prefix`.
    fn collect(
        &mut self,
        mut tree: Value,
        prefix: &[Key],
        de: &dyn Fn(&Value) -> Result<(), TreeError>,
    ) {
        // Fields taken out because of a problem already recorded: their absence is no news.
        let mut removed: Vec<Vec<Key>> = Vec::new();
        for _ in 0..MAX_TRIES {
            let Err(e) = de(&tree) else { return };
            let at = keys(e.path());
            let message = e.into_inner().to_string();
            let kind = describe(&message);
            if self.with_provider
                && prefix.is_empty()
                && at == [Key::Field("provider".into())]
                && self.provider(&tree)
            {
                if let Some(map) = tree.as_mapping_mut() {
                    map.shift_remove("provider");
                }
                removed.push(at);
                continue;
            }
            match kind {
                Kind::UnknownField { name, expected } => {
                    // serde's path ends at the unknown key, or at its map when the map was
                    // buffered first (an internally tagged enum).
                    let key = if at.last() == Some(&Key::Field(name.clone())) {
                        at
                    } else {
                        with(&at, Key::Field(name.clone()))
                    };
                    self.problems.push((
                        [prefix, &key].concat(),
                        unknown_field_message(&name, &expected),
                    ));
                    if remove(&mut tree, &key).is_none() {
                        return;
                    }
                }
                Kind::MissingField { name } => {
                    let field = with(&at, Key::Field(name));
                    if !removed.contains(&field) {
                        self.problems.push((
                            [prefix, &field].concat(),
                            "required field is missing".into(),
                        ));
                    }
                    // serde names one missing field at a time: a stand-in that reads lets it
                    // name the next one.
                    if let Some(stand_in) = stand_in(&tree, &at, &field, de) {
                        tree = stand_in;
                        removed.push(field);
                        continue;
                    }
                    // Every other key of that map was read before serde noticed; the map is
                    // done, and taking it out lets the rest of the file be read.
                    match remove(&mut tree, &at) {
                        Some(gone) => removed.push(gone),
                        None => return,
                    }
                }
                other => {
                    if prefix.is_empty() && scalar_as_string(&mut tree, &at, &message) {
                        continue;
                    }
                    self.problems.push(([prefix, &at].concat(), other.text()));
                    match remove(&mut tree, &at) {
                        Some(gone) => removed.push(gone),
                        None => return,
                    }
                }
            }
        }
    }

    /// A problem inside `provider`: serde buffers the map to read its `type` first, and reports
    /// what goes wrong afterwards at `provider` alone. Reading the map again as the type it names
    /// finds each problem at its own path. False when the type is not one known here.
    fn provider(&mut self, tree: &Value) -> bool {
        let Some(map) = tree.get("provider").and_then(Value::as_mapping) else {
            return false;
        };
        let Some(de) = map
            .get("type")
            .and_then(Value::as_str)
            .and_then(provider_check)
        else {
            return false;
        };
        let mut body = map.clone();
        body.shift_remove("type");
        let before = self.problems.len();
        self.collect(Value::Mapping(body), &[Key::Field("provider".into())], &de);
        self.problems.len() > before
    }
}

/// `tree` with a made-up value at `field` (of the map at `at`) that serde accepts there, if one
/// of a few shapes is.
fn stand_in(
    tree: &Value,
    at: &[Key],
    field: &[Key],
    de: &dyn Fn(&Value) -> Result<(), TreeError>,
) -> Option<Value> {
    let Some(Key::Field(name)) = field.last() else {
        return None;
    };
    let map = |entries: &[(&str, Value)]| {
        Value::Mapping(
            entries
                .iter()
                .map(|(k, v)| (Value::String((*k).to_string()), v.clone()))
                .collect(),
        )
    };
    let text = |t: &str| Value::String(t.to_string());
    let provider = map(&[
        ("type", text("static")),
        ("username", map(&[("value", text("stand-in"))])),
        ("password", map(&[("env", text("STAND_IN"))])),
    ]);
    let shapes = [
        text("stand-in"),
        Value::Sequence(Vec::new()),
        Value::Mapping(serde_yaml_ng::Mapping::new()),
        provider,
    ];
    shapes.into_iter().find_map(|shape| {
        let mut candidate = tree.clone();
        node_mut(&mut candidate, at)?
            .as_mapping_mut()?
            .insert(text(name), shape);
        let fits = match de(&candidate) {
            Ok(()) => true,
            Err(e) => {
                let path = keys(e.path());
                let same_missing = path == at
                    && describe(&e.into_inner().to_string())
                        == Kind::MissingField { name: name.clone() };
                !path.starts_with(field) && !same_missing
            }
        };
        fits.then_some(candidate)
    })
}

/// The settings type of each provider `type`, to locate problems inside `provider`. A type missing
/// here still has its problems reported, only at `provider` rather than at the field.
fn provider_check(name: &str) -> Option<Check> {
    fn check<T: DeserializeOwned>(v: &Value) -> Result<(), TreeError> {
        serde_path_to_error::deserialize::<_, T>(v).map(drop)
    }
    Some(match ProviderKind::of_type(name)? {
        ProviderKind::Static => check::<static_::StaticConfig>,
        ProviderKind::Http => check::<http::HttpConfig>,
        ProviderKind::Ecr => check::<ecr::EcrConfig>,
        ProviderKind::EcrPublic => check::<ecr::EcrPublicConfig>,
        ProviderKind::Gcp => check::<gcp::GcpConfig>,
        ProviderKind::Azure => check::<azure::AzureConfig>,
    })
}

/// The YAML tree reads a plain `123` or `true` as a number or boolean where the streaming reader
/// hands the text to a string field. Turns such a node into its text, so the tree does not report
/// what the file does not contain. True when it did.
fn scalar_as_string(tree: &mut Value, at: &[Key], message: &str) -> bool {
    if !message.ends_with(", expected a string") {
        return false;
    }
    let Some(node) = node_mut(tree, at) else {
        return false;
    };
    let text = match node {
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => return false,
    };
    *node = Value::String(text);
    true
}

/// What serde said, without the value it quotes.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    UnknownField {
        name: String,
        expected: Vec<String>,
    },
    MissingField {
        name: String,
    },
    /// `written` is only used to suggest a known name.
    UnknownVariant {
        written: String,
        expected: Vec<String>,
    },
    /// `invalid type` / `invalid value`, said with the kind of what was found, not its value.
    Invalid(String),
    Other(String),
}

/// The kinds serde names in `invalid type: KIND VALUE, expected …`, longest first.
const FOUND_KINDS: [&str; 16] = [
    "floating point",
    "newtype variant",
    "newtype struct",
    "struct variant",
    "tuple variant",
    "unit variant",
    "Option value",
    "byte array",
    "unit value",
    "character",
    "sequence",
    "boolean",
    "integer",
    "string",
    "enum",
    "map",
];

fn describe(message: &str) -> Kind {
    let ticked = |s: &str| -> Vec<String> {
        s.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect()
    };
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let (name, expected) = rest.split_once('`').unwrap_or((rest, ""));
        return Kind::UnknownField {
            name: name.to_string(),
            expected: ticked(expected),
        };
    }
    if let Some(rest) = message.strip_prefix("missing field `") {
        return Kind::MissingField {
            name: rest.split('`').next().unwrap_or_default().to_string(),
        };
    }
    if let Some(rest) = message.strip_prefix("unknown variant `") {
        // The variant as written is a value from the file: used to suggest, never shown.
        let (written, expected) = rest.split_once("`, ").unwrap_or((rest, ""));
        return Kind::UnknownVariant {
            written: written.to_string(),
            expected: ticked(expected),
        };
    }
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = message.strip_prefix(prefix)
            && let Some((_, expected)) = rest.rsplit_once(", expected ")
        {
            let found = FOUND_KINDS
                .iter()
                .find(|k| rest.starts_with(*k))
                .map_or("something else", |k| k);
            let article = if found.starts_with(['a', 'e', 'i', 'o', 'u']) {
                "an"
            } else {
                "a"
            };
            return Kind::Invalid(if prefix == "invalid value: " {
                format!("invalid {found}: expected {expected}")
            } else {
                format!("expected {expected}, found {article} {found}")
            });
        }
    }
    Kind::Other(message.to_string())
}

impl Kind {
    fn text(&self) -> String {
        match self {
            Self::UnknownField { name, expected } => unknown_field_message(name, expected),
            Self::MissingField { .. } => "required field is missing".into(),
            Self::UnknownVariant { written, expected } => {
                match (nearest(written, expected), expected.as_slice()) {
                    (Some(near), _) => format!("not a known value; did you mean `{near}`?"),
                    (None, []) => "not a known value".into(),
                    (None, known) => format!("not a known value; expected one of {}", list(known)),
                }
            }
            Self::Invalid(message) | Self::Other(message) => message.clone(),
        }
    }
}

fn list(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn unknown_field_message(name: &str, expected: &[String]) -> String {
    match (nearest(name, expected), expected) {
        (Some(near), _) => format!("unknown field; did you mean `{near}`?"),
        (None, []) => "unknown field; nothing is expected here".into(),
        (None, known) => format!("unknown field; expected one of {}", list(known)),
    }
}

/// The known name closest to `name`, when it is close enough to be a misspelling: at most a
/// third of the longer name's characters edited (case and `_`/`-` ignored).
fn nearest<'a>(name: &str, known: &'a [String]) -> Option<&'a str> {
    let fold = |s: &str| -> Vec<char> {
        s.chars()
            .filter(|c| *c != '_' && *c != '-')
            .flat_map(char::to_lowercase)
            .collect()
    };
    let wrote = fold(name);
    known
        .iter()
        .map(|k| {
            let k_folded = fold(k);
            let longer = wrote.len().max(k_folded.len());
            (edit_distance(&wrote, &k_folded), longer, k)
        })
        .filter(|(d, longer, _)| d * 3 <= *longer)
        .min_by_key(|(d, _, _)| *d)
        .map(|(_, _, k)| k.as_str())
}

/// Optimal string alignment distance: insertions, deletions, substitutions and transpositions of
/// neighbours each cost one (`secretNmae` is one edit from `secretName`).
fn edit_distance(a: &[char], b: &[char]) -> usize {
    let width = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * width];
    for i in 0..=a.len() {
        d[i * width] = i;
    }
    for (j, cell) in d.iter_mut().enumerate().take(width) {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[(i - 1) * width + j] + 1)
                .min(d[i * width + j - 1] + 1)
                .min(d[(i - 1) * width + j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[(i - 2) * width + j - 2] + 1);
            }
            d[i * width + j] = best;
        }
    }
    d[a.len() * width + b.len()]
}
