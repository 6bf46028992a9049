//! Typed messages: CER/CEA, DWR/DWA, DPR/DPA (base), CCR/CCA (credit
//! control), RAR/RAA and ASR/ASA (server-initiated), and the generic error
//! answer. Strings borrow from the message bytes; lists are bounded
//! ([`MSCC_MAX`], [`USED_MAX`], [`LIST_MAX`]), so a decoded message holds a
//! bounded amount of memory whatever its size.
//!
//! Decoding is liberal where real peers differ (AVP order is free; a CCR
//! without Destination-Realm, Auth-Application-Id or Service-Context-Id is
//! accepted) and strict where the RFC requires it: an AVP with the M flag
//! that the [dictionary](super::dictionary) does not know is refused with
//! DIAMETER_AVP_UNSUPPORTED, a required AVP missing gives
//! DIAMETER_MISSING_AVP, a bad length DIAMETER_INVALID_AVP_LENGTH, a bad
//! value DIAMETER_INVALID_AVP_VALUE and a repeated single AVP
//! DIAMETER_AVP_OCCURS_TOO_MANY_TIMES, each naming the AVP in Failed-AVP.
//! Grouped AVPs the server does not interpret (Service-Information,
//! Proxy-Info, ...) are kept whole and not searched for unknown members.

use super::avp::{encode_message, AvpIter, AvpRef, AvpWriter, TooLarge};
use super::dictionary::{self as d, cc_request_type};
use super::{
    command, result, DiameterError, FailedAvp, Header, APP_COMMON, APP_CREDIT_CONTROL, APP_RELAY,
    FLAG_ERROR, FLAG_PROXIABLE, FLAG_REQUEST, HEADER_LEN, LIST_MAX, MSCC_MAX, USED_MAX,
};
use bytes::BytesMut;
use std::net::IpAddr;

type R<T> = Result<T, DiameterError>;

fn body(msg: &[u8]) -> &[u8] {
    msg.get(HEADER_LEN..).unwrap_or(&[])
}

/// Refuses an AVP the dictionary does not know when its M flag is set;
/// ignores it otherwise.
fn other(avp: &AvpRef<'_>) -> R<()> {
    if avp.is_mandatory() && d::lookup(avp.code, avp.vendor_id).is_none() {
        return Err(DiameterError::avp(
            result::AVP_UNSUPPORTED,
            avp,
            "AVP with the M flag is not supported",
        ));
    }
    Ok(())
}

fn once<T>(slot: &mut Option<T>, value: T, avp: &AvpRef<'_>) -> R<()> {
    if slot.is_some() {
        return Err(DiameterError::avp(
            result::AVP_OCCURS_TOO_MANY_TIMES,
            avp,
            "AVP occurs more than once",
        ));
    }
    *slot = Some(value);
    Ok(())
}

fn push<T>(list: &mut Vec<T>, value: T, avp: &AvpRef<'_>) -> R<()> {
    push_max(list, value, avp, LIST_MAX)
}

fn push_max<T>(list: &mut Vec<T>, value: T, avp: &AvpRef<'_>, max: usize) -> R<()> {
    if list.len() >= max {
        return Err(DiameterError::avp(
            result::AVP_OCCURS_TOO_MANY_TIMES,
            avp,
            "AVP repeated too many times",
        ));
    }
    list.push(value);
    Ok(())
}

fn required<T>(slot: Option<T>, def: &d::AvpDef, reason: &'static str) -> R<T> {
    slot.ok_or_else(|| DiameterError::missing(def.code, def.vendor, reason))
}

// ---------------------------------------------------------------------------
// Capabilities exchange, watchdog, disconnect
// ---------------------------------------------------------------------------

/// A Vendor-Specific-Application-Id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VendorSpecificApplicationId {
    /// Vendor-Id values.
    pub vendor_ids: Vec<u32>,
    /// Auth-Application-Id, if any.
    pub auth_application_id: Option<u32>,
    /// Acct-Application-Id, if any.
    pub acct_application_id: Option<u32>,
}

/// What a peer says about itself in CER or CEA.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capabilities<'a> {
    /// Origin-Host.
    pub origin_host: &'a str,
    /// Origin-Realm.
    pub origin_realm: &'a str,
    /// Host-IP-Address values.
    pub host_ip_addresses: Vec<IpAddr>,
    /// Vendor-Id (0: none).
    pub vendor_id: u32,
    /// Product-Name.
    pub product_name: &'a str,
    /// Origin-State-Id.
    pub origin_state_id: Option<u32>,
    /// Supported-Vendor-Id values.
    pub supported_vendor_ids: Vec<u32>,
    /// Auth-Application-Id values.
    pub auth_application_ids: Vec<u32>,
    /// Acct-Application-Id values.
    pub acct_application_ids: Vec<u32>,
    /// Vendor-Specific-Application-Id values.
    pub vendor_specific_application_ids: Vec<VendorSpecificApplicationId>,
    /// Firmware-Revision.
    pub firmware_revision: Option<u32>,
}

impl Capabilities<'_> {
    /// True when the peer advertises `app` (as auth or acct, plain or
    /// vendor-specific) or the relay application.
    pub fn supports(&self, app: u32) -> bool {
        let listed = |ids: &[u32]| ids.iter().any(|a| *a == app || *a == APP_RELAY);
        listed(&self.auth_application_ids)
            || listed(&self.acct_application_ids)
            || self.vendor_specific_application_ids.iter().any(|v| {
                v.auth_application_id
                    .is_some_and(|a| a == app || a == APP_RELAY)
                    || v.acct_application_id
                        .is_some_and(|a| a == app || a == APP_RELAY)
            })
    }

    fn encode(&self, w: &mut AvpWriter<'_>) {
        w.str(&d::ORIGIN_HOST, self.origin_host);
        w.str(&d::ORIGIN_REALM, self.origin_realm);
        for a in &self.host_ip_addresses {
            w.address(&d::HOST_IP_ADDRESS, *a);
        }
        w.u32(&d::VENDOR_ID, self.vendor_id);
        w.str(&d::PRODUCT_NAME, self.product_name);
        if let Some(s) = self.origin_state_id {
            w.u32(&d::ORIGIN_STATE_ID, s);
        }
        for v in &self.supported_vendor_ids {
            w.u32(&d::SUPPORTED_VENDOR_ID, *v);
        }
        for a in &self.auth_application_ids {
            w.u32(&d::AUTH_APPLICATION_ID, *a);
        }
        for a in &self.acct_application_ids {
            w.u32(&d::ACCT_APPLICATION_ID, *a);
        }
        for v in &self.vendor_specific_application_ids {
            w.group(&d::VENDOR_SPECIFIC_APPLICATION_ID, |w| {
                for id in &v.vendor_ids {
                    w.u32(&d::VENDOR_ID, *id);
                }
                if let Some(a) = v.auth_application_id {
                    w.u32(&d::AUTH_APPLICATION_ID, a);
                }
                if let Some(a) = v.acct_application_id {
                    w.u32(&d::ACCT_APPLICATION_ID, a);
                }
            });
        }
        if let Some(f) = self.firmware_revision {
            w.u32(&d::FIRMWARE_REVISION, f);
        }
    }
}

/// Fields common to answers: Result-Code, Error-Message, Failed-AVP.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AnswerStatus<'a> {
    /// Result-Code.
    pub result_code: u32,
    /// Error-Message.
    pub error_message: Option<&'a str>,
    /// Failed-AVP (the first, if several).
    pub failed_avp: Option<FailedAvp>,
}

