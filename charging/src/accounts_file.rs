//! Accounts as JSON lines, for moving customers between systems:
//! `reckon export accounts` writes one object per account (parents before
//! their children) from a stopped server's data directory;
//! `reckon import accounts` checks a whole file first and refuses it,
//! naming every bad line, before it changes anything.
//!
//! One line:
//!
//! ```json
//! {"account":1001,"parent":1000,"draws_on_parent":true,"status":"active",
//!  "buckets":[{"unit":"USD","amount":"25.00","valid_from_ms":0,"valid_until_ms":null,
//!              "priority":0,"credit_limit":"0","services":[]}],
//!  "limits":[{"unit":"USD","cap":"100"}]}
//! ```
//!
//! Amounts are strings (exact decimals, at most 9 places); a missing
//! `valid_until_ms` (or `null`) is "never". What moves: accounts, their
//! buckets' amounts and terms, caps and statuses. What does not: open
//! reservations (export a quiet server), how much of a cap was used (caps
//! start again at zero use), the audit history.

use crate::engine::Engine;
use reckon_balances::journal::Journal;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Longest line accepted, in bytes.
pub const LINE_MAX: usize = 1 << 20;
/// Most lines (accounts) in one file.
pub const LINES_MAX: usize = 1_000_000;
/// Most errors reported for one file (the count of the rest is given).
pub const ERRORS_SHOWN: usize = 100;

/// One account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountLine {
    /// Its id (non-zero).
    pub account: u64,
    /// Its parent, which must come on an earlier line or exist already.
    #[serde(default)]
    pub parent: Option<u64>,
    /// Draws on its parent's buckets.
    #[serde(default)]
    pub draws_on_parent: bool,
    /// `active`, `suspended` or `closed`.
    #[serde(default = "active")]
    pub status: String,
    /// Its buckets.
    #[serde(default)]
    pub buckets: Vec<BucketLine>,
    /// Its caps.
    #[serde(default)]
    pub limits: Vec<LimitLine>,
}

fn active() -> String {
    "active".into()
}

fn zero() -> String {
    "0".into()
}

/// One bucket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BucketLine {
    /// Its unit.
    pub unit: String,
    /// Its amount, an exact decimal string.
    pub amount: String,
    /// Start of validity, ms since the epoch.
    #[serde(default)]
    pub valid_from_ms: u64,
    /// End of validity; absent or `null` for never.
    #[serde(default)]
    pub valid_until_ms: Option<u64>,
    /// Draw priority (higher first).
    #[serde(default)]
    pub priority: i16,
    /// Overdraft allowed, an exact decimal string.
    #[serde(default = "zero")]
    pub credit_limit: String,
    /// Services it may pay for (empty: any).
    #[serde(default)]
    pub services: Vec<u32>,
}

/// One cap.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitLine {
    /// Unit capped.
    pub unit: String,
    /// The cap, an exact decimal string.
    pub cap: String,
}

/// The accounts of a stopped server's data directory (or a restored
/// backup), parents before children, as JSON lines.
pub fn export(data_dir: &Path, out: &mut dyn std::io::Write) -> Result<usize, String> {
    let (engine, _) = Journal::<Engine>::recover_offline(data_dir)
        .map_err(|e| format!("{}: {e}", data_dir.display()))?;
    let ledger = &engine.ledger.ledger;
    let ids = ledger.account_ids();
    let depth = |mut id| {
        let mut d = 0u32;
        while let Some(p) = ledger.account(id).and_then(|a| a.parent) {
            id = p;
            d += 1;
        }
        d
    };
    let mut ordered: Vec<(u32, reckon_balances::AccountId)> =
        ids.into_iter().map(|id| (depth(id), id)).collect();
    ordered.sort_unstable();
    for (_, id) in &ordered {
        let Some(a) = ledger.account(*id) else {
            continue;
        };
        let line = AccountLine {
            account: a.id.0,
            parent: a.parent.map(|p| p.0),
            draws_on_parent: a.draws_on_parent,
            status: format!("{:?}", a.status).to_lowercase(),
            buckets: a
                .buckets
                .iter()
                .map(|b| BucketLine {
                    unit: b.unit.as_str().to_string(),
                    amount: b.amount.to_decimal().normalize().to_string(),
                    valid_from_ms: b.valid_from.0,
                    valid_until_ms: (b.valid_until.0 != u64::MAX).then_some(b.valid_until.0),
                    priority: b.priority,
                    credit_limit: b.credit_limit.to_decimal().normalize().to_string(),
                    services: b.services.iter().map(|s| s.0).collect(),
                })
                .collect(),
            limits: a
                .limits
                .iter()
                .map(|l| LimitLine {
                    unit: l.unit.as_str().to_string(),
                    cap: l.cap.to_decimal().normalize().to_string(),
                })
                .collect(),
        };
        let text = serde_json::to_string(&line).map_err(|e| e.to_string())?;
        writeln!(out, "{text}").map_err(|e| e.to_string())?;
    }
    Ok(ordered.len())
}

