//! Power loss in the snapshot and history stores: their last write groups
//! cut at every byte. A cut checkpoint (or base, or history group) is
//! dropped whole, what came before it loads exactly, and the store opens
//! and takes the next write.

use reckon_balances::snapstore::{load, read_history, HistoryStore, SnapStore, SnapshotWrite};
use reckon_balances::wal;
use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    v.sort();
    v
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for seg in segments(from) {
        fs::copy(&seg, to.join(seg.file_name().unwrap())).unwrap();
    }
}

/// The last segment's name and length.
fn last_segment(dir: &Path) -> (PathBuf, u64) {
    let last = segments(dir).pop().expect("a segment");
    let len = fs::metadata(&last).unwrap().len();
    (last, len)
}

/// A copy of `template` whose last segment is cut to `len` bytes.
fn cut_copy(template: &Path, segment: &Path, len: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(template, dir.path());
    OpenOptions::new()
        .write(true)
        .open(dir.path().join(segment.file_name().unwrap()))
        .unwrap()
        .set_len(len)
        .unwrap();
    dir
}

fn put(k: &str, v: &str) -> SnapshotWrite {
    (k.as_bytes().to_vec(), Some(v.as_bytes().to_vec()))
}

fn delete(k: &str) -> SnapshotWrite {
    (k.as_bytes().to_vec(), None)
}

type State = (u64, BTreeMap<Vec<u8>, Vec<u8>>);

fn loaded(dir: &Path) -> State {
    let l = load(dir).unwrap_or_else(|e| panic!("load: {e}"));
    (l.lsn, l.pairs)
}

/// Cuts the last segment of `template` at every byte from `from` to its
/// end: the load is `before` short of the end and `after` at it; the store
/// then opens, takes one more checkpoint and loads it.
fn cut_everywhere(template: &Path, from: u64, before: &State, after: &State) {
    let (segment, len) = last_segment(template);
    assert!(from < len);
    for cut in from..=len {
        let dir = cut_copy(template, &segment, cut);
        let want = if cut == len { after } else { before };
        assert_eq!(&loaded(dir.path()), want, "cut at {cut} of {len}");
        let (mut store, opened) =
            SnapStore::open(dir.path()).unwrap_or_else(|e| panic!("open, cut at {cut}: {e}"));
        assert_eq!(&(opened.lsn, opened.pairs), want, "open, cut at {cut}");
        store
            .write_checkpoint(want.0 + 100, vec![put("z", "after restart")])
            .unwrap();
        drop(store);
        let (lsn, pairs) = loaded(dir.path());
        let mut expected = want.1.clone();
        expected.insert(b"z".to_vec(), b"after restart".to_vec());
        assert_eq!((lsn, pairs), (want.0 + 100, expected), "cut at {cut}");
    }
}

#[test]
fn a_checkpoint_cut_at_any_byte_loads_the_one_before_it() {
    let template = tempfile::tempdir().unwrap();
    let (mut store, _) = SnapStore::open(template.path()).unwrap();
    store
        .write_checkpoint(10, vec![put("a", "1"), put("b", "2"), put("c", "3")])
        .unwrap();
    let first = loaded(template.path());
    let (_, first_end) = last_segment(template.path());
    store
        .write_checkpoint(20, vec![put("a", "11"), delete("b"), put("d", "4")])
        .unwrap();
    drop(store);
    let second = loaded(template.path());
    assert_eq!(first.0, 10);
    assert_eq!(second.0, 20);
    assert_ne!(first.1, second.1);
    // Cuts inside the first checkpoint load nothing; inside the second,
    // the first.
    let (segment, _) = last_segment(template.path());
    for cut in 0..first_end {
        let dir = cut_copy(template.path(), &segment, cut);
        assert_eq!(loaded(dir.path()), (0, BTreeMap::new()), "cut at {cut}");
    }
    cut_everywhere(template.path(), first_end, &first, &second);
}

