//! Wall-clock time as the host records it: microseconds since the Unix epoch, shown in
//! RFC 3339. Only the host reads the clock; guests get time from event envelopes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub fn now_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// `2026-11-23T06:52:57.636230Z`
pub fn rfc3339_micros(micros: u64) -> String {
    humantime::format_rfc3339_micros(UNIX_EPOCH + Duration::from_micros(micros)).to_string()
}

/// `2026-11-23T06:52:57Z`
pub fn rfc3339_seconds(micros: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_micros(micros)).to_string()
}
