//! A tokio-util codec for peercm frames. The decoding rules (magic, version, bounds, CRC) live in
//! `peercm_cm_proto::frame`; this only adapts them to `Framed`.

use bytes::BytesMut;
use peercm_cm_proto::control::MAX_HANDSHAKE_PAYLOAD_BYTES;
use peercm_cm_proto::frame::{FrameDecoder, FrameError, HEADER_LEN};
use peercm_cm_proto::Frame;
use thiserror::Error;
use tokio_util::codec::{Decoder, Encoder};

/// Reading or writing frames failed. Each message carries its cause, so none is also a
/// `source()` (the cause would print twice in a chain).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The bytes received are not a valid frame (the peer's fault); the link must close.
    #[error("invalid frame from peer: {0}")]
    Frame(FrameError),
    /// The socket failed.
    #[error("socket error: {0}")]
    Io(std::io::Error),
    /// The peer closed the connection after sending part of a frame: `have` bytes of a frame
    /// that needs `need` (at least a header's worth when the header itself is cut short).
    #[error("peer closed the connection in the middle of a frame ({have} of {need} bytes)")]
    Truncated {
        /// Bytes of the unfinished frame received.
        have: usize,
        /// Bytes the frame needs.
        need: usize,
    },
}

impl From<FrameError> for CodecError {
    fn from(e: FrameError) -> Self {
        CodecError::Frame(e)
    }
}

impl From<std::io::Error> for CodecError {
    fn from(e: std::io::Error) -> Self {
        CodecError::Io(e)
    }
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

    /// A codec for the handshake: payloads above [`MAX_HANDSHAKE_PAYLOAD_BYTES`] (64 KiB) are
    /// refused from the header, whatever the session's limit, so an unauthenticated
    /// peer cannot make this node hold more than that per connection.
    pub fn handshake() -> Self {
        FrameCodec::new(MAX_HANDSHAKE_PAYLOAD_BYTES as u32)
    }

    /// The largest payload accepted.
    pub fn max_payload_bytes(&self) -> u32 {
        self.decoder.max_payload_bytes()
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        Ok(self.decoder.decode(src)?)
    }

    /// At end of stream: a whole frame still buffered is delivered, a part of one is a
    /// [`CodecError::Truncated`] (instead of tokio-util's "bytes remaining on stream").
    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        if let Some(frame) = self.decode(buf)? {
            return Ok(Some(frame));
        }
        if buf.is_empty() {
            return Ok(None);
        }
        let need = if buf.len() >= 32 {
            HEADER_LEN + u32::from_be_bytes([buf[28], buf[29], buf[30], buf[31]]) as usize
        } else {
            HEADER_LEN
        };
        Err(CodecError::Truncated {
            have: buf.len(),
            need,
        })
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = CodecError;

    fn encode(&mut self, item: Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        item.encode(dst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use peercm_cm_proto::frame::MsgType;

    /// Item 13: a peer closing mid-frame is reported as such, with the byte counts, and not as
    /// tokio-util's "bytes remaining on stream".
    #[test]
    fn eof_mid_frame_says_what_happened() {
        let mut full = BytesMut::new();
        Frame::control(MsgType::Heartbeat, Bytes::from_static(&[7u8; 100])).encode(&mut full);
        let mut codec = FrameCodec::default();
        let mut cut = BytesMut::from(&full[..50]);
        let e = codec.decode_eof(&mut cut).unwrap_err().to_string();
        assert_eq!(
            e,
            "peer closed the connection in the middle of a frame (50 of 136 bytes)"
        );
        let mut short = BytesMut::from(&full[..10]);
        let e = codec.decode_eof(&mut short).unwrap_err().to_string();
        assert_eq!(
            e,
            "peer closed the connection in the middle of a frame (10 of 36 bytes)"
        );
        let mut whole = full.clone();
        assert!(codec.decode_eof(&mut whole).unwrap().is_some());
        assert!(codec.decode_eof(&mut whole).unwrap().is_none());
    }
}
