//! Unit tests of the region tables: learning, replacing, releasing, fencing, bounds, and the
//! typed refusals on both sides.

use super::*;
use crate::ids::InterconnectId;
use crate::region::RailKey;

fn adv(client: u32, region: u32, len: u64) -> RegionMsg {
    RegionMsg::Advertise(RegionInfo {
        client,
        region: RegionId::new(region),
        name: format!("r{region}"),
        len,
        rails: vec![RailKey {
            rail: InterconnectId::rail(1),
            addr: 0x1000,
            rkey: region,
        }],
    })
}

const C: PeerClientId = PeerClientId::new(2);
const R: RegionId = RegionId::new(5);

#[test]
fn learned_region_accepts_writes_within_bounds_only() {
    let mut t = PartnerRegions::new();
    t.learn(adv(2, 5, 100)).unwrap();
    assert_eq!(t.check_write(C, R, 0, 100).unwrap().len, 100);
    assert!(t.check_write(C, R, 99, 1).is_ok());
    assert_eq!(
        t.check_write(C, R, 99, 2),
        Err(WriteError::OutOfBounds {
            offset: 99,
            len: 2,
            region_len: 100
        })
    );
    assert_eq!(
        t.check_write(C, R, u64::MAX, 2),
        Err(WriteError::OutOfBounds {
            offset: u64::MAX,
            len: 2,
            region_len: 100
        }),
        "offset + len overflowing is out of bounds"
    );
    assert_eq!(t.check_write(C, R, 0, 0), Err(WriteError::Empty));
    assert_eq!(
        t.check_write(PeerClientId::new(3), R, 0, 1),
        Err(WriteError::UnknownRegion {
            client: PeerClientId::new(3),
            region: R
        })
    );
}

#[test]
fn readvertisement_replaces_the_region() {
    let mut t = PartnerRegions::new();
    t.learn(adv(2, 5, 100)).unwrap();
    t.learn(adv(2, 5, 200)).unwrap();
    assert_eq!(t.len(), 1);
    assert!(t.check_write(C, R, 150, 50).is_ok());
    assert_eq!(t.get(C, R).map(|i| i.len), Some(200));
}

#[test]
fn release_then_write_is_region_released_and_late_release_ignored() {
    let mut t = PartnerRegions::new();
    t.learn(adv(2, 5, 100)).unwrap();
    t.learn(RegionMsg::Release {
        client: 2,
        region: R,
    })
    .unwrap();
    assert_eq!(
        t.check_write(C, R, 0, 1),
        Err(WriteError::RegionReleased {
            client: C,
            region: R
        })
    );
    // A release of something never advertised changes nothing.
    t.learn(RegionMsg::Release {
        client: 9,
        region: R,
    })
    .unwrap();
    assert!(t.is_empty());
    // Advertised again: writable again.
    t.learn(adv(2, 5, 100)).unwrap();
    assert!(t.check_write(C, R, 0, 1).is_ok());
}

#[test]
fn reset_fences_every_region_until_readvertised() {
    let mut t = PartnerRegions::new();
    t.learn(adv(2, 5, 100)).unwrap();
    t.learn(adv(2, 6, 100)).unwrap();
    t.learn(RegionMsg::Release {
        client: 2,
        region: RegionId::new(6),
    })
    .unwrap();
    t.fence_all();
    assert!(t.is_empty());
    assert_eq!(
        t.check_write(C, R, 0, 1),
        Err(WriteError::Fenced {
            client: C,
            region: R
        })
    );
    assert_eq!(
        t.check_write(C, RegionId::new(6), 0, 1),
        Err(WriteError::Fenced {
            client: C,
            region: RegionId::new(6)
        })
    );
    // The new partner advertises region 5 (with its own keys): writable, with the new key.
    let RegionMsg::Advertise(mut info) = adv(2, 5, 100) else {
        unreachable!()
    };
    info.rails[0].rkey = 77;
    t.learn(RegionMsg::Advertise(info)).unwrap();
    let got = t.check_write(C, R, 0, 1).unwrap();
    assert_eq!(got.rail(InterconnectId::rail(1)).map(|k| k.rkey), Some(77));
}