impl<'a> AnswerStatus<'a> {
    fn read(&mut self, avp: &AvpRef<'a>, seen: &mut Option<()>) -> R<bool> {
        if avp.is(&d::RESULT_CODE) {
            once(seen, (), avp)?;
            self.result_code = avp.u32()?;
        } else if avp.is(&d::ERROR_MESSAGE) {
            self.error_message = Some(avp.utf8()?);
        } else if avp.is(&d::FAILED_AVP) {
            if self.failed_avp.is_none() {
                if let Some(Ok(inner)) = avp.group().next() {
                    self.failed_avp = Some(FailedAvp::of(&inner));
                }
            }
        } else {
            return Ok(false);
        }
        Ok(true)
    }

    fn encode_tail(&self, w: &mut AvpWriter<'_>) {
        if let Some(m) = self.error_message {
            w.str(&d::ERROR_MESSAGE, m);
        }
        if let Some(f) = &self.failed_avp {
            encode_failed_avp(w, f);
        }
    }
}

fn encode_failed_avp(w: &mut AvpWriter<'_>, f: &FailedAvp) {
    w.group(&d::FAILED_AVP, |w| {
        w.raw(f.code, f.flags, f.vendor_id, &f.data)
    });
}

fn read_vsa(avp: &AvpRef<'_>) -> R<VendorSpecificApplicationId> {
    let mut v = VendorSpecificApplicationId::default();
    for m in avp.group() {
        let m = m?;
        if m.is(&d::VENDOR_ID) {
            push(&mut v.vendor_ids, m.u32()?, &m)?;
        } else if m.is(&d::AUTH_APPLICATION_ID) {
            once(&mut v.auth_application_id, m.u32()?, &m)?;
        } else if m.is(&d::ACCT_APPLICATION_ID) {
            once(&mut v.acct_application_id, m.u32()?, &m)?;
        } else {
            other(&m)?;
        }
    }
    Ok(v)
}

/// Reads the capabilities part of a CER/CEA; `status` gets the answer fields.
fn read_capabilities<'a>(
    msg: &'a [u8],
    mut status: Option<&mut AnswerStatus<'a>>,
) -> R<Capabilities<'a>> {
    let mut c = Capabilities::default();
    let (mut host, mut realm, mut vendor, mut product, mut result_seen) =
        (None, None, None, None, None);
    for avp in AvpIter::new(body(msg)) {
        let avp = avp?;
        if let Some(s) = status.as_deref_mut() {
            if s.read(&avp, &mut result_seen)? {
                continue;
            }
        }
        if avp.is(&d::ORIGIN_HOST) {
            once(&mut host, avp.utf8()?, &avp)?;
        } else if avp.is(&d::ORIGIN_REALM) {
            once(&mut realm, avp.utf8()?, &avp)?;
        } else if avp.is(&d::HOST_IP_ADDRESS) {
            push(&mut c.host_ip_addresses, avp.address()?, &avp)?;
        } else if avp.is(&d::VENDOR_ID) {
            once(&mut vendor, avp.u32()?, &avp)?;
        } else if avp.is(&d::PRODUCT_NAME) {
            once(&mut product, avp.utf8()?, &avp)?;
        } else if avp.is(&d::ORIGIN_STATE_ID) {
            once(&mut c.origin_state_id, avp.u32()?, &avp)?;
        } else if avp.is(&d::SUPPORTED_VENDOR_ID) {
            push(&mut c.supported_vendor_ids, avp.u32()?, &avp)?;
        } else if avp.is(&d::AUTH_APPLICATION_ID) {
            push(&mut c.auth_application_ids, avp.u32()?, &avp)?;
        } else if avp.is(&d::ACCT_APPLICATION_ID) {
            push(&mut c.acct_application_ids, avp.u32()?, &avp)?;
        } else if avp.is(&d::VENDOR_SPECIFIC_APPLICATION_ID) {
            push(
                &mut c.vendor_specific_application_ids,
                read_vsa(&avp)?,
                &avp,
            )?;
        } else if avp.is(&d::FIRMWARE_REVISION) {
            once(&mut c.firmware_revision, avp.u32()?, &avp)?;
        } else {
            other(&avp)?;
        }
    }
    c.origin_host = required(host, &d::ORIGIN_HOST, "Origin-Host missing")?;
    c.origin_realm = required(realm, &d::ORIGIN_REALM, "Origin-Realm missing")?;
    // Liberal: Host-IP-Address, Vendor-Id and Product-Name are required by
    // the RFC but not needed to serve a peer.
    c.vendor_id = vendor.unwrap_or(0);
    c.product_name = product.unwrap_or("");
    if status.is_some() && result_seen.is_none() {
        return Err(DiameterError::missing(
            d::RESULT_CODE.code,
            0,
            "Result-Code missing",
        ));
    }
    Ok(c)
}

fn request_header(
    code: u32,
    app: u32,
    proxiable: bool,
    hop_by_hop: u32,
    end_to_end: u32,
) -> Header {
    Header {
        length: 0,
        flags: FLAG_REQUEST | if proxiable { FLAG_PROXIABLE } else { 0 },
        code,
        application_id: app,
        hop_by_hop,
        end_to_end,
    }
}

fn answer_header(request: &Header, result_code: u32) -> Header {
    Header {
        length: 0,
        flags: (request.flags & FLAG_PROXIABLE)
            | if result::is_protocol_error(result_code) {
                FLAG_ERROR
            } else {
                0
            },
        code: request.code,
        application_id: request.application_id,
        hop_by_hop: request.hop_by_hop,
        end_to_end: request.end_to_end,
    }
}

/// Capabilities-Exchange-Request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cer<'a> {
    /// The sender's capabilities.
    pub capabilities: Capabilities<'a>,
}

impl<'a> Cer<'a> {
    /// Decodes a whole CER message.
    pub fn decode(msg: &'a [u8]) -> R<Cer<'a>> {
        Ok(Cer {
            capabilities: read_capabilities(msg, None)?,
        })
    }

    /// Appends the CER with these identifiers.
    pub fn encode(
        &self,
        dst: &mut BytesMut,
        hop_by_hop: u32,
        end_to_end: u32,
    ) -> Result<(), TooLarge> {
        let h = request_header(
            command::CAPABILITIES_EXCHANGE,
            APP_COMMON,
            false,
            hop_by_hop,
            end_to_end,
        );
        encode_message(dst, h, |w| self.capabilities.encode(w))
    }
}

/// Capabilities-Exchange-Answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cea<'a> {
    /// Result-Code, Error-Message, Failed-AVP.
    pub status: AnswerStatus<'a>,
    /// The answering peer's capabilities.
    pub capabilities: Capabilities<'a>,
}

impl<'a> Cea<'a> {
    /// Decodes a whole CEA message.
    pub fn decode(msg: &'a [u8]) -> R<Cea<'a>> {
        let mut status = AnswerStatus::default();
        let capabilities = read_capabilities(msg, Some(&mut status))?;
        Ok(Cea {
            status,
            capabilities,
        })
    }

    /// Appends the CEA answering `request`.
    pub fn encode(&self, dst: &mut BytesMut, request: &Header) -> Result<(), TooLarge> {
        encode_message(dst, answer_header(request, self.status.result_code), |w| {
            w.u32(&d::RESULT_CODE, self.status.result_code);
            self.capabilities.encode(w);
            self.status.encode_tail(w);
        })
    }
}

/// Origin-Host, Origin-Realm and Origin-State-Id: what DWR, DWA, DPR, DPA carry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Origin<'a> {
    /// Origin-Host.
    pub host: &'a str,
    /// Origin-Realm.
    pub realm: &'a str,
    /// Origin-State-Id.
    pub state_id: Option<u32>,
}

