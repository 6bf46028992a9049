//! The Diameter Credit-Control front end (Gy / Ro; RFC 6733, RFC 4006).
//!
//! A listener of its own (default `127.0.0.1:3868`, off unless the
//! configuration has a `[diameter]` section or `reckon serve --diameter`)
//! accepts gateways (PGW/SMF, OCF clients, Diameter routing agents). Each
//! connection runs the peer state machine of `peer`: CER/CEA (advertising
//! Auth-Application-Id 4), DWR/DWA both ways, DPR/DPA, Origin-State-Id; a
//! peer that never completes CER, sends garbage or goes silent is dropped
//! alone. Every peer is bound by configuration (its Origin-Host) to one
//! organisation: its CCRs run as that organisation's credential.
//!
//! CCRs go to the same engine as the native protocol, through the
//! journal's [`Submitter`]: every CCR of one socket read is one submission,
//! answered after group commit. [`mapping`] turns a CCR into the engine's
//! [`CreditControlRequest`](crate::engine::CreditControlRequest) and its
//! answer into a CCA. Duplicates are caught twice: a request with the T
//! flag whose (Origin-Host, End-to-End-Id) and content match a recent
//! answer gets that answer again from a bounded cache ([`dedup`]), and the
//! engine answers a repeated (Session-Id, CC-Request-Number) with its
//! stored answer. A full journal queue answers DIAMETER_TOO_BUSY (3004).
//!
//! Server-initiated messages: after an admin change on an account (a
//! top-up, a grant, a limit or status change, reported by the native
//! server through [`Notifier`]), peers of the account's organisation send
//! RAR to the sessions that got a final grant or ran out of credit, so the
//! gateway re-authorises at once; suspending or closing an account sends
//! ASR for the sessions charged to it.

pub mod dedup;
pub mod mapping;
mod peer;

use crate::engine::{Caller, Engine, EngineRequest, EngineResponse};
use crate::server::ServerError;
use reckon_balances::journal::Submitter;
use reckon_balances::machine::{LedgerRequest, LedgerResponse};
use reckon_balances::{AccountId, AccountStatus, Unit};
use reckon_protocol::diameter::dictionary::subscription_id_type as sub_type;
use reckon_protocol::message::Message;
use serde::Deserialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, watch, Semaphore};

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 3868))
}
fn default_origin_host() -> String {
    "reckon.localdomain".into()
}
fn default_origin_realm() -> String {
    "localdomain".into()
}
fn default_watchdog() -> u32 {
    30
}
fn default_cer_timeout() -> u32 {
    10
}
fn default_max_message() -> usize {
    reckon_protocol::diameter::DEFAULT_MAX_MESSAGE
}
fn default_in_flight() -> usize {
    4096
}
fn default_max_peers() -> usize {
    256
}
fn default_duplicates() -> usize {
    65_536
}
fn default_currency() -> String {
    "USD".into()
}
fn default_time() -> String {
    "seconds".into()
}
fn default_total() -> String {
    "octets".into()
}
fn default_input() -> String {
    "octets_in".into()
}
fn default_output() -> String {
    "octets_out".into()
}
fn default_ssu() -> String {
    "requests".into()
}

/// A gateway allowed to connect, and the organisation it charges for.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// Its Origin-Host (DiameterIdentity), compared without case.
    pub origin_host: String,
    /// The organisation (root account) its requests act for.
    pub org: u64,
}

/// One subscriber: a Subscription-Id and its account.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriberConfig {
    /// `e164`, `imsi`, `sip_uri`, `nai` or `private`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Subscription-Id-Data, e.g. an MSISDN `491701234567`.
    pub id: String,
    /// The account charged.
    pub account: u64,
}

/// Many subscribers at once: numeric ids under a prefix map to
/// `account_base + the digits after the prefix`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriberRangeConfig {
    /// Subscription-Id-Type, as in [`SubscriberConfig`].
    #[serde(rename = "type")]
    pub kind: String,
    /// The prefix, e.g. a country and network code `4917`.
    pub prefix: String,
    /// Added to the number after the prefix.
    pub account_base: u64,
}

