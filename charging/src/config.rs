//! `reckon serve` configuration: defaults that work with no file, and an
//! optional TOML file.
//!
//! ```toml
//! listen = "127.0.0.1:7878"
//! admin_listen = "127.0.0.1:9878" # /metrics, /healthz, /readyz; "off" for none
//! data_dir = "reckon-data"
//! units = ["GBP", "images"] # beyond the built-in ones (USD, EUR, ..., tokens_out, ...)
//!
//! [[credential]]            # none configured: an admin token is created
//! name = "gateway-acme"     # in DATA_DIR/admin.token on first start
//! token = "<32+ characters; `reckon token` prints one>"
//! org = 1000                # omit for an admin credential
//!
//! [[price]]
//! service = 10              # omit for every service
//! unit = "tokens_out"
//! charge_unit = "USD"
//! per_unit = "0.00002"      # a string: money is never a float
//!
//! [[service]]
//! service = 10
//! default_unit = "tokens_out"
//! default_grant = "1000"
//! max_grant = "8192"
//! validity_s = 60
//!
//! [diameter]                # Gy/Ro listener; see crate::diameter
//! listen = "127.0.0.1:3868"
//! origin_host = "ocs.operator.example"
//! origin_realm = "operator.example"
//! [[diameter.peer]]
//! origin_host = "pgw1.operator.example"
//! org = 1000
//! [[diameter.subscriber_range]]
//! type = "e164"
//! prefix = "4917"
//! account_base = 0
//! ```

use crate::engine::{EngineConfig, FinalUnitAction, Price, ServicePolicy};
use crate::server::ServerError;
use reckon_balances::{ServiceId, Unit};
use rust_decimal::Decimal;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// One credential: a token, and the organisation it may act for.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CredentialConfig {
    /// A name for logs.
    #[serde(default)]
    pub name: String,
    /// The secret the client sends in HELLO.
    pub token: String,
    /// The organisation (root account id); absent for an admin.
    pub org: Option<u64>,
}

/// A price entry as written in the file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceConfig {
    /// Service (rating group); absent for every service.
    pub service: Option<u32>,
    /// Unit priced.
    pub unit: String,
    /// Unit charged.
    pub charge_unit: String,
    /// Charge units per unit, as a decimal string.
    pub per_unit: String,
}

/// Which product a service (rating group) is, for rate cards whose rules
/// depend on attributes: `[[product]] service = 11, attributes = { model = "large" }`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProductConfig {
    /// The service id.
    pub service: u32,
    /// Attribute name → value (model, region, category, site, ...).
    pub attributes: std::collections::BTreeMap<String, String>,
}

/// A service policy as written in the file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Service (rating group); absent for every service.
    pub service: Option<u32>,
    /// Unit granted by default.
    pub default_unit: String,
    /// Default grant, decimal string.
    pub default_grant: String,
    /// Largest grant, decimal string.
    pub max_grant: String,
    /// Validity of a grant in seconds.
    pub validity_s: u32,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7878))
}
fn default_admin_listen() -> String {
    "127.0.0.1:0".into()
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("reckon-data")
}
fn default_max_connections() -> usize {
    1024
}
fn default_max_frame() -> u32 {
    reckon_protocol::limits::DEFAULT_MAX_FRAME
}
fn default_max_pending() -> usize {
    128
}
fn default_hello_timeout() -> u64 {
    5_000
}
fn default_keepalive() -> u16 {
    30
}
fn default_queue() -> usize {
    16_384
}
fn default_grace() -> u32 {
    30
}
fn default_final_action() -> String {
    "terminate".into()
}
fn default_window() -> u64 {
    crate::engine::ANSWER_WINDOW_MS_DEFAULT / 1000
}
fn default_history_retention_mb() -> u64 {
    reckon_balances::journal::HISTORY_BYTES_MAX_DEFAULT >> 20
}
fn default_answers_max() -> u64 {
    crate::engine::ANSWERS_MAX_DEFAULT as u64
}

