//! Diameter (RFC 6733) with the Credit-Control application (RFC 4006 /
//! RFC 8506) and the 3GPP Ro/Gy AVPs an online charging server needs.
//!
//! Pure codec, no business logic:
//!
//! - [`frame_length`] / [`codec::DiameterCodec`]: find message boundaries in
//!   a byte stream, refusing bad versions and lengths before buffering;
//! - [`Header`]: the 20-byte message header with its R, P, E, T flags;
//! - [`avp`]: AVPs read in place from the message bytes ([`avp::AvpRef`],
//!   no copy, no allocation), a writer that patches lengths and padding, and
//!   an owned generic tree ([`avp::GenericMessage`]) that decodes and
//!   re-encodes any well-formed message byte for byte;
//! - [`dictionary`]: codes, types and flags of the base, DCCA and 3GPP AVPs;
//! - [`message`]: typed CER/CEA, DWR/DWA, DPR/DPA, CCR/CCA, RAR/RAA and
//!   ASR/ASA that borrow their strings from the bytes they were read from.
//!
//! Every length is checked against what is left before anything is taken,
//! every list is bounded ([`AVPS_MAX`], [`GROUP_DEPTH_MAX`], [`MSCC_MAX`],
//! [`USED_MAX`], [`LIST_MAX`], the message size limit), and a malformed message yields a [`DiameterError`] carrying
//! the RFC result code and the Failed-AVP to answer with. Nothing panics on
//! any input.

pub mod avp;
pub mod codec;
pub mod dictionary;
pub mod message;

use nom::number::complete as num;

/// Bytes of the Diameter message header.
pub const HEADER_LEN: usize = 20;
/// Default largest message accepted, in bytes (header included).
pub const DEFAULT_MAX_MESSAGE: usize = 64 * 1024;
/// No configuration may raise the message limit above this (the header's
/// length field has 24 bits; we keep far below it).
pub const MAX_MESSAGE_CAP: usize = 1 << 20;
/// Deepest nesting of grouped AVPs that is decoded.
pub const GROUP_DEPTH_MAX: usize = 8;
/// Most AVPs at one level of a message or grouped AVP.
pub const AVPS_MAX: usize = 1024;
/// Longest string AVP the typed messages accept (Session-Id, hosts, ...).
pub const STRING_MAX: usize = 1024;
/// Most Multiple-Services-Credit-Control AVPs in a typed message.
pub const MSCC_MAX: usize = 32;
/// Most Used-Service-Unit AVPs in one MSCC (or at the top level): a report
/// split at a tariff change has two or three.
pub const USED_MAX: usize = 4;
/// Most entries of any other repeated AVP in a typed message
/// (Subscription-Id, Service-Identifier, Host-IP-Address, ...).
pub const LIST_MAX: usize = 16;
/// Diameter's only version.
pub const VERSION: u8 = 1;

/// Command flag: a request (else an answer).
pub const FLAG_REQUEST: u8 = 0x80;
/// Command flag: may be proxied, relayed or redirected.
pub const FLAG_PROXIABLE: u8 = 0x40;
/// Command flag: an answer carrying a protocol error (3xxx).
pub const FLAG_ERROR: u8 = 0x20;
/// Command flag: a possible retransmission (after a failover).
pub const FLAG_RETRANSMIT: u8 = 0x10;

/// The Diameter common messages application (CER, DWR, DPR).
pub const APP_COMMON: u32 = 0;
/// The Diameter Credit-Control application (RFC 4006), also 3GPP Ro/Gy.
pub const APP_CREDIT_CONTROL: u32 = 4;
/// The relay application id (accepts every application).
pub const APP_RELAY: u32 = 0xffff_ffff;

