//! The http provider's response mapping: an answer's bytes → JSON → a credential, under each of
//! a few mappings (the first byte picks one).
#![no_main]

use chrono::{TimeZone as _, Utc};
use libfuzzer_sys::fuzz_target;
use pullkeeper::providers::http::ResponseMapping;

const MAPPINGS: [&str; 4] = [
    "username: /username\npassword: /password\nexpiresAt: /expiresAt\nexpiresIn: /expiresIn\n",
    "auth: /auths/0/auth\nregistry: /registry\njwtExp: /token\n",
    "username: {value: robot}\npassword: /data/secret\nexpiresIn: /ttl\nissuedAt: /issued\n",
    "username: /a~1b/~0c\npassword: /token\njwtExp: /token\n",
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let mapping: ResponseMapping =
        serde_yaml_ng::from_str(MAPPINGS[usize::from(pick) % MAPPINGS.len()]).expect("mapping");
    let received = Utc.timestamp_opt(1_780_000_000, 0).single().expect("time");
    match mapping.map_body(body, received, "the fuzzer") {
        Ok(credential) => {
            let _ = credential.validate();
        }
        Err(e) => {
            // Never a body's text in a message: only its position, field names and pointers.
            assert!(e.message.len() < 1024, "{}", e.message.len());
        }
    }
});
