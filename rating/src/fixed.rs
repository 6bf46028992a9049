//! Exact fixed-point arithmetic on `i128` mantissas for the hot path.
//!
//! Why not `Decimal` arithmetic directly: `Decimal` multiplication silently
//! drops digits when a product needs more than 96 bits, which would make a
//! price "almost exact". Here every operation is checked: it is exact or it
//! reports overflow (which the input bounds in [`crate::limits`] rule out for
//! valid cards and usages). Integer maths is also faster, which the rating
//! throughput goals need.

use std::cmp::Ordering;

use rust_decimal::Decimal;

use crate::Rounding;

/// 10^0 ..= 10^38 (the largest power of ten an `i128` holds).
const POW10: [i128; 39] = {
    let mut t = [1i128; 39];
    let mut i = 1;
    while i < 39 {
        t[i] = t[i - 1] * 10;
        i += 1;
    }
    t
};

/// 10^k, or `None` past 10^38.
pub(crate) fn pow10(k: u32) -> Option<i128> {
    POW10.get(k as usize).copied()
}

/// An exact decimal `m × 10^-s`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Fx {
    pub m: i128,
    pub s: u32,
}

impl Fx {
    pub const ZERO: Fx = Fx { m: 0, s: 0 };

    /// The exact value of a `Decimal`.
    #[inline]
    pub fn from_dec(d: Decimal) -> Fx {
        Fx {
            m: d.mantissa(),
            s: d.scale(),
        }
    }

    /// An integer.
    #[inline]
    pub fn int(n: i128) -> Fx {
        Fx { m: n, s: 0 }
    }

    /// Back to `Decimal`; `None` if it does not fit (96-bit mantissa, scale ≤ 28).
    #[inline]
    pub fn to_dec(self) -> Option<Decimal> {
        if self.s <= 28 && self.m >= 0 && self.m < (1i128 << 96) {
            // The common case, without the checks of the general path.
            let m = self.m as u128;
            return Some(Decimal::from_parts(
                m as u32,
                (m >> 32) as u32,
                (m >> 64) as u32,
                false,
                self.s,
            ));
        }
        self.to_dec_slow()
    }

    #[cold]
    fn to_dec_slow(self) -> Option<Decimal> {
        let mut f = self;
        // Trailing zeros beyond scale 28 can be dropped without loss.
        while f.s > 28 {
            if f.m % 10 != 0 {
                return None;
            }
            f.m /= 10;
            f.s -= 1;
        }
        Decimal::try_from_i128_with_scale(f.m, f.s).ok()
    }

    #[inline]
    pub fn is_zero(self) -> bool {
        self.m == 0
    }

    /// The mantissa at a scale `s >= self.s`.
    #[inline]
    pub fn at_scale(self, s: u32) -> Option<i128> {
        if s == self.s {
            return Some(self.m);
        }
        self.m.checked_mul(pow10(s.checked_sub(self.s)?)?)
    }

    #[inline]
    pub fn mul(self, o: Fx) -> Option<Fx> {
        Some(Fx {
            m: self.m.checked_mul(o.m)?,
            s: self.s + o.s,
        })
    }

    #[inline]
    pub fn add(self, o: Fx) -> Option<Fx> {
        let s = self.s.max(o.s);
        Some(Fx {
            m: self.at_scale(s)?.checked_add(o.at_scale(s)?)?,
            s,
        })
    }

    #[inline]
    pub fn sub(self, o: Fx) -> Option<Fx> {
        let s = self.s.max(o.s);
        Some(Fx {
            m: self.at_scale(s)?.checked_sub(o.at_scale(s)?)?,
            s,
        })
    }

    /// Exact comparison (never overflows: falls back to integer/fraction parts).
    pub fn cmp(self, o: Fx) -> Ordering {
        let s = self.s.max(o.s);
        if let (Some(a), Some(b)) = (self.at_scale(s), o.at_scale(s)) {
            return a.cmp(&b);
        }
        // Both scales are <= 38 here, so the powers exist.
        let (pa, pb) = (POW10[self.s as usize], POW10[o.s as usize]);
        let (ia, ib) = (self.m.div_euclid(pa), o.m.div_euclid(pb));
        if ia != ib {
            return ia.cmp(&ib);
        }
        // Fractions are < 10^s <= 10^38, so aligning them fits.
        let (fa, fb) = (self.m.rem_euclid(pa), o.m.rem_euclid(pb));
        let fa = fa * POW10[(s - self.s) as usize];
        let fb = fb * POW10[(s - o.s) as usize];
        fa.cmp(&fb)
    }

    #[inline]
    pub fn lt(self, o: Fx) -> bool {
        self.cmp(o) == Ordering::Less
    }

