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
        /// What the operator should know, e.g. (service, unit) pairs another
        /// card priced until now; empty when nothing to say.
        notice: String,
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

/// Longest rate card file name accepted, in bytes (the protocol's limit).
pub const RATE_CARD_NAME_MAX: usize = reckon_protocol::limits::RATECARD_NAME_MAX;
/// Longest rate card text accepted, in bytes (the protocol's limit).
pub const RATE_CARD_TEXT_MAX: usize = reckon_protocol::limits::RATECARD_TEXT_MAX;
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
        if self.rate_files.len() >= RATE_FILES_MAX {
            // Refused whole, never applied without a record of it: a restore
            // rebuilds the book from the recorded files only.
            return RateCardOutcome::Refused {
                card: String::new(),
                message: format!("the server keeps at most {RATE_FILES_MAX} rate card files; no more can be applied"),
            };
        }
        if name.len() > RATE_CARD_NAME_MAX || text.len() > RATE_CARD_TEXT_MAX {
            return RateCardOutcome::Refused {
                card: String::new(),
                message: format!(
                    "rate card file names are at most {RATE_CARD_NAME_MAX} bytes and texts at most {RATE_CARD_TEXT_MAX}"
                ),
            };
        }
        let result = self.load_rate_card(now, &name, &text);
        self.rate_files.push(RateFile {
            at: now,
            op,
            name,
            text,
            result: result.clone(),
        });
        self.rates_dirty = true;
        if matches!(result, RateCardOutcome::Applied { .. }) {
            self.refresh_units();
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
        // The ledger keeps 9 decimal places: a card that prices finer would
        // have to be rounded silently, so it is refused.
        for v in card.versions() {
            if v.decimals() > Amount::SCALE {
                return RateCardOutcome::Refused {
                    card: id,
                    message: format!(
                        "{name}: version {}: decimals = {} but the ledger keeps at most {}",
                        v.version(),
                        v.decimals(),
                        Amount::SCALE
                    ),
                };
            }
            if Unit::new(v.charge_unit().as_str()).is_err() {
                return RateCardOutcome::Refused {
                    card: id,
                    message: format!(
                        "{name}: version {}: charge unit {} is not a ledger unit",
                        v.version(),
                        v.charge_unit().as_str()
                    ),
                };
            }
        }
        let before = self.priced_pairs(now);
        let previous = self.active_card.clone();
        match self.rates.apply(card, now.0) {
            Ok(applied) => {
                self.active_card = Some(id.clone());
                let mut notice = String::new();
                if let Some(previous) = previous.filter(|p| *p != id) {
                    let after = self.priced_pairs(now);
                    let lost: Vec<String> = before
                        .iter()
                        .filter(|p| !after.contains(p))
                        .map(|(s, u)| format!("{s}/{u}"))
                        .collect();
                    notice = format!(
                        "card {id} replaces {previous} as the active card; it now prices {} (service/unit) pair(s)",
                        after.len()
                    );
                    if !lost.is_empty() {
                        notice.push_str(&format!(
                            "; no longer priced by a card (fixed prices apply): {}",
                            lost.join(", ")
                        ));
                    }
                }
                RateCardOutcome::Applied {
                    card: id,
                    versions_added: applied.added.min(u16::MAX as usize) as u16,
                    notice,
                }
            }
            Err(e) => RateCardOutcome::Refused {
                card: id,
                message: e.to_string(),
            },
        }
    }

    /// (service, unit) pairs the active card prices at `now`.
    fn priced_pairs(&self, now: Timestamp) -> Vec<(u32, String)> {
        let Some(card) = self.active_card.as_deref().and_then(|c| self.rates.card(c)) else {
            return Vec::new();
        };
        let Some(version) = card.version_at(now.0) else {
            return Vec::new();
        };
        let mut pairs = Vec::new();
        for service in version.service_ids() {
            for unit in version.units_of(service) {
                pairs.push((service, unit.as_str().to_string()));
            }
        }
        pairs.sort();
        pairs
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
