//! Write-ahead log of the ledger: a checksummed, segmented, append-only record
//! log with group commit and torn-tail recovery.
//!
//! The log is payload-agnostic: a record is opaque bytes plus the log sequence
//! number ([`Lsn`]) it was given. Work is split in two so the charging writer
//! never waits on the disk while forming the next batch:
//!
//! * [`WalBatch`] lives on the single writer thread. It assigns LSNs and frames
//!   records into an in-memory buffer. [`WalBatch::take`] hands the filled
//!   batch to the sync thread and keeps numbering where it left off.
//! * [`WalWriter`] lives on the sync thread. It owns the segment files, may
//!   merge several pending batches ([`WalBatch::extend`]) and makes them durable
//!   with one `write` and one `fdatasync` (group commit).
//!
//! Startup is [`open`] (validate, cut a torn tail, get the writer) followed by
//! [`replay`] (stream the records after the snapshot's LSN into `apply`).
//!
//! # On-disk format (version 3)
//!
//! A log is a directory of segment files named `wal-{first_lsn:020}.log`,
//! where `first_lsn` is the LSN of the segment's first record (or of the record
//! it will hold first, if it has none yet). All integers are little-endian.
//!
//! Segment header, [`SEGMENT_HEADER_LEN`] = 24 bytes:
//!
//! | offset | size | field                                                        |
//! |--------|------|--------------------------------------------------------------|
//! | 0      | 8    | magic `RKWAL002` (unchanged since version 2)                 |
//! | 8      | 4    | `u32` format version, 3 (2 is still read: see below)         |
//! | 12     | 4    | `u32` CRC-32 of bytes 0..12 followed by bytes 16..24         |
//! | 16     | 8    | `u64` first LSN; must equal the LSN in the file name         |
//!
//! Then write groups back to back: everything one `fdatasync` made durable
//! is one group, [`GROUP_HEADER_LEN`] = 24 bytes of header then its records:
//!
//! | offset | size | field                                                        |
//! |--------|------|--------------------------------------------------------------|
//! | 0      | 4    | magic `RKGP` (records as they are) or `RKGZ` (compressed)    |
//! | 4      | 4    | `u32` length of the group's body in bytes                     |
//! | 8      | 8    | `u64` LSN of its first record                                |
//! | 16     | 4    | `u32` number of records                                      |
//! | 20     | 4    | `u32` CRC-32 of bytes 0..20 followed by the body              |
//!
//! An `RKGP` body is the records. An `RKGZ` body is chunks back to back,
//! each [`CHUNK_HEADER_LEN`] = 8 bytes of header (`u32` length of its
//! records, `u32` length of its LZ4 block) and an LZ4 block (the block
//! format, no frame) that decompresses to [`READ_INDEX_STRIDE`] whole
//! records (the last chunk fewer). The writer compresses a group when
//! [`WalConfig::compress`] is set and that makes it smaller: credit-control
//! records shrink about five times. Chunks keep a read by LSN to one small
//! decompression. Version 2 segments hold `RKGP` groups only; the writer
//! never appends to one but starts a version 3 segment, so a binary that
//! knows only version 2 refuses the new segment by its version instead of
//! taking a compressed group for a torn tail.
//!
//! Inside a group, records back to back, each [`RECORD_HEADER_LEN`] = 16
//! bytes of header plus the payload:
//!
//! | offset | size | field                                                        |
//! |--------|------|--------------------------------------------------------------|
//! | 0      | 4    | `u32` payload length, at most `record_bytes_max`             |
//! | 4      | 4    | `u32` CRC-32 (IEEE, `crc32fast`) of the 8 LSN bytes ++ payload |
//! | 8      | 8    | `u64` LSN                                                    |
//! | 16     | len  | payload                                                      |
//!
//! LSNs start at 1 and are strictly consecutive across records and segments.
//! Segment sizes are soft: a batch is never split across segments, so a
//! segment holds at most `segment_bytes_max` bytes unless its first batch is
//! bigger than that. Segments are never rewritten, except that [`open`]
//! truncates a torn tail of the last one.
//!
//! # Recovery rules
//!
//! Groups are written one at a time, each with its own `fdatasync`, and the
//! next is written only after the previous one's `fdatasync` returned. So a
//! power loss can damage only the group being written, never acknowledged,
//! and the disk may have persisted its pages in any order (a later page but
//! not an earlier one: holes). Recovery tells the two apart by groups:
//!
//! * A group that fails to check (short, bad magic, length beyond the file,
//!   checksum mismatch; zero-filled holes included) in the **last** segment,
//!   with no valid group at any later offset, is a torn tail: it was never
//!   acknowledged. It is cut off, and [`open`] reports where and how much.
//! * A damaged group followed by a valid group is damage inside data a
//!   later `fdatasync` proved durable, so acknowledged: [`open`] refuses
//!   ([`WalError::Corrupt`], naming the file, the offset and what the
//!   operator can do) rather than drop acknowledged records.
//! * A damaged header of the last segment (a crash just after it was
//!   created) with no valid group after it is torn too: it is rewritten.
//! * Any damage in a segment that is not the last one is [`WalError::Corrupt`].
//! * A group whose checksum holds but whose records do not parse, or whose
//!   LSNs do not follow, is corruption (or [`WalError::Gap`]).
//!   [`open`] and [`inspect`] check a compressed group by its checksum,
//!   its chunk framing and its count without decompressing it; its
//!   records are checked by the [`replay`] that follows every open.
//! * Lengths read from disk are bounded by `record_bytes_max`, the group
//!   limit and the bytes present; nothing is allocated from an untrusted
//!   length.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::{debug, info, warn};

/// Magic bytes at the start of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"RKWAL002";
/// Segment format version written by this code. Version 3 adds write
/// groups whose records are stored LZ4-compressed in chunks; version 2
/// segments (raw groups only) are still read, and a log whose last segment
/// is version 2 continues in a new segment, so an older binary never meets
/// a compressed group in a file it thinks it can read.
pub const SEGMENT_VERSION: u32 = 3;
/// The oldest segment format version this code reads.
const SEGMENT_VERSION_OLDEST: u32 = 2;
/// Size in bytes of the header in front of every write group.
pub const GROUP_HEADER_LEN: usize = 24;
/// Largest write group, in bytes of records: a sync that would write more
/// is split into several syncs.
pub const GROUP_BYTES_MAX: usize = 256 << 20;
const GROUP_MAGIC: [u8; 4] = *b"RKGP";
/// Magic of a write group whose records are stored compressed, in chunks.
const GROUP_MAGIC_LZ4: [u8; 4] = *b"RKGZ";
/// Size in bytes of the header in front of each chunk of a compressed
/// group: `u32` length of its records, `u32` length of the LZ4 block.
pub const CHUNK_HEADER_LEN: usize = 8;
/// Read-index offsets with this bit set point at a chunk header of a
/// compressed group rather than at a record.
const CHUNK_POINT: u64 = 1 << 63;
/// The reader's index has a point at every write group's first record and
/// at every this-many records after it, so reading one record back reads at
/// most this many before it. A compressed group's chunks hold this many
/// records each, so reading one back decompresses one chunk.
pub const READ_INDEX_STRIDE: u64 = 32;
/// Size in bytes of the header at the start of every segment file.
pub const SEGMENT_HEADER_LEN: usize = 24;
/// Size in bytes of the header in front of every record's payload.
pub const RECORD_HEADER_LEN: usize = 16;
/// Default soft maximum size of one segment file: 64 MiB.
pub const DEFAULT_SEGMENT_BYTES_MAX: u64 = 64 << 20;
/// Default maximum payload size of one record: 1 MiB.
pub const DEFAULT_RECORD_BYTES_MAX: u32 = 1 << 20;

const SEGMENT_PREFIX: &str = "wal-";
const SEGMENT_SUFFIX: &str = ".log";
const SEGMENT_LSN_DIGITS: usize = 20;

/// Log sequence number: position of a record in the log; the first record is 1.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Settings of a log directory.
#[derive(Clone, Debug)]
pub struct WalConfig {
    /// Directory holding the segment files; created by [`open`] if absent.
    pub dir: PathBuf,
    /// Soft maximum size of a segment file; a new segment starts once the next batch would exceed it.
    pub segment_bytes_max: u64,
    /// Maximum payload size of one record; must never be lowered below a record already in the log.
    pub record_bytes_max: u32,
    /// Store write groups LZ4-compressed when that makes them smaller
    /// (records are repetitive: about 5x less written for credit control).
    pub compress: bool,
}

impl WalConfig {
    /// Settings for `dir` with the default sizes.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        WalConfig {
            dir: dir.into(),
            segment_bytes_max: DEFAULT_SEGMENT_BYTES_MAX,
            record_bytes_max: DEFAULT_RECORD_BYTES_MAX,
            compress: true,
        }
    }
}

