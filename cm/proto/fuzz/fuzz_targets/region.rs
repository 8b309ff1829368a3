//! Arbitrary bytes into the region decoders and the region tables.
//!
//! The input is split in two at its first byte: the first part goes to the REGION decoder
//! (and, when accepted, into a partner region table followed by a fence and a write check),
//! the rest to the WRITE decoder (and, when accepted, through the receiver's bounds check of
//! a small region). Checks: no panic; an accepted REGION payload is within bounds and
//! re-encodes to a payload that decodes to the same message; an accepted WRITE payload re-encodes to the same bytes; the
//! receiver never accepts a write that reaches past the region's end.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use peercm_cm_proto::ids::{ClientId, PeerClientId};
use peercm_cm_proto::region::{LocalRegions, PartnerRegions, RegionMsg, WriteFrame};

const REGION_LEN: u64 = 4096;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let (region_bytes, write_bytes) = rest.split_at(usize::from(cut).min(rest.len()));

    if let Ok(msg) = RegionMsg::decode(region_bytes) {
        // postcard accepts over-long varints, so compare meaning, not bytes.
        assert_eq!(RegionMsg::decode(&msg.encode()).ok(), Some(msg.clone()));
        let mut table = PartnerRegions::new();
        if let RegionMsg::Advertise(info) = &msg {
            assert!(info.validate().is_ok());
            let (client, region, len) = (PeerClientId::new(info.client), info.region, info.len);
            table
                .learn(msg.clone())
                .expect("one region is within bounds");
            assert!(table.check_write(client, region, 0, len).is_ok());
            assert!(table.check_write(client, region, 1, len).is_err());
            table.fence_all();
            assert!(table.check_write(client, region, 0, 1).is_err());
        } else {
            assert!(table.learn(msg).is_ok());
        }
    }

    if let Ok(w) = WriteFrame::decode(Bytes::copy_from_slice(write_bytes)) {
        assert_eq!(&w.encode()[..], write_bytes);
        let mut local = LocalRegions::new();
        let client = ClientId::new(1);
        let id = local
            .register(client, "fuzz", REGION_LEN)
            .expect("valid region");
        let len = w.data.len() as u64;
        if local.check_apply(client, id, w.offset, len).is_ok() {
            assert!(w.offset + len <= REGION_LEN);
        }
    }
});
