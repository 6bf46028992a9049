//! What the load looks like: the traffic mix, the four kinds of user flow
//! and the credit-control requests each one sends.
//!
//! - **telco**: a data session on service 1 in `octets`: INITIAL asking for
//!   a 5 MB quota, 1 to 6 UPDATEs each reporting part of the grant as used
//!   and asking for more, TERMINATE with the final usage;
//! - **inference**: one model call on service 10: INITIAL reserving the
//!   prompt's `tokens_in` and the maximum 4,096 `tokens_out`, TERMINATE
//!   committing the actual counts (the rest is released);
//! - **gpu**: a GPU job on service 20: INITIAL reserving one GPU-hour of
//!   `gpu_seconds`, 1 to 4 periodic usage UPDATEs, TERMINATE;
//! - **event**: a DIRECT_DEBIT EVENT of one unit of `requests` on service 30;
//! - **reserve-commit**: the simplest flow that reserves and commits, on
//!   service 40: INITIAL reserving [`RESERVE_UNITS`] `credits`, TERMINATE
//!   committing 1 to all of the grant (the rest is released). This is the
//!   request pair the throughput target counts, and the one
//!   `reckon-sim redis` runs against Redis + Lua for comparison.

use crate::rng::Rng;
use reckon_protocol::message::{Ccr, Message, ServiceRequest};
use reckon_protocol::types::{EventAction, RequestType, TerminationCause, Unit, UnitAmount};
use rust_decimal::Decimal;
use std::fmt;
use std::str::FromStr;

/// One kind of user flow in the mix.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Flow {
    /// A telco data session (INITIAL, UPDATEs, TERMINATE) in octets.
    Telco,
    /// An inference request: reserve the maximum tokens, commit the actual count.
    Inference,
    /// A GPU job: reserve an hour, report usage periodically, settle.
    Gpu,
    /// A one-shot DIRECT_DEBIT event.
    Event,
    /// The simplest reservation: INITIAL reserves, TERMINATE commits part of it.
    ReserveCommit,
}

impl Flow {
    /// Every flow, in mix order.
    pub const ALL: [Flow; 5] = [
        Flow::Telco,
        Flow::Inference,
        Flow::Gpu,
        Flow::Event,
        Flow::ReserveCommit,
    ];

    /// The flow's name in `--mix`.
    pub fn name(self) -> &'static str {
        match self {
            Flow::Telco => "telco",
            Flow::Inference => "inference",
            Flow::Gpu => "gpu",
            Flow::Event => "event",
            Flow::ReserveCommit => "reserve-commit",
        }
    }

    /// The units the flow draws on (each account gets a bucket of each).
    pub fn units(self) -> &'static [Unit] {
        match self {
            Flow::Telco => &[Unit::OCTETS],
            Flow::Inference => &[Unit::TOKENS_IN, Unit::TOKENS_OUT],
            Flow::Gpu => &[Unit::GPU_SECONDS],
            Flow::Event => &[Unit::REQUESTS],
            Flow::ReserveCommit => &[Unit::CREDITS],
        }
    }

    /// The service (rating group) the flow charges.
    pub fn service(self) -> u32 {
        match self {
            Flow::Telco => TELCO_SERVICE,
            Flow::Inference => INFERENCE_SERVICE,
            Flow::Gpu => GPU_SERVICE,
            Flow::Event => EVENT_SERVICE,
            Flow::ReserveCommit => RESERVE_SERVICE,
        }
    }

    /// Mean number of requests one flow sends when nothing is refused.
    pub fn mean_requests(self) -> f64 {
        match self {
            Flow::Telco => 2.0 + (TELCO_UPDATES.0 + TELCO_UPDATES.1) as f64 / 2.0,
            Flow::Inference | Flow::ReserveCommit => 2.0,
            Flow::Gpu => 2.0 + (GPU_UPDATES.0 + GPU_UPDATES.1) as f64 / 2.0,
            Flow::Event => 1.0,
        }
    }

    /// Position in [`Flow::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Rating group of telco data sessions.
