//! Helpers shared by the end-to-end tests: credentials, messages, and a
//! `reckon serve` child process.
#![allow(dead_code)]

use reckon_charging::client::Client;
use reckon_charging::config::{Config, CredentialConfig};
use reckon_protocol::codes::{AdminCode, ResultCode};
use reckon_protocol::message::{
    AccountCreate, BalanceQuery, Cca, Ccr, Message, ServiceRequest, TopUp,
};
use reckon_protocol::types::{CreditKind, EventAction, RequestType, Unit, UnitAmount};
use rust_decimal::Decimal;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

pub const ADMIN: &str = "admin-token-0123456789abcdef0123456789abcdef";
pub const ACME: &str = "acme-token-0123456789abcdef0123456789abcdef";
pub const GLOBEX: &str = "globex-token-0123456789abcdef0123456789abcdef";
/// ACME's organisation (root account) and one API key under it.
pub const ACME_ORG: u64 = 1000;
pub const ACME_KEY: u64 = 1001;
/// GLOBEX's organisation and key.
pub const GLOBEX_ORG: u64 = 2000;
pub const GLOBEX_KEY: u64 = 2001;

/// A configuration with an admin and two organisation credentials.
pub fn config(dir: &std::path::Path) -> Config {
    let credential = |name: &str, token: &str, org: Option<u64>| CredentialConfig {
        name: name.into(),
        token: token.into(),
        org,
    };
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_path_buf(),
        credential_list: vec![
            credential("admin", ADMIN, None),
            credential("acme", ACME, Some(ACME_ORG)),
            credential("globex", GLOBEX, Some(GLOBEX_ORG)),
        ],
        ..Config::default()
    }
}

pub fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

pub fn create(c: &Client, account: u64, parent: Option<u64>) -> Message {
    Message::AccountCreate(AccountCreate {
        op_id: c.new_op_id(),
        account,
        parent,
        draws_on_parent: true,
    })
}

pub fn topup(c: &Client, account: u64, unit: Unit, amount: &str) -> Message {
    Message::TopUp(TopUp {
        op_id: c.new_op_id(),
        account,
        unit,
        amount: d(amount),
        bucket: None,
        kind: CreditKind::TopUp,
        reason: "test".into(),
    })
}

/// A credit-control request on service 1 in tokens_out.
pub fn ccr(
    session: &str,
    kind: RequestType,
    number: u32,
    account: u64,
    action: Option<EventAction>,
    requested: &str,
    used: &str,
) -> Ccr {
    let q = |v: &str| {
        if v.is_empty() {
            vec![]
        } else {
            vec![UnitAmount::new(Unit::TOKENS_OUT, d(v))]
        }
    };
    Ccr {
        session_id: session.into(),
        request_type: kind,
        request_number: number,
        account,
        event_action: action,
        termination_cause: None,
        timestamp_ms: now_ms(),
        services: vec![ServiceRequest {
            service_id: 1,
            requested: q(requested),
            used: q(used),
        }],
        attributes: Vec::new(),
    }
}

pub fn debit(session: &str, account: u64, tokens: &str) -> Message {
    Message::Ccr(ccr(
        session,
        RequestType::Event,
        0,
        account,
        Some(EventAction::DirectDebit),
        tokens,
        "",
    ))
}

pub fn refund(session: &str, number: u32, account: u64, tokens: &str) -> Message {
    Message::Ccr(ccr(
        session,
        RequestType::Event,
        number,
        account,
        Some(EventAction::Refund),
        tokens,
        "",
    ))
}

/// The CCA of an answer, or a panic naming what came instead.
pub fn cca(m: &Message) -> &Cca {
    match m {
        Message::Cca(a) => a,
        other => panic!("expected a CCA, got {other:?}"),
    }
}

pub fn code(m: &Message) -> ResultCode {
    cca(m).result_code
}

pub fn admin_code(m: &Message) -> AdminCode {
    match m {
        Message::AdminResult(r) => r.code,
        other => panic!("expected ADMIN_RESULT, got {other:?}"),
    }
}

pub fn ok(m: &Message) {
    match m {
        Message::AdminResult(r) => assert_eq!(r.code, AdminCode::OK, "{m:?}"),
        Message::Cca(a) => assert_eq!(a.result_code, ResultCode::SUCCESS, "{m:?}"),
        other => panic!("{other:?}"),
    }
}

/// (amount, held) summed over an account's buckets of a unit.
pub async fn balance_held(c: &Client, account: u64, unit: Unit) -> (Decimal, Decimal) {
    match c
        .call(Message::BalanceQuery(BalanceQuery { account }))
        .await
        .unwrap()
    {
        Message::Balance(b) => b
            .buckets
            .iter()
            .filter(|k| k.unit == unit)
            .fold((Decimal::ZERO, Decimal::ZERO), |(a, h), k| {
                (a + k.amount, h + k.held)
            }),
        other => panic!("{other:?}"),
    }
}

pub async fn balance(c: &Client, account: u64, unit: Unit) -> Decimal {
    balance_held(c, account, unit).await.0
}

/// Two organisations, each with a key account that draws on it, each
/// topped up with `tokens` output tokens.
pub async fn two_tenants(admin: &Client, tokens: &str) {
    for (org, key) in [(ACME_ORG, ACME_KEY), (GLOBEX_ORG, GLOBEX_KEY)] {
        ok(&admin.call(create(admin, org, None)).await.unwrap());
        ok(&admin.call(create(admin, key, Some(org))).await.unwrap());
        ok(&admin
            .call(topup(admin, org, Unit::TOKENS_OUT, tokens))
            .await
            .unwrap());
    }
}

/// A `reckon serve` child process.
pub struct ServerProcess {
    pub child: Child,
    pub addr: String,
    /// The admin HTTP listener's address (printed before recovery).
    pub admin: Option<String>,
    pub stderr: Arc<parking_lot::Mutex<Vec<String>>>,
}

impl ServerProcess {
    /// Its resident memory, from /proc.
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A test that panics does not leave its server running.
impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `reckon serve` on `data` with the admin credential and `extra`
/// configuration lines; `env` adds environment variables.
pub fn spawn_server_with(
    dir: &std::path::Path,
    data: &std::path::Path,
    extra: &str,
    env: &[(&str, &str)],
) -> ServerProcess {
    let config_path = dir.join(format!("test-{}.toml", std::process::id()));
    std::fs::write(
        &config_path,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n{extra}\n[[credential]]\nname = \"admin\"\ntoken = \"{ADMIN}\"\n",
            data.display()
        ),
    )
    .unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_reckon"));
    command
        .args(["serve", "--config"])
        .arg(&config_path)
        .env("RECKON_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().expect("starting reckon serve");
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let mut admin = None;
    let addr = loop {
        let line = match lines.next() {
            Some(Ok(line)) => line,
            _ => panic!("server exited before listening: {:?}", seen.lock()),
        };
        seen.lock().push(line.clone());
        if let Some(addr) = line.strip_prefix("reckon admin listening on ") {
            admin = Some(addr.trim().to_string());
        }
        if let Some(addr) = line.strip_prefix("reckon listening on ") {
            break addr.trim().to_string();
        }
    };
    // Keep draining stderr so the server never blocks on a full pipe.
    let keep = seen.clone();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            keep.lock().push(line);
        }
    });
    ServerProcess {
        child,
        addr,
        admin,
        stderr: seen,
    }
}

/// [`spawn_server_with`] on `dir/data`, no extra configuration.
pub fn spawn_server(dir: &std::path::Path) -> ServerProcess {
    spawn_server_with(dir, &dir.join("data"), "", &[])
}
