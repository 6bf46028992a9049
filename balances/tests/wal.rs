//! Tests of the write-ahead log: round trips across segments, torn tails at
//! every byte offset, mid-log corruption, segment removal and batch handling.

use std::convert::Infallible;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use reckon_balances::wal::{
    self, Lsn, ReplayError, WalBatch, WalConfig, WalError, WalOpened, WalWriter, GROUP_HEADER_LEN,
    RECORD_HEADER_LEN, SEGMENT_HEADER_LEN,
};

const RECORD_MAX: u32 = 1024;

/// How a test's log is configured: raw groups ([`config`]) or compressed
/// ones ([`config_lz4`]); the crash tests run in both.
type Mode = fn(&Path, u64) -> WalConfig;

/// Groups stored compressed where that is smaller (the default).
fn config_lz4(dir: &Path, segment_bytes_max: u64) -> WalConfig {
    WalConfig {
        compress: true,
        ..config(dir, segment_bytes_max)
    }
}

/// Checks that a segment's bytes hold a compressed write group exactly
/// when the mode compresses (so the compressed runs test what they claim).
fn assert_mode(config: Mode, bytes: &[u8]) {
    let compressed = groups(bytes)
        .iter()
        .any(|g| &bytes[g.0 as usize..g.0 as usize + 4] == b"RKGZ");
    assert_eq!(compressed, config(Path::new("."), 0).compress);
}

fn config(dir: &Path, segment_bytes_max: u64) -> WalConfig {
    WalConfig {
        dir: dir.to_path_buf(),
        segment_bytes_max,
        record_bytes_max: RECORD_MAX,
        // These tests place damage at record offsets: groups stay raw here;
        // compressed groups have tests of their own.
        compress: false,
    }
}

/// Deterministic payload of varying length (24..=64 bytes) for record `lsn`.
fn payload(lsn: u64) -> Vec<u8> {
    let len = (lsn * 7 % 41) as usize;
    // Records share a prefix, as real ones share their layout and unit
    // names, so groups of a few compress.
    let mut p = b"credit-control tokens_in".to_vec();
    p.extend((0..len).map(|i| (lsn as u8).wrapping_mul(31) ^ i as u8));
    p
}

fn record_len(lsn: u64) -> u64 {
    (RECORD_HEADER_LEN + payload(lsn).len()) as u64
}

fn open(cfg: &WalConfig) -> WalOpened {
    wal::open(cfg).expect("open")
}

/// Appends records `from..=to` in batches of `per_batch`, checking the LSNs handed out.
fn append(writer: &mut WalWriter, from: u64, to: u64, per_batch: usize) {
    let mut batch = writer.new_batch();
    assert_eq!(batch.next_lsn(), Lsn(from));
    for lsn in from..=to {
        assert_eq!(batch.push(&payload(lsn)).unwrap(), Lsn(lsn));
        if batch.len_records() == per_batch || lsn == to {
            let full = batch.take();
            writer.write_and_sync(&full).expect("write_and_sync");
            assert_eq!(writer.last_durable_lsn(), Lsn(lsn));
        }
    }
}

/// Records as replayed: (lsn, payload).
type Records = Vec<(u64, Vec<u8>)>;

fn collect(cfg: &WalConfig, after: u64) -> Result<(u64, Records), WalError> {
    let mut out = Vec::new();
    let last = wal::replay(cfg, Lsn(after), |lsn, p| -> Result<(), Infallible> {
        out.push((lsn.0, p.to_vec()));
        Ok(())
    })
    .map_err(|e| match e {
        ReplayError::Wal(e) => e,
        ReplayError::Callback(never) => match never {},
    })?;
    Ok((last.0, out))
}

/// Asserts that replay after `after` yields exactly records `after+1..=last`.
fn assert_replays(cfg: &WalConfig, after: u64, last: u64) {
    let (seen_last, records) = collect(cfg, after).expect("replay");
    assert_eq!(seen_last, last);
    let expected: Vec<_> = (after + 1..=last).map(|l| (l, payload(l))).collect();
    assert_eq!(records, expected);
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    v.sort();
    v
}

fn first_lsn_of(segment: &Path) -> u64 {
    let name = segment.file_name().unwrap().to_str().unwrap();
    name["wal-".len()..name.len() - ".log".len()]
        .parse()
        .unwrap()
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for seg in segments(from) {
        fs::copy(&seg, to.join(seg.file_name().unwrap())).unwrap();
    }
}

/// Builds a log of records 1..=n and returns the directory.
fn build(config: Mode, n: u64, segment_bytes_max: u64, per_batch: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), segment_bytes_max);
    let mut opened = open(&cfg);
    append(&mut opened.writer, 1, n, per_batch);
    dir
}