fn read_origin<'a>(
    msg: &'a [u8],
    mut status: Option<&mut AnswerStatus<'a>>,
    mut extra: impl FnMut(&AvpRef<'a>) -> R<bool>,
) -> R<Origin<'a>> {
    let (mut host, mut realm, mut state, mut result_seen) = (None, None, None, None);
    for avp in AvpIter::new(body(msg)) {
        let avp = avp?;
        if let Some(s) = status.as_deref_mut() {
            if s.read(&avp, &mut result_seen)? {
                continue;
            }
        }
        if avp.is(&d::ORIGIN_HOST) {
            once(&mut host, avp.utf8()?, &avp)?;
        } else if avp.is(&d::ORIGIN_REALM) {
            once(&mut realm, avp.utf8()?, &avp)?;
        } else if avp.is(&d::ORIGIN_STATE_ID) {
            once(&mut state, avp.u32()?, &avp)?;
        } else if !extra(&avp)? {
            other(&avp)?;
        }
    }
    if status.is_some() && result_seen.is_none() {
        return Err(DiameterError::missing(
            d::RESULT_CODE.code,
            0,
            "Result-Code missing",
        ));
    }
    Ok(Origin {
        host: required(host, &d::ORIGIN_HOST, "Origin-Host missing")?,
        realm: required(realm, &d::ORIGIN_REALM, "Origin-Realm missing")?,
        state_id: state,
    })
}

fn encode_origin(w: &mut AvpWriter<'_>, o: &Origin<'_>) {
    w.str(&d::ORIGIN_HOST, o.host);
    w.str(&d::ORIGIN_REALM, o.realm);
}

/// Device-Watchdog-Request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dwr<'a> {
    /// The sender.
    pub origin: Origin<'a>,
}

impl<'a> Dwr<'a> {
    /// Decodes a whole DWR message.
    pub fn decode(msg: &'a [u8]) -> R<Dwr<'a>> {
        Ok(Dwr {
            origin: read_origin(msg, None, |_| Ok(false))?,
        })
    }

    /// Appends the DWR with these identifiers.
    pub fn encode(
        &self,
        dst: &mut BytesMut,
        hop_by_hop: u32,
        end_to_end: u32,
    ) -> Result<(), TooLarge> {
        let h = request_header(
            command::DEVICE_WATCHDOG,
            APP_COMMON,
            false,
            hop_by_hop,
            end_to_end,
        );
        encode_message(dst, h, |w| {
            encode_origin(w, &self.origin);
            if let Some(s) = self.origin.state_id {
                w.u32(&d::ORIGIN_STATE_ID, s);
            }
        })
    }
}

/// Device-Watchdog-Answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dwa<'a> {
    /// Result-Code, Error-Message, Failed-AVP.
    pub status: AnswerStatus<'a>,
    /// The answering peer.
    pub origin: Origin<'a>,
}

impl<'a> Dwa<'a> {
    /// Decodes a whole DWA message.
    pub fn decode(msg: &'a [u8]) -> R<Dwa<'a>> {
        let mut status = AnswerStatus::default();
        let origin = read_origin(msg, Some(&mut status), |_| Ok(false))?;
        Ok(Dwa { status, origin })
    }

    /// Appends the DWA answering `request`.
    pub fn encode(&self, dst: &mut BytesMut, request: &Header) -> Result<(), TooLarge> {
        encode_message(dst, answer_header(request, self.status.result_code), |w| {
            w.u32(&d::RESULT_CODE, self.status.result_code);
            encode_origin(w, &self.origin);
            self.status.encode_tail(w);
            if let Some(s) = self.origin.state_id {
                w.u32(&d::ORIGIN_STATE_ID, s);
            }
        })
    }
}

/// Disconnect-Peer-Request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dpr<'a> {
    /// The sender.
    pub origin: Origin<'a>,
    /// Disconnect-Cause.
    pub disconnect_cause: u32,
}

impl<'a> Dpr<'a> {
    /// Decodes a whole DPR message.
    pub fn decode(msg: &'a [u8]) -> R<Dpr<'a>> {
        let mut cause = None;
        let origin = read_origin(msg, None, |avp| {
            if avp.is(&d::DISCONNECT_CAUSE) {
                once(&mut cause, avp.u32()?, avp)?;
                return Ok(true);
            }
            Ok(false)
        })?;
        Ok(Dpr {
            origin,
            disconnect_cause: required(cause, &d::DISCONNECT_CAUSE, "Disconnect-Cause missing")?,
        })
    }

    /// Appends the DPR with these identifiers.
    pub fn encode(
        &self,
        dst: &mut BytesMut,
        hop_by_hop: u32,
        end_to_end: u32,
    ) -> Result<(), TooLarge> {
        let h = request_header(
            command::DISCONNECT_PEER,
            APP_COMMON,
            false,
            hop_by_hop,
            end_to_end,
        );
        encode_message(dst, h, |w| {
            encode_origin(w, &self.origin);
            w.u32(&d::DISCONNECT_CAUSE, self.disconnect_cause);
        })
    }
}

/// Disconnect-Peer-Answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dpa<'a> {
    /// Result-Code, Error-Message, Failed-AVP.
    pub status: AnswerStatus<'a>,
    /// The answering peer.
    pub origin: Origin<'a>,
}

impl<'a> Dpa<'a> {
    /// Decodes a whole DPA message.
    pub fn decode(msg: &'a [u8]) -> R<Dpa<'a>> {
        let mut status = AnswerStatus::default();
        let origin = read_origin(msg, Some(&mut status), |_| Ok(false))?;
        Ok(Dpa { status, origin })
    }

    /// Appends the DPA answering `request`.
    pub fn encode(&self, dst: &mut BytesMut, request: &Header) -> Result<(), TooLarge> {
        encode_message(dst, answer_header(request, self.status.result_code), |w| {
            w.u32(&d::RESULT_CODE, self.status.result_code);
            encode_origin(w, &self.origin);
            self.status.encode_tail(w);
        })
    }
}

// ---------------------------------------------------------------------------
// Credit control
// ---------------------------------------------------------------------------

/// An amount of money: Value-Digits × 10^Exponent in a currency.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Money {
    /// Value-Digits.
    pub value_digits: i64,
    /// Exponent (0 when absent).
    pub exponent: i32,
    /// Currency-Code (ISO 4217 numeric), if given.
    pub currency_code: Option<u32>,
}

/// Units in a Requested-, Granted- or Used-Service-Unit.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceUnits {
    /// CC-Time, seconds.
    pub time: Option<u32>,
    /// CC-Money.
    pub money: Option<Money>,
    /// CC-Total-Octets.
    pub total_octets: Option<u64>,
    /// CC-Input-Octets.
    pub input_octets: Option<u64>,
    /// CC-Output-Octets.
    pub output_octets: Option<u64>,
    /// CC-Service-Specific-Units.
    pub service_specific_units: Option<u64>,
}

impl ServiceUnits {
    /// True when no unit is given (a request for the default quota).
    pub fn is_empty(&self) -> bool {
        *self == ServiceUnits::default()
    }
}

/// A Used-Service-Unit: the units and why they are reported.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct UsedUnits {
    /// The units used.
    pub units: ServiceUnits,
    /// Tariff-Change-Usage.
    pub tariff_change_usage: Option<u32>,
    /// 3GPP Reporting-Reason.
    pub reporting_reason: Option<u32>,
}

/// The Unit-Value inside CC-Money or Cost-Information.
fn read_unit_value(avp: &AvpRef<'_>) -> R<(i64, i32)> {
    let (mut digits, mut exponent) = (None, None);
    for m in avp.group() {
        let m = m?;
        if m.is(&d::VALUE_DIGITS) {
            once(&mut digits, m.i64()?, &m)?;
        } else if m.is(&d::EXPONENT) {
            once(&mut exponent, m.i32()?, &m)?;
        } else {
            other(&m)?;
        }
    }
    Ok((
        required(digits, &d::VALUE_DIGITS, "Value-Digits missing")?,
        exponent.unwrap_or(0),
    ))
}

