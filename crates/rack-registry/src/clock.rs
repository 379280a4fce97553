//! Wall-clock helpers shared by expiry checks, webhooks and the audit trail.

/// Milliseconds since the Unix epoch.
pub fn epoch_ms(at: time::OffsetDateTime) -> i64 {
    (at.unix_timestamp_nanos() / 1_000_000) as i64
}

/// Now, in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    // From the system clock directly (every request asks; a calendar time is not needed).
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
        + offset_ms()
}

/// `RACK_TEST_CLOCK_OFFSET_MS`: a test-only skew of this process's wall clock, to show that
/// nothing which must agree across replicas (publish leases, SPEC §11.2) reads it. Not a
/// setting: never set it in production.
fn offset_ms() -> i64 {
    static OFFSET: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *OFFSET.get_or_init(|| {
        std::env::var("RACK_TEST_CLOCK_OFFSET_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    })
}

/// `2026-11-26T05:42:24.682Z`: ISO 8601 / RFC 3339, UTC, milliseconds.
pub fn format_timestamp(at: time::OffsetDateTime) -> String {
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    at.to_offset(time::UtcOffset::UTC)
        .format(&fmt)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats() {
        let at = time::macros::datetime!(2026-11-26 05:42:24.682 +01:00);
        assert_eq!(super::format_timestamp(at), "2026-11-26T04:42:24.682Z");
        assert_eq!(
            super::epoch_ms(time::macros::datetime!(1970-01-01 00:00:01 UTC)),
            1000
        );
    }
}