/// The write groups of a segment's bytes: (start offset, end offset, first
/// lsn, record count), read from their headers.
fn groups(bytes: &[u8]) -> Vec<(u64, u64, u64, u64)> {
    let mut out = Vec::new();
    let mut off = SEGMENT_HEADER_LEN;
    while off + GROUP_HEADER_LEN <= bytes.len() {
        let h = &bytes[off..off + GROUP_HEADER_LEN];
        let len = u32::from_le_bytes(h[4..8].try_into().unwrap()) as usize;
        let first = u64::from_le_bytes(h[8..16].try_into().unwrap());
        let count = u32::from_le_bytes(h[16..20].try_into().unwrap()) as u64;
        let end = off + GROUP_HEADER_LEN + len;
        out.push((off as u64, end as u64, first, count));
        off = end;
    }
    out
}

/// Last lsn of the whole groups that end at or before `cut`, and where the
/// last of them ends (the segment header's end if none).
fn whole_groups_before(bytes: &[u8], first: u64, cut: u64) -> (u64, u64) {
    let mut last = first - 1;
    let mut end = SEGMENT_HEADER_LEN as u64;
    for (_, e, f, n) in groups(bytes) {
        if e > cut {
            break;
        }
        last = f + n - 1;
        end = e;
    }
    (last, end)
}

fn flip_byte(path: &Path, offset: u64) {
    let mut bytes = fs::read(path).unwrap();
    bytes[offset as usize] ^= 0x55;
    fs::write(path, bytes).unwrap();
}

#[test]
fn round_trip_across_segments_and_reopen() {
    round_trip_across_segments_and_reopen_in(config);
}

#[test]
fn round_trip_across_segments_and_reopen_compressed() {
    round_trip_across_segments_and_reopen_in(config_lz4);
}

fn round_trip_across_segments_and_reopen_in(config: Mode) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 256);
    let opened = open(&cfg);
    assert_eq!(opened.last_lsn, Lsn(0));
    assert_eq!(opened.first_lsn, None);
    let mut writer = opened.writer;
    // Batches of varying size exercise rolling at different fill levels.
    let mut lsn = 1;
    let mut size = 1;
    while lsn <= 200 {
        let to = (lsn + size - 1).min(200);
        append(&mut writer, lsn, to, usize::MAX);
        lsn = to + 1;
        size = size % 7 + 1;
    }
    drop(writer);

    let segs = segments(dir.path());
    assert!(
        segs.len() >= 3,
        "expected several segments, got {}",
        segs.len()
    );
    let biggest_batch: u64 = (1..=200).map(record_len).max().unwrap() * 7;
    for seg in &segs {
        assert!(fs::metadata(seg).unwrap().len() <= 256 + biggest_batch);
    }

    assert_replays(&cfg, 0, 200);
    assert_replays(&cfg, 137, 200);
    assert_replays(&cfg, 200, 200);
    assert!(matches!(
        collect(&cfg, 201),
        Err(WalError::EndsBefore {
            requested: Lsn(201),
            last: Lsn(200)
        })
    ));

    let reopened = open(&cfg);
    assert_eq!(reopened.last_lsn, Lsn(200));
    assert_eq!(reopened.first_lsn, Some(Lsn(1)));
    assert_eq!(reopened.torn_tail_bytes, 0);
    let mut writer = reopened.writer;
    append(&mut writer, 201, 250, 5);
    drop(writer);
    assert_replays(&cfg, 0, 250);
    assert_replays(&cfg, 199, 250);
}

#[test]
fn cut_last_segment_at_every_offset() {
    cut_last_segment_at_every_offset_in(config);
}

#[test]
fn cut_last_segment_at_every_offset_compressed() {
    cut_last_segment_at_every_offset_in(config_lz4);
}

