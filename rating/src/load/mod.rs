//! Loading rate cards from TOML or JSON text, with validation errors that
//! name the file, line, column and field path.
//!
//! Both formats are first turned into one small tree of [`Node`]s that keeps
//! source positions (and the source text of numbers, so decimals are exact);
//! a single builder then validates that tree into a [`RateCard`].

mod json;
mod toml;

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;

use crate::card::{CardVersion, RateCard};
use crate::fixed::Fx;
use crate::limits::*;
use crate::model::{Cond, PriceModel, Rule, Service, Tier, UnitRules};
use crate::time::{days_from_civil, days_in_month, Band, Bands, DAY_NAMES};
use crate::unit::truncate;
use crate::{Rounding, Unit};

/// One problem in a rate card file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    /// The file name given to the parser.
    pub file: String,
    /// 1-based line.
    pub line: u32,
    /// 1-based column (in characters).
    pub column: u32,
    /// The field path, e.g. `versions[0].services[1].rules[2].price.tiers[1].up_to`
    /// (empty for syntax errors).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

/// All problems found in a file (at most [`MAX_ERRORS`]), in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadErrors {
    /// The errors.
    pub errors: Vec<LoadError>,
}

impl fmt::Display for LoadErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadErrors {}

/// Parses and validates a rate card written in TOML. `name` is only used in
/// error messages (normally the file's path).
pub fn parse_toml(name: &str, text: &str) -> Result<RateCard, LoadErrors> {
    let mut cx = Cx::new(name, text);
    if text.len() > MAX_FILE_BYTES {
        cx.err(Pos::START, "", "file larger than 4 MiB");
        return Err(cx.into_errors());
    }
    match toml::to_node(&mut cx, text) {
        Some(root) => build(cx, &root),
        None => Err(cx.into_errors()),
    }
}

/// Parses and validates a rate card written in JSON (same structure as TOML;
/// dates as RFC 3339 strings or `effective_from_ms`).
pub fn parse_json(name: &str, text: &str) -> Result<RateCard, LoadErrors> {
    let mut cx = Cx::new(name, text);
    if text.len() > MAX_FILE_BYTES {
        cx.err(Pos::START, "", "file larger than 4 MiB");
        return Err(cx.into_errors());
    }
    match json::to_node(&mut cx, text) {
        Some(root) => build(cx, &root),
        None => Err(cx.into_errors()),
    }
}

/// A 1-based source position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pos {
    pub line: u32,
    pub col: u32,
}

impl Pos {
    pub const START: Pos = Pos { line: 1, col: 1 };
}

/// A parsed value with its position.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub pos: Pos,
    pub kind: Kind,
}

#[derive(Debug, Clone)]
pub(crate) enum Kind {
    /// Entries in file order: key, key position, value.
    Table(Vec<(String, Pos, Node)>),
    Array(Vec<Node>),
    Str(String),
    /// The number's source text (exact).
    Num(String),
    Bool,
    /// An offset date-time as ms since the epoch, or why it is not one.
    Datetime(Result<u64, String>),
}

impl Kind {
    fn type_name(&self) -> &'static str {
        match self {
            Kind::Table(_) => "a table",
            Kind::Array(_) => "an array",
            Kind::Str(_) => "a string",
            Kind::Num(_) => "a number",
            Kind::Bool => "a boolean",
            Kind::Datetime(_) => "a date-time",
        }
    }
}

/// Error collector and position mapper for one file.
pub(crate) struct Cx<'t> {
    file: String,
    text: &'t str,
    line_starts: Vec<usize>,
    errors: Vec<LoadError>,
}

impl<'t> Cx<'t> {
    fn new(file: &str, text: &'t str) -> Cx<'t> {
        let mut line_starts = vec![0];
        if text.len() <= MAX_FILE_BYTES {
            line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        }
        Cx {
            file: truncate(file, 256),
            text,
            line_starts,
            errors: Vec::new(),
        }
    }

    /// Position of a byte offset (columns count characters).
    pub fn pos(&self, offset: usize) -> Pos {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&s| s <= offset).max(1);
        let start = self.line_starts[line - 1];
        let col = self
            .text
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count());
        Pos {
            line: line as u32,
            col: col as u32 + 1,
        }
    }

    pub fn err(&mut self, pos: Pos, field: &str, msg: impl Into<String>) {
        if self.errors.len() < MAX_ERRORS {
            self.errors.push(LoadError {
                file: self.file.clone(),
                line: pos.line,
                column: pos.col,
                field: field.to_string(),
                message: msg.into(),
            });
        }
    }

    fn into_errors(self) -> LoadErrors {
        let mut errors = self.errors;
        errors.sort_by_key(|e| (e.line, e.column));
        LoadErrors { errors }
    }
}

