//! Page tokens come back from clients: arbitrary text must be refused
//! cleanly, any change to a real token must be refused, and every token the
//! server makes decodes to exactly the key it encoded.
#![no_main]

use kiops_identity::domain::page_token::{decode, encode, fingerprint, PageKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = PageKey::derive(b"fuzz secret");
    let fp = fingerprint(&["org", "query", "email"]);
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            let _ = decode(&key, &fp, &String::from_utf8_lossy(rest));
        }
        1 => {
            // A real token with bytes changed: refused, unless unchanged.
            let token = encode(
                &key,
                &fp,
                vec![serde_json::json!("kim@example.com"), serde_json::json!(7)],
            );
            let mut bytes = token.clone().into_bytes();
            for (i, b) in rest.iter().enumerate() {
                let at = (usize::from(*b) + i * 31) % bytes.len();
                bytes[at] ^= b | 1;
            }
            let tampered = String::from_utf8_lossy(&bytes).into_owned();
            if tampered != token {
                assert!(
                    decode(&key, &fp, &tampered).is_err(),
                    "tampered token accepted"
                );
            }
        }
        _ => {
            // Round trip of whatever JSON values the bytes hold.
            // Sort keys are strings and integers; a float (never made by the
            // server) need not survive JSON text exactly.
            if let Ok(serde_json::Value::Array(values)) = serde_json::from_slice(rest) {
                if values.iter().any(has_float) {
                    return;
                }
                let token = encode(&key, &fp, values.clone());
                if token.len() <= 2048 {
                    assert_eq!(decode(&key, &fp, &token).expect("own token"), values);
                }
                assert!(decode(&key, &fingerprint(&["other"]), &token).is_err());
            }
        }
    }
});

fn has_float(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Number(n) => n.is_f64(),
        serde_json::Value::Array(a) => a.iter().any(has_float),
        serde_json::Value::Object(o) => o.values().any(has_float),
        _ => false,
    }
}
