//! Namespace name globs and equality-based label selectors.

use std::collections::BTreeMap;
use std::str::FromStr;

/// Matches `*` (any run) and `?` (one character) against the whole name.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        // A `*` is a wildcard first, even against a name holding a literal `*`.
        if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// One requirement of an equality-based selector.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    NotExists(String),
}

/// `k=v`, `k==v`, `k!=v`, `k`, `!k`, comma-separated; all must hold. Empty matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<Requirement>);

impl LabelSelector {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::NotExists(k) => !labels.contains_key(k),
        })
    }
}

impl FromStr for LabelSelector {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        // Said once for the whole selector: split at its commas, `in (a, b)` reads as nonsense.
        if s.contains(['(', ')']) {
            return Err(
                "set-based requirements (`in`, `notin`) are not supported; use k=v, k!=v, k or \
                 !k separated by commas"
                    .into(),
            );
        }
        let mut reqs = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let req = if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEquals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                Requirement::Equals(k.trim().into(), v.trim().into())
            } else if let Some(k) = part.strip_prefix('!') {
                Requirement::NotExists(k.trim().into())
            } else {
                Requirement::Exists(part.into())
            };
            let key = match &req {
                Requirement::Equals(k, _)
                | Requirement::NotEquals(k, _)
                | Requirement::Exists(k)
                | Requirement::NotExists(k) => k,
            };
            if key.is_empty() || key.contains([' ', '(', ')']) {
                return Err(format!(
                    "{part:?} is not a requirement; use k=v, k!=v, k or !k separated by commas \
                     (set-based `in`/`notin` are not supported)"
                ));
            }
            // A key or value no label can have would never match: refused, not ignored.
            if !is_label_key(key) {
                return Err(format!(
                    "{part:?}: {key:?} is not a label key ([prefix/]name, the name at most 63 \
                     letters, digits, '-', '_' or '.', starting and ending with a letter or digit)"
                ));
            }
            if let Requirement::Equals(_, v) | Requirement::NotEquals(_, v) = &req
                && !is_label_value(v)
            {
                return Err(format!(
                    "{part:?}: the value is not a label value (at most 63 letters, digits, '-', \
                     '_' or '.', starting and ending with a letter or digit)"
                ));
            }
            reqs.push(req);
        }
        Ok(Self(reqs))
    }
}

/// A label value: empty, or at most 63 of `[A-Za-z0-9_.-]` starting and ending alphanumeric.
fn is_label_value(v: &str) -> bool {
    v.is_empty()
        || (v.len() <= 63
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && v.starts_with(|c: char| c.is_ascii_alphanumeric())
            && v.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

/// A label key: a non-empty label value as its name, with an optional DNS subdomain prefix.
fn is_label_key(k: &str) -> bool {
    let (prefix, name) = match k.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            })
    });
    prefix_ok && !name.is_empty() && is_label_value(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_whole_names() {
        assert!(glob_match("*", "anything"));
        assert!(glob_match("team-*", "team-a"));
        assert!(!glob_match("team-*", "xteam-a"));
        assert!(glob_match("t?am-*-prod", "team-x-prod"));
        assert!(!glob_match("t?am-*-prod", "team-x-dev"));
        assert!(glob_match("a*b*c", "aXbYbZc"));
        assert!(!glob_match("abc", "abcd"));
    }

    /// Found by the `selector` fuzz target: `*` against a name starting with `*` matched the
    /// character literally and then failed on the rest.
    #[test]
    fn a_star_is_a_wildcard_even_against_a_name_holding_one() {
        assert!(glob_match("*", "*tttea,"));
        assert!(glob_match("a*", "a*b"));
        assert!(glob_match("*b", "**b"));
        assert!(!glob_match("*c", "*b"));
    }

    #[test]
    fn selectors_combine_requirements() {
        let s: LabelSelector = "env=prod, !legacy, tier!=db, team".parse().expect("parses");
        let labels = |kv: &[(&str, &str)]| {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        assert!(s.matches(&labels(&[("env", "prod"), ("team", "a")])));
        assert!(!s.matches(&labels(&[("env", "prod"), ("team", "a"), ("legacy", "")])));
        assert!(!s.matches(&labels(&[("env", "prod"), ("team", "a"), ("tier", "db")])));
        assert!(!s.matches(&labels(&[("env", "dev"), ("team", "a")])));
        assert!("env in (a,b)".parse::<LabelSelector>().is_err());
    }

    #[test]
    fn keys_and_values_no_label_can_have_are_refused() {
        for ok in [
            "app.kubernetes.io/name=web",
            "env=",
            "!example.com/legacy",
            "a_b.c-d!=X.y",
        ] {
            assert!(ok.parse::<LabelSelector>().is_ok(), "{ok}");
        }
        for bad in [
            "env=prod/eu",
            "-env=a",
            "Example.com/x=a",
            "/x",
            "a/b/c",
            "env=-a",
            "!a=b",
        ] {
            assert!(bad.parse::<LabelSelector>().is_err(), "{bad}");
        }
        let long = format!("env={}", "v".repeat(64));
        assert!(long.parse::<LabelSelector>().is_err());
    }
}