/// An amount as the ledger keeps it: an exact decimal of at most 9 places.
fn amount(text: &str, what: &str) -> Result<Decimal, String> {
    let d: Decimal = text
        .parse()
        .map_err(|_| format!("{what} {text:?} is not a decimal number"))?;
    if d.scale() > 9 && d.normalize().scale() > 9 {
        return Err(format!("{what} {text:?} has more than 9 decimal places"));
    }
    Ok(d)
}

fn unit(text: &str) -> Result<reckon_protocol::types::Unit, String> {
    reckon_protocol::types::Unit::new(text).map_err(|e| format!("unit {text:?}: {e}"))
}

/// A line checked: everything the server will be sent, parsed.
#[derive(Clone, Debug)]
pub struct Checked {
    /// Line number, from 1.
    pub line: usize,
    /// The account.
    pub account: AccountLine,
    /// Its status.
    pub status: reckon_protocol::types::AccountStatus,
}

/// Parses and checks every line of `text` on its own and against the
/// earlier lines (ids unique, parents earlier). The lines, or every error
/// as `line N: why`.
pub fn check(text: &str) -> Result<Vec<Checked>, Vec<String>> {
    use reckon_protocol::limits::{BUCKETS_MAX, BUCKET_SERVICES_MAX};
    use reckon_protocol::types::AccountStatus;
    let mut errors = Vec::new();
    let mut lines = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        if lines.len() >= LINES_MAX {
            errors.push(format!(
                "line {line}: more than {LINES_MAX} accounts in one file"
            ));
            break;
        }
        if raw.len() > LINE_MAX {
            errors.push(format!("line {line}: longer than {LINE_MAX} bytes"));
            continue;
        }
        let account: AccountLine = match serde_json::from_str(raw) {
            Ok(a) => a,
            Err(e) => {
                errors.push(format!("line {line}: {e}"));
                continue;
            }
        };
        let mut why = Vec::new();
        if account.account == 0 {
            why.push("account 0 is not an id".to_string());
        }
        if !seen.insert(account.account) {
            why.push(format!(
                "account {} is on an earlier line too",
                account.account
            ));
        }
        if let Some(p) = account.parent {
            if p == account.account {
                why.push("an account cannot be its own parent".into());
            }
        }
        let status = match account.status.as_str() {
            "active" => Some(AccountStatus::Active),
            "suspended" => Some(AccountStatus::Suspended),
            "closed" => Some(AccountStatus::Closed),
            other => {
                why.push(format!(
                    "status {other:?}: expected active, suspended or closed"
                ));
                None
            }
        };
        if account.buckets.len() > BUCKETS_MAX {
            why.push(format!("more than {BUCKETS_MAX} buckets"));
        }
        for (n, b) in account.buckets.iter().enumerate() {
            let at = |e: String| format!("bucket {}: {e}", n + 1);
            if let Err(e) = unit(&b.unit) {
                why.push(at(e));
            }
            let value = amount(&b.amount, "amount")
                .map_err(|e| why.push(at(e)))
                .ok();
            let credit = amount(&b.credit_limit, "credit_limit")
                .map_err(|e| why.push(at(e)))
                .ok();
            if credit.is_some_and(|c| c.is_sign_negative() && !c.is_zero()) {
                why.push(at("credit_limit is negative".into()));
            }
            if let (Some(v), Some(c)) = (value, credit) {
                if v + c < Decimal::ZERO {
                    why.push(at(format!("amount {v} is below the credit limit -{c}")));
                }
            }
            if b.valid_until_ms.is_some_and(|u| u <= b.valid_from_ms) {
                why.push(at("valid_until_ms is not after valid_from_ms".into()));
            }
            if b.services.len() > BUCKET_SERVICES_MAX {
                why.push(at(format!("more than {BUCKET_SERVICES_MAX} services")));
            }
        }
        let mut capped = std::collections::HashSet::new();
        for l in &account.limits {
            if let Err(e) = unit(&l.unit) {
                why.push(format!("limit: {e}"));
            }
            if !capped.insert(l.unit.clone()) {
                why.push(format!("limit: two caps on {}", l.unit));
            }
            match amount(&l.cap, "cap") {
                Ok(c) if c.is_sign_negative() && !c.is_zero() => {
                    why.push(format!("limit {}: cap is negative", l.unit))
                }
                Ok(_) => {}
                Err(e) => why.push(format!("limit {}: {e}", l.unit)),
            }
        }
        match (why.is_empty(), status) {
            (true, Some(status)) => lines.push(Checked {
                line,
                account,
                status,
            }),
            _ => errors.push(format!("line {line}: {}", why.join("; "))),
        }
    }
    if errors.is_empty() {
        Ok(lines)
    } else {
        Err(errors)
    }
}

/// An op id for step `step` of line `line` of the file whose digest is
/// `file`: the same file imported again repeats the same operations,
/// which the server recognises instead of applying twice.
pub fn op_id(file: u64, line: usize, step: usize) -> u128 {
    let id = (u128::from(file) << 64) | ((line as u128) << 20) | step as u128;
    id.max(1)
}
