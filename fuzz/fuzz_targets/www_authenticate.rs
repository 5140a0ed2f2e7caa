//! `WWW-Authenticate` challenge parsing in verify.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for (scheme, params) in pullkeeper::fuzzing::www_authenticate(&text) {
        assert!(!scheme.is_empty());
        for (name, _) in params {
            assert!(!name.is_empty());
        }
    }
});