/// Everything `reckon serve` can be told.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address to listen on (loopback by default).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Admin HTTP listener (`/metrics`, `/healthz`, `/readyz`): an address,
    /// or `off`. Loopback on a free port by default (`reckon serve` prints
    /// it); give a fixed port for a scraper.
    #[serde(default = "default_admin_listen")]
    pub admin_listen: String,
    /// Where the log and snapshots live.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Most open connections.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Most connections that have not yet completed HELLO.
    #[serde(default = "default_max_pending")]
    pub max_pending_connections: usize,
    /// Milliseconds a new connection has to complete HELLO.
    #[serde(default = "default_hello_timeout")]
    pub hello_timeout_ms: u64,
    /// Largest frame accepted after the handshake, in bytes.
    #[serde(default = "default_max_frame")]
    pub max_frame: u32,
    /// Seconds between keepalives; a connection silent for three is closed.
    #[serde(default = "default_keepalive")]
    pub keepalive_s: u16,
    /// Most submissions waiting for the writer before BUSY.
    #[serde(default = "default_queue")]
    pub queue_capacity: usize,
    /// Credentials; none means an admin token in `DATA_DIR/admin.token`.
    #[serde(default, rename = "credential")]
    pub credential_list: Vec<CredentialConfig>,
    /// Prices.
    #[serde(default, rename = "price")]
    pub prices: Vec<PriceConfig>,
    /// Service policies.
    #[serde(default, rename = "service")]
    pub services: Vec<ServiceConfig>,
    /// Rate-card attributes of services.
    #[serde(default, rename = "product")]
    pub products: Vec<ProductConfig>,
    /// Units accepted beyond the built-in ones and those the prices,
    /// services and rate cards name (e.g. `["GBP", "images"]`): any other
    /// unit is refused, so a typo never opens a bucket.
    #[serde(default)]
    pub units: Vec<String>,
    /// Seconds a silent session is kept past its grant's validity.
    #[serde(default = "default_grace")]
    pub supervision_grace_s: u32,
    /// `terminate`, `redirect` or `restrict`.
    #[serde(default = "default_final_action")]
    pub final_unit_action: String,
    /// Seconds a credit-control answer is kept for retransmissions (and a
    /// mutating admin op id for retries). Every request costs memory for
    /// this long: at high rates, keep it to what clients' retry schedules
    /// need (Diameter Tx timers are seconds).
    #[serde(default = "default_window")]
    pub retransmission_window_s: u64,
    /// Most answers remembered at once (about 60 bytes of memory each),
    /// whatever the window: past it the oldest are forgotten early, and a
    /// request stamped before the newest one forgotten is refused.
    #[serde(default = "default_answers_max")]
    pub retransmission_entries_max: u64,
    /// Mebibytes of history (the audit trail) kept in `DATA_DIR/history`:
    /// past it the oldest segments are removed, so the data directory
    /// stops growing once this much history has accumulated.
    #[serde(default = "default_history_retention_mb")]
    pub history_retention_mb: u64,
    /// The Diameter Credit-Control listener; off unless present (or
    /// `reckon serve --diameter`).
    #[serde(default)]
    pub diameter: Option<crate::diameter::DiameterConfig>,
}

impl Default for Config {
    fn default() -> Self {
        toml::from_str("").expect("an empty configuration is valid")
    }
}

/// File name of the generated admin token inside the data directory.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// Shortest credential token accepted, in characters: 32 hex digits are 128
/// bits.
pub const TOKEN_LEN_MIN: usize = 32;

/// A new random token of 256 bits, as 64 hex digits.
pub fn new_token() -> Result<String, std::io::Error> {
    let mut raw = [0u8; 32];
    use std::io::Read;
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut raw))?;
    Ok(raw.iter().map(|b| format!("{b:02x}")).collect())
}

fn decimal(field: &str, text: &str) -> Result<Decimal, ServerError> {
    text.parse::<Decimal>()
        .map_err(|_| ServerError::Config(format!("{field}: {text:?} is not a decimal number")))
}

fn unit(field: &str, text: &str) -> Result<Unit, ServerError> {
    Unit::new(text).map_err(|e| ServerError::Config(format!("{field}: {e}")))
}

