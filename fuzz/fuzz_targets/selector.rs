//! The namespace label selector and name globs: the first line is a selector, the second a glob,
//! the rest `k=v` labels and a namespace name.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use pullkeeper::config::{LabelSelector, glob_match};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let selector = lines.next().unwrap_or_default();
    let glob = lines.next().unwrap_or_default();
    let name = lines.next().unwrap_or_default();
    let labels: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    if let Ok(s) = selector.parse::<LabelSelector>() {
        let _ = s.matches(&labels);
        // The empty selector matches everything.
        if selector.split(',').all(|p| p.trim().is_empty()) {
            assert!(s.matches(&labels));
        }
    }
    let _ = glob_match(glob, name);
    assert!(glob_match("*", name));
    if !name.contains(['*', '?']) {
        assert!(glob_match(name, name));
    }
});
