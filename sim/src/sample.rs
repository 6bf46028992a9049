//! What the machine says during a run: the generator's own CPU time, and
//! the server's memory, CPU and data directory sampled from `/proc` and
//! the file system, with the steady-state verdict on them.

use serde::Serialize;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// CPU time of this process, user and system.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuTimes {
    /// Time in user mode.
    pub user: Duration,
    /// Time in the kernel on the process's behalf.
    pub sys: Duration,
}

impl CpuTimes {
    /// User plus system time.
    pub fn total(&self) -> Duration {
        self.user + self.sys
    }

    /// The time spent since `earlier`.
    pub fn since(&self, earlier: &CpuTimes) -> CpuTimes {
        CpuTimes {
            user: self.user.saturating_sub(earlier.user),
            sys: self.sys.saturating_sub(earlier.sys),
        }
    }
}

fn rusage(who: libc::c_int) -> CpuTimes {
    let mut u = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a whole `rusage` into the pointer it is given.
    let rc = unsafe { libc::getrusage(who, u.as_mut_ptr()) };
    if rc != 0 {
        return CpuTimes::default();
    }
    // SAFETY: initialised by the successful call above (and zeroed before).
    let u = unsafe { u.assume_init() };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    CpuTimes {
        user: tv(u.ru_utime),
        sys: tv(u.ru_stime),
    }
}

/// This process's CPU time so far, every thread included (`getrusage(RUSAGE_SELF)`).
pub fn process_cpu() -> CpuTimes {
    rusage(libc::RUSAGE_SELF)
}

/// The calling thread's CPU time so far (`getrusage(RUSAGE_THREAD)`).
pub fn thread_cpu() -> Duration {
    rusage(libc::RUSAGE_THREAD).total()
}

/// Cores this machine offers the process.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A process's resident memory (`VmRSS` in `/proc/PID/status`), in bytes.
pub fn rss_bytes(pid: u32) -> io::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_vm_rss(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("/proc/{pid}/status has no VmRSS line"),
        )
    })
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut parts = line["VmRSS:".len()..].split_whitespace();
    let n: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") | None => Some(n * 1024),
        _ => None,
    }
}

/// Bytes a process has caused to be written to storage (`write_bytes` in
/// `/proc/PID/io`).
pub fn written_bytes(pid: u32) -> io::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/io"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("/proc/{pid}/io has no write_bytes line"),
            )
        })
}

/// A process's CPU time (user + system, from `/proc/PID/stat`).
pub fn process_cpu_of(pid: u32) -> io::Result<Duration> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    parse_stat_cpu(&text, if ticks > 0 { ticks as u64 } else { 100 }).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("/proc/{pid}/stat is not as expected"),
        )
    })
}

fn parse_stat_cpu(stat: &str, ticks_per_s: u64) -> Option<Duration> {
    // The command name may hold spaces and parentheses: fields count from
    // the last ')'. utime and stime are fields 14 and 15 of the line, so
    // the 12th and 13th after the name.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let ticks = utime + stime;
    Some(Duration::from_nanos(
        (ticks as u128 * 1_000_000_000 / ticks_per_s.max(1) as u128) as u64,
    ))
}

/// Bytes a directory takes on disk (allocated blocks, as `du` counts
/// them), recursively; files removed while it is walked are skipped.
pub fn dir_bytes(path: &Path) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path)?;
    let mut total = meta.blocks() * 512;
    if !meta.is_dir() {
        return Ok(total);
    }
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = match entry {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let meta = match std::fs::symlink_metadata(entry.path()) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            total += meta.blocks() * 512;
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    Ok(total)
}

/// The process listening on `addr`'s TCP port on this machine, found from
/// `/proc/net/tcp{,6}` (the listening socket's inode) and `/proc/*/fd`
/// (who holds it).
pub fn listener_pid(addr: SocketAddr) -> Result<u32, String> {
    let port = addr.port();
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            inodes.extend(listening_inodes(&text, port));
        }
    }
    if inodes.is_empty() {
        return Err(format!(
            "no process listens on TCP port {port} here (pass --server-pid)"
        ));
    }
    let procs = std::fs::read_dir("/proc").map_err(|e| format!("reading /proc: {e}"))?;
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                let t = target.to_string_lossy();
                if let Some(inode) = t
                    .strip_prefix("socket:[")
                    .and_then(|s| s.strip_suffix(']'))
                    .and_then(|s| s.parse::<u64>().ok())
                {
                    if inodes.contains(&inode) {
                        return Ok(pid);
                    }
                }
            }
        }
    }
    Err(format!(
        "port {port} is listened on, but by no process this user can see (pass --server-pid)"
    ))
}

