//! Backup and restore of a data directory, and what they need from a
//! running server.
//!
//! A backup is taken while the server runs. It holds the journal's
//! checkpoint lock (so the snapshot and history stores do not change: the
//! snapshot thread waits, the writer goes on serving), reads the engine's
//! log position `L` and state digest in the writer's order (the answer
//! comes once everything up to `L` is durable), copies the two stores as
//! they are (their last checkpoint `S` ≤ `L`), and writes the log records
//! from the oldest the server keeps up to `L` into a fresh log: records
//! after `L` in the same write group are left out, so the backup restores
//! to exactly `L`. Everything is fsynced, then a manifest is written last:
//! a directory without one is not a backup.
//!
//! A restore copies a backup into a new data directory, recovers it
//! offline (snapshot plus log, invariants) and compares the state digest
//! with the manifest's before it says yes.

use crate::engine::{Engine, EngineRequest, EngineResponse};
use reckon_balances::journal::{Journal, JournalStats, Submitter};
use reckon_balances::wal::{self, Lsn, WalBatch, WalConfig};
use std::path::{Path, PathBuf};

/// Name of the manifest a backup ends with.
pub const MANIFEST: &str = "BACKUP.json";
/// Bytes of log records per write group in a backup's log.
const GROUP_BYTES: usize = 8 << 20;

/// What a backup holds, as its manifest says.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    /// Reckon version that wrote it.
    pub version: String,
    /// The log position the backup restores to.
    pub lsn: u64,
    /// The engine's state digest at that position.
    pub digest: u64,
    /// The log position its snapshot covers.
    pub snapshot_lsn: u64,
    /// The first log record it holds (0: none).
    pub first_lsn: u64,
    /// When it was taken, ms since the Unix epoch.
    pub taken_at_ms: u64,
    /// Bytes written.
    pub bytes: u64,
}

/// Why a backup or restore failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The directory given cannot be used; nothing was written.
    #[error("{0}")]
    Refused(String),
    /// Writing or reading failed.
    #[error("{0}")]
    Failed(String),
}

