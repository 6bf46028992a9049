//! Exact amounts: the ledger's integer fixed-point money and units.
//!
//! Every quantity the ledger holds (a currency, credits, GPU-seconds,
//! tokens, octets) is an [`Amount`]: a signed count of nano-units
//! (10^-9 of the unit) in an `i128`. Integer arithmetic keeps the hot path
//! exact and fast; [`rust_decimal::Decimal`] is the type at the edges.
//!
//! Rounding rule: the ledger never rounds. A decimal with more than
//! [`Amount::SCALE`] fractional digits is rejected with
//! [`AmountError::TooPrecise`]; rating rounds a price to its increment before
//! it reaches the ledger.

use rust_decimal::Decimal;
use std::fmt;

/// A signed exact quantity in nano-units (10^-9 of the unit it counts).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Amount(i128);

/// Why a decimal cannot become an [`Amount`].
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    /// More fractional digits than the ledger keeps.
    #[error("amount has more than {} decimal places", Amount::SCALE)]
    TooPrecise,
    /// Outside ±[`Amount::MAX`].
    #[error("amount is outside ±10^18")]
    OutOfRange,
}

const NANOS_PER_UNIT: i128 = 1_000_000_000;

impl Amount {
    /// Fractional digits kept: amounts are exact to 10^-9 of a unit.
    pub const SCALE: u32 = 9;
    /// Zero of any unit.
    pub const ZERO: Amount = Amount(0);
    /// Largest magnitude any single amount or balance may have: 10^18 units.
    /// Bounded so that sums of many amounts can never overflow `i128`.
    pub const MAX: Amount = Amount(1_000_000_000_000_000_000 * NANOS_PER_UNIT);

    /// The amount with this many nano-units.
    pub const fn from_nanos(nanos: i128) -> Amount {
        Amount(nanos)
    }

    /// The amount of this many whole units.
    pub const fn from_units(units: i64) -> Amount {
        Amount(units as i128 * NANOS_PER_UNIT)
    }

    /// Count of nano-units.
    pub const fn nanos(self) -> i128 {
        self.0
    }

    /// True when zero.
    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// True when below zero.
    pub const fn is_negative(self) -> bool {
        self.0 < 0
    }

    /// True when above zero.
    pub const fn is_positive(self) -> bool {
        self.0 > 0
    }

    /// True when within ±[`Amount::MAX`].
    pub const fn in_range(self) -> bool {
        self.0 <= Self::MAX.0 && self.0 >= -Self::MAX.0
    }

    /// Sum, or `None` when the result leaves ±[`Amount::MAX`].
    pub fn checked_add(self, other: Amount) -> Option<Amount> {
        let sum = Amount(self.0.checked_add(other.0)?);
        sum.in_range().then_some(sum)
    }

    /// Difference, or `None` when the result leaves ±[`Amount::MAX`].
    pub fn checked_sub(self, other: Amount) -> Option<Amount> {
        let diff = Amount(self.0.checked_sub(other.0)?);
        diff.in_range().then_some(diff)
    }

    /// The smaller of two amounts.
    pub fn min(self, other: Amount) -> Amount {
        if self.0 <= other.0 {
            self
        } else {
            other
        }
    }

    /// Exact conversion from a decimal; fails rather than rounds.
    pub fn from_decimal(value: Decimal) -> Result<Amount, AmountError> {
        let value = value.normalize();
        let scale = value.scale();
        if scale > Self::SCALE {
            return Err(AmountError::TooPrecise);
        }
        let nanos = value
            .mantissa()
            .checked_mul(10i128.pow(Self::SCALE - scale))
            .ok_or(AmountError::OutOfRange)?;
        let amount = Amount(nanos);
        if amount.in_range() {
            Ok(amount)
        } else {
            Err(AmountError::OutOfRange)
        }
    }

    /// Exact conversion to a decimal (always fits: |amount| ≤ 10^27 nanos).
    pub fn to_decimal(self) -> Decimal {
        Decimal::from_i128_with_scale(self.0, Self::SCALE).normalize()
    }
}

impl std::ops::Neg for Amount {
    type Output = Amount;
    fn neg(self) -> Amount {
        Amount(-self.0)
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.to_decimal(), f)
    }
}

impl std::str::FromStr for Amount {
    type Err = AmountError;
    fn from_str(s: &str) -> Result<Amount, AmountError> {
        let d: Decimal = s.parse().map_err(|_| AmountError::OutOfRange)?;
        Amount::from_decimal(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn decimal_round_trip_is_exact() {
        for s in [
            "0",
            "1",
            "-1",
            "0.000000001",
            "12.5",
            "999999999999999999.999999999",
        ] {
            let d = Decimal::from_str(s).unwrap();
            let a = Amount::from_decimal(d).unwrap();
            assert_eq!(a.to_decimal(), d.normalize(), "{s}");
        }
        assert_eq!(
            Amount::from_str("1.25").unwrap(),
            Amount::from_nanos(1_250_000_000)
        );
    }

    #[test]
    fn too_precise_is_rejected_not_rounded() {
        let d = Decimal::from_str("0.0000000001").unwrap();
        assert_eq!(Amount::from_decimal(d), Err(AmountError::TooPrecise));
        // Trailing zeros beyond the scale are not extra precision.
        let d = Decimal::from_str("1.50000000000").unwrap();
        assert_eq!(
            Amount::from_decimal(d).unwrap(),
            Amount::from_nanos(1_500_000_000)
        );
    }

    #[test]
    fn range_is_bounded() {
        let d = Decimal::from_str("1000000000000000001").unwrap();
        assert_eq!(Amount::from_decimal(d), Err(AmountError::OutOfRange));
        assert!(Amount::MAX.checked_add(Amount::from_nanos(1)).is_none());
        assert!((-Amount::MAX).checked_sub(Amount::from_nanos(1)).is_none());
        assert_eq!(Amount::MAX.checked_sub(Amount::MAX), Some(Amount::ZERO));
    }
}
