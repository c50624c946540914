//! Timestamps are milliseconds since the Unix epoch (UTC) on the wire and
//! RFC 3339 in JSON shown to people.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The last millisecond RFC 3339 can show (9999-12-31T23:59:59.999Z).
pub const MAX_MS: u64 = 253_402_300_799_999;

/// RFC 3339 with milliseconds, e.g. `2026-11-21T19:40:00.123Z`. Times come
/// from stored events that anyone with write access could have made, so a
/// time past the year 9999 is shown as [`MAX_MS`] instead of failing.
pub fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms.min(MAX_MS))).to_string()
}

/// Parses `30s`, `5m`, `24h`, `1h30m`, `250ms`. Zero is refused.
/// Milliseconds since the epoch of an RFC 3339 time (the broker's
/// `Nats-Time-Stamp`, with up to nanoseconds); `None` if it is not one.
pub fn parse_rfc3339_ms(s: &str) -> Option<u64> {
    let t = humantime::parse_rfc3339_weak(s.trim()).ok()?;
    let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
    u64::try_from(d.as_millis()).ok()
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim()).map_err(|e| {
        format!("'{s}' is not a duration ({e}); use forms like 30s, 5m, 24h, 1h30m")
    })?;
    if d.is_zero() {
        return Err(format!(
            "'{s}' is zero; give a positive duration such as 30s"
        ));
    }
    Ok(d)
}

/// A short human form of a duration: `3d4h`, `5m10s`, `850ms`.
pub fn short_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        return format!("{}ms", d.as_millis());
    }
    let (days, hours, mins, s) = (secs / 86_400, secs / 3_600 % 24, secs / 60 % 60, secs % 60);
    let parts = [(days, "d"), (hours, "h"), (mins, "m"), (s, "s")];
    let mut out = String::new();
    let mut shown = 0;
    for (n, unit) in parts {
        if (n > 0 || shown > 0) && shown < 2 {
            if n > 0 {
                out.push_str(&format!("{n}{unit}"));
            }
            shown += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("0s").is_err());
        assert_eq!(
            parse_rfc3339_ms("2026-12-02T10:00:00.123456789Z"),
            Some(1_796_205_600_123)
        );
        assert_eq!(parse_rfc3339_ms("soon"), None);
        assert_eq!(short_duration(Duration::from_secs(90_061)), "1d1h");
        assert_eq!(short_duration(Duration::from_secs(310)), "5m10s");
        assert_eq!(short_duration(Duration::from_millis(850)), "850ms");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(u64::MAX), "9999-12-31T23:59:59.999Z");
        assert_eq!(rfc3339(MAX_MS + 1), "9999-12-31T23:59:59.999Z");
    }
}