pub const TELCO_SERVICE: u32 = 1;
/// Rating group of inference requests.
pub const INFERENCE_SERVICE: u32 = 10;
/// Rating group of GPU jobs.
pub const GPU_SERVICE: u32 = 20;
/// Rating group of one-shot events.
pub const EVENT_SERVICE: u32 = 30;
/// Octets a telco session asks for per grant (5 MB).
pub const TELCO_QUOTA: u64 = 5_000_000;
/// Fewest and most UPDATEs of a telco session.
pub const TELCO_UPDATES: (u64, u64) = (1, 6);
/// Output tokens an inference request reserves (the model's maximum).
pub const MAX_TOKENS_OUT: u64 = 4096;
/// Fewest and most prompt tokens of an inference request.
pub const PROMPT_TOKENS: (u64, u64) = (20, 4000);
/// GPU-seconds a job reserves per grant (one GPU-hour).
pub const GPU_QUOTA: u64 = 3600;
/// Fewest and most usage UPDATEs of a GPU job.
pub const GPU_UPDATES: (u64, u64) = (1, 4);
/// Units of `requests` one event debits.
pub const EVENT_UNITS: u64 = 1;
/// Rating group of the reserve-commit flow.
pub const RESERVE_SERVICE: u32 = 40;
/// `credits` a reserve-commit flow reserves.
pub const RESERVE_UNITS: u64 = 1000;

/// Relative weights of the flows, parsed from
/// `telco=40,inference=40,gpu=10,event=10` (or `reserve-commit=1`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mix {
    weights: [u32; 5],
}

/// Largest weight of one flow in a mix.
pub const MIX_WEIGHT_MAX: u32 = 1_000_000;

impl Mix {
    /// A mix from weights in [`Flow::ALL`] order; at least one must be non-zero.
    pub fn new(weights: [u32; 5]) -> Result<Mix, String> {
        if weights.iter().all(|w| *w == 0) {
            return Err("the mix needs at least one flow with a weight above 0".into());
        }
        if let Some(w) = weights.iter().find(|w| **w > MIX_WEIGHT_MAX) {
            return Err(format!("mix weight {w} is above {MIX_WEIGHT_MAX}"));
        }
        Ok(Mix { weights })
    }

    /// The weight of a flow.
    pub fn weight(&self, flow: Flow) -> u32 {
        self.weights[flow.index()]
    }

    /// The flows with a non-zero weight.
    pub fn flows(&self) -> Vec<Flow> {
        Flow::ALL
            .into_iter()
            .filter(|f| self.weight(*f) > 0)
            .collect()
    }

    /// The units the mix draws on, each once, in a fixed order.
    pub fn units(&self) -> Vec<Unit> {
        let mut units = Vec::new();
        for f in self.flows() {
            for u in f.units() {
                if !units.contains(u) {
                    units.push(*u);
                }
            }
        }
        units
    }

    /// Draws a flow with probability proportional to its weight.
    pub fn pick(&self, rng: &mut Rng) -> Flow {
        let total: u64 = self.weights.iter().map(|w| *w as u64).sum();
        let mut x = rng.below(total);
        for f in Flow::ALL {
            let w = self.weight(f) as u64;
            if x < w {
                return f;
            }
            x -= w;
        }
        Flow::ReserveCommit
    }

    /// Mean requests per flow over the mix, to turn a request rate into a
    /// flow arrival rate.
    pub fn mean_requests(&self) -> f64 {
        let total: f64 = self.weights.iter().map(|w| *w as f64).sum();
        Flow::ALL
            .iter()
            .map(|f| self.weight(*f) as f64 * f.mean_requests())
            .sum::<f64>()
            / total
    }
}

impl Default for Mix {
    fn default() -> Mix {
        Mix {
            weights: [40, 40, 10, 10, 0],
        }
    }
}