fn cut_last_segment_at_every_offset_in(config: Mode) {
    // Small segments so the last one holds a handful of groups.
    let template = build(config, 42, 200, 3);
    let segs = segments(template.path());
    assert!(segs.len() >= 3);
    let last_seg = segs.last().unwrap();
    let first = first_lsn_of(last_seg);
    let bytes = fs::read(last_seg).unwrap();
    assert_mode(config, &bytes);
    let file_len = bytes.len() as u64;
    assert_eq!(groups(&bytes).last().unwrap().1, file_len);

    for cut in 0..file_len {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(template.path(), dir.path());
        let cfg = config(dir.path(), 200);
        let seg = dir.path().join(last_seg.file_name().unwrap());
        OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(cut)
            .unwrap();

        // Whole groups before the cut survive, nothing else.
        let (last, end) = whole_groups_before(&bytes, first, cut);
        let opened = wal::open(&cfg).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        assert_eq!(opened.last_lsn, Lsn(last), "cut at {cut}");
        let kept = if cut < SEGMENT_HEADER_LEN as u64 {
            0
        } else {
            end
        };
        assert_eq!(opened.torn_tail_bytes, cut - kept, "cut at {cut}");
        assert_replays(&cfg, 0, last);

        let mut writer = opened.writer;
        append(&mut writer, last + 1, last + 3, 2);
        drop(writer);
        let reopened = open(&cfg);
        assert_eq!(reopened.last_lsn, Lsn(last + 3));
        assert_eq!(reopened.torn_tail_bytes, 0);
        assert_replays(&cfg, 0, last + 3);
    }
}

#[test]
fn flipped_byte_in_final_group_is_torn_tail() {
    flipped_byte_in_final_group_is_torn_tail_in(config);
}

#[test]
fn flipped_byte_in_final_group_is_torn_tail_compressed() {
    flipped_byte_in_final_group_is_torn_tail_in(config_lz4);
}

fn flipped_byte_in_final_group_is_torn_tail_in(config: Mode) {
    let template = build(config, 30, 200, 4);
    let last_seg = segments(template.path()).pop().unwrap();
    let bytes = fs::read(&last_seg).unwrap();
    assert_mode(config, &bytes);
    let (start, end, group_first, _) = *groups(&bytes).last().unwrap();
    for offset in start..end {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(template.path(), dir.path());
        let cfg = config(dir.path(), 200);
        flip_byte(&dir.path().join(last_seg.file_name().unwrap()), offset);
        let opened = wal::open(&cfg).unwrap_or_else(|e| panic!("flip at {offset}: {e}"));
        assert_eq!(opened.last_lsn, Lsn(group_first - 1), "flip at {offset}");
        assert_eq!(opened.torn_tail_bytes, end - start);
        assert_replays(&cfg, 0, group_first - 1);
    }
}

#[test]
fn flipped_byte_before_valid_groups_is_corrupt() {
    flipped_byte_before_valid_groups_is_corrupt_in(config);
}

#[test]
fn flipped_byte_before_valid_groups_is_corrupt_compressed() {
    flipped_byte_before_valid_groups_is_corrupt_in(config_lz4);
}

fn flipped_byte_before_valid_groups_is_corrupt_in(config: Mode) {
    // A log whose last segment holds at least two groups.
    let template = (40..80)
        .map(|n| build(config, n, 300, 3))
        .find(|t| groups(&fs::read(segments(t.path()).pop().unwrap()).unwrap()).len() >= 2)
        .unwrap();
    let segs = segments(template.path());
    assert!(segs.len() >= 3);
    let last_seg = segs.last().unwrap();
    let bytes = fs::read(last_seg).unwrap();
    assert_mode(config, &bytes);
    let layout = groups(&bytes);
    assert!(
        layout.len() >= 2,
        "the last segment needs a group after the damaged one"
    );

    // Every byte of a group in the last segment that a valid group follows:
    // that group was acknowledged, so open refuses and says where.
    let (start, end, _, _) = layout[0];
    for offset in start..end {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(template.path(), dir.path());
        flip_byte(&dir.path().join(last_seg.file_name().unwrap()), offset);
        match wal::open(&config(dir.path(), 300)) {
            Err(WalError::Corrupt {
                offset: at, reason, ..
            }) => {
                assert_eq!(at, start);
                assert!(reason.contains("Restore the data directory"), "{reason}");
            }
            other => panic!("flip at {offset}: expected Corrupt, got {other:?}"),
        }
    }

    // Any byte of an earlier segment: its groups, its header.
    let middle = &segs[1];
    let middle_bytes = fs::read(middle).unwrap();
    let middle_groups = groups(&middle_bytes);
    let offsets = [
        3,
        middle_groups[0].0 + 2,
        middle_groups.last().unwrap().0 + GROUP_HEADER_LEN as u64 + 1,
        middle_bytes.len() as u64 - 1,
    ];
    for offset in offsets {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(template.path(), dir.path());
        flip_byte(&dir.path().join(middle.file_name().unwrap()), offset);
        let result = wal::open(&config(dir.path(), 300));
        assert!(
            matches!(result, Err(WalError::Corrupt { .. })),
            "flip at {offset}: {result:?}"
        );
    }

    // A damaged header of the last segment, with its groups intact behind it.
    let dir = tempfile::tempdir().unwrap();
    copy_dir(template.path(), dir.path());
    flip_byte(&dir.path().join(last_seg.file_name().unwrap()), 1);
    assert!(matches!(
        wal::open(&config(dir.path(), 300)),
        Err(WalError::Corrupt { offset: 0, .. })
    ));
}

