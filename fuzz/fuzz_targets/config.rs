//! Config parse + validate: a registry file (and, before a NUL byte, a defaults.yaml) through
//! the same steps as `pullkeeper check` after reading the directory.
#![no_main]

use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (defaults, registry) = match data.iter().position(|b| *b == 0) {
        Some(i) => (Some(&data[..i]), &data[i + 1..]),
        None => (None, data),
    };
    let mut files = Vec::new();
    if let Some(d) = defaults {
        files.push((
            PathBuf::from("/fuzz/defaults.yaml"),
            String::from_utf8_lossy(d).into_owned(),
        ));
    }
    files.push((
        PathBuf::from("/fuzz/r.yaml"),
        String::from_utf8_lossy(registry).into_owned(),
    ));
    match pullkeeper::config::load_files(&files, false) {
        Ok(config) => {
            // A valid config is used: scope rules and every message format.
            for r in &config.registries {
                let _ = r.namespaces.matches("team-a", &Default::default());
                let _ = r.service_accounts.matches("default");
            }
        }
        Err(problems) => {
            assert!(!problems.is_empty());
            for p in problems {
                let _ = p.to_string();
            }
        }
    }
});