/// A table being read: tracks which keys were used, to reject unknown ones.
struct Obj<'a> {
    pos: Pos,
    path: String,
    entries: &'a [(String, Pos, Node)],
    used: Vec<bool>,
}

impl<'a> Obj<'a> {
    fn new(cx: &mut Cx, node: &'a Node, path: &str) -> Option<Obj<'a>> {
        match &node.kind {
            Kind::Table(entries) => Some(Obj {
                pos: node.pos,
                path: path.to_string(),
                entries,
                used: vec![false; entries.len()],
            }),
            k => {
                cx.err(
                    node.pos,
                    path,
                    format!("expected a table, found {}", k.type_name()),
                );
                None
            }
        }
    }

    fn field(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{}", self.path, key)
        }
    }

    fn get(&mut self, key: &str) -> Option<(&'a Node, String)> {
        let i = self.entries.iter().position(|(k, _, _)| k == key)?;
        self.used[i] = true;
        Some((&self.entries[i].2, self.field(key)))
    }

    fn req(&mut self, cx: &mut Cx, key: &str) -> Option<(&'a Node, String)> {
        let r = self.get(key);
        if r.is_none() {
            cx.err(self.pos, &self.path, format!("missing field `{key}`"));
        }
        r
    }

    /// Reports keys nobody asked for (typos must not pass silently).
    fn finish(self, cx: &mut Cx) {
        for (i, (k, kpos, _)) in self.entries.iter().enumerate() {
            if !self.used[i] {
                cx.err(*kpos, &self.field(k), "unknown field");
            }
        }
    }
}

/// Position of a table entry's value (the table's own if absent).
fn entry_pos(n: &Node, key: &str) -> Pos {
    match &n.kind {
        Kind::Table(entries) => entries
            .iter()
            .find(|(k, _, _)| k == key)
            .map_or(n.pos, |e| e.2.pos),
        _ => n.pos,
    }
}

fn has_key(n: &Node, key: &str) -> bool {
    matches!(&n.kind, Kind::Table(e) if e.iter().any(|(k, _, _)| k == key))
}

fn as_str<'a>(cx: &mut Cx, n: &'a Node, path: &str) -> Option<&'a str> {
    match &n.kind {
        Kind::Str(s) => Some(s),
        k => {
            cx.err(
                n.pos,
                path,
                format!("expected a string, found {}", k.type_name()),
            );
            None
        }
    }
}

fn as_array<'a>(cx: &mut Cx, n: &'a Node, path: &str, max: usize) -> Option<&'a [Node]> {
    match &n.kind {
        Kind::Array(a) if a.len() > max => {
            cx.err(n.pos, path, format!("at most {max} entries allowed"));
            None
        }
        Kind::Array(a) => Some(a),
        k => {
            cx.err(
                n.pos,
                path,
                format!("expected an array, found {}", k.type_name()),
            );
            None
        }
    }
}

fn as_u64(cx: &mut Cx, n: &Node, path: &str, min: u64, max: u64) -> Option<u64> {
    let v = match &n.kind {
        Kind::Num(s) => u64::from_str(&s.replace('_', "")).ok(),
        _ => None,
    };
    match v {
        Some(v) if (min..=max).contains(&v) => Some(v),
        _ => {
            cx.err(n.pos, path, format!("expected an integer in {min}..={max}"));
            None
        }
    }
}

/// A decimal written as a number or a string, read exactly from its text.
fn as_decimal(cx: &mut Cx, n: &Node, path: &str) -> Option<Decimal> {
    let text = match &n.kind {
        Kind::Num(s) | Kind::Str(s) => s.replace('_', ""),
        k => {
            cx.err(
                n.pos,
                path,
                format!("expected a decimal number, found {}", k.type_name()),
            );
            return None;
        }
    };
    let t = text.trim();
    let parsed = if t.contains(['e', 'E']) {
        Decimal::from_scientific(t).ok()
    } else {
        Decimal::from_str_exact(t).ok()
    };
    match parsed {
        Some(d) => Some(d.normalize()),
        None => {
            cx.err(
                n.pos,
                path,
                format!("{:?} is not a decimal number", truncate(t, 40)),
            );
            None
        }
    }
}