#[test]
fn garbage_tail_is_torn() {
    garbage_tail_is_torn_in(config);
}

#[test]
fn garbage_tail_is_torn_compressed() {
    garbage_tail_is_torn_in(config_lz4);
}

fn garbage_tail_is_torn_in(config: Mode) {
    for fill in [0x00u8, 0xAB] {
        let dir = build(config, 20, 200, 3);
        let cfg = config(dir.path(), 200);
        let last_seg = segments(dir.path()).pop().unwrap();
        let mut f = OpenOptions::new().append(true).open(&last_seg).unwrap();
        f.write_all(&[fill; 4096]).unwrap();
        drop(f);
        let opened = open(&cfg);
        assert_eq!(opened.last_lsn, Lsn(20));
        assert_eq!(opened.torn_tail_bytes, 4096);
        let mut writer = opened.writer;
        append(&mut writer, 21, 22, 2);
        drop(writer);
        assert_replays(&cfg, 0, 22);
    }
}

#[test]
fn remove_segments_keeps_what_is_needed() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 200);
    let mut writer = open(&cfg).writer;
    append(&mut writer, 1, 200, 4);
    let before = segments(dir.path()).len();

    assert_eq!(writer.remove_segments_upto(Lsn(0)).unwrap(), 0);
    let removed = writer.remove_segments_upto(Lsn(100)).unwrap();
    assert!(removed > 0);
    assert_eq!(segments(dir.path()).len(), before - removed);
    let first = first_lsn_of(&segments(dir.path())[0]);
    assert!(
        first <= 101 && first > 1,
        "first remaining segment starts at {first}"
    );
    assert_replays(&cfg, 100, 200);
    assert!(matches!(
        collect(&cfg, 0),
        Err(WalError::Gap {
            expected: Lsn(1),
            ..
        })
    ));

    // Everything is redundant, yet the active segment stays so the log goes on.
    writer.remove_segments_upto(Lsn(u64::MAX)).unwrap();
    assert_eq!(segments(dir.path()).len(), 1);
    append(&mut writer, 201, 210, 3);
    drop(writer);

    let reopened = open(&cfg);
    assert_eq!(reopened.last_lsn, Lsn(210));
    let first = reopened.first_lsn.unwrap();
    assert!(first.0 > 100);
    assert_replays(&cfg, first.0 - 1, 210);
    assert_replays(&cfg, 205, 210);
}

#[test]
fn missing_middle_segment_is_a_gap() {
    let dir = build(config, 60, 200, 3);
    let segs = segments(dir.path());
    assert!(segs.len() >= 3);
    fs::remove_file(&segs[1]).unwrap();
    let cfg = config(dir.path(), 200);
    assert!(matches!(wal::open(&cfg), Err(WalError::Gap { .. })));
    assert!(matches!(collect(&cfg, 0), Err(WalError::Gap { .. })));
}

#[test]
fn record_too_large_is_rejected_at_push() {
    let mut batch = WalBatch::with_record_bytes_max(Lsn(1), RECORD_MAX);
    let err = batch.push(&vec![0; RECORD_MAX as usize + 1]).unwrap_err();
    assert!(matches!(
        err,
        WalError::RecordTooLarge {
            len: 1025,
            max: 1024
        }
    ));
    assert!(batch.is_empty());
    assert_eq!(batch.next_lsn(), Lsn(1));
    assert_eq!(batch.push(&vec![0; RECORD_MAX as usize]).unwrap(), Lsn(1));

    // The default limit applies to WalBatch::new.
    let mut batch = WalBatch::new(Lsn(1));
    assert!(batch.push(&vec![0; (1 << 20) + 1]).is_err());
}

#[test]
fn lowered_record_limit_never_cuts_a_valid_record() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1 << 20);
    let mut writer = open(&cfg).writer;
    let mut batch = writer.new_batch();
    batch.push(&[7; 500]).unwrap();
    writer.write_and_sync(&batch).unwrap();
    drop(writer);
    let mut lowered = cfg.clone();
    lowered.record_bytes_max = 100;
    assert!(matches!(wal::open(&lowered), Err(WalError::Corrupt { .. })));
    assert_eq!(open(&cfg).last_lsn, Lsn(1));
}