fn read_money(avp: &AvpRef<'_>) -> R<Money> {
    let (mut value, mut currency) = (None, None);
    for m in avp.group() {
        let m = m?;
        if m.is(&d::UNIT_VALUE) {
            once(&mut value, read_unit_value(&m)?, &m)?;
        } else if m.is(&d::CURRENCY_CODE) {
            once(&mut currency, m.u32()?, &m)?;
        } else {
            other(&m)?;
        }
    }
    let (value_digits, exponent) = required(value, &d::UNIT_VALUE, "Unit-Value missing")?;
    Ok(Money {
        value_digits,
        exponent,
        currency_code: currency,
    })
}

fn read_units(avp: &AvpRef<'_>, used: Option<&mut UsedUnits>) -> R<ServiceUnits> {
    let mut u = ServiceUnits::default();
    let mut used = used;
    for m in avp.group() {
        let m = m?;
        if m.is(&d::CC_TIME) {
            once(&mut u.time, m.u32()?, &m)?;
        } else if m.is(&d::CC_MONEY) {
            once(&mut u.money, read_money(&m)?, &m)?;
        } else if m.is(&d::CC_TOTAL_OCTETS) {
            once(&mut u.total_octets, m.u64()?, &m)?;
        } else if m.is(&d::CC_INPUT_OCTETS) {
            once(&mut u.input_octets, m.u64()?, &m)?;
        } else if m.is(&d::CC_OUTPUT_OCTETS) {
            once(&mut u.output_octets, m.u64()?, &m)?;
        } else if m.is(&d::CC_SERVICE_SPECIFIC_UNITS) {
            once(&mut u.service_specific_units, m.u64()?, &m)?;
        } else if let (true, Some(us)) = (m.is(&d::TARIFF_CHANGE_USAGE), used.as_deref_mut()) {
            once(&mut us.tariff_change_usage, m.u32()?, &m)?;
        } else if let (true, Some(us)) = (m.is(&d::REPORTING_REASON), used.as_deref_mut()) {
            once(&mut us.reporting_reason, m.u32()?, &m)?;
        } else {
            other(&m)?;
        }
    }
    Ok(u)
}

fn read_used(avp: &AvpRef<'_>) -> R<UsedUnits> {
    let mut used = UsedUnits::default();
    used.units = read_units(avp, Some(&mut used))?;
    Ok(used)
}

fn encode_money(w: &mut AvpWriter<'_>, def: &d::AvpDef, m: &Money) {
    w.group(def, |w| {
        w.group(&d::UNIT_VALUE, |w| {
            w.i64(&d::VALUE_DIGITS, m.value_digits);
            if m.exponent != 0 {
                w.i32(&d::EXPONENT, m.exponent);
            }
        });
        if let Some(c) = m.currency_code {
            w.u32(&d::CURRENCY_CODE, c);
        }
    });
}

fn encode_units_members(w: &mut AvpWriter<'_>, u: &ServiceUnits) {
    if let Some(t) = u.time {
        w.u32(&d::CC_TIME, t);
    }
    if let Some(m) = &u.money {
        encode_money(w, &d::CC_MONEY, m);
    }
    if let Some(v) = u.total_octets {
        w.u64(&d::CC_TOTAL_OCTETS, v);
    }
    if let Some(v) = u.input_octets {
        w.u64(&d::CC_INPUT_OCTETS, v);
    }
    if let Some(v) = u.output_octets {
        w.u64(&d::CC_OUTPUT_OCTETS, v);
    }
    if let Some(v) = u.service_specific_units {
        w.u64(&d::CC_SERVICE_SPECIFIC_UNITS, v);
    }
}

fn encode_used(w: &mut AvpWriter<'_>, u: &UsedUnits) {
    w.group(&d::USED_SERVICE_UNIT, |w| {
        if let Some(t) = u.tariff_change_usage {
            w.u32(&d::TARIFF_CHANGE_USAGE, t);
        }
        encode_units_members(w, &u.units);
        if let Some(r) = u.reporting_reason {
            w.u32(&d::REPORTING_REASON, r);
        }
    });
}

/// A Final-Unit-Indication.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FinalUnitIndication<'a> {
    /// Final-Unit-Action.
    pub action: u32,
    /// Redirect-Server: (Redirect-Address-Type, Redirect-Server-Address).
    pub redirect: Option<(u32, &'a str)>,
    /// Filter-Id values.
    pub filter_ids: Vec<&'a str>,
}

fn read_fui<'a>(avp: &AvpRef<'a>) -> R<FinalUnitIndication<'a>> {
    let (mut action, mut redirect) = (None, None);
    let mut filter_ids = Vec::new();
    for m in avp.group() {
        let m = m?;
        if m.is(&d::FINAL_UNIT_ACTION) {
            once(&mut action, m.u32()?, &m)?;
        } else if m.is(&d::REDIRECT_SERVER) {
            let (mut kind, mut address) = (None, None);
            for r in m.group() {
                let r = r?;
                if r.is(&d::REDIRECT_ADDRESS_TYPE) {
                    once(&mut kind, r.u32()?, &r)?;
                } else if r.is(&d::REDIRECT_SERVER_ADDRESS) {
                    once(&mut address, r.utf8()?, &r)?;
                } else {
                    other(&r)?;
                }
            }
            let pair = (
                required(
                    kind,
                    &d::REDIRECT_ADDRESS_TYPE,
                    "Redirect-Address-Type missing",
                )?,
                required(
                    address,
                    &d::REDIRECT_SERVER_ADDRESS,
                    "Redirect-Server-Address missing",
                )?,
            );
            once(&mut redirect, pair, &m)?;
        } else if m.is(&d::FILTER_ID) {
            push(&mut filter_ids, m.utf8()?, &m)?;
        } else {
            other(&m)?;
        }
    }
    Ok(FinalUnitIndication {
        action: required(action, &d::FINAL_UNIT_ACTION, "Final-Unit-Action missing")?,
        redirect,
        filter_ids,
    })
}

fn encode_fui(w: &mut AvpWriter<'_>, f: &FinalUnitIndication<'_>) {
    w.group(&d::FINAL_UNIT_INDICATION, |w| {
        w.u32(&d::FINAL_UNIT_ACTION, f.action);
        for id in &f.filter_ids {
            w.str(&d::FILTER_ID, id);
        }
        if let Some((kind, address)) = f.redirect {
            w.group(&d::REDIRECT_SERVER, |w| {
                w.u32(&d::REDIRECT_ADDRESS_TYPE, kind);
                w.str(&d::REDIRECT_SERVER_ADDRESS, address);
            });
        }
    });
}

/// One Multiple-Services-Credit-Control, in a CCR or a CCA.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mscc<'a> {
    /// Requested-Service-Unit (present but empty: the default quota).
    pub requested: Option<ServiceUnits>,
    /// Used-Service-Unit values.
    pub used: Vec<UsedUnits>,
    /// Granted-Service-Unit (answers).
    pub granted: Option<ServiceUnits>,
    /// Service-Identifier values.
    pub service_identifiers: Vec<u32>,
    /// Rating-Group.
    pub rating_group: Option<u32>,
    /// Validity-Time (answers).
    pub validity_time: Option<u32>,
    /// Result-Code (answers).
    pub result_code: Option<u32>,
    /// Final-Unit-Indication (answers).
    pub final_unit_indication: Option<FinalUnitIndication<'a>>,
    /// 3GPP Reporting-Reason values at MSCC level.
    pub reporting_reasons: Vec<u32>,
    /// 3GPP Time-Quota-Threshold.
    pub time_quota_threshold: Option<u32>,
    /// 3GPP Volume-Quota-Threshold.
    pub volume_quota_threshold: Option<u32>,
    /// 3GPP Unit-Quota-Threshold.
    pub unit_quota_threshold: Option<u32>,
    /// 3GPP Quota-Holding-Time.
    pub quota_holding_time: Option<u32>,
}

