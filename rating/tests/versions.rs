//! Versions and effective dates: switching, scheduling, history, the book.

mod common;

use common::{card, d, ms, u};
use reckon_rating::{Applied, RateBook, RateCard, RatingError, Usage};

/// A card with `n` versions; version k (1-based) takes effect on the k-th of
/// January 2025 at 00:00 UTC and charges k per request.
fn card_versions(id: &str, versions: &[u32]) -> RateCard {
    let mut s = format!("card = \"{id}\"\n");
    for &k in versions {
        s.push_str(&format!(
            r#"
[[versions]]
version = {k}
effective_from = 2025-01-{k:02}T00:00:00Z
currency = "USD"
[[versions.services]]
id = 1
[[versions.services.rules]]
unit = "requests"
price = {{ model = "per_unit", price = "{k}" }}
"#
        ));
    }
    card(&s)
}

fn price_at(book: &RateBook, id: &str, at: u64) -> Result<(String, u32), RatingError> {
    book.rate(id, &Usage::new(1, u("requests"), d("1"), at))
        .map(|r| (r.price.to_string(), r.version))
}

#[test]
fn usage_is_priced_by_the_version_in_force_at_its_time() {
    let mut book = RateBook::new();
    book.apply(card_versions("c", &[1, 2, 3]), 0).unwrap();
    // Before the first version: nothing is in force.
    assert!(matches!(
        price_at(&book, "c", ms(2024, 12, 31, 23, 59)),
        Err(RatingError::NotInForce { .. })
    ));
    assert_eq!(
        price_at(&book, "c", ms(2025, 1, 1, 0, 0)).unwrap(),
        ("1".into(), 1)
    );
    // One ms before the switch, then exactly at it.
    assert_eq!(
        price_at(&book, "c", ms(2025, 1, 2, 0, 0) - 1).unwrap(),
        ("1".into(), 1)
    );
    assert_eq!(
        price_at(&book, "c", ms(2025, 1, 2, 0, 0)).unwrap(),
        ("2".into(), 2)
    );
    assert_eq!(
        price_at(&book, "c", ms(2030, 1, 1, 0, 0)).unwrap(),
        ("3".into(), 3)
    );
    // History is kept: old usage still prices with the old version.
    assert_eq!(
        price_at(&book, "c", ms(2025, 1, 1, 12, 0)).unwrap(),
        ("1".into(), 1)
    );
    assert!(matches!(
        price_at(&book, "nope", 0),
        Err(RatingError::UnknownCard(_))
    ));
    let c = book.card("c").unwrap();
    assert_eq!(c.versions().len(), 3);
    assert_eq!(c.version_at(ms(2025, 1, 2, 5, 0)).unwrap().version(), 2);
}

#[test]
fn a_future_version_is_scheduled_without_restart() {
    let mut book = RateBook::new();
    book.apply(card_versions("c", &[1]), 0).unwrap();
    let now = ms(2025, 1, 2, 12, 0);
    // Add version 5, effective 2025-01-05, while it is 2025-01-02.
    let v5 = card_versions("c", &[5]).into_versions().remove(0);
    book.add_version("c", v5, now).unwrap();
    // Still version 1 until the effective time; version 5 from then on.
    assert_eq!(price_at(&book, "c", now).unwrap(), ("1".into(), 1));
    assert_eq!(
        price_at(&book, "c", ms(2025, 1, 5, 0, 0) - 1).unwrap(),
        ("1".into(), 1)
    );
    assert_eq!(
        price_at(&book, "c", ms(2025, 1, 5, 0, 0)).unwrap(),
        ("5".into(), 5)
    );
    assert_eq!(
        book.next_change("c", &Usage::new(1, u("requests"), d("1"), now))
            .unwrap(),
        Some(ms(2025, 1, 5, 0, 0))
    );
}

#[test]
fn versions_must_increase_and_may_not_rewrite_the_past() {
    let mut book = RateBook::new();
    book.apply(card_versions("c", &[2]), 0).unwrap();
    let now = ms(2025, 1, 3, 0, 0);
    // Same or lower number, or earlier effective time: refused.
    let v2 = card_versions("c", &[2]).into_versions().remove(0);
    assert!(matches!(
        book.add_version("c", v2, 0),
        Err(RatingError::VersionOrder {
            version: 2,
            last: 2,
            ..
        })
    ));
    let v1 = card_versions("c", &[1]).into_versions().remove(0);
    assert!(matches!(
        book.add_version("c", v1, 0),
        Err(RatingError::VersionOrder { .. })
    ));
    // Effective before now: refused (it would re-price rated usage).
    let v3 = card_versions("c", &[3]).into_versions().remove(0);
    let e = book
        .add_version("c", v3.clone(), ms(2025, 1, 4, 0, 0))
        .unwrap_err();
    assert!(
        matches!(e, RatingError::EffectiveInPast { version: 3, .. }),
        "{e}"
    );
    // Effective exactly now is fine.
    book.add_version("c", v3, now).unwrap();
    assert!(matches!(
        book.add_version("x", card_versions("x", &[1]).into_versions().remove(0), 0),
        Err(RatingError::UnknownCard(_))
    ));
}

#[test]
fn apply_merges_a_card_file_all_or_nothing() {
    let mut book = RateBook::new();
    assert_eq!(
        book.apply(card_versions("c", &[1, 2]), 0).unwrap(),
        Applied {
            new_card: true,
            added: 2
        }
    );
    // Re-applying the same file changes nothing.
    assert_eq!(
        book.apply(card_versions("c", &[1, 2]), ms(2025, 6, 1, 0, 0))
            .unwrap(),
        Applied {
            new_card: false,
            added: 0
        }
    );
    // The file with a new version appended adds just that version.
    let now = ms(2025, 1, 3, 0, 0);
    assert_eq!(
        book.apply(card_versions("c", &[1, 2, 4]), now).unwrap(),
        Applied {
            new_card: false,
            added: 1
        }
    );
    // A changed existing version is a conflict (versions are immutable) and
    // nothing from that file is applied.
    let text_changed = r#"
card = "c"
[[versions]]
version = 1
effective_from = 2025-01-01T00:00:00Z
currency = "USD"
[[versions.services]]
id = 1
[[versions.services.rules]]
unit = "requests"
price = { model = "per_unit", price = "1.5" }
[[versions]]
version = 9
effective_from = 2025-01-09T00:00:00Z
currency = "USD"
[[versions.services]]
id = 1
[[versions.services.rules]]
unit = "requests"
price = { model = "per_unit", price = "9" }
"#;
    let e = book.apply(card(text_changed), now).unwrap_err();
    assert!(
        matches!(e, RatingError::VersionConflict { version: 1, .. }),
        "{e}"
    );
    assert_eq!(book.card("c").unwrap().versions().len(), 3);
    // A new version in the past of `now` is refused, also all or nothing.
    let e = book
        .apply(card_versions("c", &[1, 2, 4, 5, 6]), ms(2025, 1, 5, 12, 0))
        .unwrap_err();
    assert!(
        matches!(e, RatingError::EffectiveInPast { version: 5, .. }),
        "{e}"
    );
    assert_eq!(book.card("c").unwrap().versions().len(), 3);
    assert_eq!(book.cards().count(), 1);
}
