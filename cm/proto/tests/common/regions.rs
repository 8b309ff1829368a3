//! Shared setup of the region tests: a pair whose b holds region "log", rail keys, and a
//! model of what b's region holds (its applies and a's one-sided writes, in order).

#![allow(clippy::unwrap_used)]

use super::*;
use peercm_cm_proto::region::{RailKey, RegionId};
use peercm_cm_proto::session::{
    ClientEvent, ClientId, ClientSpec, InterconnectId, LatencyClass, SessionConfig,
};
use peercm_cm_proto::stream::SendModel;
use std::collections::BTreeSet;

pub const REGION_LEN: u64 = 64 * 1024;

pub fn spec() -> ClientSpec {
    ClientSpec {
        bandwidth_mbytes_per_s: 100,
        latency: LatencyClass::Bulk,
        model: SendModel::Async,
    }
}

/// a and b each with client "mirror"; b holds region "log" keyed with `rails`; the pair is up
/// on `links` and a has learned the region.
pub fn setup(
    seed: u64,
    links: &[InterconnectId],
    rails: Vec<RailKey>,
) -> (Pair, ClientId, ClientId, RegionId) {
    setup_with(seed, SessionConfig::default(), links, rails)
}

pub fn setup_with(
    seed: u64,
    cfg: SessionConfig,
    links: &[InterconnectId],
    rails: Vec<RailKey>,
) -> (Pair, ClientId, ClientId, RegionId) {
    let mut p = Pair::with_config(seed, cfg);
    let ca = p.a.register("mirror", spec()).unwrap();
    let cb = p.b.register("mirror", spec()).unwrap();
    p.a.connect(ca).unwrap();
    p.b.connect(cb).unwrap();
    let rb = p.b.register_region(cb, "log", REGION_LEN).unwrap();
    p.b.set_region_keys(cb, rb, rails).unwrap();
    for &ic in links {
        p.add_link_on(ic);
    }
    p.drive();
    assert!(
        p.a_events.iter().any(|(c, e)| *c == ca
            && *e
                == ClientEvent::PartnerRegion {
                    name: "log".into(),
                    len: REGION_LEN,
                    available: true
                }),
        "a learned b's region: {:?}",
        p.a_events
    );
    (p, ca, cb, rb)
}

pub fn rail_key(rail: u32) -> RailKey {
    RailKey {
        rail: InterconnectId::rail(rail),
        addr: 0x7000_0000 + u64::from(rail) * 0x100_0000,
        rkey: 0x1000 + rail,
    }
}

/// What b's region holds: its applies (WRITE frames) and a's one-sided writes, replayed into
/// a memory in the order the harness recorded them.
pub struct Model {
    pub mem: Vec<u8>,
    applied: usize,
    rdma: usize,
    /// Writes placed so far, by the index in their first 8 bytes.
    pub ids: BTreeSet<u64>,
}

impl Model {
    pub fn new() -> Self {
        Model {
            mem: vec![0; REGION_LEN as usize],
            applied: 0,
            rdma: 0,
            ids: BTreeSet::new(),
        }
    }

    /// Takes in whatever was placed since the last call.
    pub fn catch_up(&mut self, p: &Pair, cb: ClientId, rb: RegionId) {
        for ap in &p.b_applies[self.applied..] {
            assert_eq!((ap.client, ap.region), (cb, rb));
            let at = ap.offset as usize;
            self.mem[at..at + ap.data.len()].copy_from_slice(&ap.data);
            self.ids
                .insert(u64::from_le_bytes(ap.data[..8].try_into().unwrap()));
        }
        self.applied = p.b_applies.len();
        for (from_a, target, data) in &p.one_sided[self.rdma..] {
            assert!(*from_a);
            assert_eq!(target.len, REGION_LEN);
            let at = target.offset as usize;
            self.mem[at..at + data.len()].copy_from_slice(data);
            if data.len() >= 8 {
                self.ids
                    .insert(u64::from_le_bytes(data[..8].try_into().unwrap()));
            }
        }
        self.rdma = p.one_sided.len();
    }
}

/// How many times a's client `client` was told that send or write `seq` completed without a
/// code (`Acked { code: None }`).
pub fn acked(p: &Pair, client: ClientId, seq: u64) -> usize {
    count(&p.a_events, client, |e| {
        *e == ClientEvent::Acked { seq, code: None }
    })
}

pub fn first_diff(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}
