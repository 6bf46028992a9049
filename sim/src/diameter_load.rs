//! `reckon-sim diameter`: a Diameter Gy load driver.
//!
//! It provisions subscriber accounts over the native protocol (an org and
//! `accounts` accounts under it, each topped up with seconds), then opens
//! `connections` Diameter peers that each keep `depth` sessions running
//! back to back: CCR-I (60 s asked) → CCR-U (30 s used, 60 s asked) →
//! CCR-T (20 s used), closed loop, pipelined on the connection. It prints
//! CCR/s and latency percentiles (HDR) per run and the result codes seen.
//!
//! The server needs a `[diameter]` section whose peer is the driver's
//! Origin-Host, bound to the org, and a subscriber range mapping MSISDNs
//! `99<n>` to accounts `account_base + n` (`sim/examples/diameter-load.toml`):
//!
//! ```toml
//! [diameter]
//! [[diameter.peer]]
//! origin_host = "load.reckon-sim"
//! org = 900000000
//! [[diameter.subscriber_range]]
//! type = "e164"
//! prefix = "99"
//! account_base = 900000000
//! ```

use bytes::BytesMut;
use hdrhistogram::Histogram;
use reckon_charging::client::Client;
use reckon_protocol::codes::AdminCode;
use reckon_protocol::diameter::dictionary::cc_request_type as crt;
use reckon_protocol::diameter::message::{
    Capabilities, Cca, Ccr, Cer, Mscc, ServiceUnits, SubscriptionId, UsedUnits,
};
use reckon_protocol::diameter::{frame_length, Header, MAX_MESSAGE_CAP};
use reckon_protocol::message::{AccountCreate, Batch, Message, TopUp};
use reckon_protocol::types::{CreditKind, Unit};
use rust_decimal::Decimal;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What to run.
#[derive(Clone, Debug)]
pub struct DiameterLoadConfig {
    /// The server's Diameter address.
    pub server: String,
    /// The server's native address (for provisioning).
    pub admin: String,
    /// An admin credential.
    pub token: String,
    /// The driver's Origin-Host (configured as a peer on the server).
    pub origin_host: String,
    /// The organisation the peer is bound to.
    pub org: u64,
    /// First subscriber account is `account_base + 1`.
    pub account_base: u64,
    /// Subscribers.
    pub accounts: u64,
    /// Peer connections.
    pub connections: usize,
    /// Sessions in flight per connection.
    pub depth: usize,
    /// Seconds of load after the warm-up.
    pub duration: Duration,
    /// Seconds of load before measuring.
    pub warmup: Duration,
}

/// What a run measured.
#[derive(Debug)]
pub struct DiameterLoadReport {
    /// CCRs answered during the measured window.
    pub ccrs: u64,
    /// Length of the measured window.
    pub elapsed: Duration,
    /// Latency of each CCR in microseconds.
    pub latency_us: Histogram<u64>,
    /// Result-Code → count.
    pub results: BTreeMap<u32, u64>,
}

