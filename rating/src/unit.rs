//! Unit names: a small `Copy` newtype so the hot path compares units without
//! touching the heap.

use std::fmt;
use std::str::FromStr;

use crate::RatingError;

/// Longest unit name, in bytes.
pub const MAX_UNIT_LEN: usize = 16;

/// A unit name such as `tokens_out`, `gpu_seconds`, `USD` or `credits`:
/// 1..=16 characters of `[A-Za-z0-9_]`, compared case-sensitively.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Unit {
    // Stored inline and zero-padded so equality is a 17-byte compare.
    len: u8,
    bytes: [u8; MAX_UNIT_LEN],
}

impl Unit {
    /// GPU time in seconds (fractional GPU-hours are priced `per = 3600`).
    pub const GPU_SECONDS: Unit = Unit::from_static("gpu_seconds");
    /// Input (prompt) tokens.
    pub const TOKENS_IN: Unit = Unit::from_static("tokens_in");
    /// Output (completion) tokens.
    pub const TOKENS_OUT: Unit = Unit::from_static("tokens_out");
    /// Requests (events).
    pub const REQUESTS: Unit = Unit::from_static("requests");
    /// Octets (bytes) of data.
    pub const OCTETS: Unit = Unit::from_static("octets");
    /// Wall-clock seconds (telco session time).
    pub const SECONDS: Unit = Unit::from_static("seconds");

    /// The units every card knows without declaring them.
    pub const BUILT_IN: [Unit; 6] = [
        Unit::GPU_SECONDS,
        Unit::TOKENS_IN,
        Unit::TOKENS_OUT,
        Unit::REQUESTS,
        Unit::OCTETS,
        Unit::SECONDS,
    ];

    /// Validates and builds a unit name.
    pub fn new(name: &str) -> Result<Unit, RatingError> {
        let b = name.as_bytes();
        if b.is_empty()
            || b.len() > MAX_UNIT_LEN
            || !b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
        {
            return Err(RatingError::InvalidUnit(truncate(name, 40)));
        }
        let mut bytes = [0u8; MAX_UNIT_LEN];
        bytes[..b.len()].copy_from_slice(b);
        Ok(Unit {
            len: b.len() as u8,
            bytes,
        })
    }

    // Only for the constants above: names are checked at compile time.
    const fn from_static(name: &str) -> Unit {
        let b = name.as_bytes();
        assert!(!b.is_empty() && b.len() <= MAX_UNIT_LEN);
        let mut bytes = [0u8; MAX_UNIT_LEN];
        let mut i = 0;
        while i < b.len() {
            assert!(b[i].is_ascii_alphanumeric() || b[i] == b'_');
            bytes[i] = b[i];
            i += 1;
        }
        Unit {
            len: b.len() as u8,
            bytes,
        }
    }

    /// The unit's name.
    pub fn as_str(&self) -> &str {
        // Only ASCII bytes are ever stored, so this cannot fail; fall back to
        // "" rather than panic to keep the type total.
        std::str::from_utf8(&self.bytes[..self.len as usize]).unwrap_or("")
    }

    /// Whether this is one of [`Unit::BUILT_IN`].
    pub fn is_built_in(&self) -> bool {
        Unit::BUILT_IN.contains(self)
    }
}

impl FromStr for Unit {
    type Err = RatingError;
    fn from_str(s: &str) -> Result<Unit, RatingError> {
        Unit::new(s)
    }
}

impl fmt::Display for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Unit({})", self.as_str())
    }
}

/// Cuts a user-supplied string for an error message (bounded error sizes).
pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}