#[test]
fn batch_take_and_extend() {
    let mut batch = WalBatch::new(Lsn(5));
    assert!(batch.is_empty());
    assert_eq!((batch.first_lsn(), batch.last_lsn()), (None, None));
    batch.push(b"a").unwrap();
    batch.push(b"").unwrap();
    assert_eq!(batch.len_records(), 2);
    assert_eq!(batch.len_bytes(), 2 * RECORD_HEADER_LEN + 1);
    assert_eq!(
        (batch.first_lsn(), batch.last_lsn()),
        (Some(Lsn(5)), Some(Lsn(6)))
    );

    let mut first = batch.take();
    assert!(batch.is_empty());
    assert_eq!(batch.next_lsn(), Lsn(7));
    batch.push(b"bc").unwrap();
    let second = batch.take();
    first.extend(second);
    assert_eq!(first.len_records(), 3);
    assert_eq!(
        (first.first_lsn(), first.last_lsn()),
        (Some(Lsn(5)), Some(Lsn(7)))
    );
    assert_eq!(first.next_lsn(), Lsn(8));
    // Extending with an empty continuation changes nothing.
    first.extend(batch.take());
    assert_eq!(first.len_records(), 3);

    // An empty batch absorbs the next one.
    let mut empty = WalBatch::new(Lsn(8));
    let mut next = WalBatch::new(Lsn(8));
    next.push(b"x").unwrap();
    empty.extend(next);
    assert_eq!(
        (empty.first_lsn(), empty.last_lsn()),
        (Some(Lsn(8)), Some(Lsn(8)))
    );
}

#[test]
#[should_panic(expected = "must start at this batch's next lsn")]
fn extend_with_unrelated_batch_panics() {
    let mut a = WalBatch::new(Lsn(1));
    a.push(b"a").unwrap();
    let mut b = WalBatch::new(Lsn(5));
    b.push(b"b").unwrap();
    a.extend(b);
}

#[test]
fn writer_rejects_batches_out_of_sequence_and_stays_usable() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1 << 20);
    let mut writer = open(&cfg).writer;
    append(&mut writer, 1, 3, 3);

    let mut stale = WalBatch::new(Lsn(3));
    stale.push(b"dup").unwrap();
    assert!(matches!(
        writer.write_and_sync(&stale),
        Err(WalError::OutOfSequence {
            expected: Lsn(4),
            found: Lsn(3)
        })
    ));
    let mut ahead = WalBatch::new(Lsn(6));
    ahead.push(b"gap").unwrap();
    assert!(writer.write_and_sync(&ahead).is_err());
    // An empty batch is a no-op.
    writer.write_and_sync(&WalBatch::new(Lsn(99))).unwrap();
    append(&mut writer, 4, 5, 1);
    drop(writer);
    assert_replays(&cfg, 0, 5);
}

#[test]
fn empty_log_may_start_after_a_snapshot() {
    let root = tempfile::tempdir().unwrap();
    let cfg = config(&root.path().join("nested/wal"), 1 << 20);
    let opened = open(&cfg);
    assert_eq!((opened.last_lsn, opened.first_lsn), (Lsn(0), None));
    assert_eq!(collect(&cfg, 0).unwrap(), (0, vec![]));
    assert_eq!(collect(&cfg, 1000).unwrap(), (1000, vec![]));

    let mut writer = opened.writer;
    let mut batch = WalBatch::new(Lsn(1001));
    batch.push(&payload(1001)).unwrap();
    writer.write_and_sync(&batch).unwrap();
    drop(writer);
    let reopened = open(&cfg);
    assert_eq!(reopened.first_lsn, Some(Lsn(1001)));
    assert_eq!(reopened.last_lsn, Lsn(1001));
    assert_replays(&cfg, 1000, 1001);
    assert!(matches!(collect(&cfg, 0), Err(WalError::Gap { .. })));
}

#[test]
fn replay_stops_at_callback_error() {
    let dir = build(config, 10, 1 << 20, 10);
    let cfg = config(dir.path(), 1 << 20);
    let mut seen = 0;
    let result = wal::replay(&cfg, Lsn(0), |lsn, _| {
        seen += 1;
        if lsn == Lsn(4) {
            Err("apply failed")
        } else {
            Ok(())
        }
    });
    assert!(matches!(result, Err(ReplayError::Callback("apply failed"))));
    assert_eq!(seen, 4);
}