/// Command codes.
pub mod command {
    /// Capabilities-Exchange.
    pub const CAPABILITIES_EXCHANGE: u32 = 257;
    /// Re-Auth.
    pub const RE_AUTH: u32 = 258;
    /// Abort-Session.
    pub const ABORT_SESSION: u32 = 274;
    /// Device-Watchdog.
    pub const DEVICE_WATCHDOG: u32 = 280;
    /// Disconnect-Peer.
    pub const DISCONNECT_PEER: u32 = 282;
    /// Credit-Control.
    pub const CREDIT_CONTROL: u32 = 272;
}

/// Result codes of RFC 6733 and RFC 4006 used here.
pub mod result {
    /// DIAMETER_SUCCESS.
    pub const SUCCESS: u32 = 2001;
    /// DIAMETER_LIMITED_SUCCESS.
    pub const LIMITED_SUCCESS: u32 = 2002;
    /// DIAMETER_COMMAND_UNSUPPORTED (protocol error, E bit).
    pub const COMMAND_UNSUPPORTED: u32 = 3001;
    /// DIAMETER_UNABLE_TO_DELIVER (protocol error, E bit).
    pub const UNABLE_TO_DELIVER: u32 = 3002;
    /// DIAMETER_REALM_NOT_SERVED (protocol error, E bit).
    pub const REALM_NOT_SERVED: u32 = 3003;
    /// DIAMETER_TOO_BUSY (protocol error, E bit).
    pub const TOO_BUSY: u32 = 3004;
    /// DIAMETER_APPLICATION_UNSUPPORTED (protocol error, E bit).
    pub const APPLICATION_UNSUPPORTED: u32 = 3007;
    /// DIAMETER_INVALID_HDR_BITS (protocol error, E bit).
    pub const INVALID_HDR_BITS: u32 = 3008;
    /// DIAMETER_INVALID_AVP_BITS (protocol error, E bit).
    pub const INVALID_AVP_BITS: u32 = 3009;
    /// DIAMETER_UNKNOWN_PEER (protocol error, E bit).
    pub const UNKNOWN_PEER: u32 = 3010;
    /// DIAMETER_END_USER_SERVICE_DENIED.
    pub const END_USER_SERVICE_DENIED: u32 = 4010;
    /// DIAMETER_CREDIT_CONTROL_NOT_APPLICABLE.
    pub const CREDIT_CONTROL_NOT_APPLICABLE: u32 = 4011;
    /// DIAMETER_CREDIT_LIMIT_REACHED.
    pub const CREDIT_LIMIT_REACHED: u32 = 4012;
    /// DIAMETER_AVP_UNSUPPORTED.
    pub const AVP_UNSUPPORTED: u32 = 5001;
    /// DIAMETER_UNKNOWN_SESSION_ID.
    pub const UNKNOWN_SESSION_ID: u32 = 5002;
    /// DIAMETER_AUTHORIZATION_REJECTED.
    pub const AUTHORIZATION_REJECTED: u32 = 5003;
    /// DIAMETER_INVALID_AVP_VALUE.
    pub const INVALID_AVP_VALUE: u32 = 5004;
    /// DIAMETER_MISSING_AVP.
    pub const MISSING_AVP: u32 = 5005;
    /// DIAMETER_AVP_OCCURS_TOO_MANY_TIMES.
    pub const AVP_OCCURS_TOO_MANY_TIMES: u32 = 5009;
    /// DIAMETER_NO_COMMON_APPLICATION.
    pub const NO_COMMON_APPLICATION: u32 = 5010;
    /// DIAMETER_UNSUPPORTED_VERSION.
    pub const UNSUPPORTED_VERSION: u32 = 5011;
    /// DIAMETER_UNABLE_TO_COMPLY.
    pub const UNABLE_TO_COMPLY: u32 = 5012;
    /// DIAMETER_INVALID_AVP_LENGTH.
    pub const INVALID_AVP_LENGTH: u32 = 5014;
    /// DIAMETER_INVALID_MESSAGE_LENGTH.
    pub const INVALID_MESSAGE_LENGTH: u32 = 5015;
    /// DIAMETER_USER_UNKNOWN.
    pub const USER_UNKNOWN: u32 = 5030;
    /// DIAMETER_RATING_FAILED.
    pub const RATING_FAILED: u32 = 5031;

