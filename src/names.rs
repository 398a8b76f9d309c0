//! Names are bytes: how names that are not UTF-8 travel through JSON.
//!
//! A Linux file name is any bytes but `/` and NUL. JSON strings are
//! Unicode, so a name that is valid UTF-8 is written as a plain string and
//! any other is written as `{"bytes": "<base64>"}` (standard alphabet, with
//! padding): the convention of ripgrep's JSON output. Nothing is ever
//! replaced by U+FFFD, so every name can be read back exactly.

/// Bytes as JSON: a string when they are UTF-8, else `{"bytes": base64}`.
pub fn bytes_json(b: &[u8]) -> serde_json::Value {
    match std::str::from_utf8(b) {
        Ok(s) => serde_json::Value::String(s.to_string()),
        Err(_) => serde_json::json!({ "bytes": base64(b) }),
    }
}

/// Standard base64 (RFC 4648, with `=` padding).
pub fn base64(b: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(b.len().div_ceil(3) * 4);
    for c in b.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn only_invalid_utf8_is_wrapped() {
        assert_eq!(bytes_json("café".as_bytes()), serde_json::json!("café"));
        assert_eq!(
            bytes_json(b"caf\xe9.txt"),
            serde_json::json!({"bytes": "Y2Fm6S50eHQ="})
        );
    }
}