fn read_mscc<'a>(avp: &AvpRef<'a>) -> R<Mscc<'a>> {
    let mut s = Mscc::default();
    for m in avp.group() {
        let m = m?;
        if m.is(&d::REQUESTED_SERVICE_UNIT) {
            once(&mut s.requested, read_units(&m, None)?, &m)?;
        } else if m.is(&d::USED_SERVICE_UNIT) {
            push_max(&mut s.used, read_used(&m)?, &m, USED_MAX)?;
        } else if m.is(&d::GRANTED_SERVICE_UNIT) {
            once(&mut s.granted, read_units(&m, None)?, &m)?;
        } else if m.is(&d::SERVICE_IDENTIFIER) {
            push(&mut s.service_identifiers, m.u32()?, &m)?;
        } else if m.is(&d::RATING_GROUP) {
            once(&mut s.rating_group, m.u32()?, &m)?;
        } else if m.is(&d::VALIDITY_TIME) {
            once(&mut s.validity_time, m.u32()?, &m)?;
        } else if m.is(&d::RESULT_CODE) {
            once(&mut s.result_code, m.u32()?, &m)?;
        } else if m.is(&d::FINAL_UNIT_INDICATION) {
            once(&mut s.final_unit_indication, read_fui(&m)?, &m)?;
        } else if m.is(&d::REPORTING_REASON) {
            push(&mut s.reporting_reasons, m.u32()?, &m)?;
        } else if m.is(&d::TIME_QUOTA_THRESHOLD) {
            once(&mut s.time_quota_threshold, m.u32()?, &m)?;
        } else if m.is(&d::VOLUME_QUOTA_THRESHOLD) {
            once(&mut s.volume_quota_threshold, m.u32()?, &m)?;
        } else if m.is(&d::UNIT_QUOTA_THRESHOLD) {
            once(&mut s.unit_quota_threshold, m.u32()?, &m)?;
        } else if m.is(&d::QUOTA_HOLDING_TIME) {
            once(&mut s.quota_holding_time, m.u32()?, &m)?;
        } else {
            other(&m)?;
        }
    }
    Ok(s)
}

fn encode_mscc(w: &mut AvpWriter<'_>, s: &Mscc<'_>) {
    w.group(&d::MULTIPLE_SERVICES_CREDIT_CONTROL, |w| {
        if let Some(g) = &s.granted {
            w.group(&d::GRANTED_SERVICE_UNIT, |w| encode_units_members(w, g));
        }
        if let Some(r) = &s.requested {
            w.group(&d::REQUESTED_SERVICE_UNIT, |w| encode_units_members(w, r));
        }
        for u in &s.used {
            encode_used(w, u);
        }
        for id in &s.service_identifiers {
            w.u32(&d::SERVICE_IDENTIFIER, *id);
        }
        if let Some(rg) = s.rating_group {
            w.u32(&d::RATING_GROUP, rg);
        }
        if let Some(v) = s.validity_time {
            w.u32(&d::VALIDITY_TIME, v);
        }
        if let Some(r) = s.result_code {
            w.u32(&d::RESULT_CODE, r);
        }
        if let Some(f) = &s.final_unit_indication {
            encode_fui(w, f);
        }
        if let Some(v) = s.time_quota_threshold {
            w.u32(&d::TIME_QUOTA_THRESHOLD, v);
        }
        if let Some(v) = s.volume_quota_threshold {
            w.u32(&d::VOLUME_QUOTA_THRESHOLD, v);
        }
        if let Some(v) = s.unit_quota_threshold {
            w.u32(&d::UNIT_QUOTA_THRESHOLD, v);
        }
        if let Some(v) = s.quota_holding_time {
            w.u32(&d::QUOTA_HOLDING_TIME, v);
        }
        for r in &s.reporting_reasons {
            w.u32(&d::REPORTING_REASON, *r);
        }
    });
}

/// A Subscription-Id: who uses the service.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct SubscriptionId<'a> {
    /// Subscription-Id-Type (E.164, IMSI, SIP URI, NAI, private).
    pub kind: u32,
    /// Subscription-Id-Data.
    pub data: &'a str,
}

fn read_subscription_id<'a>(avp: &AvpRef<'a>) -> R<SubscriptionId<'a>> {
    let (mut kind, mut data) = (None, None);
    for m in avp.group() {
        let m = m?;
        if m.is(&d::SUBSCRIPTION_ID_TYPE) {
            once(&mut kind, m.u32()?, &m)?;
        } else if m.is(&d::SUBSCRIPTION_ID_DATA) {
            once(&mut data, m.utf8()?, &m)?;
        } else {
            other(&m)?;
        }
    }
    Ok(SubscriptionId {
        kind: required(
            kind,
            &d::SUBSCRIPTION_ID_TYPE,
            "Subscription-Id-Type missing",
        )?,
        data: required(
            data,
            &d::SUBSCRIPTION_ID_DATA,
            "Subscription-Id-Data missing",
        )?,
    })
}

/// Credit-Control-Request (RFC 4006 3.1, 3GPP TS 32.299 6.4.2).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ccr<'a> {
    /// Session-Id.
    pub session_id: &'a str,
    /// Origin-Host.
    pub origin_host: &'a str,
    /// Origin-Realm.
    pub origin_realm: &'a str,
    /// Destination-Realm (empty when absent).
    pub destination_realm: &'a str,
    /// Destination-Host.
    pub destination_host: Option<&'a str>,
    /// Auth-Application-Id (4 when absent).
    pub auth_application_id: u32,
    /// Service-Context-Id (e.g. `32251@3gpp.org` for PS charging).
    pub service_context_id: Option<&'a str>,
    /// CC-Request-Type (1 INITIAL .. 4 EVENT).
    pub request_type: u32,
    /// CC-Request-Number.
    pub request_number: u32,
    /// User-Name.
    pub user_name: Option<&'a str>,
    /// Origin-State-Id.
    pub origin_state_id: Option<u32>,
    /// Event-Timestamp (seconds since 1900).
    pub event_timestamp: Option<u32>,
    /// Subscription-Id values.
    pub subscription_ids: Vec<SubscriptionId<'a>>,
    /// Termination-Cause.
    pub termination_cause: Option<u32>,
    /// Requested-Action (EVENT requests).
    pub requested_action: Option<u32>,
    /// Multiple-Services-Indicator.
    pub multiple_services_indicator: Option<u32>,
    /// Multiple-Services-Credit-Control values.
    pub mscc: Vec<Mscc<'a>>,
    /// Top-level Requested-Service-Unit (single-service requests).
    pub requested: Option<ServiceUnits>,
    /// Top-level Used-Service-Unit values.
    pub used: Vec<UsedUnits>,
    /// Top-level Service-Identifier.
    pub service_identifier: Option<u32>,
    /// Proxy-Info AVPs' data, echoed in the answer.
    pub proxy_infos: Vec<&'a [u8]>,
}

