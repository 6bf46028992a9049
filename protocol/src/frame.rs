//! Frames: `u32 length | u8 kind | u8 flags | u64 request_id | body`, and
//! decoding one from a byte slice without tokio.

use crate::error::ProtocolError;
use crate::limits::{DEFAULT_MAX_FRAME, HEADER_LEN, LENGTH_PREFIX_LEN, MAX_FRAME_CAP};
use crate::message::Message;
use crate::wire::{into_error, Cx};
use bytes::{BufMut, BytesMut};

/// The kind byte of a frame: which message its body holds.
///
/// Requests (client to server) have bit 7 clear; what a server sends,
/// answers and the pushed `ALERT`, has bit 7 set; `PING`/`PONG` go either way.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Kind {
    /// Opens the connection.
    Hello = 0x01,
    /// Keepalive probe.
    Ping = 0x02,
    /// Many requests in one frame.
    Batch = 0x03,
    /// Credit-control request.
    Ccr = 0x10,
    /// Admin: create an account.
    AccountCreate = 0x20,
    /// Admin: change an account's status.
    AccountStatus = 0x21,
    /// Admin: top-up or refund.
    TopUp = 0x22,
    /// Admin: adjust a bucket.
    Adjust = 0x23,
    /// Admin: grant a bucket.
    BucketGrant = 0x24,
    /// Admin: set or remove a cap.
    LimitSet = 0x25,
    /// Query: an account's balances.
    BalanceQuery = 0x26,
    /// Query: an account's reservations.
    ReservationList = 0x27,
    /// Admin: validate and activate a rate card (TOML or JSON text).
    RateCardApply = 0x28,
    /// Query: the rate cards and their versions.
    RateCardShow = 0x29,
    /// Admin query (version 2): the server's state.
    Status = 0x2A,
    /// Admin (version 2): write a consistent backup into a directory.
    Backup = 0x2B,
    /// Subscribe the connection to spend-control alerts (version 3).
    AlertSubscribe = 0x2C,
    /// Accepts the connection.
    HelloOk = 0x81,
    /// Keepalive answer.
    Pong = 0x82,
    /// Answers to a batch.
    BatchResult = 0x83,
    /// Credit-control answer.
    Cca = 0x90,
    /// Answer to a mutating admin request (or a failed query).
    AdminResult = 0xA0,
    /// Answer to a balance query.
    Balance = 0xA1,
    /// Answer to a reservation listing.
    Reservations = 0xA2,
    /// Answer to a rate card apply.
    RateCardResult = 0xA3,
    /// Answer to a rate card listing.
    RateCards = 0xA4,
    /// Answer to a status query (version 2).
    StatusResult = 0xA5,
    /// Answer to a backup (version 2).
    BackupResult = 0xA6,
    /// Answer to an alert subscription (version 3).
    AlertSubscribed = 0xA7,
    /// A spend-control alert the server pushes to a subscriber (version 3;
    /// request id 0, answers nothing).
    Alert = 0xA8,
    /// Protocol-level failure.
    Error = 0xFF,
}

