//! pullkeeper keeps short-lived registry credentials fresh as `kubernetes.io/dockerconfigjson`
//! Secrets in every target namespace, and keeps `ServiceAccounts` referencing them.

pub mod access;
pub mod admin;
pub mod apply;
pub mod cli;
pub mod commands;
pub mod config;
pub mod credential;
pub mod credential_provider;
pub mod daemon;
pub mod events;
#[doc(hidden)]
pub mod fuzzing;
pub mod index;
pub mod leader;
pub mod logging;
pub mod metrics;
pub mod node_install;
pub mod ownership;
pub mod plan;
pub mod problems;
pub mod providers;
pub mod queue;
pub mod reconcile;
pub mod recover;
pub mod recovery;
pub mod refresh;
pub mod reload;
pub mod render;
pub mod schedule;
pub mod sensitive;
pub mod store;
pub mod verify;

#[cfg(test)]
pub(crate) mod testing;
