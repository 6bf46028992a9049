//! TOML text → [`Node`] tree, via `toml_edit`'s span-preserving document.

use toml_edit::{ImDocument, InlineTable, Item, Table, Value};

use super::{datetime_ms, Cx, Kind, Node, Pos};

/// Parses TOML; on a syntax error records it in `cx` and returns `None`.
pub(super) fn to_node(cx: &mut Cx, text: &str) -> Option<Node> {
    match ImDocument::parse(text) {
        Ok(doc) => Some(table(cx, text, doc.as_table(), Pos::START)),
        Err(e) => {
            let pos = e.span().map_or(Pos::START, |s| cx.pos(s.start));
            let msg = e.message().trim().to_string();
            cx.err(pos, "", format!("TOML syntax error: {msg}"));
            None
        }
    }
}

fn pos_of(cx: &Cx, span: Option<std::ops::Range<usize>>, fallback: Pos) -> Pos {
    span.map_or(fallback, |s| cx.pos(s.start))
}

fn table(cx: &Cx, text: &str, t: &Table, fallback: Pos) -> Node {
    let pos = pos_of(cx, t.span(), fallback);
    let mut entries = Vec::new();
    for (k, item) in t.iter() {
        let kpos = pos_of(cx, t.key(k).and_then(|k| k.span()), pos);
        if let Some(n) = item_node(cx, text, item, kpos) {
            entries.push((k.to_string(), kpos, n));
        }
    }
    // An implicit table ([a.b] defines `a` without a header) has no span:
    // point at its first key instead.
    let pos = if t.span().is_none() {
        entries.first().map_or(pos, |e| e.1)
    } else {
        pos
    };
    Node {
        pos,
        kind: Kind::Table(entries),
    }
}

fn inline_table(cx: &Cx, text: &str, t: &InlineTable, fallback: Pos) -> Node {
    let pos = pos_of(cx, t.span(), fallback);
    let mut entries = Vec::new();
    for (k, v) in t.iter() {
        let kpos = pos_of(cx, t.key(k).and_then(|k| k.span()), pos);
        entries.push((k.to_string(), kpos, value(cx, text, v, kpos)));
    }
    Node {
        pos,
        kind: Kind::Table(entries),
    }
}

fn item_node(cx: &Cx, text: &str, item: &Item, fallback: Pos) -> Option<Node> {
    match item {
        Item::None => None,
        Item::Value(v) => Some(value(cx, text, v, fallback)),
        Item::Table(t) => Some(table(cx, text, t, fallback)),
        Item::ArrayOfTables(a) => {
            let pos = pos_of(cx, a.span(), fallback);
            let items = a.iter().map(|t| table(cx, text, t, pos)).collect();
            Some(Node {
                pos,
                kind: Kind::Array(items),
            })
        }
    }
}

fn value(cx: &Cx, text: &str, v: &Value, fallback: Pos) -> Node {
    let span = v.span();
    let pos = pos_of(cx, span.clone(), fallback);
    let kind = match v {
        Value::String(s) => Kind::Str(s.value().clone()),
        Value::Integer(i) => Kind::Num(i.value().to_string()),
        // The source text keeps every digit a binary float would lose.
        Value::Float(f) => match span.and_then(|s| text.get(s)) {
            Some(raw) => Kind::Num(raw.trim().to_string()),
            None => Kind::Num(f.value().to_string()),
        },
        Value::Boolean(_) => Kind::Bool,
        Value::Datetime(d) => Kind::Datetime(datetime_ms(d.value())),
        Value::Array(a) => Kind::Array(a.iter().map(|x| value(cx, text, x, pos)).collect()),
        Value::InlineTable(t) => return inline_table(cx, text, t, fallback),
    };
    Node { pos, kind }
}