impl Kind {
    /// Every kind, in wire order.
    pub const ALL: &'static [Kind] = &[
        Kind::Hello,
        Kind::Ping,
        Kind::Batch,
        Kind::Ccr,
        Kind::AccountCreate,
        Kind::AccountStatus,
        Kind::TopUp,
        Kind::Adjust,
        Kind::BucketGrant,
        Kind::LimitSet,
        Kind::BalanceQuery,
        Kind::ReservationList,
        Kind::RateCardApply,
        Kind::RateCardShow,
        Kind::Status,
        Kind::Backup,
        Kind::AlertSubscribe,
        Kind::HelloOk,
        Kind::Pong,
        Kind::BatchResult,
        Kind::Cca,
        Kind::AdminResult,
        Kind::Balance,
        Kind::Reservations,
        Kind::RateCardResult,
        Kind::RateCards,
        Kind::StatusResult,
        Kind::BackupResult,
        Kind::AlertSubscribed,
        Kind::Alert,
        Kind::Error,
    ];

    /// The kind of a wire byte, or `None` if undefined.
    pub fn from_code(code: u8) -> Option<Kind> {
        Some(match code {
            0x01 => Kind::Hello,
            0x02 => Kind::Ping,
            0x03 => Kind::Batch,
            0x10 => Kind::Ccr,
            0x20 => Kind::AccountCreate,
            0x21 => Kind::AccountStatus,
            0x22 => Kind::TopUp,
            0x23 => Kind::Adjust,
            0x24 => Kind::BucketGrant,
            0x25 => Kind::LimitSet,
            0x26 => Kind::BalanceQuery,
            0x27 => Kind::ReservationList,
            0x28 => Kind::RateCardApply,
            0x29 => Kind::RateCardShow,
            0x2A => Kind::Status,
            0x2B => Kind::Backup,
            0x2C => Kind::AlertSubscribe,
            0x81 => Kind::HelloOk,
            0x82 => Kind::Pong,
            0x83 => Kind::BatchResult,
            0x90 => Kind::Cca,
            0xA0 => Kind::AdminResult,
            0xA1 => Kind::Balance,
            0xA2 => Kind::Reservations,
            0xA3 => Kind::RateCardResult,
            0xA4 => Kind::RateCards,
            0xA5 => Kind::StatusResult,
            0xA6 => Kind::BackupResult,
            0xA7 => Kind::AlertSubscribed,
            0xA8 => Kind::Alert,
            0xFF => Kind::Error,
            _ => return None,
        })
    }

    /// The wire byte.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The name used in `SPEC.md`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Hello => "HELLO",
            Kind::Ping => "PING",
            Kind::Batch => "BATCH",
            Kind::Ccr => "CCR",
            Kind::AccountCreate => "ACCOUNT_CREATE",
            Kind::AccountStatus => "ACCOUNT_STATUS",
            Kind::TopUp => "TOPUP",
            Kind::Adjust => "ADJUST",
            Kind::BucketGrant => "BUCKET_GRANT",
            Kind::LimitSet => "LIMIT_SET",
            Kind::BalanceQuery => "BALANCE_QUERY",
            Kind::ReservationList => "RESERVATION_LIST",
            Kind::RateCardApply => "RATECARD_APPLY",
            Kind::RateCardShow => "RATECARD_SHOW",
            Kind::Status => "STATUS",
            Kind::Backup => "BACKUP",
            Kind::AlertSubscribe => "ALERT_SUBSCRIBE",
            Kind::HelloOk => "HELLO_OK",
            Kind::Pong => "PONG",
            Kind::BatchResult => "BATCH_RESULT",
            Kind::Cca => "CCA",
            Kind::AdminResult => "ADMIN_RESULT",
            Kind::Balance => "BALANCE",
            Kind::Reservations => "RESERVATIONS",
            Kind::RateCardResult => "RATECARD_RESULT",
            Kind::RateCards => "RATECARDS",
            Kind::StatusResult => "STATUS_RESULT",
            Kind::BackupResult => "BACKUP_RESULT",
            Kind::AlertSubscribed => "ALERT_SUBSCRIBED",
            Kind::Alert => "ALERT",
            Kind::Error => "ERROR",
        }
    }

    /// True for kinds a server sends (bit 7 set), including `PONG` and the
    /// pushed `ALERT`.
    pub fn is_response(self) -> bool {
        self as u8 & 0x80 != 0
    }

    /// True for admin requests that change state (and carry an `op_id`).
    pub fn is_mutating_admin(self) -> bool {
        matches!(
            self,
            Kind::AccountCreate
                | Kind::AccountStatus
                | Kind::TopUp
                | Kind::Adjust
                | Kind::BucketGrant
                | Kind::LimitSet
                | Kind::RateCardApply
        )
    }

    /// True for kinds that may be entries of a `BATCH`: CCR and the admin
    /// requests 0x20–0x27 (SPEC 6.3); rate-card requests travel alone.
    pub fn allowed_in_batch(self) -> bool {
        matches!(self, Kind::Ccr | Kind::BalanceQuery | Kind::ReservationList)
            || (self.is_mutating_admin() && self != Kind::RateCardApply)
    }

    /// The first protocol version that has this kind: a peer that
    /// negotiated an earlier one treats it as undefined (`UNKNOWN_KIND`).
    pub fn since_version(self) -> u16 {
        match self {
            Kind::Status | Kind::StatusResult | Kind::Backup | Kind::BackupResult => 2,
            Kind::AlertSubscribe | Kind::AlertSubscribed | Kind::Alert => 3,
            _ => 1,
        }
    }

    /// True for kinds that may be entries of a `BATCH_RESULT`.
    pub fn allowed_in_batch_result(self) -> bool {
        matches!(
            self,
            Kind::Cca | Kind::AdminResult | Kind::Balance | Kind::Reservations | Kind::Error
        )
    }

    /// The flags byte a frame of this kind carries: 1 for `ERROR`, else 0.
    pub fn flags(self) -> u8 {
        if self == Kind::Error {
            Frame::FLAG_ERROR
        } else {
            0
        }
    }
}

