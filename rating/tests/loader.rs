//! Loading: invalid cards are rejected with file, line, column and field.

mod common;

use common::{d, u, T0};
use reckon_rating::{parse_json, parse_toml, LoadError, Usage};

const HEAD: &str = r#"card = "t"
[[versions]]
version = 1
effective_from = 2025-01-01T00:00:00Z
currency = "USD"
[[versions.services]]
id = 1
[[versions.services.rules]]
unit = "tokens_out"
"#;
// HEAD is 9 lines; the rule's further fields start on line 10.

fn errs(text: &str) -> Vec<LoadError> {
    match parse_toml("bad.toml", text) {
        Ok(_) => panic!("card unexpectedly loaded"),
        Err(e) => e.errors,
    }
}

fn one(text: &str) -> LoadError {
    let e = errs(text);
    assert_eq!(e.len(), 1, "{e:#?}");
    e.into_iter().next().unwrap()
}

#[test]
fn overlapping_tiers() {
    let e = one(&format!(
        "{HEAD}price = {{ model = \"graduated\", tiers = [\n  {{ up_to = 100, price = \"1\" }},\n  {{ up_to = 100, price = \"0.5\" }},\n  {{ price = \"0.1\" }},\n] }}\n"
    ));
    assert_eq!(e.file, "bad.toml");
    assert_eq!((e.line, e.column), (12, 13));
    assert_eq!(
        e.field,
        "versions[0].services[0].rules[0].price.tiers[1].up_to"
    );
    assert!(e.message.contains("tiers overlap"), "{}", e.message);
    assert_eq!(
        e.to_string(),
        format!("bad.toml:12:13: {}: {}", e.field, e.message)
    );
}

#[test]
fn tier_bounds() {
    let e = one(&format!(
        "{HEAD}price = {{ model = \"volume\", tiers = [\n  {{ up_to = 100, price = \"1\" }},\n  {{ price = \"0.5\" }},\n  {{ price = \"0.1\" }},\n] }}\n"
    ));
    assert_eq!(e.field, "versions[0].services[0].rules[0].price.tiers[1]");
    assert!(e.message.contains("missing field `up_to`"));
    let e = one(&format!(
        "{HEAD}price = {{ model = \"volume\", tiers = [ {{ up_to = 100, price = \"1\" }} ] }}\n"
    ));
    assert_eq!(
        e.field,
        "versions[0].services[0].rules[0].price.tiers[0].up_to"
    );
    assert!(e.message.contains("last tier"));
    let many: Vec<String> = (1..=17)
        .map(|i| format!("{{ up_to = {i}, price = \"1\" }}"))
        .collect();
    let e = one(&format!(
        "{HEAD}price = {{ model = \"graduated\", tiers = [{}, {{ price = \"1\" }}] }}\n",
        many.join(", ")
    ));
    assert!(e.message.contains("at most 16"), "{}", e.message);
}

#[test]
fn negative_price_and_bad_numbers() {
    let e = one(&format!(
        "{HEAD}price = {{ model = \"per_unit\", price = \"-0.5\" }}\n"
    ));
    assert_eq!(
        (e.line, e.field.as_str()),
        (10, "versions[0].services[0].rules[0].price.price")
    );
    assert_eq!(e.message, "must not be negative");
    let e = one(&format!(
        "{HEAD}price = {{ model = \"per_unit\", price = -1 }}\n"
    ));
    assert_eq!(e.message, "must not be negative");
    let e = one(&format!(
        "{HEAD}price = {{ model = \"per_unit\", price = \"abc\" }}\n"
    ));
    assert!(e.message.contains("not a decimal"));
    let e = one(&format!(
        "{HEAD}price = {{ model = \"per_unit\", price = nan }}\n"
    ));
    assert!(e.message.contains("not a decimal"));
    let e = one(&format!(
        "{HEAD}price = {{ model = \"per_unit\", price = \"0.0000000000001\" }}\n"
    ));
    assert!(e.message.contains("decimal places"));
    let e = one(&format!(
        "{HEAD}price = {{ model = \"per_unit\", price = \"1\", per = 0 }}\n"
    ));
    assert_eq!(e.field, "versions[0].services[0].rules[0].price.per");
    let e = one(&format!(
        "{HEAD}increment = 0\nprice = {{ model = \"per_unit\", price = \"1\" }}\n"
    ));
    assert_eq!(
        (e.line, e.message.as_str()),
        (10, "must be greater than zero")
    );
}

