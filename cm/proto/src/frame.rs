//! The peercm frame: a fixed 36-byte header followed by a payload, protected by CRC32C.
//!
//! ```text
//! offset size field
//!  0     4    magic  "PCMF"
//!  4     1    protocol version (this build: 2)
//!  5     1    message type (see [`MsgType`])
//!  6     2    flags (see [`Flags`])
//!  8     4    destination client id (0 = the link / session itself)
//! 12     8    sequence number (per client and direction, starts at 1)
//! 20     8    cumulative ack (highest in-order sequence received on the reverse stream)
//! 28     4    payload length in bytes
//! 32     4    CRC32C over bytes 0..32 and the payload
//! 36     n    payload
//! ```
//!
//! All integers are big-endian. Decoding never panics, never trusts the length field beyond the
//! configured maximum and never allocates before the whole frame has arrived and its size has been
//! checked against that maximum.

use bitflags::bitflags;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use thiserror::Error;

/// The four magic bytes that start every frame.
pub const MAGIC: [u8; 4] = *b"PCMF";
/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u8 = 2;
/// Size of the fixed header in bytes.
pub const HEADER_LEN: usize = 36;
/// Most buffer space the decoder reserves at a time for a frame still arriving. The length field
/// is only the peer's claim: memory follows the bytes that actually arrive, in steps of this.
pub const RESERVE_STEP_BYTES: usize = 64 * 1024;
/// Default upper bound on a payload (1 MiB); a length field above the bound is a protocol error.
pub const DEFAULT_MAX_PAYLOAD_BYTES: u32 = 1 << 20;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MsgType {
    /// Handshake 1 (dialer -> acceptor): version (in the header) and cluster id.
    Hello = 1,
    /// Handshake 2 (acceptor -> dialer): the acceptor's nonce.
    Challenge = 2,
    /// Handshake 3 (dialer -> acceptor): the dialer's nonce and its proof of the secret.
    Auth = 3,
    /// Handshake 4 (acceptor -> dialer): the acceptor's proof and node information.
    Welcome = 4,
    /// Handshake refused (only sent for a version mismatch; other refusals just close).
    Refuse = 5,
    /// Handshake 5 (dialer -> acceptor): the dialer's node information.
    Identify = 6,
    /// Client data.
    Data = 16,
    /// Acknowledgment: cumulative receipt, or one message's return code from the peer client.
    Ack = 17,
    /// Negative acknowledgment of one message.
    Nack = 18,
    /// Out-of-band reset of all sequence state of the session.
    Reset = 19,
    /// Answer to [`MsgType::Reset`].
    ResetAck = 20,
    /// The sender's side of the session is ready for client traffic.
    Ready = 21,
    /// Link liveness probe.
    Heartbeat = 22,
    /// A client was registered (and is reachable) on the sending node.
    ClientUp = 23,
    /// A client was closed on the sending node.
    ClientDown = 24,
    /// Flow-control credit for one client stream.
    Flow = 25,
    /// Transport setup between the managers (RDMA endpoint offers and answers): an opaque,
    /// bounded payload the session hands to the runtime unread.
    Transport = 26,
    /// A client region advertised or released (postcard `RegionMsg`, see
    /// [`crate::region`]): session control, ordered with DATA.
    Region = 27,
    /// A one-sided write into one of the receiver's client regions: an entry of the client's
    /// send stream (sequence numbers as DATA), payload [`crate::region::WriteFrame`]; over RDMA
    /// only the 12-byte write header (the bytes went ahead by RDMA WRITE on the same queue pair).
    Write = 28,
}

impl MsgType {
    /// Parses the type byte.
    pub fn from_u8(v: u8) -> Option<Self> {
        use MsgType::*;
        Some(match v {
            1 => Hello,
            2 => Challenge,
            3 => Auth,
            4 => Welcome,
            5 => Refuse,
            6 => Identify,
            16 => Data,
            17 => Ack,
            18 => Nack,
            19 => Reset,
            20 => ResetAck,
            21 => Ready,
            22 => Heartbeat,
            23 => ClientUp,
            24 => ClientDown,
            25 => Flow,
            26 => Transport,
            27 => Region,
            28 => Write,
            _ => return None,
        })
    }
}