    /// True for protocol errors (3xxx), which answers carry with the E bit.
    pub fn is_protocol_error(code: u32) -> bool {
        (3000..4000).contains(&code)
    }
}

/// An AVP to echo in Failed-AVP: its header fields and (a bounded prefix
/// of) its data, or a zero-filled example of a missing AVP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailedAvp {
    /// AVP code.
    pub code: u32,
    /// AVP flags.
    pub flags: u8,
    /// Vendor id (0: none).
    pub vendor_id: u32,
    /// Data, at most [`FAILED_AVP_DATA_MAX`] bytes.
    pub data: Vec<u8>,
}

/// Most data bytes kept for a Failed-AVP.
pub const FAILED_AVP_DATA_MAX: usize = 256;

impl FailedAvp {
    /// The failed AVP as read (data cut to the bound).
    pub fn of(avp: &avp::AvpRef<'_>) -> FailedAvp {
        FailedAvp {
            code: avp.code,
            flags: avp.flags,
            vendor_id: avp.vendor_id,
            data: avp.data[..avp.data.len().min(FAILED_AVP_DATA_MAX)].to_vec(),
        }
    }

    /// An example of a missing AVP: its code and a zeroed value of the
    /// type's minimum size (RFC 6733 7.5).
    pub fn missing(code: u32, vendor_id: u32) -> FailedAvp {
        let size = match dictionary::lookup(code, vendor_id).map(|d| d.kind) {
            Some(dictionary::AvpType::Unsigned64 | dictionary::AvpType::Integer64) => 8,
            Some(
                dictionary::AvpType::Unsigned32
                | dictionary::AvpType::Integer32
                | dictionary::AvpType::Enumerated
                | dictionary::AvpType::Time,
            ) => 4,
            _ => 0,
        };
        FailedAvp {
            code,
            flags: dictionary::default_flags(code, vendor_id),
            vendor_id,
            data: vec![0; size],
        }
    }
}

/// Why a message (or a part of it) is not acceptable, with the result code
/// to answer and the AVP to name in Failed-AVP.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("diameter {result_code}: {reason}")]
pub struct DiameterError {
    /// The Result-Code to answer with.
    pub result_code: u32,
    /// The AVP at fault, if one is.
    pub failed_avp: Option<FailedAvp>,
    /// A short explanation (goes into Error-Message).
    pub reason: &'static str,
}

impl DiameterError {
    /// An error with no AVP at fault.
    pub fn new(result_code: u32, reason: &'static str) -> DiameterError {
        DiameterError {
            result_code,
            failed_avp: None,
            reason,
        }
    }

    /// An error naming an AVP.
    pub fn avp(result_code: u32, avp: &avp::AvpRef<'_>, reason: &'static str) -> DiameterError {
        DiameterError {
            result_code,
            failed_avp: Some(FailedAvp::of(avp)),
            reason,
        }
    }

    /// DIAMETER_MISSING_AVP naming the missing AVP.
    pub fn missing(code: u32, vendor_id: u32, reason: &'static str) -> DiameterError {
        DiameterError {
            result_code: result::MISSING_AVP,
            failed_avp: Some(FailedAvp::missing(code, vendor_id)),
            reason,
        }
    }
}

/// Why a byte stream cannot be cut into messages (the connection must close).
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The version byte is not 1 (answer DIAMETER_UNSUPPORTED_VERSION).
    #[error("unsupported diameter version {0}")]
    Version(u8),
    /// The length is below the header size or not a multiple of 4.
    #[error("invalid message length {0}")]
    Length(usize),
    /// The length exceeds the configured maximum.
    #[error("message of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Declared length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

impl FrameError {
    /// The result code to answer with, if an answer can still be sent.
    pub fn result_code(self) -> u32 {
        match self {
            FrameError::Version(_) => result::UNSUPPORTED_VERSION,
            FrameError::Length(_) | FrameError::TooLarge { .. } => result::INVALID_MESSAGE_LENGTH,
        }
    }
}