fn failed(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> BackupError {
    let what = what.to_string();
    move |e| BackupError::Failed(format!("{what}: {e}"))
}

/// Checks that `dir` is absolute and new or empty, and creates it.
fn prepare_target(dir: &Path) -> Result<(), BackupError> {
    if !dir.is_absolute() {
        return Err(BackupError::Refused(format!(
            "{}: give an absolute path",
            dir.display()
        )));
    }
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(BackupError::Refused(format!(
                    "{} is not empty",
                    dir.display()
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir_all(dir)
            .map_err(|e| BackupError::Refused(format!("creating {}: {e}", dir.display()))),
        Err(e) => Err(BackupError::Refused(format!("{}: {e}", dir.display()))),
    }
}

/// Copies the regular files of `from` into `to` (created), fsyncing each
/// and the directory; the bytes copied.
fn copy_dir(from: &Path, to: &Path) -> Result<u64, BackupError> {
    std::fs::create_dir_all(to).map_err(failed(format!("creating {}", to.display())))?;
    let mut bytes = 0;
    let entries = match std::fs::read_dir(from) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(failed(format!("reading {}", from.display()))(e)),
    };
    for entry in entries {
        let entry = entry.map_err(failed(format!("reading {}", from.display())))?;
        let path = entry.path();
        if !path.is_file() {
            continue;
        }
        let target = to.join(entry.file_name());
        bytes +=
            std::fs::copy(&path, &target).map_err(failed(format!("copying {}", path.display())))?;
        sync_file(&target)?;
    }
    sync_dir(to)?;
    Ok(bytes)
}

fn sync_file(path: &Path) -> Result<(), BackupError> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(failed(format!("fsync {}", path.display())))
}

fn sync_dir(dir: &Path) -> Result<(), BackupError> {
    wal::sync_dir(dir).map_err(|e| BackupError::Failed(format!("fsync {}: {e}", dir.display())))
}

/// Writes the records `after+1 ..= upto` of the log in `from` as a new log
/// in `to` (through the log's own writer: its format, groups and fsyncs);
/// the first record written (0: none) and the bytes. Fails when `from` no
/// longer holds `after+1` (removed meanwhile: the caller retries).
fn copy_log(from: &Path, to: &Path, after: u64, upto: u64) -> Result<(u64, u64), BackupError> {
    let cfg = WalConfig::new(to);
    let log_err = |what: &str| {
        let what = what.to_string();
        move |e: wal::WalError| BackupError::Failed(format!("{what}: {e}"))
    };
    let mut writer = wal::open(&cfg)
        .map_err(log_err("opening the backup's log"))?
        .writer;
    if upto <= after {
        return Ok((0, 0));
    }
    let first = after + 1;
    let mut batch = WalBatch::new(Lsn(first));
    let mut write_error = None;
    let mut flush = |batch: &mut WalBatch| {
        if !batch.is_empty() && write_error.is_none() {
            if let Err(e) = writer.write_and_sync(&batch.take()) {
                write_error = Some(e);
            }
        }
    };
    let replayed = wal::replay_upto(
        &WalConfig::new(from),
        Lsn(after),
        Lsn(upto),
        |lsn, record| {
            if lsn.0 > upto {
                return Ok(());
            }
            if lsn != batch.next_lsn() {
                return Err(format!(
                    "record {} where {} was expected",
                    lsn.0,
                    batch.next_lsn().0
                ));
            }
            batch.push(record).map_err(|e| e.to_string())?;
            if batch.len_bytes() >= GROUP_BYTES {
                flush(&mut batch);
            }
            Ok(())
        },
    );
    flush(&mut batch);
    replayed.map_err(|e| BackupError::Failed(format!("reading the log: {e}")))?;
    if let Some(e) = write_error {
        return Err(log_err("writing the backup's log")(e));
    }
    let copied = batch.next_lsn().0 - first;
    if copied != upto - after {
        return Err(BackupError::Failed(format!(
            "the log held {copied} of the records {first}..={upto}"
        )));
    }
    let bytes = wal::inspect(&cfg)
        .map_err(log_err("checking the backup's log"))?
        .bytes;
    Ok((first, bytes))
}

/// Takes a backup of the running server whose data directory is
/// `data_dir` into `target` (absolute, new or empty). Blocks: run it off
/// the async runtime. On failure what was written is removed.
pub fn backup(
    submitter: &Submitter<Engine>,
    stats: &JournalStats,
    data_dir: &Path,
    target: &Path,
) -> Result<Manifest, BackupError> {
    prepare_target(target)?;
    let result = write_backup(submitter, stats, data_dir, target);
    if result.is_err() {
        let _ = std::fs::remove_dir_all(target);
    }
    result
}

fn write_backup(
    submitter: &Submitter<Engine>,
    stats: &JournalStats,
    data_dir: &Path,
    target: &Path,
) -> Result<Manifest, BackupError> {
    // No checkpoint lands while this is held: the stores stay as they are.
    let _hold = stats.checkpoint_hold.lock();
    let gauges = match submitter.call(EngineRequest::Gauges { digest: true }) {
        Ok(EngineResponse::Gauges(g)) => g,
        Ok(other) => return Err(BackupError::Failed(format!("unexpected answer {other:?}"))),
        Err(e) => return Err(BackupError::Failed(format!("the journal: {e}"))),
    };
    let lsn = gauges.last_lsn;
    let digest = gauges.digest.unwrap_or_default();
    let mut bytes = copy_dir(&data_dir.join("snapshot"), &target.join("snapshot"))?;
    bytes += copy_dir(&data_dir.join("history"), &target.join("history"))?;
    let token = data_dir.join(crate::config::ADMIN_TOKEN_FILE);
    if token.is_file() {
        let to = target.join(crate::config::ADMIN_TOKEN_FILE);
        bytes += std::fs::copy(&token, &to).map_err(failed("copying the admin token"))?;
        sync_file(&to)?;
    }
    let snapshot_lsn = reckon_balances::snapstore::load(&target.join("snapshot"))
        .map_err(|e| BackupError::Failed(format!("reading the copied snapshot: {e}")))?
        .lsn;
    if snapshot_lsn > lsn {
        return Err(BackupError::Failed(format!(
            "the snapshot covers {snapshot_lsn}, past the backup's position {lsn}"
        )));
    }
    // The oldest records are kept for the engine's remembered answers; the
    // server may remove the oldest segment while it is read (only ones the
    // snapshot covers): then start again from the next.
    let wal_dir = data_dir.join("wal");
    let mut attempt = 0;
    let (first_lsn, log_bytes) = loop {
        let first = wal::first_segment_lsn(&wal_dir)
            .map_err(|e| BackupError::Failed(format!("reading the log: {e}")))?
            .map_or(snapshot_lsn + 1, |l| l.0)
            .min(snapshot_lsn + 1);
        let _ = std::fs::remove_dir_all(target.join("wal"));
        match copy_log(&wal_dir, &target.join("wal"), first.saturating_sub(1), lsn) {
            Ok(done) => break done,
            Err(e) if attempt < 3 => {
                tracing::debug!(error = %e, "backup: the log moved under the copy; again");
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    };
    bytes += log_bytes;
    sync_dir(target)?;
    let manifest = Manifest {
        version: env!("CARGO_PKG_VERSION").into(),
        lsn,
        digest,
        snapshot_lsn,
        first_lsn,
        taken_at_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        bytes,
    };
    let path = target.join(MANIFEST);
    let text =
        serde_json::to_vec_pretty(&manifest).map_err(|e| BackupError::Failed(e.to_string()))?;
    std::fs::write(&path, text).map_err(failed(format!("writing {}", path.display())))?;
    sync_file(&path)?;
    sync_dir(target)?;
    Ok(manifest)
}

/// Reads a backup's manifest.
pub fn read_manifest(from: &Path) -> Result<Manifest, BackupError> {
    let path = from.join(MANIFEST);
    let text = std::fs::read(&path).map_err(|e| {
        BackupError::Refused(format!(
            "{}: {e} (a backup ends with its manifest; without one it is incomplete)",
            path.display()
        ))
    })?;
    serde_json::from_slice(&text)
        .map_err(|e| BackupError::Refused(format!("{}: {e}", path.display())))
}

/// The state of a data directory recovered offline: its log position and
/// state digest.
pub fn recovered_digest(data_dir: &Path) -> Result<(u64, u64), BackupError> {
    let (engine, report) = Journal::<Engine>::recover_offline(data_dir)
        .map_err(|e| BackupError::Failed(format!("recovering {}: {e}", data_dir.display())))?;
    let lsn = report.wal.last_lsn.0.max(report.snapshot_lsn);
    Ok((lsn, engine.state_digest()))
}

/// Restores the backup in `from` into `data_dir` (new or empty), then
/// recovers it offline and checks its state digest against the manifest.
/// On failure the new directory is removed.
pub fn restore(from: &Path, data_dir: &Path) -> Result<Manifest, BackupError> {
    let manifest = read_manifest(from)?;
    let data_dir = absolute(data_dir)?;
    prepare_target(&data_dir)?;
    let result = (|| {
        for sub in ["snapshot", "history", "wal"] {
            copy_dir(&from.join(sub), &data_dir.join(sub))?;
        }
        let token = from.join(crate::config::ADMIN_TOKEN_FILE);
        if token.is_file() {
            let to = data_dir.join(crate::config::ADMIN_TOKEN_FILE);
            std::fs::copy(&token, &to).map_err(failed("copying the admin token"))?;
            sync_file(&to)?;
        }
        sync_dir(&data_dir)?;
        let (lsn, digest) = recovered_digest(&data_dir)?;
        if (lsn, digest) != (manifest.lsn, manifest.digest) {
            return Err(BackupError::Failed(format!(
                "the restored state (position {lsn}, digest {digest:016x}) is not the backup's (position {}, digest {:016x})",
                manifest.lsn, manifest.digest
            )));
        }
        Ok(manifest)
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    result
}

fn absolute(path: &Path) -> Result<PathBuf, BackupError> {
    std::path::absolute(path).map_err(|e| BackupError::Refused(format!("{}: {e}", path.display())))
}
