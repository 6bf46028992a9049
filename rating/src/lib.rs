//! Reckon's pricing: versioned rate cards and the exact price of a usage.
//!
//! Pure by design: no I/O (the loader parses text it is given; reading files
//! is the caller's job), no clock reads (times come in as arguments), and no
//! dependency on another workspace crate. Money and quantities are
//! [`Decimal`]; inside the hot path they become exact `i128` fixed-point
//! values and every operation is checked, so a result is exact or an error
//! ([`RatingError::Overflow`]), never silently rounded.
//!
//! # Model
//! - A [`RateBook`] holds [`RateCard`]s by id. A card keeps its whole history
//!   of [`CardVersion`]s, strictly increasing in number and effective time.
//!   A usage is priced by the version in force at its time
//!   (`effective_from_ms <= at_ms`, latest wins). Adding a version effective
//!   in the future schedules it: nothing restarts, rating simply reaches it.
//!   A version may not take effect before the `now_ms` given when adding it,
//!   so usage already rated keeps its price (history is auditable).
//! - A version prices *services* (by numeric id); a service has *rules*, each
//!   for one usage [`Unit`], with optional conditions on usage attributes
//!   (`model`, `region`, `category`, `site`, any key) and on *time bands*
//!   (days of the week and a time of day, in the version's fixed UTC offset:
//!   there is no time-zone database, so no daylight saving time; publish a
//!   new version with the new offset when the clocks change).
//! - **Match order**: the rule with the most conditions that all match wins;
//!   among equally specific matches, the one written first in the file. A
//!   rule without conditions is the default. Two rules with the same
//!   conditions for the same unit are rejected at load time.
//! - **Price models** (per rule, `price = { model = ... }`):
//!   `per_unit` (`quantity × price / per`), `per_block` (package:
//!   `ceil(quantity / block) × price`), `graduated` (each unit priced by the
//!   tier its cumulative position falls in), `volume` (all units of the usage
//!   priced at the tier where `prior + quantity` lands; earlier usage is not
//!   re-priced), `flat` (a fee per usage), `percentage` (`quantity × percent /
//!   100`, where the usage quantity is itself an amount, e.g. a resold bill).
//!   A rule may add a `minimum` charge and a quantity `increment`.
//!   Tier bounds `up_to` are inclusive: a tier covers positions
//!   `(previous up_to, up_to]`. Cumulative tiers take the customer's usage so
//!   far in the period as [`Usage::prior_quantity`]; the crate keeps no state.
//! - **Credits**: a version may price in a credit unit (`charge_in =
//!   "credits"`) with `credit_value` currency per credit. Credits per unit may
//!   change from version to version while balances held in credits stay put;
//!   [`Rated::price_in_currency`] converts for reporting.
//! - **Provider cost**: a rule's optional `cost` model (always in the
//!   version's currency) prices what the compute or model provider charges;
//!   every [`Rated`] carries price, cost and margin (`price_in_currency -
//!   cost`).
//! - **Time-spanning usage**: a usage with `duration_ms > 0` covers
//!   `[at_ms, at_ms + duration_ms)`. It is split where a new version takes
//!   effect or where a time-band edge changes the matching rule (edges that
//!   change nothing do not split), and each part is priced by its own rule
//!   (the telco tariff-change case). [`Rated::lines`] lists the parts.
//!   [`RateCard::next_change`] tells when the price of a usage may next
//!   change, so a grant's validity can stop there (Diameter
//!   Tariff-Time-Change).
//! - Every input is bounded ([`limits`]): quantities, prices, tiers,
//!   dimensions, versions, names, file size, nesting.
//!
//! # Rounding rules
//! 1. **Quantity increments.** With `increment = i`, the billed quantity is
//!    the usage quantity rounded *up* to a multiple of `i` (a started
//!    increment is billed in full: 61 s in 60 s steps bills 120 s; 1,213
//!    tokens in 1,000-token steps bills 2,000). Zero stays zero. Without an
//!    increment the exact quantity is billed. Cost uses the exact quantity
//!    (no increment, no minimum), the same prior quantity, and the same
//!    `decimals` and mode as the price.
//! 2. **Per-block**: blocks = `ceil(billed / block)`.
//! 3. **Prices and costs** of each part are computed exactly, as the rational
//!    `Σ quantity × price / per`, then rounded *once* to the version's
//!    `decimals` (default 6) with its `rounding` mode: `half_up` (default;
//!    ties away from zero), `half_even` (ties to even), `up` (ceiling) or
//!    `down` (floor). So "2.49 per 3600 gpu_seconds" never goes through a
//!    rounded per-second rate.
//! 4. **Totals** are sums of the rounded parts, so lines add up exactly.
//! 5. **Minimum charge** applies once per usage with quantity > 0, taken from
//!    the rule in force at the usage's start; a shortfall is added to the
//!    first part. A `flat` fee is likewise charged once per usage (in the
//!    first part priced by a flat rule). A zero quantity always costs zero.
//! 6. **Splitting**: a part's quantity is the usage quantity × part duration /
//!    total duration, floored to the quantity's own decimal places; the last
//!    part takes the remainder, so parts sum exactly to the quantity. Each
//!    part is rounded (rules 1–3) on its own, as separately reported telco
//!    tariff periods are.
//! 7. **Credits to currency**: `price_in_currency = price × credit_value`,
//!    rounded to `decimals` with the version's mode.
//! 8. **Inverse** ([`RateCard::units_for`]): the largest multiple of the
//!    rule's increment (1 unit without one) such that every quantity up to it
//!    costs at most the amount after rules 1–3 and 5; exact at tier edges.
//!
//! # File format (TOML; JSON has the same structure)
//! ```toml
//! card = "acme-inference"          # id: 1..=64 of [A-Za-z0-9_.-]
//! description = "optional"
//!
//! [[versions]]
//! version = 1                      # strictly increasing
//! effective_from = 2025-01-01T00:00:00Z  # offset date-time (or RFC 3339 string,
//!                                  # or effective_from_ms = <ms since epoch>)
//! utc_offset = "+00:00"            # zone of time bands (default +00:00)
//! currency = "USD"                 # cost and reporting currency
//! charge_in = "credits"            # optional: price unit (default: currency)
//! credit_value = "0.001"           # currency per credit (iff charge_in differs)
//! decimals = 6                     # optional, 0..=12
//! rounding = "half_up"             # optional: half_up | half_even | up | down
//! units = ["images"]               # custom units beyond the built-in ones
//!
//! [[versions.time_bands]]
//! name = "peak"
//! days = ["mon", "tue", "wed", "thu", "fri"]
//! from = "08:00"                   # local time; to <= from wraps past midnight
//! to = "20:00"
//!
//! [[versions.services]]
//! id = 1
//! name = "chat"
//!
//! [[versions.services.rules]]
//! name = "large output"            # optional label
//! unit = "tokens_out"
//! when = { model = "large", region = ["eu", "us"], time_band = "peak" }
//! increment = 1                    # optional
//! minimum = "0.01"                 # optional
//! price = { model = "per_unit", price = "2.0", per = 1000 }
//! cost = { model = "per_unit", price = "0.0012", per = 1 }   # optional
//! ```
//! Other price models: `{ model = "per_block", block = 3600, price = "5" }`,
//! `{ model = "graduated" | "volume", per = 1000, tiers = [{ up_to = 1000000,
//! price = "2" }, { price = "1.5" }] }` (the last tier has no `up_to`),
//! `{ model = "flat", price = "0.01" }`, `{ model = "percentage", percent =
//! "2.9" }`. Decimal values may be written as strings or numbers; numbers are
//! read from their source text, so `0.1` is exactly 0.1. Unknown fields are
//! errors (a typo must not silently change a price). Every error names the
//! file, line, column and field path, e.g.
//! `gpu.toml:31:9: versions[0].services[1].rules[2].price.tiers[1].up_to:
//! tier bounds must increase`. See `rating/examples/` for complete cards.
//!
//! Built-in units: `gpu_seconds`, `tokens_in`, `tokens_out`, `requests`,
//! `octets`, `seconds`; others must be declared in `units`.