impl Config {
    /// Reads a TOML file; errors name the file and what is wrong.
    pub fn load(path: &Path) -> Result<Config, ServerError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ServerError::Config(format!("reading {}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| ServerError::Config(format!("{}: {e}", path.display())))
    }

    /// The admin listener's address, `None` when `off`.
    pub fn admin_addr(&self) -> Result<Option<SocketAddr>, ServerError> {
        parse_admin_listen(&self.admin_listen)
    }

    /// The credentials in force, creating the admin token when none are set.
    /// Tokens are at least [`TOKEN_LEN_MIN`] characters (128 bits as hex)
    /// and unique; a weak or repeated token is a configuration error.
    pub fn credentials(&self) -> Result<Vec<CredentialConfig>, ServerError> {
        if !self.credential_list.is_empty() {
            for (i, c) in self.credential_list.iter().enumerate() {
                let len = c.token.chars().count();
                if len < TOKEN_LEN_MIN || c.token.len() > reckon_protocol::limits::CREDENTIAL_MAX {
                    return Err(ServerError::Config(format!(
                        "credential[{i}] ({}): a token must be {TOKEN_LEN_MIN}..={} characters (at least 128 bits, e.g. `reckon token` prints one)",
                        c.name,
                        reckon_protocol::limits::CREDENTIAL_MAX
                    )));
                }
                if self.credential_list[..i].iter().any(|o| o.token == c.token) {
                    return Err(ServerError::Config(format!(
                        "credential[{i}] ({}): the same token is configured twice",
                        c.name
                    )));
                }
            }
            return Ok(self.credential_list.clone());
        }
        let token = admin_token(&self.data_dir)?;
        Ok(vec![CredentialConfig {
            name: "local admin".into(),
            token,
            org: None,
        }])
    }

    /// Prices and policies for the engine.
    pub fn engine_config(&self) -> Result<EngineConfig, ServerError> {
        let mut config = EngineConfig::default();
        for (i, p) in self.prices.iter().enumerate() {
            let per_unit = decimal(&format!("price[{i}].per_unit"), &p.per_unit)?;
            if per_unit.is_sign_negative() || per_unit.normalize().scale() > 9 {
                return Err(ServerError::Config(format!(
                    "price[{i}].per_unit: must be ≥ 0 with at most 9 decimal places"
                )));
            }
            config.prices.push(Price {
                service: p.service.map(ServiceId),
                unit: unit(&format!("price[{i}].unit"), &p.unit)?,
                charge_unit: unit(&format!("price[{i}].charge_unit"), &p.charge_unit)?,
                per_unit,
            });
        }
        // Specific prices first, so matching finds them before wildcards.
        config.prices.sort_by_key(|p| p.service.is_none());
        if !self.services.is_empty() {
            config.policies.clear();
        }
        for (i, s) in self.services.iter().enumerate() {
            config.policies.push(ServicePolicy {
                service: s.service.map(ServiceId),
                default_unit: unit(&format!("service[{i}].default_unit"), &s.default_unit)?,
                default_grant: decimal(&format!("service[{i}].default_grant"), &s.default_grant)?,
                max_grant: decimal(&format!("service[{i}].max_grant"), &s.max_grant)?,
                validity_s: s.validity_s,
            });
        }
        config.policies.sort_by_key(|p| p.service.is_none());
        for (i, p) in self.products.iter().enumerate() {
            if p.attributes.len() > 8
                || p.attributes
                    .iter()
                    .any(|(k, v)| k.is_empty() || k.len() > 64 || v.len() > 128)
            {
                return Err(ServerError::Config(format!(
                    "product[{i}].attributes: at most 8, names 1..=64 bytes, values at most 128"
                )));
            }
            config.service_attributes.push((
                ServiceId(p.service),
                p.attributes
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            ));
        }
        if !(1..=7 * 24 * 3600).contains(&self.retransmission_window_s) {
            return Err(ServerError::Config(
                "retransmission_window_s: must be between 1 and 604800 (7 days)".into(),
            ));
        }
        if !(1..=1 << 20).contains(&self.history_retention_mb) {
            return Err(ServerError::Config(
                "history_retention_mb: must be between 1 and 1048576 (1 TiB)".into(),
            ));
        }
        config.answer_window_ms = self.retransmission_window_s * 1000;
        config.answers_max = self.retransmission_entries_max;
        config.supervision_grace_s = self.supervision_grace_s;
        config.final_unit_action = match self.final_unit_action.as_str() {
            "terminate" => FinalUnitAction::Terminate,
            "redirect" => FinalUnitAction::Redirect,
            "restrict" => FinalUnitAction::RestrictAccess,
            other => {
                return Err(ServerError::Config(format!(
                    "final_unit_action: {other:?} is not terminate, redirect or restrict"
                )))
            }
        };
        for (i, u) in self.units.iter().enumerate() {
            config.units.push(unit(&format!("units[{i}]"), u)?);
        }
        config
            .validate()
            .map_err(|e| ServerError::Config(e.to_string()))?;
        Ok(config)
    }
}

/// Parses an admin listen setting: `off` or an address such as
/// `127.0.0.1:9878`.
pub fn parse_admin_listen(text: &str) -> Result<Option<SocketAddr>, ServerError> {
    if text.trim().eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    text.trim().parse().map(Some).map_err(|_| {
        ServerError::Config(format!(
            "admin_listen: {text:?} is not an address (e.g. 127.0.0.1:9878) or off"
        ))
    })
}

/// Reads `DATA_DIR/admin.token`, creating it with a random token (mode 0600)
/// when absent.
pub fn admin_token(data_dir: &Path) -> Result<String, ServerError> {
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    if let Ok(text) = std::fs::read_to_string(&path) {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path)
                .map_err(|e| ServerError::Config(format!("{}: {e}", path.display())))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(ServerError::Config(format!(
                    "{} is readable by other users (mode {:o}); it grants full control of every account: run `chmod 600 {}`",
                    path.display(),
                    mode & 0o777,
                    path.display()
                )));
            }
        }
        let token = text.trim().to_string();
        if token.chars().count() < TOKEN_LEN_MIN {
            return Err(ServerError::Config(format!(
                "{} holds a token shorter than {TOKEN_LEN_MIN} characters; delete the file to have a new one created",
                path.display()
            )));
        }
        return Ok(token);
    }
    std::fs::create_dir_all(data_dir)
        .map_err(|e| ServerError::Config(format!("creating {}: {e}", data_dir.display())))?;
    let token =
        new_token().map_err(|e| ServerError::Config(format!("reading /dev/urandom: {e}")))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    use std::io::Write;
    options
        .open(&path)
        .and_then(|mut f| f.write_all(token.as_bytes()).and_then(|_| f.sync_all()))
        .map_err(|e| ServerError::Config(format!("writing {}: {e}", path.display())))?;
    tracing::info!(path = %path.display(), "created an admin token");
    Ok(token)
}
