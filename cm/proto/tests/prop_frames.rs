//! Property tests of the frame codec and the control payload decoders.
//!
//! - Any frame round-trips through encode/decode, alone or back to back, however the bytes are
//!   split into reads.
//! - Arbitrary bytes never panic the decoder; `Ok(None)` and errors consume nothing, a decoded
//!   frame consumes exactly its own bytes, and the buffer never grows beyond what the configured
//!   maximum allows, whatever the (peer-controlled) length field says.
//! - A valid frame with one byte changed (any position, any other value) never decodes to a
//!   frame: it is refused with the error the position calls for, or, only when the change made
//!   the length field larger (and still within the maximum), reported as incomplete.
//! - Every strict prefix of a valid frame is incomplete (`Ok(None)`), consuming nothing.
//! - The control payload decoders never panic on arbitrary bytes and round-trip their values.
//! - The established link's reader yields frames within its limit and the headers of frames
//!   above it, in order, however the bytes are split, never holding a skipped frame's bytes.

use bytes::BytesMut;
use peercm_cm_proto::control::{
    self, Auth, Challenge, ClientAnnounce, Hello, Identify, NackReason, NodeInfo, RefuseReason,
    TransportCap, Welcome,
};
use peercm_cm_proto::frame::{Flags, Frame, FrameDecoder, FrameError, MsgType, HEADER_LEN, MAGIC};
use peercm_cm_proto::frame_reader::{Decoded, FrameReader};
use peercm_cm_proto::testkit::{frame_from_bytes, FrameSpace, ALL_MSG_TYPES, FRAME_INPUT_BYTES};
use peercm_cm_proto::PROTOCOL_VERSION;
use proptest::prelude::*;

const MAX: u32 = 1024;

/// Frames from the shared generator (`peercm_cm_proto::testkit`), with payloads up to
/// `max_payload` bytes.
fn arb_frame(max_payload: usize) -> impl Strategy<Value = Frame> {
    prop::collection::vec(any::<u8>(), FRAME_INPUT_BYTES + max_payload)
        .prop_map(move |bytes| frame_from_bytes(&bytes, &FrameSpace::any(max_payload)))
}

/// Bytes that pass the early header checks (so the decoder reaches the length check and the
/// wait-for-more path), with an arbitrary length field and arbitrary content after it.
fn plausible_header_then_noise() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(&ALL_MSG_TYPES[..]),
        0u16..=Flags::all().bits(),
        prop::collection::vec(any::<u8>(), 20),
        prop_oneof![any::<u32>(), 0..=MAX + 64],
        prop::collection::vec(any::<u8>(), 0..(2 * MAX as usize)),
    )
        .prop_map(|(t, flags, middle, len, rest)| {
            let mut v = MAGIC.to_vec();
            v.push(PROTOCOL_VERSION);
            v.push(t as u8);
            v.extend_from_slice(&flags.to_be_bytes());
            v.extend_from_slice(&middle);
            v.extend_from_slice(&len.to_be_bytes());
            v.extend_from_slice(&rest);
            v
        })
}

/// Largest capacity the decoder may leave a buffer built from `input_len` bytes with: growth is
/// bounded by one frame of the configured maximum (which `Vec` may round up to double).
fn capacity_bound(input_len: usize) -> usize {
    input_len.max(2 * (HEADER_LEN + MAX as usize))
}

