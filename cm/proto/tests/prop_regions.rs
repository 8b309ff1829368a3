//! Property tests of the region messages and tables.
//!
//! - The REGION and WRITE decoders never panic on arbitrary bytes; whatever REGION payload
//!   they accept is within the bounds and re-encodes to the same bytes.
//! - A valid advertisement round-trips through encode/decode.
//! - The writer's check and the receiver's check agree on any write against the same region:
//!   both accept exactly the writes with `1 <= len` and `offset + len <= region length`, and a
//!   refused write is refused with `OutOfBounds` carrying the request.

use bytes::Bytes;
use peercm_cm_proto::ids::{ClientId, InterconnectId, PeerClientId};
use peercm_cm_proto::region::wire::WRITE_HEADER_BYTES;
use peercm_cm_proto::region::{
    LocalRegions, PartnerRegions, RailKey, RegionId, RegionInfo, RegionMsg, WriteError, WriteFrame,
    WriteRefusal, MAX_RAILS_PER_REGION, MAX_REGION_BYTES,
};
use proptest::prelude::*;

fn arb_info() -> impl Strategy<Value = RegionInfo> {
    (
        any::<u32>(),
        any::<u32>(),
        "[A-Za-z0-9_.-]{1,64}",
        1..=MAX_REGION_BYTES,
        prop::collection::btree_map(
            1u32..=64,
            (any::<u64>(), any::<u32>()),
            0..=MAX_RAILS_PER_REGION,
        ),
    )
        .prop_map(|(client, region, name, len, rails)| RegionInfo {
            client,
            region: RegionId::new(region),
            name,
            len,
            rails: rails
                .into_iter()
                .map(|(rail, (addr, rkey))| RailKey {
                    rail: InterconnectId::rail(rail),
                    addr: addr.min(u64::MAX - len),
                    rkey,
                })
                .collect(),
        })
}

/// A length near the interesting boundaries or anything.
fn arb_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..=300,
        any::<u64>(),
        (0u64..=8).prop_map(|d| u64::MAX - d)
    ]
}

proptest! {
    #[test]
    fn region_decoder_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        if let Ok(msg) = RegionMsg::decode(&bytes) {
            if let RegionMsg::Advertise(info) = &msg {
                prop_assert!(info.validate().is_ok());
            }
            prop_assert_eq!(&msg.encode()[..], &bytes[..]);
        }
    }

    #[test]
    fn write_decoder_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        match WriteFrame::decode(Bytes::from(bytes.clone())) {
            Ok(w) => {
                prop_assert!(bytes.len() > WRITE_HEADER_BYTES);
                prop_assert_eq!(&w.encode()[..], &bytes[..]);
            }
            Err(_) => prop_assert!(bytes.len() <= WRITE_HEADER_BYTES),
        }
    }

    #[test]
    fn valid_advertisements_round_trip(info in arb_info()) {
        let msg = RegionMsg::Advertise(info);
        prop_assert_eq!(RegionMsg::decode(&msg.encode()), Ok(msg));
    }

    #[test]
    fn writer_and_receiver_checks_agree(
        region_len in 1u64..=1000,
        offset in arb_u64(),
        len in arb_u64(),
    ) {
        let mut local = LocalRegions::new();
        let client = ClientId::new(1);
        let id = local.register(client, "r", region_len).unwrap();
        let mut partner = PartnerRegions::new();
        partner
            .learn(local.advert(client, id, Vec::new()).unwrap())
            .unwrap();
        let peer = PeerClientId::new(1);
        let fits = len >= 1 && offset.checked_add(len).is_some_and(|end| end <= region_len);
        let w = partner.check_write(peer, id, offset, len);
        let r = local.check_apply(client, id, offset, len);
        prop_assert_eq!(w.is_ok(), fits);
        prop_assert_eq!(r.is_ok(), fits);
        if !fits && len >= 1 {
            prop_assert_eq!(
                w.unwrap_err(),
                WriteError::OutOfBounds { offset, len, region_len }
            );
            prop_assert_eq!(r, Err(WriteRefusal::OutOfBounds));
        }
    }
}