bitflags! {
    /// Per-frame flags.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct Flags: u16 {
        /// DATA: the receiving client must process the message and reply with a return code.
        const SYNC = 1 << 0;
        /// DATA: this is a retransmission (replay after a link loss or migration).
        const REPLAY = 1 << 1;
        /// ACK: a cumulative receipt ack (no return code), `seq` = highest in-order seq received.
        const CUMULATIVE = 1 << 2;
        /// HEARTBEAT from an acceptor: it has no session in the epoch `seq` (it lost every
        /// link on its side); a dialer still up in that epoch resets.
        const RESET_REQUEST = 1 << 3;
        /// HEARTBEAT on a new RDMA rail link, outside the session: the dialer's probe, and the
        /// acceptor's answer over the same link. A rail link counts as up only after this
        /// round trip (a black-holed rail never does).
        const LINK_PROBE = 1 << 4;
    }
}

/// The decoded fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Protocol version of the sender.
    pub version: u8,
    /// Message type.
    pub msg_type: MsgType,
    /// Flags.
    pub flags: Flags,
    /// Destination client id on the receiving node (0 for link/session messages).
    pub client: u32,
    /// Sequence number (meaning depends on the type).
    pub seq: u64,
    /// Cumulative ack for the reverse stream of `client`.
    pub ack: u64,
    /// Payload length.
    pub len: u32,
}

/// A whole frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The header (its `len` always equals `payload.len()` for frames built by [`Frame::new`]).
    pub header: Header,
    /// The payload.
    pub payload: Bytes,
}

/// Why bytes could not be decoded into a frame. Every variant is the peer's fault.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The first four bytes are not `PCMF`: the peer is not speaking peercm (or the stream is
    /// desynchronised).
    #[error("bad magic {found:02x?}: the peer is not speaking the peercm protocol")]
    BadMagic {
        /// The bytes found.
        found: [u8; 4],
    },
    /// The peer speaks another protocol version.
    #[error("peer speaks protocol v{peer}, this node speaks v{ours}: upgrade one side")]
    UnsupportedVersion {
        /// The peer's version.
        peer: u8,
        /// Ours.
        ours: u8,
    },
    /// The type byte is not a known message type.
    #[error("unknown message type {0}")]
    UnknownType(u8),
    /// Unknown flag bits are set.
    #[error("unknown flag bits {0:#06x}")]
    UnknownFlags(u16),
    /// The length field exceeds the configured maximum.
    #[error("payload length {len} exceeds the maximum of {max} bytes")]
    Oversize {
        /// Claimed length.
        len: u32,
        /// Configured maximum.
        max: u32,
    },
    /// The CRC does not match the contents.
    #[error("CRC32C mismatch: frame says {expected:#010x}, contents give {actual:#010x}")]
    BadCrc {
        /// CRC carried in the frame.
        expected: u32,
        /// CRC computed over the received bytes.
        actual: u32,
    },
}

impl Frame {
    /// Builds a frame of this build's version; `header.len` is set from the payload.
    pub fn new(
        msg_type: MsgType,
        flags: Flags,
        client: u32,
        seq: u64,
        ack: u64,
        payload: Bytes,
    ) -> Self {
        let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        Frame {
            header: Header {
                version: PROTOCOL_VERSION,
                msg_type,
                flags,
                client,
                seq,
                ack,
                len,
            },
            payload,
        }
    }

    /// A frame with no client, sequence or payload.
    pub fn control(msg_type: MsgType, payload: Bytes) -> Self {
        Frame::new(msg_type, Flags::empty(), 0, 0, 0, payload)
    }

    /// Total encoded size.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }

    /// Appends the encoded frame to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        dst.reserve(self.encoded_len());
        let start = dst.len();
        dst.put_slice(&MAGIC);
        dst.put_u8(self.header.version);
        dst.put_u8(self.header.msg_type as u8);
        dst.put_u16(self.header.flags.bits());
        dst.put_u32(self.header.client);
        dst.put_u64(self.header.seq);
        dst.put_u64(self.header.ack);
        dst.put_u32(self.payload.len() as u32);
        let crc = crc32c::crc32c_append(crc32c::crc32c(&dst[start..start + 32]), &self.payload);
        dst.put_u32(crc);
        dst.put_slice(&self.payload);
    }

    /// Encodes into a fresh buffer.
    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(self.encoded_len());
        self.encode(&mut b);
        b.freeze()
    }
}