/// One frame: a request id and a message.
///
/// The kind and flags bytes follow from the message ([`Frame::kind`],
/// [`Frame::flags`]), so they cannot disagree with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Chosen by the client, echoed in the answer; 0 for server-initiated frames.
    pub request_id: u64,
    /// The message.
    pub body: Message,
}

impl Frame {
    /// The flags bit marking an `ERROR` frame.
    pub const FLAG_ERROR: u8 = 0x01;

    /// A frame with this request id and message.
    pub fn new(request_id: u64, body: Message) -> Frame {
        Frame { request_id, body }
    }

    /// The kind byte.
    pub fn kind(&self) -> Kind {
        self.body.kind()
    }

    /// The flags byte.
    pub fn flags(&self) -> u8 {
        self.kind().flags()
    }

    /// Appends the whole frame to `dst`, refusing one longer than the
    /// absolute cap (16 MiB); see [`Frame::encode_with_limit`].
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        self.encode_with_limit(dst, MAX_FRAME_CAP)
    }

    /// Appends the whole frame to `dst`, refusing (and leaving `dst`
    /// unchanged) a frame whose length exceeds `max_frame` or a message a
    /// decoder would refuse.
    pub fn encode_with_limit(
        &self,
        dst: &mut BytesMut,
        max_frame: u32,
    ) -> Result<(), ProtocolError> {
        self.encode_version(dst, max_frame, 1)
    }

    /// [`Frame::encode_with_limit`] with the body laid out as `version`
    /// (the version a connection negotiated).
    pub fn encode_version(
        &self,
        dst: &mut BytesMut,
        max_frame: u32,
        version: u16,
    ) -> Result<(), ProtocolError> {
        let start = dst.len();
        dst.put_u32_le(0);
        dst.put_u8(self.kind() as u8);
        dst.put_u8(self.flags());
        dst.put_u64_le(self.request_id);
        if let Err(e) = self.body.encode_version(dst, version) {
            dst.truncate(start);
            return Err(e.with_request_id(self.request_id));
        }
        let length = (dst.len() - start - LENGTH_PREFIX_LEN) as u64;
        if length > max_frame.min(MAX_FRAME_CAP) as u64 {
            dst.truncate(start);
            return Err(ProtocolError::FrameTooLarge {
                length,
                max: max_frame.min(MAX_FRAME_CAP),
            });
        }
        dst[start..start + LENGTH_PREFIX_LEN].copy_from_slice(&(length as u32).to_le_bytes());
        Ok(())
    }

    /// The whole frame as version-1 bytes (absolute cap only).
    pub fn to_bytes(&self) -> Result<BytesMut, ProtocolError> {
        let mut dst = BytesMut::new();
        self.encode(&mut dst)?;
        Ok(dst)
    }
}

