//! Timestamp formats.

use chrono::{DateTime, SecondsFormat, Utc};

/// RFC 3339 UTC with microseconds and a `+00:00` offset, as the reference emits on the wire.
///
/// Every server frame carries one, so this is on the hot path: chrono's fixed RFC 3339
/// writer, not a format string interpreted per call.
pub fn wire_timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, false)
}

/// Current time in the wire format.
pub fn wire_now() -> String {
    wire_timestamp(Utc::now())
}

/// RFC 3339 UTC with a `Z` suffix and microseconds, as the HTTP API uses.
pub fn http_timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Seconds as error texts print them: `30`, or `0.5` for fractions.
pub fn fmt_secs(d: std::time::Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{}", s as u64)
    } else {
        format!("{s}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_timestamp_is_microseconds_with_a_numeric_utc_offset() {
        let cases = [
            (0, "1970-01-01T00:00:00.000000+00:00"),
            (1_764_111_600_000_007, "2025-11-25T23:00:00.000007+00:00"),
            (1_798_761_599_999_999, "2026-12-31T23:59:59.999999+00:00"),
        ];
        for (micros, text) in cases {
            let t = DateTime::from_timestamp_micros(micros).expect("in range");
            assert_eq!(wire_timestamp(t), text);
            // The same as the format string the reference's isoformat() corresponds to.
            assert_eq!(
                wire_timestamp(t),
                t.format("%Y-%m-%dT%H:%M:%S%.6f+00:00").to_string()
            );
        }
    }
}