/// A decimal within `[0, max]` (or `(0, max]` when `positive`) with at most
/// `max_scale` decimals.
fn bounded(
    cx: &mut Cx,
    n: &Node,
    path: &str,
    positive: bool,
    max: u64,
    max_scale: u32,
) -> Option<Fx> {
    let d = as_decimal(cx, n, path)?;
    if d.is_sign_negative() && !d.is_zero() {
        cx.err(n.pos, path, "must not be negative");
        return None;
    }
    if positive && d.is_zero() {
        cx.err(n.pos, path, "must be greater than zero");
        return None;
    }
    if d > Decimal::from(max) {
        cx.err(n.pos, path, format!("must be at most {max}"));
        return None;
    }
    if d.scale() > max_scale {
        cx.err(n.pos, path, format!("at most {max_scale} decimal places"));
        return None;
    }
    Some(Fx::from_dec(d))
}

fn name_ok(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && !s.chars().any(char::is_control)
}

fn ident_ok(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'))
}

fn unit_of(cx: &mut Cx, n: &Node, path: &str) -> Option<Unit> {
    let s = as_str(cx, n, path)?;
    match Unit::new(s) {
        Ok(u) => Some(u),
        Err(e) => {
            cx.err(n.pos, path, e.to_string());
            None
        }
    }
}

/// Converts an offset date-time to ms since the epoch.
pub(crate) fn datetime_ms(d: &toml_edit::Datetime) -> Result<u64, String> {
    let (Some(date), Some(time), Some(offset)) = (d.date, d.time, d.offset) else {
        return Err(
            "a full date-time with an offset is required, e.g. 2025-01-01T00:00:00Z".into(),
        );
    };
    let off_min: i64 = match offset {
        toml_edit::Offset::Z => 0,
        toml_edit::Offset::Custom { minutes } => minutes as i64,
    };
    if date.month == 0
        || date.month > 12
        || date.day == 0
        || date.day as u32 > days_in_month(date.year as i64, date.month as u32)
    {
        return Err("invalid date".into());
    }
    let days = days_from_civil(date.year as i64, date.month as u32, date.day as u32);
    let ms = days as i128 * 86_400_000
        + time.hour as i128 * 3_600_000
        + time.minute as i128 * 60_000
        + time.second.min(59) as i128 * 1000
        + (time.nanosecond / 1_000_000) as i128
        - off_min as i128 * 60_000;
    u64::try_from(ms).map_err(|_| "date-time before 1970-01-01T00:00:00Z".to_string())
}

fn effective(cx: &mut Cx, o: &mut Obj, path: &str) -> Option<u64> {
    let a = o.get("effective_from");
    let b = o.get("effective_from_ms");
    match (a, b) {
        (Some(_), Some((n, p))) => {
            cx.err(
                n.pos,
                &p,
                "give either `effective_from` or `effective_from_ms`, not both",
            );
            None
        }
        (None, None) => {
            cx.err(
                o.pos,
                path,
                "missing field `effective_from` (or `effective_from_ms`)",
            );
            None
        }
        (None, Some((n, p))) => as_u64(cx, n, &p, 0, u64::MAX / 2),
        (Some((n, p)), None) => {
            let r = match &n.kind {
                Kind::Datetime(r) => r.clone(),
                Kind::Str(s) => match s.parse::<toml_edit::Datetime>() {
                    Ok(d) => datetime_ms(&d),
                    Err(_) => Err(format!(
                        "{:?} is not an RFC 3339 date-time",
                        truncate(s, 40)
                    )),
                },
                k => Err(format!("expected a date-time, found {}", k.type_name())),
            };
            match r {
                Ok(ms) => Some(ms),
                Err(m) => {
                    cx.err(n.pos, &p, m);
                    None
                }
            }
        }
    }
}

/// `"+HH:MM"`, `"-HH:MM"` or `"Z"` → minutes east of UTC.
fn utc_offset(s: &str) -> Option<i16> {
    if s == "Z" {
        return Some(0);
    }
    let (sign, rest) = match s.as_bytes().first()? {
        b'+' => (1, &s[1..]),
        b'-' => (-1, &s[1..]),
        _ => return None,
    };
    let m = hhmm(rest)?;
    (m <= 14 * 60).then_some(sign * m as i16)
}

