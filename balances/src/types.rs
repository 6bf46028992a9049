//! The ledger's small value types: ids, time, units, services.

use std::fmt;

/// Identifies an account; chosen by the operator when the account is created.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AccountId(pub u64);

/// Identifies a bucket; assigned by the ledger, unique across all accounts.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BucketId(pub u64);

/// Identifies a reservation; assigned by the ledger in increasing order.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReservationId(pub u64);

/// A client's id for one mutating operation, the key of idempotency.
///
/// Zero is reserved for operations the server issues itself (expiry sweeps),
/// which are not deduplicated.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpId(pub u128);

impl OpId {
    /// The id of server-issued operations; never valid from a client.
    pub const SERVER: OpId = OpId(0);
}

/// A service (rating group or service id) a bucket may be restricted to.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceId(pub u32);

/// Milliseconds since the Unix epoch, always passed in by the caller.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// "Never": the end of a window that does not end.
    pub const NEVER: Timestamp = Timestamp(u64::MAX);

    /// This time plus a duration in milliseconds, saturating at [`Timestamp::NEVER`].
    pub fn plus_ms(self, ms: u64) -> Timestamp {
        Timestamp(self.0.saturating_add(ms))
    }
}

/// Lifecycle of an account.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum AccountStatus {
    /// May reserve, be charged and be credited.
    Active,
    /// May be credited and may settle existing reservations, but not reserve.
    Suspended,
    /// Final: nothing may change its balances any more.
    Closed,
}

impl AccountStatus {
    /// Wire/log code of the status.
    pub fn code(self) -> u8 {
        match self {
            AccountStatus::Active => 0,
            AccountStatus::Suspended => 1,
            AccountStatus::Closed => 2,
        }
    }

    /// The status of a wire/log code.
    pub fn from_code(code: u8) -> Option<AccountStatus> {
        Some(match code {
            0 => AccountStatus::Active,
            1 => AccountStatus::Suspended,
            2 => AccountStatus::Closed,
            _ => return None,
        })
    }
}

/// What a bucket counts: a currency (`USD`), `credits`, or a service unit
/// (`gpu_seconds`, `tokens_in`, `tokens_out`, `requests`, `octets`, ...).
///
/// A unit is a name of 1 to 16 ASCII letters, digits or `_`, held inline so
/// that it is `Copy` and compares as one 128-bit word on the hot path.
#[derive(Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Unit([u8; 16]);

/// Why a name is not a valid [`Unit`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unit name {0:?} must be 1 to 16 ASCII letters, digits or '_'")]
pub struct UnitError(pub String);

impl Unit {
    /// Longest unit name in bytes.
    pub const NAME_LEN_MAX: usize = 16;
    /// Internal credits.
    pub const CREDITS: Unit = Unit::from_static("credits");
    /// GPU time in seconds (fractional GPU-hours are seconds / 3600).
    pub const GPU_SECONDS: Unit = Unit::from_static("gpu_seconds");
    /// Input (prompt) tokens.
    pub const TOKENS_IN: Unit = Unit::from_static("tokens_in");
    /// Output (completion) tokens.
    pub const TOKENS_OUT: Unit = Unit::from_static("tokens_out");
    /// Requests or events.
    pub const REQUESTS: Unit = Unit::from_static("requests");
    /// Data volume in octets.
    pub const OCTETS: Unit = Unit::from_static("octets");
    /// Time in seconds.
    pub const SECONDS: Unit = Unit::from_static("seconds");
    /// US dollars.
    pub const USD: Unit = Unit::from_static("USD");
    /// Euros.
    pub const EUR: Unit = Unit::from_static("EUR");

    const fn from_static(name: &str) -> Unit {
        let bytes = name.as_bytes();
        let mut out = [0u8; 16];
        let mut i = 0;
        while i < bytes.len() {
            out[i] = bytes[i];
            i += 1;
        }
        Unit(out)
    }