/// The total size (prefix included) of the frame starting at `buf`, once
/// its 4-byte length prefix is there. Use it to skip a frame after a
/// non-fatal [`ProtocolError`].
pub fn frame_size(buf: &[u8]) -> Option<usize> {
    let prefix: [u8; 4] = buf.get(..LENGTH_PREFIX_LEN)?.try_into().ok()?;
    Some(LENGTH_PREFIX_LEN + u32::from_le_bytes(prefix) as usize)
}

/// Checks the length prefix: `Ok(None)` when fewer than 4 bytes are there,
/// else the frame length, refused if above `max_frame` or below the header.
pub(crate) fn check_length(buf: &[u8], max_frame: u32) -> Result<Option<usize>, ProtocolError> {
    let Some(total) = frame_size(buf) else {
        return Ok(None);
    };
    let length = total - LENGTH_PREFIX_LEN;
    let max = max_frame.min(MAX_FRAME_CAP);
    if length as u64 > max as u64 {
        return Err(ProtocolError::FrameTooLarge {
            length: length as u64,
            max,
        });
    }
    if length < HEADER_LEN {
        return Err(ProtocolError::FrameTooShort {
            length: length as u32,
        });
    }
    Ok(Some(length))
}

/// Decodes the version-1 frame at the start of `buf` with the default maximum frame
/// length (1 MiB): `Ok(None)` if it is not all there yet, else the frame and
/// the bytes it used.
///
/// On a non-fatal error ([`ProtocolError::is_fatal`] false) the malformed
/// frame is [`frame_size`] bytes long and may be skipped.
pub fn decode_frame(buf: &[u8]) -> Result<Option<(Frame, usize)>, ProtocolError> {
    decode_frame_with_limit(buf, DEFAULT_MAX_FRAME)
}

/// [`decode_frame`] with a given maximum frame length (capped at 16 MiB).
pub fn decode_frame_with_limit(
    buf: &[u8],
    max_frame: u32,
) -> Result<Option<(Frame, usize)>, ProtocolError> {
    decode_frame_version(buf, max_frame, 1)
}

/// [`decode_frame_with_limit`] for a connection that negotiated `version`.
pub fn decode_frame_version(
    buf: &[u8],
    max_frame: u32,
    version: u16,
) -> Result<Option<(Frame, usize)>, ProtocolError> {
    let Some(length) = check_length(buf, max_frame)? else {
        return Ok(None);
    };
    let total = LENGTH_PREFIX_LEN + length;
    let Some(data) = buf.get(LENGTH_PREFIX_LEN..total) else {
        return Ok(None);
    };
    Ok(Some((parse_frame(data, version)?, total)))
}

/// Parses a frame's bytes after the length prefix (exactly `length` bytes)
/// as `version` lays them out.
pub(crate) fn parse_frame(data: &[u8], version: u16) -> Result<Frame, ProtocolError> {
    let cx = Cx { rid: 0, version };
    let header = (|| {
        let (i, kind) = cx.u8(data, "kind")?;
        let (i, flags) = cx.u8(i, "flags")?;
        let (i, rid) = cx.u64(i, "request_id")?;
        Ok::<_, nom::Err<ProtocolError>>((i, kind, flags, rid))
    })();
    let (body, kind_byte, flags, request_id) = header.map_err(|e| into_error(e, 0))?;
    let Some(kind) = Kind::from_code(kind_byte) else {
        return Err(ProtocolError::UnknownKind {
            request_id,
            kind: kind_byte,
        });
    };
    if flags != kind.flags() {
        return Err(ProtocolError::BadFlags {
            request_id,
            kind: kind_byte,
            flags,
        });
    }
    let body = Message::decode_version(kind, body, request_id, version)?;
    Ok(Frame { request_id, body })
}