impl FromStr for Mix {
    type Err = String;

    fn from_str(text: &str) -> Result<Mix, String> {
        let mut weights = [0u32; 5];
        let mut seen = [false; 5];
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, weight) = item
                .split_once('=')
                .ok_or_else(|| format!("mix item {item:?}: expected NAME=WEIGHT"))?;
            let flow = Flow::ALL
                .into_iter()
                .find(|f| f.name() == name.trim())
                .ok_or_else(|| {
                    format!("mix item {item:?}: unknown flow {name:?} (expected telco, inference, gpu, event or reserve-commit)")
                })?;
            let weight: u32 = weight.trim().parse().map_err(|_| {
                format!("mix item {item:?}: weight {weight:?} is not a whole number")
            })?;
            if seen[flow.index()] {
                return Err(format!("mix names {:?} twice", flow.name()));
            }
            seen[flow.index()] = true;
            weights[flow.index()] = weight;
        }
        Mix::new(weights)
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = Flow::ALL
            .iter()
            .filter(|fl| self.weight(**fl) > 0)
            .map(|fl| format!("{}={}", fl.name(), self.weight(*fl)))
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// The message types whose latency is measured separately.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum MsgType {
    /// A session's INITIAL request.
    Initial,
    /// A session's UPDATE request.
    Update,
    /// A session's TERMINATE request.
    Terminate,
    /// A one-shot EVENT request.
    Event,
}

impl MsgType {
    /// Every type, in report order.
    pub const ALL: [MsgType; 4] = [
        MsgType::Initial,
        MsgType::Update,
        MsgType::Terminate,
        MsgType::Event,
    ];

    /// The type's name as the protocol spells it.
    pub fn name(self) -> &'static str {
        match self {
            MsgType::Initial => "INITIAL",
            MsgType::Update => "UPDATE",
            MsgType::Terminate => "TERMINATE",
            MsgType::Event => "EVENT",
        }
    }

    /// Position in [`MsgType::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Whole units as a protocol amount.
pub fn units(n: u64) -> Decimal {
    Decimal::from(n)
}

/// A list of (unit, amount) pairs leaving out zero amounts.
pub fn amounts(list: &[(Unit, u64)]) -> Vec<UnitAmount> {
    list.iter()
        .filter(|(_, n)| *n > 0)
        .map(|(u, n)| UnitAmount::new(*u, units(*n)))
        .collect()
}

/// A credit-control request of one service.
pub fn ccr(
    session_id: &str,
    request_type: RequestType,
    request_number: u32,
    account: u64,
    service: u32,
    requested: &[(Unit, u64)],
    used: &[(Unit, u64)],
) -> Message {
    Message::Ccr(Ccr {
        session_id: session_id.to_string(),
        request_type,
        request_number,
        account,
        event_action: (request_type == RequestType::Event).then_some(EventAction::DirectDebit),
        termination_cause: (request_type == RequestType::Terminate)
            .then_some(TerminationCause::Logout),
        timestamp_ms: 0,
        services: vec![ServiceRequest {
            service_id: service,
            requested: amounts(requested),
            used: amounts(used),
        }],
        attributes: Vec::new(),
    })
}

