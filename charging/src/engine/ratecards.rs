//! Rate cards applied through the log: validation, activation, listing.

#[allow(unused_imports)]
use super::*;

/// A rate card file as applied: kept so a restore rebuilds the rate book
/// exactly (the book itself has no serialised form) and a retried apply
/// gets its original result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct RateFile {
    pub(super) at: Timestamp,
    pub(super) op: u128,
    pub(super) name: Arc<str>,
    pub(super) text: Arc<str>,
    pub(super) result: RateCardOutcome,
}

/// What applying a rate card did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RateCardOutcome {
    /// Accepted: the card's id and how many versions were added.
    Applied {
        /// The card's id.
        card: String,
        /// Versions added (0 when the file was applied before).
        versions_added: u16,
    },
    /// Refused, nothing changed: the card's id (if read) and the errors.
    Refused {
        /// The card's id, or empty.
        card: String,
        /// One error per line, `file:line:col: field: message`.
        message: String,
    },
}

/// One version of a card, as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateCardVersionSummary {
    /// Version number.
    pub version: u32,
    /// When it takes effect, ms since the epoch.
    pub effective_from_ms: u64,
    /// Unit charged.
    pub charge_unit: String,
    /// Reporting currency.
    pub currency: String,
}

/// One card, as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateCardSummary {
    /// Its id.
    pub card: String,
    /// True for the card the engine prices with.
    pub active: bool,
    /// Its versions, oldest first.
    pub versions: Vec<RateCardVersionSummary>,
}

/// Longest rate card text accepted, in bytes.
pub const RATE_CARD_TEXT_MAX: usize = 60_000;
/// Most rate card files kept (each apply adds one).
pub const RATE_FILES_MAX: usize = 1_000;

impl Engine {
    pub(super) fn apply_rate_card(
        &mut self,
        now: Timestamp,
        op: u128,
        name: Arc<str>,
        text: Arc<str>,
    ) -> RateCardOutcome {
        if let Some(earlier) = self.rate_files.iter().find(|f| f.op == op) {
            // A retry: the original result, whether it succeeded or not.
            if earlier.name == name && earlier.text == text {
                return earlier.result.clone();
            }
            return RateCardOutcome::Refused {
                card: String::new(),
                message: "op id already used for a different rate card".into(),
            };
        }
        let result = self.load_rate_card(now, &name, &text);
        if self.rate_files.len() < RATE_FILES_MAX {
            self.rate_files.push(RateFile {
                at: now,
                op,
                name,
                text,
                result: result.clone(),
            });
            self.rates_dirty = true;
        }
        result
    }

    pub(super) fn load_rate_card(
        &mut self,
        now: Timestamp,
        name: &str,
        text: &str,
    ) -> RateCardOutcome {
        if text.len() > RATE_CARD_TEXT_MAX {
            return RateCardOutcome::Refused {
                card: String::new(),
                message: format!("{name}: rate card larger than {RATE_CARD_TEXT_MAX} bytes"),
            };
        }
        let parsed = if name.ends_with(".json") || text.trim_start().starts_with('{') {
            reckon_rating::parse_json(name, text)
        } else {
            reckon_rating::parse_toml(name, text)
        };
        let card = match parsed {
            Ok(card) => card,
            Err(errors) => {
                return RateCardOutcome::Refused {
                    card: String::new(),
                    message: errors.to_string(),
                }
            }
        };
        let id = card.id().to_string();
        match self.rates.apply(card, now.0) {
            Ok(applied) => {
                self.active_card = Some(id.clone());
                RateCardOutcome::Applied {
                    card: id,
                    versions_added: applied.added.min(u16::MAX as usize) as u16,
                }
            }
            Err(e) => RateCardOutcome::Refused {
                card: id,
                message: e.to_string(),
            },
        }
    }

    pub(super) fn rate_cards(&self, only: &str) -> Vec<RateCardSummary> {
        self.rates
            .cards()
            .filter(|c| only.is_empty() || c.id() == only)
            .map(|c| RateCardSummary {
                card: c.id().to_string(),
                active: self.active_card.as_deref() == Some(c.id()),
                versions: c
                    .versions()
                    .iter()
                    .map(|v| RateCardVersionSummary {
                        version: v.version(),
                        effective_from_ms: v.effective_from_ms(),
                        charge_unit: v.charge_unit().as_str().to_string(),
                        currency: v.currency().as_str().to_string(),
                    })
                    .collect(),
            })
            .collect()
    }
}