#[test]
fn a_base_cut_at_any_byte_loads_the_state_it_compacts() {
    let template = tempfile::tempdir().unwrap();
    let (mut store, _) = SnapStore::open(template.path()).unwrap();
    store.set_compaction_floor(500);
    // Overwrite the same keys until the log is past the floor: the
    // checkpoint that crosses it writes a base after its commit (the log
    // then holds just the base).
    let mut lsn = 0;
    let (checkpoint_start, before) = loop {
        lsn += 10;
        assert!(lsn < 10_000, "no base written");
        let len_before = segments(template.path())
            .pop()
            .map_or(0, |p| fs::metadata(p).unwrap().len());
        let state_before = loaded(template.path());
        let grown_before = store.log_bytes();
        store
            .write_checkpoint(lsn, vec![put("k", &format!("value {lsn}")), put("s", "x")])
            .unwrap();
        if store.log_bytes() < grown_before {
            break (len_before, state_before);
        }
    };
    drop(store);
    assert_eq!(segments(template.path()).len(), 1);
    let after = loaded(template.path());
    assert_eq!(after.0, lsn);
    // Cut in the checkpoint: the state before it. Once its commit is whole,
    // any cut of the base after it loads the same state.
    let (segment, len) = last_segment(template.path());
    let mut committed_at = None;
    for cut in checkpoint_start..=len {
        let dir = cut_copy(template.path(), &segment, cut);
        let got = loaded(dir.path());
        if got == after {
            committed_at.get_or_insert(cut);
        } else {
            assert!(
                committed_at.is_none(),
                "cut at {cut}: back before the commit"
            );
            assert_eq!(got, before, "cut at {cut}");
        }
    }
    let committed_at = committed_at.expect("the whole log loads the checkpoint");
    assert!(committed_at < len, "no base after the checkpoint");
    cut_everywhere(template.path(), committed_at, &after, &after);
}

fn history(dir: &Path) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    read_history(dir, |r| out.push(r.to_vec())).unwrap();
    out
}

#[test]
fn a_history_group_cut_at_any_byte_is_dropped_whole() {
    let template = tempfile::tempdir().unwrap();
    let mut store = HistoryStore::open(template.path(), 1 << 30).unwrap();
    let first: Vec<Vec<u8>> = vec![b"audit 1".to_vec(), b"audit 2".to_vec()];
    let second: Vec<Vec<u8>> = (3..7).map(|i| format!("audit {i}").into_bytes()).collect();
    store.append(&first).unwrap();
    let (_, first_end) = last_segment(template.path());
    store.append(&second).unwrap();
    drop(store);
    let all: Vec<Vec<u8>> = first.iter().chain(&second).cloned().collect();
    assert_eq!(history(template.path()), all);
    let (segment, len) = last_segment(template.path());
    for cut in 0..=len {
        let dir = cut_copy(template.path(), &segment, cut);
        let want: &[Vec<u8>] = if cut == len {
            &all
        } else if cut >= first_end {
            &first
        } else {
            &[]
        };
        assert_eq!(history(dir.path()), want, "cut at {cut}");
        let mut store = HistoryStore::open(dir.path(), 1 << 30)
            .unwrap_or_else(|e| panic!("open, cut at {cut}: {e}"));
        store.append(&[b"after restart".to_vec()]).unwrap();
        drop(store);
        let mut expected = want.to_vec();
        expected.push(b"after restart".to_vec());
        assert_eq!(history(dir.path()), expected, "cut at {cut}");
    }
}

const PAGE: usize = 4096;

/// Power loss with the last of `ends.len()` write groups in flight (each
/// of the last three in turn): its pages reach the disk in any
/// combination, holes as zeros. `check(dir, whole)` sees the directory
/// with `whole` groups intact before the in-flight one (all of them when
/// every page landed).
fn every_page_combination(template: &Path, ends: &[u64], check: impl Fn(&Path, usize)) -> usize {
    let (segment, len) = last_segment(template);
    assert_eq!(segments(template).len(), 1);
    assert_eq!(*ends.last().unwrap(), len);
    let bytes = fs::read(&segment).unwrap();
    assert!(
        bytes.windows(4).any(|w| w == b"RKGZ"),
        "the stores write compressed groups, which these cases must cover"
    );
    let mut cases = 0;
    for in_flight in ends.len() - 3..ends.len() {
        let synced_len = ends[in_flight - 1] as usize;
        let end = ends[in_flight] as usize;
        let pages = wal::pages_in_flight(synced_len, end, PAGE);
        assert!(pages >= 2, "groups should span pages");
        for mask in 0u32..(1 << pages) {
            let disk =
                wal::after_power_loss(&bytes[..end], synced_len, PAGE, |i| mask & (1 << i) != 0);
            let dir = tempfile::tempdir().unwrap();
            fs::write(dir.path().join(segment.file_name().unwrap()), &disk).unwrap();
            let all_landed = mask == (1 << pages) - 1;
            check(
                dir.path(),
                if all_landed { in_flight + 1 } else { in_flight },
            );
            cases += 1;
        }
    }
    cases
}