impl<'a> Ccr<'a> {
    /// Decodes a whole CCR message.
    pub fn decode(msg: &'a [u8]) -> R<Ccr<'a>> {
        let mut c = Ccr {
            auth_application_id: APP_CREDIT_CONTROL,
            ..Ccr::default()
        };
        let (mut sid, mut host, mut realm, mut dest_realm, mut app, mut rtype, mut rnum) =
            (None, None, None, None, None, None, None);
        for avp in AvpIter::new(body(msg)) {
            let avp = avp?;
            if avp.is(&d::SESSION_ID) {
                once(&mut sid, avp.utf8()?, &avp)?;
            } else if avp.is(&d::ORIGIN_HOST) {
                once(&mut host, avp.utf8()?, &avp)?;
            } else if avp.is(&d::ORIGIN_REALM) {
                once(&mut realm, avp.utf8()?, &avp)?;
            } else if avp.is(&d::DESTINATION_REALM) {
                once(&mut dest_realm, avp.utf8()?, &avp)?;
            } else if avp.is(&d::DESTINATION_HOST) {
                once(&mut c.destination_host, avp.utf8()?, &avp)?;
            } else if avp.is(&d::AUTH_APPLICATION_ID) {
                once(&mut app, avp.u32()?, &avp)?;
            } else if avp.is(&d::SERVICE_CONTEXT_ID) {
                once(&mut c.service_context_id, avp.utf8()?, &avp)?;
            } else if avp.is(&d::CC_REQUEST_TYPE) {
                let t = avp.u32()?;
                if !(cc_request_type::INITIAL..=cc_request_type::EVENT).contains(&t) {
                    return Err(DiameterError::avp(
                        result::INVALID_AVP_VALUE,
                        &avp,
                        "CC-Request-Type must be 1 to 4",
                    ));
                }
                once(&mut rtype, t, &avp)?;
            } else if avp.is(&d::CC_REQUEST_NUMBER) {
                once(&mut rnum, avp.u32()?, &avp)?;
            } else if avp.is(&d::USER_NAME) {
                once(&mut c.user_name, avp.utf8()?, &avp)?;
            } else if avp.is(&d::ORIGIN_STATE_ID) {
                once(&mut c.origin_state_id, avp.u32()?, &avp)?;
            } else if avp.is(&d::EVENT_TIMESTAMP) {
                once(&mut c.event_timestamp, avp.u32()?, &avp)?;
            } else if avp.is(&d::SUBSCRIPTION_ID) {
                push(&mut c.subscription_ids, read_subscription_id(&avp)?, &avp)?;
            } else if avp.is(&d::TERMINATION_CAUSE) {
                once(&mut c.termination_cause, avp.u32()?, &avp)?;
            } else if avp.is(&d::REQUESTED_ACTION) {
                let a = avp.u32()?;
                if a > d::requested_action::PRICE_ENQUIRY {
                    return Err(DiameterError::avp(
                        result::INVALID_AVP_VALUE,
                        &avp,
                        "Requested-Action must be 0 to 3",
                    ));
                }
                once(&mut c.requested_action, a, &avp)?;
            } else if avp.is(&d::MULTIPLE_SERVICES_INDICATOR) {
                once(&mut c.multiple_services_indicator, avp.u32()?, &avp)?;
            } else if avp.is(&d::MULTIPLE_SERVICES_CREDIT_CONTROL) {
                push_max(&mut c.mscc, read_mscc(&avp)?, &avp, MSCC_MAX)?;
            } else if avp.is(&d::REQUESTED_SERVICE_UNIT) {
                once(&mut c.requested, read_units(&avp, None)?, &avp)?;
            } else if avp.is(&d::USED_SERVICE_UNIT) {
                push_max(&mut c.used, read_used(&avp)?, &avp, USED_MAX)?;
            } else if avp.is(&d::SERVICE_IDENTIFIER) {
                once(&mut c.service_identifier, avp.u32()?, &avp)?;
            } else if avp.is(&d::PROXY_INFO) {
                push(&mut c.proxy_infos, avp.data, &avp)?;
            } else {
                other(&avp)?;
            }
        }
        c.session_id = required(sid, &d::SESSION_ID, "Session-Id missing")?;
        c.origin_host = required(host, &d::ORIGIN_HOST, "Origin-Host missing")?;
        c.origin_realm = required(realm, &d::ORIGIN_REALM, "Origin-Realm missing")?;
        c.request_type = required(rtype, &d::CC_REQUEST_TYPE, "CC-Request-Type missing")?;
        c.request_number = required(rnum, &d::CC_REQUEST_NUMBER, "CC-Request-Number missing")?;
        c.destination_realm = dest_realm.unwrap_or("");
        c.auth_application_id = app.unwrap_or(APP_CREDIT_CONTROL);
        Ok(c)
    }

    /// Appends the CCR with these identifiers.
    pub fn encode(
        &self,
        dst: &mut BytesMut,
        hop_by_hop: u32,
        end_to_end: u32,
    ) -> Result<(), TooLarge> {
        let h = request_header(
            command::CREDIT_CONTROL,
            APP_CREDIT_CONTROL,
            true,
            hop_by_hop,
            end_to_end,
        );
        encode_message(dst, h, |w| {
            w.str(&d::SESSION_ID, self.session_id);
            w.str(&d::ORIGIN_HOST, self.origin_host);
            w.str(&d::ORIGIN_REALM, self.origin_realm);
            w.str(&d::DESTINATION_REALM, self.destination_realm);
            w.u32(&d::AUTH_APPLICATION_ID, self.auth_application_id);
            if let Some(s) = self.service_context_id {
                w.str(&d::SERVICE_CONTEXT_ID, s);
            }
            w.u32(&d::CC_REQUEST_TYPE, self.request_type);
            w.u32(&d::CC_REQUEST_NUMBER, self.request_number);
            if let Some(h) = self.destination_host {
                w.str(&d::DESTINATION_HOST, h);
            }
            if let Some(u) = self.user_name {
                w.str(&d::USER_NAME, u);
            }
            if let Some(s) = self.origin_state_id {
                w.u32(&d::ORIGIN_STATE_ID, s);
            }
            if let Some(t) = self.event_timestamp {
                w.u32(&d::EVENT_TIMESTAMP, t);
            }
            for s in &self.subscription_ids {
                w.group(&d::SUBSCRIPTION_ID, |w| {
                    w.u32(&d::SUBSCRIPTION_ID_TYPE, s.kind);
                    w.str(&d::SUBSCRIPTION_ID_DATA, s.data);
                });
            }
            if let Some(t) = self.termination_cause {
                w.u32(&d::TERMINATION_CAUSE, t);
            }
            if let Some(r) = &self.requested {
                w.group(&d::REQUESTED_SERVICE_UNIT, |w| encode_units_members(w, r));
            }
            if let Some(a) = self.requested_action {
                w.u32(&d::REQUESTED_ACTION, a);
            }
            for u in &self.used {
                encode_used(w, u);
            }
            if let Some(s) = self.service_identifier {
                w.u32(&d::SERVICE_IDENTIFIER, s);
            }
            if let Some(m) = self.multiple_services_indicator {
                w.u32(&d::MULTIPLE_SERVICES_INDICATOR, m);
            }
            for m in &self.mscc {
                encode_mscc(w, m);
            }
            for p in &self.proxy_infos {
                w.bytes(&d::PROXY_INFO, p);
            }
        })
    }
}

/// A Cost-Information (PRICE_ENQUIRY answers).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CostInformation<'a> {
    /// Value-Digits.
    pub value_digits: i64,
    /// Exponent.
    pub exponent: i32,
    /// Currency-Code (ISO 4217 numeric).
    pub currency_code: u32,
    /// Cost-Unit (e.g. `credits` when the charge is not in a currency).
    pub cost_unit: Option<&'a str>,
}

/// Credit-Control-Answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cca<'a> {
    /// Session-Id.
    pub session_id: &'a str,
    /// Result-Code, Error-Message, Failed-AVP.
    pub status: AnswerStatus<'a>,
    /// Origin-Host.
    pub origin_host: &'a str,
    /// Origin-Realm.
    pub origin_realm: &'a str,
    /// Auth-Application-Id.
    pub auth_application_id: u32,
    /// CC-Request-Type.
    pub request_type: u32,
    /// CC-Request-Number.
    pub request_number: u32,
    /// Origin-State-Id.
    pub origin_state_id: Option<u32>,
    /// Top-level Granted-Service-Unit (single-service answers).
    pub granted: Option<ServiceUnits>,
    /// Multiple-Services-Credit-Control values.
    pub mscc: Vec<Mscc<'a>>,
    /// Cost-Information.
    pub cost_information: Option<CostInformation<'a>>,
    /// Top-level Final-Unit-Indication.
    pub final_unit_indication: Option<FinalUnitIndication<'a>>,
    /// Check-Balance-Result.
    pub check_balance_result: Option<u32>,
    /// Top-level Validity-Time.
    pub validity_time: Option<u32>,
    /// Proxy-Info AVPs' data, echoed from the request.
    pub proxy_infos: Vec<&'a [u8]>,
}

