//! `reckon-sim`: drive a running Reckon server with realistic load.

use clap::{Args, Parser, Subcommand};
use reckon_sim::load::{self, LoadConfig};
use reckon_sim::report;
use reckon_sim::sample::{self, SamplingConfig};
use reckon_sim::workload::Mix;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "reckon-sim",
    version,
    about = "Reckon load generator and simulator"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Drive a running server over the native protocol with telco sessions,
    /// inference requests, GPU jobs, events and reserve-commit pairs; print
    /// throughput (also over time), latency percentiles and the generator's
    /// own CPU use, sample the server's RSS and disk; write a JSON report
    /// and a chart.
    Load(LoadArgs),
    /// The reserve-commit flow against Redis + Lua scripts, by the same
    /// generator, for comparison with `load --mix reserve-commit=1`.
    Redis(RedisArgs),
    /// Compare two JSON reports (e.g. Redis and Reckon): throughput,
    /// latency and their ratio.
    Compare(CompareArgs),
    /// A stand-in server that answers every CCR SUCCESS at once and stores
    /// nothing: drive it with `load` to measure the generator's own ceiling.
    Sink(SinkArgs),
    /// Deterministic simulation of the engine with injected faults: runs
    /// seeds, checks every property after every step, prints a reproducer
    /// on failure.
    Dst(DstArgs),
    /// Diameter Gy load: provisions subscribers, then runs CCR-I/U/T
    /// sessions over pipelined peer connections; prints CCR/s and latency.
    Diameter(reckon_sim::diameter_load::DiameterArgs),
}

#[derive(Args)]
struct DstArgs {
    /// First seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// How many seeds from the first one.
    #[arg(long, default_value_t = 1)]
    seeds: u64,
    /// Steps per seed.
    #[arg(long, default_value_t = 1000)]
    steps: u64,
    /// Plant a bug to see the simulator catch it: reply-before-sync,
    /// answers-before-authorisation, refund-without-charge,
    /// checkpoint-without-copy.
    #[arg(long)]
    mutation: Option<String>,
}

fn dst(args: DstArgs) -> Result<bool, String> {
    use reckon_sim::dst::{run, DstConfig, Mutation};
    let mutation = match args.mutation.as_deref() {
        None => None,
        Some(name) => Some(Mutation::parse(name).ok_or_else(|| {
            let known: Vec<&str> = Mutation::ALL.iter().map(|(_, n)| *n).collect();
            format!("unknown mutation {name:?} (known: {})", known.join(", "))
        })?),
    };
    if args.seeds == 0 || args.steps == 0 {
        return Err("--seeds and --steps must be at least 1".into());
    }
    let started = std::time::Instant::now();
    let (mut crashes, mut acknowledged, mut checkpoints) = (0u64, 0u64, 0u64);
    for (i, seed) in (args.seed..args.seed.saturating_add(args.seeds)).enumerate() {
        match run(DstConfig {
            seed,
            steps: args.steps,
            mutation,
        }) {
            Ok(report) => {
                crashes += report.crashes;
                acknowledged += report.acknowledged;
                checkpoints += report.checkpoints;
                if args.seeds == 1 {
                    println!(
                        "seed {seed}: {} steps, {} requests, {} acknowledged, {} crashes, {} checkpoints, run digest {:016x}",
                        report.steps, report.requests, report.acknowledged, report.crashes, report.checkpoints, report.run_digest
                    );
                }
            }
            Err(violation) => {
                println!("seed {seed}: {violation}");
                return Ok(false);
            }
        }
        if (i + 1) % 1000 == 0 {
            eprintln!("{} seeds passed ({:.0?})", i + 1, started.elapsed());
        }
    }
    println!(
        "{} seeds × {} steps: no violation ({} acknowledged answers, {} crash-restarts, {} checkpoints) in {:.1?}",
        args.seeds,
        args.steps,
        acknowledged,
        crashes,
        checkpoints,
        started.elapsed()
    );
    Ok(true)
}