/// Reckon unit names for the Diameter unit kinds.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitNamesConfig {
    /// CC-Time.
    #[serde(default = "default_time")]
    pub time: String,
    /// CC-Total-Octets.
    #[serde(default = "default_total")]
    pub total_octets: String,
    /// CC-Input-Octets.
    #[serde(default = "default_input")]
    pub input_octets: String,
    /// CC-Output-Octets.
    #[serde(default = "default_output")]
    pub output_octets: String,
    /// CC-Service-Specific-Units.
    #[serde(default = "default_ssu")]
    pub service_specific: String,
    /// The currency of CC-Money without Currency-Code.
    #[serde(default = "default_currency")]
    pub currency: String,
}

impl Default for UnitNamesConfig {
    fn default() -> Self {
        toml::from_str("").expect("an empty unit table is valid")
    }
}

/// What CC-Service-Specific-Units count for one rating group.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RatingGroupConfig {
    /// The rating group.
    pub rating_group: u32,
    /// The unit, e.g. `tokens_out` or `sms`.
    pub service_specific_unit: String,
}

/// The `[diameter]` section of the configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiameterConfig {
    /// Address to listen on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Our Origin-Host.
    #[serde(default = "default_origin_host")]
    pub origin_host: String,
    /// Our Origin-Realm.
    #[serde(default = "default_origin_realm")]
    pub origin_realm: String,
    /// Seconds of silence before a DWR (Tw); a peer silent for two is dropped.
    #[serde(default = "default_watchdog")]
    pub watchdog_s: u32,
    /// Seconds a new connection has to complete CER.
    #[serde(default = "default_cer_timeout")]
    pub cer_timeout_s: u32,
    /// Largest message accepted, in bytes.
    #[serde(default = "default_max_message")]
    pub max_message: usize,
    /// Most CCRs one peer may have waiting for answers (reading pauses).
    #[serde(default = "default_in_flight")]
    pub in_flight_per_peer: usize,
    /// Most peer connections at once.
    #[serde(default = "default_max_peers")]
    pub max_peers: usize,
    /// Answers kept for T-flag retransmissions (shared by all peers).
    #[serde(default = "default_duplicates")]
    pub duplicate_cache: usize,
    /// Where a REDIRECT final-unit action sends users (a top-up page).
    #[serde(default)]
    pub redirect_url: Option<String>,
    /// Unit names.
    #[serde(default)]
    pub units: UnitNamesConfig,
    /// Gateways allowed to connect.
    #[serde(default, rename = "peer")]
    pub peers: Vec<PeerConfig>,
    /// Subscribers, one by one.
    #[serde(default, rename = "subscriber")]
    pub subscribers: Vec<SubscriberConfig>,
    /// Subscribers by numeric range.
    #[serde(default, rename = "subscriber_range")]
    pub subscriber_ranges: Vec<SubscriberRangeConfig>,
    /// Per rating group service-specific units.
    #[serde(default, rename = "rating_group")]
    pub rating_groups: Vec<RatingGroupConfig>,
    /// Rating groups (or Service-Identifiers) not subject to credit control
    /// (zero-rated services): answered DIAMETER_CREDIT_CONTROL_NOT_APPLICABLE
    /// (4011), never charged.
    #[serde(default)]
    pub free_rating_groups: Vec<u32>,
}

impl Default for DiameterConfig {
    fn default() -> Self {
        toml::from_str("").expect("an empty diameter section is valid")
    }
}

fn subscription_type(field: &str, name: &str) -> Result<u32, ServerError> {
    Ok(match name {
        "e164" => sub_type::E164,
        "imsi" => sub_type::IMSI,
        "sip_uri" => sub_type::SIP_URI,
        "nai" => sub_type::NAI,
        "private" => sub_type::PRIVATE,
        other => {
            return Err(ServerError::Config(format!(
                "{field}: {other:?} is not e164, imsi, sip_uri, nai or private"
            )))
        }
    })
}