/// Failure of a log operation.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// An operating-system call on a log file or directory failed.
    #[error("wal: {op} {path}: {source}")]
    Io {
        /// What was being done, e.g. "fdatasync".
        op: &'static str,
        /// File or directory the call was about.
        path: PathBuf,
        /// Error reported by the operating system.
        #[source]
        source: io::Error,
    },
    /// Damage that is not a torn tail; the log must not be used until someone looks at it.
    #[error("wal: corrupt segment {segment} at offset {offset}: {reason}")]
    Corrupt {
        /// Segment file holding the damage.
        segment: PathBuf,
        /// Byte offset of the damage in the segment file.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A payload is larger than `record_bytes_max`.
    #[error("wal: record payload of {len} bytes exceeds record_bytes_max {max}")]
    RecordTooLarge {
        /// Size of the rejected payload.
        len: usize,
        /// Configured maximum.
        max: u32,
    },
    /// LSNs are not consecutive: a segment is missing, or records were truncated away.
    #[error("wal: lsn gap at {at}: expected lsn {expected}, found {found}")]
    Gap {
        /// Segment file (or log directory) where the gap shows.
        at: PathBuf,
        /// LSN that should have come next.
        expected: Lsn,
        /// LSN actually found there.
        found: Lsn,
    },
    /// The log ends before the LSN a replay was asked to start after: durable records are missing.
    #[error("wal: log ends at lsn {last}, before the requested lsn {requested}")]
    EndsBefore {
        /// LSN the replay was asked to start after.
        requested: Lsn,
        /// Last LSN present in the log.
        last: Lsn,
    },
    /// A segment was written by an unknown format version.
    #[error("wal: segment {segment} has unsupported format version {version}")]
    UnsupportedVersion {
        /// Segment file with the unknown version.
        segment: PathBuf,
        /// Version found in its header.
        version: u32,
    },
    /// A batch handed to the writer does not start right after the last durable record.
    #[error("wal: batch out of sequence: expected first lsn {expected}, got {found}")]
    OutOfSequence {
        /// LSN the next batch must start with.
        expected: Lsn,
        /// LSN the batch starts with.
        found: Lsn,
    },
    /// No LSN is left to assign (u64 exhausted).
    #[error("wal: lsn space exhausted")]
    LsnExhausted,
    /// An earlier write or sync failed, so what is on disk is unknown; reopen the log to recover.
    #[error("wal: writer failed earlier and accepts no more writes; reopen the log")]
    Poisoned,
}

/// Failure of [`replay`]: the log's, or the callback's.
#[derive(Debug)]
pub enum ReplayError<E> {
    /// Reading or validating the log failed.
    Wal(WalError),
    /// The callback returned an error; replay stopped at that record.
    Callback(E),
}

impl<E: fmt::Display> fmt::Display for ReplayError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplayError::Wal(e) => e.fmt(f),
            ReplayError::Callback(e) => write!(f, "wal replay callback failed: {e}"),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for ReplayError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ReplayError::Wal(e) => Some(e),
            ReplayError::Callback(e) => Some(e),
        }
    }
}

impl<E> From<WalError> for ReplayError<E> {
    fn from(e: WalError) -> Self {
        ReplayError::Wal(e)
    }
}

/// Appends framed records into an in-memory batch buffer. Lives on the single writer thread: it assigns LSNs in order.
#[derive(Debug, Clone)]
pub struct WalBatch {
    // Framed records, exactly as they go to disk, so the sync thread only copies bytes.
    buf: Vec<u8>,
    // LSN of the first record of this batch (== next_lsn while empty).
    start_lsn: Lsn,
    next_lsn: Lsn,
    record_bytes_max: u32,
}

impl WalBatch {
    /// Empty batch whose first record gets `next_lsn`, accepting payloads up to [`DEFAULT_RECORD_BYTES_MAX`].
    pub fn new(next_lsn: Lsn) -> Self {
        Self::with_record_bytes_max(next_lsn, DEFAULT_RECORD_BYTES_MAX)
    }

    /// Empty batch whose first record gets `next_lsn`, accepting payloads up to `record_bytes_max`.
    pub fn with_record_bytes_max(next_lsn: Lsn, record_bytes_max: u32) -> Self {
        WalBatch {
            buf: Vec::new(),
            start_lsn: next_lsn,
            next_lsn,
            record_bytes_max,
        }
    }

    /// Frames and checksums `payload` into the buffer and returns the LSN it was given.
    pub fn push(&mut self, payload: &[u8]) -> Result<Lsn, WalError> {
        let too_large = WalError::RecordTooLarge {
            len: payload.len(),
            max: self.record_bytes_max,
        };
        let len = match u32::try_from(payload.len()) {
            Ok(len) if len <= self.record_bytes_max => len,
            _ => return Err(too_large),
        };
        let lsn = self.next_lsn;
        let next = lsn.0.checked_add(1).ok_or(WalError::LsnExhausted)?;
        self.buf.reserve(RECORD_HEADER_LEN + payload.len());
        self.buf.extend_from_slice(&len.to_le_bytes());
        self.buf
            .extend_from_slice(&record_crc(lsn.0, payload).to_le_bytes());
        self.buf.extend_from_slice(&lsn.0.to_le_bytes());
        self.buf.extend_from_slice(payload);
        self.next_lsn = Lsn(next);
        Ok(lsn)
    }

    /// True when the batch holds no record.
    pub fn is_empty(&self) -> bool {
        self.next_lsn == self.start_lsn
    }

    /// Number of records in the batch.
    pub fn len_records(&self) -> usize {
        // Bounded by the buffer size (each record takes at least 16 bytes), so it fits.
        usize::try_from(self.next_lsn.0 - self.start_lsn.0).unwrap_or(usize::MAX)
    }

    /// Number of framed bytes in the batch, i.e. what writing it adds to the segment.
    pub fn len_bytes(&self) -> usize {
        self.buf.len()
    }

    /// LSN of the first record, if any.
    pub fn first_lsn(&self) -> Option<Lsn> {
        (!self.is_empty()).then_some(self.start_lsn)
    }

    /// LSN of the last record, if any.
    pub fn last_lsn(&self) -> Option<Lsn> {
        (!self.is_empty()).then(|| Lsn(self.next_lsn.0 - 1))
    }

    /// LSN the next pushed record will get.
    pub fn next_lsn(&self) -> Lsn {
        self.next_lsn
    }

    /// The framed bytes, exactly as they will be written to the segment.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    /// The bytes this batch takes on disk as one write group (header and
    /// records): what [`WalWriter::write_and_sync`] writes, for simulators
    /// and tests that build logs in memory.
    pub fn to_group_bytes(&self, compress: bool) -> Vec<u8> {
        let mut out = Vec::new();
        encode_group(self, compress, &mut out, &mut Vec::new());
        out
    }

    /// The header of a fresh segment whose first record is `first_lsn`.
    pub fn segment_header(first_lsn: Lsn) -> [u8; SEGMENT_HEADER_LEN] {
        segment_header(first_lsn)
    }

    /// Takes the filled batch out, leaving an empty one that continues the LSN sequence.
    ///
    /// The writer keeps forming the next batch while the one taken out is being
    /// synced on another thread.
    pub fn take(&mut self) -> WalBatch {
        let empty = WalBatch::with_record_bytes_max(self.next_lsn, self.record_bytes_max);
        std::mem::replace(self, empty)
    }

    /// Appends `next`, which must directly follow this batch, so several pending batches become one write and one fsync.
    ///
    /// # Panics
    ///
    /// If `next` does not start at [`Self::next_lsn`]: merging unrelated
    /// batches would write a log with an LSN gap, which is a bug in the caller,
    /// not a condition to recover from.
    pub fn extend(&mut self, next: WalBatch) {
        assert_eq!(
            next.start_lsn, self.next_lsn,
            "WalBatch::extend: the appended batch must start at this batch's next lsn"
        );
        if self.buf.is_empty() {
            // Reuse the other buffer instead of copying into an empty one.
            self.buf = next.buf;
        } else {
            self.buf.extend_from_slice(&next.buf);
        }
        self.next_lsn = next.next_lsn;
    }
}

/// A segment file known to the writer.
#[derive(Debug)]
struct Segment {
    first_lsn: Lsn,
    path: PathBuf,
}

/// The segment being appended to.
#[derive(Debug)]
struct ActiveSegment {
    file: File,
    path: PathBuf,
    len: u64,
}

/// Where durable records can be found: a point (lsn, segment, offset of
/// the record) at each write group's first record and every
/// [`READ_INDEX_STRIDE`] records after it; readers walk forward from the
/// nearest point, never across a group header.
#[derive(Debug, Default)]
struct ReadIndex {
    points: std::collections::VecDeque<(u64, u64, u64)>,
    files: std::collections::BTreeMap<u64, Arc<File>>,
    durable: u64,
}

/// Reads durable records back by LSN while the log is being written (the
/// charging engine reads an original answer when a request is retransmitted).
/// Cloneable and usable from any thread; reads never block the writer
/// longer than a lookup in the index.
#[derive(Clone, Debug)]
pub struct WalReader {
    index: Arc<parking_lot::RwLock<ReadIndex>>,
    record_bytes_max: u32,
}

impl WalReader {
    /// The record at `lsn`, if it is durable and still in the log.
    pub fn read(&self, lsn: Lsn) -> Option<Vec<u8>> {
        let (file, mut off, mut at) = {
            let index = self.index.read();
            if lsn.0 == 0 || lsn.0 > index.durable {
                return None;
            }
            let pos = index.points.partition_point(|p| p.0 <= lsn.0);
            let (point_lsn, segment, offset) = *index.points.get(pos.checked_sub(1)?)?;
            (index.files.get(&segment)?.clone(), offset, point_lsn)
        };
        if off & CHUNK_POINT != 0 {
            return self.read_in_chunk(&file, off & !CHUNK_POINT, at, lsn.0);
        }
        let mut header = [0u8; RECORD_HEADER_LEN];
        loop {
            read_exact_at(&file, &mut header, off).ok()?;
            let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
            let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
            let found = u64::from_le_bytes(header[8..16].try_into().ok()?);
            if len > self.record_bytes_max || found != at {
                return None;
            }
            if found == lsn.0 {
                let mut payload = vec![0u8; len as usize];
                read_exact_at(&file, &mut payload, off + RECORD_HEADER_LEN as u64).ok()?;
                return (record_crc(found, &payload) == crc).then_some(payload);
            }
            off += (RECORD_HEADER_LEN as u64) + len as u64;
            at += 1;
            if at > lsn.0 {
                return None;
            }
        }
    }

