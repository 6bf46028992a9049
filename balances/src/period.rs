//! Budget periods: the calendar arithmetic spend controls reset by.
//!
//! A period is a pure function of time, so the ledger rolls a control into
//! its next period lazily, at the first operation that touches it, and a
//! replay rolls it at the same operation. Months are counted in a stated
//! UTC offset (a budget "per calendar month in UTC+01:00" starts at local
//! midnight of the 1st), so the same instant always falls in the same
//! period whatever the server's own time zone.

use crate::command::InvalidInput;
use crate::types::Timestamp;

const MS_PER_DAY: i64 = 86_400_000;
/// Largest UTC offset accepted, in minutes (±18:00, as ISO 8601 allows).
pub const OFFSET_MIN_MAX: i16 = 18 * 60;
/// Longest custom period: ten years of days.
pub const FIXED_LENGTH_MS_MAX: u64 = 3653 * MS_PER_DAY as u64;
/// Shortest custom period: one minute.
pub const FIXED_LENGTH_MS_MIN: u64 = 60_000;

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date (year, month 1..=12, day 1..=31) of a day count since
/// 1970-01-01: the inverse of [`days_from_civil`].
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + if m <= 2 { 1 } else { 0 }, m, d)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    let next = if m == 12 {
        days_from_civil(y + 1, 1, 1)
    } else {
        days_from_civil(y, m + 1, 1)
    };
    (next - days_from_civil(y, m, 1)) as u32
}

/// How often a spend control starts over.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Period {
    /// Never: the cap counts everything since it was set.
    Lifetime,
    /// Every `months` months from `anchor`, on the anchor's day of the
    /// month (the last day in a shorter month) and time of day, in local
    /// time at `offset_min` minutes east of UTC. A calendar month is
    /// `months: 1` anchored at the 1st, 00:00 of any month; a contract year
    /// is `months: 12` anchored at the contract's start.
    Months {
        /// Length in months, 1..=12.
        months: u8,
        /// The start of one period (any one: periods run both ways).
        anchor: Timestamp,
        /// The local time's offset from UTC, minutes (−1080..=1080).
        offset_min: i16,
    },
    /// Fixed-length periods (a week, a 30-day cycle) from `anchor`.
    Fixed {
        /// The start of one period.
        anchor: Timestamp,
        /// Length, milliseconds (a minute to ten years).
        length_ms: u64,
    },
}

impl Period {
    /// A calendar month in local time at `offset_min` minutes east of UTC.
    pub fn calendar_month(offset_min: i16) -> Period {
        Period::Months {
            months: 1,
            // Midnight of 1 January 2000 there: any 1st of a month will do.
            anchor: Timestamp(
                (days_from_civil(2000, 1, 1) * MS_PER_DAY - offset_min as i64 * 60_000) as u64,
            ),
            offset_min,
        }
    }

    /// Which kind of period this is, as the protocol names it: 0 lifetime,
    /// 1..=12 a period of that many months, 13 a fixed length. An account
    /// holds at most one control per unit and kind.
    pub fn kind(&self) -> u8 {
        match self {
            Period::Lifetime => 0,
            Period::Months { months, .. } => *months,
            Period::Fixed { .. } => PERIOD_KIND_FIXED,
        }
    }

    /// Whether the period's terms are in range.
    pub fn validate(&self) -> Result<(), InvalidInput> {
        match *self {
            Period::Lifetime => Ok(()),
            Period::Months {
                months,
                anchor,
                offset_min,
            } => {
                if !(1..=12).contains(&months)
                    || offset_min.abs() > OFFSET_MIN_MAX
                    || anchor == Timestamp::NEVER
                {
                    Err(InvalidInput::Period)
                } else {
                    Ok(())
                }
            }
            Period::Fixed { anchor, length_ms } => {
                if !(FIXED_LENGTH_MS_MIN..=FIXED_LENGTH_MS_MAX).contains(&length_ms)
                    || anchor == Timestamp::NEVER
                {
                    Err(InvalidInput::Period)
                } else {
                    Ok(())
                }
            }
        }
    }