/// A value of 5 to 17 KB that LZ4 shrinks to about two thirds (random
/// letters between runs of dashes), so a checkpoint is a compressed group
/// that spans pages and starts anywhere inside one.
fn big_value(i: usize) -> String {
    let len = 5000 + (i * 4099) % 12000;
    let mut x = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (0..len)
        .map(|j| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if j % 64 < 40 {
                (b'a' + (x % 26) as u8) as char
            } else {
                '-'
            }
        })
        .collect()
}

#[test]
fn power_loss_with_checkpoint_pages_persisted_out_of_order_never_keeps_reckon_down() {
    let template = tempfile::tempdir().unwrap();
    let (mut store, _) = SnapStore::open(template.path()).unwrap();
    let mut states = vec![(0u64, BTreeMap::new())];
    let mut ends = Vec::new();
    for i in 0..6 {
        let mut writes = vec![put(&format!("key {i}"), &big_value(i))];
        if i > 0 {
            writes.push(put("key 0", &big_value(i + 10)));
            writes.push(delete(&format!("key {}", i - 1)));
        }
        store.write_checkpoint(10 * (i as u64 + 1), writes).unwrap();
        states.push(loaded(template.path()));
        ends.push(last_segment(template.path()).1);
    }
    drop(store);
    let cases = every_page_combination(template.path(), &ends, |dir, whole| {
        let want = &states[whole];
        let (mut store, opened) = SnapStore::open(dir)
            .unwrap_or_else(|e| panic!("{whole} checkpoints whole: refused to start: {e}"));
        assert_eq!(
            &(opened.lsn, opened.pairs),
            want,
            "{whole} checkpoints whole"
        );
        store.write_checkpoint(1000, vec![put("z", "on")]).unwrap();
        drop(store);
        let (lsn, pairs) = loaded(dir);
        assert_eq!(lsn, 1000);
        assert_eq!(pairs.len(), want.1.len() + 1);
    });
    assert!(cases >= 12, "only {cases} cases");
}

#[test]
fn power_loss_with_history_pages_persisted_out_of_order_never_keeps_reckon_down() {
    let template = tempfile::tempdir().unwrap();
    let mut store = HistoryStore::open(template.path(), 1 << 30).unwrap();
    let mut written: Vec<Vec<Vec<u8>>> = vec![Vec::new()];
    let mut ends = Vec::new();
    for i in 0..6 {
        let group: Vec<Vec<u8>> = (0..3).map(|j| big_value(i * 3 + j).into_bytes()).collect();
        store.append(&group).unwrap();
        let mut all = written.last().unwrap().clone();
        all.extend(group);
        written.push(all);
        ends.push(last_segment(template.path()).1);
    }
    drop(store);
    let cases = every_page_combination(template.path(), &ends, |dir, whole| {
        let mut store = HistoryStore::open(dir, 1 << 30)
            .unwrap_or_else(|e| panic!("{whole} groups whole: refused to start: {e}"));
        assert_eq!(history(dir), written[whole], "{whole} groups whole");
        store.append(&[b"on".to_vec()]).unwrap();
        drop(store);
        assert_eq!(history(dir).len(), written[whole].len() + 1);
    });
    assert!(cases >= 12, "only {cases} cases");
}

/// Damage inside a checkpoint that a later one proves was made durable is
/// not a torn tail: the store refuses to load, naming file and offset.
#[test]
fn a_damaged_byte_inside_a_durable_checkpoint_is_refused() {
    let template = tempfile::tempdir().unwrap();
    let (mut store, _) = SnapStore::open(template.path()).unwrap();
    store
        .write_checkpoint(10, vec![put("a", &big_value(1))])
        .unwrap();
    let first_end = last_segment(template.path()).1;
    store
        .write_checkpoint(20, vec![put("b", &big_value(2))])
        .unwrap();
    drop(store);
    let (segment, _) = last_segment(template.path());
    let mut refused = 0;
    // Bytes of the first checkpoint's group past the segment header.
    for offset in (first_end / 2..first_end).step_by(97) {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(template.path(), dir.path());
        let path = dir.path().join(segment.file_name().unwrap());
        let mut bytes = fs::read(&path).unwrap();
        bytes[offset as usize] ^= 0x5a;
        fs::write(&path, &bytes).unwrap();
        let err = match SnapStore::open(dir.path()) {
            Ok(_) => panic!("damage at {offset} was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains(segment.file_name().unwrap().to_str().unwrap()),
            "damage at {offset}: {err}"
        );
        assert!(load(dir.path()).is_err());
        refused += 1;
    }
    assert!(refused >= 10);
}