    /// The record `lsn` from the compressed chunk at `off` whose first
    /// record is `first`.
    fn read_in_chunk(&self, file: &File, off: u64, first: u64, lsn: u64) -> Option<Vec<u8>> {
        let mut h = [0u8; CHUNK_HEADER_LEN];
        read_exact_at(file, &mut h, off).ok()?;
        let raw = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
        let stored = u32::from_le_bytes([h[4], h[5], h[6], h[7]]) as usize;
        let most =
            READ_INDEX_STRIDE as usize * (RECORD_HEADER_LEN + self.record_bytes_max as usize);
        if raw > most.min(GROUP_BYTES_MAX) || stored > GROUP_BYTES_MAX {
            return None;
        }
        let mut src = vec![0u8; stored];
        read_exact_at(file, &mut src, off + CHUNK_HEADER_LEN as u64).ok()?;
        let records = lz4_flex::block::decompress(&src, raw).ok()?;
        let (mut at, mut found) = (0, first);
        while at < records.len() {
            let rec = parse_record(&records, at, self.record_bytes_max).ok()?;
            if rec.lsn != found {
                return None;
            }
            if found == lsn {
                return Some(rec.payload.to_vec());
            }
            at = rec.end;
            found += 1;
        }
        None
    }

    /// The last durable LSN.
    pub fn durable_lsn(&self) -> Lsn {
        Lsn(self.index.read().durable)
    }
}

#[cfg(unix)]
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    file.read_exact_at(buf, offset)
}

#[cfg(not(unix))]
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    use std::os::windows::fs::FileExt;
    let mut done = 0;
    while done < buf.len() {
        let n = file.seek_read(&mut buf[done..], offset + done as u64)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        done += n;
    }
    Ok(())
}

/// Encodes `batch` as one write group into `out` (cleared first): its
/// records compressed in chunks of [`READ_INDEX_STRIDE`] when `compress`
/// and that is smaller, as they are otherwise. `points` gets the read-index
/// points (lsn, offset from the group's start, [`CHUNK_POINT`] set for a
/// chunk).
fn encode_group(batch: &WalBatch, compress: bool, out: &mut Vec<u8>, points: &mut Vec<(u64, u64)>) {
    let records = batch.as_bytes();
    let count = batch.len_records() as u32;
    let first = batch.start_lsn.0;
    out.clear();
    points.clear();
    if compress && encode_chunks(records, first, out, points) {
        let header = group_header(GROUP_MAGIC_LZ4, first, count, &out[GROUP_HEADER_LEN..]);
        out[..GROUP_HEADER_LEN].copy_from_slice(&header);
        return;
    }
    out.clear();
    points.clear();
    out.extend_from_slice(&group_header(GROUP_MAGIC, first, count, records));
    out.extend_from_slice(records);
    let mut off = 0usize;
    let mut lsn = first;
    while off + RECORD_HEADER_LEN <= records.len() {
        if (lsn - first).is_multiple_of(READ_INDEX_STRIDE) {
            points.push((lsn, (GROUP_HEADER_LEN + off) as u64));
        }
        off += RECORD_HEADER_LEN + record_len(records, off);
        lsn += 1;
    }
}

/// The payload length in the record header at `off` of framed records the
/// writer built (trusted: never from disk).
fn record_len(records: &[u8], off: usize) -> usize {
    u32::from_le_bytes([
        records[off],
        records[off + 1],
        records[off + 2],
        records[off + 3],
    ]) as usize
}

/// Writes a group header's room and then `records` as LZ4 chunks of
/// [`READ_INDEX_STRIDE`] records into `out`; false when that is not
/// smaller than the records themselves.
fn encode_chunks(
    records: &[u8],
    first: u64,
    out: &mut Vec<u8>,
    points: &mut Vec<(u64, u64)>,
) -> bool {
    out.resize(GROUP_HEADER_LEN, 0);
    let mut off = 0usize;
    let mut lsn = first;
    while off < records.len() {
        let start = off;
        let chunk_lsn = lsn;
        while off + RECORD_HEADER_LEN <= records.len() && lsn - chunk_lsn < READ_INDEX_STRIDE {
            off += RECORD_HEADER_LEN + record_len(records, off);
            lsn += 1;
        }
        let src = &records[start..off];
        let at = out.len();
        points.push((chunk_lsn, at as u64 | CHUNK_POINT));
        out.resize(
            at + CHUNK_HEADER_LEN + lz4_flex::block::get_maximum_output_size(src.len()),
            0,
        );
        let Ok(n) = lz4_flex::block::compress_into(src, &mut out[at + CHUNK_HEADER_LEN..]) else {
            return false;
        };
        out.truncate(at + CHUNK_HEADER_LEN + n);
        out[at..at + 4].copy_from_slice(&(src.len() as u32).to_le_bytes());
        out[at + 4..at + 8].copy_from_slice(&(n as u32).to_le_bytes());
        if out.len() >= GROUP_HEADER_LEN + records.len() {
            return false;
        }
    }
    true
}

/// The file side: owns the segment files; lives on the sync thread.
#[derive(Debug)]
pub struct WalWriter {
    index: Arc<parking_lot::RwLock<ReadIndex>>,
    dir: PathBuf,
    segment_bytes_max: u64,
    record_bytes_max: u32,
    // Oldest first; the last one is the active segment.
    segments: Vec<Segment>,
    active: Option<ActiveSegment>,
    last_durable: Lsn,
    // Set after a failed write or sync: the file state is then unknown (a failed
    // fsync may have dropped dirty pages), so only a fresh `open` can tell.
    poisoned: bool,
    compress: bool,
    // The group being written and its read-index points, kept for their capacity.
    group: Vec<u8>,
    points: Vec<(u64, u64)>,
}

impl WalWriter {
    /// Writes the batch to the current segment (rolling to a new one first if it would exceed `segment_bytes_max`), then fdatasyncs; returns when durable.
    ///
    /// A batch is never split across segments, so a segment may exceed the
    /// maximum by one batch. When a new segment file is created the directory
    /// is fsynced too, so the file's existence is durable. An empty batch is a
    /// no-op. After an I/O error the writer is poisoned and every later call
    /// fails with [`WalError::Poisoned`].
    pub fn write_and_sync(&mut self, batch: &WalBatch) -> Result<(), WalError> {
        if self.poisoned {
            return Err(WalError::Poisoned);
        }
        let Some(last) = batch.last_lsn() else {
            return Ok(());
        };
        if batch.len_bytes() > GROUP_BYTES_MAX {
            return Err(WalError::RecordTooLarge {
                len: batch.len_bytes(),
                max: GROUP_BYTES_MAX as u32,
            });
        }
        // An empty log may start at any LSN (e.g. a snapshot restored without its
        // log); otherwise the batch must continue the log exactly.
        let expected = Lsn(self.last_durable.0.saturating_add(1));
        let in_sequence = if self.segments.is_empty() {
            batch.start_lsn.0 >= 1
        } else {
            batch.start_lsn == expected
        };
        if !in_sequence {
            return Err(WalError::OutOfSequence {
                expected,
                found: batch.start_lsn,
            });
        }
        let result = self.write_inner(batch);
        if result.is_err() {
            self.poisoned = true;
        } else {
            self.last_durable = last;
        }
        result
    }

    fn write_inner(&mut self, batch: &WalBatch) -> Result<(), WalError> {
        encode_group(batch, self.compress, &mut self.group, &mut self.points);
        let batch_len = self.group.len() as u64;
        let roll = match &self.active {
            None => true,
            // Only roll a segment that holds records: a batch bigger than the
            // maximum would otherwise roll forever, creating empty segments.
            Some(a) => {
                a.len > SEGMENT_HEADER_LEN as u64
                    && a.len.saturating_add(batch_len) > self.segment_bytes_max
            }
        };
        if roll {
            self.roll(batch.start_lsn)?;
        }
        let Some(active) = self.active.as_mut() else {
            // roll() always installs an active segment; stay panic-free anyway.
            return Err(WalError::Io {
                op: "write (no active segment)",
                path: self.dir.clone(),
                source: io::Error::other("no active segment"),
            });
        };
        let segment = self.segments.last().map_or(0, |s| s.first_lsn.0);
        // One group per fdatasync: recovery relies on it (module doc).
        active
            .file
            .write_all(&self.group)
            .map_err(io_err("write", &active.path))?;
        active
            .file
            .sync_data()
            .map_err(io_err("fdatasync", &active.path))?;
        let group_offset = active.len;
        active.len += self.group.len() as u64;
        let mut index = self.index.write();
        index.points.extend(self.points.iter().map(|&(lsn, rel)| {
            (
                lsn,
                segment,
                (group_offset + (rel & !CHUNK_POINT)) | (rel & CHUNK_POINT),
            )
        }));
        index.durable = batch.last_lsn().map_or(index.durable, |l| l.0);
        Ok(())
    }