#[test]
fn numbers_are_read_exactly_from_the_text() {
    // 0.1 and 1e-3 as TOML floats, 1_000 with separators: all exact.
    let c = parse_toml(
        "ok.toml",
        &format!(
            "{HEAD}increment = 1_000\nprice = {{ model = \"per_unit\", price = 0.1, per = 1_000 }}\ncost = {{ model = \"per_unit\", price = 1e-3 }}\n"
        ),
    )
    .unwrap();
    let r = c.rate(&Usage::new(1, u("tokens_out"), d("3"), T0)).unwrap();
    // billed 1000 × 0.1 / 1000 = 0.1; cost 3 × 0.001 = 0.003.
    assert_eq!((r.price, r.cost), (d("0.1"), d("0.003")));
}

#[test]
fn unknown_unit_field_model_and_band() {
    let text = HEAD.replace("tokens_out", "frobs");
    let e = one(&format!(
        "{text}price = {{ model = \"per_unit\", price = \"1\" }}\n"
    ));
    assert_eq!((e.line, e.column), (9, 8));
    assert_eq!(e.field, "versions[0].services[0].rules[0].unit");
    assert!(e.message.contains("unknown unit frobs"));

    // The typo is unknown and `price` is missing; two errors.
    let all = errs(&format!(
        "{HEAD}prcie = {{ model = \"per_unit\", price = \"1\" }}\n"
    ));
    assert_eq!(all.len(), 2, "{all:#?}");
    assert!(all.iter().any(|e| e.field.ends_with("rules[0].prcie")
        && e.message == "unknown field"
        && e.line == 10));
    assert!(all.iter().any(|e| e.message == "missing field `price`"));

    let e = one(&format!(
        "{HEAD}price = {{ model = \"tiered\", price = \"1\" }}\n"
    ));
    assert!(e.message.contains("unknown price model"));
    assert_eq!(e.field, "versions[0].services[0].rules[0].price.model");

    let e = one(&format!("{HEAD}when = {{ time_band = \"peak\" }}\nprice = {{ model = \"per_unit\", price = \"1\" }}\n"));
    assert!(e.message.contains("unknown time band"));
    assert_eq!(e.field, "versions[0].services[0].rules[0].when.time_band");

    let e = one(&format!(
        "{HEAD}when = {{ model = [] }}\nprice = {{ model = \"per_unit\", price = \"1\" }}\n"
    ));
    assert!(e.message.contains("list of 1..="));
}

#[test]
fn version_level_errors() {
    // Local date-time without an offset.
    let text = HEAD.replace("2025-01-01T00:00:00Z", "2025-01-01T00:00:00");
    let e = one(&format!(
        "{text}price = {{ model = \"per_unit\", price = \"1\" }}\n"
    ));
    assert_eq!(
        (e.line, e.field.as_str()),
        (4, "versions[0].effective_from")
    );
    assert!(e.message.contains("offset"));
    // Credits without a value.
    let text = HEAD.replace(
        "currency = \"USD\"",
        "currency = \"USD\"\ncharge_in = \"credits\"",
    );
    let e = one(&format!(
        "{text}price = {{ model = \"per_unit\", price = \"1\" }}\n"
    ));
    assert!(e.message.contains("credit_value"));
    // Bad offset and rounding.
    let text = HEAD.replace(
        "currency = \"USD\"",
        "currency = \"USD\"\nutc_offset = \"+15:00\"\nrounding = \"bankers\"",
    );
    let all = errs(&format!(
        "{text}price = {{ model = \"per_unit\", price = \"1\" }}\n"
    ));
    assert_eq!(all.len(), 2);
    assert_eq!(
        (all[0].line, all[0].field.as_str()),
        (6, "versions[0].utc_offset")
    );
    assert_eq!(
        (all[1].line, all[1].field.as_str()),
        (7, "versions[0].rounding")
    );
}