    #[inline]
    pub fn le(self, o: Fx) -> bool {
        self.cmp(o) != Ordering::Greater
    }

    #[inline]
    pub fn max(self, o: Fx) -> Fx {
        if self.lt(o) {
            o
        } else {
            self
        }
    }

    /// `floor(self / o)` for positive `o`, as an integer.
    pub fn div_floor(self, o: Fx) -> Option<i128> {
        let s = self.s.max(o.s);
        let (a, b) = (self.at_scale(s)?, o.at_scale(s)?);
        if b <= 0 {
            return None;
        }
        Some(a.div_euclid(b))
    }

    /// `ceil(self / o)` for positive `o`, as an integer.
    pub fn div_ceil(self, o: Fx) -> Option<i128> {
        let s = self.s.max(o.s);
        let (a, b) = (self.at_scale(s)?, o.at_scale(s)?);
        if b <= 0 {
            return None;
        }
        let q = a.div_euclid(b);
        Some(if a.rem_euclid(b) != 0 { q + 1 } else { q })
    }
}

/// Rounds the exact ratio `num / den` to `dp` decimal places with `mode`.
///
/// `den` is the `per` divisor of a price (1 when there is none), so a price
/// "2.49 per 3600 gpu_seconds" is rounded once, from the exact rational, and
/// never from an already-rounded per-second rate.
#[inline]
pub(crate) fn round_ratio(num: Fx, den: u64, dp: u32, mode: Rounding) -> Option<Fx> {
    if den == 1 && num.s <= dp {
        return Some(num);
    }
    if num.m < 0 {
        // Modes are defined on magnitudes; values here are never negative,
        // but keep the function total.
        let r = round_ratio(
            Fx {
                m: -num.m,
                s: num.s,
            },
            den,
            dp,
            mode,
        )?;
        return Some(Fx { m: -r.m, s: r.s });
    }
    // value × 10^dp = n / d
    let (n, d): (i128, i128) = if num.s <= dp {
        (num.m.checked_mul(pow10(dp - num.s)?)?, den as i128)
    } else {
        (num.m, pow10(num.s - dp)?.checked_mul(den as i128)?)
    };
    let (q, r) = if n <= u64::MAX as i128 && d <= u64::MAX as i128 {
        // 64-bit division is several times faster than 128-bit.
        let (n, d) = (n as u64, d as u64);
        ((n / d) as i128, (n % d) as i128)
    } else {
        (n / d, n % d)
    };
    let up = match mode {
        Rounding::Down => false,
        Rounding::Up => r != 0,
        Rounding::HalfUp => r >= d - r,
        Rounding::HalfEven => {
            let rest = d - r;
            r > rest || (r == rest && q % 2 == 1)
        }
    };
    Some(Fx {
        m: if up { q + 1 } else { q },
        s: dp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn fx(s: &str) -> Fx {
        Fx::from_dec(Decimal::from_str(s).unwrap())
    }

    fn r(s: &str, den: u64, dp: u32, mode: Rounding) -> String {
        round_ratio(fx(s), den, dp, mode)
            .unwrap()
            .to_dec()
            .unwrap()
            .to_string()
    }

    #[test]
    fn rounding_modes() {
        assert_eq!(r("1.005", 1, 2, Rounding::HalfUp), "1.01");
        assert_eq!(r("1.005", 1, 2, Rounding::HalfEven), "1.00");
        assert_eq!(r("1.015", 1, 2, Rounding::HalfEven), "1.02");
        assert_eq!(r("1.001", 1, 2, Rounding::Up), "1.01");
        assert_eq!(r("1.009", 1, 2, Rounding::Down), "1.00");
        // 2.49 / 3600 per second × 1 s = 0.000691666…
        assert_eq!(r("2.49", 3600, 6, Rounding::HalfUp), "0.000692");
        assert_eq!(r("2.49", 3600, 6, Rounding::Down), "0.000691");
        assert_eq!(r("-1.005", 1, 2, Rounding::HalfUp), "-1.01");
    }

    #[test]
    fn compare_across_scales() {
        assert_eq!(fx("1.50").cmp(fx("1.5")), Ordering::Equal);
        assert!(fx("0.999999999999").lt(fx("1")));
        let big = Fx {
            m: 10i128.pow(37),
            s: 0,
        };
        assert_eq!(big.cmp(fx("0.5")), Ordering::Greater);
        assert_eq!(fx("0.5").cmp(big), Ordering::Less);
    }

    #[test]
    fn division_helpers() {
        assert_eq!(fx("61").div_ceil(fx("60")), Some(2));
        assert_eq!(fx("60").div_ceil(fx("60")), Some(1));
        assert_eq!(fx("1.5").div_floor(fx("0.5")), Some(3));
        assert_eq!(fx("1").div_floor(fx("0")), None);
    }
}
