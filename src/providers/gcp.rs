//! Placeholder: being implemented.

use std::sync::Arc;

use serde::Deserialize;

use super::{ErrorCategory, Provider, ProviderError};
use crate::config::FieldProblems;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GcpConfig {}

impl GcpConfig {
    pub fn validate(&self, _problems: &mut FieldProblems) {}

    pub async fn build(&self) -> Result<Arc<dyn Provider>, ProviderError> {
        Err(ProviderError::new(
            ErrorCategory::LocalInput,
            "not implemented yet",
        ))
    }
}
