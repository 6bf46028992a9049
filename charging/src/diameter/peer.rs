//! One peer connection: the RFC 6733 peer state machine as seen by a
//! server (Wait-CER → Open → Closing), the watchdog (RFC 3539), and the
//! bridge from CCRs to the journal.
//!
//! One task owns the socket. Each read is cut into messages; every CCR of
//! the read is mapped and the lot goes to the journal as one submission;
//! answers that need no engine (DWA, errors, cached duplicates) go into the
//! write buffer at once. The journal's reply comes back over a channel and
//! is encoded into the same buffer, written after each turn of the loop.
//! At most `in_flight_per_peer` CCRs wait for the engine: at the bound the
//! task stops reading, so a fast peer is slowed by TCP, not queued without
//! end.

use super::mapping::{self, AnswerShape};
use super::{AccountChange, OrgEvent, Shared};
use crate::engine::{Caller, EngineRequest, EngineResponse};
use bytes::{Buf, Bytes, BytesMut};
use reckon_balances::journal::JournalError;
use reckon_balances::AccountId;
use reckon_protocol::diameter::dictionary::{self as d, disconnect_cause, re_auth_request_type};
use reckon_protocol::diameter::message::{
    session_id_of, AnswerStatus, Asr, Capabilities, Cca, Ccr, Cea, Cer, Dpa, Dpr, Dwa, Dwr,
    ErrorAnswer, Origin, Rar, SessionAnswer, SessionRequest,
};
use reckon_protocol::diameter::{
    command, frame_length, result, DiameterError, Header, APP_CREDIT_CONTROL,
};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::{Duration, Instant};

/// Most Diameter sessions a peer connection tracks for RAR/ASR.
const SESSIONS_MAX: usize = 262_144;
/// A tracked session untouched this long is forgotten (the engine's
/// supervision has released it long before).
const SESSION_IDLE: Duration = Duration::from_secs(2 * 3600);
/// Most server-initiated requests waiting for answers.
const SERVER_REQUESTS_MAX: usize = 16_384;
/// Most RAR/ASR one admin change sends on one connection.
const NOTIFY_MAX: usize = 10_000;
/// A write that makes no progress this long drops the peer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum State {
    WaitCer,
    Open,
    /// The peer sent DPR: finish what is in flight, wait for it to close.
    PeerClosing,
    /// We sent DPR (shutdown): wait for DPA and the in-flight answers.
    Closing {
        dpa: bool,
    },
}

/// What one request needs for its answer once the engine replied.
struct Meta {
    header: Header,
    /// The engine's session id (`d<org>:<Session-Id>` or a hash).
    session: Arc<str>,
    /// The Session-Id when `session` is a hash of it.
    long_session_id: Option<Box<str>>,
    request_number: u32,
    shape: AnswerShape,
    proxy_infos: Vec<Box<[u8]>>,
    digest: u64,
    account: AccountId,
}

impl Meta {
    /// The Diameter Session-Id to answer with.
    fn session_id(&self) -> &str {
        mapping::diameter_part(&self.session)
            .or(self.long_session_id.as_deref())
            .unwrap_or_default()
    }
}

struct Completion {
    batch: u64,
    result: Result<Vec<EngineResponse>, Arc<JournalError>>,
}

struct Tracked {
    account: AccountId,
    /// The Session-Id when the engine's id is a hash of it.
    long_session_id: Option<Box<str>>,
    starved: bool,
    touched: Instant,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum ServerRequest {
    ReAuth,
    Abort,
}

/// Why the connection must end (after writing what is buffered).
struct Close(&'static str);

struct Peer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    local: SocketAddr,
    state: State,
    org: u64,
    host: String,
    realm: String,
    host_key: u64,
    wbuf: BytesMut,
    in_flight: usize,
    batches: HashMap<u64, Vec<Meta>>,
    next_batch: u64,
    completions: mpsc::UnboundedSender<Completion>,
    /// Keyed by the engine's session id.
    sessions: HashMap<Arc<str>, Tracked>,
    server_requests: HashMap<u32, (ServerRequest, Arc<str>)>,
    next_hop: u32,
    last_rx: Instant,
    dwr_sent: Option<Instant>,
    deadline: Option<Instant>,
    cost_unit: String,
}

fn origin(s: &super::Settings, state_id: Option<u32>) -> Origin<'_> {
    Origin {
        host: &s.origin_host,
        realm: &s.origin_realm,
        state_id,
    }
}