    /// Creates the segment whose first record is `first_lsn` and makes it the active one.
    fn roll(&mut self, first_lsn: Lsn) -> Result<(), WalError> {
        let path = segment_path(&self.dir, first_lsn);
        // create_new: an existing file with this name would hold records we
        // must not overwrite.
        let mut file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err("create", &path))?;
        file.write_all(&segment_header(first_lsn))
            .map_err(io_err("write header", &path))?;
        // The header reaches the disk with the first batch's fdatasync; the
        // directory entry needs its own fsync.
        sync_dir(&self.dir)?;
        debug!(segment = %path.display(), first_lsn = first_lsn.0, "wal: new segment");
        let reader = File::open(&path).map_err(io_err("open for reading", &path))?;
        self.index
            .write()
            .files
            .insert(first_lsn.0, Arc::new(reader));
        self.segments.push(Segment {
            first_lsn,
            path: path.clone(),
        });
        self.active = Some(ActiveSegment {
            file,
            path,
            len: SEGMENT_HEADER_LEN as u64,
        });
        Ok(())
    }

    /// Deletes whole segments whose records all have lsn <= `upto` (made redundant by a checkpoint); never the active segment. Returns how many were deleted.
    pub fn remove_segments_upto(&mut self, upto: Lsn) -> Result<usize, WalError> {
        if self.poisoned {
            return Err(WalError::Poisoned);
        }
        // A segment's last LSN is the next segment's first minus one, so only
        // segments with a successor qualify, which keeps the active one.
        let mut count = 0;
        while self.segments.len() >= 2 {
            let next_first = self.segments[1].first_lsn.0;
            if next_first.saturating_sub(1) > upto.0 {
                break;
            }
            // Oldest first, so a crash midway leaves a log without holes.
            let path = &self.segments[0].path;
            fs::remove_file(path).map_err(io_err("remove", path))?;
            info!(segment = %path.display(), "wal: removed segment");
            let first = self.segments[0].first_lsn.0;
            {
                let mut index = self.index.write();
                index.files.remove(&first);
                while index.points.front().is_some_and(|p| p.1 == first) {
                    index.points.pop_front();
                }
            }
            self.segments.remove(0);
            count += 1;
        }
        if count > 0 {
            // Not needed for correctness (deletion is idempotent), but keeps a
            // crash from resurrecting files a caller believes are gone.
            sync_dir(&self.dir)?;
        }
        Ok(count)
    }

    /// LSN of the last record known durable (0 if the log is empty).
    pub fn last_durable_lsn(&self) -> Lsn {
        self.last_durable
    }

    /// A reader of this log's durable records.
    pub fn reader(&self) -> WalReader {
        WalReader {
            index: self.index.clone(),
            record_bytes_max: self.record_bytes_max,
        }
    }

    /// First LSN of the oldest segment still in the log (records before it
    /// were removed).
    pub fn first_lsn(&self) -> Option<Lsn> {
        self.segments.first().map(|s| s.first_lsn)
    }

    /// Each segment's first LSN and file, oldest first.
    pub fn segment_files(&self) -> Vec<(Lsn, PathBuf)> {
        self.segments
            .iter()
            .map(|s| (s.first_lsn, s.path.clone()))
            .collect()
    }

    /// Empty batch that continues this log, with the configured record size limit.
    pub fn new_batch(&self) -> WalBatch {
        WalBatch::with_record_bytes_max(
            Lsn(self.last_durable.0.saturating_add(1)),
            self.record_bytes_max,
        )
    }
}

/// What opening found.
#[derive(Debug)]
pub struct WalOpened {
    /// Writer positioned at the end of the log.
    pub writer: WalWriter,
    /// LSN of the last record in the log (0 if empty).
    pub last_lsn: Lsn,
    /// Bytes cut off the tail of the last segment (0 if it was clean).
    pub torn_tail_bytes: u64,
    /// LSN of the first record still in the log, if it has any.
    pub first_lsn: Option<Lsn>,
}

/// A torn tail a start would cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// The last segment.
    pub segment: PathBuf,
    /// Where the valid part ends.
    pub offset: u64,
    /// Bytes after it (never acknowledged).
    pub bytes: u64,
    /// Whether the segment's own header is torn too (it is rewritten).
    pub header: bool,
}

/// What a log directory holds, found without changing anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalInspection {
    /// Segment files.
    pub segments: usize,
    /// Bytes in them.
    pub bytes: u64,
    /// LSN of the first record still in the log, if it has any.
    pub first_lsn: Option<Lsn>,
    /// LSN of the last record (0 if empty), after any torn tail.
    pub last_lsn: Lsn,
    /// The torn tail a start would cut, if any.
    pub torn_tail: Option<TornTail>,
}

/// Validates every segment of the log without writing anything: what
/// [`open`] would keep, cut or refuse (its errors are [`open`]'s). A missing
/// directory is an empty log.
pub fn inspect(cfg: &WalConfig) -> Result<WalInspection, WalError> {
    inspect_indexing(cfg).map(|(found, _)| found)
}

/// [`inspect`], with the read-index points of each segment.
#[allow(clippy::type_complexity)]
fn inspect_indexing(
    cfg: &WalConfig,
) -> Result<(WalInspection, Vec<(u64, Vec<(u64, u64)>)>), WalError> {
    let mut all_points = Vec::new();
    if !cfg.dir.exists() {
        return Ok((
            WalInspection {
                segments: 0,
                bytes: 0,
                first_lsn: None,
                last_lsn: Lsn(0),
                torn_tail: None,
            },
            all_points,
        ));
    }
    let segments = list_segments(&cfg.dir)?;
    let mut buf = Vec::new();
    let mut next_lsn: Option<u64> = None;
    let mut torn_tail = None;
    let mut bytes = 0u64;
    for (i, seg) in segments.iter().enumerate() {
        if let Some(expected) = next_lsn {
            if seg.first_lsn.0 != expected {
                return Err(WalError::Gap {
                    at: seg.path.clone(),
                    expected: Lsn(expected),
                    found: seg.first_lsn,
                });
            }
        }
        let is_last = i + 1 == segments.len();
        let mut file = File::open(&seg.path).map_err(io_err("open", &seg.path))?;
        read_whole(&mut file, &seg.path, &mut buf)?;
        bytes += buf.len() as u64;
        let mut points = Vec::new();
        let checked = check_segment_indexing(
            &seg.path,
            &buf,
            seg.first_lsn.0,
            cfg.record_bytes_max,
            is_last,
            &mut points,
        )?;
        all_points.push((seg.first_lsn.0, points));
        if is_last && !(checked.header_ok && checked.valid_len == buf.len()) {
            torn_tail = Some(TornTail {
                segment: seg.path.clone(),
                offset: checked.valid_len as u64,
                bytes: (buf.len() - checked.valid_len) as u64,
                header: !checked.header_ok,
            });
        }
        next_lsn = Some(checked.next_lsn);
    }
    let last_lsn = Lsn(next_lsn.map_or(0, |n| n - 1));
    let first_lsn = segments
        .first()
        .map(|s| s.first_lsn)
        .filter(|first| *first <= last_lsn);
    Ok((
        WalInspection {
            segments: segments.len(),
            bytes,
            first_lsn,
            last_lsn,
            torn_tail,
        },
        all_points,
    ))
}

/// Opens (creating if absent) the log directory: validates all segments,
/// cuts a torn tail of the last one (and fsyncs that), errors on any other
/// damage (see [`inspect`]).
pub fn open(cfg: &WalConfig) -> Result<WalOpened, WalError> {
    ensure_dir(&cfg.dir)?;
    let (found, segment_points) = inspect_indexing(cfg)?;
    let segments = list_segments(&cfg.dir)?;
    let mut index = ReadIndex {
        durable: found.last_lsn.0,
        ..ReadIndex::default()
    };
    for (segment, points) in segment_points {
        let path = segments
            .iter()
            .find(|s| s.first_lsn.0 == segment)
            .map(|s| s.path.clone())
            .unwrap_or_default();
        let file = File::open(&path).map_err(io_err("open for reading", &path))?;
        index.files.insert(segment, Arc::new(file));
        index.points.extend(
            points
                .into_iter()
                .filter(|(lsn, _)| *lsn <= found.last_lsn.0)
                .map(|(lsn, off)| (lsn, segment, off)),
        );
    }
    let mut torn_tail_bytes = 0;
    let mut active = None;
    if let Some(last) = segments.last() {
        // Read-write: the tail may need cutting, and the writer appends here.
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&last.path)
            .map_err(io_err("open", &last.path))?;
        let mut len = file.metadata().map_err(io_err("stat", &last.path))?.len();
        if let Some(torn) = &found.torn_tail {
            torn_tail_bytes = torn.bytes;
            warn!(
                segment = %torn.segment.display(),
                offset = torn.offset,
                bytes = torn.bytes,
                "wal: cutting a torn tail (a write group that was never acknowledged)"
            );
            file.set_len(torn.offset)
                .map_err(io_err("truncate", &last.path))?;
            len = torn.offset;
            if torn.header {
                // A crash right after the segment was created: give it the
                // header it should have, so the writer can continue in it.
                file.write_all(&segment_header(last.first_lsn))
                    .map_err(io_err("write header", &last.path))?;
                len = SEGMENT_HEADER_LEN as u64;
            }
            // fsync, not fdatasync: the file size changed.
            file.sync_all().map_err(io_err("fsync", &last.path))?;
        }
        let mut version = [0u8; 4];
        read_exact_at(&file, &mut version, 8).map_err(io_err("read header", &last.path))?;
        if u32::from_le_bytes(version) != SEGMENT_VERSION {
            if len == SEGMENT_HEADER_LEN as u64 {
                // No records yet: it takes this version's header.
                file.set_len(0).map_err(io_err("truncate", &last.path))?;
                file.write_all(&segment_header(last.first_lsn))
                    .map_err(io_err("write header", &last.path))?;
                file.sync_all().map_err(io_err("fsync", &last.path))?;
            } else {
                // An older version's segment is never appended to: the
                // next write starts a segment of this version.
                info!(segment = %last.path.display(), "wal: continuing an older format's log in a new segment");
                len = u64::MAX;
            }
        }
        active = (len != u64::MAX).then(|| ActiveSegment {
            file,
            path: last.path.clone(),
            len,
        });
    }
    let last_lsn = found.last_lsn;
    let first_lsn = found.first_lsn;
    info!(
        dir = %cfg.dir.display(),
        segments = segments.len(),
        last_lsn = last_lsn.0,
        torn_tail_bytes,
        "wal: opened"
    );
    Ok(WalOpened {
        writer: WalWriter {
            index: Arc::new(parking_lot::RwLock::new(index)),
            dir: cfg.dir.clone(),
            segment_bytes_max: cfg.segment_bytes_max,
            record_bytes_max: cfg.record_bytes_max,
            segments,
            active,
            last_durable: last_lsn,
            poisoned: false,
            compress: cfg.compress,
            group: Vec::new(),
            points: Vec::new(),
        },
        last_lsn,
        torn_tail_bytes,
        first_lsn,
    })
}

