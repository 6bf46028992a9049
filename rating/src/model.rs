//! Price models, rules and their exact evaluation.

use crate::fixed::Fx;
use crate::Unit;

/// One tier: applies to cumulative positions in `(previous up_to, up_to]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tier {
    /// Upper bound (inclusive); `None` only on the last tier.
    pub up_to: Option<Fx>,
    /// Price per `per` units.
    pub price: Fx,
}

/// How a quantity becomes an amount. All values are non-negative.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PriceModel {
    /// `quantity × price / per`.
    PerUnit { price: Fx, per: u64 },
    /// `ceil(quantity / block) × price`.
    PerBlock { block: Fx, price: Fx },
    /// Each unit priced by the tier its cumulative position falls in.
    Graduated { tiers: Vec<Tier>, per: u64 },
    /// All units of this usage priced by the tier of `prior + quantity`.
    Volume { tiers: Vec<Tier>, per: u64 },
    /// A fixed fee per usage (event), whatever the quantity (> 0).
    Flat { fee: Fx },
    /// `quantity × percent / 100`: the quantity is itself an amount.
    Percentage { percent: Fx },
}

impl PriceModel {
    /// The exact amount as `(numerator, denominator)` before rounding.
    ///
    /// `flat_done` is set once a flat fee was charged, so a usage split into
    /// parts pays its per-event fee once.
    #[inline]
    pub fn eval(&self, q: Fx, prior: Fx, flat_done: &mut bool) -> Option<(Fx, u64)> {
        if q.is_zero() {
            return Some((Fx::ZERO, 1));
        }
        match self {
            PriceModel::PerUnit { price, per } => Some((q.mul(*price)?, *per)),
            PriceModel::PerBlock { block, price } => {
                let blocks = q.div_ceil(*block)?;
                Some((Fx::int(blocks).mul(*price)?, 1))
            }
            PriceModel::Graduated { tiers, per } => {
                let start = prior;
                let end = prior.add(q)?;
                let mut lower = Fx::ZERO;
                let mut sum = Fx::ZERO;
                for t in tiers {
                    let upper_lt_end = match t.up_to {
                        Some(u) => u.lt(end),
                        None => false,
                    };
                    let hi = if upper_lt_end {
                        t.up_to.unwrap_or(end)
                    } else {
                        end
                    };
                    let lo = lower.max(start);
                    if lo.lt(hi) {
                        sum = sum.add(hi.sub(lo)?.mul(t.price)?)?;
                    }
                    if !upper_lt_end {
                        break;
                    }
                    lower = t.up_to.unwrap_or(end);
                }
                Some((sum, *per))
            }
            PriceModel::Volume { tiers, per } => {
                let pos = prior.add(q)?;
                let t = volume_tier(tiers, pos)?;
                Some((q.mul(t.price)?, *per))
            }
            PriceModel::Flat { fee } => {
                if *flat_done {
                    Some((Fx::ZERO, 1))
                } else {
                    *flat_done = true;
                    Some((*fee, 1))
                }
            }
            PriceModel::Percentage { percent } => Some((q.mul(*percent)?, 100)),
        }
    }

    /// A guess at `floor(q / step)` for the largest `q` whose *unrounded*
    /// price is ≤ `amount` (per-unit and graduated only); `units_for`
    /// corrects it exactly, so it only has to be close.
    pub fn estimate(&self, amount: Fx, prior: Fx, step: Fx) -> Option<i128> {
        let (mut budget, tiers_or_price, per) = match self {
            PriceModel::PerUnit { price, per } => (amount, Err(*price), *per),
            PriceModel::Graduated { tiers, per } => (amount, Ok(tiers), *per),
            _ => return None,
        };
        budget = budget.mul(Fx::int(per as i128))?;
        let q = match tiers_or_price {
            Err(price) if price.is_zero() => return None,
            Err(price) => div_fx(budget, price)?,
            Ok(tiers) => {
                // Spend the budget tier by tier from the prior position.
                let mut pos = prior;
                let mut q = Fx::ZERO;
                for t in tiers {
                    if let Some(u) = t.up_to {
                        if !pos.lt(u) {
                            continue; // wholly used up before this usage
                        }
                        let room = u.sub(pos)?;
                        let cost = room.mul(t.price)?;
                        if cost.le(budget) {
                            budget = budget.sub(cost)?;
                            q = q.add(room)?;
                            pos = u;
                            continue;
                        }
                    }
                    if t.price.is_zero() {
                        return None;
                    }
                    q = q.add(div_fx(budget, t.price)?)?;
                    break;
                }
                q
            }
        };
        q.div_floor(step)
    }

    /// Tier upper bounds of a volume model (where its unit price changes).
    pub fn volume_edges(&self) -> Option<&[Tier]> {
        match self {
            PriceModel::Volume { tiers, .. } => Some(tiers),
            _ => None,
        }
    }
}

/// `a / b` truncated to 6 decimals (an estimate's precision is enough).
fn div_fx(a: Fx, b: Fx) -> Option<Fx> {
    let s = a.s.max(b.s);
    let (x, y) = (a.at_scale(s)?, b.at_scale(s)?);
    if y <= 0 {
        return None;
    }
    Some(Fx {
        m: x.checked_mul(1_000_000)? / y,
        s: 6,
    })
}

/// The tier a cumulative position falls in (the last one past all bounds).
#[inline]
pub(crate) fn volume_tier(tiers: &[Tier], pos: Fx) -> Option<&Tier> {
    tiers
        .iter()
        .find(|t| match t.up_to {
            Some(u) => pos.le(u),
            None => true,
        })
        .or(tiers.last())
}

/// One condition of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Cond {
    /// The usage attribute `key` equals one of `values`.
    Attr {
        key: Box<str>,
        values: Vec<Box<str>>,
    },
    /// The usage time (in the card's zone) is in one of these bands (bit set).
    Band(u32),
}

impl Cond {
    #[inline]
    fn matches(&self, attrs: &[(&str, &str)], band_mask: u32) -> bool {
        match self {
            Cond::Attr { key, values } => {
                // The first occurrence of a key counts.
                match attrs.iter().find(|(k, _)| *k == &**key) {
                    Some((_, v)) => values.iter().any(|x| &**x == *v),
                    None => false,
                }
            }
            Cond::Band(bits) => band_mask & bits != 0,
        }
    }
}

/// A price rule: conditions, price and cost for one unit of one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rule {
    /// Position in the file (0-based) among the service's rules, for audit.
    pub index: u16,
    /// Optional label from the file.
    pub name: Option<String>,
    pub conds: Vec<Cond>,
    /// Billed quantities are rounded up to a multiple of this.
    pub increment: Option<Fx>,
    /// Least charge of a usage with quantity > 0.
    pub minimum: Option<Fx>,
    pub price: PriceModel,
    /// Provider cost, in the version's currency.
    pub cost: Option<PriceModel>,
}

/// The rules of one unit of one service, most specific first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UnitRules {
    pub unit: Unit,
    /// Sorted by number of conditions (descending), then file order.
    pub rules: Vec<Rule>,
    /// Whether any rule looks at time bands (only then do band edges split).
    pub uses_bands: bool,
}

impl UnitRules {
    /// The index of the rule that prices a usage: the first match in
    /// specificity order.
    #[inline]
    pub fn select(&self, attrs: &[(&str, &str)], band_mask: u32) -> Option<usize> {
        self.rules
            .iter()
            .position(|r| r.conds.iter().all(|c| c.matches(attrs, band_mask)))
    }
}

/// A priced service of a version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Service {
    pub id: u32,
    pub name: String,
    pub by_unit: Vec<UnitRules>,
}
