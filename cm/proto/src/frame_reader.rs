//! A stateful frame reader for an established link: like [`FrameDecoder`], except that a frame
//! whose length field is above the limit is *skipped* instead of ending the stream. Its bytes
//! are consumed as they arrive, never buffered (the CRC is computed on the way, so a corrupt
//! one still ends the stream), and the reader yields [`Decoded::Oversize`] with its header, so
//! the session can refuse that one message (NACK `TooLarge`) and keep the link.
//!
//! Only for authenticated links: during the handshake an oversize frame is an error, and the
//! handshake codec uses [`FrameDecoder`] directly.

use crate::frame::{Flags, FrameDecoder, FrameError, Header, MsgType, HEADER_LEN};
use crate::Frame;
use bytes::{Buf, BytesMut};

/// What the reader found at the front of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A whole frame within the limit.
    Frame(Frame),
    /// A frame above the limit, skipped whole (its CRC checked); here is its header.
    Oversize(Header),
}

#[derive(Debug, Clone, Copy)]
struct Skip {
    header: Header,
    crc_expected: u32,
    crc: u32,
    remaining: u64,
}

/// The reader (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct FrameReader {
    decoder: FrameDecoder,
    skipping: Option<Skip>,
}

impl FrameReader {
    /// A reader skipping payloads above `max_payload_bytes`.
    pub fn new(max_payload_bytes: u32) -> Self {
        FrameReader {
            decoder: FrameDecoder::new(max_payload_bytes),
            skipping: None,
        }
    }

    /// The limit.
    pub fn max_payload_bytes(&self) -> u32 {
        self.decoder.max_payload_bytes()
    }

    /// Whether the reader is in the middle of skipping an oversize frame.
    pub fn is_skipping(&self) -> bool {
        self.skipping.is_some()
    }

    /// Decodes from the front of `buf`: `Ok(None)` when more bytes are needed (bytes of a
    /// skipped frame are consumed even then), a frame, an oversize frame's header once all of
    /// it went by, or an error after which the stream must be closed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded>, FrameError> {
        if self.skipping.is_none() {
            match self.decoder.decode(buf) {
                Ok(f) => return Ok(f.map(Decoded::Frame)),
                Err(FrameError::Oversize { .. }) if buf.len() < HEADER_LEN => return Ok(None),
                Err(FrameError::Oversize { .. }) => self.begin_skip(buf)?,
                Err(e) => return Err(e),
            }
        }
        let Some(skip) = self.skipping.as_mut() else {
            return Ok(None);
        };
        let n = usize::try_from(skip.remaining)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        skip.crc = crc32c::crc32c_append(skip.crc, &buf[..n]);
        buf.advance(n);
        skip.remaining -= n as u64;
        if skip.remaining > 0 {
            return Ok(None);
        }
        let done = *skip;
        self.skipping = None;
        if done.crc != done.crc_expected {
            return Err(FrameError::BadCrc {
                expected: done.crc_expected,
                actual: done.crc,
            });
        }
        Ok(Some(Decoded::Oversize(done.header)))
    }

    /// The decoder refused the length of the frame whose whole header is at the front of
    /// `buf` (every other header field already checked): consume the header, start skipping.
    fn begin_skip(&mut self, buf: &mut BytesMut) -> Result<(), FrameError> {
        let h = &buf[..HEADER_LEN];
        let type_byte = h[5];
        let msg_type = MsgType::from_u8(type_byte).ok_or(FrameError::UnknownType(type_byte))?;
        let bits = u16::from_be_bytes([h[6], h[7]]);
        let flags = Flags::from_bits(bits).ok_or(FrameError::UnknownFlags(bits))?;
        let u32_at = |i: usize| u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let u64_at = |i: usize| (u64::from(u32_at(i)) << 32) | u64::from(u32_at(i + 4));
        let header = Header {
            version: h[4],
            msg_type,
            flags,
            client: u32_at(8),
            seq: u64_at(12),
            ack: u64_at(20),
            len: u32_at(28),
        };
        let skip = Skip {
            header,
            crc_expected: u32_at(32),
            crc: crc32c::crc32c(&h[..32]),
            remaining: u64::from(header.len),
        };
        tracing::debug!(
            msg = ?header.msg_type,
            len = header.len,
            max = self.decoder.max_payload_bytes(),
            "skipping an oversize frame"
        );
        buf.advance(HEADER_LEN);
        self.skipping = Some(skip);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn data(len: usize, seq: u64) -> Frame {
        Frame::new(
            MsgType::Data,
            Flags::SYNC,
            7,
            seq,
            3,
            Bytes::from(vec![0xAB; len]),
        )
    }

    fn stream(frames: &[Frame]) -> BytesMut {
        let mut b = BytesMut::new();
        for f in frames {
            f.encode(&mut b);
        }
        b
    }

    /// Everything `bytes` decodes to when fed in chunks of `chunk` bytes.
    fn read_all(bytes: &[u8], chunk: usize) -> Result<Vec<Decoded>, FrameError> {
        let mut r = FrameReader::new(100);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for part in bytes.chunks(chunk) {
            buf.extend_from_slice(part);
            while let Some(d) = r.decode(&mut buf)? {
                out.push(d);
            }
        }
        assert!(buf.is_empty() && !r.is_skipping(), "everything consumed");
        Ok(out)
    }

    #[test]
    fn an_oversize_frame_is_skipped_whole_and_the_next_one_decodes() {
        let big = data(5000, 2);
        let bytes = stream(&[data(10, 1), big.clone(), data(20, 3)]);
        for chunk in [1, 7, 36, 100, 4096, bytes.len()] {
            let got = read_all(&bytes, chunk).unwrap();
            assert_eq!(got.len(), 3, "chunk {chunk}");
            assert_eq!(got[0], Decoded::Frame(data(10, 1)));
            assert_eq!(got[1], Decoded::Oversize(big.header), "chunk {chunk}");
            assert_eq!(got[2], Decoded::Frame(data(20, 3)));
        }
    }

    #[test]
    fn a_skipped_frame_is_never_buffered() {
        let mut r = FrameReader::new(100);
        let bytes = stream(&[data(1 << 20, 1)]);
        let mut buf = BytesMut::new();
        for part in bytes.chunks(8192) {
            buf.extend_from_slice(part);
            let _ = r.decode(&mut buf).unwrap();
            assert!(buf.len() <= 8192, "{} bytes held", buf.len());
        }
    }

    #[test]
    fn a_corrupt_oversize_frame_still_ends_the_stream() {
        let mut bytes = stream(&[data(500, 1)]);
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert!(matches!(
            read_all(&bytes, 64),
            Err(FrameError::BadCrc { .. })
        ));
    }
}