/// A reader of a log's durable records without opening it for writing
/// (nothing is cut or created): for offline checks.
pub fn open_reader(cfg: &WalConfig) -> Result<WalReader, WalError> {
    let (found, segment_points) = inspect_indexing(cfg)?;
    let segments = if cfg.dir.exists() {
        list_segments(&cfg.dir)?
    } else {
        Vec::new()
    };
    let mut index = ReadIndex {
        durable: found.last_lsn.0,
        ..ReadIndex::default()
    };
    for (segment, points) in segment_points {
        let Some(path) = segments
            .iter()
            .find(|s| s.first_lsn.0 == segment)
            .map(|s| s.path.clone())
        else {
            continue;
        };
        let file = File::open(&path).map_err(io_err("open for reading", &path))?;
        index.files.insert(segment, Arc::new(file));
        index.points.extend(
            points
                .into_iter()
                .filter(|(lsn, _)| *lsn <= found.last_lsn.0)
                .map(|(lsn, off)| (lsn, segment, off)),
        );
    }
    Ok(WalReader {
        index: Arc::new(parking_lot::RwLock::new(index)),
        record_bytes_max: cfg.record_bytes_max,
    })
}

/// Reads all records with lsn > `after`, in order, calling `f(lsn, payload)`; returns the last LSN of the log.
///
/// Call it after [`open`] and before writing: it expects a clean log (any
/// damage, even at the tail, is an error) and no concurrent appends. Fails
/// with [`WalError::Gap`] if the log starts after `after + 1` (it was
/// truncated past the requested point) and with [`WalError::EndsBefore`] if it
/// ends before `after`. An empty log returns `after`.
pub fn replay<E>(
    cfg: &WalConfig,
    after: Lsn,
    f: impl FnMut(Lsn, &[u8]) -> Result<(), E>,
) -> Result<Lsn, ReplayError<E>> {
    replay_upto(cfg, after, Lsn(u64::MAX), f)
}

/// [`replay`], stopping after the write group that holds `upto`: a log
/// whose torn tail was found by [`inspect`] but not cut is replayed up to
/// its last valid record without reading the torn part.
///
/// Two threads: one reads, checks and decompresses the log ahead, the
/// caller's applies the records (`f`), so recovery's decoding and applying
/// get a core of their own. Records reach `f` in order, and exactly as a
/// single thread would hand them out: a damaged group stops the replay
/// after the records before it.
pub fn replay_upto<E>(
    cfg: &WalConfig,
    after: Lsn,
    upto: Lsn,
    mut f: impl FnMut(Lsn, &[u8]) -> Result<(), E>,
) -> Result<Lsn, ReplayError<E>> {
    let (pieces_tx, pieces_rx) = crossbeam_channel::bounded::<Piece>(4);
    let (spare_tx, spare_rx) = crossbeam_channel::bounded::<Piece>(8);
    std::thread::scope(|scope| {
        // The reader's sender closes the channel when it returns, after
        // the pieces read before any damage it found.
        let reader = std::thread::Builder::new()
            .name("reckon-wal-read".into())
            .spawn_scoped(scope, move || {
                read_ahead(cfg, after, upto, &pieces_tx, &spare_rx)
            })
            .map_err(io_err("spawn the log reader", &cfg.dir))?;
        let mut failed = None;
        for piece in pieces_rx.iter() {
            for &(lsn, start, len) in &piece.records {
                if let Err(e) = f(Lsn(lsn), &piece.data[start..start + len]) {
                    failed = Some(e);
                    break;
                }
            }
            if failed.is_some() {
                break;
            }
            let _ = spare_tx.try_send(piece);
        }
        // Stops the reader at its next send.
        drop(pieces_rx);
        let read = reader.join().unwrap_or_else(|_| {
            Err(WalError::Io {
                op: "read the log (the reader thread panicked)",
                path: cfg.dir.clone(),
                source: io::Error::other("log reader panicked"),
            })
        });
        match (failed, read) {
            (Some(e), _) => Err(ReplayError::Callback(e)),
            (None, Err(e)) => Err(e.into()),
            (None, Ok(last)) => Ok(last),
        }
    })
}

/// Records read ahead of the replay: their bytes and (lsn, offset, length)
/// in them.
#[derive(Default)]
struct Piece {
    data: Vec<u8>,
    records: Vec<(u64, usize, usize)>,
}

/// Bytes of records gathered before a piece goes to the applying thread.
const PIECE_BYTES: usize = 1 << 20;

/// The reading half of [`replay_upto`]: checks the log as it goes and
/// sends the records after `after` in pieces; returns the last LSN.
fn read_ahead(
    cfg: &WalConfig,
    after: Lsn,
    upto: Lsn,
    out: &crossbeam_channel::Sender<Piece>,
    spare: &crossbeam_channel::Receiver<Piece>,
) -> Result<Lsn, WalError> {
    let segments = list_segments(&cfg.dir)?;
    let Some(first) = segments.first() else {
        return Ok(after);
    };
    let wanted = after.0.saturating_add(1);
    if first.first_lsn.0 > wanted {
        return Err(WalError::Gap {
            at: cfg.dir.clone(),
            expected: Lsn(wanted),
            found: first.first_lsn,
        });
    }
    // Skip, unread, the segments whose records all precede `wanted`.
    let start = segments
        .partition_point(|s| s.first_lsn.0 <= wanted)
        .saturating_sub(1);
    let mut buf = Vec::new();
    let (mut scratch, mut chunks) = (Vec::new(), Vec::new());
    let mut piece = Piece::default();
    let mut expected = segments[start].first_lsn.0;
    // False once the applying side has stopped listening.
    let send = |piece: &mut Piece, force: bool| -> bool {
        if piece.records.is_empty() || (!force && piece.data.len() < PIECE_BYTES) {
            return true;
        }
        let mut next = spare.try_recv().unwrap_or_default();
        next.data.clear();
        next.records.clear();
        out.send(std::mem::replace(piece, next)).is_ok()
    };
    for seg in &segments[start..] {
        if seg.first_lsn.0 != expected {
            return Err(WalError::Gap {
                at: seg.path.clone(),
                expected: Lsn(expected),
                found: seg.first_lsn,
            });
        }
        let mut file = File::open(&seg.path).map_err(io_err("open", &seg.path))?;
        read_whole(&mut file, &seg.path, &mut buf)?;
        match check_header(&buf, seg.first_lsn.0) {
            HeaderCheck::Valid => {}
            bad => return Err(header_error(&seg.path, bad)),
        }
        let mut off = SEGMENT_HEADER_LEN;
        while off < buf.len() {
            let group =
                parse_group(&buf, off).map_err(|why| corrupt(&seg.path, off as u64, why.into()))?;
            let records = group_records(&buf, &group, &mut scratch, &mut chunks)
                .map_err(|why| corrupt(&seg.path, off as u64, why.into()))?;
            check_group_start(&seg.path, off, &group, expected, records.len())?;
            let misplaced = || {
                corrupt(
                    &seg.path,
                    off as u64,
                    "a chunk of the compressed group does not begin at its records".into(),
                )
            };
            let mut at = 0;
            let mut chunk = 0;
            while at < records.len() {
                let rec = parse_record(records, at, cfg.record_bytes_max).map_err(|bad| {
                    record_error(&seg.path, file_offset(&group, off, at), bad, cfg)
                })?;
                // Chunk k of a compressed group begins at its record 32 k:
                // readers by LSN start there, and the open's check did not
                // decompress to see it.
                match chunks.get(chunk) {
                    Some(&(first, _)) if first == at => {
                        if rec.lsn != group.first_lsn + chunk as u64 * READ_INDEX_STRIDE {
                            return Err(misplaced());
                        }
                        chunk += 1;
                    }
                    Some(&(first, _)) if first < at => return Err(misplaced()),
                    _ => {}
                }
                if rec.lsn != expected {
                    return Err(WalError::Gap {
                        at: seg.path.clone(),
                        expected: Lsn(expected),
                        found: Lsn(rec.lsn),
                    });
                }
                if rec.lsn > after.0 {
                    let start = piece.data.len();
                    piece.data.extend_from_slice(rec.payload);
                    piece.records.push((rec.lsn, start, rec.payload.len()));
                }
                expected = next_lsn_after(&seg.path, file_offset(&group, off, at), rec.lsn)?;
                at = rec.end;
            }
            if chunk != chunks.len() {
                return Err(misplaced());
            }
            off = group.end;
            if !send(&mut piece, false) {
                return Ok(Lsn(expected - 1));
            }
            if expected > upto.0 {
                send(&mut piece, true);
                return Ok(Lsn(expected - 1));
            }
        }
    }
    send(&mut piece, true);
    let last = Lsn(expected - 1);
    if last < after {
        return Err(WalError::EndsBefore {
            requested: after,
            last,
        });
    }
    Ok(last)
}