fn unit(field: &str, name: &str) -> Result<Unit, ServerError> {
    Unit::new(name).map_err(|e| ServerError::Config(format!("diameter.{field}: {e}")))
}

/// The configuration checked and indexed for the peers.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) origin_host: String,
    pub(crate) origin_realm: String,
    pub(crate) watchdog: Duration,
    pub(crate) cer_timeout: Duration,
    pub(crate) max_message: usize,
    pub(crate) in_flight: usize,
    pub(crate) redirect_url: Option<String>,
    pub(crate) peers: HashMap<String, u64>,
    pub(crate) subscribers: mapping::SubscriberMap,
    pub(crate) units: mapping::UnitMap,
    pub(crate) free: std::collections::HashSet<u32>,
    /// Origin-State-Id: the start time, so it grows on every restart.
    pub(crate) state_id: u32,
}

impl DiameterConfig {
    fn settings(&self) -> Result<Settings, ServerError> {
        let bad = |m: String| Err(ServerError::Config(format!("diameter: {m}")));
        for (name, v) in [
            ("origin_host", &self.origin_host),
            ("origin_realm", &self.origin_realm),
        ] {
            if v.is_empty() || v.len() > 255 || !v.is_ascii() {
                return bad(format!("{name} must be 1..=255 ASCII bytes"));
            }
        }
        if !(1..=3600).contains(&self.watchdog_s) || !(1..=3600).contains(&self.cer_timeout_s) {
            return bad("watchdog_s and cer_timeout_s must be 1..=3600".into());
        }
        if !(4096..=reckon_protocol::diameter::MAX_MESSAGE_CAP).contains(&self.max_message) {
            return bad("max_message must be 4096..=1048576".into());
        }
        if !(1..=65_536).contains(&self.in_flight_per_peer)
            || !(1..=65_536).contains(&self.max_peers)
            || self.duplicate_cache > 10_000_000
        {
            return bad(
                "in_flight_per_peer and max_peers must be 1..=65536, duplicate_cache at most 10^7"
                    .into(),
            );
        }
        let mut peers = HashMap::new();
        for p in &self.peers {
            if peers
                .insert(p.origin_host.to_ascii_lowercase(), p.org)
                .is_some()
            {
                return bad(format!("peer {:?} listed twice", p.origin_host));
            }
        }
        let mut subscribers = mapping::SubscriberMap::default();
        for (i, s) in self.subscribers.iter().enumerate() {
            let kind = subscription_type(&format!("diameter.subscriber[{i}].type"), &s.kind)?;
            subscribers.exact.insert((kind, s.id.clone()), s.account);
        }
        for (i, r) in self.subscriber_ranges.iter().enumerate() {
            let kind = subscription_type(&format!("diameter.subscriber_range[{i}].type"), &r.kind)?;
            subscribers
                .ranges
                .push((kind, r.prefix.clone(), r.account_base));
        }
        let u = &self.units;
        let mut per_service = HashMap::new();
        for g in &self.rating_groups {
            per_service.insert(
                g.rating_group,
                unit(
                    "rating_group.service_specific_unit",
                    &g.service_specific_unit,
                )?,
            );
        }
        let units = mapping::UnitMap {
            time: unit("units.time", &u.time)?,
            total_octets: unit("units.total_octets", &u.total_octets)?,
            input_octets: unit("units.input_octets", &u.input_octets)?,
            output_octets: unit("units.output_octets", &u.output_octets)?,
            service_specific: unit("units.service_specific", &u.service_specific)?,
            currency: unit("units.currency", &u.currency)?,
            per_service,
        };
        let state_id = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(1);
        Ok(Settings {
            origin_host: self.origin_host.clone(),
            origin_realm: self.origin_realm.clone(),
            watchdog: Duration::from_secs(self.watchdog_s as u64),
            cer_timeout: Duration::from_secs(self.cer_timeout_s as u64),
            max_message: self.max_message,
            in_flight: self.in_flight_per_peer,
            redirect_url: self.redirect_url.clone(),
            peers,
            subscribers,
            units,
            free: self.free_rating_groups.iter().copied().collect(),
            state_id,
        })
    }
}

