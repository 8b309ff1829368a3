//! A tokio-util codec for peercm frames. The decoding rules (magic, version, bounds, CRC) live in
//! `peercm_cm_proto::frame`; this only adapts them to `Framed`.

use bytes::BytesMut;
use peercm_cm_proto::control::MAX_HANDSHAKE_PAYLOAD_BYTES;
use peercm_cm_proto::frame::{FrameDecoder, FrameError, HEADER_LEN};
use peercm_cm_proto::frame_reader::{Decoded, FrameReader};
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

/// Frames on an established link: like [`FrameCodec`], except that a frame above the limit is
/// skipped (consumed, never buffered) and yielded as [`Decoded::Oversize`], so the session can
/// refuse that one message and keep the link (see `peercm_cm_proto::frame_reader`).
#[derive(Debug, Clone, Copy)]
pub struct LinkCodec {
    reader: FrameReader,
}

impl LinkCodec {
    /// A codec skipping payloads above `max_payload_bytes`.
    pub fn new(max_payload_bytes: u32) -> Self {
        LinkCodec {
            reader: FrameReader::new(max_payload_bytes),
        }
    }
}

impl Decoder for LinkCodec {
    type Item = Decoded;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Decoded>, CodecError> {
        Ok(self.reader.decode(src)?)
    }

    /// At end of stream: as [`FrameCodec::decode_eof`]; a frame being skipped is cut short too.
    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded>, CodecError> {
        if let Some(d) = self.decode(buf)? {
            return Ok(Some(d));
        }
        if self.reader.is_skipping() {
            return Err(CodecError::Truncated {
                have: buf.len(),
                need: buf.len() + 1,
            });
        }
        FrameCodec::new(self.reader.max_payload_bytes())
            .decode_eof(buf)
            .map(|f| f.map(Decoded::Frame))
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
