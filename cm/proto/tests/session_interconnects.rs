//! Sessions over several interconnects: a placed client's data travels only on its
//! interconnect's links, a move between interconnects mid-stream loses and duplicates nothing
//! (make-before-break: frames still in flight on the old path are reordered at the receiver),
//! losing an interconnect continues on the survivors, and TRANSPORT messages reach the partner's
//! runtime with their bounds enforced.

#![allow(clippy::unwrap_used)]

mod common;

use bytes::Bytes;
use common::*;
use peercm_cm_proto::session::{
    ClientEvent, ClientId, ClientSpec, InterconnectId, LatencyClass, LinkId, SessionState,
    TransportSendError, MAX_TRANSPORT_PAYLOAD_BYTES,
};
use peercm_cm_proto::stream::SendModel;
use peercm_cm_proto::MsgType;

const RAIL1: InterconnectId = InterconnectId::rail(1);
const RAIL2: InterconnectId = InterconnectId::rail(2);

fn spec() -> ClientSpec {
    ClientSpec {
        bandwidth_mbytes_per_s: 1000,
        latency: LatencyClass::Bulk,
        model: SendModel::Async,
    }
}

/// A pair with one TCP link and one link on each of two rails, and a connected client.
fn three_path_pair(seed: u64) -> (Pair, ClientId, ClientId, [LinkId; 3]) {
    let mut p = Pair::new(seed);
    let ca = p.a.register("mirror", spec()).unwrap();
    let cb = p.b.register("mirror", spec()).unwrap();
    p.a.connect(ca).unwrap();
    let tcp = p.add_link();
    let r1 = p.add_link_on(RAIL1);
    let r2 = p.add_link_on(RAIL2);
    p.drive();
    assert_eq!(p.a.state(), SessionState::Up);
    assert_eq!(p.a.link_interconnect(r1), Some(RAIL1));
    assert_eq!(p.a.link_interconnect(tcp), Some(InterconnectId::TCP));
    (p, ca, cb, [tcp, r1, r2])
}

fn data_seqs_on(p: &Pair, link: LinkId) -> Vec<u64> {
    p.queued(link, true)
        .into_iter()
        .filter(|(t, _)| *t == MsgType::Data)
        .map(|(_, s)| s)
        .collect()
}

fn assert_exactly_once_in_order(p: &Pair, cb: ClientId, n: u64, seed: u64) {
    let got = delivered(&p.b_events, cb);
    assert_eq!(got.len() as u64, n, "seed {seed}: delivered count");
    for (i, m) in got.iter().enumerate() {
        assert_eq!(*m, msg(i as u64), "seed {seed}: message {i} out of order");
    }
}

#[test]
fn placed_client_data_travels_only_on_its_interconnect() {
    let (mut p, ca, cb, [tcp, r1, r2]) = three_path_pair(7);
    assert_eq!(p.a.place(ca, RAIL2).unwrap(), None);
    for i in 0..200 {
        p.a.send(ca, msg(i), SendModel::Async).unwrap();
    }
    p.flush();
    assert_eq!(data_seqs_on(&p, r2).len(), 200, "every DATA on rail 2");
    assert!(data_seqs_on(&p, r1).is_empty(), "nothing on rail 1");
    assert!(data_seqs_on(&p, tcp).is_empty(), "nothing on TCP");
    p.drive();
    assert_exactly_once_in_order(&p, cb, 200, 7);
    // The first placement is silent: nothing migrated.
    assert_eq!(
        count(&p.a_events, ca, |e| matches!(
            e,
            ClientEvent::Migrated { .. }
        )),
        0
    );
}

#[test]
fn moving_between_interconnects_mid_stream_loses_and_duplicates_nothing() {
    for seed in 1..=20 {
        let (mut p, ca, cb, [_tcp, r1, r2]) = three_path_pair(seed);
        p.a.place(ca, RAIL1).unwrap();
        let mut sent = 0;
        for _ in 0..100 {
            p.a.send(ca, msg(sent), SendModel::Async).unwrap();
            sent += 1;
        }
        p.flush();
        let on_old = data_seqs_on(&p, r1).len();
        assert!(
            on_old > 0,
            "seed {seed}: the old rail carries the first burst"
        );
        // Move while the old rail's frames are still in flight, then send more: the new
        // frames overtake the old ones on the other rail.
        assert_eq!(p.a.place(ca, RAIL2).unwrap(), Some(RAIL1));
        for _ in 0..100 {
            p.a.send(ca, msg(sent), SendModel::Async).unwrap();
            sent += 1;
        }
        p.flush();
        assert!(
            !data_seqs_on(&p, r2).is_empty(),
            "seed {seed}: new data on the new rail"
        );
        p.drive_except(r1);
        p.drive();
        assert_exactly_once_in_order(&p, cb, sent, seed);
        let moves: Vec<_> = p
            .a_events
            .iter()
            .filter(|(c, e)| *c == ca && matches!(e, ClientEvent::Migrated { .. }))
            .map(|(_, e)| e.clone())
            .collect();
        assert_eq!(
            moves,
            vec![ClientEvent::Migrated {
                from: RAIL1,
                to: RAIL2
            }],
            "seed {seed}"
        );
        assert_eq!(p.a.unacked(ca), 0, "seed {seed}: everything acknowledged");
    }
}