/// `"HH:MM"` → minutes (00:00 ..= 24:00).
fn hhmm(s: &str) -> Option<u32> {
    let b = s.as_bytes();
    if b.len() != 5
        || b[2] != b':'
        || !b
            .iter()
            .enumerate()
            .all(|(i, c)| i == 2 || c.is_ascii_digit())
    {
        return None;
    }
    let h = (b[0] - b'0') as u32 * 10 + (b[1] - b'0') as u32;
    let m = (b[3] - b'0') as u32 * 10 + (b[4] - b'0') as u32;
    if m > 59 || h > 24 || (h == 24 && m != 0) {
        return None;
    }
    Some(h * 60 + m)
}

fn build(mut cx: Cx, root: &Node) -> Result<RateCard, LoadErrors> {
    let card = card(&mut cx, root);
    match card {
        Some(c) if cx.errors.is_empty() => Ok(c),
        _ => {
            if cx.errors.is_empty() {
                cx.err(root.pos, "", "invalid rate card");
            }
            Err(cx.into_errors())
        }
    }
}

fn card(cx: &mut Cx, root: &Node) -> Option<RateCard> {
    let mut o = Obj::new(cx, root, "")?;
    let id = o.req(cx, "card").and_then(|(n, p)| {
        let s = as_str(cx, n, &p)?;
        if !ident_ok(s, MAX_VALUE_LEN) {
            cx.err(n.pos, &p, "card id: 1..=64 characters of A-Z a-z 0-9 _ - .");
            return None;
        }
        Some(s.to_string())
    });
    let description = o.get("description").and_then(|(n, p)| {
        let s = as_str(cx, n, &p)?;
        if s.len() > 1024 {
            cx.err(n.pos, &p, "at most 1024 bytes");
        }
        Some(s.to_string())
    });
    let mut versions = Vec::new();
    if let Some((n, p)) = o.req(cx, "versions") {
        if let Some(arr) = as_array(cx, n, &p, MAX_VERSIONS) {
            if arr.is_empty() {
                cx.err(n.pos, &p, "at least one version is required");
            }
            for (i, vn) in arr.iter().enumerate() {
                let vp = format!("{p}[{i}]");
                if let Some(v) = version(cx, vn, &vp) {
                    if let Some(last) = versions.last() {
                        let last: &CardVersion = last;
                        if v.version <= last.version {
                            cx.err(
                                entry_pos(vn, "version"),
                                &format!("{vp}.version"),
                                "version numbers must increase",
                            );
                        } else if v.effective_from_ms <= last.effective_from_ms {
                            let key = if has_key(vn, "effective_from_ms") {
                                "effective_from_ms"
                            } else {
                                "effective_from"
                            };
                            cx.err(
                                entry_pos(vn, key),
                                &format!("{vp}.{key}"),
                                "effective times must increase from version to version",
                            );
                        }
                    }
                    versions.push(v);
                }
            }
        }
    }
    o.finish(cx);
    Some(RateCard {
        id: id?,
        description,
        versions,
    })
}

