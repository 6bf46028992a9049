//! `tokio_util::codec` framing: [`ReckonCodec`] and [`TolerantCodec`].

use crate::error::ProtocolError;
use crate::frame::{check_length, parse_frame, Frame};
use crate::limits::{DEFAULT_MAX_FRAME, HEADER_LEN, LENGTH_PREFIX_LEN, MAX_FRAME_CAP};
use bytes::{Buf, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Frames a byte stream into [`Frame`]s and back, with a maximum frame
/// length (bytes after the length prefix) that applies to both directions.
///
/// The decoder checks the length prefix before buffering anything: a frame
/// longer than the maximum is an error at once, and it never reserves more
/// than one maximal frame. A malformed frame whose boundary is intact is
/// consumed and reported with its request id; note that `FramedRead` ends
/// its stream after any decoder error, so a server that wants to answer
/// `ERROR` and go on should use [`TolerantCodec`].
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ReckonCodec {
    max_frame: u32,
    /// The protocol version bodies are laid out in (1 until HELLO_OK says otherwise).
    version: u16,
}

impl Default for ReckonCodec {
    fn default() -> Self {
        ReckonCodec::new()
    }
}

impl ReckonCodec {
    /// A codec with the default maximum frame length (1 MiB).
    pub fn new() -> ReckonCodec {
        ReckonCodec::with_max_frame(DEFAULT_MAX_FRAME)
    }

    /// A codec with this maximum frame length, clamped to 10 B ..= 16 MiB.
    pub fn with_max_frame(max_frame: u32) -> ReckonCodec {
        ReckonCodec {
            max_frame: clamp(max_frame),
            version: 1,
        }
    }

    /// The maximum frame length in force.
    pub fn max_frame(&self) -> u32 {
        self.max_frame
    }

    /// Changes the maximum frame length (e.g. to `HELLO_OK.max_frame`),
    /// clamped to 10 B ..= 16 MiB.
    pub fn set_max_frame(&mut self, max_frame: u32) {
        self.max_frame = clamp(max_frame);
    }

    /// The protocol version bodies are decoded and encoded in.
    pub fn version(&self) -> u16 {
        self.version
    }

    /// Switches to the version `HELLO_OK` chose (e.g. 2: a CCR carries
    /// attributes). The frames of the handshake itself are alike in every
    /// version.
    pub fn set_version(&mut self, version: u16) {
        self.version = version;
    }

    /// Decodes one frame from `src`: `Ok(None)` if incomplete, `Err` if the
    /// stream is unusable, else the frame or the non-fatal error it had.
    fn decode_step(
        &mut self,
        src: &mut BytesMut,
    ) -> Result<Option<Result<Frame, ProtocolError>>, ProtocolError> {
        let Some(length) = check_length(src, self.max_frame)? else {
            src.reserve(LENGTH_PREFIX_LEN + HEADER_LEN - src.len());
            return Ok(None);
        };
        let total = LENGTH_PREFIX_LEN + length;
        if src.len() < total {
            src.reserve(total - src.len());
            return Ok(None);
        }
        let frame = parse_frame(&src[LENGTH_PREFIX_LEN..total], self.version);
        src.advance(total);
        Ok(Some(frame))
    }
}

fn clamp(max_frame: u32) -> u32 {
    max_frame.clamp(HEADER_LEN as u32, MAX_FRAME_CAP)
}

fn eof_error(src: &BytesMut) -> ProtocolError {
    ProtocolError::UnexpectedEof {
        buffered: src.len(),
    }
}

impl Decoder for ReckonCodec {
    type Item = Frame;
    type Error = ProtocolError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, ProtocolError> {
        match self.decode_step(src)? {
            None => Ok(None),
            Some(frame) => frame.map(Some),
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, ProtocolError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => Err(eof_error(src)),
        }
    }
}

impl Encoder<Frame> for ReckonCodec {
    type Error = ProtocolError;

    fn encode(&mut self, item: Frame, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        item.encode_version(dst, self.max_frame, self.version)
    }
}

impl Encoder<&Frame> for ReckonCodec {
    type Error = ProtocolError;

    fn encode(&mut self, item: &Frame, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        item.encode_version(dst, self.max_frame, self.version)
    }
}

/// A [`ReckonCodec`] whose decoder yields non-fatal errors as items, so a
/// `FramedRead` stream survives a malformed frame: the server answers
/// `ERROR` with the error's request id and reads on. Fatal errors (lost
/// frame boundary, i/o) still end the stream.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct TolerantCodec {
    /// The codec doing the work.
    pub inner: ReckonCodec,
}

impl TolerantCodec {
    /// A tolerant codec with this maximum frame length (clamped to 10 B ..= 16 MiB).
    pub fn with_max_frame(max_frame: u32) -> TolerantCodec {
        TolerantCodec {
            inner: ReckonCodec::with_max_frame(max_frame),
        }
    }
}

impl Decoder for TolerantCodec {
    type Item = Result<Frame, ProtocolError>;
    type Error = ProtocolError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Self::Item>, ProtocolError> {
        self.inner.decode_step(src)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Self::Item>, ProtocolError> {
        match self.decode(src)? {
            Some(item) => Ok(Some(item)),
            None if src.is_empty() => Ok(None),
            None => Err(eof_error(src)),
        }
    }
}

impl Encoder<Frame> for TolerantCodec {
    type Error = ProtocolError;

    fn encode(&mut self, item: Frame, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        self.inner.encode(item, dst)
    }
}

impl Encoder<&Frame> for TolerantCodec {
    type Error = ProtocolError;

    fn encode(&mut self, item: &Frame, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        self.inner.encode(item, dst)
    }
}