/// Decodes every frame from the front of `data`, checking the consumption rules on the way.
/// Returns the frames and how decoding stopped (`None` = needs more input).
fn decode_all(data: &[u8]) -> Result<(Vec<Frame>, Option<FrameError>), TestCaseError> {
    let d = FrameDecoder::new(MAX);
    let mut buf = BytesMut::from(data);
    let mut frames = Vec::new();
    let mut offset = 0;
    loop {
        let before = buf.len();
        let res = d.decode(&mut buf);
        prop_assert!(
            buf.capacity() <= capacity_bound(data.len()),
            "capacity {} for {} input bytes",
            buf.capacity(),
            data.len()
        );
        match res {
            Ok(Some(f)) => {
                let consumed = before - buf.len();
                prop_assert_eq!(consumed, f.encoded_len());
                prop_assert!(f.payload.len() <= MAX as usize);
                prop_assert_eq!(f.header.len as usize, f.payload.len());
                prop_assert_eq!(&f.to_bytes()[..], &data[offset..offset + consumed]);
                offset += consumed;
                frames.push(f);
            }
            Ok(None) => {
                prop_assert_eq!(&buf[..], &data[offset..], "Ok(None) consumed input");
                return Ok((frames, None));
            }
            Err(e) => {
                prop_assert_eq!(&buf[..], &data[offset..], "an error consumed input");
                return Ok((frames, Some(e)));
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The established link's reader (item 2): frames within the limit decode as frames,
    /// frames above it as their header alone, in order, however the bytes are split, and a
    /// skipped frame's bytes are never held (the buffer never exceeds one read plus the
    /// largest accepted frame).
    #[test]
    fn the_link_reader_skips_oversize_frames_however_split(
        frames in prop::collection::vec(arb_frame(300), 1..8),
        limit in 0u32..300,
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let mut wire = BytesMut::new();
        for f in &frames {
            f.encode(&mut wire);
        }
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
        points.push(0);
        points.push(wire.len());
        points.sort_unstable();
        let mut reader = FrameReader::new(limit);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for w in points.windows(2) {
            buf.extend_from_slice(&wire[w[0]..w[1]]);
            while let Some(d) = reader.decode(&mut buf).map_err(|e| TestCaseError::fail(e.to_string()))? {
                got.push(d);
            }
            prop_assert!(buf.len() <= (w[1] - w[0]) + HEADER_LEN + limit as usize);
        }
        let want: Vec<Decoded> = frames
            .iter()
            .map(|f| {
                if f.payload.len() > limit as usize {
                    Decoded::Oversize(f.header)
                } else {
                    Decoded::Frame(f.clone())
                }
            })
            .collect();
        prop_assert_eq!(got, want);
        prop_assert!(buf.is_empty() && !reader.is_skipping());
    }

    #[test]
    fn frame_round_trips(f in arb_frame(MAX as usize)) {
        let bytes = f.to_bytes();
        prop_assert_eq!(bytes.len(), f.encoded_len());
        let mut buf = BytesMut::from(&bytes[..]);
        let got = FrameDecoder::new(MAX).decode(&mut buf);
        prop_assert_eq!(got, Ok(Some(f)));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn frames_back_to_back_round_trip_however_split(
        frames in prop::collection::vec(arb_frame(200), 1..8),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let mut wire = BytesMut::new();
        for f in &frames {
            f.encode(&mut wire);
        }
        // Feed the bytes in reads split at arbitrary points.
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
        points.push(0);
        points.push(wire.len());
        points.sort_unstable();
        points.dedup();
        let d = FrameDecoder::new(MAX);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for w in points.windows(2) {
            buf.extend_from_slice(&wire[w[0]..w[1]]);
            while let Some(f) = d.decode(&mut buf).map_err(|e| TestCaseError::fail(e.to_string()))? {
                got.push(f);
            }
        }
        prop_assert_eq!(got, frames);
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn random_bytes_never_panic_nor_overconsume(data in prop::collection::vec(any::<u8>(), 0..600)) {
        decode_all(&data)?;
    }

    #[test]
    fn hostile_length_fields_are_bounded(data in plausible_header_then_noise()) {
        let (frames, end) = decode_all(&data)?;
        let len = u32::from_be_bytes([data[28], data[29], data[30], data[31]]);
        if len > MAX {
            prop_assert!(frames.is_empty());
            prop_assert_eq!(end, Some(FrameError::Oversize { len, max: MAX }));
        } else if data.len() < HEADER_LEN + len as usize {
            prop_assert!(frames.is_empty());
            prop_assert_eq!(end, None);
        } else {
            // Complete but (almost surely) with a wrong CRC; either way nothing panicked and
            // decode_all checked consumption.
            prop_assert!(frames.len() <= 1 + data.len() / HEADER_LEN);
        }
    }

    #[test]
    fn every_strict_prefix_is_incomplete(f in arb_frame(300), cut in any::<prop::sample::Index>()) {
        let bytes = f.to_bytes();
        let cut = cut.index(bytes.len());
        let mut buf = BytesMut::from(&bytes[..cut]);
        prop_assert_eq!(FrameDecoder::new(MAX).decode(&mut buf), Ok(None));
        prop_assert_eq!(&buf[..], &bytes[..cut]);
    }

    #[test]
    fn one_changed_byte_never_decodes(
        f in arb_frame(300),
        pos in any::<prop::sample::Index>(),
        delta in 1u8..=255,
    ) {
        let original = f.to_bytes();
        let pos = pos.index(original.len());
        let mut bytes = original.to_vec();
        let old = bytes[pos];
        let new = old.wrapping_add(delta); // any value but the original
        bytes[pos] = new;
        let mut buf = BytesMut::from(&bytes[..]);
        let res = FrameDecoder::new(MAX).decode(&mut buf);
        prop_assert!(!matches!(res, Ok(Some(_))), "mutated frame decoded: {:?}", res);
        prop_assert_eq!(&buf[..], &bytes[..], "nothing consumed on refusal");
        let payload_len = f.payload.len() as u32;
        let new_len = u32::from_be_bytes([bytes[28], bytes[29], bytes[30], bytes[31]]);
        let crc = || matches!(res, Err(FrameError::BadCrc { .. }));
        match pos {
            0..=3 => prop_assert!(matches!(res, Err(FrameError::BadMagic { .. })), "{:?}", res),
            4 => prop_assert_eq!(
                res,
                Err(FrameError::UnsupportedVersion { peer: new, ours: PROTOCOL_VERSION })
            ),
            5 if MsgType::from_u8(new).is_none() => {
                prop_assert_eq!(res, Err(FrameError::UnknownType(new)))
            }
            6 | 7 => {
                let bits = u16::from_be_bytes([bytes[6], bytes[7]]);
                if Flags::from_bits(bits).is_none() {
                    prop_assert_eq!(res, Err(FrameError::UnknownFlags(bits)));
                } else {
                    prop_assert!(crc(), "{:?}", res);
                }
            }
            28..=31 if new_len > MAX => {
                prop_assert_eq!(res, Err(FrameError::Oversize { len: new_len, max: MAX }))
            }
            // A larger length within the maximum: the frame now looks incomplete. Nothing is
            // delivered; on a stream the next bytes complete it and the CRC refuses it.
            28..=31 if new_len > payload_len => prop_assert_eq!(res, Ok(None)),
            // Everything else is covered by the CRC, which catches every error burst of up to
            // 32 bits (and, when the length shrank, a shorter frame whose CRC cannot match but
            // by a 2^-32 accident).
            _ => prop_assert!(crc(), "{:?}", res),
        }
    }

    #[test]
    fn control_decoders_never_panic(data in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = control::decode::<Hello>("HELLO", &data);
        let _ = control::decode::<Challenge>("CHALLENGE", &data);
        let _ = control::decode::<Auth>("AUTH", &data);
        let _ = control::decode::<Welcome>("WELCOME", &data);
        let _ = control::decode::<Identify>("IDENTIFY", &data);
        let _ = control::decode::<RefuseReason>("REFUSE", &data);
        let _ = control::decode::<ClientAnnounce>("CLIENT-UP", &data);
        let _ = control::decode::<String>("CLIENT-DOWN", &data);
        if let Ok(n) = control::decode::<NodeInfo>("NODE", &data) {
            let _ = n.validate();
            let again: NodeInfo = control::decode("NODE", &control::encode(&n))
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(again, n);
        }
        if let Ok(code) = control::decode_code(&data) {
            prop_assert_eq!(data.len(), 4);
            prop_assert_eq!(control::encode_code(code).to_vec(), data.clone());
        }
        if let Ok((reason, id)) = control::decode_nack(&data) {
            prop_assert_eq!(control::encode_nack(reason, id).to_vec(), data.clone());
        }
    }

    #[test]
    fn control_payloads_round_trip(
        name in "[A-Za-z0-9_.-]{1,64}",
        node_id in "[A-Za-z0-9_.-]{1,64}",
        nonce in any::<[u8; 32]>(),
        proof in any::<[u8; 32]>(),
        id in any::<u32>(),
        window in any::<u32>(),
        instance in any::<u64>(),
        connecting in any::<bool>(),
        code in any::<i32>(),
        reason in 1u8..=6,
        gid in any::<[u8; 16]>(),
    ) {
        let announce = ClientAnnounce { name: name.clone(), id, recv_window: window, connecting };
        let node = NodeInfo {
            node_id,
            instance,
            capabilities: vec![
                TransportCap::Tcp,
                TransportCap::Verbs { device: name.clone(), port: 1, gid, capacity_mbits_per_s: window },
            ],
            max_payload_bytes: window.max(1),
        };
        prop_assert!(node.validate().is_ok());
        let hello = Hello { cluster_id: name.clone() };
        let challenge = Challenge { nonce };
        let auth = Auth { nonce, proof };
        let welcome = Welcome { proof, node: node.clone() };
        let identify = Identify { node: node.clone() };
        let rt = |e: control::ControlError| TestCaseError::fail(e.to_string());
        prop_assert_eq!(control::decode::<Hello>("H", &control::encode(&hello)).map_err(rt)?, hello);
        prop_assert_eq!(
            control::decode::<Challenge>("C", &control::encode(&challenge)).map_err(rt)?,
            challenge
        );
        prop_assert_eq!(control::decode::<Auth>("A", &control::encode(&auth)).map_err(rt)?, auth);
        prop_assert_eq!(
            control::decode::<Welcome>("W", &control::encode(&welcome)).map_err(rt)?,
            welcome
        );
        prop_assert_eq!(
            control::decode::<Identify>("I", &control::encode(&identify)).map_err(rt)?,
            identify
        );
        prop_assert_eq!(
            control::decode::<ClientAnnounce>("U", &control::encode(&announce)).map_err(rt)?,
            announce
        );
        prop_assert_eq!(control::decode::<String>("D", &control::encode(&name)).map_err(rt)?, name);
        prop_assert_eq!(control::decode_code(&control::encode_code(code)), Ok(code));
        let reason = NackReason::from_u8(reason).ok_or_else(|| TestCaseError::fail("reason"))?;
        prop_assert_eq!(control::decode_nack(&control::encode_nack(reason, id)), Ok((reason, id)));
    }
}
