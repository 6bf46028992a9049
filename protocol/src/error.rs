//! [`ProtocolError`]: one variant per class of malformed input.

use crate::codes::ErrorCode;

/// Why bytes could not be decoded as a frame, or a frame could not be
/// encoded.
///
/// Variants after the header carry the frame's `request_id` (0 from
/// [`crate::Message::encode`], which does not know it; [`crate::Frame`]
/// fills it in). [`ProtocolError::is_fatal`] tells whether the frame
/// boundary was lost and the connection must be closed; otherwise the
/// malformed frame has been skipped and the server answers `ERROR` with
/// [`ProtocolError::code`] and [`ProtocolError::request_id`].
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The underlying stream failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The stream ended inside a frame.
    #[error("connection closed with {buffered} bytes of an incomplete frame buffered")]
    UnexpectedEof {
        /// Bytes of the incomplete frame that had arrived.
        buffered: usize,
    },
    /// The frame's length exceeds the maximum frame size (checked before
    /// anything is buffered or allocated).
    #[error("frame length {length} exceeds the maximum of {max}")]
    FrameTooLarge {
        /// The frame's length (bytes after the length prefix).
        length: u64,
        /// The maximum in force.
        max: u32,
    },
    /// The frame's length is shorter than the 10-byte header.
    #[error("frame length {length} is shorter than the 10-byte header")]
    FrameTooShort {
        /// The frame's length.
        length: u32,
    },
    /// The kind byte is not a defined message kind.
    #[error("request {request_id}: unknown message kind 0x{kind:02x}")]
    UnknownKind {
        /// The frame's request id.
        request_id: u64,
        /// The kind byte.
        kind: u8,
    },
    /// The flags byte is not the one the kind requires (1 for ERROR, else 0).
    #[error("request {request_id}: flags 0x{flags:02x} invalid for kind 0x{kind:02x}")]
    BadFlags {
        /// The frame's request id.
        request_id: u64,
        /// The kind byte.
        kind: u8,
        /// The flags byte.
        flags: u8,
    },
    /// The body ended before a field was complete.
    #[error("request {request_id}: body ends inside field {field}")]
    Truncated {
        /// The frame's request id.
        request_id: u64,
        /// The incomplete field.
        field: &'static str,
    },
    /// Bytes remain after the last field of a body or batch entry.
    #[error("request {request_id}: {extra} trailing bytes after {field}")]
    TrailingBytes {
        /// The frame's request id.
        request_id: u64,
        /// `body` or `batch entry`.
        field: &'static str,
        /// How many bytes remain.
        extra: usize,
    },
    /// A string's length exceeds its field's maximum.
    #[error("request {request_id}: {field} is {len} bytes, more than {max}")]
    StringTooLong {
        /// The frame's request id.
        request_id: u64,
        /// The field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// Its maximum.
        max: usize,
    },
    /// A string is not valid UTF-8.
    #[error("request {request_id}: {field} is not valid UTF-8")]
    InvalidUtf8 {
        /// The frame's request id.
        request_id: u64,
        /// The field.
        field: &'static str,
    },
    /// A unit is not 1 to 16 ASCII letters, digits or `_`.
    #[error("request {request_id}: {field} is not a unit name (1 to 16 of A-Z a-z 0-9 _)")]
    InvalidUnit {
        /// The frame's request id.
        request_id: u64,
        /// The field.
        field: &'static str,
    },
    /// A decimal's scale exceeds 28.
    #[error("request {request_id}: {field} has scale {scale}, more than 28")]
    DecimalScale {
        /// The frame's request id.
        request_id: u64,
        /// The field.
        field: &'static str,
        /// The scale byte.
        scale: u8,
    },
    /// A decimal's mantissa exceeds 2^96 - 1 in magnitude.
    #[error("request {request_id}: {field} has a mantissa beyond ±(2^96 - 1)")]
    DecimalOutOfRange {
        /// The frame's request id.
        request_id: u64,
        /// The field.
        field: &'static str,
    },
    /// A list's count exceeds its maximum.
    #[error("request {request_id}: {field} has {count} entries, more than {max}")]
    CountTooLarge {
        /// The frame's request id.
        request_id: u64,
        /// The list.
        field: &'static str,
        /// Its count.
        count: usize,
        /// Its maximum.
        max: usize,
    },
    /// A `BATCH` or `BATCH_RESULT` has more than 1024 entries.
    #[error("request {request_id}: batch of {count} entries, more than 1024")]
    BatchTooLarge {
        /// The frame's request id.
        request_id: u64,
        /// The entry count.
        count: usize,
    },
    /// A batch entry's kind may not appear in that batch (no `HELLO`,
    /// `PING`, nested batch or `ERROR` in a `BATCH`; only answers in a
    /// `BATCH_RESULT`).
    #[error("request {request_id}: batch entry {index} has kind 0x{kind:02x}, not allowed there")]
    BatchEntryNotAllowed {
        /// The frame's request id.
        request_id: u64,
        /// The entry's index, from 0.
        index: usize,
        /// The entry's kind byte.
        kind: u8,
    },
    /// An enumeration byte has an undefined value.
    #[error("request {request_id}: {field} has undefined value {value}")]
    InvalidEnum {
        /// The frame's request id.
        request_id: u64,
        /// The field.
        field: &'static str,
        /// The byte.
        value: u8,
    },
    /// A boolean byte is neither 0 nor 1.
    #[error("request {request_id}: {field} is {value}, not 0 or 1")]
    InvalidBool {
        /// The frame's request id.
        request_id: u64,
        /// The field.
        field: &'static str,
        /// The byte.
        value: u8,
    },
    /// A field whose presence flag is 0 is not all zero bytes.
    #[error("request {request_id}: {field} must be zero when absent")]
    NonCanonical {
        /// The frame's request id.
        request_id: u64,
        /// The field.
        field: &'static str,
    },
    /// A field's value is outside its allowed range.
    #[error("request {request_id}: {field} {reason}")]
    InvalidValue {
        /// The frame's request id.
        request_id: u64,
        /// The field.
        field: &'static str,
        /// What the range is.
        reason: &'static str,
    },
}