#[test]
fn client_down_forgets_its_regions() {
    let mut t = PartnerRegions::new();
    t.learn(adv(2, 5, 100)).unwrap();
    t.learn(adv(3, 1, 100)).unwrap();
    t.client_gone(C);
    assert_eq!(
        t.check_write(C, R, 0, 1),
        Err(WriteError::UnknownRegion {
            client: C,
            region: R
        })
    );
    assert_eq!(t.of_client(PeerClientId::new(3)).count(), 1);
}

#[test]
fn partner_table_bounds_are_enforced() {
    let mut t = PartnerRegions::new();
    for r in 0..MAX_REGIONS_PER_CLIENT as u32 {
        t.learn(adv(1, r, 10)).unwrap();
    }
    assert_eq!(t.learn(adv(1, 1000, 10)), Err(RegionLimit::PerClient));
    // Replacing one at the limit is fine.
    t.learn(adv(1, 0, 20)).unwrap();
    let mut c = 2;
    while t.len() < MAX_REGIONS_PER_NODE {
        for r in 0..MAX_REGIONS_PER_CLIENT as u32 {
            if t.len() < MAX_REGIONS_PER_NODE {
                t.learn(adv(c, r, 10)).unwrap();
            }
        }
        c += 1;
    }
    assert_eq!(t.learn(adv(c + 1, 0, 10)), Err(RegionLimit::PerNode));
}

#[test]
fn tombstones_stay_bounded() {
    let mut t = PartnerRegions::new();
    for r in 0..(3 * MAX_REGIONS_PER_NODE) as u32 {
        t.learn(adv(1, r, 10)).unwrap();
        t.learn(RegionMsg::Release {
            client: 1,
            region: RegionId::new(r),
        })
        .unwrap();
    }
    assert!(t.gone.len() <= MAX_REGIONS_PER_NODE);
    let last = RegionId::new(3 * MAX_REGIONS_PER_NODE as u32 - 1);
    assert!(matches!(
        t.check_write(PeerClientId::new(1), last, 0, 1),
        Err(WriteError::RegionReleased { .. })
    ));
}

const L: ClientId = ClientId::new(4);

#[test]
fn local_register_check_apply_and_release() {
    let mut t = LocalRegions::new();
    let a = t.register(L, "nvlog", 64).unwrap();
    let b = t.register(L, "meta", 8).unwrap();
    assert_ne!(a, b);
    assert_eq!(t.check_apply(L, a, 0, 64), Ok(()));
    assert_eq!(t.check_apply(L, a, 60, 5), Err(WriteRefusal::OutOfBounds));
    assert_eq!(
        t.check_apply(L, a, u64::MAX, 1),
        Err(WriteRefusal::OutOfBounds)
    );
    assert_eq!(
        t.check_apply(ClientId::new(5), a, 0, 1),
        Err(WriteRefusal::UnknownRegion)
    );
    assert_eq!(
        t.release(L, a),
        Some(RegionMsg::Release {
            client: 4,
            region: a
        })
    );
    assert_eq!(t.release(L, a), None, "released once");
    assert_eq!(t.check_apply(L, a, 0, 1), Err(WriteRefusal::RegionReleased));
    // Ids are never reused: a new region of the same name gets a new id.
    let c = t.register(L, "nvlog", 64).unwrap();
    assert!(c != a && c != b);
    assert_eq!(t.check_apply(L, a, 0, 1), Err(WriteRefusal::RegionReleased));
    t.client_closed(L);
    assert_eq!(t.check_apply(L, c, 0, 1), Err(WriteRefusal::UnknownRegion));
    assert_eq!(t.iter().count(), 0);
}