/// Inodes of sockets listening on `port` in a `/proc/net/tcp` table.
fn listening_inodes(table: &str, port: u16) -> Vec<u64> {
    const LISTEN: &str = "0A";
    let mut out = Vec::new();
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 || f[3] != LISTEN {
            continue;
        }
        let Some((_, p)) = f[1].rsplit_once(':') else {
            continue;
        };
        if u16::from_str_radix(p, 16) == Ok(port) {
            if let Ok(inode) = f[9].parse::<u64>() {
                out.push(inode);
            }
        }
    }
    out
}

/// What to sample during a run, and how to judge it.
#[derive(Clone, Debug)]
pub struct SamplingConfig {
    /// The server's process id, for its RSS and CPU.
    pub server_pid: Option<u32>,
    /// The server's data directory, for its size on disk.
    pub data_dir: Option<PathBuf>,
    /// Time between samples.
    pub every: Duration,
    /// Samples from this far into the run on are judged for flatness.
    pub flat_after: Duration,
    /// Largest spread, max over min − 1, in percent, still called flat.
    pub tolerance_pct: u32,
    /// The server's history retention (`history_retention_mb`), bytes: the
    /// data directory's `history` store may grow to this (plus the segment
    /// being written) and is judged against it rather than for flatness.
    pub history_retention_bytes: u64,
}

impl Default for SamplingConfig {
    fn default() -> SamplingConfig {
        SamplingConfig {
            server_pid: None,
            data_dir: None,
            every: Duration::from_secs(10),
            flat_after: Duration::from_secs(120),
            tolerance_pct: 10,
            history_retention_bytes: reckon_balances::journal::HISTORY_BYTES_MAX_DEFAULT,
        }
    }
}

impl SamplingConfig {
    /// Whether there is anything to sample.
    pub fn enabled(&self) -> bool {
        self.server_pid.is_some() || self.data_dir.is_some()
    }
}

/// One sample.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Sample {
    /// Seconds since the load began.
    pub t_s: f64,
    /// The server's resident memory, bytes.
    pub rss_bytes: Option<u64>,
    /// The data directory's size on disk, bytes.
    pub disk_bytes: Option<u64>,
    /// Of which the retention-capped history store (`DATA_DIR/history`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history_bytes: Option<u64>,
    /// Bytes the server has sent to storage since it started
    /// (`write_bytes` of `/proc/PID/io`: pages dirtied, so a page rewritten
    /// after each fdatasync counts each time).
    pub written_bytes: Option<u64>,
    /// Cores the server used since the previous sample.
    pub server_cores: Option<f64>,
    /// Cores this generator used since the previous sample.
    pub generator_cores: f64,
}

/// Whether a series stayed flat after a point in the run.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Flatness {
    /// "flat", "not flat", or "too few samples".
    pub verdict: String,
    /// Samples judged (those at or after `after_s`).
    pub samples: usize,
    /// Judged from this many seconds into the run.
    pub after_s: f64,
    /// Smallest value judged.
    pub min: u64,
    /// Largest value judged.
    pub max: u64,
    /// (max / min − 1) in percent.
    pub spread_pct: f64,
    /// Largest spread called flat, percent.
    pub tolerance_pct: f64,
}

impl Flatness {
    /// True when the verdict is "flat".
    pub fn is_flat(&self) -> bool {
        self.verdict == "flat"
    }
}

/// Judges `(t_s, value)` points from `after_s` on: flat when max ≤ min ×
/// (1 + tolerance); at least two points are needed.
pub fn flatness(points: &[(f64, u64)], after_s: f64, tolerance_pct: u32) -> Flatness {
    let judged: Vec<u64> = points
        .iter()
        .filter(|(t, _)| *t >= after_s)
        .map(|(_, v)| *v)
        .collect();
    let min = judged.iter().copied().min().unwrap_or(0);
    let max = judged.iter().copied().max().unwrap_or(0);
    let spread_pct = if min > 0 {
        (max as f64 / min as f64 - 1.0) * 100.0
    } else if max > 0 {
        f64::INFINITY
    } else {
        0.0
    };
    // In integers: a spread of exactly the tolerance is flat.
    let within = max as u128 * 100 <= min as u128 * (100 + tolerance_pct as u128);
    let verdict = if judged.len() < 2 {
        "too few samples"
    } else if within {
        "flat"
    } else {
        "not flat"
    };
    Flatness {
        verdict: verdict.into(),
        samples: judged.len(),
        after_s,
        min,
        max,
        spread_pct: if spread_pct.is_finite() {
            (spread_pct * 100.0).round() / 100.0
        } else {
            -1.0
        },
        tolerance_pct: tolerance_pct as f64,
    }
}