#[test]
fn versions_must_increase() {
    let v = |n: u32, day: u32| {
        format!(
            "[[versions]]\nversion = {n}\neffective_from = 2025-01-{day:02}T00:00:00Z\ncurrency = \"USD\"\n[[versions.services]]\nid = 1\n[[versions.services.rules]]\nunit = \"requests\"\nprice = {{ model = \"per_unit\", price = \"1\" }}\n"
        )
    };
    let text = format!("card = \"t\"\n{}{}", v(2, 5), v(3, 5));
    let e = one(&text);
    assert_eq!(
        (e.line, e.field.as_str()),
        (13, "versions[1].effective_from")
    );
    let text = format!("card = \"t\"\n{}{}", v(2, 5), v(2, 6));
    let e = one(&text);
    assert_eq!((e.line, e.field.as_str()), (12, "versions[1].version"));
}

#[test]
fn duplicate_service_and_missing_pieces() {
    let text = "card = \"t\"\n[[versions]]\nversion = 1\neffective_from_ms = 0\ncurrency = \"USD\"\n[[versions.services]]\nid = 1\nrules = []\n[[versions.services]]\nid = 1\n[[versions.services.rules]]\nunit = \"requests\"\nprice = { model = \"flat\", price = \"1\" }\n";
    let all = errs(text);
    assert_eq!(all.len(), 2, "{all:#?}");
    assert_eq!(
        (all[0].line, all[0].field.as_str()),
        (8, "versions[0].services[0].rules")
    );
    assert_eq!(all[1].field, "versions[0].services[1].id");
    let all = errs("card = \"bad id!\"\nversions = []\n");
    assert_eq!(all.len(), 2);
    assert_eq!((all[0].line, all[0].field.as_str()), (1, "card"));
    assert_eq!((all[1].line, all[1].field.as_str()), (2, "versions"));
}

#[test]
fn toml_syntax_errors_have_positions() {
    let e = one("card = \"t\"\n[[versions]]\nversion = = 1\n");
    assert_eq!(e.line, 3);
    assert_eq!(e.field, "");
    assert!(e.message.starts_with("TOML syntax error"), "{}", e.message);
}

#[test]
fn json_cards_and_errors() {
    let good = r#"{
  "card": "j",
  "versions": [
    {
      "version": 1,
      "effective_from_ms": 1735689600000,
      "currency": "USD",
      "services": [
        {"id": 1, "rules": [
          {"unit": "tokens_out", "price": {"model": "per_unit", "price": 0.60, "per": 1000}}
        ]}
      ]
    }
  ]
}"#;
    let c = parse_json("good.json", good).unwrap();
    let r = c
        .rate(&Usage::new(1, u("tokens_out"), d("1213"), T0))
        .unwrap();
    assert_eq!(r.price, d("0.7278"));

    let bad = good.replace("0.60", "-0.60");
    let e = match parse_json("bad.json", &bad) {
        Err(e) => e.errors,
        Ok(_) => panic!("loaded"),
    };
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].file, "bad.json");
    assert_eq!((e[0].line, e[0].column), (10, 74));
    assert_eq!(e[0].field, "versions[0].services[0].rules[0].price.price");

    let e = parse_json("s.json", "{\n  \"card\": \"j\",\n  \"versions\": [1,]\n}").unwrap_err();
    assert_eq!((e.errors[0].line, e.errors[0].column), (3, 18));
    assert!(e.errors[0].message.starts_with("JSON syntax error"));
    let e = parse_json("s.json", "{\"card\": \"j\", \"card\": \"k\"}").unwrap_err();
    assert!(e.errors[0].message.contains("duplicate key"));
    let deep = "[".repeat(100);
    let e = parse_json("deep.json", &deep).unwrap_err();
    assert!(e.errors[0].message.contains("nested too deeply"));
    let e = parse_json("s.json", "{\"card\": \"j\\u00e9\"}").unwrap_err();
    // The escaped é makes the id invalid; the error points at the value.
    assert!(
        e.errors.iter().any(|e| e.field == "card" && e.column == 10),
        "{e}"
    );
}

#[test]
fn oversized_input_is_refused() {
    let big = "#".repeat(5 << 20);
    let e = parse_toml("big.toml", &big).unwrap_err();
    assert!(e.errors[0].message.contains("4 MiB"));
}