/// What changed on an account, as the native server saw it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum AccountChange {
    /// Credit was added or limits changed: starved sessions may go on.
    Credit,
    /// The account was suspended or closed: its sessions end.
    Stopped,
    /// The account became active again.
    Resumed,
}

/// An admin change on an account, resolved to its organisation.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct OrgEvent {
    pub(crate) account: u64,
    pub(crate) org: u64,
    pub(crate) change: AccountChange,
}

/// The account and kind of change an admin request makes, if it is one
/// that concerns Diameter sessions.
pub fn admin_change(message: &Message) -> Option<(u64, AccountChange)> {
    use reckon_protocol::types::AccountStatus as S;
    match message {
        Message::TopUp(m) => Some((m.account, AccountChange::Credit)),
        Message::Adjust(m) => Some((m.account, AccountChange::Credit)),
        Message::BucketGrant(m) => Some((m.account, AccountChange::Credit)),
        Message::LimitSet(m) => Some((m.account, AccountChange::Credit)),
        Message::AccountStatus(m) => Some((
            m.account,
            match m.status {
                S::Active => AccountChange::Resumed,
                S::Suspended | S::Closed => AccountChange::Stopped,
            },
        )),
        _ => None,
    }
}

/// Hands admin changes to the Diameter peers (cheap; never blocks).
#[derive(Clone, Debug)]
pub struct Notifier {
    tx: mpsc::Sender<(u64, AccountChange)>,
}

impl Notifier {
    /// Reports a change that was applied.
    pub fn changed(&self, account: u64, change: AccountChange) {
        // A burst beyond the queue loses re-auths, never charges: the
        // gateways re-authorise on their own at the end of the validity.
        let _ = self.tx.try_send((account, change));
    }
}

/// State every peer connection shares.
pub(crate) struct Shared {
    pub(crate) settings: Settings,
    pub(crate) submitter: Submitter<Engine>,
    pub(crate) duplicates: dedup::DuplicateCache,
    pub(crate) events: broadcast::Sender<OrgEvent>,
    pub(crate) end_to_end: AtomicU32,
    pub(crate) requests: AtomicU64,
}

/// A running Diameter listener.
pub struct DiameterServer {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Where the native server reports admin changes.
    pub notifier: Notifier,
    /// Ends when the listener has drained after shutdown.
    pub done: tokio::task::JoinHandle<()>,
}

/// Binds the listener and starts accepting peers; stops when `shutdown`
/// turns true (peers get DPR, in-flight answers are sent first).
pub async fn start(
    config: &DiameterConfig,
    submitter: Submitter<Engine>,
    shutdown: watch::Receiver<bool>,
) -> Result<DiameterServer, ServerError> {
    let settings = config.settings()?;
    let listener =
        TcpListener::bind(config.listen)
            .await
            .map_err(|source| ServerError::Listen {
                addr: config.listen,
                source,
            })?;
    let addr = listener
        .local_addr()
        .map_err(|source| ServerError::Listen {
            addr: config.listen,
            source,
        })?;
    let (events, _) = broadcast::channel(1024);
    let now = settings.state_id;
    let shared = Arc::new(Shared {
        settings,
        submitter,
        duplicates: dedup::DuplicateCache::new(config.duplicate_cache),
        events,
        end_to_end: AtomicU32::new(now << 20),
        requests: AtomicU64::new(0),
    });
    tracing::info!(%addr, origin_host = %shared.settings.origin_host, peers = shared.settings.peers.len(), "diameter listening");
    if shared.settings.peers.is_empty() {
        tracing::warn!(
            "no [[diameter.peer]] configured: every CER will be refused (DIAMETER_UNKNOWN_PEER)"
        );
    }
    let (tx, rx) = mpsc::channel(4096);
    tokio::spawn(resolve_changes(shared.clone(), rx));
    let done = tokio::spawn(accept_loop(listener, shared, shutdown, config.max_peers));
    Ok(DiameterServer {
        addr,
        notifier: Notifier { tx },
        done,
    })
}