impl<'a> Cca<'a> {
    /// Decodes a whole CCA message.
    pub fn decode(msg: &'a [u8]) -> R<Cca<'a>> {
        let mut c = Cca::default();
        let (mut sid, mut host, mut realm, mut rtype, mut rnum, mut app, mut result_seen) =
            (None, None, None, None, None, None, None);
        for avp in AvpIter::new(body(msg)) {
            let avp = avp?;
            if c.status.read(&avp, &mut result_seen)? {
                continue;
            }
            if avp.is(&d::SESSION_ID) {
                once(&mut sid, avp.utf8()?, &avp)?;
            } else if avp.is(&d::ORIGIN_HOST) {
                once(&mut host, avp.utf8()?, &avp)?;
            } else if avp.is(&d::ORIGIN_REALM) {
                once(&mut realm, avp.utf8()?, &avp)?;
            } else if avp.is(&d::AUTH_APPLICATION_ID) {
                once(&mut app, avp.u32()?, &avp)?;
            } else if avp.is(&d::CC_REQUEST_TYPE) {
                once(&mut rtype, avp.u32()?, &avp)?;
            } else if avp.is(&d::CC_REQUEST_NUMBER) {
                once(&mut rnum, avp.u32()?, &avp)?;
            } else if avp.is(&d::ORIGIN_STATE_ID) {
                once(&mut c.origin_state_id, avp.u32()?, &avp)?;
            } else if avp.is(&d::GRANTED_SERVICE_UNIT) {
                once(&mut c.granted, read_units(&avp, None)?, &avp)?;
            } else if avp.is(&d::MULTIPLE_SERVICES_CREDIT_CONTROL) {
                push_max(&mut c.mscc, read_mscc(&avp)?, &avp, MSCC_MAX)?;
            } else if avp.is(&d::COST_INFORMATION) {
                let (mut value, mut currency, mut unit) = (None, None, None);
                for m in avp.group() {
                    let m = m?;
                    if m.is(&d::UNIT_VALUE) {
                        once(&mut value, read_unit_value(&m)?, &m)?;
                    } else if m.is(&d::CURRENCY_CODE) {
                        once(&mut currency, m.u32()?, &m)?;
                    } else if m.is(&d::COST_UNIT) {
                        once(&mut unit, m.utf8()?, &m)?;
                    } else {
                        other(&m)?;
                    }
                }
                let (value_digits, exponent) =
                    required(value, &d::UNIT_VALUE, "Unit-Value missing")?;
                let info = CostInformation {
                    value_digits,
                    exponent,
                    currency_code: required(currency, &d::CURRENCY_CODE, "Currency-Code missing")?,
                    cost_unit: unit,
                };
                once(&mut c.cost_information, info, &avp)?;
            } else if avp.is(&d::FINAL_UNIT_INDICATION) {
                once(&mut c.final_unit_indication, read_fui(&avp)?, &avp)?;
            } else if avp.is(&d::CHECK_BALANCE_RESULT) {
                once(&mut c.check_balance_result, avp.u32()?, &avp)?;
            } else if avp.is(&d::VALIDITY_TIME) {
                once(&mut c.validity_time, avp.u32()?, &avp)?;
            } else if avp.is(&d::PROXY_INFO) {
                push(&mut c.proxy_infos, avp.data, &avp)?;
            } else {
                other(&avp)?;
            }
        }
        if result_seen.is_none() {
            return Err(DiameterError::missing(
                d::RESULT_CODE.code,
                0,
                "Result-Code missing",
            ));
        }
        c.session_id = required(sid, &d::SESSION_ID, "Session-Id missing")?;
        c.origin_host = required(host, &d::ORIGIN_HOST, "Origin-Host missing")?;
        c.origin_realm = required(realm, &d::ORIGIN_REALM, "Origin-Realm missing")?;
        c.request_type = required(rtype, &d::CC_REQUEST_TYPE, "CC-Request-Type missing")?;
        c.request_number = required(rnum, &d::CC_REQUEST_NUMBER, "CC-Request-Number missing")?;
        c.auth_application_id = app.unwrap_or(APP_CREDIT_CONTROL);
        Ok(c)
    }

    /// Appends the CCA answering `request`.
    pub fn encode(&self, dst: &mut BytesMut, request: &Header) -> Result<(), TooLarge> {
        encode_message(dst, answer_header(request, self.status.result_code), |w| {
            w.str(&d::SESSION_ID, self.session_id);
            w.u32(&d::RESULT_CODE, self.status.result_code);
            w.str(&d::ORIGIN_HOST, self.origin_host);
            w.str(&d::ORIGIN_REALM, self.origin_realm);
            w.u32(&d::AUTH_APPLICATION_ID, self.auth_application_id);
            w.u32(&d::CC_REQUEST_TYPE, self.request_type);
            w.u32(&d::CC_REQUEST_NUMBER, self.request_number);
            if let Some(s) = self.origin_state_id {
                w.u32(&d::ORIGIN_STATE_ID, s);
            }
            if let Some(g) = &self.granted {
                w.group(&d::GRANTED_SERVICE_UNIT, |w| encode_units_members(w, g));
            }
            for m in &self.mscc {
                encode_mscc(w, m);
            }
            if let Some(ci) = &self.cost_information {
                w.group(&d::COST_INFORMATION, |w| {
                    w.group(&d::UNIT_VALUE, |w| {
                        w.i64(&d::VALUE_DIGITS, ci.value_digits);
                        if ci.exponent != 0 {
                            w.i32(&d::EXPONENT, ci.exponent);
                        }
                    });
                    w.u32(&d::CURRENCY_CODE, ci.currency_code);
                    if let Some(u) = ci.cost_unit {
                        w.str(&d::COST_UNIT, u);
                    }
                });
            }
            if let Some(f) = &self.final_unit_indication {
                encode_fui(w, f);
            }
            if let Some(c) = self.check_balance_result {
                w.u32(&d::CHECK_BALANCE_RESULT, c);
            }
            if let Some(v) = self.validity_time {
                w.u32(&d::VALIDITY_TIME, v);
            }
            self.status.encode_tail(w);
            for p in &self.proxy_infos {
                w.bytes(&d::PROXY_INFO, p);
            }
        })
    }
}

// ---------------------------------------------------------------------------
// Server-initiated: Re-Auth and Abort-Session
// ---------------------------------------------------------------------------

/// Session-Id, origin and destination: what RAR and ASR carry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionRequest<'a> {
    /// Session-Id.
    pub session_id: &'a str,
    /// Origin-Host.
    pub origin_host: &'a str,
    /// Origin-Realm.
    pub origin_realm: &'a str,
    /// Destination-Realm.
    pub destination_realm: &'a str,
    /// Destination-Host.
    pub destination_host: &'a str,
    /// Auth-Application-Id.
    pub auth_application_id: u32,
}

