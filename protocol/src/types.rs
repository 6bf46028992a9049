//! The protocol's small value types: units, (unit, amount) pairs and the
//! one-byte enumerations.

use crate::limits::{
    PERIOD_LENGTH_MAX_MS, PERIOD_LENGTH_MIN_MS, PERIOD_MONTHS_MAX, PERIOD_OFFSET_MIN_MAX,
    UNIT_LEN_MAX, UNIT_LEN_MIN,
};
use rust_decimal::Decimal;
use std::fmt;
use std::str::FromStr;

/// What an amount counts: a currency (`USD`), `credits`, or a service unit
/// (`gpu_seconds`, `tokens_in`, `tokens_out`, `requests`, `octets`, `seconds`).
///
/// A unit is 1 to 16 ASCII letters, digits or `_`, held inline (`Copy`).
#[derive(Copy, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Unit {
    bytes: [u8; UNIT_LEN_MAX],
    len: u8,
}

/// Why a name is not a valid [`Unit`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unit name {0:?} must be 1 to 16 ASCII letters, digits or '_'")]
pub struct InvalidUnitName(pub String);

impl Unit {
    /// US dollars.
    pub const USD: Unit = Unit::from_static("USD");
    /// Euros.
    pub const EUR: Unit = Unit::from_static("EUR");
    /// Internal credits.
    pub const CREDITS: Unit = Unit::from_static("credits");
    /// GPU time in seconds.
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

    /// The unit of this name, or an error if the name is not 1 to 16 ASCII
    /// letters, digits or `_`.
    pub fn new(name: &str) -> Result<Unit, InvalidUnitName> {
        Unit::from_bytes(name.as_bytes()).ok_or_else(|| InvalidUnitName(name.to_owned()))
    }

    /// The unit of these name bytes, if they are a valid unit name.
    pub(crate) const fn from_bytes(name: &[u8]) -> Option<Unit> {
        if name.len() < UNIT_LEN_MIN || name.len() > UNIT_LEN_MAX {
            return None;
        }
        let mut bytes = [0u8; UNIT_LEN_MAX];
        let mut i = 0;
        while i < name.len() {
            let b = name[i];
            if !(b.is_ascii_alphanumeric() || b == b'_') {
                return None;
            }
            bytes[i] = b;
            i += 1;
        }
        Some(Unit {
            bytes,
            len: name.len() as u8,
        })
    }

    const fn from_static(name: &str) -> Unit {
        match Unit::from_bytes(name.as_bytes()) {
            Some(u) => u,
            None => panic!("invalid unit name"),
        }
    }

    /// The unit's name.
    pub fn as_str(&self) -> &str {
        // Only ASCII bytes are ever stored.
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }

    /// The unit's name as bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
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

impl FromStr for Unit {
    type Err = InvalidUnitName;
    fn from_str(s: &str) -> Result<Unit, InvalidUnitName> {
        Unit::new(s)
    }
}

impl TryFrom<&str> for Unit {
    type Error = InvalidUnitName;
    fn try_from(s: &str) -> Result<Unit, InvalidUnitName> {
        Unit::new(s)
    }
}

/// An amount of some unit: requested, used, granted, a balance or a price.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct UnitAmount {
    /// What is counted.
    pub unit: Unit,
    /// How much of it.
    pub amount: Decimal,
}

impl UnitAmount {
    /// The pair (unit, amount).
    pub fn new(unit: Unit, amount: Decimal) -> UnitAmount {
        UnitAmount { unit, amount }
    }
}

macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        $name:ident { $( $(#[$vmeta:meta])* $variant:ident = $value:expr, )* }
    ) => {
        $(#[$meta])*
        #[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum $name {
            $( $(#[$vmeta])* $variant = $value, )*
        }

        impl $name {
            /// Every value, in wire order.
            pub const ALL: &'static [$name] = &[$($name::$variant),*];

            /// The wire byte.
            pub fn code(self) -> u8 {
                self as u8
            }

            /// The value of a wire byte, or `None` if it is not defined.
            pub fn from_code(code: u8) -> Option<$name> {
                match code {
                    $( $value => Some($name::$variant), )*
                    _ => None,
                }
            }
        }
    };
}

wire_enum! {
    /// CCR `request_type`: where a request stands in its session.
    RequestType {
        /// Opens a session and asks for a first grant.
        Initial = 1,
        /// Reports usage and asks for more.
        Update = 2,
        /// Reports final usage and closes the session.
        Terminate = 3,
        /// A one-shot request outside any session (see [`EventAction`]).
        Event = 4,
    }
}

wire_enum! {
    /// CCR `event_action` of an EVENT request (wire 0 = none, for session requests).
    EventAction {
        /// Debit the units (or their price) at once.
        DirectDebit = 1,
        /// Credit the units (or their price) back.
        Refund = 2,
        /// Report the balance without changing anything.
        CheckBalance = 3,
        /// Report the price of the units without changing anything.
        PriceEnquiry = 4,
    }
}

wire_enum! {
    /// CCR `termination_cause` of a TERMINATE request, Diameter's values
    /// (wire 0 = none).
    TerminationCause {
        /// The user logged out normally.
        Logout = 1,
        /// The service was not provided.
        ServiceNotProvided = 2,
        /// A bad answer was received.
        BadAnswer = 3,
        /// Ended by an administrator.
        Administrative = 4,
        /// The link broke.
        LinkBroken = 5,
        /// Authorisation expired.
        AuthExpired = 6,
        /// The user moved.
        UserMoved = 7,
        /// The session timed out.
        SessionTimeout = 8,
    }
}

wire_enum! {
    /// CCA service `final_unit_action`: what to do when the grant is used up
    /// (wire 0 = none: more may be asked for).
    FinalUnitAction {
        /// End the service when the granted units are used.
        Terminate = 1,
        /// Redirect the user to the `redirect` address (e.g. a top-up page).
        Redirect = 2,
        /// Restrict access to a walled garden.
        RestrictAccess = 3,
    }
}

wire_enum! {
    /// An account's lifecycle status.
    AccountStatus {
        /// May reserve, be charged and be credited.
        Active = 0,
        /// May be credited and settle existing reservations, but not reserve.
        Suspended = 1,
        /// Final: nothing may change its balances any more.
        Closed = 2,
    }
}

wire_enum! {
    /// Whether a `TOPUP` is new money in or money given back.
    CreditKind {
        /// Money paid in.
        TopUp = 0,
        /// Money returned, e.g. for a failed service.
        Refund = 1,
    }
}

/// How often a spend control's count starts again (protocol version 3,
/// `LIMIT_SET.period`, SPEC 6.5).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum LimitPeriod {
    /// Never resets: the count runs for the account's whole life (kind 0;
    /// what every version-1 and -2 cap is).
    Lifetime,
    /// Calendar periods of `months` months (kind 1..=12), counted in the
    /// local time `offset_min` minutes east of UTC.
    Months {
        /// Months per period, 1 ..= 12 (1: a month, 3: a quarter, 12: a year).
        months: u8,
        /// The start of one period, ms since the epoch; the others begin
        /// a whole number of periods before or after it.
        anchor_ms: u64,
        /// The local time's UTC offset in minutes, −1080 ..= 1080.
        offset_min: i16,
    },
    /// Periods of a fixed length (kind 13).
    Fixed {
        /// The start of one period, ms since the epoch.
        anchor_ms: u64,
        /// The length of every period in ms, one minute ..= 3653 days.
        length_ms: u64,
    },
}

impl LimitPeriod {
    /// The wire kind of [`LimitPeriod::Lifetime`].
    pub const KIND_LIFETIME: u8 = 0;
    /// The wire kind of [`LimitPeriod::Fixed`]; 1 ..= 12 are months.
    pub const KIND_FIXED: u8 = 13;

    /// The wire kind byte: 0 lifetime, 1 ..= 12 months, 13 fixed length.
    pub fn kind(&self) -> u8 {
        match self {
            LimitPeriod::Lifetime => LimitPeriod::KIND_LIFETIME,
            LimitPeriod::Months { months, .. } => *months,
            LimitPeriod::Fixed { .. } => LimitPeriod::KIND_FIXED,
        }
    }

    /// Whether `kind` is a defined period kind (0 ..= 13).
    pub fn is_kind(kind: u8) -> bool {
        kind <= LimitPeriod::KIND_FIXED
    }

    /// Checks the ranges a decoder enforces; `Err` says which is broken.
    pub fn check(&self) -> Result<(), &'static str> {
        match *self {
            LimitPeriod::Lifetime => Ok(()),
            LimitPeriod::Months {
                months, offset_min, ..
            } => {
                if !(1..=PERIOD_MONTHS_MAX).contains(&months) {
                    Err("months must be 1 ..= 12")
                } else if offset_min.unsigned_abs() > PERIOD_OFFSET_MIN_MAX as u16 {
                    Err("offset_min must be -1080 ..= 1080")
                } else {
                    Ok(())
                }
            }
            LimitPeriod::Fixed { length_ms, .. } => {
                if (PERIOD_LENGTH_MIN_MS..=PERIOD_LENGTH_MAX_MS).contains(&length_ms) {
                    Ok(())
                } else {
                    Err("length_ms must be 60000 ..= 315619200000 (one minute ..= 3653 days)")
                }
            }
        }
    }
}

/// Why a CCA service was refused for lack of credit (protocol version 3,
/// service `denial`, SPEC 6.4): which control said no, so a gateway can
/// tell its user "department budget reached" rather than "no credit".
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Denial {
    /// The account and the accounts it draws on have no credit left (reason 1).
    NoCredit,
    /// A hard spend control refused (reason 2).
    SpendControl {
        /// The account the control is set on (the charged account or an ancestor).
        account: u64,
        /// The control's period kind ([`LimitPeriod::kind`]: 0 lifetime,
        /// 1 ..= 12 months, 13 fixed length).
        period_kind: u8,
    },
}

impl Denial {
    /// The wire reason byte: 1 `NO_CREDIT`, 2 `SPEND_CONTROL` (0 is none).
    pub fn reason(&self) -> u8 {
        match self {
            Denial::NoCredit => 1,
            Denial::SpendControl { .. } => 2,
        }
    }
}
