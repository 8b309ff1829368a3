//! Client regions and one-sided writes at the session level (issue 9): the exchange of
//! regions, writes placed in stream order with the sends that follow them (commit notices),
//! over TCP-style WRITE frames and over RDMA (WRITE + marker), through link losses; typed
//! refusals on the writer and on the receiver; fencing at a switch to another partner.

#![allow(clippy::unwrap_used)]

mod common;

use bytes::Bytes;
use common::regions::*;
use common::*;
use peercm_cm_proto::control::NackReason;
use peercm_cm_proto::region::{RailKey, RegionId, WriteError};
use peercm_cm_proto::session::{
    ClientEvent, InterconnectId, SessionConfig, SessionError, SessionState,
};
use peercm_cm_proto::stream::SendModel;
use peercm_cm_proto::MsgType;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// Runs `writes` random writes with a commit notice (an async send naming how many writes
/// precede it) after every few, while links fail and come back on `links`' interconnects;
/// checks each notice is delivered after the writes it follows are placed, every write and
/// notice completes once, and b's region ends equal to a's model.
fn writes_with_notices(seed: u64, links: &[InterconnectId], rails: Vec<RailKey>, writes: usize) {
    let (mut p, ca, cb, rb) = setup(seed, links, rails);
    let mut writer = vec![0u8; REGION_LEN as usize];
    // The writer's model after write i (only the ranges, to check notices).
    let mut placed = Model::new();
    let mut outstanding: BTreeSet<u64> = BTreeSet::new();
    let mut done_writes = 0;
    let mut b_seen = 0;
    let mut a_seen = 0;
    let mut i = 0;
    let mut faults = 0;
    while i < writes || !outstanding.is_empty() {
        if i < writes && outstanding.len() < 200 {
            let len = 8 + p.rng.below(4096) as usize;
            let off = p.rng.below(REGION_LEN - len as u64);
            let byte = (p.rng.next() & 0xff) as u8;
            let mut data = vec![byte; len];
            data[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
            writer[off as usize..off as usize + len].copy_from_slice(&data);
            let id =
                p.a.write_named(ca, "log", off, Bytes::from(data), None, p.now)
                    .unwrap();
            outstanding.insert(id);
            i += 1;
            if i % 7 == 0 || i == writes {
                let id =
                    p.a.send(ca, Bytes::from(format!("commit-{i}")), SendModel::Async)
                        .unwrap();
                outstanding.insert(id);
            }
        }
        // Faults: kill a link now and then, and bring one back.
        if p.rng.below(400) == 0 && faults < 6 {
            let ids = p.link_ids();
            if ids.len() > 1 {
                let victim = ids[p.rng.below(ids.len() as u64) as usize];
                p.kill_link(victim);
                let ic = links[p.rng.below(links.len() as u64) as usize];
                p.add_link_on(ic);
                faults += 1;
            }
        }
        if !p.step() {
            p.advance(Duration::from_millis(1));
        }
        placed.catch_up(&p, cb, rb);
        for (c, e) in &p.b_events[b_seen..] {
            if let (true, ClientEvent::Data { payload, .. }) = (*c == cb, e) {
                let n: u64 = std::str::from_utf8(payload)
                    .unwrap()
                    .strip_prefix("commit-")
                    .unwrap()
                    .parse()
                    .unwrap();
                let missing: Vec<u64> = (1..=n).filter(|w| !placed.ids.contains(w)).collect();
                assert!(
                    missing.is_empty() && p.b.stats().writes_placed >= n,
                    "seed {seed}: commit notice {n} delivered before writes {missing:?} were \
                     placed ({} confirmed)",
                    p.b.stats().writes_placed
                );
            }
        }
        b_seen = p.b_events.len();
        for (c, e) in &p.a_events[a_seen..] {
            if *c != ca {
                continue;
            }
            match e {
                ClientEvent::Acked { seq, code: None } => {
                    assert!(
                        outstanding.remove(seq),
                        "seed {seed}: {seq} completed twice"
                    );
                    done_writes += 1;
                }
                ClientEvent::Nacked { seq, reason } => {
                    panic!("seed {seed}: write/send {seq} NACKed {reason:?}")
                }
                _ => {}
            }
        }
        a_seen = p.a_events.len();
    }
    p.drive();
    placed.catch_up(&p, cb, rb);
    assert!(
        placed.mem == writer,
        "seed {seed}: b's region differs from the writer's model at byte {:?}",
        first_diff(&placed.mem, &writer)
    );
    assert!(done_writes >= writes);
    assert_eq!(p.b.stats().writes_refused_here, 0);
    assert!(p.b.stats().writes_placed >= writes as u64);
}

#[test]
fn tcp_writes_are_placed_in_order_with_the_sends_that_follow_them() {
    for seed in 1..=6 {
        writes_with_notices(
            seed,
            &[InterconnectId::TCP, InterconnectId::TCP],
            vec![],
            1500,
        );
    }
}

#[test]
fn rdma_writes_go_one_sided_and_markers_confirm_them() {
    for seed in 1..=6 {
        let r1 = InterconnectId::rail(1);
        let (mut p, ca, _cb, _rb) = setup(seed, &[r1], vec![rail_key(1), rail_key(2)]);
        let id =
            p.a.write_named(ca, "log", 100, Bytes::from_static(b"abc"), None, p.now)
                .unwrap();
        p.drive();
        assert_eq!(p.one_sided.len(), 1, "one-sided on an RDMA rail with a key");
        let (_, t, data) = &p.one_sided[0];
        assert_eq!(
            (t.addr, t.rkey, t.offset),
            (rail_key(1).addr, rail_key(1).rkey, 100)
        );
        assert_eq!(&data[..], b"abc");
        assert!(p.b_applies.is_empty(), "nothing for b's manager to copy");
        assert_eq!(
            p.a.stats().writes_placed_one_sided,
            1,
            "completed one-sided"
        );
        assert_eq!(
            count(&p.a_events, ca, |e| *e
                == ClientEvent::Acked {
                    seq: id,
                    code: None
                }),
            1
        );
    }
    for seed in 1..=4 {
        writes_with_notices(
            seed,
            &[InterconnectId::rail(1), InterconnectId::rail(2)],
            vec![rail_key(1), rail_key(2)],
            1500,
        );
    }
}

#[test]
fn a_one_sided_write_completes_with_its_queue_pair_not_the_partners_code() {
    let r1 = InterconnectId::rail(1);
    let (mut p, ca, cb, _rb) = setup(21, &[r1, InterconnectId::TCP], vec![rail_key(1)]);
    let rail = p.link_ids()[0];
    let acked = |p: &Pair, id| {
        count(&p.a_events, ca, |e| {
            *e == ClientEvent::Acked {
                seq: id,
                code: None,
            }
        })
    };
    let timeout = Some(Duration::from_secs(1));
    let w =
        p.a.write_named(ca, "log", 8, Bytes::from_static(b"early"), timeout, p.now)
            .unwrap();
    let notice =
        p.a.send(ca, Bytes::from_static(b"commit"), SendModel::Async)
            .unwrap();
    p.flush();
    assert_eq!(acked(&p, w), 0, "on the wire, not yet at b's HCA");
    // b's HCA takes the WRITE and its marker: a's queue pair completes the write, before any
    // frame of b's reached a.
    assert_eq!(p.deliver_on(rail, true), Some(MsgType::Write));
    assert_eq!(acked(&p, w), 1);
    assert_eq!(p.a.stats().writes_placed_one_sided, 1);
    // The rail dies before b's placement code comes back: the write goes again (with its
    // bytes, on TCP) and is neither NACKed nor completed a second time; the notice behind
    // it still arrives after it.
    p.kill_link(rail);
    // Past the write's acknowledgement timeout (1 s), the TCP link kept alive.
    for _ in 0..15 {
        p.drive();
        p.advance(Duration::from_millis(100));
    }
    p.drive();
    assert_eq!(acked(&p, w), 1, "completed once");
    assert!(
        !p.a_events
            .iter()
            .any(|(_, e)| matches!(e, ClientEvent::Nacked { .. })),
        "nothing NACKed, nothing timed out: {:?}",
        p.a_events
    );
    assert_eq!(
        delivered(&p.b_events, cb),
        vec![Bytes::from_static(b"commit")]
    );
    assert_eq!(
        count(&p.a_events, ca, |e| *e
            == ClientEvent::Acked {
                seq: notice,
                code: None
            }),
        1
    );
    assert_eq!(p.b.stats().writes_refused_here, 0);
}

#[test]
fn mixed_rails_and_tcp_migrate_writes_without_loss() {
    // Rail 2 has no key (the region is not registered there): its writes go as WRITE frames.
    for seed in 11..=14 {
        writes_with_notices(
            seed,
            &[
                InterconnectId::rail(1),
                InterconnectId::rail(2),
                InterconnectId::TCP,
            ],
            vec![rail_key(1)],
            1500,
        );
    }
}

#[test]
fn writer_side_refusals_are_typed_and_send_nothing() {
    let (mut p, ca, cb, rb) = setup(1, &[InterconnectId::TCP], vec![]);
    let now = p.now;
    let e =
        p.a.write(
            ca,
            rb,
            REGION_LEN - 2,
            Bytes::from_static(b"abc"),
            None,
            now,
        )
        .unwrap_err();
    assert!(
        matches!(e, SessionError::Write(WriteError::OutOfBounds { .. })),
        "{e}"
    );
    let e =
        p.a.write(ca, rb, u64::MAX - 1, Bytes::from_static(b"abc"), None, now)
            .unwrap_err();
    assert!(
        matches!(e, SessionError::Write(WriteError::OutOfBounds { .. })),
        "{e}"
    );
    let e =
        p.a.write(
            ca,
            RegionId::new(999),
            0,
            Bytes::from_static(b"abc"),
            None,
            now,
        )
        .unwrap_err();
    assert!(
        matches!(e, SessionError::Write(WriteError::UnknownRegion { .. })),
        "{e}"
    );
    let e =
        p.a.write_named(ca, "nope", 0, Bytes::from_static(b"abc"), None, now)
            .unwrap_err();
    assert!(matches!(e, SessionError::NoSuchRegion { .. }), "{e}");
    let e = p.a.write(ca, rb, 0, Bytes::new(), None, now).unwrap_err();
    assert!(matches!(e, SessionError::Write(WriteError::Empty)), "{e}");
    let rbig = p.b.register_region(cb, "big", 4 << 20).unwrap();
    p.b.set_region_keys(cb, rbig, vec![]).unwrap();
    p.drive();
    let big = Bytes::from(vec![0u8; (1 << 20) - 11]);
    let e = p.a.write(ca, rbig, 0, big, None, p.now).unwrap_err();
    assert!(matches!(e, SessionError::PayloadTooLarge { .. }), "{e}");
    p.drive();
    assert_eq!(p.sent_count(true, MsgType::Write), 0);
    // Released by b: refused as released once a learned it.
    p.b.release_region(cb, rb).unwrap();
    p.drive();
    let e =
        p.a.write(ca, rb, 0, Bytes::from_static(b"x"), None, p.now)
            .unwrap_err();
    assert!(
        matches!(e, SessionError::Write(WriteError::RegionReleased { .. })),
        "{e}"
    );
    assert!(p.a_events.iter().any(|(_, e)| matches!(
        e,
        ClientEvent::PartnerRegion {
            available: false,
            ..
        }
    )));
}

#[test]
fn a_write_refused_by_the_receiver_is_nacked_alone_and_the_stream_goes_on() {
    let (mut p, ca, cb, rb) = setup(3, &[InterconnectId::TCP], vec![]);
    let w =
        p.a.write(ca, rb, 0, Bytes::from_static(b"late"), None, p.now)
            .unwrap();
    let s =
        p.a.send(ca, Bytes::from_static(b"after"), SendModel::Async)
            .unwrap();
    // b releases the region before the write arrives.
    p.b.release_region(cb, rb).unwrap();
    p.drive();
    assert!(p.b_applies.is_empty(), "nothing placed");
    assert_eq!(
        count(&p.a_events, ca, |e| *e
            == ClientEvent::Nacked {
                seq: w,
                reason: NackReason::RegionReleased
            }),
        1
    );
    assert_eq!(
        delivered(&p.b_events, cb),
        vec![Bytes::from_static(b"after")]
    );
    assert_eq!(
        count(&p.a_events, ca, |e| *e
            == ClientEvent::Acked { seq: s, code: None }),
        1
    );
    assert_eq!(p.b.stats().writes_refused_here, 1);
    assert_eq!(p.a.stats().writes_refused, 1);
}

#[test]
fn a_marker_on_tcp_and_a_malformed_write_are_violations() {
    use peercm_cm_proto::frame::{Flags, Frame};
    let (mut p, _ca, cb, _rb) = setup(4, &[InterconnectId::TCP], vec![]);
    let link = p.link_ids()[0];
    let marker = Frame::new(
        MsgType::Write,
        Flags::SYNC,
        cb.get(),
        1,
        0,
        Bytes::from(vec![0u8; 12]),
    );
    assert!(p.b.handle_frame(link, marker, p.now).is_err());
    let short = Frame::new(
        MsgType::Write,
        Flags::SYNC,
        cb.get(),
        1,
        0,
        Bytes::from(vec![0u8; 5]),
    );
    assert!(p.b.handle_frame(link, short, p.now).is_err());
    let junk = Frame::control(MsgType::Region, Bytes::from_static(b"\xff\xff\xff"));
    assert!(p.b.handle_frame(link, junk, p.now).is_err());
}

#[test]
fn a_switch_fences_writes_and_regions_on_both_sides() {
    let cfg = SessionConfig {
        hold_on_partner_loss: Some(Duration::from_secs(5)),
        ..SessionConfig::default()
    };
    // a writes into b's region; a also holds a region of its own that b writes into.
    let (mut p, ca, _cb, rb) = setup_with(
        5,
        cfg.clone(),
        &[InterconnectId::rail(1)],
        vec![rail_key(1)],
    );
    let ra = p.a.register_region(ca, "back", 4096).unwrap();
    p.a.set_region_keys(ca, ra, vec![rail_key(1)]).unwrap();
    p.drive();
    // A write in flight when the partner dies.
    let w =
        p.a.write(ca, rb, 0, Bytes::from_static(b"lost"), None, p.now)
            .unwrap();
    p.flush();
    p.replace_b_with("c", cfg.clone());
    let cc = p.b.register("mirror", spec()).unwrap();
    p.b.connect(cc).unwrap();
    let rc = p.b.register_region(cc, "log", REGION_LEN).unwrap();
    p.b.set_region_keys(cc, rc, vec![rail_key(1)]).unwrap();
    p.add_link_on(InterconnectId::rail(1));
    p.drive();
    // The write meant for b's memory was not re-issued to c.
    assert_eq!(
        count(&p.a_events, ca, |e| *e
            == ClientEvent::Nacked {
                seq: w,
                reason: NackReason::Fenced
            }),
        1
    );
    assert!(p
        .a_events
        .iter()
        .any(|(_, e)| matches!(e, ClientEvent::PeerSwitched { .. })));
    // a's own region must be registered anew before c learns it.
    assert_eq!(p.a.poll_rekey(), Some((ca, ra)));
    assert_eq!(p.a.poll_rekey(), None);
    assert!(
        p.b.partner_regions(cc).is_empty(),
        "not advertised before new keys"
    );
    let fresh = RailKey {
        rkey: 0xbeef,
        ..rail_key(1)
    };
    p.a.set_region_keys(ca, ra, vec![fresh]).unwrap();
    p.drive();
    let seen = p.b.partner_regions(cc);
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].rails, vec![fresh]);
    // c's region is writable under its own id.
    let id =
        p.a.write_named(ca, "log", 0, Bytes::from_static(b"new"), None, p.now)
            .unwrap();
    p.drive();
    assert_eq!(acked(&p, ca, id), 1);
    let _ = Instant::now();
}

