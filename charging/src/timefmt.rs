//! Times as people read and write them: ISO 8601 in UTC
//! (`2026-11-29T22:02:05.123Z`), converted to and from the milliseconds
//! since the Unix epoch the protocol carries.

use reckon_balances::period::{civil_from_days, days_from_civil};

/// `ms` since the epoch as ISO 8601 UTC; `u64::MAX` (never) as "never".
pub fn format_ms(ms: u64) -> String {
    if ms == u64::MAX {
        return "never".into();
    }
    let secs = (ms / 1000) as i64;
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    let (hh, mm, ss) = (rem / 3600, (rem / 60) % 60, rem % 60);
    let frac = ms % 1000;
    if frac == 0 {
        format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z")
    } else {
        format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{frac:03}Z")
    }
}

/// Reads a time: ms since the epoch (digits only), "never", or ISO 8601 in
/// UTC: `YYYY-MM-DD`, `YYYY-MM-DDTHH:MM:SS[.mmm]Z`.
pub fn parse_time(text: &str) -> Result<u64, String> {
    let t = text.trim();
    if t == "never" {
        return Ok(u64::MAX);
    }
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t.parse().map_err(|_| format!("{text:?}: too large"));
    }
    let bad = || {
        format!("{text:?}: expected YYYY-MM-DD, YYYY-MM-DDTHH:MM:SSZ, ms since the epoch or never")
    };
    let (date, time) = match t.split_once('T') {
        Some((d, rest)) => (d, Some(rest.strip_suffix('Z').ok_or_else(bad)?)),
        None => (t, None),
    };
    let mut parts = date.split('-');
    let (Some(y), Some(m), Some(d), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    let num = |s: &str, len: usize| -> Result<u32, String> {
        if s.len() != len || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        s.parse().map_err(|_| bad())
    };
    let (y, m, d) = (num(y, 4)? as i64, num(m, 2)?, num(d, 2)?);
    if !(1..=12).contains(&m) || d == 0 || d > days_in_month(y, m) || y < 1970 {
        return Err(bad());
    }
    let mut ms = days_from_civil(y, m, d) as u64 * 86_400_000;
    if let Some(time) = time {
        let (hms, frac) = match time.split_once('.') {
            Some((a, f)) => (a, Some(f)),
            None => (time, None),
        };
        let mut it = hms.split(':');
        let (Some(h), Some(mi), Some(s), None) = (it.next(), it.next(), it.next(), it.next())
        else {
            return Err(bad());
        };
        let (h, mi, s) = (num(h, 2)?, num(mi, 2)?, num(s, 2)?);
        if h > 23 || mi > 59 || s > 59 {
            return Err(bad());
        }
        ms += (h as u64 * 3600 + mi as u64 * 60 + s as u64) * 1000;
        if let Some(f) = frac {
            ms += num(f, 3)? as u64;
        }
    }
    Ok(ms)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses_round_trip() {
        assert_eq!(format_ms(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_ms(1_735_689_600_000), "2025-01-01T00:00:00Z");
        assert_eq!(format_ms(1_740_787_200_123), "2025-03-01T00:00:00.123Z");
        assert_eq!(format_ms(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(format_ms(u64::MAX), "never");
        for ms in [
            0u64,
            1,
            86_399_999,
            951_782_400_000,
            1_764_453_725_001,
            4_102_444_800_000,
        ] {
            assert_eq!(parse_time(&format_ms(ms)), Ok(ms), "{ms}");
        }
        assert_eq!(parse_time("2025-01-01"), Ok(1_735_689_600_000));
        assert_eq!(parse_time("1735689600000"), Ok(1_735_689_600_000));
        assert_eq!(parse_time("never"), Ok(u64::MAX));
    }

    #[test]
    fn refuses_what_is_not_a_time() {
        for bad in [
            "",
            "2025-13-01",
            "2025-02-30",
            "2023-02-29",
            "2025-01-01T24:00:00Z",
            "2025-01-01T10:00:00",
            "2025-1-01",
            "yesterday",
            "2025-01-01T10:00:00.5Z",
            "99999999999999999999999",
        ] {
            assert!(parse_time(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