/// Bytes, readably: `812 B`, `12.3 MB`, `1.20 GB` (powers of 1000).
pub fn human_bytes(n: u64) -> String {
    let v = n as f64;
    if v < 1e3 {
        format!("{n} B")
    } else if v < 1e6 {
        format!("{:.1} kB", v / 1e3)
    } else if v < 1e9 {
        format!("{:.1} MB", v / 1e6)
    } else {
        format!("{:.2} GB", v / 1e9)
    }
}

/// A thread that samples every `every` until told to stop.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Vec<Sample>>,
}

struct Probe {
    config: SamplingConfig,
    start: Instant,
    last_t: f64,
    last_server_cpu: Option<Duration>,
    last_own_cpu: Duration,
}

impl Probe {
    fn take(&mut self) -> Sample {
        let t = self.start.elapsed().as_secs_f64();
        let dt = (t - self.last_t).max(1e-6);
        let rss = self.config.server_pid.and_then(|p| rss_bytes(p).ok());
        let written = self.config.server_pid.and_then(|p| written_bytes(p).ok());
        let disk = self
            .config
            .data_dir
            .as_deref()
            .and_then(|d| dir_bytes(d).ok());
        let history = self
            .config
            .data_dir
            .as_deref()
            .and_then(|d| dir_bytes(&d.join(reckon_balances::snapstore::HISTORY_DIR)).ok());
        let server_cpu = self.config.server_pid.and_then(|p| process_cpu_of(p).ok());
        // Rates over less than 50 ms (the first sample) say nothing.
        let long_enough = t - self.last_t >= 0.05;
        let server_cores = match (server_cpu, self.last_server_cpu) {
            (Some(now), Some(before)) if long_enough => {
                Some(now.saturating_sub(before).as_secs_f64() / dt)
            }
            _ => None,
        };
        let own = process_cpu().total();
        let generator_cores = if long_enough {
            own.saturating_sub(self.last_own_cpu).as_secs_f64() / dt
        } else {
            0.0
        };
        self.last_server_cpu = server_cpu;
        self.last_own_cpu = own;
        self.last_t = t;
        Sample {
            t_s: (t * 10.0).round() / 10.0,
            rss_bytes: rss,
            disk_bytes: disk,
            history_bytes: history,
            written_bytes: written,
            server_cores: server_cores.map(|c| (c * 100.0).round() / 100.0),
            generator_cores: (generator_cores * 100.0).round() / 100.0,
        }
    }
}

fn print_sample(s: &Sample) {
    let mut line = format!("[{:>4.0}s] sample:", s.t_s);
    if let Some(r) = s.rss_bytes {
        line.push_str(&format!(" server RSS {}", human_bytes(r)));
    }
    if let Some(d) = s.disk_bytes {
        line.push_str(&format!(", data dir {}", human_bytes(d)));
        if let Some(h) = s.history_bytes {
            line.push_str(&format!(" (history {})", human_bytes(h)));
        }
    }
    if let Some(c) = s.server_cores {
        line.push_str(&format!(", server {c:.2} cores"));
    }
    line.push_str(&format!(", generator {:.2} cores", s.generator_cores));
    eprintln!("{line}");
}

