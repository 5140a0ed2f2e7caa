//! JWT expiry parsing: the input as a whole token, and as the payload of one.
#![no_main]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = pullkeeper::fuzzing::jwt_exp(&text);
    let token = format!("eyJhbGciOiJSUzI1NiJ9.{}.c2ln", URL_SAFE_NO_PAD.encode(data));
    if let Some(exp) = pullkeeper::fuzzing::jwt_exp(&token) {
        // A time is only read from a payload that is JSON with a numeric `exp`.
        let payload: serde_json::Value = serde_json::from_slice(data).expect("JSON payload");
        assert!(
            payload.get("exp").is_some_and(serde_json::Value::is_number),
            "{exp}"
        );
    }
});
