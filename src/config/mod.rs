//! Configuration: one YAML file per registry in a directory, plus an optional `defaults.yaml`.

mod problems;

pub use problems::{FieldProblems, Problem};