/// Options shared by `load` and `redis`: the shape and length of the load,
/// what to sample, and where the report goes.
#[derive(Args)]
struct RunArgs {
    /// Accounts to provision and draw on (1 to 10,000,000).
    #[arg(long, default_value_t = 1000)]
    accounts: u64,
    /// First account id (use another range to keep runs apart).
    #[arg(long, default_value_t = 1_000_000_000)]
    account_base: u64,
    /// Connections to open (1 to 1024).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Requests in flight per connection (1 to 4096).
    #[arg(long, default_value_t = 64)]
    depth: usize,
    /// Open-loop target in requests per second; 0: closed loop, as fast as possible.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Seconds of load.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Opening balance of each account's bucket of each unit.
    #[arg(long, default_value_t = 1_000_000_000_000)]
    balance: u64,
    /// Seed of the workload's random choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Generator threads; 0: one per core (at most one per connection).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Do not create accounts: they exist from an earlier run with the same --account-base.
    #[arg(long)]
    no_provision: bool,
    /// Read every balance before and after and check the ledger against the acknowledged debits (at most 1,000,000 accounts).
    #[arg(long)]
    verify: bool,
    /// Give every account a monthly and a yearly hard budget in each unit, never reached (what enforcing spend controls costs).
    #[arg(long)]
    budgets: bool,
    /// The server's process id (or `auto`: whoever listens on the server's port here), to sample its RSS and CPU.
    #[arg(long)]
    server_pid: Option<String>,
    /// Seconds between samples of the server's RSS and data directory.
    #[arg(long, default_value_t = 10)]
    sample_every: u64,
    /// RSS and disk are judged flat from this many seconds into the run on.
    #[arg(long, default_value_t = 120)]
    flat_after: u64,
    /// Largest spread (max over min, in %) still called flat.
    #[arg(long, default_value_t = 10)]
    flat_tolerance: u32,
    /// The server's history_retention_mb: its history store is judged against this rather than for flatness.
    #[arg(long, default_value_t = reckon_balances::journal::HISTORY_BYTES_MAX_DEFAULT >> 20)]
    history_retention_mb: u64,
    /// Exit 1 unless RSS and disk were flat and the last minute's throughput was at least --min-last-vs-first % of the first's.
    #[arg(long)]
    require_steady: bool,
    /// With --require-steady: the least throughput of the last window, in % of the first.
    #[arg(long, default_value_t = 90.0)]
    min_last_vs_first: f64,
    /// Where to write the JSON report.
    #[arg(long, default_value = "reckon-sim-load.json")]
    report: PathBuf,
    /// Where to write the chart: .svg, or .html for a page with tables.
    #[arg(long, default_value = "reckon-sim-load.svg")]
    chart: PathBuf,
    /// No progress lines on stderr.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
struct LoadArgs {
    /// Server address.
    #[arg(long, env = "RECKON_SERVER", default_value = "127.0.0.1:7878")]
    server: String,
    /// Admin credential; default: the token in DATA_DIR/admin.token.
    #[arg(long, env = "RECKON_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Data directory of the server: its admin token is used when --token is not given, and its size on disk is sampled.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Relative weights of the flows: telco, inference, gpu, event, reserve-commit.
    #[arg(long, default_value = "telco=40,inference=40,gpu=10,event=10")]
    mix: Mix,
    /// Mean ms a session waits between its requests (capped by the grant's validity).
    #[arg(long, default_value_t = 0)]
    think_ms: u64,
    /// Send up to N ready requests of a connection in one BATCH frame (1 to 1024; 1: a frame per request).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args)]
struct RedisArgs {
    /// Redis address.
    #[arg(long, default_value = "127.0.0.1:6379")]
    server: String,
    /// Redis's data directory, whose size on disk to sample.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args)]
struct SinkArgs {
    /// Address to listen on (port 0: any free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:7979")]
    listen: std::net::SocketAddr,
}

async fn sink(args: SinkArgs) -> Result<bool, String> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("listening on {}: {e}", args.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    eprintln!("reckon-sim sink listening on {addr}");
    tokio::select! {
        _ = reckon_sim::sink::serve(listener) => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(true)
}

#[derive(Args)]
struct CompareArgs {
    /// The baseline's JSON report (e.g. Redis).
    baseline: PathBuf,
    /// The candidate's JSON report (e.g. Reckon).
    candidate: PathBuf,
}

fn token(args: &LoadArgs) -> Result<String, String> {
    if let Some(t) = &args.token {
        return Ok(t.clone());
    }
    let path = args
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("reckon-data"))
        .join(reckon_charging::config::ADMIN_TOKEN_FILE);
    std::fs::read_to_string(&path)
        .map(|t| t.trim().to_string())
        .map_err(|e| {
            format!(
                "no --token given and {} is unreadable ({e}); pass --token or the server's --data-dir",
                path.display()
            )
        })
}

fn chart_kind_ok(path: &std::path::Path) -> bool {
    matches!(
        path.extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase())
            .as_deref(),
        Some("svg" | "html" | "htm")
    )
}

fn server_pid(arg: &Option<String>, server: &str) -> Result<Option<u32>, String> {
    match arg.as_deref() {
        None => Ok(None),
        Some("auto") => {
            use std::net::ToSocketAddrs;
            let addr = server
                .to_socket_addrs()
                .map_err(|e| format!("--server-pid auto: {server}: {e}"))?
                .next()
                .ok_or_else(|| format!("--server-pid auto: {server} has no address"))?;
            sample::listener_pid(addr)
                .map(Some)
                .map_err(|e| format!("--server-pid auto: {e}"))
        }
        Some(n) => {
            let pid: u32 = n
                .parse()
                .map_err(|_| format!("--server-pid {n:?}: a process id or `auto`"))?;
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                return Err(format!("--server-pid {pid}: no such process"));
            }
            Ok(Some(pid))
        }
    }
}

/// A load config from the shared options (mix, credential and batch set by the caller).
fn base_config(
    run: &RunArgs,
    server: String,
    data_dir: Option<PathBuf>,
) -> Result<LoadConfig, String> {
    if !chart_kind_ok(&run.chart) {
        return Err(format!(
            "--chart {}: the file name must end in .svg or .html",
            run.chart.display()
        ));
    }
    let sampling = SamplingConfig {
        server_pid: server_pid(&run.server_pid, &server)?,
        data_dir,
        every: Duration::from_secs(run.sample_every),
        flat_after: Duration::from_secs(run.flat_after),
        tolerance_pct: run.flat_tolerance,
        history_retention_bytes: run.history_retention_mb.saturating_mul(1 << 20),
    };
    Ok(LoadConfig {
        server,
        token: String::new(),
        accounts: run.accounts,
        account_base: run.account_base,
        connections: run.connections,
        depth: run.depth,
        rate: run.rate,
        duration: Duration::from_secs(run.duration),
        mix: Mix::default(),
        balance: run.balance,
        think_ms: 0,
        seed: run.seed,
        skip_provision: run.no_provision,
        verify: run.verify,
        budgets: run.budgets,
        progress: !run.quiet,
        threads: run.threads,
        batch: 1,
        sampling,
    })
}

/// Waits for Ctrl-C or SIGTERM; false if neither can be waited for.
async fn signalled(term: &mut Option<tokio::signal::unix::Signal>) -> bool {
    match term.as_mut() {
        Some(t) => tokio::select! {
            r = tokio::signal::ctrl_c() => r.is_ok(),
            r = t.recv() => r.is_some(),
        },
        None => tokio::signal::ctrl_c().await.is_ok(),
    }
}

/// The first Ctrl-C or SIGTERM ends the load early (with a report); a
/// second one quits.
fn stop_on_ctrl_c() -> CancellationToken {
    use tokio::signal::unix::{signal, SignalKind};
    let stop = CancellationToken::new();
    let on_signal = stop.clone();
    tokio::spawn(async move {
        let mut term = signal(SignalKind::terminate()).ok();
        if signalled(&mut term).await {
            eprintln!(
                "reckon-sim: stopping: terminating open sessions (Ctrl-C again to quit at once)"
            );
            on_signal.cancel();
            if signalled(&mut term).await {
                std::process::exit(130);
            }
        }
    });
    stop
}

/// Prints and writes the report; false if a check failed.
fn finish(outcome: &load::LoadOutcome, run: &RunArgs) -> Result<bool, String> {
    let r = &outcome.report;
    print!("{}", report::summary(r));
    report::write_json(r, &run.report)
        .map_err(|e| format!("writing {}: {e}", run.report.display()))?;
    report::write_chart(r, &run.chart)
        .map_err(|e| format!("writing {}: {e}", run.chart.display()))?;
    println!(
        "report: {}; chart: {}",
        run.report.display(),
        run.chart.display()
    );
    let mut ok = !matches!(&r.verification, Some(v) if !v.exact);
    if run.require_steady {
        let why = report::steady_failures(r, run.min_last_vs_first);
        if why.is_empty() {
            println!("steady state: YES (throughput held, RSS and disk flat)");
        } else {
            println!("steady state: NO: {}", why.join("; "));
            ok = false;
        }
    }
    Ok(ok)
}

async fn load(args: LoadArgs) -> Result<bool, String> {
    let mut config = base_config(&args.run, args.server.clone(), args.data_dir.clone())?;
    config.token = token(&args)?;
    config.mix = args.mix.clone();
    config.think_ms = args.think_ms;
    config.batch = args.batch;
    config.validate().map_err(|e| e.to_string())?;
    let outcome = load::run_with_stop(&config, stop_on_ctrl_c())
        .await
        .map_err(|e| e.to_string())?;
    finish(&outcome, &args.run)
}

async fn redis(args: RedisArgs) -> Result<bool, String> {
    let mut config = base_config(&args.run, args.server.clone(), args.data_dir.clone())?;
    config.mix = "reserve-commit=1".parse().expect("a valid mix");
    reckon_sim::resp::validate(&config).map_err(|e| e.to_string())?;
    let outcome = load::run_redis(&config, stop_on_ctrl_c())
        .await
        .map_err(|e| e.to_string())?;
    finish(&outcome, &args.run)
}

fn compare(args: CompareArgs) -> Result<bool, String> {
    let read = |p: &PathBuf| -> Result<serde_json::Value, String> {
        let text =
            std::fs::read_to_string(p).map_err(|e| format!("reading {}: {e}", p.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))
    };
    let text = report::compare(&read(&args.baseline)?, &read(&args.candidate)?)?;
    print!("{text}");
    Ok(true)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("reckon-sim: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Cmd::Load(args) => runtime.block_on(load(args)),
        Cmd::Redis(args) => runtime.block_on(redis(args)),
        Cmd::Compare(args) => compare(args),
        Cmd::Sink(args) => runtime.block_on(sink(args)),
        Cmd::Dst(args) => dst(args),
        Cmd::Diameter(args) => runtime.block_on(reckon_sim::diameter_load::main(args)),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("reckon-sim: a check failed (see above)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("reckon-sim: {e}");
            ExitCode::from(2)
        }
    }
}