impl Sampler {
    /// Takes a sample now (t = 0) and every `config.every` after; prints
    /// each to stderr when `progress`.
    pub fn start(config: SamplingConfig, start: Instant, progress: bool) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("reckon-sim-sampler".into())
            .spawn(move || {
                let every = config.every.max(Duration::from_millis(100));
                let mut probe = Probe {
                    last_server_cpu: config.server_pid.and_then(|p| process_cpu_of(p).ok()),
                    last_own_cpu: process_cpu().total(),
                    config,
                    start,
                    last_t: 0.0,
                };
                let mut samples = vec![probe.take()];
                if progress {
                    print_sample(&samples[0]);
                }
                let mut next = start + every;
                loop {
                    while Instant::now() < next {
                        if flag.load(Ordering::Relaxed) {
                            samples.push(probe.take());
                            return samples;
                        }
                        std::thread::sleep(
                            next.saturating_duration_since(Instant::now())
                                .min(Duration::from_millis(100)),
                        );
                    }
                    let s = probe.take();
                    if progress {
                        print_sample(&s);
                    }
                    samples.push(s);
                    next += every;
                }
            })
            .expect("a sampler thread can be started");
        Sampler { stop, handle }
    }

    /// Takes a last sample and returns them all.
    pub fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flatness_on_synthetic_samples() {
        // Grows for two minutes, then holds within 5 %: flat after 120 s.
        let mut pts: Vec<(f64, u64)> = (0..=12).map(|i| (i as f64 * 10.0, 100 + i * 50)).collect();
        for (i, v) in [700u64, 720, 690, 710, 735, 700].iter().enumerate() {
            pts.push((130.0 + i as f64 * 10.0, *v));
        }
        let f = flatness(&pts, 120.0, 10);
        assert_eq!(f.verdict, "flat", "{f:?}");
        assert_eq!(f.samples, 7);
        assert_eq!((f.min, f.max), (690, 735));
        assert!((f.spread_pct - 6.52).abs() < 0.01, "{f:?}");
        // Judged from the start, the growth shows.
        assert_eq!(flatness(&pts, 0.0, 10).verdict, "not flat");
        // Linear growth after minute 2 (the leak of issue 13) is not flat.
        let leak: Vec<(f64, u64)> = (0..60).map(|i| (i as f64 * 10.0, 1_000 + i * 75)).collect();
        let f = flatness(&leak, 120.0, 10);
        assert!(!f.is_flat() && f.spread_pct > 100.0, "{f:?}");
        // Exactly at the tolerance is flat; just above is not.
        assert!(flatness(&[(0.0, 100), (1.0, 110)], 0.0, 10).is_flat());
        assert!(!flatness(&[(0.0, 100), (1.0, 111)], 0.0, 10).is_flat());
        // One sample, or none after the point, proves nothing.
        assert_eq!(flatness(&[(5.0, 1)], 0.0, 10).verdict, "too few samples");
        assert_eq!(flatness(&pts, 1000.0, 10).verdict, "too few samples");
        // From zero to something is not flat, and says so without dividing by zero.
        let f = flatness(&[(0.0, 0), (1.0, 5)], 0.0, 10);
        assert_eq!((f.verdict.as_str(), f.spread_pct), ("not flat", -1.0));
    }

    #[test]
    fn proc_parsers() {
        assert_eq!(
            parse_vm_rss("Name:\treckon\nVmPeak:\t  9000 kB\nVmRSS:\t  1234 kB\n"),
            Some(1234 * 1024)
        );
        assert_eq!(parse_vm_rss("Name:\tkthreadd\n"), None);
        let stat =
            "4242 (reckon (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 100 0 0";
        assert_eq!(parse_stat_cpu(stat, 100), Some(Duration::from_secs(3)));
        assert_eq!(parse_stat_cpu("garbage", 100), None);
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1EC6 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 555 1 0 100 0 0 10 0\n   1: 0100007F:1EC6 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 556 1 0 100 0 0 10 0\n";
        assert_eq!(listening_inodes(tcp, 7878), vec![555]);
        assert!(listening_inodes(tcp, 7879).is_empty());
    }

    #[test]
    fn this_process_is_measured() {
        let before = process_cpu();
        let mut x = 0u64;
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(30) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
        assert!(process_cpu().since(&before).total() >= Duration::from_millis(10));
        assert!(thread_cpu() > Duration::ZERO);
        let me = std::process::id();
        assert!(rss_bytes(me).unwrap() > 1 << 20);
        assert!(process_cpu_of(me).unwrap() > Duration::ZERO);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), vec![1u8; 100_000]).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/b"), vec![1u8; 50_000]).unwrap();
        let n = dir_bytes(dir.path()).unwrap();
        assert!((150_000..400_000).contains(&n), "{n}");
        // A listener of this process is found by its port.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert_eq!(listener_pid(l.local_addr().unwrap()), Ok(me));
    }
}