#![warn(missing_docs)]

mod card;
mod error;
mod fixed;
mod load;
mod model;
mod time;
mod unit;

use rust_decimal::Decimal;
use smallvec::SmallVec;

pub use card::{Applied, CardVersion, RateBook, RateCard};
pub use error::RatingError;
pub use load::{parse_json, parse_toml, LoadError, LoadErrors};
pub use unit::{Unit, MAX_UNIT_LEN};

/// Bounds on every input, so that exact arithmetic cannot overflow for valid
/// cards and usages and no input can make rating or loading unbounded.
pub mod limits {
    /// Largest quantity of one usage (10^12 units).
    pub const MAX_QUANTITY: u64 = 1_000_000_000_000;
    /// Integer digits allowed in a usage quantity.
    pub(crate) const MAX_QUANTITY_DIGITS: u32 = 12;
    /// Integer digits allowed in a prior (period-to-date) quantity: < 10^15.
    pub const MAX_PRIOR_DIGITS: u32 = 15;
    /// Decimal places allowed in quantities, increments and block sizes.
    pub const MAX_QUANTITY_SCALE: u32 = 6;
    /// Attributes on one usage.
    pub const MAX_ATTRIBUTES: usize = 16;
    /// Longest attribute key, band name or rule condition key (bytes).
    pub const MAX_NAME_LEN: usize = 32;
    /// Longest attribute value, card id, service or rule name (bytes).
    pub const MAX_VALUE_LEN: usize = 64;
    /// Longest duration of one time-spanning usage: 31 days.
    pub const MAX_DURATION_MS: u64 = 31 * 86_400_000;
    /// Most parts a usage is split into.
    pub const MAX_PARTS: usize = 64;
    /// Most steps (version changes and band edges) walked while splitting.
    pub(crate) const MAX_SPLIT_STEPS: usize = 4096;
    /// Versions kept per card.
    pub const MAX_VERSIONS: usize = 1000;
    /// Services per version.
    pub const MAX_SERVICES: usize = 256;
    /// Rules per service.
    pub const MAX_RULES: usize = 256;
    /// Tiers per tiered model.
    pub const MAX_TIERS: usize = 16;
    /// Conditions (dimensions) per rule.
    pub const MAX_DIMENSIONS: usize = 8;
    /// Values one condition may list.
    pub const MAX_CONDITION_VALUES: usize = 32;
    /// Time bands per version.
    pub const MAX_BANDS: usize = 16;
    /// Custom units per version.
    pub const MAX_CUSTOM_UNITS: usize = 32;
    /// Largest `decimals` of a version.
    pub const MAX_DECIMALS: u32 = 12;
    /// Largest `per` divisor of a price.
    pub const MAX_PER: u64 = 1_000_000_000;
    /// Largest price, fee or minimum (per `per` units).
    pub const MAX_PRICE: u64 = 1_000_000_000;
    /// Decimal places allowed in prices, fees, minimums and credit values.
    pub const MAX_PRICE_SCALE: u32 = 12;
    /// Largest size of a rate card file (bytes).
    pub const MAX_FILE_BYTES: usize = 4 << 20;
    /// Most errors reported for one file.
    pub const MAX_ERRORS: usize = 50;
}

