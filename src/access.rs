//! What this identity may do, asked of the API server: one access review for one verb
//! ([`allowed`]), and which Secret names the role lets pullkeeper read and write
//! ([`secret_access`], from one rules review). The shipped role grants the Secret verbs only
//! by name (`resourceNames`); a registry whose Secret name the role does not cover is not
//! served, and the daemon says which line the role lacks.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, ResourceRule, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
    SelfSubjectRulesReview, SelfSubjectRulesReviewSpec,
};
use kube::Client;
use kube::api::{Api, PostParams};

/// The Secret verbs pullkeeper needs on each name it manages (`create` cannot be limited by
/// name: the name is not known when it is authorized).
pub const SECRET_VERBS: [&str; 5] = ["get", "list", "watch", "patch", "delete"];

/// Asks the API server whether this identity may `verb` the resource (in `namespace`, or in
/// every namespace; on the object `name`, or on any).
pub async fn allowed(
    client: &Client,
    verb: &str,
    group: &str,
    resource: &str,
    namespace: Option<&str>,
    name: Option<&str>,
) -> Result<bool, kube::Error> {
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                group: Some(group.into()),
                resource: Some(resource.into()),
                namespace: namespace.map(String::from),
                name: name.map(String::from),
                ..ResourceAttributes::default()
            }),
            ..SelfSubjectAccessReviewSpec::default()
        },
        ..SelfSubjectAccessReview::default()
    };
    let answer = Api::<SelfSubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

/// The Secret verbs granted by name, and those granted for every name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SecretAccess {
    /// Verbs allowed on every Secret (a rule without `resourceNames`).
    pub any: BTreeSet<String>,
    /// Verbs allowed per name.
    pub named: BTreeMap<String, BTreeSet<String>>,
}

impl SecretAccess {
    /// Reads the Secret rules out of a rules review's rules.
    pub fn from_rules(rules: &[ResourceRule]) -> Self {
        let mut access = Self::default();
        for rule in rules {
            let core = rule
                .api_groups
                .iter()
                .flatten()
                .any(|g| g.is_empty() || g == "*");
            let secrets = rule
                .resources
                .iter()
                .flatten()
                .any(|r| r == "secrets" || r == "*");
            if !core || !secrets {
                continue;
            }
            let verbs: Vec<String> = if rule.verbs.iter().any(|v| v == "*") {
                SECRET_VERBS
                    .iter()
                    .map(|v| (*v).to_string())
                    .chain(["create".to_string()])
                    .collect()
            } else {
                rule.verbs.clone()
            };
            match rule.resource_names.as_deref() {
                None | Some([]) => access.any.extend(verbs),
                Some(names) => {
                    for name in names {
                        access
                            .named
                            .entry(name.clone())
                            .or_default()
                            .extend(verbs.iter().cloned());
                    }
                }
            }
        }
        access
    }

    /// The verbs pullkeeper needs on `name` that the role does not grant.
    pub fn missing(&self, name: &str) -> Vec<&'static str> {
        let named = self.named.get(name);
        SECRET_VERBS
            .into_iter()
            .filter(|v| !self.any.contains(*v) && !named.is_some_and(|n| n.contains(*v)))
            .collect()
    }

    /// Whether pullkeeper may do all it needs with Secrets of this name.
    pub fn covers(&self, name: &str) -> bool {
        self.missing(name).is_empty()
    }

    /// Whether new Secrets may be created.
    pub fn may_create(&self) -> bool {
        self.any.contains("create")
    }

    /// The names granted every verb pullkeeper needs by name.
    pub fn covered_names(&self) -> BTreeSet<String> {
        self.named
            .keys()
            .filter(|n| self.covers(n))
            .cloned()
            .collect()
    }
}

/// How to say what the role lacks for a Secret name.
pub fn missing_line(name: &str, verbs: &[&str]) -> String {
    format!(
        "the role does not let pullkeeper {} Secret {name}: add \"{name}\" to the resourceNames of the secrets rule in ClusterRole pullkeeper (pullkeeper check --config DIR prints the list)",
        verbs.join("/")
    )
}

/// Which Secret verbs the role grants this identity, by name (rules bound cluster-wide apply in
/// every namespace; `namespace` is where pullkeeper runs).
pub async fn secret_access(client: &Client, namespace: &str) -> Result<SecretAccess, kube::Error> {
    let review = SelfSubjectRulesReview {
        spec: SelfSubjectRulesReviewSpec {
            namespace: Some(namespace.to_string()),
        },
        ..SelfSubjectRulesReview::default()
    };
    let answer = Api::<SelfSubjectRulesReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await?;
    let rules = answer.status.map(|s| s.resource_rules).unwrap_or_default();
    Ok(SecretAccess::from_rules(&rules))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(verbs: &[&str], names: &[&str]) -> ResourceRule {
        ResourceRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["secrets".into()]),
            verbs: verbs.iter().map(|v| (*v).to_string()).collect(),
            resource_names: (!names.is_empty())
                .then(|| names.iter().map(|n| (*n).to_string()).collect()),
        }
    }

    #[test]
    fn names_are_covered_only_when_every_verb_is_granted_for_them() {
        let access = SecretAccess::from_rules(&[
            rule(&["create"], &[]),
            rule(&["get", "list", "watch", "patch", "delete"], &["ecr-pull"]),
            rule(&["get", "list"], &["half"]),
        ]);
        assert!(access.covers("ecr-pull"));
        assert!(access.may_create());
        assert_eq!(access.missing("half"), vec!["watch", "patch", "delete"]);
        assert_eq!(access.missing("other").len(), 5);
        assert_eq!(
            access.covered_names(),
            BTreeSet::from(["ecr-pull".to_string()])
        );
    }

    #[test]
    fn a_rule_for_every_secret_covers_every_name() {
        let access = SecretAccess::from_rules(&[rule(&["*"], &[])]);
        assert!(access.covers("anything"));
        assert!(access.may_create());
        assert!(access.covered_names().is_empty());
    }

    #[test]
    fn the_missing_line_says_what_to_add() {
        let line = missing_line("quay-pull", &["get", "watch"]);
        assert!(line.contains("\"quay-pull\""));
        assert!(line.contains("get/watch"));
    }
}