impl ProtocolError {
    /// The request id of the malformed frame, when the header was read.
    pub fn request_id(&self) -> Option<u64> {
        use ProtocolError::*;
        match self {
            Io(_) | UnexpectedEof { .. } | FrameTooLarge { .. } | FrameTooShort { .. } => None,
            UnknownKind { request_id, .. }
            | BadFlags { request_id, .. }
            | Truncated { request_id, .. }
            | TrailingBytes { request_id, .. }
            | StringTooLong { request_id, .. }
            | InvalidUtf8 { request_id, .. }
            | InvalidUnit { request_id, .. }
            | DecimalScale { request_id, .. }
            | DecimalOutOfRange { request_id, .. }
            | CountTooLarge { request_id, .. }
            | BatchTooLarge { request_id, .. }
            | BatchEntryNotAllowed { request_id, .. }
            | InvalidEnum { request_id, .. }
            | InvalidBool { request_id, .. }
            | NonCanonical { request_id, .. }
            | InvalidValue { request_id, .. } => Some(*request_id),
        }
    }

    /// This error with its request id set (for errors that carry one).
    pub fn with_request_id(mut self, id: u64) -> ProtocolError {
        use ProtocolError::*;
        match &mut self {
            Io(_) | UnexpectedEof { .. } | FrameTooLarge { .. } | FrameTooShort { .. } => {}
            UnknownKind { request_id, .. }
            | BadFlags { request_id, .. }
            | Truncated { request_id, .. }
            | TrailingBytes { request_id, .. }
            | StringTooLong { request_id, .. }
            | InvalidUtf8 { request_id, .. }
            | InvalidUnit { request_id, .. }
            | DecimalScale { request_id, .. }
            | DecimalOutOfRange { request_id, .. }
            | CountTooLarge { request_id, .. }
            | BatchTooLarge { request_id, .. }
            | BatchEntryNotAllowed { request_id, .. }
            | InvalidEnum { request_id, .. }
            | InvalidBool { request_id, .. }
            | NonCanonical { request_id, .. }
            | InvalidValue { request_id, .. } => *request_id = id,
        }
        self
    }

    /// True when the frame boundary is lost (or the stream failed): the
    /// connection must be closed after answering `ERROR` with request id 0.
    pub fn is_fatal(&self) -> bool {
        self.request_id().is_none()
    }

    /// The `ERROR.code` a server answers this error with.
    pub fn code(&self) -> ErrorCode {
        use ProtocolError::*;
        match self {
            Io(_) => ErrorCode::INTERNAL,
            UnexpectedEof { .. } => ErrorCode::MALFORMED_FRAME,
            FrameTooLarge { .. } => ErrorCode::FRAME_TOO_LARGE,
            UnknownKind { .. } => ErrorCode::UNKNOWN_KIND,
            BatchTooLarge { .. } => ErrorCode::BATCH_TOO_LARGE,
            FrameTooShort { .. }
            | BadFlags { .. }
            | Truncated { .. }
            | TrailingBytes { .. }
            | StringTooLong { .. }
            | InvalidUtf8 { .. }
            | InvalidUnit { .. }
            | DecimalScale { .. }
            | DecimalOutOfRange { .. }
            | CountTooLarge { .. }
            | BatchEntryNotAllowed { .. }
            | InvalidEnum { .. }
            | InvalidBool { .. }
            | NonCanonical { .. }
            | InvalidValue { .. } => ErrorCode::MALFORMED_FRAME,
        }
    }
}
