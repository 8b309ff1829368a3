//! Test support, behind the `testkit` cargo feature (off by default; the product never compiles
//! it): the one generator of arbitrary frames that the property tests and the fuzz targets
//! share, and the lists of message types and NACK reasons it draws from.
//!
//! Frames are read from unstructured bytes with the `arbitrary` crate's [`Unstructured`] (a
//! fuzzer's input, or bytes a proptest strategy generated). Once the bytes run out, the rest
//! reads as zeros, so every input makes a frame.
//!
//! ```
//! use peercm_cm_proto::testkit::{arbitrary_frame, frame_from_bytes, FrameSpace, Unstructured};
//!
//! let space = FrameSpace::any(64);
//! let f = frame_from_bytes(&[7; 100], &space);
//! assert!(f.payload.len() <= 64);
//! let mut u = Unstructured::new(&[1, 2, 3]);
//! assert!(arbitrary_frame(&mut u, &space).is_ok());
//! ```

pub use arbitrary::{self, Unstructured};

use crate::control::{self, ClientAnnounce, NackReason};
use crate::frame::{Flags, Frame, MsgType};
use bytes::Bytes;

/// Every message type, in wire order.
pub const ALL_MSG_TYPES: [MsgType; 19] = [
    MsgType::Hello,
    MsgType::Challenge,
    MsgType::Auth,
    MsgType::Welcome,
    MsgType::Refuse,
    MsgType::Identify,
    MsgType::Data,
    MsgType::Ack,
    MsgType::Nack,
    MsgType::Reset,
    MsgType::ResetAck,
    MsgType::Ready,
    MsgType::Heartbeat,
    MsgType::ClientUp,
    MsgType::ClientDown,
    MsgType::Flow,
    MsgType::Transport,
    MsgType::Region,
    MsgType::Write,
];

/// Every NACK reason.
pub const ALL_NACK_REASONS: [NackReason; 10] = [
    NackReason::ConnectionLost,
    NackReason::UnknownClient,
    NackReason::Closed,
    NackReason::PeerRestarted,
    NackReason::Timeout,
    NackReason::TooLarge,
    NackReason::OutOfBounds,
    NackReason::UnknownRegion,
    NackReason::RegionReleased,
    NackReason::Fenced,
];

/// Bytes that, on top of `max_payload`, always suffice for [`frame_from_bytes`] to draw every
/// field of a frame from real input rather than from the zeros past its end.
pub const FRAME_INPUT_BYTES: usize = 64;

/// The message type byte `b` selects (every type for some byte: `b` modulo the type count).
pub fn msg_type_from_byte(b: u8) -> MsgType {
    ALL_MSG_TYPES[usize::from(b) % ALL_MSG_TYPES.len()]
}

/// What generated frames may refer to, so that a fair share of them reaches live state in the
/// code under test.
#[derive(Debug, Clone, Copy)]
pub struct FrameSpace<'a> {
    /// Largest payload generated.
    pub max_payload: usize,
    /// Client ids the receiver knows: one frame in four is addressed to one of them.
    pub client_ids: &'a [u32],
    /// Client names for CLIENT-UP and CLIENT-DOWN payloads (an invalid one may be among
    /// them). Empty: arbitrary strings.
    pub client_names: &'a [&'a str],
}

impl FrameSpace<'static> {
    /// Frames that refer to nothing in particular, with payloads up to `max_payload` bytes.
    pub const fn any(max_payload: usize) -> Self {
        FrameSpace {
            max_payload,
            client_ids: &[],
            client_names: &[],
        }
    }
}

/// A sequence-like number read from `u`: 0, `u64::MAX`, just below it, anything, a little
/// above or below `near`, or a small number.
pub fn seq_like(u: &mut Unstructured<'_>, near: u64) -> arbitrary::Result<u64> {
    Ok(match u.int_in_range(0u8..=7)? {
        0 => 0,
        1 => u64::MAX,
        2 => u64::MAX - u64::from(u.arbitrary::<u8>()?),
        3 => u.arbitrary()?,
        4 => near.wrapping_add(u64::from(u.int_in_range(0u8..=3)?)),
        5 => near.saturating_sub(u64::from(u.int_in_range(0u8..=3)?)),
        _ => u64::from(u.int_in_range(0u8..=31)?),
    })
}