/// The length of the message at the start of `buf` once its first four
/// bytes are there (`None` before), checked against `max` before anything
/// is buffered for it.
pub fn frame_length(buf: &[u8], max: usize) -> Result<Option<usize>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    if buf[0] != VERSION {
        return Err(FrameError::Version(buf[0]));
    }
    let len = u32::from_be_bytes([0, buf[1], buf[2], buf[3]]) as usize;
    if len < HEADER_LEN || !len.is_multiple_of(4) {
        return Err(FrameError::Length(len));
    }
    if len > max.min(MAX_MESSAGE_CAP) {
        return Err(FrameError::TooLarge {
            len,
            max: max.min(MAX_MESSAGE_CAP),
        });
    }
    Ok(Some(len))
}

/// The Diameter message header.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Header {
    /// Message length in bytes, header included (a multiple of 4).
    pub length: u32,
    /// Command flags (R, P, E, T and four reserved bits).
    pub flags: u8,
    /// Command code (24 bits).
    pub code: u32,
    /// Application id.
    pub application_id: u32,
    /// Hop-by-Hop Identifier: matches an answer to its request on a link.
    pub hop_by_hop: u32,
    /// End-to-End Identifier: detects duplicate requests.
    pub end_to_end: u32,
}

impl Header {
    /// Reads the header at the start of a whole message.
    pub fn parse(msg: &[u8]) -> Result<Header, FrameError> {
        type E<'a> = nom::error::Error<&'a [u8]>;
        let parse = |i| -> nom::IResult<&[u8], Header, E<'_>> {
            let (i, version) = num::be_u8(i)?;
            let (i, length) = num::be_u24(i)?;
            let (i, flags) = num::be_u8(i)?;
            let (i, code) = num::be_u24(i)?;
            let (i, application_id) = num::be_u32(i)?;
            let (i, hop_by_hop) = num::be_u32(i)?;
            let (i, end_to_end) = num::be_u32(i)?;
            let _ = version;
            Ok((
                i,
                Header {
                    length,
                    flags,
                    code,
                    application_id,
                    hop_by_hop,
                    end_to_end,
                },
            ))
        };
        if msg.first().is_some_and(|v| *v != VERSION) {
            return Err(FrameError::Version(msg[0]));
        }
        match parse(msg) {
            Ok((_, h)) if h.length as usize == msg.len() && msg.len().is_multiple_of(4) => Ok(h),
            Ok((_, h)) => Err(FrameError::Length(h.length as usize)),
            Err(_) => Err(FrameError::Length(msg.len())),
        }
    }

    /// True for a request.
    pub fn is_request(&self) -> bool {
        self.flags & FLAG_REQUEST != 0
    }

    /// True for a possible retransmission.
    pub fn is_retransmit(&self) -> bool {
        self.flags & FLAG_RETRANSMIT != 0
    }

    /// True for an answer carrying a protocol error.
    pub fn is_error(&self) -> bool {
        self.flags & FLAG_ERROR != 0
    }

    /// The header bits are inconsistent (RFC 6733 3: a request never has
    /// E set): answer DIAMETER_INVALID_HDR_BITS. Reserved bits are ignored,
    /// to be liberal with real peers.
    pub fn has_invalid_bits(&self) -> bool {
        self.is_request() && self.is_error()
    }

    /// Writes the header (with `length`) to `dst`.
    pub fn put(&self, dst: &mut bytes::BytesMut) {
        use bytes::BufMut;
        dst.put_u32((VERSION as u32) << 24 | (self.length & 0x00ff_ffff));
        dst.put_u32((self.flags as u32) << 24 | (self.code & 0x00ff_ffff));
        dst.put_u32(self.application_id);
        dst.put_u32(self.hop_by_hop);
        dst.put_u32(self.end_to_end);
    }
}
