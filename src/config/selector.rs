//! Namespace name globs and equality-based label selectors.

use std::collections::BTreeMap;
use std::str::FromStr;

/// Matches `*` (any run) and `?` (one character) against the whole name.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
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
            reqs.push(req);
        }
        Ok(Self(reqs))
    }
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
}
