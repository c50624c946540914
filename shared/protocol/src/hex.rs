//! Lower-case hex, as digests, signature tags and link tokens are written.

/// `bytes` as lower-case hex.
pub fn encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes a hex string stands for; `None` for anything else.
pub fn decode(s: &str) -> Option<Vec<u8>> {
    // from_str_radix alone would also take a sign ("+1").
    if s.len() % 2 != 0 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trips_and_refuses_what_is_not_hex() {
        assert_eq!(super::encode(&[0, 0xab, 0xff]), "00abff");
        assert_eq!(super::decode("00abFF"), Some(vec![0, 0xab, 0xff]));
        for bad in ["0", "zz", "é0", "+1"] {
            assert_eq!(super::decode(bad), None, "{bad}");
        }
    }
}
