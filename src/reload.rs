//! Reloading the config directory: validate, build the sources, swap the generation. An invalid
//! directory is rejected whole and the running config keeps working; the same rejection is
//! logged and counted once, and the failure state clears as soon as the directory again holds
//! the running config or a valid new one.

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::{self, Config, LoadOptions};
use crate::metrics::Metrics;
use crate::problems::Problem;
use crate::store::{Generation, Sources, Store};

/// What one look at the config directory did.
pub enum Reload {
    /// The directory holds the running config.
    Unchanged,
    /// A new config runs now.
    Loaded(Arc<Generation>),
    /// The directory is invalid; the running config stays.
    Rejected,
}

/// Builds every source (provider) of a config; any failure rejects the config.
pub async fn build_sources(config: &Config) -> Result<Sources, Vec<Problem>> {
    let mut built = Sources::new();
    let mut problems = Vec::new();
    for reg in &config.registries {
        match reg.provider.build().await {
            Ok(p) => {
                built.insert(reg.name.clone(), p);
            }
            Err(e) => problems.push(Problem {
                file: reg.file.clone(),
                field: "provider".into(),
                message: e.to_string(),
            }),
        }
    }
    if problems.is_empty() {
        Ok(built)
    } else {
        Err(problems)
    }
}

/// Loads a config directory for a start: the config and its sources, or every problem.
pub async fn load_first(
    dir: &std::path::Path,
    options: LoadOptions,
) -> Result<Generation, Vec<Problem>> {
    let config = config::load(dir, options)?;
    let sources = build_sources(&config).await?;
    Ok(Generation::new(config, sources, None))
}

/// Watches one config directory.
pub struct Reloader {
    dir: PathBuf,
    options: LoadOptions,
    last_rejection: Option<Vec<Problem>>,
}

impl Reloader {
    pub fn new(dir: PathBuf, options: LoadOptions) -> Self {
        Self {
            dir,
            options,
            last_rejection: None,
        }
    }

    /// Looks at the directory once.
    pub async fn reload(&mut self, store: &Store, metrics: &Metrics) -> Reload {
        let current = store.current();
        let config = match config::load(&self.dir, self.options) {
            Ok(c) => c,
            Err(problems) => return self.reject(metrics, problems),
        };
        if config.fingerprint == current.config.fingerprint {
            // Back to the running config after a rejected edit: the failure state clears.
            self.last_rejection = None;
            metrics.config.current();
            return Reload::Unchanged;
        }
        let sources = match build_sources(&config).await {
            Ok(s) => s,
            Err(problems) => return self.reject(metrics, problems),
        };
        for gone in current
            .config
            .registries
            .iter()
            .filter(|o| !config.registries.iter().any(|n| n.name == o.name))
        {
            metrics.forget_registry(&gone.name);
        }
        let registries = config.registries.len();
        let next = store.swap(Generation::new(config, sources, Some(&current)));
        self.last_rejection = None;
        metrics.config.accepted(registries);
        Reload::Loaded(next)
    }

    fn reject(&mut self, metrics: &Metrics, problems: Vec<Problem>) -> Reload {
        if self.last_rejection.as_ref() != Some(&problems) {
            metrics.config.rejected(&problems);
            self.last_rejection = Some(problems);
        }
        Reload::Rejected
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATIC: &str = "provider:\n  type: static\n  username: {value: robot}\n  password: {env: PATH}\nservers: [registry.example]\nsecretName: pull\n";

    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit_once(' '))
            .and_then(|(_, v)| v.parse().ok())
    }

    #[tokio::test]
    async fn restoring_the_running_config_clears_a_rejection_which_is_counted_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("harbor.yaml");
        std::fs::write(&file, STATIC).expect("write");
        let metrics = Metrics::new().expect("metrics");
        let store = Store::new(
            load_first(dir.path(), LoadOptions::default())
                .await
                .expect("valid"),
        );
        metrics.config.accepted(1);
        let mut reloader = Reloader::new(dir.path().to_path_buf(), LoadOptions::default());
        assert!(matches!(
            reloader.reload(&store, &metrics).await,
            Reload::Unchanged
        ));

        std::fs::write(
            &file,
            format!("{STATIC}refresh: {{schedule: \"61 * * * *\"}}\n"),
        )
        .expect("write");
        for _ in 0..3 {
            assert!(matches!(
                reloader.reload(&store, &metrics).await,
                Reload::Rejected
            ));
        }
        let text = metrics.render();
        assert_eq!(
            sample(&text, "pullkeeper_config_reloads_total{result=\"failure\"}"),
            Some(1.0),
            "the same rejection is counted once"
        );
        assert_eq!(
            sample(&text, "pullkeeper_config_last_reload_successful"),
            Some(0.0)
        );

        std::fs::write(&file, STATIC).expect("write");
        assert!(matches!(
            reloader.reload(&store, &metrics).await,
            Reload::Unchanged
        ));
        assert_eq!(
            sample(
                &metrics.render(),
                "pullkeeper_config_last_reload_successful"
            ),
            Some(1.0)
        );
    }

    #[tokio::test]
    async fn an_emptied_directory_is_refused_unless_allowed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("harbor.yaml");
        std::fs::write(&file, STATIC).expect("write");
        let metrics = Metrics::new().expect("metrics");
        let store = Store::new(
            load_first(dir.path(), LoadOptions::default())
                .await
                .expect("valid"),
        );
        std::fs::remove_file(&file).expect("rm");
        let mut reloader = Reloader::new(dir.path().to_path_buf(), LoadOptions::default());
        assert!(matches!(
            reloader.reload(&store, &metrics).await,
            Reload::Rejected
        ));
        assert_eq!(store.current().config.registries.len(), 1);
        assert!(
            load_first(dir.path(), LoadOptions::default())
                .await
                .is_err()
        );

        let allowing = LoadOptions {
            allow_empty: true,
            ..LoadOptions::default()
        };
        let mut reloader = Reloader::new(dir.path().to_path_buf(), allowing);
        assert!(matches!(
            reloader.reload(&store, &metrics).await,
            Reload::Loaded(_)
        ));
        assert!(store.current().config.registries.is_empty());
    }
}