    /// The period that contains `now`: its start (inclusive) and end
    /// (exclusive). `Lifetime` is one period from 0 to never.
    pub fn bounds(&self, now: Timestamp) -> (Timestamp, Timestamp) {
        let now = now.0.min(i64::MAX as u64) as i64;
        match *self {
            Period::Lifetime => (Timestamp(0), Timestamp::NEVER),
            Period::Fixed { anchor, length_ms } => {
                let (anchor, len) = (anchor.0 as i128, length_ms.max(1) as i128);
                let n = (now as i128 - anchor).div_euclid(len);
                let start = anchor + n * len;
                (clamp(start), clamp(start + len))
            }
            Period::Months {
                months,
                anchor,
                offset_min,
            } => {
                let n = months.clamp(1, 12) as i64;
                let offset = offset_min as i64 * 60_000;
                let local_anchor = anchor.0.min(i64::MAX as u64) as i64 + offset;
                let (ay, am, ad) = civil_from_days(local_anchor.div_euclid(MS_PER_DAY));
                let tod = local_anchor.rem_euclid(MS_PER_DAY);
                let anchor_month = ay * 12 + am as i64 - 1;
                // The start of the period `k` periods after the anchor's.
                let start_of = |k: i64| -> i64 {
                    let month = anchor_month + k * n;
                    let (y, m) = (month.div_euclid(12), month.rem_euclid(12) as u32 + 1);
                    let d = ad.min(days_in_month(y, m));
                    days_from_civil(y, m, d) * MS_PER_DAY + tod - offset
                };
                let local_now = now + offset;
                let (ny, nm, _) = civil_from_days(local_now.div_euclid(MS_PER_DAY));
                let mut k = (ny * 12 + nm as i64 - 1 - anchor_month).div_euclid(n);
                // The month count lands on the period or the one after it
                // (before the anchor's day and time in its first month).
                while start_of(k) > now {
                    k -= 1;
                }
                while start_of(k + 1) <= now {
                    k += 1;
                }
                (clamp(start_of(k) as i128), clamp(start_of(k + 1) as i128))
            }
        }
    }
}

/// [`Period::kind`] of a fixed-length period.
pub const PERIOD_KIND_FIXED: u8 = 13;