#[test]
fn regions_are_readvertised_after_a_reset_and_forgotten_when_the_client_closes() {
    let (mut p, ca, cb, _rb) = setup(6, &[InterconnectId::TCP], vec![]);
    // b restarts: a's table is fenced, and the new b advertises anew.
    p.restart_b(SessionConfig::default());
    let cb2 = p.b.register("mirror", spec()).unwrap();
    p.b.connect(cb2).unwrap();
    let e =
        p.a.write_named(ca, "log", 0, Bytes::from_static(b"x"), None, p.now)
            .unwrap_err();
    assert!(
        matches!(
            e,
            SessionError::NotConnected { .. } | SessionError::NoSuchRegion { .. }
        ),
        "{e}"
    );
    let rb2 = p.b.register_region(cb2, "log", REGION_LEN).unwrap();
    p.b.set_region_keys(cb2, rb2, vec![]).unwrap();
    p.add_link();
    p.drive();
    assert_eq!(p.a.partner_regions(ca).len(), 1);
    // The client closes: a forgets its regions.
    p.b.close(cb2, true).unwrap();
    p.drive();
    assert!(p.a.partner_regions(ca).is_empty());
    let _ = cb;
}

/// A client not placed yet sends on any link, but its writes prefer an RDMA link: spread over
/// TCP too, every write sent with its bytes would hold the client's next writes back from
/// going one-sided until it completed.
#[test]
fn an_unplaced_clients_writes_prefer_rdma_links() {
    for seed in 1..=4 {
        let (r1, tcp) = (InterconnectId::rail(1), InterconnectId::TCP);
        let (mut p, ca, _cb, _rb) = setup(seed, &[tcp, r1, tcp], vec![rail_key(1)]);
        for i in 0..200u64 {
            p.a.write_named(
                ca,
                "log",
                i * 16,
                Bytes::from(vec![i as u8; 16]),
                None,
                p.now,
            )
            .unwrap();
        }
        p.drive();
        assert_eq!(
            (p.one_sided.len(), p.b_applies.len()),
            (200, 0),
            "seed {seed}: every write one-sided, none copied from a frame"
        );
        assert_eq!(
            count(&p.a_events, ca, |e| matches!(
                e,
                ClientEvent::Acked { code: None, .. }
            )),
            200
        );
    }
}