#[test]
fn group_commit_pipeline_across_threads() {
    fn assert_send<T: Send>() {}
    assert_send::<WalBatch>();
    assert_send::<WalWriter>();

    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 512);
    let writer = open(&cfg).writer;
    let mut batch = writer.new_batch();
    let (tx, rx) = std::sync::mpsc::channel::<WalBatch>();
    let sync = std::thread::spawn(move || {
        let mut writer = writer;
        while let Ok(mut pending) = rx.recv() {
            // Merge whatever queued up while the previous fsync ran.
            while let Ok(more) = rx.try_recv() {
                pending.extend(more);
            }
            writer.write_and_sync(&pending).unwrap();
        }
        writer.last_durable_lsn()
    });
    for lsn in 1..=300 {
        batch.push(&payload(lsn)).unwrap();
        if lsn % 3 == 0 {
            tx.send(batch.take()).unwrap();
        }
    }
    drop(tx);
    assert_eq!(sync.join().unwrap(), Lsn(300));
    assert_replays(&cfg, 0, 300);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Any cut of the last segment keeps exactly the whole groups before it.
    #[test]
    fn any_tail_cut_keeps_whole_records(
        lens in prop::collection::vec(0usize..60, 1..40),
        segment_bytes_max in 64u64..400,
        cut_permille in 0u64..=1000,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), segment_bytes_max);
        let mut writer = open(&cfg).writer;
        let mut batch = writer.new_batch();
        for (i, len) in lens.iter().enumerate() {
            batch.push(&vec![i as u8; *len]).unwrap();
            if i % 2 == 1 {
                writer.write_and_sync(&batch.take()).unwrap();
            }
        }
        writer.write_and_sync(&batch.take()).unwrap();
        drop(writer);

        let last_seg = segments(dir.path()).pop().unwrap();
        let first = first_lsn_of(&last_seg);
        let bytes = fs::read(&last_seg).unwrap();
        let len = bytes.len() as u64;
        let cut = len * cut_permille / 1000;
        OpenOptions::new().write(true).open(&last_seg).unwrap().set_len(cut).unwrap();

        let (last, _) = whole_groups_before(&bytes, first, cut);
        let opened = open(&cfg);
        prop_assert_eq!(opened.last_lsn, Lsn(last));
        let (seen, records) = collect(&cfg, 0).unwrap();
        prop_assert_eq!(seen, last);
        for (lsn, p) in records {
            prop_assert_eq!(p, vec![(lsn - 1) as u8; lens[(lsn - 1) as usize]]);
        }
    }
}

/// Replay speed on 10M records; run with `--release -- --ignored`.
#[test]
#[ignore]
fn replay_ten_million_records() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = WalConfig::new(dir.path());
    let mut writer = open(&cfg).writer;
    let mut batch = writer.new_batch();
    let body = [0x5Au8; 64];
    for i in 0..10_000_000u64 {
        batch.push(&body).unwrap();
        if i % 100_000 == 99_999 {
            writer.write_and_sync(&batch.take()).unwrap();
        }
    }
    drop(writer);
    let t = std::time::Instant::now();
    let opened = open(&cfg);
    let open_time = t.elapsed();
    let t = std::time::Instant::now();
    let mut bytes = 0u64;
    let last = wal::replay(&cfg, Lsn(0), |_, p| -> Result<(), Infallible> {
        bytes += p.len() as u64;
        Ok(())
    })
    .unwrap();
    eprintln!(
        "open {open_time:?}, replay {:?} ({} records, {bytes} payload bytes)",
        t.elapsed(),
        last.0
    );
    assert_eq!(opened.last_lsn, Lsn(10_000_000));
}

/// Power loss: the write group in flight (written, its fdatasync not yet
/// returned) reaches the disk page by page in any order, holes included.
/// Groups are written one at a time, so it is the only one at risk. For a
/// crash after each of the last three groups, every combination of its
/// pages persisted or not must open, keep every record of every synced
/// group, keep the in-flight group only if all of it landed, and go on.
#[test]
fn power_loss_with_pages_persisted_out_of_order_never_keeps_reckon_down() {
    power_loss_with_pages_persisted_out_of_order_never_keeps_reckon_down_in(config);
}

#[test]
fn power_loss_with_pages_persisted_out_of_order_never_keeps_reckon_down_compressed() {
    power_loss_with_pages_persisted_out_of_order_never_keeps_reckon_down_in(config_lz4);
}