impl DiameterLoadReport {
    /// CCRs per second over the measured window.
    pub fn rate(&self) -> f64 {
        self.ccrs as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Creates the org and subscriber accounts (existing ones are kept) and
/// tops each subscriber up with plenty of seconds.
pub async fn provision(config: &DiameterLoadConfig) -> Result<(), String> {
    let client = Client::connect(&config.admin, &config.token)
        .await
        .map_err(|e| format!("{}: {e}", config.admin))?;
    let create = |account: u64, parent: Option<u64>| {
        Message::AccountCreate(AccountCreate {
            op_id: client.new_op_id(),
            account,
            parent,
            draws_on_parent: false,
        })
    };
    send_batch(&client, vec![create(config.org, None)]).await?;
    let ids: Vec<u64> = (1..=config.accounts)
        .map(|i| config.account_base + i)
        .collect();
    for chunk in ids.chunks(500) {
        let mut entries = Vec::with_capacity(chunk.len() * 2);
        for a in chunk {
            entries.push(create(*a, Some(config.org)));
            entries.push(Message::TopUp(TopUp {
                op_id: client.new_op_id(),
                account: *a,
                unit: Unit::SECONDS,
                amount: Decimal::from(1_000_000_000u64),
                bucket: None,
                kind: CreditKind::TopUp,
                reason: "reckon-sim diameter".into(),
            }));
        }
        send_batch(&client, entries).await?;
    }
    Ok(())
}

async fn send_batch(client: &Client, entries: Vec<Message>) -> Result<(), String> {
    match client.call(Message::Batch(Batch { entries })).await {
        Ok(Message::BatchResult(r)) => {
            for e in r.entries {
                match e {
                    Message::AdminResult(a)
                        if a.code == AdminCode::OK || a.code == AdminCode::ACCOUNT_EXISTS => {}
                    other => return Err(format!("provisioning refused: {other:?}")),
                }
            }
            Ok(())
        }
        other => Err(format!("provisioning: {other:?}")),
    }
}

struct Lane {
    session: String,
    msisdn: String,
    step: u32,
    sent: Instant,
}

fn encode_ccr(origin_host: &str, lane: &Lane, hop: u32, e2e: u32, out: &mut BytesMut) {
    let (kind, requested, used) = match lane.step {
        0 => (crt::INITIAL, Some(60), None),
        1 => (crt::UPDATE, Some(60), Some(30)),
        _ => (crt::TERMINATION, None, Some(20)),
    };
    let ccr = Ccr {
        session_id: &lane.session,
        origin_host,
        origin_realm: "reckon-sim",
        destination_realm: "",
        auth_application_id: 4,
        service_context_id: Some("32251@3gpp.org"),
        request_type: kind,
        request_number: lane.step,
        subscription_ids: vec![SubscriptionId {
            kind: 0,
            data: &lane.msisdn,
        }],
        mscc: vec![Mscc {
            requested: requested.map(|t| ServiceUnits {
                time: Some(t),
                ..Default::default()
            }),
            used: used
                .map(|t| UsedUnits {
                    units: ServiceUnits {
                        time: Some(t),
                        ..Default::default()
                    },
                    ..Default::default()
                })
                .into_iter()
                .collect(),
            rating_group: Some(10),
            ..Default::default()
        }],
        ..Default::default()
    };
    let _ = ccr.encode(out, hop, e2e);
}

/// One connection's closed loop; returns (answers in window, histogram, results).
async fn connection(
    config: DiameterLoadConfig,
    index: usize,
    measure_from: Instant,
    stop_at: Instant,
) -> Result<(u64, Histogram<u64>, BTreeMap<u32, u64>), String> {
    let mut stream = TcpStream::connect(&config.server)
        .await
        .map_err(|e| format!("{}: {e}", config.server))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let host = config.origin_host.clone();
    let mut out = BytesMut::with_capacity(64 * 1024);
    let mut buf = BytesMut::with_capacity(256 * 1024);
    Cer {
        capabilities: Capabilities {
            origin_host: &host,
            origin_realm: "reckon-sim",
            host_ip_addresses: vec!["127.0.0.1".parse().map_err(|_| "address")?],
            product_name: "reckon-sim",
            auth_application_ids: vec![4],
            ..Default::default()
        },
    }
    .encode(&mut out, 0, 0)
    .map_err(|e| e.to_string())?;
    stream.write_all(&out).await.map_err(|e| e.to_string())?;
    out.clear();
    // The CEA.
    loop {
        if let Ok(Some(len)) = frame_length(&buf, MAX_MESSAGE_CAP) {
            if buf.len() >= len {
                let cea = buf.split_to(len);
                let answer = reckon_protocol::diameter::message::Cea::decode(&cea)
                    .map_err(|e| format!("CEA: {e}"))?;
                if answer.status.result_code != 2001 {
                    return Err(format!(
                        "CER refused with {}: is {} a configured peer?",
                        answer.status.result_code, host
                    ));
                }
                break;
            }
        }
        if stream.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
            return Err("closed during CER".into());
        }
    }
    let span = config.accounts.max(1);
    let mut lanes: Vec<Lane> = (0..config.depth)
        .map(|_| Lane {
            session: String::new(),
            msisdn: String::new(),
            step: 0,
            sent: Instant::now(),
        })
        .collect();
    let mut sessions = 0u64;
    let mut next_session = |lane: &mut Lane| {
        sessions += 1;
        let n = (index as u64 * 7919 + sessions * 104_729) % span + 1;
        lane.session = format!("{host};{index};{sessions}");
        lane.msisdn = format!("99{n}");
        lane.step = 0;
    };
    let mut e2e = (index as u32) << 24;
    for (i, lane) in lanes.iter_mut().enumerate() {
        next_session(lane);
        e2e = e2e.wrapping_add(1);
        lane.sent = Instant::now();
        encode_ccr(&host, lane, i as u32, e2e, &mut out);
    }
    stream.write_all(&out).await.map_err(|e| e.to_string())?;
    out.clear();
    let mut histogram =
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
    let mut results = BTreeMap::new();
    let mut answered = 0u64;
    let mut stopping = false;
    let mut outstanding = config.depth;
    while outstanding > 0 {
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read_buf(&mut buf))
            .await
            .map_err(|_| "no answer in 10 s".to_string())?
            .map_err(|e| e.to_string())?;
        if read == 0 {
            return Err("server closed the connection".into());
        }
        let now = Instant::now();
        stopping |= now >= stop_at;
        loop {
            let len = match frame_length(&buf, MAX_MESSAGE_CAP) {
                Ok(Some(len)) if buf.len() >= len => len,
                Ok(_) => break,
                Err(e) => return Err(e.to_string()),
            };
            let msg = buf.split_to(len);
            let Ok(h) = Header::parse(&msg) else {
                return Err("bad header".into());
            };
            if h.is_request() {
                continue; // a DWR would need an answer; runs are shorter than Tw
            }
            let code = match Cca::decode(&msg) {
                Ok(a) => a.status.result_code,
                Err(_) => u32::from(h.is_error()) * 3000,
            };
            let Some(lane) = lanes.get_mut(h.hop_by_hop as usize) else {
                continue;
            };
            if lane.sent >= measure_from && now < stop_at {
                answered += 1;
                *results.entry(code).or_insert(0) += 1;
                let _ = histogram.record(now.duration_since(lane.sent).as_micros().max(1) as u64);
            }
            outstanding -= 1;
            if stopping {
                continue;
            }
            lane.step += 1;
            if lane.step > 2 || code != 2001 {
                next_session(lane);
            }
            e2e = e2e.wrapping_add(1);
            lane.sent = now;
            encode_ccr(&host, lane, h.hop_by_hop, e2e, &mut out);
            outstanding += 1;
        }
        if !out.is_empty() {
            stream.write_all(&out).await.map_err(|e| e.to_string())?;
            out.clear();
        }
    }
    Ok((answered, histogram, results))
}