fn version(cx: &mut Cx, node: &Node, path: &str) -> Option<CardVersion> {
    let mut o = Obj::new(cx, node, path)?;
    let number = o
        .req(cx, "version")
        .and_then(|(n, p)| as_u64(cx, n, &p, 1, u32::MAX as u64))
        .map(|v| v as u32);
    let effective_from_ms = effective(cx, &mut o, path);
    let utc_offset_minutes = match o.get("utc_offset") {
        None => Some(0),
        Some((n, p)) => as_str(cx, n, &p).and_then(|s| {
            let r = utc_offset(s);
            if r.is_none() {
                cx.err(
                    n.pos,
                    &p,
                    "expected \"Z\" or \"+HH:MM\" / \"-HH:MM\" within ±14:00",
                );
            }
            r
        }),
    };
    let currency = o.req(cx, "currency").and_then(|(n, p)| unit_of(cx, n, &p));
    let charge_in = match o.get("charge_in") {
        None => currency,
        Some((n, p)) => unit_of(cx, n, &p),
    };
    let credit_node = o.get("credit_value");
    let mut credit_value = None;
    if let (Some(cur), Some(ch)) = (currency, charge_in) {
        match (&credit_node, cur == ch) {
            (Some((n, p)), false) => {
                credit_value = bounded(cx, n, p, true, 1_000_000, MAX_PRICE_SCALE);
            }
            (None, false) => cx.err(
                o.pos,
                path,
                format!("`credit_value` ({cur} per {ch}) is required when charge_in differs from currency"),
            ),
            (Some((n, p)), true) => {
                cx.err(n.pos, p, "`credit_value` only applies when charge_in is a credit unit");
            }
            (None, true) => {}
        }
    }
    let decimals = match o.get("decimals") {
        None => Some(6),
        Some((n, p)) => as_u64(cx, n, &p, 0, MAX_DECIMALS as u64).map(|d| d as u32),
    };
    let rounding = match o.get("rounding") {
        None => Some(Rounding::HalfUp),
        Some((n, p)) => as_str(cx, n, &p).and_then(|s| {
            let r = [
                Rounding::HalfUp,
                Rounding::HalfEven,
                Rounding::Up,
                Rounding::Down,
            ]
            .into_iter()
            .find(|r| r.name() == s);
            if r.is_none() {
                cx.err(n.pos, &p, "expected one of half_up, half_even, up, down");
            }
            r
        }),
    };
    let mut units: Vec<Unit> = Vec::new();
    if let Some((n, p)) = o.get("units") {
        if let Some(arr) = as_array(cx, n, &p, MAX_CUSTOM_UNITS) {
            for (i, un) in arr.iter().enumerate() {
                let up = format!("{p}[{i}]");
                if let Some(u) = unit_of(cx, un, &up) {
                    if units.contains(&u) {
                        cx.err(un.pos, &up, format!("unit {u} listed twice"));
                    }
                    units.push(u);
                }
            }
        }
    }
    let mut bands = Vec::new();
    if let Some((n, p)) = o.get("time_bands") {
        if let Some(arr) = as_array(cx, n, &p, MAX_BANDS) {
            for (i, bn) in arr.iter().enumerate() {
                let bp = format!("{p}[{i}]");
                if let Some(b) = band(cx, bn, &bp) {
                    if bands.iter().any(|x: &Band| x.name == b.name) {
                        cx.err(
                            bn.pos,
                            &format!("{bp}.name"),
                            format!("band {:?} defined twice", b.name),
                        );
                    }
                    bands.push(b);
                }
            }
        }
    }
    let bands = Bands::new(bands);
    let mut known: Vec<Unit> = Unit::BUILT_IN.to_vec();
    known.extend(units.iter().copied());
    // Money units are usable as usage units too (the `percentage` model).
    known.extend(currency);
    known.extend(charge_in);
    let mut services: Vec<Service> = Vec::new();
    if let Some((n, p)) = o.req(cx, "services") {
        if let Some(arr) = as_array(cx, n, &p, MAX_SERVICES) {
            if arr.is_empty() {
                cx.err(n.pos, &p, "at least one service is required");
            }
            for (i, sn) in arr.iter().enumerate() {
                let sp = format!("{p}[{i}]");
                if let Some(s) = service(cx, sn, &sp, &known, &bands) {
                    if services.iter().any(|x| x.id == s.id) {
                        cx.err(
                            sn.pos,
                            &format!("{sp}.id"),
                            format!("service id {} defined twice", s.id),
                        );
                    }
                    services.push(s);
                }
            }
        }
    }
    services.sort_by_key(|s| s.id);
    o.finish(cx);
    Some(CardVersion {
        version: number?,
        effective_from_ms: effective_from_ms?,
        utc_offset_minutes: utc_offset_minutes?,
        currency: currency?,
        charge_unit: charge_in?,
        credit_value,
        decimals: decimals?,
        rounding: rounding?,
        units,
        bands,
        services,
    })
}

