//! Calendar arithmetic without a time-zone database: a card states a fixed
//! UTC offset, and time bands are minutes of the local week.

pub(crate) const MINUTE_MS: i128 = 60_000;
pub(crate) const DAY_MS: i128 = 86_400_000;
pub(crate) const WEEK_MS: i128 = 7 * DAY_MS;
const WEEK_MIN: u32 = 7 * 1440;

/// Day names, Monday first (index = day of week).
pub(crate) const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// Milliseconds since Monday 00:00 local time.
#[inline]
pub(crate) fn week_pos(at_ms: u64, offset_min: i16) -> i128 {
    // 1970-01-01 was a Thursday: day index 3 with Monday = 0.
    let local = at_ms as i128 + offset_min as i128 * MINUTE_MS;
    (local + 3 * DAY_MS).rem_euclid(WEEK_MS)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// `days_from_civil`).
pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Number of days in a month.
pub(crate) fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

/// One named band: local weekly intervals `[start, end)` in minutes of the week.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Band {
    pub name: String,
    /// Days (bit 0 = Monday) on which the band starts.
    pub days: u8,
    /// Start minute of the day.
    pub from_min: u32,
    /// End minute of the day; `<= from_min` means it ends the next day.
    pub to_min: u32,
}

impl Band {
    /// The band's intervals in minutes of the week, split at the week's wrap.
    fn intervals(&self) -> Vec<(u32, u32)> {
        let len = if self.to_min > self.from_min {
            self.to_min - self.from_min
        } else {
            self.to_min + 1440 - self.from_min
        };
        let mut out = Vec::new();
        for d in 0..7u32 {
            if self.days & (1 << d) == 0 {
                continue;
            }
            let start = d * 1440 + self.from_min;
            let end = start + len;
            if end <= WEEK_MIN {
                out.push((start, end));
            } else {
                out.push((start, WEEK_MIN));
                out.push((0, end - WEEK_MIN));
            }
        }
        out
    }
}

/// The bands of a version, compiled to a table of constant-membership segments.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Bands {
    pub bands: Vec<Band>,
    /// `(start ms of week, member bit set)`, sorted, first start is 0; adjacent
    /// segments differ in membership.
    segments: Vec<(i128, u32)>,
}

impl Bands {
    /// Compiles the band list (at most 32 bands).
    pub fn new(bands: Vec<Band>) -> Bands {
        let ivs: Vec<Vec<(u32, u32)>> = bands.iter().map(Band::intervals).collect();
        let mut edges: Vec<u32> = vec![0];
        for iv in &ivs {
            for &(a, b) in iv {
                edges.push(a);
                if b < WEEK_MIN {
                    edges.push(b);
                }
            }
        }
        edges.sort_unstable();
        edges.dedup();
        let mut segments: Vec<(i128, u32)> = Vec::new();
        for e in edges {
            let mut mask = 0u32;
            for (i, iv) in ivs.iter().enumerate() {
                if iv.iter().any(|&(a, b)| a <= e && e < b) {
                    mask |= 1 << i;
                }
            }
            if segments.last().map(|s| s.1) != Some(mask) {
                segments.push((e as i128 * MINUTE_MS, mask));
            }
        }
        Bands { bands, segments }
    }

    /// Index of a band by name.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.bands.iter().position(|b| b.name == name)
    }

    /// Which bands contain the instant.
    #[inline]
    pub fn mask_at(&self, at_ms: u64, offset_min: i16) -> u32 {
        let pos = week_pos(at_ms, offset_min);
        let i = self.segments.partition_point(|s| s.0 <= pos);
        self.segments.get(i.wrapping_sub(1)).map_or(0, |s| s.1)
    }

    /// The first instant after `at_ms` at which band membership may change.
    #[inline]
    pub fn next_edge(&self, at_ms: u64, offset_min: i16) -> u64 {
        if self.segments.len() <= 1 {
            return u64::MAX;
        }
        let pos = week_pos(at_ms, offset_min);
        let i = self.segments.partition_point(|s| s.0 <= pos);
        let next = self.segments.get(i).map_or(WEEK_MS, |s| s.0);
        let step = (next - pos) as u64;
        at_ms.saturating_add(step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_days() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2025, 1, 1), 20_089);
        assert_eq!(days_in_month(2024, 2), 29);
        assert_eq!(days_in_month(1900, 2), 28);
    }

    #[test]
    fn week_positions() {
        // 1970-01-05 was a Monday.
        assert_eq!(week_pos(4 * DAY_MS as u64, 0), 0);
        // +01:00: Sunday 23:00 UTC is Monday 00:00 local.
        assert_eq!(week_pos(4 * DAY_MS as u64 - 3_600_000, 60), 0);
    }

    #[test]
    fn bands_wrap_midnight() {
        let night = Band {
            name: "night".into(),
            days: 0x7f,
            from_min: 22 * 60,
            to_min: 6 * 60,
        };
        let b = Bands::new(vec![night]);
        let monday = 4 * DAY_MS as u64;
        assert_eq!(b.mask_at(monday, 0), 1); // Monday 00:00 is in Sunday's night
        assert_eq!(b.mask_at(monday + 6 * 3_600_000, 0), 0);
        assert_eq!(b.next_edge(monday, 0), monday + 6 * 3_600_000);
        assert_eq!(
            b.next_edge(monday + 6 * 3_600_000, 0),
            monday + 22 * 3_600_000
        );
    }
}