/// Finds the organisation of each changed account (walking up the ledger's
/// parents) and tells the peers.
async fn resolve_changes(shared: Arc<Shared>, mut rx: mpsc::Receiver<(u64, AccountChange)>) {
    while let Some((account, change)) = rx.recv().await {
        let mut current = AccountId(account);
        let mut org = None;
        for _ in 0..=reckon_balances::ledger::DEPTH_MAX {
            let (tx, done) = tokio::sync::oneshot::channel();
            let request = EngineRequest::Ledger(Caller::Admin, LedgerRequest::Account(current));
            let sent = shared.submitter.submit(
                vec![request],
                Box::new(move |r| {
                    let _ = tx.send(r);
                }),
            );
            if sent.is_err() {
                break;
            }
            let parent = match done.await {
                Ok(Ok(mut responses)) => match responses.pop() {
                    Some(EngineResponse::Ledger(LedgerResponse::Account(Some(view)))) => {
                        if view.status != AccountStatus::Active && change == AccountChange::Credit {
                            // Credit on a stopped account helps no session.
                            break;
                        }
                        view.parent
                    }
                    _ => break,
                },
                _ => break,
            };
            match parent {
                Some(p) => current = p,
                None => {
                    org = Some(current.0);
                    break;
                }
            }
        }
        if let Some(org) = org {
            let _ = shared.events.send(OrgEvent {
                account,
                org,
                change,
            });
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    max_peers: usize,
) {
    let slots = Arc::new(Semaphore::new(max_peers));
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => {
                let (stream, addr) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        tracing::warn!(error = %e, "diameter accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    tracing::warn!(%addr, "diameter peer limit reached; refusing");
                    continue;
                };
                let shared = shared.clone();
                let shutdown = shutdown.clone();
                tasks.spawn(async move {
                    let _permit = permit;
                    peer::run(stream, addr, shared, shutdown).await;
                });
            }
        }
    }
    drop(listener);
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(10), drain)
        .await
        .is_err()
    {
        tracing::warn!("diameter peers did not drain in 10 s; closing them");
        tasks.abort_all();
    }
    tracing::info!(
        requests = shared.requests.load(std::sync::atomic::Ordering::Relaxed),
        "diameter listener stopped"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_configuration_is_valid() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/diameter.toml");
        let config = crate::config::Config::load(&path).unwrap();
        config.engine_config().unwrap();
        let s = config.diameter.unwrap().settings().unwrap();
        assert_eq!(
            s.peers.get("pgw1.epc.mnc001.mcc001.3gppnetwork.org"),
            Some(&1000)
        );
        let id = |kind, data| reckon_protocol::diameter::message::SubscriptionId { kind, data };
        assert_eq!(
            s.subscribers.account(&[id(0, "491701234567")]),
            Some(AccountId(1001))
        );
        assert_eq!(
            s.subscribers.account(&[id(1, "001010123456789")]),
            Some(AccountId(1001))
        );
        assert_eq!(
            s.subscribers.account(&[id(0, "4917000042")]),
            Some(AccountId(5000042))
        );
        assert_eq!(s.units.per_service.get(&30), Some(&Unit::TOKENS_OUT));
    }

    #[test]
    fn bad_settings_are_refused_with_the_field() {
        let mut c = DiameterConfig::default();
        c.subscribers.push(SubscriberConfig {
            kind: "msisdn".into(),
            id: "1".into(),
            account: 1,
        });
        let e = c.settings().unwrap_err().to_string();
        assert!(e.contains("diameter.subscriber[0].type"), "{e}");
        let mut c = DiameterConfig::default();
        c.units.time = "not a unit!".into();
        assert!(c.settings().unwrap_err().to_string().contains("units.time"));
        let mut c = DiameterConfig::default();
        c.peers.push(PeerConfig {
            origin_host: "A".into(),
            org: 1,
        });
        c.peers.push(PeerConfig {
            origin_host: "a".into(),
            org: 2,
        });
        assert!(c.settings().unwrap_err().to_string().contains("twice"));
        assert_eq!(DiameterConfig::default().listen.port(), 3868);
    }
}