fn band(cx: &mut Cx, node: &Node, path: &str) -> Option<Band> {
    let mut o = Obj::new(cx, node, path)?;
    let name = o.req(cx, "name").and_then(|(n, p)| {
        let s = as_str(cx, n, &p)?;
        if !ident_ok(s, MAX_NAME_LEN) {
            cx.err(
                n.pos,
                &p,
                "band name: 1..=32 characters of A-Z a-z 0-9 _ - .",
            );
            return None;
        }
        Some(s.to_string())
    });
    let mut days = 0u8;
    if let Some((n, p)) = o.req(cx, "days") {
        if let Some(arr) = as_array(cx, n, &p, 7) {
            if arr.is_empty() {
                cx.err(n.pos, &p, "at least one day is required");
            }
            for (i, dn) in arr.iter().enumerate() {
                let dp = format!("{p}[{i}]");
                if let Some(s) = as_str(cx, dn, &dp) {
                    match DAY_NAMES.iter().position(|d| *d == s) {
                        Some(d) if days & (1 << d) != 0 => cx.err(dn.pos, &dp, "day listed twice"),
                        Some(d) => days |= 1 << d,
                        None => cx.err(
                            dn.pos,
                            &dp,
                            "expected one of mon, tue, wed, thu, fri, sat, sun",
                        ),
                    }
                }
            }
        }
    }
    let mut time = |o: &mut Obj, key: &str| {
        o.req(cx, key).and_then(|(n, p)| {
            let s = as_str(cx, n, &p)?;
            let r = hhmm(s);
            if r.is_none() {
                cx.err(
                    n.pos,
                    &p,
                    "expected a local time \"HH:MM\" (00:00 to 24:00)",
                );
            }
            r
        })
    };
    let from = time(&mut o, "from");
    let to = time(&mut o, "to");
    o.finish(cx);
    let (from_min, to_min) = (from?, to?);
    // 24:00 as a start is the next day's 00:00; keep starts within the day.
    if from_min == 1440 {
        cx.err(
            entry_pos(node, "from"),
            &format!("{path}.from"),
            "a band cannot start at 24:00",
        );
        return None;
    }
    Some(Band {
        name: name?,
        days,
        from_min,
        to_min: to_min % 1440,
    })
}

fn service(cx: &mut Cx, node: &Node, path: &str, known: &[Unit], bands: &Bands) -> Option<Service> {
    let mut o = Obj::new(cx, node, path)?;
    let id = o
        .req(cx, "id")
        .and_then(|(n, p)| as_u64(cx, n, &p, 0, u32::MAX as u64))
        .map(|v| v as u32);
    let name = match o.get("name") {
        None => Some(String::new()),
        Some((n, p)) => as_str(cx, n, &p).and_then(|s| {
            if !name_ok(s, MAX_VALUE_LEN) {
                cx.err(n.pos, &p, "1..=64 bytes, no control characters");
                return None;
            }
            Some(s.to_string())
        }),
    };
    let mut by_unit: Vec<UnitRules> = Vec::new();
    // Canonical condition sets per unit, to reject ambiguous duplicates.
    let mut seen: HashSet<(Unit, Canon)> = HashSet::new();
    if let Some((n, p)) = o.req(cx, "rules") {
        if let Some(arr) = as_array(cx, n, &p, MAX_RULES) {
            if arr.is_empty() {
                cx.err(n.pos, &p, "at least one rule is required");
            }
            for (i, rn) in arr.iter().enumerate() {
                let rp = format!("{p}[{i}]");
                let Some((unit, rule, canon)) = rule(cx, rn, &rp, i as u16, known, bands) else {
                    continue;
                };
                if !seen.insert((unit, canon)) {
                    cx.err(
                        entry_pos(rn, "when"),
                        &format!("{rp}.when"),
                        format!("another rule for {unit} has exactly these conditions; the match would be ambiguous"),
                    );
                }
                match by_unit.iter_mut().find(|u| u.unit == unit) {
                    Some(u) => u.rules.push(rule),
                    None => by_unit.push(UnitRules {
                        unit,
                        rules: vec![rule],
                        uses_bands: false,
                    }),
                }
            }
        }
    }
    for u in &mut by_unit {
        // Stable: equally specific rules keep file order.
        u.rules.sort_by_key(|r| std::cmp::Reverse(r.conds.len()));
        u.uses_bands = u
            .rules
            .iter()
            .any(|r| r.conds.iter().any(|c| matches!(c, Cond::Band(_))));
    }
    o.finish(cx);
    Some(Service {
        id: id?,
        name: name?,
        by_unit,
    })
}

type Canon = Vec<(String, Vec<String>)>;