/// Where a record at `at` of a group's records is reported in its file:
/// its own offset in a raw group, the group's in a compressed one.
fn file_offset(group: &Group, group_offset: usize, at: usize) -> usize {
    if group.compressed {
        group_offset
    } else {
        group.start + at
    }
}

/// CRC of a record: covers the LSN so a record copied to the wrong place fails.
fn record_crc(lsn: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&lsn.to_le_bytes());
    h.update(payload);
    h.finalize()
}

fn header_crc(magic_version: &[u8], first_lsn: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(magic_version);
    h.update(first_lsn);
    h.finalize()
}

fn segment_header(first_lsn: Lsn) -> [u8; SEGMENT_HEADER_LEN] {
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    h[..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&first_lsn.0.to_le_bytes());
    let crc = header_crc(&h[..12], &h[16..24]);
    h[12..16].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Verdict on a segment header.
enum HeaderCheck {
    Valid,
    /// Short or failing its checksum: possibly a torn write.
    Damaged(&'static str),
    /// Intact, but written by a format version we do not know.
    Unsupported(u32),
    /// Intact, but for a different first LSN than the file name says.
    WrongLsn(u64),
}

fn check_header(buf: &[u8], first_lsn: u64) -> HeaderCheck {
    let Some(h) = buf
        .get(..SEGMENT_HEADER_LEN)
        .and_then(|h| <&[u8; SEGMENT_HEADER_LEN]>::try_from(h).ok())
    else {
        return HeaderCheck::Damaged("segment shorter than its header");
    };
    if h[..8] != SEGMENT_MAGIC {
        return HeaderCheck::Damaged("bad segment magic");
    }
    let stored = u32::from_le_bytes([h[12], h[13], h[14], h[15]]);
    if stored != header_crc(&h[..12], &h[16..24]) {
        return HeaderCheck::Damaged("segment header checksum mismatch");
    }
    let version = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    if !(SEGMENT_VERSION_OLDEST..=SEGMENT_VERSION).contains(&version) {
        return HeaderCheck::Unsupported(version);
    }
    let lsn = u64::from_le_bytes([h[16], h[17], h[18], h[19], h[20], h[21], h[22], h[23]]);
    if lsn != first_lsn {
        return HeaderCheck::WrongLsn(lsn);
    }
    HeaderCheck::Valid
}

fn header_error(path: &Path, bad: HeaderCheck) -> WalError {
    match bad {
        HeaderCheck::Valid => corrupt(path, 0, "internal: valid header reported as error".into()),
        HeaderCheck::Damaged(why) => corrupt(path, 0, why.into()),
        HeaderCheck::Unsupported(version) => WalError::UnsupportedVersion {
            segment: path.to_path_buf(),
            version,
        },
        HeaderCheck::WrongLsn(lsn) => corrupt(
            path,
            16,
            format!("header says first lsn {lsn}, the file name says otherwise"),
        ),
    }
}

fn group_crc(header: &[u8], body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(header);
    h.update(body);
    h.finalize()
}

fn group_header(magic: [u8; 4], first_lsn: u64, count: u32, body: &[u8]) -> [u8; GROUP_HEADER_LEN] {
    let mut h = [0u8; GROUP_HEADER_LEN];
    h[..4].copy_from_slice(&magic);
    h[4..8].copy_from_slice(&(body.len() as u32).to_le_bytes());
    h[8..16].copy_from_slice(&first_lsn.to_le_bytes());
    h[16..20].copy_from_slice(&count.to_le_bytes());
    let crc = group_crc(&h[..20], body);
    h[20..24].copy_from_slice(&crc.to_le_bytes());
    h
}

/// A write group whose header and checksum hold, in place.
struct Group {
    first_lsn: u64,
    count: u32,
    /// Whether its body is LZ4 chunks rather than records.
    compressed: bool,
    /// Offset of its body (just past the header).
    start: usize,
    /// Offset just past the group.
    end: usize,
}

/// Checks the group at `off`: complete, within bounds, checksum intact.
fn parse_group(buf: &[u8], off: usize) -> Result<Group, &'static str> {
    let h = off
        .checked_add(GROUP_HEADER_LEN)
        .and_then(|end| buf.get(off..end))
        .ok_or("truncated write group header")?;
    let compressed = match [h[0], h[1], h[2], h[3]] {
        GROUP_MAGIC => false,
        GROUP_MAGIC_LZ4 => true,
        _ => return Err("no write group here (bad magic)"),
    };
    let len = u32::from_le_bytes([h[4], h[5], h[6], h[7]]) as usize;
    let first_lsn = u64::from_le_bytes([h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]]);
    let count = u32::from_le_bytes([h[16], h[17], h[18], h[19]]);
    let crc = u32::from_le_bytes([h[20], h[21], h[22], h[23]]);
    if len > GROUP_BYTES_MAX {
        return Err("write group length beyond the limit");
    }
    let start = off + GROUP_HEADER_LEN;
    let body = start
        .checked_add(len)
        .and_then(|end| buf.get(start..end))
        .ok_or("truncated write group")?;
    if group_crc(&h[..20], body) != crc {
        return Err("write group checksum mismatch");
    }
    Ok(Group {
        first_lsn,
        count,
        compressed,
        start,
        end: start + len,
    })
}

/// The records of a checked group, framed: in place for a raw group,
/// decompressed into `scratch` for a compressed one. `chunks` gets the
/// offset of each chunk's first record in the records and of its header in
/// `buf`. Lengths are bounded before anything is allocated.
fn group_records<'a>(
    buf: &'a [u8],
    group: &Group,
    scratch: &'a mut Vec<u8>,
    chunks: &mut Vec<(usize, usize)>,
) -> Result<&'a [u8], &'static str> {
    chunks.clear();
    if !group.compressed {
        return Ok(&buf[group.start..group.end]);
    }
    scratch.clear();
    for_each_chunk(buf, group, |header, raw, src| {
        chunks.push((scratch.len(), header));
        let at = scratch.len();
        scratch.resize(at + raw, 0);
        match lz4_flex::block::decompress_into(src, &mut scratch[at..]) {
            Ok(n) if n == raw => Ok(()),
            _ => Err("chunk does not decompress to its length"),
        }
    })?;
    Ok(&scratch[..])
}

/// Walks the chunks of a checked compressed group: `f(header offset,
/// records length, LZ4 block)` for each, in order; returns the length of
/// all its records. Chunks must tile the body exactly.
fn for_each_chunk<'a>(
    buf: &'a [u8],
    group: &Group,
    mut f: impl FnMut(usize, usize, &'a [u8]) -> Result<(), &'static str>,
) -> Result<usize, &'static str> {
    let mut total = 0usize;
    let mut p = group.start;
    while p < group.end {
        let h = buf
            .get(p..p + CHUNK_HEADER_LEN)
            .filter(|_| p + CHUNK_HEADER_LEN <= group.end)
            .ok_or("truncated chunk header")?;
        let raw = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
        let stored = u32::from_le_bytes([h[4], h[5], h[6], h[7]]) as usize;
        if raw == 0 || total + raw > GROUP_BYTES_MAX {
            return Err("chunk length beyond the limit");
        }
        let from = p + CHUNK_HEADER_LEN;
        let src = from
            .checked_add(stored)
            .filter(|end| *end <= group.end)
            .and_then(|end| buf.get(from..end))
            .ok_or("truncated chunk")?;
        f(p, raw, src)?;
        total += raw;
        p = from + stored;
    }
    Ok(total)
}

/// A group that checks must start where the log is and hold what it says
/// (`records`: the length of its records, decompressed).
fn check_group_start(
    path: &Path,
    off: usize,
    group: &Group,
    expected: u64,
    records: usize,
) -> Result<(), WalError> {
    if group.first_lsn != expected {
        return Err(WalError::Gap {
            at: path.to_path_buf(),
            expected: Lsn(expected),
            found: Lsn(group.first_lsn),
        });
    }
    // Every record takes at least its header: a count beyond that is a lie.
    if group.count == 0 || group.count as usize > records / RECORD_HEADER_LEN {
        return Err(corrupt(
            path,
            off as u64,
            format!(
                "write group claims {} records in {records} bytes",
                group.count
            ),
        ));
    }
    Ok(())
}

/// A record parsed in place.
struct Record<'a> {
    lsn: u64,
    payload: &'a [u8],
    /// Offset just past the record.
    end: usize,
}