/// An arbitrary frame read from `u`: any message type; any flags (unknown bits dropped); a
/// destination client that is 0, small, anything or one of `space.client_ids`; sequence and
/// ack numbers from [`seq_like`]; and a payload that is a return code, a NACK, a CLIENT-UP or
/// CLIENT-DOWN payload, or raw bytes, cut to `space.max_payload`. Fails only where `arbitrary`
/// does on malformed use, never because the bytes ran out.
pub fn arbitrary_frame(
    u: &mut Unstructured<'_>,
    space: &FrameSpace<'_>,
) -> arbitrary::Result<Frame> {
    let msg_type = *u.choose(&ALL_MSG_TYPES)?;
    let flags = Flags::from_bits_truncate(u.arbitrary()?);
    let client = match u.int_in_range(0u8..=3)? {
        0 => 0,
        1 => u.int_in_range(0u32..=4)?,
        2 => u.arbitrary()?,
        _ if space.client_ids.is_empty() => u.arbitrary()?,
        _ => *u.choose(space.client_ids)?,
    };
    let near = u64::from(u.int_in_range(0u8..=15)?);
    let seq = seq_like(u, near)?;
    let ack = seq_like(u, near)?;
    let mut payload = match u.int_in_range(0u8..=5)? {
        0 => control::encode_code(u.arbitrary()?),
        1 => control::encode_nack(*u.choose(&ALL_NACK_REASONS)?, u.int_in_range(0u32..=4)?),
        2 => control::encode(&ClientAnnounce {
            name: client_name(u, space)?,
            id: u.int_in_range(0u32..=5)?,
            recv_window: u.arbitrary()?,
            connecting: u.arbitrary()?,
        }),
        3 => control::encode(&client_name(u, space)?),
        _ => {
            let len = u.int_in_range(0..=space.max_payload)?.min(u.len());
            Bytes::copy_from_slice(u.bytes(len)?)
        }
    };
    payload.truncate(space.max_payload);
    Ok(Frame::new(msg_type, flags, client, seq, ack, payload))
}

/// The frame [`arbitrary_frame`] reads from `data` (for a proptest strategy over bytes:
/// [`FRAME_INPUT_BYTES`] + `max_payload` bytes give every field real input).
pub fn frame_from_bytes(data: &[u8], space: &FrameSpace<'_>) -> Frame {
    let mut u = Unstructured::new(data);
    match arbitrary_frame(&mut u, space) {
        Ok(f) => f,
        // Not reached (running out of bytes is not an error); an empty heartbeat keeps this
        // total.
        Err(_) => Frame::new(MsgType::Heartbeat, Flags::empty(), 0, 0, 0, Bytes::new()),
    }
}

fn client_name(u: &mut Unstructured<'_>, space: &FrameSpace<'_>) -> arbitrary::Result<String> {
    if space.client_names.is_empty() {
        u.arbitrary()
    } else {
        Ok((*u.choose(space.client_names)?).to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn testkit_lists_every_message_type_and_nack_reason() {
        let types: Vec<MsgType> = (0..=u8::MAX).filter_map(MsgType::from_u8).collect();
        assert_eq!(types, ALL_MSG_TYPES);
        let reasons: Vec<NackReason> = (0..=u8::MAX).filter_map(NackReason::from_u8).collect();
        assert_eq!(reasons, ALL_NACK_REASONS);
    }

    #[test]
    fn testkit_frames_respect_the_space_whatever_the_bytes() {
        let space = FrameSpace {
            max_payload: 8,
            client_ids: &[7],
            client_names: &["mirror"],
        };
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0u32..2000 {
            let data: Vec<u8> = (0..seed % 97)
                .map(|i| (seed.wrapping_mul(2_654_435_761).rotate_left(i) >> 7) as u8)
                .collect();
            let f = frame_from_bytes(&data, &space);
            assert!(f.payload.len() <= 8);
            assert_eq!(f.header.len as usize, f.payload.len());
            seen.insert(f.header.msg_type as u8);
        }
        assert_eq!(seen.len(), ALL_MSG_TYPES.len(), "every type generated");
        assert_eq!(
            frame_from_bytes(&[], &space).header.msg_type,
            MsgType::Hello
        );
    }
}