fn rule(
    cx: &mut Cx,
    node: &Node,
    path: &str,
    index: u16,
    known: &[Unit],
    bands: &Bands,
) -> Option<(Unit, Rule, Canon)> {
    let mut o = Obj::new(cx, node, path)?;
    let name = match o.get("name") {
        None => Some(None),
        Some((n, p)) => as_str(cx, n, &p).and_then(|s| {
            if !name_ok(s, MAX_VALUE_LEN) {
                cx.err(n.pos, &p, "1..=64 bytes, no control characters");
                return None;
            }
            Some(Some(s.to_string()))
        }),
    };
    let unit = o.req(cx, "unit").and_then(|(n, p)| {
        let u = unit_of(cx, n, &p)?;
        if !known.contains(&u) {
            cx.err(
                n.pos,
                &p,
                format!("unknown unit {u}: declare it in the version's `units` list"),
            );
            return None;
        }
        Some(u)
    });
    let mut conds = Vec::new();
    let mut canon: Canon = Vec::new();
    let mut when_ok = true;
    if let Some((n, p)) = o.get("when") {
        match Obj::new(cx, n, &p) {
            None => when_ok = false,
            Some(w) => {
                if w.entries.len() > MAX_DIMENSIONS {
                    cx.err(n.pos, &p, format!("at most {MAX_DIMENSIONS} conditions"));
                    when_ok = false;
                }
                for (key, kpos, vn) in w.entries {
                    let kp = w.field(key);
                    if !ident_ok(key, MAX_NAME_LEN) {
                        cx.err(
                            *kpos,
                            &kp,
                            "attribute names: 1..=32 characters of A-Z a-z 0-9 _ - .",
                        );
                        when_ok = false;
                        continue;
                    }
                    let values: Vec<&str> = match &vn.kind {
                        Kind::Str(s) => vec![s.as_str()],
                        Kind::Array(a) if !a.is_empty() && a.len() <= MAX_CONDITION_VALUES => {
                            let mut out = Vec::new();
                            for (i, x) in a.iter().enumerate() {
                                match as_str(cx, x, &format!("{kp}[{i}]")) {
                                    Some(s) => out.push(s),
                                    None => when_ok = false,
                                }
                            }
                            out
                        }
                        _ => {
                            cx.err(
                                vn.pos,
                                &kp,
                                format!("expected a string or a list of 1..={MAX_CONDITION_VALUES} strings"),
                            );
                            when_ok = false;
                            continue;
                        }
                    };
                    if let Some(bad) = values.iter().find(|v| !name_ok(v, MAX_VALUE_LEN)) {
                        cx.err(
                            vn.pos,
                            &kp,
                            format!(
                                "value {:?}: 1..=64 bytes, no control characters",
                                truncate(bad, 40)
                            ),
                        );
                        when_ok = false;
                        continue;
                    }
                    let mut sorted: Vec<String> = values.iter().map(|s| s.to_string()).collect();
                    sorted.sort();
                    sorted.dedup();
                    if key == "time_band" {
                        let mut bits = 0u32;
                        for v in &values {
                            match bands.index_of(v) {
                                Some(b) => bits |= 1 << b,
                                None => {
                                    cx.err(
                                        vn.pos,
                                        &kp,
                                        format!("unknown time band {:?}", truncate(v, 40)),
                                    );
                                    when_ok = false;
                                }
                            }
                        }
                        conds.push(Cond::Band(bits));
                    } else {
                        conds.push(Cond::Attr {
                            key: key.as_str().into(),
                            values: sorted.iter().map(|s| s.as_str().into()).collect(),
                        });
                    }
                    canon.push((key.clone(), sorted));
                }
            }
        }
    }
    canon.sort();
    let increment = match o.get("increment") {
        None => Some(None),
        Some((n, p)) => bounded(cx, n, &p, true, MAX_QUANTITY, MAX_QUANTITY_SCALE).map(Some),
    };
    let minimum = match o.get("minimum") {
        None => Some(None),
        Some((n, p)) => bounded(cx, n, &p, false, MAX_PRICE, MAX_PRICE_SCALE).map(Some),
    };
    let price = o.req(cx, "price").and_then(|(n, p)| price_model(cx, n, &p));
    let cost = match o.get("cost") {
        None => Some(None),
        Some((n, p)) => price_model(cx, n, &p).map(Some),
    };
    o.finish(cx);
    if !when_ok {
        return None;
    }
    Some((
        unit?,
        Rule {
            index,
            name: name?,
            conds,
            increment: increment?,
            minimum: minimum?,
            price: price?,
            cost: cost?,
        },
        canon,
    ))
}