/// Runs the load and reports what the measured window saw.
pub async fn run(config: &DiameterLoadConfig) -> Result<DiameterLoadReport, String> {
    if config.connections == 0 || config.depth == 0 || config.depth > 65_536 {
        return Err("--connections must be ≥ 1 and --depth 1..=65536".into());
    }
    let start = Instant::now();
    let measure_from = start + config.warmup;
    let stop_at = measure_from + config.duration;
    let mut tasks = Vec::new();
    for i in 0..config.connections {
        tasks.push(tokio::spawn(connection(
            config.clone(),
            i,
            measure_from,
            stop_at,
        )));
    }
    let mut report = DiameterLoadReport {
        ccrs: 0,
        elapsed: config.duration,
        latency_us: Histogram::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?,
        results: BTreeMap::new(),
    };
    for t in tasks {
        let (n, h, r) = t.await.map_err(|e| e.to_string())??;
        report.ccrs += n;
        report.latency_us.add(&h).map_err(|e| e.to_string())?;
        for (code, count) in r {
            *report.results.entry(code).or_insert(0) += count;
        }
    }
    Ok(report)
}

/// Command-line arguments of `reckon-sim diameter`.
#[derive(clap::Args, Debug)]
pub struct DiameterArgs {
    /// The server's Diameter address.
    #[arg(long, default_value = "127.0.0.1:3868")]
    pub server: String,
    /// The server's native address, for provisioning.
    #[arg(long, default_value = "127.0.0.1:7878")]
    pub admin: String,
    /// Admin token; default: DATA_DIR/admin.token.
    #[arg(long, env = "RECKON_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Data directory whose admin token to use.
    #[arg(long, default_value = "reckon-data")]
    pub data_dir: std::path::PathBuf,
    /// Our Origin-Host (a configured peer on the server).
    #[arg(long, default_value = "load.reckon-sim")]
    pub origin_host: String,
    /// The organisation the peer is bound to.
    #[arg(long, default_value_t = 900_000_000)]
    pub org: u64,
    /// Subscriber accounts are account_base + 1 ..= account_base + accounts
    /// (MSISDN `99<n>` → `account_base + n`).
    #[arg(long, default_value_t = 900_000_000)]
    pub account_base: u64,
    /// Subscribers.
    #[arg(long, default_value_t = 10_000)]
    pub accounts: u64,
    /// Peer connections.
    #[arg(long, default_value_t = 2)]
    pub connections: usize,
    /// Sessions in flight per connection.
    #[arg(long, default_value_t = 512)]
    pub depth: usize,
    /// Seconds measured.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Seconds of warm-up before measuring.
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Skip creating and topping up the accounts.
    #[arg(long)]
    pub no_provision: bool,
}