/// Why the bytes at an offset are not a usable record.
enum BadRecord {
    /// Not a complete, checksummed record: torn or damaged.
    Invalid(&'static str),
    /// A complete, checksummed record longer than `record_bytes_max`: the limit
    /// was lowered. Reported as corruption so such a record is never cut as a
    /// torn tail.
    Oversized(u32),
}

fn record_header(buf: &[u8], off: usize) -> Option<(u32, u32, u64)> {
    let end = off.checked_add(RECORD_HEADER_LEN)?;
    let h = <&[u8; RECORD_HEADER_LEN]>::try_from(buf.get(off..end)?).ok()?;
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    let lsn = u64::from_le_bytes([h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]]);
    Some((len, crc, lsn))
}

fn parse_record(buf: &[u8], off: usize, max: u32) -> Result<Record<'_>, BadRecord> {
    let (len, crc, lsn) =
        record_header(buf, off).ok_or(BadRecord::Invalid("truncated record header"))?;
    let start = off + RECORD_HEADER_LEN;
    // Only slices of bytes already read: a damaged length never drives an allocation.
    let payload = usize::try_from(len)
        .ok()
        .and_then(|l| start.checked_add(l))
        .and_then(|end| buf.get(start..end));
    let Some(payload) = payload else {
        return Err(BadRecord::Invalid(if len > max {
            "record length exceeds record_bytes_max"
        } else {
            "truncated record payload"
        }));
    };
    if record_crc(lsn, payload) != crc {
        return Err(BadRecord::Invalid(if len > max {
            "record length exceeds record_bytes_max"
        } else {
            "record checksum mismatch"
        }));
    }
    if len > max {
        return Err(BadRecord::Oversized(len));
    }
    Ok(Record {
        lsn,
        payload,
        end: start + payload.len(),
    })
}

fn record_error(path: &Path, off: usize, bad: BadRecord, cfg: &WalConfig) -> WalError {
    match bad {
        BadRecord::Invalid(why) => corrupt(path, off as u64, why.into()),
        BadRecord::Oversized(len) => corrupt(
            path,
            off as u64,
            format!(
                "valid record of {len} bytes exceeds record_bytes_max {}; was the limit lowered?",
                cfg.record_bytes_max
            ),
        ),
    }
}

/// LSN expected after `lsn`, or corruption if `lsn` is the last possible one.
fn next_lsn_after(path: &Path, off: usize, lsn: u64) -> Result<u64, WalError> {
    lsn.checked_add(1)
        .ok_or_else(|| corrupt(path, off as u64, "record lsn is u64::MAX".into()))
}

/// Searches for a write group that checks, at any offset after `bad_off`:
/// proof that the damage at `bad_off` lies in data a later `fdatasync` made
/// durable. Returns its offset and first LSN.
fn find_later_group(buf: &[u8], bad_off: usize) -> Option<(usize, u64)> {
    let mut p = bad_off.saturating_add(1);
    while p + GROUP_HEADER_LEN <= buf.len() {
        // Only where the magic is: the checksum runs on candidates alone.
        match buf[p..]
            .windows(GROUP_MAGIC.len())
            .position(|w| w == GROUP_MAGIC || w == GROUP_MAGIC_LZ4)
        {
            None => return None,
            Some(i) => p += i,
        }
        if let Ok(group) = parse_group(buf, p) {
            return Some((p, group.first_lsn));
        }
        p += 1;
    }
    None
}

/// Result of validating one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedSegment {
    /// LSN the next record after this segment must have.
    pub next_lsn: u64,
    /// Length of the valid prefix (only shorter than the file for the last
    /// segment, whose torn tail is cut there).
    pub valid_len: usize,
    /// False when the (last) segment's header was torn and must be rewritten.
    pub header_ok: bool,
}

/// What an operator reads when acknowledged data is damaged.
fn acknowledged_damage(path: &Path, off: usize, why: &str, later: (usize, u64)) -> WalError {
    corrupt(
        path,
        off as u64,
        format!(
            "{why}, yet a complete write group (first lsn {}) follows at offset {}: the damaged bytes were made durable and acknowledged, so this is not a torn tail. Restore the data directory from a backup; or, accepting the loss of every record from here on, truncate {} to {off} bytes and move the segments after it away",
            later.1,
            later.0,
            path.display()
        ),
    )
}

/// Pages of a write in flight from byte `synced` to `end` (`page` bytes
/// each): how many [`after_power_loss`] decides on.
pub fn pages_in_flight(synced: usize, end: usize, page: usize) -> usize {
    end.div_ceil(page) - synced / page
}

/// The power-loss model the crash tests and the simulator share: a file
/// whose first `synced` bytes are durable and whose write up to
/// `image.len()` was in flight, as the disk may leave it. Each page of the
/// in-flight part landed or not (`landed(i)` for its i-th page, in file
/// order); where a later page landed and an earlier one did not, zeros.
pub fn after_power_loss(
    image: &[u8],
    synced: usize,
    page: usize,
    mut landed: impl FnMut(usize) -> bool,
) -> Vec<u8> {
    let end = image.len();
    let mut disk = image[..synced].to_vec();
    for (i, p) in (synced / page..end.div_ceil(page)).enumerate() {
        if !landed(i) {
            continue;
        }
        let from = (p * page).max(synced);
        let to = ((p + 1) * page).min(end);
        if disk.len() < to {
            disk.resize(to, 0);
        }
        disk[from..to].copy_from_slice(&image[from..to]);
    }
    disk
}

/// Validates a segment's bytes without touching any file: the header, then
/// write group by write group. In the last segment (`is_last`), damage with
/// no valid group after it is a torn tail, reported by `valid_len`; any
/// other damage is an error. The recovery rules are in the module doc.
pub fn check_segment(
    path: &Path,
    buf: &[u8],
    first_lsn: u64,
    max: u32,
    is_last: bool,
) -> Result<CheckedSegment, WalError> {
    check_segment_indexing(path, buf, first_lsn, max, is_last, &mut Vec::new())
}

/// [`check_segment`], collecting the read-index points (lsn, offset) of the
/// valid part.
fn check_segment_indexing(
    path: &Path,
    buf: &[u8],
    first_lsn: u64,
    max: u32,
    is_last: bool,
    points: &mut Vec<(u64, u64)>,
) -> Result<CheckedSegment, WalError> {
    match check_header(buf, first_lsn) {
        HeaderCheck::Valid => {}
        HeaderCheck::Damaged(why) if is_last => {
            if let Some(later) = find_later_group(buf, 0) {
                return Err(acknowledged_damage(path, 0, why, later));
            }
            return Ok(CheckedSegment {
                next_lsn: first_lsn,
                valid_len: 0,
                header_ok: false,
            });
        }
        bad => return Err(header_error(path, bad)),
    }
    let mut off = SEGMENT_HEADER_LEN;
    let mut expected = first_lsn;
    while off < buf.len() {
        let group = match parse_group(buf, off) {
            Ok(group) => group,
            Err(why) if is_last => {
                if let Some(later) = find_later_group(buf, off) {
                    return Err(acknowledged_damage(path, off, why, later));
                }
                return Ok(CheckedSegment {
                    next_lsn: expected,
                    valid_len: off,
                    header_ok: true,
                });
            }
            Err(why) => return Err(corrupt(path, off as u64, why.into())),
        };
        // The checksum holds: anything wrong inside is corruption, not a
        // torn write.
        if group.compressed {
            // Checked by its checksum and its chunks' framing without
            // decompressing: a replay follows every open and checks each
            // record as it decompresses (decompressing here too cost
            // recovery a second pass over the log).
            let mut headers = Vec::new();
            let records = for_each_chunk(buf, &group, |header, _, _| {
                headers.push(header);
                Ok(())
            })
            .map_err(|why| corrupt(path, off as u64, why.into()))?;
            check_group_start(path, off, &group, expected, records)?;
            if headers.len() as u64 != (group.count as u64).div_ceil(READ_INDEX_STRIDE) {
                return Err(corrupt(
                    path,
                    off as u64,
                    format!(
                        "compressed group of {} records in {} chunks",
                        group.count,
                        headers.len()
                    ),
                ));
            }
            for (i, header) in headers.into_iter().enumerate() {
                points.push((
                    expected + i as u64 * READ_INDEX_STRIDE,
                    header as u64 | CHUNK_POINT,
                ));
            }
            expected += group.count as u64;
            off = group.end;
            continue;
        }
        let records = &buf[group.start..group.end];
        check_group_start(path, off, &group, expected, records.len())?;
        let mut at = 0;
        let mut count = 0u32;
        while at < records.len() {
            if (count as u64).is_multiple_of(READ_INDEX_STRIDE) {
                points.push((expected, (group.start + at) as u64));
            }
            let rec_off = group.start + at;
            match parse_record(records, at, max) {
                Ok(rec) if rec.lsn == expected => {
                    expected = next_lsn_after(path, rec_off, rec.lsn)?;
                    at = rec.end;
                    count += 1;
                }
                Ok(rec) => {
                    return Err(WalError::Gap {
                        at: path.to_path_buf(),
                        expected: Lsn(expected),
                        found: Lsn(rec.lsn),
                    });
                }
                Err(BadRecord::Invalid(why)) => {
                    return Err(corrupt(path, rec_off as u64, why.into()))
                }
                Err(BadRecord::Oversized(len)) => {
                    return Err(corrupt(
                        path,
                        rec_off as u64,
                        format!(
                            "valid record of {len} bytes exceeds record_bytes_max {max}; was the limit lowered?"
                        ),
                    ));
                }
            }
        }
        if count != group.count {
            return Err(corrupt(
                path,
                off as u64,
                format!("write group says {} records, holds {count}", group.count),
            ));
        }
        off = group.end;
    }
    Ok(CheckedSegment {
        next_lsn: expected,
        valid_len: buf.len(),
        header_ok: true,
    })
}