#[test]
fn losing_the_placed_interconnect_continues_on_the_survivors() {
    for seed in 1..=20 {
        let (mut p, ca, cb, [tcp, r1, _r2]) = three_path_pair(seed);
        p.a.place(ca, RAIL1).unwrap();
        let mut sent = 0;
        for _ in 0..150 {
            p.a.send(ca, msg(sent), SendModel::Async).unwrap();
            sent += 1;
        }
        p.flush();
        // Part of it arrives, then the rail dies with the rest on it.
        for _ in 0..(seed as usize * 3) {
            p.deliver_on(r1, true);
        }
        p.kill_link(r1);
        // Until the runtime re-places the client its data goes on any live link.
        for _ in 0..50 {
            p.a.send(ca, msg(sent), SendModel::Async).unwrap();
            sent += 1;
        }
        p.drive();
        assert_exactly_once_in_order(&p, cb, sent, seed);
        // The runtime then moves it to TCP explicitly.
        p.a.place(ca, InterconnectId::TCP).unwrap();
        for _ in 0..50 {
            p.a.send(ca, msg(sent), SendModel::Async).unwrap();
            sent += 1;
        }
        p.flush();
        assert_eq!(data_seqs_on(&p, tcp).len(), 50, "seed {seed}: all on TCP");
        p.drive();
        assert_exactly_once_in_order(&p, cb, sent, seed);
    }
}

#[test]
fn transport_messages_reach_the_partner_runtime_with_bounds() {
    let (mut p, _ca, _cb, _) = three_path_pair(3);
    let offer = Bytes::from_static(b"rail 1 endpoint");
    p.a.send_transport(offer.clone()).unwrap();
    p.drive();
    let (_link, got) = p.b.poll_transport().expect("delivered to b's runtime");
    assert_eq!(got, offer);
    assert!(p.b.poll_transport().is_none());
    let big = Bytes::from(vec![0u8; MAX_TRANSPORT_PAYLOAD_BYTES + 1]);
    assert_eq!(
        p.a.send_transport(big),
        Err(TransportSendError::TooLarge(
            MAX_TRANSPORT_PAYLOAD_BYTES + 1
        ))
    );
}

#[test]
fn transport_needs_an_up_session() {
    let mut p = Pair::new(1);
    let err = p.a.send_transport(Bytes::from_static(b"x")).unwrap_err();
    assert_eq!(err, TransportSendError::NotUp(SessionState::Down));
}

#[test]
fn placing_an_unknown_client_is_refused() {
    let (mut p, _ca, _cb, _) = three_path_pair(1);
    assert!(p.a.place(ClientId::new(999), RAIL1).is_err());
}

/// A link reserved for one client (its own queue pair): that client's data goes on it and
/// nobody else's while the shared link of the rail lives; when the shared link is lost the
/// other client uses the reserved one rather than stall; when the reserved link is lost its
/// client falls back to the shared links; nothing is lost or duplicated.
#[test]
fn a_reserved_link_carries_its_clients_data_and_only_that() {
    for seed in 1..=4 {
        let mut p = Pair::new(seed);
        let heavy = p.a.register("heavy", spec()).unwrap();
        let light = p.a.register("light", spec()).unwrap();
        let heavy_b = p.b.register("heavy", spec()).unwrap();
        let light_b = p.b.register("light", spec()).unwrap();
        p.a.connect(heavy).unwrap();
        p.a.connect(light).unwrap();
        let _tcp = p.add_link();
        let shared = p.add_link_on(RAIL1);
        let own = p.add_link_on(RAIL1);
        p.drive();
        assert_eq!(p.a.state(), SessionState::Up);
        for id in [heavy, light] {
            p.a.place(id, RAIL1).unwrap();
        }
        assert!(
            p.a.reserve_link(own, ClientId::new(999)).is_err(),
            "unknown client"
        );
        assert!(
            p.a.reserve_link(LinkId::new(999), heavy).is_err(),
            "unknown link"
        );
        p.a.reserve_link(own, heavy).unwrap();
        assert_eq!(p.a.link_reserved_for(own), Some(heavy));
        let (own0, shared0) = (
            p.a.link_data_frames_out(own).unwrap(),
            p.a.link_data_frames_out(shared).unwrap(),
        );
        for i in 0..50 {
            p.a.send(heavy, Bytes::from(format!("heavy-{i}")), SendModel::Async)
                .unwrap();
            p.a.send(light, Bytes::from(format!("light-{i}")), SendModel::Async)
                .unwrap();
        }
        p.drive();
        assert_eq!(
            p.a.link_data_frames_out(own).unwrap() - own0,
            50,
            "seed {seed}: the reserved link carried the heavy client's 50 and nothing else"
        );
        assert_eq!(p.a.link_data_frames_out(shared).unwrap() - shared0, 50);
        // The shared link goes: the light client uses the reserved one rather than stall
        // (TCP is another interconnect, but still shared: it goes there first).
        p.kill_link(shared);
        for i in 50..60 {
            p.a.send(light, Bytes::from(format!("light-{i}")), SendModel::Async)
                .unwrap();
        }
        p.drive();
        // The reserved link goes: the heavy client falls back to what is left.
        p.kill_link(own);
        for i in 50..60 {
            p.a.send(heavy, Bytes::from(format!("heavy-{i}")), SendModel::Async)
                .unwrap();
        }
        p.drive();
        let got = |c: ClientId, name: &str| {
            let d = delivered(&p.b_events, c);
            assert_eq!(d.len(), 60, "seed {seed}: {name} got everything once");
            for (i, m) in d.iter().enumerate() {
                assert_eq!(
                    *m,
                    Bytes::from(format!("{name}-{i}")),
                    "seed {seed}: {name} in order"
                );
            }
        };
        got(heavy_b, "heavy");
        got(light_b, "light");
    }
}