#[test]
fn local_requests_beyond_limits_get_typed_refusals() {
    let mut t = LocalRegions::new();
    assert!(matches!(
        t.register(L, "bad name", 1),
        Err(RegionLimit::Name(_))
    ));
    assert_eq!(t.register(L, "z", 0), Err(RegionLimit::Length(0)));
    assert_eq!(
        t.register(L, "z", MAX_REGION_BYTES + 1),
        Err(RegionLimit::Length(MAX_REGION_BYTES + 1))
    );
    t.register(L, "dup", 1).unwrap();
    assert_eq!(
        t.register(L, "dup", 1),
        Err(RegionLimit::DuplicateName("dup".into()))
    );
    for i in 1..MAX_REGIONS_PER_CLIENT {
        t.register(L, &format!("r{i}"), 1).unwrap();
    }
    assert_eq!(t.register(L, "one-more", 1), Err(RegionLimit::PerClient));
    let mut c = 10;
    while t.iter().count() < MAX_REGIONS_PER_NODE {
        for i in 0..MAX_REGIONS_PER_CLIENT {
            if t.iter().count() < MAX_REGIONS_PER_NODE {
                t.register(ClientId::new(c), &format!("r{i}"), 1).unwrap();
            }
        }
        c += 1;
    }
    assert_eq!(
        t.register(ClientId::new(c + 1), "x", 1),
        Err(RegionLimit::PerNode)
    );
}

#[test]
fn advert_carries_the_runtime_rail_keys_and_validates() {
    let mut t = LocalRegions::new();
    let id = t.register(L, "nvlog", 4096).unwrap();
    let keys = vec![RailKey {
        rail: InterconnectId::rail(2),
        addr: 0x10_0000,
        rkey: 42,
    }];
    let Some(RegionMsg::Advertise(info)) = t.advert(L, id, keys.clone()) else {
        panic!("no advert")
    };
    assert_eq!(
        (
            info.client,
            info.region,
            info.name.as_str(),
            info.len,
            info.rails
        ),
        (4, id, "nvlog", 4096, keys)
    );
    assert!(t.advert(L, RegionId::new(999), vec![]).is_none());
}

#[test]
fn refusal_codes_round_trip_and_are_the_nack_reasons_of_the_same_name() {
    use crate::control::NackReason;
    for (r, n) in [
        (WriteRefusal::OutOfBounds, NackReason::OutOfBounds),
        (WriteRefusal::UnknownRegion, NackReason::UnknownRegion),
        (WriteRefusal::RegionReleased, NackReason::RegionReleased),
    ] {
        assert_eq!(WriteRefusal::from_code(r.code()), Some(r));
        assert_eq!(NackReason::from_u8(r.code()), Some(n));
    }
    assert_eq!(WriteRefusal::from_code(6), None);
}

#[test]
fn a_local_region_only_grows_within_the_bounds() {
    let mut t = LocalRegions::new();
    let me = ClientId::new(1);
    let r = t.register(me, "log", 4096).unwrap();
    assert_eq!(
        t.grow(me, r, 4096),
        Err(RegionLimit::NotLarger {
            len: 4096,
            asked: 4096
        })
    );
    assert_eq!(
        t.grow(me, r, 100),
        Err(RegionLimit::NotLarger {
            len: 4096,
            asked: 100
        })
    );
    assert_eq!(
        t.grow(me, r, MAX_REGION_BYTES + 1),
        Err(RegionLimit::Length(MAX_REGION_BYTES + 1))
    );
    assert_eq!(
        t.check_apply(me, r, 4096, 1),
        Err(WriteRefusal::OutOfBounds)
    );
    assert_eq!(t.grow(me, r, 8192), Ok(true));
    assert_eq!(t.check_apply(me, r, 4096, 4096), Ok(()));
    assert_eq!(
        t.check_apply(me, r, 8191, 2),
        Err(WriteRefusal::OutOfBounds)
    );
    assert_eq!(
        t.grow(ClientId::new(2), r, 16_384),
        Ok(false),
        "another client's region"
    );
    assert_eq!(t.of_client(me).next().map(|(_, l)| l.len), Some(8192));
}