/// How a price or cost is rounded to the version's `decimals`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Rounding {
    /// To nearest; ties away from zero (`half_up`, the default).
    #[default]
    HalfUp,
    /// To nearest; ties to the even neighbour (`half_even`, banker's).
    HalfEven,
    /// Towards +∞ (`up`, ceiling).
    Up,
    /// Towards zero (`down`, floor for the non-negative values used here).
    Down,
}

impl Rounding {
    /// The name used in rate card files.
    pub fn name(self) -> &'static str {
        match self {
            Rounding::HalfUp => "half_up",
            Rounding::HalfEven => "half_even",
            Rounding::Up => "up",
            Rounding::Down => "down",
        }
    }
}

/// One usage to price: what was (or will be) consumed, when, and in what context.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage<'a> {
    /// The service (rating group) id.
    pub service: u32,
    /// The unit of `quantity`.
    pub unit: Unit,
    /// Units consumed, `0 ..= 10^12`, at most 6 decimals.
    pub quantity: Decimal,
    /// Start time, ms since the Unix epoch (UTC).
    pub at_ms: u64,
    /// Length of the usage in ms; 0 for an instant event. A spanning usage is
    /// split at tariff changes inside `[at_ms, at_ms + duration_ms)`.
    pub duration_ms: u64,
    /// The customer's quantity of this unit already used in the period, for
    /// cumulative (graduated / volume) tiers; 0 otherwise.
    pub prior_quantity: Decimal,
    /// Attributes such as `("model", "large")`, `("region", "eu")`.
    pub attributes: &'a [(&'a str, &'a str)],
}

