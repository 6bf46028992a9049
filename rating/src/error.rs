//! Errors of rating and of managing rate cards (load errors live in `load`).

use crate::Unit;

/// Why a usage could not be priced or a card version could not be added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RatingError {
    /// A unit name is not 1..=16 characters of `[A-Za-z0-9_]`.
    #[error("invalid unit name {0:?}: use 1..=16 characters of A-Z, a-z, 0-9, _")]
    InvalidUnit(String),
    /// No card with this id is in the book.
    #[error("unknown rate card {0:?}")]
    UnknownCard(String),
    /// The usage time is before the card's first version.
    #[error("rate card {card:?} has no version in force at {at_ms} ms")]
    NotInForce {
        /// The card id.
        card: String,
        /// The usage time.
        at_ms: u64,
    },
    /// The version in force does not price this service.
    #[error("version {version} does not price service {service}")]
    UnknownService {
        /// The service id of the usage.
        service: u32,
        /// The card version in force.
        version: u32,
    },
    /// No rule (not even a default) matches the usage's unit and attributes.
    #[error(
        "version {version} has no rule for service {service} unit {unit} matching these attributes"
    )]
    NoRule {
        /// The service id of the usage.
        service: u32,
        /// The unit of the usage.
        unit: Unit,
        /// The card version in force.
        version: u32,
    },
    /// A quantity is negative, too large or too precise (see [`crate::limits`]).
    #[error("invalid quantity: {0}")]
    InvalidQuantity(&'static str),
    /// An amount given to `units_for` is negative or out of range.
    #[error("invalid amount: {0}")]
    InvalidAmount(&'static str),
    /// The usage's attributes or duration break the limits.
    #[error("invalid usage: {0}")]
    InvalidUsage(&'static str),
    /// The usage crosses too many tariff changes; report it in shorter pieces.
    #[error("usage spans more than {0} tariff periods; report it in shorter pieces")]
    TooManyParts(usize),
    /// An intermediate value does not fit exactly (only for extreme values).
    #[error("arithmetic overflow while pricing (values out of range)")]
    Overflow,
    /// A version does not come strictly after the card's last one.
    #[error("card {card:?}: version {version} must come after version {last} (number and effective time strictly increasing)")]
    VersionOrder {
        /// The card id.
        card: String,
        /// The rejected version number.
        version: u32,
        /// The card's latest version number.
        last: u32,
    },
    /// A version with this number exists with different content.
    #[error("card {card:?}: version {version} already exists with different content (versions are immutable; add a new version)")]
    VersionConflict {
        /// The card id.
        card: String,
        /// The version number.
        version: u32,
    },
    /// A new version would take effect in the past and re-price rated usage.
    #[error("card {card:?}: version {version} takes effect at {effective_from_ms} ms, before now ({now_ms} ms); usage already rated would change")]
    EffectiveInPast {
        /// The card id.
        card: String,
        /// The version number.
        version: u32,
        /// Its effective time.
        effective_from_ms: u64,
        /// The time given as now.
        now_ms: u64,
    },
    /// The card would hold more than [`crate::limits::MAX_VERSIONS`] versions.
    #[error("card {0:?} would exceed the maximum number of versions")]
    TooManyVersions(String),
}