/// Rewrites `message` as [`ccr`] would build it, reusing its buffers: a
/// flow's requests differ in a few fields, and at hundreds of thousands of
/// requests per second the generator should not allocate for each one.
#[allow(clippy::too_many_arguments)]
pub fn set_ccr(
    message: &mut Message,
    session_id: &str,
    request_type: RequestType,
    request_number: u32,
    account: u64,
    service: u32,
    requested: &[(Unit, u64)],
    used: &[(Unit, u64)],
) {
    let Message::Ccr(c) = message else {
        *message = ccr(
            session_id,
            request_type,
            request_number,
            account,
            service,
            requested,
            used,
        );
        return;
    };
    if c.session_id != session_id {
        c.session_id.clear();
        c.session_id.push_str(session_id);
    }
    c.request_type = request_type;
    c.request_number = request_number;
    c.account = account;
    c.event_action = (request_type == RequestType::Event).then_some(EventAction::DirectDebit);
    c.termination_cause =
        (request_type == RequestType::Terminate).then_some(TerminationCause::Logout);
    c.timestamp_ms = 0;
    c.services.truncate(1);
    if c.services.is_empty() {
        c.services.push(ServiceRequest {
            service_id: service,
            requested: Vec::new(),
            used: Vec::new(),
        });
    }
    let s = &mut c.services[0];
    s.service_id = service;
    s.requested.clear();
    s.requested.extend(amounts_iter(requested));
    s.used.clear();
    s.used.extend(amounts_iter(used));
}

fn amounts_iter(list: &[(Unit, u64)]) -> impl Iterator<Item = UnitAmount> + '_ {
    list.iter()
        .filter(|(_, n)| *n > 0)
        .map(|(u, n)| UnitAmount::new(*u, units(*n)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_parses_and_refuses_bad_input() {
        let m: Mix = "telco=40,inference=40,gpu=10,event=10".parse().unwrap();
        assert_eq!(m, Mix::default());
        assert_eq!(m.to_string(), "telco=40,inference=40,gpu=10,event=10");
        let only: Mix = "event=1".parse().unwrap();
        assert_eq!(only.flows(), vec![Flow::Event]);
        assert_eq!(only.units(), vec![Unit::REQUESTS]);
        assert!((only.mean_requests() - 1.0).abs() < 1e-9);
        let rc: Mix = "reserve-commit=1".parse().unwrap();
        assert_eq!(rc.flows(), vec![Flow::ReserveCommit]);
        assert_eq!(rc.units(), vec![Unit::CREDITS]);
        assert_eq!(rc.to_string(), "reserve-commit=1");
        assert!((rc.mean_requests() - 2.0).abs() < 1e-9);
        for bad in [
            "",
            "telco=0",
            "voice=3",
            "telco",
            "telco=x",
            "telco=-1",
            "telco=1,telco=2",
            "telco=2000000",
            "reserve=1",
        ] {
            assert!(bad.parse::<Mix>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn set_ccr_rewrites_in_place_exactly_as_ccr_builds() {
        type Amounts = &'static [(Unit, u64)];
        let steps: [(RequestType, u32, Amounts, Amounts); 4] = [
            (
                RequestType::Initial,
                0,
                &[(Unit::TOKENS_IN, 20), (Unit::TOKENS_OUT, 4096)],
                &[],
            ),
            (
                RequestType::Update,
                1,
                &[(Unit::TOKENS_OUT, 4096)],
                &[(Unit::TOKENS_OUT, 0), (Unit::TOKENS_IN, 7)],
            ),
            (RequestType::Terminate, 2, &[], &[(Unit::TOKENS_OUT, 12)]),
            (RequestType::Event, 0, &[(Unit::REQUESTS, 1)], &[]),
        ];
        let mut m = Message::Ping;
        for (i, (ty, n, req, used)) in steps.into_iter().enumerate() {
            let session = format!("s-{}", i / 3);
            set_ccr(&mut m, &session, ty, n, 42 + i as u64, 10, req, used);
            assert_eq!(m, ccr(&session, ty, n, 42 + i as u64, 10, req, used));
        }
    }

    #[test]
    fn picks_follow_weights() {
        let m: Mix = "telco=1,event=3".parse().unwrap();
        let mut rng = Rng::new(1);
        let mut events = 0;
        for _ in 0..10_000 {
            match m.pick(&mut rng) {
                Flow::Event => events += 1,
                Flow::Telco => {}
                other => panic!("{other:?} has weight 0"),
            }
        }
        assert!((7000..8000).contains(&events), "{events}");
    }
}