/// A stateless, bounded frame decoder.
#[derive(Debug, Clone, Copy)]
pub struct FrameDecoder {
    max_payload_bytes: u32,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        FrameDecoder::new(DEFAULT_MAX_PAYLOAD_BYTES)
    }
}

impl FrameDecoder {
    /// A decoder refusing payloads above `max_payload_bytes`.
    pub fn new(max_payload_bytes: u32) -> Self {
        FrameDecoder { max_payload_bytes }
    }

    /// The configured bound.
    pub fn max_payload_bytes(&self) -> u32 {
        self.max_payload_bytes
    }

    /// Checks as much of the header as is present without consuming anything.
    ///
    /// Errors are reported as early as possible (a wrong magic after 4 bytes, a wrong version after
    /// 5) so that a node talking to a non-peercm peer fails fast instead of waiting for 36 bytes.
    fn check_prefix(&self, buf: &[u8]) -> Result<(), FrameError> {
        if buf.len() >= 4 && buf[..4] != MAGIC {
            let mut found = [0u8; 4];
            found.copy_from_slice(&buf[..4]);
            return Err(FrameError::BadMagic { found });
        }
        if buf.len() >= 5 && buf[4] != PROTOCOL_VERSION {
            return Err(FrameError::UnsupportedVersion {
                peer: buf[4],
                ours: PROTOCOL_VERSION,
            });
        }
        if buf.len() >= 6 && MsgType::from_u8(buf[5]).is_none() {
            return Err(FrameError::UnknownType(buf[5]));
        }
        if buf.len() >= 8 {
            let bits = u16::from_be_bytes([buf[6], buf[7]]);
            if Flags::from_bits(bits).is_none() {
                return Err(FrameError::UnknownFlags(bits));
            }
        }
        if buf.len() >= 32 {
            let len = u32::from_be_bytes([buf[28], buf[29], buf[30], buf[31]]);
            if len > self.max_payload_bytes {
                return Err(FrameError::Oversize {
                    len,
                    max: self.max_payload_bytes,
                });
            }
        }
        Ok(())
    }