fn power_loss_with_pages_persisted_out_of_order_never_keeps_reckon_down_in(config: Mode) {
    const PAGE: usize = 4096;
    let template = tempfile::tempdir().unwrap();
    let cfg = config(template.path(), 1 << 30);
    let mut writer = open(&cfg).writer;
    // Six groups of 2..14 KB (about half that compressed), so a group
    // spans one to four pages and starts anywhere inside a page.
    let body = |lsn: u64| {
        let mut x = lsn.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..300 + (lsn as usize * 37) % 500)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if i % 8 < 4 {
                    x as u8
                } else {
                    (lsn % 251) as u8
                }
            })
            .collect::<Vec<u8>>()
    };
    let mut lsn = 1u64;
    let mut batch = writer.new_batch();
    for g in 0..6u64 {
        for _ in 0..(4 + g * 5) {
            batch.push(&body(lsn)).unwrap();
            lsn += 1;
        }
        writer.write_and_sync(&batch.take()).unwrap();
    }
    drop(writer);
    let seg = segments(template.path()).pop().unwrap();
    let bytes = fs::read(&seg).unwrap();
    assert_mode(config, &bytes);
    let layout = groups(&bytes);
    assert_eq!(layout.len(), 6);
    let mut cases = 0;
    for in_flight in 3..6 {
        let synced_len = layout[in_flight - 1].1 as usize;
        let synced_last = layout[in_flight - 1].2 + layout[in_flight - 1].3 - 1;
        let (start, end, first, count) = layout[in_flight];
        assert_eq!(start as usize, synced_len);
        let end = end as usize;
        let pages = wal::pages_in_flight(synced_len, end, PAGE);
        assert!(pages >= 2 || in_flight < 5, "groups should span pages");
        for mask in 0u32..(1 << pages) {
            let disk =
                wal::after_power_loss(&bytes[..end], synced_len, PAGE, |i| mask & (1 << i) != 0);
            let dir = tempfile::tempdir().unwrap();
            let cfg = config(dir.path(), 1 << 30);
            fs::write(dir.path().join(seg.file_name().unwrap()), &disk).unwrap();
            let opened = wal::open(&cfg).unwrap_or_else(|e| {
                panic!("group {in_flight} in flight, pages {mask:b}: refused to start: {e}")
            });
            let all_landed = mask == (1 << pages) - 1;
            let last = if all_landed {
                first + count - 1
            } else {
                synced_last
            };
            assert_eq!(opened.last_lsn, Lsn(last), "pages {mask:b}");
            assert_eq!(
                opened.torn_tail_bytes as usize,
                disk.len() - if all_landed { end } else { synced_len }
            );
            let (_, records) = collect(&cfg, 0).unwrap();
            assert_eq!(records.len() as u64, last);
            for (l, p) in &records {
                assert_eq!(p, &body(*l));
            }
            // And the log goes on where it was cut.
            let mut writer = opened.writer;
            let mut more = writer.new_batch();
            more.push(b"after").unwrap();
            writer.write_and_sync(&more).unwrap();
            drop(writer);
            assert_eq!(open(&cfg).last_lsn, Lsn(last + 1));
            cases += 1;
        }
    }
    assert!(cases >= 3 * 4, "only {cases} cases");
}

/// Durable records are read back by LSN while the log is written, across
/// segments, group boundaries and a reopen; records not durable or removed
/// are not found.
#[test]
fn the_reader_finds_every_durable_record() {
    the_reader_finds_every_durable_record_in(config);
}

#[test]
fn the_reader_finds_every_durable_record_compressed() {
    the_reader_finds_every_durable_record_in(config_lz4);
}

fn the_reader_finds_every_durable_record_in(config: Mode) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 600);
    let mut writer = open(&cfg).writer;
    let reader = writer.reader();
    assert_eq!(reader.read(Lsn(1)), None);
    append(&mut writer, 1, 150, 7);
    for lsn in 1..=150 {
        assert_eq!(reader.read(Lsn(lsn)), Some(payload(lsn)), "lsn {lsn}");
    }
    assert_eq!(reader.read(Lsn(151)), None);
    assert_eq!(reader.read(Lsn(0)), None);
    // A batch formed but not written is not readable.
    let mut pending = writer.new_batch();
    pending.push(&payload(151)).unwrap();
    assert_eq!(reader.read(Lsn(151)), None);
    writer.write_and_sync(&pending).unwrap();
    assert_eq!(reader.read(Lsn(151)), Some(payload(151)));
    // Removed segments are gone from the reader too.
    writer.remove_segments_upto(Lsn(60)).unwrap();
    let first = writer.first_lsn().unwrap().0;
    assert!(first > 1);
    assert_eq!(reader.read(Lsn(first - 1)), None);
    assert_eq!(reader.read(Lsn(first)), Some(payload(first)));
    drop(writer);
    // After a reopen, the new writer's reader finds them all again.
    let reader = open(&cfg).writer.reader();
    for lsn in first..=151 {
        assert_eq!(
            reader.read(Lsn(lsn)),
            Some(payload(lsn)),
            "lsn {lsn} after reopen"
        );
    }
}