    /// Parses and validates a unit name.
    pub fn new(name: &str) -> Result<Unit, UnitError> {
        let bytes = name.as_bytes();
        let valid = !bytes.is_empty()
            && bytes.len() <= Self::NAME_LEN_MAX
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'_');
        if !valid {
            return Err(UnitError(name.chars().take(40).collect()));
        }
        Ok(Unit::from_static(name))
    }

    /// The unit from its 16 raw bytes (as stored in the log), validated.
    pub fn from_bytes(raw: [u8; 16]) -> Result<Unit, UnitError> {
        // One pass (every record decoded on recovery holds units): a
        // non-empty name of the allowed bytes, then only zeros.
        let mut ended = false;
        let mut valid = raw[0] != 0;
        for b in raw {
            if b == 0 {
                ended = true;
            } else {
                valid &= !ended && (b.is_ascii_alphanumeric() || b == b'_');
            }
        }
        if valid {
            Ok(Unit(raw))
        } else {
            let shown = String::from_utf8_lossy(&raw);
            Err(UnitError(
                shown.trim_end_matches('\0').chars().take(40).collect(),
            ))
        }
    }

    /// The raw 16 bytes (name, zero padded).
    pub fn to_bytes(self) -> [u8; 16] {
        self.0
    }

    /// The unit's name.
    pub fn as_str(&self) -> &str {
        let len = self.0.iter().position(|b| *b == 0).unwrap_or(16);
        // Constructors only admit ASCII.
        std::str::from_utf8(&self.0[..len]).unwrap_or("?")
    }
}

impl fmt::Debug for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Unit({})", self.as_str())
    }
}

impl fmt::Display for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Unit {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Unit, UnitError> {
        Unit::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_names_are_validated() {
        assert_eq!(Unit::new("gpu_seconds").unwrap(), Unit::GPU_SECONDS);
        assert_eq!(Unit::new("USD").unwrap().as_str(), "USD");
        assert!(Unit::new("").is_err());
        assert!(Unit::new("a-b").is_err());
        assert!(Unit::new("seventeen_chars_x").is_err());
        assert!(Unit::new("sixteen_chars_xx").is_ok());
        let raw = Unit::TOKENS_OUT.to_bytes();
        assert_eq!(Unit::from_bytes(raw).unwrap(), Unit::TOKENS_OUT);
        let mut bad = raw;
        bad[15] = b'x';
        assert!(Unit::from_bytes(bad).is_err());
    }

    #[test]
    fn timestamps_saturate() {
        assert_eq!(Timestamp(5).plus_ms(u64::MAX), Timestamp::NEVER);
        assert_eq!(Timestamp(5).plus_ms(10), Timestamp(15));
    }

    proptest::proptest! {
        /// The one-pass check of stored names accepts exactly the names
        /// `Unit::new` accepts, zero padded.
        #[test]
        fn stored_unit_names_are_checked_like_parsed_ones(
            name in proptest::collection::vec(
                proptest::sample::select(vec![b'a', b'Z', b'_', b'9', b'-', 0xc3, 0, b' ']),
                0..=16,
            ),
            junk in proptest::option::of((0usize..16, 1u8..=255)),
        ) {
            // Mostly well-formed names, zero padded; sometimes a byte in
            // the padding.
            let mut raw = [0u8; 16];
            raw[..name.len()].copy_from_slice(&name);
            if let Some((at, byte)) = junk.filter(|(at, _)| *at >= name.len()) {
                raw[at] = byte;
            }
            let len = raw.iter().position(|b| *b == 0).unwrap_or(16);
            let reference = raw[len..].iter().all(|b| *b == 0)
                && std::str::from_utf8(&raw[..len]).is_ok_and(|name| Unit::new(name).is_ok());
            proptest::prop_assert_eq!(Unit::from_bytes(raw).is_ok(), reference);
            if let Ok(unit) = Unit::from_bytes(raw) {
                proptest::prop_assert_eq!(unit.to_bytes(), raw);
            }
        }
    }
}