fn clamp(ms: i128) -> Timestamp {
    Timestamp(ms.clamp(0, (u64::MAX - 1) as i128) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(y: i64, m: u32, d: u32, h: i64) -> Timestamp {
        Timestamp((days_from_civil(y, m, d) * MS_PER_DAY + h * 3_600_000) as u64)
    }

    #[test]
    fn calendar_months_in_utc_and_in_an_offset() {
        let utc = Period::calendar_month(0);
        assert_eq!(
            utc.bounds(at(2026, 11, 30, 23)),
            (at(2026, 11, 1, 0), at(2026, 12, 1, 0))
        );
        assert_eq!(
            utc.bounds(at(2026, 12, 1, 0)),
            (at(2026, 12, 1, 0), at(2027, 1, 1, 0))
        );
        assert_eq!(
            utc.bounds(at(2028, 2, 29, 12)),
            (at(2028, 2, 1, 0), at(2028, 3, 1, 0))
        );
        // UTC+01:00: 23:30 UTC on 30 November is already December there.
        let cet = Period::calendar_month(60);
        let late = Timestamp(at(2026, 11, 30, 23).0 + 30 * 60_000);
        assert_eq!(
            cet.bounds(late),
            (at(2026, 11, 30, 23), at(2026, 12, 31, 23))
        );
        // UTC−05:00: 02:00 UTC on 1 December is still November there.
        let est = Period::calendar_month(-300);
        assert_eq!(
            est.bounds(at(2026, 12, 1, 2)),
            (at(2026, 11, 1, 5), at(2026, 12, 1, 5))
        );
    }

    #[test]
    fn contract_years_and_month_ends() {
        // A contract year from 15 March 2026, 09:00 UTC.
        let year = Period::Months {
            months: 12,
            anchor: at(2026, 3, 15, 9),
            offset_min: 0,
        };
        assert_eq!(
            year.bounds(at(2027, 3, 15, 8)),
            (at(2026, 3, 15, 9), at(2027, 3, 15, 9))
        );
        assert_eq!(
            year.bounds(at(2027, 3, 15, 9)),
            (at(2027, 3, 15, 9), at(2028, 3, 15, 9))
        );
        // Before the anchor: the periods run backwards too.
        assert_eq!(
            year.bounds(at(2026, 1, 1, 0)),
            (at(2025, 3, 15, 9), at(2026, 3, 15, 9))
        );
        // Anchored on the 31st: the last day of shorter months.
        let monthly = Period::Months {
            months: 1,
            anchor: at(2026, 1, 31, 0),
            offset_min: 0,
        };
        assert_eq!(
            monthly.bounds(at(2026, 3, 1, 0)),
            (at(2026, 2, 28, 0), at(2026, 3, 31, 0))
        );
        assert_eq!(
            monthly.bounds(at(2026, 2, 27, 0)),
            (at(2026, 1, 31, 0), at(2026, 2, 28, 0))
        );
        // A quarter.
        let quarter = Period::Months {
            months: 3,
            anchor: at(2026, 1, 1, 0),
            offset_min: 0,
        };
        assert_eq!(
            quarter.bounds(at(2026, 11, 30, 0)),
            (at(2026, 10, 1, 0), at(2027, 1, 1, 0))
        );
    }

    #[test]
    fn fixed_lengths_and_validation() {
        let week = Period::Fixed {
            anchor: at(2026, 11, 2, 0),
            length_ms: 7 * MS_PER_DAY as u64,
        };
        assert_eq!(
            week.bounds(at(2026, 11, 30, 12)),
            (at(2026, 11, 30, 0), at(2026, 12, 7, 0))
        );
        assert_eq!(
            week.bounds(at(2026, 11, 1, 0)),
            (at(2026, 10, 26, 0), at(2026, 11, 2, 0))
        );
        assert_eq!(
            Period::Lifetime.bounds(at(2026, 1, 1, 0)),
            (Timestamp(0), Timestamp::NEVER)
        );
        for bad in [
            Period::Months {
                months: 0,
                anchor: Timestamp(0),
                offset_min: 0,
            },
            Period::Months {
                months: 13,
                anchor: Timestamp(0),
                offset_min: 0,
            },
            Period::Months {
                months: 1,
                anchor: Timestamp(0),
                offset_min: 18 * 60 + 1,
            },
            Period::Fixed {
                anchor: Timestamp(0),
                length_ms: 59_999,
            },
            Period::Fixed {
                anchor: Timestamp::NEVER,
                length_ms: 60_000,
            },
        ] {
            assert_eq!(bad.validate(), Err(InvalidInput::Period), "{bad:?}");
        }
        assert_eq!(Period::calendar_month(-720).validate(), Ok(()));
    }

    #[test]
    fn every_instant_lies_in_its_period_and_periods_tile() {
        let periods = [
            Period::calendar_month(330),
            Period::Months {
                months: 12,
                anchor: at(2024, 2, 29, 7),
                offset_min: -240,
            },
            Period::Fixed {
                anchor: at(2026, 1, 1, 3),
                length_ms: 30 * MS_PER_DAY as u64,
            },
        ];
        for p in periods {
            let mut t = at(2023, 1, 1, 0).0;
            while t < at(2031, 1, 1, 0).0 {
                let (s, e) = p.bounds(Timestamp(t));
                assert!(s.0 <= t && t < e.0, "{p:?} at {t}: {s:?}..{e:?}");
                // The next period starts where this one ends.
                assert_eq!(p.bounds(e).0, e, "{p:?}");
                assert_eq!(p.bounds(Timestamp(e.0 - 1)).1, e, "{p:?}");
                t += 7 * MS_PER_DAY as u64 + 3_600_000 + 17;
            }
        }
    }
}
