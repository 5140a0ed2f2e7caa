//! Collecting every configuration problem at once, each naming its file and field.

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem in one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    /// Dotted path of the field (`provider.url`, `refresh.schedule`); empty for the whole file.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}: {}: {}",
                self.file.display(),
                self.field,
                self.message
            )
        }
    }
}

/// Problems found while validating one file, relative to a field prefix.
#[derive(Debug)]
pub struct FieldProblems {
    file: PathBuf,
    prefix: String,
    list: Vec<Problem>,
    check_files: bool,
}

impl FieldProblems {
    pub fn new(file: &Path) -> Self {
        Self {
            file: file.to_path_buf(),
            prefix: String::new(),
            list: Vec::new(),
            check_files: false,
        }
    }

    /// Whether files named by the config must exist now. Off by default (pure shape checks);
    /// the config loader turns it on except when validating, outside the pod, a config whose
    /// mounted files exist only inside it.
    pub fn with_file_checks(mut self, check_files: bool) -> Self {
        self.check_files = check_files;
        self
    }

    /// Records a problem on `field` when file checks are on and `path` cannot be opened.
    pub fn require_file(&mut self, field: impl AsRef<str>, path: &Path) {
        if !self.check_files {
            return;
        }
        if let Err(e) = std::fs::File::open(path) {
            self.push(field, format!("cannot read {}: {e}", path.display()));
        }
    }

    /// Records a problem on `field` (relative to the current prefix).
    pub fn push(&mut self, field: impl AsRef<str>, message: impl Into<String>) {
        let field = field.as_ref();
        let field = match (self.prefix.is_empty(), field.is_empty()) {
            (true, _) => field.to_string(),
            (false, true) => self.prefix.clone(),
            (false, false) => format!("{}.{field}", self.prefix),
        };
        self.list.push(Problem {
            file: self.file.clone(),
            field,
            message: message.into(),
        });
    }

    /// Runs `check` with `sub` appended to the field prefix.
    pub fn scoped(&mut self, sub: &str, check: impl FnOnce(&mut Self)) {
        let saved = self.prefix.clone();
        self.prefix = if saved.is_empty() {
            sub.to_string()
        } else {
            format!("{saved}.{sub}")
        };
        check(self);
        self.prefix = saved;
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn into_vec(self) -> Vec<Problem> {
        self.list
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scoped_problems_carry_file_and_dotted_field() {
        let mut p = FieldProblems::new(Path::new("/c/harbor.yaml"));
        p.scoped("provider", |p| {
            p.scoped("auth", |p| p.push("bearer", "missing"));
        });
        p.push("secretName", "empty");
        let v: Vec<String> = p.into_vec().iter().map(ToString::to_string).collect();
        assert_eq!(
            v,
            [
                "/c/harbor.yaml: provider.auth.bearer: missing",
                "/c/harbor.yaml: secretName: empty"
            ]
        );
    }
}
