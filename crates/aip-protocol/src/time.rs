//! Timestamp formats.

use chrono::{DateTime, SecondsFormat, Utc};

/// RFC 3339 UTC with microseconds and a `+00:00` offset, as the reference emits on the wire.
pub fn wire_timestamp(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6f+00:00").to_string()
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