/// Serves one connection until it closes.
pub(crate) async fn run(
    stream: TcpStream,
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let local = stream
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
    let (tx, rx) = mpsc::unbounded_channel();
    let events = shared.events.subscribe();
    let cer_timeout = shared.settings.cer_timeout;
    let mut peer = Peer {
        shared,
        addr,
        local,
        state: State::WaitCer,
        org: 0,
        host: String::new(),
        realm: String::new(),
        host_key: 0,
        wbuf: BytesMut::with_capacity(16 * 1024),
        in_flight: 0,
        batches: HashMap::new(),
        next_batch: 0,
        completions: tx,
        sessions: HashMap::new(),
        server_requests: HashMap::new(),
        next_hop: 1,
        last_rx: Instant::now(),
        dwr_sent: None,
        deadline: Some(Instant::now() + cer_timeout),
        cost_unit: String::new(),
    };
    let why = peer.serve(stream, rx, events, shutdown).await;
    tracing::debug!(peer = %addr, host = %peer.host, reason = why, "diameter peer closed");
}

impl Peer {
    async fn serve(
        &mut self,
        stream: TcpStream,
        mut completions: mpsc::UnboundedReceiver<Completion>,
        mut events: broadcast::Receiver<OrgEvent>,
        mut shutdown: watch::Receiver<bool>,
    ) -> &'static str {
        let (mut rd, mut wr) = stream.into_split();
        let mut rbuf = BytesMut::with_capacity(64 * 1024);
        let mut shutting_down = *shutdown.borrow();
        let why = loop {
            let reading = self.in_flight < self.shared.settings.in_flight;
            let timer = self.next_timer();
            let outcome: Result<(), Close> = tokio::select! {
                biased;
                Some(c) = completions.recv() => {
                    self.complete(c);
                    // Drain what else is ready: one write for many answers.
                    while let Ok(c) = completions.try_recv() {
                        self.complete(c);
                    }
                    Ok(())
                }
                read = rd.read_buf(&mut rbuf), if reading => match read {
                    Ok(0) => Err(Close("peer closed the connection")),
                    Ok(_) => self.on_bytes(&mut rbuf),
                    Err(_) => Err(Close("read failed")),
                },
                event = events.recv(), if self.state == State::Open => {
                    match event {
                        Ok(e) => self.on_event(e),
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            tracing::warn!(peer = %self.addr, missed = n, "admin changes missed; no RAR for them");
                        }
                        Err(broadcast::error::RecvError::Closed) => {}
                    }
                    Ok(())
                }
                changed = shutdown.changed(), if !shutting_down => {
                    shutting_down = true;
                    if changed.is_err() { Ok(()) } else { self.on_shutdown() }
                }
                _ = tokio::time::sleep_until(timer) => self.on_timer(),
            };
            if !self.wbuf.is_empty() {
                match tokio::time::timeout(WRITE_TIMEOUT, wr.write_all(&self.wbuf)).await {
                    Ok(Ok(())) => self.wbuf.clear(),
                    _ => break "write failed or stalled",
                }
            }
            if let Err(Close(why)) = outcome {
                break why;
            }
            match self.state {
                State::Closing { dpa: true } if self.in_flight == 0 => {
                    break "disconnected (DPR sent at shutdown)"
                }
                _ => {}
            }
        };
        let _ = wr.shutdown().await;
        why
    }

    fn next_timer(&self) -> Instant {
        let watchdog = self.shared.settings.watchdog;
        let far = Instant::now() + Duration::from_secs(3600);
        match self.state {
            State::Open => match self.dwr_sent {
                Some(at) => at + watchdog,
                None => self.last_rx + watchdog,
            },
            _ => self.deadline.unwrap_or(far),
        }
    }

    fn on_timer(&mut self) -> Result<(), Close> {
        let now = Instant::now();
        match self.state {
            State::Open => {
                let watchdog = self.shared.settings.watchdog;
                if let Some(at) = self.dwr_sent {
                    if now >= at + watchdog {
                        return Err(Close("silent: no answer to DWR"));
                    }
                } else if now >= self.last_rx + watchdog {
                    self.send_dwr();
                    self.prune_sessions(now);
                }
                Ok(())
            }
            State::WaitCer => match self.deadline {
                Some(d) if now >= d => Err(Close("no CER in time")),
                _ => Ok(()),
            },
            _ => match self.deadline {
                Some(d) if now >= d => Err(Close("disconnect timed out")),
                _ => Ok(()),
            },
        }
    }

    fn on_shutdown(&mut self) -> Result<(), Close> {
        match self.state {
            State::Open => {
                let hop = self.hop();
                let e2e = self.end_to_end();
                let shared = self.shared.clone();
                let mut dst = std::mem::take(&mut self.wbuf);
                let dpr = Dpr {
                    origin: origin(&shared.settings, None),
                    disconnect_cause: disconnect_cause::REBOOTING,
                };
                let _ = dpr.encode(&mut dst, hop, e2e);
                self.wbuf = dst;
                self.state = State::Closing { dpa: false };
                self.deadline = Some(Instant::now() + Duration::from_secs(5));
                Ok(())
            }
            State::WaitCer => Err(Close("server shutting down")),
            _ => Ok(()),
        }
    }

    fn hop(&mut self) -> u32 {
        self.next_hop = self.next_hop.wrapping_add(1);
        self.next_hop
    }

    fn end_to_end(&self) -> u32 {
        self.shared.end_to_end.fetch_add(1, Ordering::Relaxed)
    }

    fn send_dwr(&mut self) {
        let hop = self.hop();
        let e2e = self.end_to_end();
        let shared = self.shared.clone();
        let dwr = Dwr {
            origin: origin(&shared.settings, Some(shared.settings.state_id)),
        };
        let mut dst = std::mem::take(&mut self.wbuf);
        let _ = dwr.encode(&mut dst, hop, e2e);
        self.wbuf = dst;
        self.dwr_sent = Some(Instant::now());
    }

    /// Cuts whole messages off `rbuf` and handles them; submits the CCRs
    /// among them as one batch.
    fn on_bytes(&mut self, rbuf: &mut BytesMut) -> Result<(), Close> {
        self.last_rx = Instant::now();
        self.dwr_sent = None;
        let mut batch = Vec::new();
        let mut metas = Vec::new();
        let mut outcome = Ok(());
        loop {
            let len = match frame_length(rbuf, self.shared.settings.max_message) {
                Ok(Some(len)) if rbuf.len() >= len => len,
                Ok(Some(len)) => {
                    rbuf.reserve(len - rbuf.len());
                    break;
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(peer = %self.addr, error = %e, "diameter framing lost");
                    outcome = Err(Close("garbage on the connection"));
                    break;
                }
            };
            let handled = self.on_message(&rbuf[..len], &mut batch, &mut metas);
            rbuf.advance(len);
            if let Err(close) = handled {
                outcome = Err(close);
                break;
            }
        }
        if !batch.is_empty() {
            self.submit(batch, metas);
        }
        outcome
    }

    fn on_message(
        &mut self,
        msg: &[u8],
        batch: &mut Vec<EngineRequest>,
        metas: &mut Vec<Meta>,
    ) -> Result<(), Close> {
        let Ok(header) = Header::parse(msg) else {
            return Err(Close("malformed header"));
        };
        if !header.is_request() {
            self.on_answer(&header, msg);
            return Ok(());
        }
        if header.has_invalid_bits() {
            self.error(
                &header,
                msg,
                DiameterError::new(result::INVALID_HDR_BITS, "E bit on a request"),
            );
            return Ok(());
        }
        match (self.state, header.code) {
            (State::WaitCer, command::CAPABILITIES_EXCHANGE) => self.on_cer(&header, msg),
            (State::WaitCer, _) => Err(Close("a request before CER")),
            (State::Open, command::CAPABILITIES_EXCHANGE) => {
                // Already open: confirm again rather than tear down.
                self.answer_cea(&header, result::SUCCESS, None);
                Ok(())
            }
            (_, command::DEVICE_WATCHDOG) => {
                let shared = self.shared.clone();
                let dwa = Dwa {
                    status: AnswerStatus {
                        result_code: result::SUCCESS,
                        ..Default::default()
                    },
                    origin: origin(&shared.settings, Some(shared.settings.state_id)),
                };
                let mut dst = std::mem::take(&mut self.wbuf);
                let _ = dwa.encode(&mut dst, &header);
                self.wbuf = dst;
                Ok(())
            }
            (_, command::DISCONNECT_PEER) => {
                let shared = self.shared.clone();
                let dpa = Dpa {
                    status: AnswerStatus {
                        result_code: result::SUCCESS,
                        ..Default::default()
                    },
                    origin: origin(&shared.settings, None),
                };
                let mut dst = std::mem::take(&mut self.wbuf);
                let _ = dpa.encode(&mut dst, &header);
                self.wbuf = dst;
                if self.state == State::Open {
                    // The sender of DPR closes after our DPA (RFC 6733
                    // 5.4); answers still in flight go out meanwhile.
                    self.state = State::PeerClosing;
                    self.deadline = Some(Instant::now() + Duration::from_secs(2));
                }
                Ok(())
            }
            (State::Open, command::CREDIT_CONTROL) => {
                if header.application_id != APP_CREDIT_CONTROL {
                    self.error(
                        &header,
                        msg,
                        DiameterError::new(
                            result::APPLICATION_UNSUPPORTED,
                            "only Credit-Control (4) is served",
                        ),
                    );
                } else {
                    self.on_ccr(&header, msg, batch, metas);
                }
                Ok(())
            }
            (State::Open, _) => {
                self.error(
                    &header,
                    msg,
                    DiameterError::new(result::COMMAND_UNSUPPORTED, "command not supported"),
                );
                Ok(())
            }
            (_, _) => {
                self.error(
                    &header,
                    msg,
                    DiameterError::new(result::TOO_BUSY, "disconnecting; send elsewhere"),
                );
                Ok(())
            }
        }
    }

    fn error(&mut self, request: &Header, msg: &[u8], e: DiameterError) {
        let mut dst = std::mem::take(&mut self.wbuf);
        let _ = ErrorAnswer {
            session_id: session_id_of(msg),
            origin_host: &self.shared.settings.origin_host,
            origin_realm: &self.shared.settings.origin_realm,
            status: AnswerStatus {
                result_code: e.result_code,
                error_message: Some(e.reason),
                failed_avp: e.failed_avp,
            },
            origin_state_id: Some(self.shared.settings.state_id),
        }
        .encode(&mut dst, request);
        self.wbuf = dst;
    }

    fn answer_cea(&mut self, request: &Header, code: u32, e: Option<DiameterError>) {
        let s = &self.shared.settings;
        let cea = Cea {
            status: AnswerStatus {
                result_code: code,
                error_message: e.as_ref().map(|e| e.reason),
                failed_avp: e.and_then(|e| e.failed_avp),
            },
            capabilities: Capabilities {
                origin_host: &s.origin_host,
                origin_realm: &s.origin_realm,
                host_ip_addresses: vec![self.local.ip()],
                vendor_id: 0,
                product_name: "Reckon",
                origin_state_id: Some(s.state_id),
                supported_vendor_ids: vec![d::VENDOR_3GPP],
                auth_application_ids: vec![APP_CREDIT_CONTROL],
                ..Default::default()
            },
        };
        let mut dst = std::mem::take(&mut self.wbuf);
        let _ = cea.encode(&mut dst, request);
        self.wbuf = dst;
    }

    fn on_cer(&mut self, header: &Header, msg: &[u8]) -> Result<(), Close> {
        let cer = match Cer::decode(msg) {
            Ok(c) => c,
            Err(e) => {
                let code = e.result_code;
                self.answer_cea(header, code, Some(e));
                return Err(Close("malformed CER"));
            }
        };
        let c = &cer.capabilities;
        let host = c.origin_host.to_ascii_lowercase();
        let Some(org) = self.shared.settings.peers.get(&host).copied() else {
            tracing::warn!(peer = %self.addr, origin_host = c.origin_host, "CER from an unknown peer");
            self.answer_cea(
                header,
                result::UNKNOWN_PEER,
                Some(DiameterError::new(
                    result::UNKNOWN_PEER,
                    "this Origin-Host is not configured",
                )),
            );
            return Err(Close("unknown peer"));
        };
        if !c.supports(APP_CREDIT_CONTROL) {
            self.answer_cea(
                header,
                result::NO_COMMON_APPLICATION,
                Some(DiameterError::new(
                    result::NO_COMMON_APPLICATION,
                    "only Credit-Control (4) is served",
                )),
            );
            return Err(Close("no common application"));
        }
        self.org = org;
        self.host = c.origin_host.to_string();
        self.realm = c.origin_realm.to_string();
        self.host_key = mapping::fnv1a_64(host.as_bytes());
        self.state = State::Open;
        self.deadline = None;
        tracing::debug!(peer = %self.addr, origin_host = %self.host, org, "diameter peer open");
        self.answer_cea(header, result::SUCCESS, None);
        Ok(())
    }

    fn on_answer(&mut self, header: &Header, msg: &[u8]) {
        match header.code {
            command::DEVICE_WATCHDOG => self.dwr_sent = None,
            command::DISCONNECT_PEER => {
                if let State::Closing { .. } = self.state {
                    self.state = State::Closing { dpa: true };
                }
            }
            command::RE_AUTH | command::ABORT_SESSION => {
                let Some((kind, session)) = self.server_requests.remove(&header.hop_by_hop) else {
                    return;
                };
                let code = SessionAnswer::decode(msg)
                    .map(|a| a.status.result_code)
                    .unwrap_or(0);
                tracing::debug!(peer = %self.addr, session = %session, ?kind, result = code, "server-initiated request answered");
                if code == result::UNKNOWN_SESSION_ID {
                    self.sessions.remove(&session);
                }
            }
            _ => {}
        }
    }

    fn ccr_answer_error(&mut self, header: &Header, ccr: &Ccr<'_>, code: u32) {
        let cca = Cca {
            session_id: ccr.session_id,
            status: AnswerStatus {
                result_code: code,
                ..Default::default()
            },
            origin_host: &self.shared.settings.origin_host,
            origin_realm: &self.shared.settings.origin_realm,
            auth_application_id: APP_CREDIT_CONTROL,
            request_type: ccr.request_type,
            request_number: ccr.request_number,
            origin_state_id: Some(self.shared.settings.state_id),
            proxy_infos: ccr.proxy_infos.clone(),
            ..Default::default()
        };
        let mut dst = std::mem::take(&mut self.wbuf);
        let _ = cca.encode(&mut dst, header);
        self.wbuf = dst;
    }

    fn on_ccr(
        &mut self,
        header: &Header,
        msg: &[u8],
        batch: &mut Vec<EngineRequest>,
        metas: &mut Vec<Meta>,
    ) {
        self.shared.requests.fetch_add(1, Ordering::Relaxed);
        let ccr = match Ccr::decode(msg) {
            Ok(c) => c,
            Err(e) => return self.error(header, msg, e),
        };
        let s = &self.shared.settings;
        if ccr
            .destination_host
            .is_some_and(|h| !h.eq_ignore_ascii_case(&s.origin_host))
        {
            return self.error(
                header,
                msg,
                DiameterError::new(
                    result::UNABLE_TO_DELIVER,
                    "Destination-Host is not this server",
                ),
            );
        }
        if !ccr.destination_realm.is_empty()
            && !ccr.destination_realm.eq_ignore_ascii_case(&s.origin_realm)
        {
            return self.error(
                header,
                msg,
                DiameterError::new(
                    result::REALM_NOT_SERVED,
                    "Destination-Realm is not served here",
                ),
            );
        }
        // The content a retransmission must repeat: the session and its step.
        let digest = mapping::fnv1a_64(ccr.session_id.as_bytes())
            ^ (ccr.request_number as u64) << 7
            ^ ccr.request_type as u64;
        if header.is_retransmit() {
            if let Some(answer) =
                self.shared
                    .duplicates
                    .get(self.host_key, header.end_to_end, digest)
            {
                let start = self.wbuf.len();
                self.wbuf.extend_from_slice(&answer);
                // The answer travels back on this link: its hop-by-hop id.
                self.wbuf[start + 12..start + 16].copy_from_slice(&header.hop_by_hop.to_be_bytes());
                return;
            }
        }
        let session = mapping::engine_session_id(self.org, ccr.session_id);
        let account = s
            .subscribers
            .account(&ccr.subscription_ids)
            .or_else(|| self.sessions.get(&session).map(|t| t.account));
        let Some(account) = account else {
            if !ccr.subscription_ids.is_empty() {
                return self.ccr_answer_error(header, &ccr, result::USER_UNKNOWN);
            }
            if matches!(
                ccr.request_type,
                d::cc_request_type::INITIAL | d::cc_request_type::EVENT
            ) {
                let e =
                    DiameterError::missing(d::SUBSCRIPTION_ID.code, 0, "Subscription-Id missing");
                return self.error(header, msg, e);
            }
            return self.ccr_answer_error(header, &ccr, result::UNKNOWN_SESSION_ID);
        };
        let long_session_id = mapping::diameter_part(&session)
            .is_none()
            .then(|| Box::from(ccr.session_id));
        let (request, shape) =
            match mapping::request(&s.units, &s.free, session.clone(), account, &ccr) {
                Ok(m) => m,
                Err(code) => return self.ccr_answer_error(header, &ccr, code),
            };
        let free = mapping::all_free(&request, &shape);
        let meta = Meta {
            header: *header,
            session,
            long_session_id,
            request_number: ccr.request_number,
            shape,
            proxy_infos: ccr.proxy_infos.iter().map(|p| Box::from(*p)).collect(),
            digest,
            account,
        };
        if free {
            // Zero-rated: nothing to charge, no engine round trip.
            return self.write_simple(&meta, result::CREDIT_CONTROL_NOT_APPLICABLE);
        }
        batch.push(EngineRequest::CreditControl(
            Caller::Org(AccountId(self.org)),
            request,
        ));
        metas.push(meta);
    }

    fn submit(&mut self, batch: Vec<EngineRequest>, metas: Vec<Meta>) {
        let id = self.next_batch;
        self.next_batch += 1;
        let n = metas.len();
        let tx = self.completions.clone();
        let submitted = self.shared.submitter.submit(
            batch,
            Box::new(move |result| {
                let _ = tx.send(Completion { batch: id, result });
            }),
        );
        match submitted {
            Ok(()) => {
                self.in_flight += n;
                self.batches.insert(id, metas);
            }
            Err(e) => {
                let (code, why) = match e {
                    JournalError::Busy => {
                        (result::TOO_BUSY, "overloaded; retry later or elsewhere")
                    }
                    _ => (result::UNABLE_TO_COMPLY, "the server is stopping"),
                };
                for m in metas {
                    let mut dst = std::mem::take(&mut self.wbuf);
                    let _ = ErrorAnswer {
                        session_id: Some(m.session_id()),
                        origin_host: &self.shared.settings.origin_host,
                        origin_realm: &self.shared.settings.origin_realm,
                        status: AnswerStatus {
                            result_code: code,
                            error_message: Some(why),
                            failed_avp: None,
                        },
                        origin_state_id: Some(self.shared.settings.state_id),
                    }
                    .encode(&mut dst, &m.header);
                    self.wbuf = dst;
                }
            }
        }
    }

    fn complete(&mut self, c: Completion) {
        let Some(metas) = self.batches.remove(&c.batch) else {
            return;
        };
        self.in_flight -= metas.len();
        match c.result {
            Ok(responses) => {
                let mut responses = responses.into_iter();
                for meta in metas {
                    match responses.next() {
                        Some(EngineResponse::CreditControl(a)) => self.write_cca(&meta, &a),
                        Some(EngineResponse::Forbidden | EngineResponse::NotFound) => {
                            self.write_simple(&meta, result::USER_UNKNOWN)
                        }
                        _ => self.write_simple(&meta, result::UNABLE_TO_COMPLY),
                    }
                }
            }
            Err(e) => {
                tracing::warn!(peer = %self.addr, error = %e, "journal failed a batch");
                for meta in metas {
                    self.write_simple(&meta, result::UNABLE_TO_COMPLY);
                }
            }
        }
    }

    fn write_simple(&mut self, meta: &Meta, code: u32) {
        let a = crate::engine::CreditControlAnswer {
            result_code: code,
            services: Vec::new(),
            balance: Vec::new(),
            price: Vec::new(),
        };
        self.write_cca(meta, &a);
    }

    fn write_cca(&mut self, meta: &Meta, a: &crate::engine::CreditControlAnswer) {
        let settings = &self.shared.settings;
        let mut dst = std::mem::take(&mut self.wbuf);
        let start = dst.len();
        if result::is_protocol_error(a.result_code) {
            let _ = ErrorAnswer {
                session_id: Some(meta.session_id()),
                origin_host: &settings.origin_host,
                origin_realm: &settings.origin_realm,
                status: AnswerStatus {
                    result_code: a.result_code,
                    error_message: Some("overloaded; retry later or elsewhere"),
                    failed_avp: None,
                },
                origin_state_id: Some(settings.state_id),
            }
            .encode(&mut dst, &meta.header);
            self.wbuf = dst;
            return;
        }
        let mut cost_unit = std::mem::take(&mut self.cost_unit);
        let parts = mapping::answer(
            &settings.units,
            &meta.shape,
            a,
            settings.redirect_url.as_deref(),
            &mut cost_unit,
        );
        let code = parts.result_code;
        let starved = parts.starved;
        let cca = Cca {
            session_id: meta.session_id(),
            status: AnswerStatus {
                result_code: code,
                ..Default::default()
            },
            origin_host: &settings.origin_host,
            origin_realm: &settings.origin_realm,
            auth_application_id: APP_CREDIT_CONTROL,
            request_type: meta.shape.request_type,
            request_number: meta.request_number,
            origin_state_id: Some(settings.state_id),
            granted: parts.granted,
            mscc: parts.mscc,
            cost_information: parts.cost_information,
            final_unit_indication: parts.final_unit_indication,
            check_balance_result: parts.check_balance_result,
            validity_time: parts.validity_time,
            proxy_infos: meta.proxy_infos.iter().map(|p| &p[..]).collect(),
        };
        let _ = cca.encode(&mut dst, &meta.header);
        drop(cca);
        self.cost_unit = cost_unit;
        self.shared.duplicates.insert(
            self.host_key,
            meta.header.end_to_end,
            meta.digest,
            Bytes::copy_from_slice(&dst[start..]),
        );
        self.wbuf = dst;
        self.track(meta, code, starved);
    }

    /// Keeps the session table in step with the answers sent.
    fn track(&mut self, meta: &Meta, code: u32, starved: bool) {
        let now = Instant::now();
        match meta.shape.request_type {
            d::cc_request_type::INITIAL
                if code == result::SUCCESS && self.sessions.len() < SESSIONS_MAX =>
            {
                self.sessions.insert(
                    meta.session.clone(),
                    Tracked {
                        account: meta.account,
                        long_session_id: meta.long_session_id.clone(),
                        starved,
                        touched: now,
                    },
                );
            }
            d::cc_request_type::UPDATE if code != result::UNKNOWN_SESSION_ID => {
                if let Some(t) = self.sessions.get_mut(&meta.session) {
                    t.starved = starved;
                    t.touched = now;
                }
            }
            d::cc_request_type::UPDATE | d::cc_request_type::TERMINATION => {
                self.sessions.remove(&meta.session);
            }
            _ => {}
        }
    }

    fn prune_sessions(&mut self, now: Instant) {
        self.sessions
            .retain(|_, t| now.saturating_duration_since(t.touched) < SESSION_IDLE);
    }

    /// Sends RAR or ASR to this peer's sessions an admin change concerns.
    fn on_event(&mut self, e: OrgEvent) {
        if e.org != self.org {
            return;
        }
        let mut targets: Vec<(Arc<str>, Box<str>, ServerRequest)> = Vec::new();
        for (id, t) in self.sessions.iter_mut() {
            if targets.len() >= NOTIFY_MAX {
                break;
            }
            let own = t.account.0 == e.account || e.account == e.org;
            let kind = match e.change {
                AccountChange::Stopped if own => Some(ServerRequest::Abort),
                // Below the stopped account or beside it: re-authorising
                // tells each session whether it is affected.
                AccountChange::Stopped => Some(ServerRequest::ReAuth),
                AccountChange::Credit | AccountChange::Resumed if t.starved => {
                    t.starved = false;
                    Some(ServerRequest::ReAuth)
                }
                _ => None,
            };
            if let Some(k) = kind {
                let sid = mapping::diameter_part(id)
                    .map(Box::from)
                    .or_else(|| t.long_session_id.clone())
                    .unwrap_or_default();
                targets.push((id.clone(), sid, k));
            }
        }
        for (key, session, kind) in targets {
            if self.server_requests.len() >= SERVER_REQUESTS_MAX {
                tracing::warn!(peer = %self.addr, "too many RAR/ASR unanswered; skipping the rest");
                break;
            }
            let hop = self.hop();
            let e2e = self.end_to_end();
            let settings = &self.shared.settings;
            let request = SessionRequest {
                session_id: &session,
                origin_host: &settings.origin_host,
                origin_realm: &settings.origin_realm,
                destination_realm: &self.realm,
                destination_host: &self.host,
                auth_application_id: APP_CREDIT_CONTROL,
            };
            let mut dst = std::mem::take(&mut self.wbuf);
            let _ = match kind {
                ServerRequest::ReAuth => Rar {
                    session: request,
                    re_auth_request_type: re_auth_request_type::AUTHORIZE_ONLY,
                    rating_group: None,
                }
                .encode(&mut dst, hop, e2e),
                ServerRequest::Abort => Asr { session: request }.encode(&mut dst, hop, e2e),
            };
            self.wbuf = dst;
            tracing::debug!(peer = %self.addr, session = %session, ?kind, account = e.account, "server-initiated request sent");
            self.server_requests.insert(hop, (kind, key));
        }
    }
}
