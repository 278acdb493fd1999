//! Every parser of request fields: no input panics, and what they accept is
//! normalised for good (parsing the output again gives the same output).
#![no_main]

use kiops_identity::domain::validate;
use kiops_identity::service::{parse, users};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    let s = s.as_ref();
    if let Ok(e) = validate::email("email", s) {
        assert_eq!(validate::email("email", &e).expect("normalised email"), e);
        assert_eq!(e, e.to_lowercase());
        assert!(!e.chars().any(char::is_whitespace));
    }
    if let Ok(n) = validate::name("name", s) {
        assert_eq!(validate::name("name", &n).expect("normalised name"), n);
    }
    if let Ok(c) = validate::org_code("code", s) {
        assert_eq!(validate::org_code("code", &c).expect("normalised code"), c);
    }
    let _ = validate::password_input("password", s);
    let _ = validate::id("id", s);
    let _ = validate::opaque_token("token", s);
    let _ = validate::text("description", s, 1000);
    let _ = validate::phone("phone", s);
    let _ = validate::avatar_url("avatar_url", s);
    let _ = parse::member_order("order_by", s);
    let _ = parse::query("query", s);
    let _ = users::user_order("order_by", s);
    let _ = users::parse_filter("filter", s);
    if data.len() >= 4 {
        let n = i32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        let _ = validate::page_size("page_size", n);
        let _ = parse::role("role", n);
        let _ = parse::permission("permission", n);
        let _ = parse::status_filter("status", n);
        let list: Vec<i32> = data
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let _ = parse::permission_bits("permissions", &list);
    }
});
