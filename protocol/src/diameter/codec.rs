//! A `tokio_util` codec that cuts a byte stream into whole Diameter
//! messages (as `BytesMut`, header included) and writes encoded ones.

use super::{frame_length, FrameError, DEFAULT_MAX_MESSAGE};
use bytes::{Buf, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Frames Diameter messages; refuses a bad version or length as soon as
/// the first four bytes of a message are in, before buffering it.
#[derive(Clone, Debug)]
pub struct DiameterCodec {
    max: usize,
}

impl Default for DiameterCodec {
    fn default() -> Self {
        DiameterCodec::new(DEFAULT_MAX_MESSAGE)
    }
}

impl DiameterCodec {
    /// A codec accepting messages up to `max` bytes.
    pub fn new(max: usize) -> DiameterCodec {
        DiameterCodec { max }
    }
}

/// Why the stream cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The bytes are not Diameter framing.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Decoder for DiameterCodec {
    type Item = BytesMut;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, CodecError> {
        match frame_length(src, self.max)? {
            Some(len) if src.len() >= len => Ok(Some(src.split_to(len))),
            Some(len) => {
                src.reserve(len - src.len());
                Ok(None)
            }
            None => Ok(None),
        }
    }
}

impl Encoder<BytesMut> for DiameterCodec {
    type Error = CodecError;

    fn encode(&mut self, item: BytesMut, dst: &mut BytesMut) -> Result<(), CodecError> {
        dst.extend_from_slice(item.chunk());
        Ok(())
    }
}