/// A log written by the previous format (version 2, raw groups only) is
/// read as it is; the writer never appends compressed groups to it but
/// continues in a new segment, and a version-2 segment with no records yet
/// takes the new header.
#[test]
fn a_version_2_log_is_read_and_continued_in_a_new_segment() {
    let set_version_2 = |path: &Path| {
        let mut bytes = fs::read(path).unwrap();
        bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
        let mut h = crc32fast::Hasher::new();
        h.update(&bytes[..12]);
        h.update(&bytes[16..24]);
        bytes[12..16].copy_from_slice(&h.finalize().to_le_bytes());
        fs::write(path, bytes).unwrap();
    };
    let dir = build(config, 20, 1 << 20, 4);
    let old = segments(dir.path()).pop().unwrap();
    set_version_2(&old);
    let old_bytes = fs::read(&old).unwrap();
    let cfg = config_lz4(dir.path(), 1 << 20);
    assert_replays(&cfg, 0, 20);
    let mut writer = open(&cfg).writer;
    append(&mut writer, 21, 40, 5);
    drop(writer);
    assert_eq!(
        fs::read(&old).unwrap(),
        old_bytes,
        "the old segment is untouched"
    );
    let segs = segments(dir.path());
    assert_eq!(segs.len(), 2);
    assert_eq!(first_lsn_of(&segs[1]), 21);
    let new = fs::read(&segs[1]).unwrap();
    assert_eq!(
        u32::from_le_bytes(new[8..12].try_into().unwrap()),
        wal::SEGMENT_VERSION
    );
    assert_mode(config_lz4, &new);
    assert_replays(&cfg, 0, 40);
    let reader = open(&cfg).writer.reader();
    for lsn in 1..=40 {
        assert_eq!(reader.read(Lsn(lsn)), Some(payload(lsn)), "lsn {lsn}");
    }

    // A version-2 segment holding only its header is given a new one.
    let empty = tempfile::tempdir().unwrap();
    let mut w = open(&config(empty.path(), 1 << 20)).writer;
    append(&mut w, 1, 1, 1);
    drop(w);
    let seg = segments(empty.path()).pop().unwrap();
    OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(SEGMENT_HEADER_LEN as u64)
        .unwrap();
    set_version_2(&seg);
    let cfg = config_lz4(empty.path(), 1 << 20);
    let opened = open(&cfg);
    assert_eq!(opened.last_lsn, Lsn(0));
    let mut writer = opened.writer;
    append(&mut writer, 1, 8, 4);
    drop(writer);
    assert_eq!(segments(empty.path()), vec![seg.clone()]);
    let bytes = fs::read(&seg).unwrap();
    assert_eq!(
        u32::from_le_bytes(bytes[8..12].try_into().unwrap()),
        wal::SEGMENT_VERSION
    );
    assert_replays(&cfg, 0, 8);
}

/// Records shaped like the engine's (fixed-width units and amounts, a
/// session id) take several times less room compressed, and every one
/// reads back by LSN.
#[test]
fn compressed_groups_are_several_times_smaller_and_read_back() {
    let record = |lsn: u64| {
        let mut r = format!("session;{:016x};{}", lsn * 7919, lsn % 97).into_bytes();
        for unit in [&b"tokens_in"[..], b"tokens_out"] {
            let mut name = [0u8; 16];
            name[..unit.len()].copy_from_slice(unit);
            r.extend_from_slice(&name);
            r.extend_from_slice(&((lsn % 5000) as i128 * 1_000_000_000).to_le_bytes());
        }
        r.extend_from_slice(&lsn.to_le_bytes());
        r
    };
    let mut sizes = Vec::new();
    for mode in [config as Mode, config_lz4] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = mode(dir.path(), 1 << 30);
        let mut writer = open(&cfg).writer;
        let reader = writer.reader();
        let mut batch = writer.new_batch();
        for lsn in 1..=5000u64 {
            batch.push(&record(lsn)).unwrap();
            if lsn % 500 == 0 {
                writer.write_and_sync(&batch.take()).unwrap();
            }
        }
        for lsn in 1..=5000u64 {
            assert_eq!(reader.read(Lsn(lsn)), Some(record(lsn)), "lsn {lsn}");
        }
        drop(writer);
        let mut replayed = 0u64;
        wal::replay(&cfg, Lsn(0), |lsn, p| -> Result<(), Infallible> {
            assert_eq!(p, record(lsn.0));
            replayed += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(replayed, 5000);
        sizes.push(wal::inspect(&cfg).unwrap().bytes);
    }
    assert!(
        sizes[1] * 3 < sizes[0],
        "compressed {} bytes, raw {}",
        sizes[1],
        sizes[0]
    );
}
