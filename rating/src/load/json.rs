//! A small JSON parser producing [`Node`]s with positions.
//!
//! Why not serde_json: it loses source positions of fields (validation
//! errors must name the line) and reads numbers as binary floats (prices
//! must stay exact decimals). RFC 8259 grammar; duplicate keys are errors;
//! nesting is bounded.

use super::{Cx, Kind, Node, Pos};

const MAX_DEPTH: usize = 32;

/// Parses JSON; on a syntax error records it in `cx` and returns `None`.
pub(super) fn to_node(cx: &mut Cx, text: &str) -> Option<Node> {
    let mut p = Parser {
        b: text.as_bytes(),
        text,
        i: 0,
    };
    let r = p.ws().and_then(|_| p.value(cx, 0)).and_then(|n| {
        p.ws()?;
        if p.i < p.b.len() {
            return Err((p.i, "unexpected text after the JSON value".to_string()));
        }
        Ok(n)
    });
    match r {
        Ok(n) => Some(n),
        Err((at, msg)) => {
            let pos = cx.pos(at);
            cx.err(pos, "", format!("JSON syntax error: {msg}"));
            None
        }
    }
}

type PResult<T> = Result<T, (usize, String)>;

struct Parser<'t> {
    b: &'t [u8],
    text: &'t str,
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) -> PResult<()> {
        while let Some(c) = self.b.get(self.i) {
            if matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
                self.i += 1;
            } else {
                break;
            }
        }
        Ok(())
    }

    fn fail<T>(&self, msg: &str) -> PResult<T> {
        Err((self.i, msg.to_string()))
    }

    fn value(&mut self, cx: &Cx, depth: usize) -> PResult<Node> {
        if depth > MAX_DEPTH {
            return self.fail("nested too deeply");
        }
        let pos = cx.pos(self.i);
        let kind = match self.b.get(self.i) {
            None => return self.fail("unexpected end of input"),
            Some(b'{') => self.object(cx, depth)?,
            Some(b'[') => self.array(cx, depth)?,
            Some(b'"') => Kind::Str(self.string()?),
            Some(b't') => self.word("true", Kind::Bool)?,
            Some(b'f') => self.word("false", Kind::Bool)?,
            Some(b'n') => return self.fail("null is not allowed here: leave the field out"),
            Some(c) if *c == b'-' || c.is_ascii_digit() => Kind::Num(self.number()?),
            Some(_) => return self.fail("expected a value"),
        };
        Ok(Node { pos, kind })
    }

    fn word(&mut self, w: &str, k: Kind) -> PResult<Kind> {
        if self.b[self.i..].starts_with(w.as_bytes()) {
            self.i += w.len();
            Ok(k)
        } else {
            self.fail("expected a value")
        }
    }

    fn object(&mut self, cx: &Cx, depth: usize) -> PResult<Kind> {
        self.i += 1;
        let mut entries: Vec<(String, Pos, Node)> = Vec::new();
        self.ws()?;
        if self.b.get(self.i) == Some(&b'}') {
            self.i += 1;
            return Ok(Kind::Table(entries));
        }
        loop {
            self.ws()?;
            if self.b.get(self.i) != Some(&b'"') {
                return self.fail("expected a quoted key");
            }
            let kat = self.i;
            let kpos = cx.pos(kat);
            let key = self.string()?;
            if entries.iter().any(|(k, _, _)| *k == key) {
                return Err((kat, format!("duplicate key {key:?}")));
            }
            self.ws()?;
            if self.b.get(self.i) != Some(&b':') {
                return self.fail("expected ':'");
            }
            self.i += 1;
            self.ws()?;
            let v = self.value(cx, depth + 1)?;
            entries.push((key, kpos, v));
            self.ws()?;
            match self.b.get(self.i) {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(Kind::Table(entries));
                }
                _ => return self.fail("expected ',' or '}'"),
            }
        }
    }

    fn array(&mut self, cx: &Cx, depth: usize) -> PResult<Kind> {
        self.i += 1;
        let mut items = Vec::new();
        self.ws()?;
        if self.b.get(self.i) == Some(&b']') {
            self.i += 1;
            return Ok(Kind::Array(items));
        }
        loop {
            self.ws()?;
            items.push(self.value(cx, depth + 1)?);
            self.ws()?;
            match self.b.get(self.i) {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(Kind::Array(items));
                }
                _ => return self.fail("expected ',' or ']'"),
            }
        }
    }

    fn number(&mut self) -> PResult<String> {
        let start = self.i;
        let digits = |p: &mut Self| {
            let s = p.i;
            while p.b.get(p.i).is_some_and(u8::is_ascii_digit) {
                p.i += 1;
            }
            p.i - s
        };
        if self.b.get(self.i) == Some(&b'-') {
            self.i += 1;
        }
        let int_start = self.i;
        let n = digits(self);
        if n == 0 || (n > 1 && self.b[int_start] == b'0') {
            return self.fail("invalid number");
        }
        if self.b.get(self.i) == Some(&b'.') {
            self.i += 1;
            if digits(self) == 0 {
                return self.fail("invalid number");
            }
        }
        if matches!(self.b.get(self.i), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.b.get(self.i), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if digits(self) == 0 {
                return self.fail("invalid number");
            }
        }
        Ok(self.text[start..self.i].to_string())
    }

    fn hex4(&mut self) -> PResult<u32> {
        let h = self
            .text
            .get(self.i..self.i + 4)
            .and_then(|s| u32::from_str_radix(s, 16).ok());
        match h {
            Some(v) => {
                self.i += 4;
                Ok(v)
            }
            None => self.fail("invalid \\u escape"),
        }
    }

    fn string(&mut self) -> PResult<String> {
        self.i += 1;
        let mut out = String::new();
        loop {
            let start = self.i;
            while let Some(&c) = self.b.get(self.i) {
                if c == b'"' || c == b'\\' || c < 0x20 {
                    break;
                }
                self.i += 1;
            }
            // Splits happen only at ASCII bytes, so the slice is valid UTF-8.
            out.push_str(&self.text[start..self.i]);
            match self.b.get(self.i) {
                None => return self.fail("unterminated string"),
                Some(b'"') => {
                    self.i += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.i += 1;
                    let e = self.b.get(self.i).copied();
                    self.i += 1;
                    match e {
                        Some(b'"') => out.push('"'),
                        Some(b'\\') => out.push('\\'),
                        Some(b'/') => out.push('/'),
                        Some(b'b') => out.push('\u{8}'),
                        Some(b'f') => out.push('\u{c}'),
                        Some(b'n') => out.push('\n'),
                        Some(b'r') => out.push('\r'),
                        Some(b't') => out.push('\t'),
                        Some(b'u') => {
                            let hi = self.hex4()?;
                            let cp = if (0xD800..0xDC00).contains(&hi) {
                                if !self.b[self.i..].starts_with(b"\\u") {
                                    return self.fail("unpaired surrogate");
                                }
                                self.i += 2;
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return self.fail("unpaired surrogate");
                                }
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else {
                                hi
                            };
                            match char::from_u32(cp) {
                                Some(c) => out.push(c),
                                None => return self.fail("invalid \\u escape"),
                            }
                        }
                        _ => {
                            self.i -= 1;
                            return self.fail("invalid escape");
                        }
                    }
                }
                Some(_) => return self.fail("control character in string"),
            }
        }
    }
}