/// A region keyed while the holder's session waits for the partner's READY (its CLIENT-UPs
/// and the adverts of the regions keyed until then are out already) is still advertised, and
/// the writer's client learns of it.
#[test]
fn a_region_keyed_while_awaiting_ready_is_advertised() {
    for seed in 1..=8 {
        let mut p = Pair::new(seed);
        let ca = p.a.register("mirror", spec()).unwrap();
        let cb = p.b.register("mirror", spec()).unwrap();
        p.a.connect(ca).unwrap();
        p.b.connect(cb).unwrap();
        let rb = p.b.register_region(cb, "log", REGION_LEN).unwrap();
        p.add_link_on(InterconnectId::TCP);
        let mut keyed = false;
        for _ in 0..10_000 {
            if p.b.state() == SessionState::AwaitingReady {
                p.b.set_region_keys(cb, rb, Vec::new()).unwrap();
                keyed = true;
                break;
            }
            if !p.step() {
                break;
            }
        }
        assert!(keyed, "seed {seed}: b went through AwaitingReady");
        p.drive();
        assert_eq!(p.b.state(), SessionState::Up);
        assert_eq!(
            count(&p.a_events, ca, |e| *e
                == ClientEvent::PartnerRegion {
                    name: "log".into(),
                    len: REGION_LEN,
                    available: true
                }),
            1,
            "seed {seed}: a learned the region once"
        );
    }
}