    /// Decodes one frame from the front of `buf`.
    ///
    /// Returns `Ok(None)` when more bytes are needed (nothing consumed), `Ok(Some(frame))` with
    /// the frame's bytes consumed, or an error (the stream must then be closed: after a framing
    /// error there is no way to find the next frame boundary).
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        self.check_prefix(buf)?;
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let len = u32::from_be_bytes([buf[28], buf[29], buf[30], buf[31]]) as usize;
        let total = HEADER_LEN + len;
        if buf.len() < total {
            buf.reserve((total - buf.len()).min(RESERVE_STEP_BYTES));
            return Ok(None);
        }
        let expected = u32::from_be_bytes([buf[32], buf[33], buf[34], buf[35]]);
        let actual = crc32c::crc32c_append(crc32c::crc32c(&buf[..32]), &buf[HEADER_LEN..total]);
        if expected != actual {
            return Err(FrameError::BadCrc { expected, actual });
        }
        let mut head = buf.split_to(total);
        head.advance(4);
        let version = head.get_u8();
        let type_byte = head.get_u8();
        let flags_bits = head.get_u16();
        // check_prefix validated both; map defensively instead of unwrapping.
        let msg_type = MsgType::from_u8(type_byte).ok_or(FrameError::UnknownType(type_byte))?;
        let flags = Flags::from_bits(flags_bits).ok_or(FrameError::UnknownFlags(flags_bits))?;
        let client = head.get_u32();
        let seq = head.get_u64();
        let ack = head.get_u64();
        let len = head.get_u32();
        head.advance(4);
        Ok(Some(Frame {
            header: Header {
                version,
                msg_type,
                flags,
                client,
                seq,
                ack,
                len,
            },
            payload: head.freeze(),
        }))
    }

    /// Decodes exactly one frame from a complete byte slice (used by tests and fuzzing).
    pub fn decode_slice(&self, bytes: &[u8]) -> Result<Option<Frame>, FrameError> {
        let mut buf = BytesMut::from(bytes);
        self.decode(&mut buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Frame {
        Frame::new(
            MsgType::Data,
            Flags::SYNC,
            7,
            42,
            41,
            Bytes::from_static(b"hello"),
        )
    }

    #[test]
    fn round_trip() {
        let f = sample();
        let mut buf = BytesMut::new();
        f.encode(&mut buf);
        assert_eq!(buf.len(), HEADER_LEN + 5);
        let got = FrameDecoder::default().decode(&mut buf).unwrap().unwrap();
        assert_eq!(got, f);
        assert!(buf.is_empty());
    }

    #[test]
    fn partial_input_needs_more() {
        let bytes = sample().to_bytes();
        let d = FrameDecoder::default();
        for cut in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..cut]);
            assert_eq!(d.decode(&mut buf), Ok(None), "cut at {cut}");
            assert_eq!(buf.len(), cut, "nothing consumed on partial input");
        }
    }

    #[test]
    fn bad_magic_detected_after_four_bytes() {
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1"[..]);
        assert!(matches!(
            FrameDecoder::default().decode(&mut buf),
            Err(FrameError::BadMagic { .. })
        ));
    }

    #[test]
    fn wrong_version_names_both_versions() {
        let mut bytes = BytesMut::from(&sample().to_bytes()[..]);
        bytes[4] = 9;
        let err = FrameDecoder::default().decode(&mut bytes).unwrap_err();
        assert_eq!(err, FrameError::UnsupportedVersion { peer: 9, ours: 2 });
        let text = err.to_string();
        assert!(text.contains("v9") && text.contains("v2"), "{text}");
    }

    /// Item 5: a header claiming a large payload reserves at most one step, not the claim.
    #[test]
    fn a_length_claim_reserves_one_step_not_the_claim() {
        let mut bytes = BytesMut::from(&sample().to_bytes()[..32]);
        bytes[28..32].copy_from_slice(&(8u32 << 20).to_be_bytes());
        bytes.extend_from_slice(&[0; 4]);
        let before = bytes.capacity();
        assert!(FrameDecoder::new(16 << 20)
            .decode(&mut bytes)
            .unwrap()
            .is_none());
        assert!(
            bytes.capacity() <= before + RESERVE_STEP_BYTES,
            "{}",
            bytes.capacity()
        );
    }

    #[test]
    fn oversize_rejected_before_payload_arrives() {
        let mut bytes = BytesMut::from(&sample().to_bytes()[..32]);
        bytes[28..32].copy_from_slice(&u32::MAX.to_be_bytes());
        let err = FrameDecoder::new(1024).decode(&mut bytes).unwrap_err();
        assert_eq!(
            err,
            FrameError::Oversize {
                len: u32::MAX,
                max: 1024
            }
        );
    }

    #[test]
    fn corrupted_payload_fails_crc() {
        let mut bytes = BytesMut::from(&sample().to_bytes()[..]);
        let last = bytes.len() - 1;
        bytes[last] ^= 0x55;
        assert!(matches!(
            FrameDecoder::default().decode(&mut bytes),
            Err(FrameError::BadCrc { .. })
        ));
    }

    #[test]
    fn unknown_type_and_flags_rejected() {
        let mut t = BytesMut::from(&sample().to_bytes()[..]);
        t[5] = 200;
        assert_eq!(
            FrameDecoder::default().decode(&mut t),
            Err(FrameError::UnknownType(200))
        );
        let mut f = BytesMut::from(&sample().to_bytes()[..]);
        f[6] = 0x80;
        assert!(matches!(
            FrameDecoder::default().decode(&mut f),
            Err(FrameError::UnknownFlags(_))
        ));
    }

    #[test]
    fn two_frames_back_to_back() {
        let mut buf = BytesMut::new();
        sample().encode(&mut buf);
        Frame::control(MsgType::Heartbeat, Bytes::new()).encode(&mut buf);
        let d = FrameDecoder::default();
        assert_eq!(
            d.decode(&mut buf).unwrap().unwrap().header.msg_type,
            MsgType::Data
        );
        assert_eq!(
            d.decode(&mut buf).unwrap().unwrap().header.msg_type,
            MsgType::Heartbeat
        );
        assert_eq!(d.decode(&mut buf), Ok(None));
    }
}