fn corrupt(path: &Path, offset: u64, reason: String) -> WalError {
    WalError::Corrupt {
        segment: path.to_path_buf(),
        offset,
        reason,
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> WalError + 'a {
    move |source| WalError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn segment_path(dir: &Path, first_lsn: Lsn) -> PathBuf {
    dir.join(format!(
        "{SEGMENT_PREFIX}{:0width$}{SEGMENT_SUFFIX}",
        first_lsn.0,
        width = SEGMENT_LSN_DIGITS
    ))
}

/// First LSN encoded in a segment file name, or None if the name is not a segment's.
fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name
        .strip_prefix(SEGMENT_PREFIX)?
        .strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != SEGMENT_LSN_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The first LSN of the oldest segment in `dir` (what a copy of the log
/// must start from), reading only the directory; `None` when it has none.
pub fn first_segment_lsn(dir: &Path) -> Result<Option<Lsn>, WalError> {
    Ok(list_segments(dir)?.first().map(|s| s.first_lsn))
}

/// Segment files of `dir`, sorted by first LSN.
fn list_segments(dir: &Path) -> Result<Vec<Segment>, WalError> {
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("read directory", dir))? {
        let entry = entry.map_err(io_err("read directory", dir))?;
        let name = entry.file_name();
        let Some(first_lsn) = name.to_str().and_then(parse_segment_name) else {
            if name.to_string_lossy().starts_with(SEGMENT_PREFIX) {
                warn!(file = %entry.path().display(), "wal: ignoring file that is not a segment");
            }
            continue;
        };
        let path = entry.path();
        let file_type = entry.file_type().map_err(io_err("stat", &path))?;
        if !file_type.is_file() {
            return Err(corrupt(
                &path,
                0,
                "segment name on something that is not a file".into(),
            ));
        }
        if first_lsn == 0 {
            return Err(corrupt(
                &path,
                0,
                "segment named for lsn 0; lsns start at 1".into(),
            ));
        }
        segments.push(Segment {
            first_lsn: Lsn(first_lsn),
            path,
        });
    }
    segments.sort_by_key(|s| s.first_lsn);
    Ok(segments)
}

/// Reads a whole file into `buf` (reusing its capacity) with as few calls as possible.
fn read_whole(file: &mut File, path: &Path, buf: &mut Vec<u8>) -> Result<(), WalError> {
    buf.clear();
    file.read_to_end(buf).map_err(io_err("read", path))?;
    Ok(())
}

/// Creates the log directory if needed, making its creation durable.
fn ensure_dir(dir: &Path) -> Result<(), WalError> {
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(WalError::Io {
            op: "open directory",
            path: dir.to_path_buf(),
            source: io::Error::other("exists and is not a directory"),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
            sync_dir(dir)?;
            match dir.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent),
                _ => sync_dir(Path::new(".")),
            }
        }
        Err(e) => Err(WalError::Io {
            op: "stat",
            path: dir.to_path_buf(),
            source: e,
        }),
    }
}

/// fsyncs a directory so entries created or removed in it are durable.
#[cfg(unix)]
pub fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir))
}

/// Directories cannot be opened for fsync here; the platform orders metadata itself.
#[cfg(not(unix))]
pub fn sync_dir(_dir: &Path) -> Result<(), WalError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip() {
        let p = segment_path(Path::new("d"), Lsn(42));
        let name = p.file_name().and_then(|n| n.to_str()).unwrap();
        assert_eq!(name, "wal-00000000000000000042.log");
        assert_eq!(parse_segment_name(name), Some(42));
        assert_eq!(parse_segment_name("wal-42.log"), None);
        assert_eq!(parse_segment_name("wal-0000000000000000004x.log"), None);
        assert_eq!(parse_segment_name("wal-99999999999999999999.log"), None);
        assert_eq!(parse_segment_name("wal-00000000000000000042.log.tmp"), None);
    }

    #[test]
    fn header_round_trip_and_damage() {
        let h = segment_header(Lsn(7));
        assert!(matches!(check_header(&h, 7), HeaderCheck::Valid));
        assert!(matches!(check_header(&h, 8), HeaderCheck::WrongLsn(7)));
        assert!(matches!(check_header(&h[..10], 7), HeaderCheck::Damaged(_)));
        let mut bad = h;
        bad[20] ^= 1;
        assert!(matches!(check_header(&bad, 7), HeaderCheck::Damaged(_)));
        let with_version = |v: u8| {
            let mut other = h;
            other[8] = v;
            let crc = header_crc(&other[..12], &other[16..24]);
            other[12..16].copy_from_slice(&crc.to_le_bytes());
            other
        };
        // Version 2 (raw groups only) is still read; 1 and 4 are not.
        assert!(matches!(
            check_header(&with_version(2), 7),
            HeaderCheck::Valid
        ));
        assert!(matches!(
            check_header(&with_version(1), 7),
            HeaderCheck::Unsupported(1)
        ));
        assert!(matches!(
            check_header(&with_version(4), 7),
            HeaderCheck::Unsupported(4)
        ));
    }

    /// Opening checks a compressed group by its checksum and chunk
    /// framing only; damage inside a chunk that the checksum does not see
    /// (a writer bug) is found by the replay every open is followed by,
    /// which refuses rather than hand out wrong records.
    #[test]
    fn damage_inside_a_compressed_group_is_refused_by_the_replay() {
        let mut b = WalBatch::new(Lsn(1));
        for i in 0..40u64 {
            b.push(format!("credit-control {i:04} tokens_in tokens_out").as_bytes())
                .unwrap();
        }
        let intact = b.to_group_bytes(true);
        assert_eq!(&intact[..4], &GROUP_MAGIC_LZ4);
        let cfg = WalConfig::new(tempfile::tempdir().unwrap().keep());
        std::fs::create_dir_all(&cfg.dir).unwrap();
        let path = segment_path(&cfg.dir, Lsn(1));
        let mut refused = 0;
        for at in GROUP_HEADER_LEN + CHUNK_HEADER_LEN..intact.len() {
            let mut group = intact.clone();
            group[at] ^= 0x20;
            let crc = group_crc(&group[..20], &group[GROUP_HEADER_LEN..]);
            group[20..24].copy_from_slice(&crc.to_le_bytes());
            let mut bytes = segment_header(Lsn(1)).to_vec();
            bytes.extend_from_slice(&group);
            // A later chunk's framing is checked at open already.
            match check_segment(&path, &bytes, 1, DEFAULT_RECORD_BYTES_MAX, true) {
                Err(WalError::Corrupt { .. }) => {
                    refused += 1;
                    continue;
                }
                Err(e) => panic!("flip at {at}: {e}"),
                Ok(checked) => assert_eq!(checked.valid_len, bytes.len(), "flip at {at}"),
            }
            std::fs::write(&path, &bytes).unwrap();
            let mut seen = Vec::new();
            match replay(&cfg, Lsn(0), |lsn, p| -> Result<(), ()> {
                seen.push((lsn, p.to_vec()));
                Ok(())
            }) {
                Err(ReplayError::Wal(WalError::Corrupt { .. })) => refused += 1,
                // A byte LZ4 does not read (e.g. the tail of a match
                // offset it never uses) changes nothing: every record is
                // as written.
                Ok(_) => {
                    let mut again = WalBatch::new(Lsn(1));
                    for (_, p) in &seen {
                        again.push(p).unwrap();
                    }
                    assert_eq!(
                        again.as_bytes(),
                        b.as_bytes(),
                        "flip at {at} changed records"
                    );
                }
                Err(e) => panic!("flip at {at}: {e:?}"),
            }
        }
        assert!(
            refused > (intact.len() - GROUP_HEADER_LEN) / 2,
            "{refused} refused"
        );
        std::fs::remove_dir_all(&cfg.dir).unwrap();
    }

    #[test]
    fn parse_rejects_untrusted_lengths_without_allocating() {
        let mut b = WalBatch::with_record_bytes_max(Lsn(1), 64);
        b.push(b"hello").unwrap();
        let mut bytes = b.as_bytes().to_vec();
        assert!(parse_record(&bytes, 0, 64).is_ok());
        bytes[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            parse_record(&bytes, 0, 64),
            Err(BadRecord::Invalid(_))
        ));
        assert!(matches!(
            parse_record(&bytes, usize::MAX - 3, 64),
            Err(BadRecord::Invalid(_))
        ));
        assert!(find_later_group(&bytes, 0).is_none());
    }

    #[test]
    fn later_group_search_finds_only_groups_that_check() {
        let mut b = WalBatch::with_record_bytes_max(Lsn(10), 64);
        for _ in 0..3 {
            b.push(b"abc").unwrap();
        }
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&group_header(GROUP_MAGIC, 10, 3, b.as_bytes()));
        bytes.extend_from_slice(b.as_bytes());
        let second = bytes.len();
        let mut c = WalBatch::with_record_bytes_max(Lsn(13), 64);
        c.push(b"defg").unwrap();
        bytes.extend_from_slice(&group_header(GROUP_MAGIC, 13, 1, c.as_bytes()));
        bytes.extend_from_slice(c.as_bytes());
        assert_eq!(find_later_group(&bytes, 0), Some((second, 13)));
        assert_eq!(find_later_group(&bytes, second), None);
        // A damaged group is not proof of anything.
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert_eq!(find_later_group(&bytes, 0), None);
    }
}
