//! A tokio-util codec for peercm frames. The decoding rules (magic, version, bounds, CRC) live in
//! `peercm_cm_proto::frame`; this only adapts them to `Framed`.

use bytes::BytesMut;
use peercm_cm_proto::frame::{FrameDecoder, FrameError};
use peercm_cm_proto::Frame;
use thiserror::Error;
use tokio_util::codec::{Decoder, Encoder};

/// Reading or writing frames failed.
#[derive(Debug, Error)]
pub enum CodecError {
    /// The bytes received are not a valid frame (the peer's fault); the link must close.
    #[error("invalid frame from peer: {0}")]
    Frame(#[from] FrameError),
    /// The socket failed.
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
}

/// Frames on a byte stream.
#[derive(Debug, Clone, Copy, Default)]
pub struct FrameCodec {
    decoder: FrameDecoder,
}

impl FrameCodec {
    /// A codec refusing payloads above `max_payload_bytes`.
    pub fn new(max_payload_bytes: u32) -> Self {
        FrameCodec {
            decoder: FrameDecoder::new(max_payload_bytes),
        }
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        Ok(self.decoder.decode(src)?)
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = CodecError;

    fn encode(&mut self, item: Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        item.encode(dst);
        Ok(())
    }
}