fn read_session_request<'a>(
    msg: &'a [u8],
    mut extra: impl FnMut(&AvpRef<'a>) -> R<bool>,
) -> R<SessionRequest<'a>> {
    let (mut sid, mut host, mut realm, mut dr, mut dh, mut app) =
        (None, None, None, None, None, None);
    for avp in AvpIter::new(body(msg)) {
        let avp = avp?;
        if avp.is(&d::SESSION_ID) {
            once(&mut sid, avp.utf8()?, &avp)?;
        } else if avp.is(&d::ORIGIN_HOST) {
            once(&mut host, avp.utf8()?, &avp)?;
        } else if avp.is(&d::ORIGIN_REALM) {
            once(&mut realm, avp.utf8()?, &avp)?;
        } else if avp.is(&d::DESTINATION_REALM) {
            once(&mut dr, avp.utf8()?, &avp)?;
        } else if avp.is(&d::DESTINATION_HOST) {
            once(&mut dh, avp.utf8()?, &avp)?;
        } else if avp.is(&d::AUTH_APPLICATION_ID) {
            once(&mut app, avp.u32()?, &avp)?;
        } else if !extra(&avp)? {
            other(&avp)?;
        }
    }
    Ok(SessionRequest {
        session_id: required(sid, &d::SESSION_ID, "Session-Id missing")?,
        origin_host: required(host, &d::ORIGIN_HOST, "Origin-Host missing")?,
        origin_realm: required(realm, &d::ORIGIN_REALM, "Origin-Realm missing")?,
        destination_realm: required(dr, &d::DESTINATION_REALM, "Destination-Realm missing")?,
        destination_host: required(dh, &d::DESTINATION_HOST, "Destination-Host missing")?,
        auth_application_id: required(app, &d::AUTH_APPLICATION_ID, "Auth-Application-Id missing")?,
    })
}

fn encode_session_request(w: &mut AvpWriter<'_>, s: &SessionRequest<'_>) {
    w.str(&d::SESSION_ID, s.session_id);
    w.str(&d::ORIGIN_HOST, s.origin_host);
    w.str(&d::ORIGIN_REALM, s.origin_realm);
    w.str(&d::DESTINATION_REALM, s.destination_realm);
    w.str(&d::DESTINATION_HOST, s.destination_host);
    w.u32(&d::AUTH_APPLICATION_ID, s.auth_application_id);
}

/// Re-Auth-Request: asks the client to re-authorise (send a CCR-U).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rar<'a> {
    /// Session and addressing.
    pub session: SessionRequest<'a>,
    /// Re-Auth-Request-Type.
    pub re_auth_request_type: u32,
    /// Rating-Group to re-authorise (absent: all).
    pub rating_group: Option<u32>,
}

impl<'a> Rar<'a> {
    /// Decodes a whole RAR message.
    pub fn decode(msg: &'a [u8]) -> R<Rar<'a>> {
        let (mut kind, mut rg) = (None, None);
        let session = read_session_request(msg, |avp| {
            if avp.is(&d::RE_AUTH_REQUEST_TYPE) {
                once(&mut kind, avp.u32()?, avp)?;
            } else if avp.is(&d::RATING_GROUP) {
                once(&mut rg, avp.u32()?, avp)?;
            } else {
                return Ok(false);
            }
            Ok(true)
        })?;
        Ok(Rar {
            session,
            re_auth_request_type: required(
                kind,
                &d::RE_AUTH_REQUEST_TYPE,
                "Re-Auth-Request-Type missing",
            )?,
            rating_group: rg,
        })
    }

    /// Appends the RAR with these identifiers.
    pub fn encode(
        &self,
        dst: &mut BytesMut,
        hop_by_hop: u32,
        end_to_end: u32,
    ) -> Result<(), TooLarge> {
        let h = request_header(
            command::RE_AUTH,
            APP_CREDIT_CONTROL,
            true,
            hop_by_hop,
            end_to_end,
        );
        encode_message(dst, h, |w| {
            encode_session_request(w, &self.session);
            w.u32(&d::RE_AUTH_REQUEST_TYPE, self.re_auth_request_type);
            if let Some(rg) = self.rating_group {
                w.u32(&d::RATING_GROUP, rg);
            }
        })
    }
}

/// Abort-Session-Request: tells the client to end a session.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Asr<'a> {
    /// Session and addressing.
    pub session: SessionRequest<'a>,
}

impl<'a> Asr<'a> {
    /// Decodes a whole ASR message.
    pub fn decode(msg: &'a [u8]) -> R<Asr<'a>> {
        Ok(Asr {
            session: read_session_request(msg, |_| Ok(false))?,
        })
    }

    /// Appends the ASR with these identifiers.
    pub fn encode(
        &self,
        dst: &mut BytesMut,
        hop_by_hop: u32,
        end_to_end: u32,
    ) -> Result<(), TooLarge> {
        let h = request_header(
            command::ABORT_SESSION,
            APP_CREDIT_CONTROL,
            true,
            hop_by_hop,
            end_to_end,
        );
        encode_message(dst, h, |w| encode_session_request(w, &self.session))
    }
}

/// An answer to a session request (RAA or ASA).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionAnswer<'a> {
    /// Session-Id.
    pub session_id: &'a str,
    /// Result-Code, Error-Message, Failed-AVP.
    pub status: AnswerStatus<'a>,
    /// Origin-Host.
    pub origin_host: &'a str,
    /// Origin-Realm.
    pub origin_realm: &'a str,
}

impl<'a> SessionAnswer<'a> {
    /// Decodes a whole RAA or ASA message.
    pub fn decode(msg: &'a [u8]) -> R<SessionAnswer<'a>> {
        let mut status = AnswerStatus::default();
        let mut sid = None;
        let origin = read_origin(msg, Some(&mut status), |avp| {
            if avp.is(&d::SESSION_ID) {
                once(&mut sid, avp.utf8()?, avp)?;
                return Ok(true);
            }
            Ok(false)
        })?;
        Ok(SessionAnswer {
            session_id: required(sid, &d::SESSION_ID, "Session-Id missing")?,
            status,
            origin_host: origin.host,
            origin_realm: origin.realm,
        })
    }

    /// Appends the answer to `request` (a RAR or ASR).
    pub fn encode(&self, dst: &mut BytesMut, request: &Header) -> Result<(), TooLarge> {
        encode_message(dst, answer_header(request, self.status.result_code), |w| {
            w.str(&d::SESSION_ID, self.session_id);
            w.u32(&d::RESULT_CODE, self.status.result_code);
            w.str(&d::ORIGIN_HOST, self.origin_host);
            w.str(&d::ORIGIN_REALM, self.origin_realm);
            self.status.encode_tail(w);
        })
    }
}

/// Re-Auth-Answer.
pub type Raa<'a> = SessionAnswer<'a>;
/// Abort-Session-Answer.
pub type Asa<'a> = SessionAnswer<'a>;

/// The answer to a request that cannot be served (RFC 6733 7.2): the
/// request's command code and ids, E set for protocol errors (3xxx).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ErrorAnswer<'a> {
    /// The request's Session-Id, if it had one.
    pub session_id: Option<&'a str>,
    /// Origin-Host.
    pub origin_host: &'a str,
    /// Origin-Realm.
    pub origin_realm: &'a str,
    /// Result-Code, Error-Message, Failed-AVP.
    pub status: AnswerStatus<'a>,
    /// Origin-State-Id.
    pub origin_state_id: Option<u32>,
}

impl ErrorAnswer<'_> {
    /// Appends the answer to `request`.
    pub fn encode(&self, dst: &mut BytesMut, request: &Header) -> Result<(), TooLarge> {
        encode_message(dst, answer_header(request, self.status.result_code), |w| {
            if let Some(s) = self.session_id {
                w.str(&d::SESSION_ID, s);
            }
            w.str(&d::ORIGIN_HOST, self.origin_host);
            w.str(&d::ORIGIN_REALM, self.origin_realm);
            w.u32(&d::RESULT_CODE, self.status.result_code);
            if let Some(s) = self.origin_state_id {
                w.u32(&d::ORIGIN_STATE_ID, s);
            }
            self.status.encode_tail(w);
        })
    }
}

/// The Session-Id of a message, if its AVPs can be read that far.
pub fn session_id_of(msg: &[u8]) -> Option<&str> {
    AvpIter::new(body(msg))
        .map_while(Result::ok)
        .find(|a| a.is(&d::SESSION_ID))
        .and_then(|a| std::str::from_utf8(a.data).ok())
}
