//! `reckon-sim`: drive a running Reckon server with realistic load.

use clap::{Args, Parser, Subcommand};
use reckon_sim::load::{self, LoadConfig};
use reckon_sim::report;
use reckon_sim::workload::Mix;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "reckon-sim", version, about = "Reckon load generator")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Drive a running server over the native protocol with telco sessions,
    /// inference requests, GPU jobs and events; print throughput and
    /// latency percentiles, write a JSON report and a latency chart.
    Load(LoadArgs),
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
    /// Plant a bug to see the simulator catch it: reply-before-sync.
    #[arg(long)]
    mutation: Option<String>,
}

fn dst(args: DstArgs) -> Result<bool, String> {
    use reckon_sim::dst::{run, DstConfig, Mutation};
    let mutation = match args.mutation.as_deref() {
        None => None,
        Some("reply-before-sync") => Some(Mutation::ReplyBeforeSync),
        Some(other) => {
            return Err(format!(
                "unknown mutation {other:?} (known: reply-before-sync)"
            ))
        }
    };
    if args.seeds == 0 || args.steps == 0 {
        return Err("--seeds and --steps must be at least 1".into());
    }
    let started = std::time::Instant::now();
    let (mut crashes, mut acknowledged) = (0u64, 0u64);
    for (i, seed) in (args.seed..args.seed.saturating_add(args.seeds)).enumerate() {
        match run(DstConfig {
            seed,
            steps: args.steps,
            mutation,
        }) {
            Ok(report) => {
                crashes += report.crashes;
                acknowledged += report.acknowledged;
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
        "{} seeds × {} steps: no violation ({} acknowledged answers, {} crash-restarts) in {:.1?}",
        args.seeds,
        args.steps,
        acknowledged,
        crashes,
        started.elapsed()
    );
    Ok(true)
}

#[derive(Args)]
struct LoadArgs {
    /// Server address.
    #[arg(long, env = "RECKON_SERVER", default_value = "127.0.0.1:7878")]
    server: String,
    /// Admin credential; default: the token in DATA_DIR/admin.token.
    #[arg(long, env = "RECKON_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Data directory of the server, whose admin token to use when --token is not given.
    #[arg(long, default_value = "reckon-data")]
    data_dir: PathBuf,
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
    /// Relative weights of the flows: telco, inference, gpu, event.
    #[arg(long, default_value = "telco=40,inference=40,gpu=10,event=10")]
    mix: Mix,
    /// Opening balance of each account's bucket of each unit.
    #[arg(long, default_value_t = 1_000_000_000_000)]
    balance: u64,
    /// Mean ms a session waits between its requests (capped by the grant's validity).
    #[arg(long, default_value_t = 0)]
    think_ms: u64,
    /// Seed of the workload's random choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Do not create accounts: they exist from an earlier run with the same --account-base.
    #[arg(long)]
    no_provision: bool,
    /// Read every balance before and after and check the ledger against the acknowledged debits (at most 1,000,000 accounts).
    #[arg(long)]
    verify: bool,
    /// Where to write the JSON report.
    #[arg(long, default_value = "reckon-sim-load.json")]
    report: PathBuf,
    /// Where to write the latency chart: .svg, or .html for a page with tables.
    #[arg(long, default_value = "reckon-sim-load.svg")]
    chart: PathBuf,
    /// No progress lines on stderr.
    #[arg(long)]
    quiet: bool,
}

fn token(args: &LoadArgs) -> Result<String, String> {
    if let Some(t) = &args.token {
        return Ok(t.clone());
    }
    let path = args
        .data_dir
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

async fn load(args: LoadArgs) -> Result<bool, String> {
    if !chart_kind_ok(&args.chart) {
        return Err(format!(
            "--chart {}: the file name must end in .svg or .html",
            args.chart.display()
        ));
    }
    let config = LoadConfig {
        token: token(&args)?,
        server: args.server,
        accounts: args.accounts,
        account_base: args.account_base,
        connections: args.connections,
        depth: args.depth,
        rate: args.rate,
        duration: Duration::from_secs(args.duration),
        mix: args.mix,
        balance: args.balance,
        think_ms: args.think_ms,
        seed: args.seed,
        skip_provision: args.no_provision,
        verify: args.verify,
        progress: !args.quiet,
    };
    config.validate().map_err(|e| e.to_string())?;
    // The first Ctrl-C ends the load early (with a report); a second one quits.
    let stop = CancellationToken::new();
    let on_signal = stop.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!(
                "reckon-sim: stopping: terminating open sessions (Ctrl-C again to quit at once)"
            );
            on_signal.cancel();
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        }
    });
    let outcome = load::run_with_stop(&config, stop)
        .await
        .map_err(|e| e.to_string())?;
    let r = &outcome.report;
    print!("{}", report::summary(r));
    report::write_json(r, &args.report)
        .map_err(|e| format!("writing {}: {e}", args.report.display()))?;
    report::write_chart(r, &args.chart)
        .map_err(|e| format!("writing {}: {e}", args.chart.display()))?;
    println!(
        "report: {}; latency chart: {}",
        args.report.display(),
        args.chart.display()
    );
    Ok(!matches!(&r.verification, Some(v) if !v.exact))
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