/// Runs `reckon-sim diameter`; prints the report.
pub async fn main(args: DiameterArgs) -> Result<bool, String> {
    let token = match args.token {
        Some(t) => t,
        None => {
            let path = args
                .data_dir
                .join(reckon_charging::config::ADMIN_TOKEN_FILE);
            std::fs::read_to_string(&path)
                .map(|t| t.trim().to_string())
                .map_err(|e| format!("no --token and {} unreadable: {e}", path.display()))?
        }
    };
    let config = DiameterLoadConfig {
        server: args.server,
        admin: args.admin,
        token,
        origin_host: args.origin_host,
        org: args.org,
        account_base: args.account_base,
        accounts: args.accounts,
        connections: args.connections,
        depth: args.depth,
        duration: Duration::from_secs(args.duration.max(1)),
        warmup: Duration::from_secs(args.warmup),
    };
    if !args.no_provision {
        let t = Instant::now();
        provision(&config).await?;
        eprintln!(
            "provisioned {} subscribers in {:.1} s",
            config.accounts,
            t.elapsed().as_secs_f64()
        );
    }
    let r = run(&config).await?;
    let p = |q: f64| r.latency_us.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "diameter: {} CCR in {:.1} s = {:.0} CCR/s ({} connections x {} in flight)",
        r.ccrs,
        r.elapsed.as_secs_f64(),
        r.rate(),
        config.connections,
        config.depth
    );
    println!(
        "latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
        p(0.5),
        p(0.9),
        p(0.99),
        p(0.999),
        r.latency_us.max() as f64 / 1000.0
    );
    let codes: Vec<String> = r.results.iter().map(|(c, n)| format!("{c}: {n}")).collect();
    println!("result codes: {}", codes.join(", "));
    Ok(r.results.keys().all(|c| *c == 2001))
}