fn price_model(cx: &mut Cx, node: &Node, path: &str) -> Option<PriceModel> {
    let mut o = Obj::new(cx, node, path)?;
    let model = o
        .req(cx, "model")
        .and_then(|(n, p)| Some((as_str(cx, n, &p)?, n.pos, p)));
    let price = |cx: &mut Cx, o: &mut Obj| {
        o.req(cx, "price")
            .and_then(|(n, p)| bounded(cx, n, &p, false, MAX_PRICE, MAX_PRICE_SCALE))
    };
    let per = |cx: &mut Cx, o: &mut Obj| match o.get("per") {
        None => Some(1),
        Some((n, p)) => as_u64(cx, n, &p, 1, MAX_PER),
    };
    let m = match model {
        None => None,
        Some((name, mpos, mp)) => match name {
            "per_unit" => {
                let per = per(cx, &mut o);
                let price = price(cx, &mut o);
                Some(PriceModel::PerUnit {
                    price: price?,
                    per: per?,
                })
            }
            "per_block" => {
                let block = o
                    .req(cx, "block")
                    .and_then(|(n, p)| bounded(cx, n, &p, true, MAX_QUANTITY, MAX_QUANTITY_SCALE));
                let price = price(cx, &mut o);
                Some(PriceModel::PerBlock {
                    block: block?,
                    price: price?,
                })
            }
            "graduated" | "volume" => {
                let per = per(cx, &mut o);
                let tiers = o.req(cx, "tiers").and_then(|(n, p)| tiers(cx, n, &p));
                let (tiers, per) = (tiers?, per?);
                Some(if name == "graduated" {
                    PriceModel::Graduated { tiers, per }
                } else {
                    PriceModel::Volume { tiers, per }
                })
            }
            "flat" => price(cx, &mut o).map(|fee| PriceModel::Flat { fee }),
            "percentage" => o
                .req(cx, "percent")
                .and_then(|(n, p)| bounded(cx, n, &p, false, 10_000, 6))
                .map(|percent| PriceModel::Percentage { percent }),
            other => {
                cx.err(
                    mpos,
                    &mp,
                    format!(
                        "unknown price model {:?}: expected per_unit, per_block, graduated, volume, flat or percentage",
                        truncate(other, 40)
                    ),
                );
                // Fields of an unknown model are not worth reporting too.
                o.used.iter_mut().for_each(|u| *u = true);
                None
            }
        },
    };
    o.finish(cx);
    m
}

fn tiers(cx: &mut Cx, node: &Node, path: &str) -> Option<Vec<Tier>> {
    let arr = as_array(cx, node, path, MAX_TIERS)?;
    if arr.is_empty() {
        cx.err(node.pos, path, "at least one tier is required");
        return None;
    }
    let mut out = Vec::new();
    let mut ok = true;
    let mut last_bound: Option<Fx> = None;
    for (i, tn) in arr.iter().enumerate() {
        let tp = format!("{path}[{i}]");
        let Some(mut o) = Obj::new(cx, tn, &tp) else {
            ok = false;
            continue;
        };
        let is_last = i + 1 == arr.len();
        let up_to = match o.get("up_to") {
            None if is_last => Some(None),
            None => {
                cx.err(
                    tn.pos,
                    &tp,
                    "missing field `up_to` (only the last tier is open-ended)",
                );
                None
            }
            Some((n, p)) if is_last => {
                cx.err(n.pos, &p, "the last tier must not have `up_to`: it prices everything above the previous bound");
                None
            }
            Some((n, p)) => {
                let b = bounded(
                    cx,
                    n,
                    &p,
                    true,
                    10u64.pow(MAX_PRIOR_DIGITS),
                    MAX_QUANTITY_SCALE,
                );
                if let (Some(b), Some(prev)) = (b, last_bound) {
                    if b.le(prev) {
                        cx.err(
                            n.pos,
                            &p,
                            "tiers overlap: `up_to` must increase from tier to tier",
                        );
                    }
                }
                if b.is_some() {
                    last_bound = b;
                }
                b.map(Some)
            }
        };
        let price = o
            .req(cx, "price")
            .and_then(|(n, p)| bounded(cx, n, &p, false, MAX_PRICE, MAX_PRICE_SCALE));
        o.finish(cx);
        match (up_to, price) {
            (Some(up_to), Some(price)) => out.push(Tier { up_to, price }),
            _ => ok = false,
        }
    }
    ok.then_some(out)
}
