//! `reckon`: run the server, or administer and try it over the native protocol.

use clap::{Args, Parser, Subcommand};
use reckon_charging::client::Client;
use reckon_charging::config::{admin_token, Config};
use reckon_protocol::message::{
    AccountCreate, AccountStatusChange, BalanceQuery, BucketGrant, Ccr, LimitSet, Message,
    ReservationList, ServiceRequest, TopUp,
};
use reckon_protocol::types::{self as wt, UnitAmount};
use rust_decimal::Decimal;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "reckon",
    version,
    about = "Reckon online charging server and admin CLI"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Args, Clone)]
struct Conn {
    /// Server address.
    #[arg(
        long,
        env = "RECKON_SERVER",
        default_value = "127.0.0.1:7878",
        global = true
    )]
    server: String,
    /// Credential; default: the admin token in DATA_DIR/admin.token.
    #[arg(long, env = "RECKON_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// Data directory whose admin token to use when --token is not given.
    #[arg(long, default_value = "reckon-data", global = true)]
    data_dir: PathBuf,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the server (works with no configuration file).
    Serve {
        /// TOML configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Data directory (overrides the file).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Listen address (overrides the file), e.g. 127.0.0.1:7878.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Also serve Diameter Credit-Control (Gy/Ro), with the file's
        /// `[diameter]` section or its defaults (127.0.0.1:3868).
        #[arg(long)]
        diameter: bool,
        /// Admin HTTP listener for /metrics, /healthz and /readyz
        /// (overrides the file's `admin_listen`): an address, or `off`.
        /// Default 127.0.0.1 on a free port, printed at start.
        #[arg(long, value_name = "ADDR|off")]
        admin_listen: Option<String>,
        /// Log lines as text (colour only on a terminal) or as JSON
        /// objects, one per line.
        #[arg(long, value_enum, env = "RECKON_LOG_FORMAT", default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
    /// Create or change accounts.
    Account {
        #[command(subcommand)]
        action: AccountCmd,
        #[command(flatten)]
        conn: Conn,
    },
    /// Credit an account (top-up or refund).
    Topup {
        /// Account id.
        #[arg(long)]
        account: u64,
        /// Amount, e.g. 25.00.
        #[arg(long)]
        amount: Decimal,
        /// Unit, e.g. USD, credits, gpu_seconds.
        #[arg(long, default_value = "USD")]
        unit: String,
        /// A specific bucket (default: the account's plain bucket of the unit).
        #[arg(long)]
        bucket: Option<u64>,
        /// Record as a refund rather than a top-up.
        #[arg(long)]
        refund: bool,
        /// Why, for the audit trail.
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Grant a bucket with its own terms (promo credits, a committed pool).
    Grant {
        /// Account id.
        #[arg(long)]
        account: u64,
        /// Unit.
        #[arg(long)]
        unit: String,
        /// Opening amount.
        #[arg(long)]
        amount: Decimal,
        /// Valid from: ISO 8601 UTC (2027-01-01, 2027-01-01T00:00:00Z) or
        /// ms since the epoch; default at once.
        #[arg(long, default_value = "0", value_parser = reckon_charging::timefmt::parse_time)]
        valid_from: u64,
        /// Valid until (same forms, or never); default never.
        #[arg(long, default_value = "never", value_parser = reckon_charging::timefmt::parse_time)]
        valid_until: u64,
        /// Higher draws first.
        #[arg(long, default_value_t = 0)]
        priority: i16,
        /// Overdraft allowed.
        #[arg(long, default_value = "0")]
        credit_limit: Decimal,
        /// Services it may pay for (comma separated; default any).
        #[arg(long, value_delimiter = ',')]
        services: Vec<u32>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Set or remove a cap on an account's subtree.
    Limit {
        /// Account id.
        #[arg(long)]
        account: u64,
        /// Unit capped.
        #[arg(long)]
        unit: String,
        /// The cap; omit to remove.
        #[arg(long)]
        cap: Option<Decimal>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Budgets: spend controls with periods, hard or soft caps.
    Budget {
        #[command(subcommand)]
        action: BudgetCmd,
    },
    /// Spend-control alerts: print those kept, or follow them as they are raised.
    Alerts {
        #[command(subcommand)]
        action: AlertsCmd,
    },
    /// Show an account's buckets.
    Balance {
        /// Account id.
        #[arg(long)]
        account: u64,
        #[command(flatten)]
        conn: Conn,
    },
    /// List an account's open reservations.
    Reservations {
        /// Account id.
        #[arg(long)]
        account: u64,
        #[command(flatten)]
        conn: Conn,
    },
    /// Try session credit control by hand.
    Session {
        #[command(subcommand)]
        action: SessionCmd,
    },
    /// Rate cards: apply a file (validates, then activates its versions
    /// through the server's log), or show the cards and their versions.
    Ratecard {
        #[command(subcommand)]
        action: RatecardCmd,
        #[command(flatten)]
        conn: Conn,
    },
    /// One-shot events: debit, refund, check, price.
    Event {
        /// debit | refund | check | price
        action: String,
        /// For a refund: the next request number of the session or event
        /// refunded (1 for an event's first refund); others use 0.
        #[arg(long, default_value_t = 0)]
        number: u32,
        #[command(flatten)]
        ccr: CcrArgs,
    },
    /// The server's state (admin credential, protocol version 2): version,
    /// uptime, recovered log position, queue depth, last checkpoint, disk use.
    Status {
        #[command(flatten)]
        conn: Conn,
    },
    /// Have the running server write a consistent backup (admin credential,
    /// protocol version 2): its snapshot and log up to one position, fsynced,
    /// then a manifest. The directory is on the server's host.
    Backup {
        /// Directory to write, new or empty.
        #[arg(long)]
        to: PathBuf,
        #[command(flatten)]
        conn: Conn,
    },
    /// Restore a backup into a new data directory (no server needed), then
    /// recover it and check its state digest against the backup's.
    Restore {
        /// The backup directory.
        #[arg(long)]
        from: PathBuf,
        /// The new data directory (new or empty).
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Write accounts as JSON lines, from a stopped server's data directory
    /// (or a restored backup).
    Export {
        #[command(subcommand)]
        what: ExportCmd,
    },
    /// Create accounts from JSON lines (as `export accounts` writes them).
    /// The whole file is checked first, against itself and the server: a
    /// file with any bad line is refused, every bad line named, and nothing
    /// changes.
    Import {
        #[command(subcommand)]
        what: ImportCmd,
    },
    /// Print a new random credential token (256 bits, hex) for a
    /// `[[credential]]` entry of the configuration.
    Token,
    /// Verify a stopped server's data directory, changing nothing: the log
    /// (what a start would cut or refuse), the snapshot, a replay and the
    /// invariants. Exits non-zero when a start would refuse.
    Check {
        /// The data directory.
        #[arg(long, default_value = "reckon-data")]
        data_dir: PathBuf,
    },
}

/// How `reckon serve` writes its log lines (to stderr).
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

#[derive(Subcommand)]
enum ExportCmd {
    /// Every account, its buckets, caps and status.
    Accounts {
        /// The data directory (the server must be stopped).
        #[arg(long, default_value = "reckon-data")]
        data_dir: PathBuf,
        /// Write here instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ImportCmd {
    /// Accounts from a JSON-lines file.
    Accounts {
        /// The file.
        file: PathBuf,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Subcommand)]
enum RatecardCmd {
    /// Validate a TOML or JSON rate card and activate it.
    Apply {
        /// The file.
        file: PathBuf,
    },
    /// List the rate cards and their versions.
    Show {
        /// One card's id (default: all).
        #[arg(long, default_value = "")]
        card: String,
    },
}

#[derive(Subcommand)]
enum AccountCmd {
    /// Create an account.
    Create {
        /// Its id.
        #[arg(long)]
        id: u64,
        /// Its parent (organisation, department, ...).
        #[arg(long)]
        parent: Option<u64>,
        /// Draw on the parent's buckets when its own run short.
        #[arg(long)]
        draws_on_parent: bool,
    },
    /// Set an account's status: active, suspended or closed.
    Status {
        /// Its id.
        #[arg(long)]
        id: u64,
        /// active | suspended | closed
        status: String,
    },
}

#[derive(Args, Clone)]
struct CcrArgs {
    /// Session id.
    #[arg(long)]
    session: String,
    /// Account charged.
    #[arg(long)]
    account: u64,
    /// Service (rating group).
    #[arg(long, default_value_t = 1)]
    service: u32,
    /// Units asked for, UNIT=QTY (repeatable).
    #[arg(long = "request")]
    requested: Vec<String>,
    /// Units used, UNIT=QTY (repeatable).
    #[arg(long = "used")]
    used: Vec<String>,
    /// A usage attribute rate-card rules match, KEY=VALUE (repeatable), e.g. model=large.
    #[arg(long = "attr")]
    attributes: Vec<String>,
    #[command(flatten)]
    conn: Conn,
}

/// The period of a budget on the command line.
#[derive(clap::Args)]
struct PeriodArgs {
    /// month, quarter, year, lifetime, months:N (1..=12) or days:N.
    #[arg(long, default_value = "month")]
    period: String,
    /// Start of one period, a local date or time (YYYY-MM-DD or
    /// YYYY-MM-DDTHH:MM:SSZ, read in --utc-offset); for a contract year,
    /// the contract's start. Default: 1 January 2000, local midnight.
    #[arg(long)]
    anchor: Option<String>,
    /// The local time the periods follow, e.g. +01:00 or -05:00.
    #[arg(long, default_value = "+00:00", allow_hyphen_values = true)]
    utc_offset: String,
}

#[derive(Subcommand)]
enum AlertsCmd {
    /// Print the alerts the server keeps after --after, then exit.
    List {
        /// Print alerts with a larger sequence number (0: all kept).
        #[arg(long, default_value_t = 0)]
        after: u64,
        #[command(flatten)]
        conn: Conn,
    },
    /// Print alerts after --after, then each as it is raised, until
    /// interrupted; reconnects and resumes after the last one printed.
    Watch {
        /// Print alerts with a larger sequence number (0: all kept).
        #[arg(long, default_value_t = 0)]
        after: u64,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Subcommand)]
enum BudgetCmd {
    /// Set a budget on an account's subtree (replaces one of the same unit and period kind).
    Set {
        /// Account id (an organisation, department or key).
        #[arg(long)]
        account: u64,
        /// Unit budgeted (e.g. USD, gpu_hours).
        #[arg(long)]
        unit: String,
        /// The cap per period.
        #[arg(long)]
        cap: Decimal,
        #[command(flatten)]
        period: PeriodArgs,
        /// Soft: report (alerts) but never refuse.
        #[arg(long)]
        soft: bool,
        /// Raise an alert when the period's usage reaches this percent of
        /// the cap (repeat: --alert 80 --alert 100), once per period.
        #[arg(long = "alert")]
        alerts: Vec<u8>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Remove the budget of a unit and period kind.
    Remove {
        /// Account id.
        #[arg(long)]
        account: u64,
        /// Unit budgeted.
        #[arg(long)]
        unit: String,
        #[command(flatten)]
        period: PeriodArgs,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show an account's budgets (and buckets).
    Show {
        /// Account id.
        #[arg(long)]
        account: u64,
        #[command(flatten)]
        conn: Conn,
    },
}

/// Reads `+HH:MM` / `-HH:MM` as minutes east of UTC.
fn utc_offset(text: &str) -> Result<i16, String> {
    let bad = || format!("--utc-offset {text:?}: expected +HH:MM or -HH:MM");
    let (sign, rest) = match text.as_bytes().first() {
        Some(b'+') => (1, &text[1..]),
        Some(b'-') => (-1, &text[1..]),
        _ => return Err(bad()),
    };
    let (h, m) = rest.split_once(':').ok_or_else(bad)?;
    let (h, m): (i16, i16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if h > 18 || m > 59 || h * 60 + m > 18 * 60 {
        return Err(bad());
    }
    Ok(sign * (h * 60 + m))
}

/// A budget period from the command line.
fn limit_period(args: &PeriodArgs) -> Result<wt::LimitPeriod, String> {
    let offset_min = utc_offset(&args.utc_offset)?;
    let anchor_ms = match &args.anchor {
        // A local date or time: shifted by the offset to UTC.
        Some(a) => {
            let local =
                reckon_charging::timefmt::parse_time(a).map_err(|e| format!("--anchor {e}"))?;
            (local as i64 - offset_min as i64 * 60_000).max(0) as u64
        }
        None => (946_684_800_000i64 - offset_min as i64 * 60_000) as u64,
    };
    let months = |months: u8| wt::LimitPeriod::Months {
        months,
        anchor_ms,
        offset_min,
    };
    let p = match args.period.as_str() {
        "lifetime" => wt::LimitPeriod::Lifetime,
        "month" => months(1),
        "quarter" => months(3),
        "year" => months(12),
        other => match other.split_once(':') {
            Some(("months", n)) => months(
                n.parse()
                    .map_err(|_| format!("--period {other:?}: months:N, N in 1..=12"))?,
            ),
            Some(("days", n)) => {
                let days: u64 = n
                    .parse()
                    .map_err(|_| format!("--period {other:?}: days:N"))?;
                wt::LimitPeriod::Fixed {
                    anchor_ms,
                    length_ms: days.saturating_mul(86_400_000),
                }
            }
            _ => {
                return Err(format!(
                "--period {other:?}: expected month, quarter, year, lifetime, months:N or days:N"
            ))
            }
        },
    };
    p.check()
        .map_err(|e| format!("--period {}: {e}", args.period))?;
    Ok(p)
}

/// Prints alerts after `after`: those kept, then (following) each as it is
/// raised, resubscribing after the last printed when the connection drops.
async fn alerts(conn: &Conn, mut after: u64, follow: bool) -> Result<(), String> {
    loop {
        let client = connect(conn).await?;
        let (subscribed, mut feed) = client
            .subscribe_alerts(after)
            .await
            .map_err(|e| e.to_string())?;
        let missed = subscribed.missed(after);
        if missed > 0 {
            println!("({missed} older alert(s) are no longer kept)");
        }
        if subscribed.last_seq < after {
            // The server was restored from an earlier backup.
            after = subscribed.last_seq;
        }
        let backlog_to = subscribed.last_seq;
        if !follow && after >= backlog_to {
            return Ok(());
        }
        while let Some(a) = feed.recv().await {
            let pct = if a.cap.is_zero() {
                String::new()
            } else {
                format!(
                    " ({}%)",
                    (a.used * Decimal::ONE_HUNDRED / a.cap).round_dp(1)
                )
            };
            println!(
                "alert {} at {}: account {} {} budget ({}) reached {}%: used {} of {}{}{}",
                a.seq,
                reckon_charging::timefmt::format_ms(a.at_ms),
                a.account,
                a.unit.as_str(),
                period_kind_text(a.period_kind),
                a.threshold_pct,
                a.used,
                a.cap,
                pct,
                if a.soft { ", soft" } else { "" }
            );
            after = a.seq;
            if !follow && after >= backlog_to {
                return Ok(());
            }
        }
        if !follow {
            // Every kept alert was another organisation's.
            return Ok(());
        }
        eprintln!("reckon: connection lost; resubscribing after alert {after}");
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// A period kind as people read it (SPEC 6.5: 0 lifetime, months, 13 fixed).
fn period_kind_text(kind: u8) -> String {
    match kind {
        0 => "lifetime".into(),
        1 => "monthly".into(),
        12 => "yearly".into(),
        13 => "fixed-period".into(),
        n => format!("{n}-month"),
    }
}

/// A period as people read it.
fn period_text(p: &wt::LimitPeriod) -> String {
    let offset = |m: i16| {
        format!(
            "UTC{}{:02}:{:02}",
            if m < 0 { '-' } else { '+' },
            m.abs() / 60,
            m.abs() % 60
        )
    };
    match *p {
        wt::LimitPeriod::Lifetime => "lifetime".into(),
        wt::LimitPeriod::Months {
            months: 1,
            offset_min,
            ..
        } => format!("monthly ({})", offset(offset_min)),
        wt::LimitPeriod::Months {
            months: 12,
            anchor_ms,
            offset_min,
        } => format!(
            "yearly from {} ({})",
            reckon_charging::timefmt::format_ms(
                (anchor_ms as i64 + offset_min as i64 * 60_000).max(0) as u64
            ),
            offset(offset_min)
        ),
        wt::LimitPeriod::Months {
            months, offset_min, ..
        } => format!("every {months} months ({})", offset(offset_min)),
        wt::LimitPeriod::Fixed { length_ms, .. } => {
            format!("every {} days", length_ms as f64 / 86_400_000.0)
        }
    }
}

#[derive(Subcommand)]
enum SessionCmd {
    /// INITIAL: open a session and get a first grant (request number 0).
    Open(CcrArgs),
    /// UPDATE: report usage, get more.
    Update {
        /// This request's number: 1 for the first UPDATE, then 2, 3, ...
        #[arg(long)]
        number: u32,
        #[command(flatten)]
        ccr: CcrArgs,
    },
    /// TERMINATE: report final usage and close.
    Close {
        /// This request's number: one more than the session's last.
        #[arg(long)]
        number: u32,
        #[command(flatten)]
        ccr: CcrArgs,
    },
}

fn quantities(list: &[String]) -> Result<Vec<UnitAmount>, String> {
    list.iter()
        .map(|item| {
            let (unit, qty) = item
                .split_once('=')
                .ok_or_else(|| format!("{item:?}: expected UNIT=QTY"))?;
            let unit = wt::Unit::new(unit).map_err(|e| format!("{item:?}: {e}"))?;
            let qty: Decimal = qty
                .parse()
                .map_err(|_| format!("{item:?}: {qty:?} is not a number"))?;
            Ok(UnitAmount::new(unit, qty))
        })
        .collect()
}

fn unit(text: &str) -> Result<wt::Unit, String> {
    wt::Unit::new(text).map_err(|e| e.to_string())
}

/// The credential: --token, else the data directory's admin token.
fn token(conn: &Conn) -> Result<String, String> {
    Ok(match &conn.token {
        Some(t) => t.clone(),
        None => {
            let path = conn
                .data_dir
                .join(reckon_charging::config::ADMIN_TOKEN_FILE);
            std::fs::read_to_string(&path).map(|t| t.trim().to_string()).map_err(|e| {
                format!("no --token given and {} is unreadable ({e}); start `reckon serve` first or pass --token", path.display())
            })?
        }
    })
}

async fn connect(conn: &Conn) -> Result<Client, String> {
    let token = token(conn)?;
    Client::connect(&conn.server, &token)
        .await
        .map_err(|e| format!("{}: {e}", conn.server))
}

fn show(message: &Message) -> Result<(), String> {
    match message {
        Message::AdminResult(r) if r.code.is_ok() => {
            if r.bucket != 0 {
                println!("ok: bucket {} balance {}", r.bucket, r.balance);
            } else {
                println!("ok");
            }
            Ok(())
        }
        Message::AdminResult(r) => Err(format!(
            "refused: {}{}",
            r.code.name().unwrap_or("unknown code"),
            if r.balance.is_zero() {
                String::new()
            } else {
                format!(" ({})", r.balance)
            }
        )),
        Message::Balance(b) => {
            println!(
                "account {}{} {:?}{}",
                b.account,
                b.parent
                    .map(|p| format!(" (parent {p})"))
                    .unwrap_or_default(),
                b.status,
                if b.draws_on_parent {
                    ", draws on parent"
                } else {
                    ""
                }
            );
            if b.buckets.is_empty() {
                println!("  no buckets");
            }
            for l in &b.limits {
                let spent = l.used + l.held;
                let pct = if l.cap.is_zero() {
                    String::new()
                } else {
                    format!(" ({}%)", (spent * Decimal::ONE_HUNDRED / l.cap).round_dp(1))
                };
                let alerts = if l.alerts.is_empty() {
                    String::new()
                } else {
                    let pcts: Vec<String> = l.alerts.iter().map(u8::to_string).collect();
                    format!(", alerts at {} %", pcts.join("/"))
                };
                println!(
                    "  budget {} {} {}: cap {}, used {} + held {}{}{}{}",
                    l.unit.as_str(),
                    period_text(&l.period),
                    if l.soft { "soft" } else { "hard" },
                    l.cap,
                    l.used,
                    l.held,
                    pct,
                    if l.period_end_ms == u64::MAX {
                        String::new()
                    } else {
                        format!(
                            ", period {} .. {}",
                            reckon_charging::timefmt::format_ms(l.period_start_ms),
                            reckon_charging::timefmt::format_ms(l.period_end_ms)
                        )
                    },
                    alerts
                );
            }
            for k in &b.buckets {
                let validity = match (k.valid_from_ms, k.valid_until_ms) {
                    (0, u64::MAX) => String::new(),
                    (from, until) => format!(
                        "  valid {} .. {}",
                        reckon_charging::timefmt::format_ms(from),
                        reckon_charging::timefmt::format_ms(until)
                    ),
                };
                println!(
                    "  bucket {:>4}  {:>20} {:<12} held {:>14}  available {:>20}{}{}{}",
                    k.bucket,
                    k.amount,
                    k.unit.as_str(),
                    k.held,
                    k.available,
                    if k.priority != 0 {
                        format!("  priority {}", k.priority)
                    } else {
                        String::new()
                    },
                    validity,
                    if k.expired { "  EXPIRED" } else { "" }
                );
            }
            Ok(())
        }
        Message::Reservations(list) => {
            for r in &list.reservations {
                println!(
                    "  reservation {:>8}  account {}  {} {}  expires {}",
                    r.reservation,
                    r.account,
                    r.remaining,
                    r.unit.as_str(),
                    reckon_charging::timefmt::format_ms(r.expires_at_ms)
                );
            }
            println!(
                "{} open reservation(s){}",
                list.reservations.len(),
                if list.more { ", more follow" } else { "" }
            );
            Ok(())
        }
        Message::Cca(a) => {
            println!(
                "result {} {}",
                a.result_code.0,
                a.result_code.name().unwrap_or("")
            );
            for s in &a.services {
                let granted: Vec<String> = s
                    .granted
                    .iter()
                    .map(|g| format!("{} {}", g.amount, g.unit.as_str()))
                    .collect();
                println!(
                    "  service {}: {} {}{}{}{}",
                    s.service_id,
                    s.result_code.0,
                    s.result_code.name().unwrap_or(""),
                    if granted.is_empty() {
                        String::new()
                    } else {
                        format!(", granted {}", granted.join(", "))
                    },
                    if s.validity_time_s > 0 {
                        format!(", valid {} s", s.validity_time_s)
                    } else {
                        String::new()
                    },
                    s.final_unit_action
                        .map(|f| format!(", final units: {f:?}"))
                        .unwrap_or_default()
                );
                match s.denial {
                    Some(wt::Denial::NoCredit) => println!("    denied: no credit left"),
                    Some(wt::Denial::SpendControl {
                        account,
                        period_kind,
                    }) => println!(
                        "    denied: the {} budget of account {account} is reached",
                        period_kind_text(period_kind)
                    ),
                    None => {}
                }
            }
            for b in &a.balance {
                println!("  available {} {}", b.amount, b.unit.as_str());
            }
            for p in &a.price {
                println!("  price {} {}", p.amount, p.unit.as_str());
            }
            if a.result_code.is_success() {
                Ok(())
            } else {
                Err(format!(
                    "credit control refused: {}",
                    a.result_code.name().unwrap_or("unknown")
                ))
            }
        }
        Message::RateCardResult(r) if r.code.is_ok() => {
            println!(
                "rate card {}: {} version(s) added; it now prices requests",
                r.card, r.versions_added
            );
            if !r.message.is_empty() {
                println!("note: {}", r.message);
            }
            Ok(())
        }
        Message::RateCardResult(r) => Err(format!(
            "rate card refused ({}):\n{}",
            r.code.name().unwrap_or("unknown code"),
            r.message
        )),
        Message::RateCards(list) => {
            if list.cards.is_empty() {
                println!("no rate cards (prices come from the server's configuration)");
            }
            for c in &list.cards {
                println!("card {}{}", c.card, if c.active { " (active)" } else { "" });
                for v in &c.versions {
                    println!(
                        "  version {:>3}  effective {}  charged in {} (currency {})",
                        v.version,
                        reckon_charging::timefmt::format_ms(v.effective_from_ms),
                        v.charge_unit.as_str(),
                        v.currency.as_str()
                    );
                }
            }
            Ok(())
        }
        Message::Error(e) => Err(format!(
            "error {}: {}",
            e.code.name().unwrap_or("?"),
            e.message
        )),
        other => Err(format!("unexpected answer {:?}", other.kind())),
    }
}

async fn send(
    conn: &Conn,
    message: impl FnOnce(&Client) -> Result<Message, String>,
) -> Result<(), String> {
    let client = connect(conn).await?;
    let request = message(&client)?;
    let answer = client.call(request).await.map_err(|e| e.to_string())?;
    show(&answer)
}

fn ccr(
    args: &CcrArgs,
    kind: wt::RequestType,
    number: u32,
    action: Option<wt::EventAction>,
) -> Result<Message, String> {
    // Stamped now: the server refuses a request older than its
    // retransmission window instead of applying it a second time.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    Ok(Message::Ccr(Ccr {
        session_id: args.session.clone(),
        request_type: kind,
        request_number: number,
        account: args.account,
        event_action: action,
        termination_cause: None,
        timestamp_ms: now_ms,
        services: vec![ServiceRequest {
            service_id: args.service,
            requested: quantities(&args.requested)?,
            used: quantities(&args.used)?,
        }],
        attributes: args
            .attributes
            .iter()
            .map(|item| {
                item.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .ok_or_else(|| format!("{item:?}: expected KEY=VALUE"))
            })
            .collect::<Result<_, _>>()?,
    }))
}

async fn serve(
    config: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    listen: Option<std::net::SocketAddr>,
    diameter: bool,
    admin_listen: Option<String>,
) -> Result<(), String> {
    let mut cfg = match config {
        Some(path) => Config::load(&path).map_err(|e| e.to_string())?,
        None => Config::default(),
    };
    if let Some(d) = data_dir {
        cfg.data_dir = d;
    }
    if let Some(l) = listen {
        cfg.listen = l;
    }
    if diameter && cfg.diameter.is_none() {
        cfg.diameter = Some(Default::default());
    }
    if let Some(a) = admin_listen {
        cfg.admin_listen = a;
    }
    if cfg.credential_list.is_empty() {
        admin_token(&cfg.data_dir).map_err(|e| e.to_string())?;
        eprintln!(
            "admin token: {} (the CLI reads it from there)",
            cfg.data_dir
                .join(reckon_charging::config::ADMIN_TOKEN_FILE)
                .display()
        );
    }
    // Bound before recovery, so /readyz can say "recovering" meanwhile.
    let admin = reckon_charging::server::bind_admin(&cfg)
        .await
        .map_err(|e| e.to_string())?;
    if let Some(a) = admin.addr {
        eprintln!("reckon admin listening on {a}");
    }
    let mut server =
        reckon_charging::server::start_with(cfg, reckon_balances::journal::system_clock(), admin)
            .await
            .map_err(|e| e.to_string())?;
    eprintln!("reckon listening on {}", server.addr);
    if let Some(d) = server.diameter_addr {
        eprintln!("reckon diameter (Gy/Ro) listening on {d}");
    }
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("installing the SIGTERM handler: {e}"))?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
        // The journal failed: exit non-zero so a supervisor restarts the
        // server into recovery, rather than linger answering errors.
        result = server.finished() => {
            return result.map_err(|e| format!("{e}; exiting so that a restart recovers from the log"));
        }
    }
    eprintln!("reckon: draining in-flight requests and flushing");
    server.shutdown().await?;
    eprintln!("reckon: stopped");
    Ok(())
}

fn check(data_dir: &std::path::Path) -> Result<(), String> {
    use reckon_balances::journal::Journal;
    use reckon_charging::engine::Engine;
    println!("data directory {}", data_dir.display());
    match Journal::<Engine>::check_data_dir(data_dir) {
        Ok(report) => {
            let w = &report.wal;
            println!(
                "  log: {} segment(s), {} bytes, records {}..={}",
                w.segments,
                w.bytes,
                w.first_lsn.map_or(0, |l| l.0),
                w.last_lsn.0
            );
            match &w.torn_tail {
                Some(t) => println!(
                    "  a start would cut a torn tail: {} bytes at offset {} of {}{} (a write group that was never acknowledged)",
                    t.bytes,
                    t.offset,
                    t.segment.display(),
                    if t.header { ", and rewrite its header" } else { "" }
                ),
                None => println!("  no torn tail"),
            }
            println!(
                "  snapshot: log position {}, {} keys",
                report.snapshot_lsn, report.snapshot_keys
            );
            println!(
                "  replay: {} record(s) after the snapshot; invariants hold",
                report.replayed
            );
            println!("ok: a start would recover this directory");
            Ok(())
        }
        Err(e) => {
            println!("  {e}");
            Err("a start would refuse this data directory (see above); nothing was changed".into())
        }
    }
}

/// `reckon import accounts`: checks the whole file, then the server, then
/// applies it (op ids derived from the file, so a rerun repeats, not
/// doubles).
async fn import_accounts(file: &std::path::Path, conn: &Conn) -> Result<(), String> {
    use reckon_charging::accounts_file::{check, op_id, ERRORS_SHOWN};
    use reckon_protocol::codes::AdminCode;
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let refuse = |errors: Vec<String>| {
        let mut report = format!(
            "{}: refused, nothing changed ({} bad line(s)):",
            file.display(),
            errors.len()
        );
        for e in errors.iter().take(ERRORS_SHOWN) {
            report.push_str("\n  ");
            report.push_str(e);
        }
        if errors.len() > ERRORS_SHOWN {
            report.push_str(&format!("\n  ... and {} more", errors.len() - ERRORS_SHOWN));
        }
        report
    };
    let lines = check(&text).map_err(refuse)?;
    let client = connect(conn).await?;
    // Against the server: new ids, parents that exist (or come earlier).
    let in_file: std::collections::HashSet<u64> = lines.iter().map(|l| l.account.account).collect();
    let mut errors = Vec::new();
    for l in &lines {
        let exists = |account| {
            let client = client.clone();
            async move {
                match client
                    .call(Message::BalanceQuery(BalanceQuery { account }))
                    .await
                {
                    Ok(Message::Balance(_)) => Ok(true),
                    Ok(Message::AdminResult(r)) if r.code == AdminCode::ACCOUNT_NOT_FOUND => {
                        Ok(false)
                    }
                    Ok(other) => Err(format!("unexpected answer {other:?}")),
                    Err(e) => Err(e.to_string()),
                }
            }
        };
        if exists(l.account.account).await? {
            errors.push(format!(
                "line {}: account {} exists already",
                l.line, l.account.account
            ));
        }
        if let Some(p) = l.account.parent.filter(|p| !in_file.contains(p)) {
            if !exists(p).await? {
                errors.push(format!("line {}: parent {p} does not exist", l.line));
            }
        }
    }
    if !errors.is_empty() {
        return Err(refuse(errors));
    }
    let digest = reckon_balances::codec::digest_of(text.as_bytes());
    let applied = |line: usize, answer: Message| -> Result<u64, String> {
        match answer {
            Message::AdminResult(r) if r.code.is_ok() => Ok(r.bucket),
            other => Err(format!(
                "line {line}: the server refused {other:?}; the lines before it were applied (importing the same file again repeats them harmlessly)"
            )),
        }
    };
    for l in &lines {
        let a = &l.account;
        let mut step = 0;
        let mut next_op = || {
            step += 1;
            op_id(digest, l.line, step)
        };
        let call = |m: Message| {
            let client = client.clone();
            async move { client.call(m).await.map_err(|e| e.to_string()) }
        };
        let m = Message::AccountCreate(AccountCreate {
            op_id: next_op(),
            account: a.account,
            parent: a.parent,
            draws_on_parent: a.draws_on_parent,
        });
        applied(l.line, call(m).await?)?;
        for b in &a.buckets {
            let amount: Decimal = b.amount.parse().map_err(|_| "checked".to_string())?;
            let m = Message::BucketGrant(BucketGrant {
                op_id: next_op(),
                account: a.account,
                unit: unit(&b.unit)?,
                amount: amount.max(Decimal::ZERO),
                valid_from_ms: b.valid_from_ms,
                valid_until_ms: b.valid_until_ms.unwrap_or(u64::MAX),
                priority: b.priority,
                credit_limit: b.credit_limit.parse().map_err(|_| "checked".to_string())?,
                services: b.services.clone(),
            });
            let bucket = applied(l.line, call(m).await?)?;
            if amount < Decimal::ZERO {
                // An overdrawn bucket: granted empty, then drawn down.
                let m = Message::Adjust(reckon_protocol::message::Adjust {
                    op_id: next_op(),
                    account: a.account,
                    bucket,
                    delta: amount,
                    reason: "import".into(),
                });
                applied(l.line, call(m).await?)?;
            }
        }
        for c in &a.limits {
            let m = Message::LimitSet(LimitSet {
                op_id: next_op(),
                account: a.account,
                unit: unit(&c.unit)?,
                cap: Some(c.cap.parse().map_err(|_| "checked".to_string())?),
                period: wt::LimitPeriod::Lifetime,
                soft: false,
                alerts: Vec::new(),
            });
            applied(l.line, call(m).await?)?;
        }
    }
    // Statuses last, children first: a suspended parent takes no children.
    for l in lines.iter().rev() {
        if l.status != wt::AccountStatus::Active {
            let m = Message::AccountStatus(AccountStatusChange {
                op_id: op_id(digest, l.line, 0xFFFFF),
                account: l.account.account,
                status: l.status,
            });
            applied(l.line, client.call(m).await.map_err(|e| e.to_string())?)?;
        }
    }
    println!("imported {} account(s)", lines.len());
    Ok(())
}

/// `reckon backup`: asks the server over the native protocol, version 2.
async fn backup(conn: &Conn, to: &std::path::Path) -> Result<(), String> {
    let to = std::path::absolute(to).map_err(|e| format!("{}: {e}", to.display()))?;
    let client = connect_v2(conn).await?;
    let dir = to.to_string_lossy().into_owned();
    match client
        .call(Message::Backup(reckon_protocol::message::Backup { dir }))
        .await
        .map_err(|e| e.to_string())?
    {
        Message::BackupResult(r) if r.code.is_ok() => {
            println!(
                "backup written to {}: log position {}, state digest {:016x}, {} bytes",
                to.display(),
                r.lsn,
                r.digest,
                r.bytes
            );
            Ok(())
        }
        Message::BackupResult(r) => Err(format!(
            "refused ({}): {}",
            r.code.name().unwrap_or("unknown code"),
            r.message
        )),
        Message::Error(e) => Err(format!(
            "failed: {} ({})",
            e.message,
            e.code.name().unwrap_or("unknown code")
        )),
        other => Err(format!("unexpected answer {:?}", other.kind())),
    }
}

/// Connects offering protocol version 2, which the admin commands need.
async fn connect_v2(conn: &Conn) -> Result<Client, String> {
    let token = token(conn)?;
    let client = Client::connect(&conn.server, &token)
        .await
        .map_err(|e| format!("{}: {e}", conn.server))?;
    if client.hello.version < 2 {
        return Err(format!(
            "the server speaks protocol version {}; this needs 2",
            client.hello.version
        ));
    }
    Ok(client)
}

/// `reckon status`: asks over the native protocol, version 2.
async fn status(conn: &Conn) -> Result<(), String> {
    let client = connect_v2(conn).await?;
    let s = match client
        .call(Message::Status)
        .await
        .map_err(|e| e.to_string())?
    {
        Message::StatusResult(s) => s,
        Message::Error(e) => {
            return Err(format!(
                "refused: {} ({})",
                e.message,
                e.code.name().unwrap_or("unknown code")
            ))
        }
        other => return Err(format!("unexpected answer {:?}", other.kind())),
    };
    let checkpoint = if s.checkpoint_at_ms == 0 {
        "none since start".to_string()
    } else {
        format!(
            "log position {} at {}",
            s.checkpoint_lsn,
            reckon_charging::timefmt::format_ms(s.checkpoint_at_ms)
        )
    };
    println!("version               {}", s.version);
    println!("uptime                {} s", s.uptime_s);
    println!(
        "ready                 {}",
        if s.ready { "yes" } else { "no" }
    );
    println!("recovered position    {}", s.recovered_lsn);
    println!("durable position      {}", s.durable_lsn);
    println!(
        "writer queue          {} of {}",
        s.queue_depth, s.queue_capacity
    );
    println!("connections           {}", s.connections);
    println!("open sessions         {}", s.sessions);
    println!("open reservations     {}", s.reservations);
    println!("last checkpoint       {checkpoint}");
    println!("log bytes             {}", s.wal_bytes);
    println!("data directory bytes  {}", s.data_dir_bytes);
    Ok(())
}

async fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Cmd::Serve {
            config,
            data_dir,
            listen,
            diameter,
            admin_listen,
            log_format: _,
        } => serve(config, data_dir, listen, diameter, admin_listen).await,
        Cmd::Account { action, conn } => match action {
            AccountCmd::Create {
                id,
                parent,
                draws_on_parent,
            } => {
                send(&conn, |c| {
                    Ok(Message::AccountCreate(AccountCreate {
                        op_id: c.new_op_id(),
                        account: id,
                        parent,
                        draws_on_parent,
                    }))
                })
                .await
            }
            AccountCmd::Status { id, status } => {
                let status = match status.as_str() {
                    "active" => wt::AccountStatus::Active,
                    "suspended" => wt::AccountStatus::Suspended,
                    "closed" => wt::AccountStatus::Closed,
                    other => {
                        return Err(format!("{other:?}: expected active, suspended or closed"))
                    }
                };
                send(&conn, |c| {
                    Ok(Message::AccountStatus(AccountStatusChange {
                        op_id: c.new_op_id(),
                        account: id,
                        status,
                    }))
                })
                .await
            }
        },
        Cmd::Topup {
            account,
            amount,
            unit: u,
            bucket,
            refund,
            reason,
            conn,
        } => {
            let u = unit(&u)?;
            send(&conn, |c| {
                Ok(Message::TopUp(TopUp {
                    op_id: c.new_op_id(),
                    account,
                    unit: u,
                    amount,
                    bucket,
                    kind: if refund {
                        wt::CreditKind::Refund
                    } else {
                        wt::CreditKind::TopUp
                    },
                    reason,
                }))
            })
            .await
        }
        Cmd::Grant {
            account,
            unit: u,
            amount,
            valid_from: valid_from_ms,
            valid_until: valid_until_ms,
            priority,
            credit_limit,
            services,
            conn,
        } => {
            let u = unit(&u)?;
            send(&conn, |c| {
                Ok(Message::BucketGrant(BucketGrant {
                    op_id: c.new_op_id(),
                    account,
                    unit: u,
                    amount,
                    valid_from_ms,
                    valid_until_ms,
                    priority,
                    credit_limit,
                    services,
                }))
            })
            .await
        }
        Cmd::Limit {
            account,
            unit: u,
            cap,
            conn,
        } => {
            let u = unit(&u)?;
            send(&conn, |c| {
                Ok(Message::LimitSet(LimitSet {
                    op_id: c.new_op_id(),
                    account,
                    unit: u,
                    cap,
                    period: wt::LimitPeriod::Lifetime,
                    soft: false,
                    alerts: Vec::new(),
                }))
            })
            .await
        }
        Cmd::Ratecard { action, conn } => match action {
            RatecardCmd::Apply { file } => {
                let text = std::fs::read_to_string(&file)
                    .map_err(|e| format!("reading {}: {e}", file.display()))?;
                let name = file
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                send(&conn, |c| {
                    Ok(Message::RateCardApply(
                        reckon_protocol::message::RateCardApply {
                            op_id: c.new_op_id(),
                            name,
                            text,
                        },
                    ))
                })
                .await
            }
            RatecardCmd::Show { card } => {
                send(&conn, |_| {
                    Ok(Message::RateCardShow(
                        reckon_protocol::message::RateCardShow { card },
                    ))
                })
                .await
            }
        },
        Cmd::Budget { action } => match action {
            BudgetCmd::Set {
                account,
                unit: u,
                cap,
                period,
                soft,
                mut alerts,
                conn,
            } => {
                let (u, period) = (unit(&u)?, limit_period(&period)?);
                alerts.sort_unstable();
                alerts.dedup();
                send(&conn, |c| {
                    Ok(Message::LimitSet(LimitSet {
                        op_id: c.new_op_id(),
                        account,
                        unit: u,
                        cap: Some(cap),
                        period,
                        soft,
                        alerts: alerts.clone(),
                    }))
                })
                .await
            }
            BudgetCmd::Remove {
                account,
                unit: u,
                period,
                conn,
            } => {
                let (u, period) = (unit(&u)?, limit_period(&period)?);
                send(&conn, |c| {
                    Ok(Message::LimitSet(LimitSet {
                        op_id: c.new_op_id(),
                        account,
                        unit: u,
                        cap: None,
                        period,
                        soft: false,
                        alerts: Vec::new(),
                    }))
                })
                .await
            }
            BudgetCmd::Show { account, conn } => {
                send(&conn, |_| {
                    Ok(Message::BalanceQuery(BalanceQuery { account }))
                })
                .await
            }
        },
        Cmd::Alerts { action } => match action {
            AlertsCmd::List { after, conn } => alerts(&conn, after, false).await,
            AlertsCmd::Watch { after, conn } => alerts(&conn, after, true).await,
        },
        Cmd::Balance { account, conn } => {
            send(&conn, |_| {
                Ok(Message::BalanceQuery(BalanceQuery { account }))
            })
            .await
        }
        Cmd::Reservations { account, conn } => {
            send(&conn, |_| {
                Ok(Message::ReservationList(ReservationList {
                    account,
                    after: 0,
                    limit: 100,
                }))
            })
            .await
        }
        Cmd::Session { action } => {
            let (args, kind, number) = match action {
                SessionCmd::Open(a) => (a, wt::RequestType::Initial, 0),
                SessionCmd::Update { number, ccr } => (ccr, wt::RequestType::Update, number),
                SessionCmd::Close { number, ccr } => (ccr, wt::RequestType::Terminate, number),
            };
            let message = ccr(&args, kind, number, None)?;
            send(&args.conn, |_| Ok(message)).await
        }
        Cmd::Check { data_dir } => check(&data_dir),
        Cmd::Status { conn } => status(&conn).await,
        Cmd::Export {
            what: ExportCmd::Accounts { data_dir, out },
        } => {
            use reckon_charging::accounts_file::export;
            let n = match &out {
                Some(path) => {
                    let mut file = std::io::BufWriter::new(
                        std::fs::File::create(path)
                            .map_err(|e| format!("{}: {e}", path.display()))?,
                    );
                    let n = export(&data_dir, &mut file)?;
                    std::io::Write::flush(&mut file)
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                    n
                }
                None => export(&data_dir, &mut std::io::stdout().lock())?,
            };
            eprintln!("exported {n} account(s)");
            Ok(())
        }
        Cmd::Import {
            what: ImportCmd::Accounts { file, conn },
        } => import_accounts(&file, &conn).await,
        Cmd::Backup { to, conn } => backup(&conn, &to).await,
        Cmd::Restore { from, data_dir } => {
            let m =
                reckon_charging::backup::restore(&from, &data_dir).map_err(|e| e.to_string())?;
            println!(
                "restored to log position {} (state digest {:016x}); start it with: reckon serve --data-dir {}",
                m.lsn,
                m.digest,
                data_dir.display()
            );
            Ok(())
        }
        Cmd::Token => {
            println!(
                "{}",
                reckon_charging::config::new_token()
                    .map_err(|e| format!("reading /dev/urandom: {e}"))?
            );
            Ok(())
        }
        Cmd::Event {
            action,
            number,
            ccr: args,
        } => {
            let action = match action.as_str() {
                "debit" => wt::EventAction::DirectDebit,
                "refund" => wt::EventAction::Refund,
                "check" => wt::EventAction::CheckBalance,
                "price" => wt::EventAction::PriceEnquiry,
                other => return Err(format!("{other:?}: expected debit, refund, check or price")),
            };
            let message = ccr(&args, wt::RequestType::Event, number, Some(action))?;
            send(&args.conn, |_| Ok(message)).await
        }
    }
}

/// Logs to stderr, filtered by `RECKON_LOG`. Colour codes only when
/// stderr is a terminal (and `NO_COLOR` is unset): in a log file or a
/// journal they are noise.
fn init_logs(format: LogFormat) {
    use std::io::IsTerminal;
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("RECKON_LOG").unwrap_or_else(|_| "info".into());
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.with_ansi(ansi).init(),
        LogFormat::Json => logs.json().flatten_event(true).with_ansi(false).init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(match &cli.command {
        Cmd::Serve { log_format, .. } => *log_format,
        _ => LogFormat::Text,
    });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("reckon: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("reckon: {e}");
            ExitCode::FAILURE
        }
    }
}
