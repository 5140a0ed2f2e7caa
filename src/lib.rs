//! pullkeeper keeps short-lived registry credentials fresh as `kubernetes.io/dockerconfigjson`
//! Secrets in every target namespace, and keeps ServiceAccounts referencing them.

pub mod config;
pub mod credential;
pub mod providers;
pub mod sensitive;