impl<'a> Usage<'a> {
    /// An instant usage without attributes or prior usage.
    pub fn new(service: u32, unit: Unit, quantity: Decimal, at_ms: u64) -> Usage<'a> {
        Usage {
            service,
            unit,
            quantity,
            at_ms,
            duration_ms: 0,
            prior_quantity: Decimal::ZERO,
            attributes: &[],
        }
    }

    /// The same usage with attributes.
    pub fn with_attributes(mut self, attributes: &'a [(&'a str, &'a str)]) -> Usage<'a> {
        self.attributes = attributes;
        self
    }

    /// The same usage spanning `duration_ms` from `at_ms`.
    pub fn spanning(mut self, duration_ms: u64) -> Usage<'a> {
        self.duration_ms = duration_ms;
        self
    }

    /// The same usage with the period's prior quantity.
    pub fn with_prior(mut self, prior_quantity: Decimal) -> Usage<'a> {
        self.prior_quantity = prior_quantity;
        self
    }
}

/// The price of a usage: price, provider cost and margin, with its parts.
#[derive(Debug, Clone, PartialEq)]
pub struct Rated {
    /// The unit `price` is in (the currency, or credits).
    pub charge_unit: Unit,
    /// What the customer is charged, in `charge_unit`.
    pub price: Decimal,
    /// The currency of `cost`, `margin` and `price_in_currency`.
    pub currency: Unit,
    /// `price` converted to `currency` (equal to `price` without credits).
    pub price_in_currency: Decimal,
    /// What the provider charges for this usage, in `currency`.
    pub cost: Decimal,
    /// `price_in_currency - cost` (may be negative).
    pub margin: Decimal,
    /// The card version in force at the usage's start.
    pub version: u32,
    /// The quantity charged for, after increments (sum over parts).
    pub billed_quantity: Decimal,
    /// One line per priced part (one unless the usage was split).
    pub lines: SmallVec<[RatedPart; 1]>,
}

/// One part of a rated usage, priced by one rule of one version.
#[derive(Debug, Clone, PartialEq)]
pub struct RatedPart {
    /// The version that priced this part.
    pub version: u32,
    /// The rule's position among its service's rules in the file (0-based).
    pub rule: u16,
    /// Start of the part (ms since epoch).
    pub from_ms: u64,
    /// End of the part (equal to `from_ms` for an instant usage).
    pub to_ms: u64,
    /// The part's share of the usage quantity.
    pub quantity: Decimal,
    /// The share after the rule's increment.
    pub billed_quantity: Decimal,
    /// Price of the part in the charge unit (incl. any minimum top-up).
    pub price: Decimal,
    /// Provider cost of the part in the currency.
    pub cost: Decimal,
}

#[cfg(test)]
mod doc_tests {
    /// The format example in the crate docs must stay a valid card.
    #[test]
    fn format_example_in_docs_loads() {
        let src = include_str!("lib.rs");
        let mut inside = false;
        let mut toml = String::new();
        for line in src.lines() {
            let l = line.strip_prefix("//!").unwrap_or("");
            let l = l.strip_prefix(' ').unwrap_or(l);
            if l.starts_with("```toml") {
                inside = true;
            } else if inside && l.starts_with("```") {
                break;
            } else if inside {
                toml.push_str(l);
                toml.push('\n');
            }
        }
        assert!(toml.contains("[[versions]]"));
        if let Err(e) = crate::parse_toml("lib.rs", &toml) {
            panic!("{e}");
        }
    }
}
