//! Decoding MessagePack from the network with a small nesting bound.
//!
//! rmp-serde allows 1,024 levels by default, which is enough to overflow a
//! 2 MiB worker stack while skipping a hostile value. moira's own messages
//! nest a few levels, so anything deeper than [`MAX_DEPTH`] is refused.

use serde::de::DeserializeOwned;

/// How deeply a MessagePack value may nest.
pub const MAX_DEPTH: usize = 32;

/// Decodes `bytes` as `T`, refusing values nested deeper than [`MAX_DEPTH`].
pub fn from_msgpack<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, rmp_serde::decode::Error> {
    let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
    de.set_max_depth(MAX_DEPTH);
    T::deserialize(&mut de)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    /// `depth` nested one-element arrays around a zero.
    fn nested(depth: usize) -> Vec<u8> {
        let mut v = vec![0x91; depth];
        v.push(0x00);
        v
    }

    #[test]
    fn deep_values_are_refused_not_overflowed() {
        let v: Result<serde::de::IgnoredAny, _> = super::from_msgpack(&nested(1_000_000));
        assert!(v.is_err());
        let v: Result<serde::de::IgnoredAny, _> = super::from_msgpack(&nested(10));
        assert!(v.is_ok());
        // Inside a map, as in an event of an unknown kind.
        let mut m = vec![0x81, 0xa1, b'k'];
        m.extend(nested(100_000));
        let v: Result<BTreeMap<String, serde::de::IgnoredAny>, _> = super::from_msgpack(&m);
        assert!(v.is_err());
    }
}
