//! What the partner sends back for writes: over TCP the placement code alone (its ACK carries
//! the cumulative ack, so no second ACK per write); for writes placed by RDMA WRITE nothing of
//! their own (their queue pair told the writer; the acknowledgement waits for a FLOW); and a
//! write's code says nothing about what the partner's client took: async sends before the
//! write complete only when taken.

#![allow(clippy::unwrap_used)]

mod common;

use bytes::Bytes;
use common::regions::*;
use common::*;
use peercm_cm_proto::session::{ClientEvent, ClientId, InterconnectId};
use peercm_cm_proto::stream::SendModel;
use peercm_cm_proto::MsgType;

#[test]
fn a_write_over_tcp_is_answered_by_its_code_alone() {
    let (mut p, ca, _cb, _rb) = setup(31, &[InterconnectId::TCP], vec![]);
    let before = p.sent_count(false, MsgType::Ack);
    let n = 50;
    for i in 0..n {
        let id = write8(&mut p, ca, i);
        p.drive();
        assert_eq!(acked(&p, ca, id), 1, "write {i} completed once");
    }
    let acks = p.sent_count(false, MsgType::Ack) - before;
    assert_eq!(
        acks, n as usize,
        "b answered each write with its code and nothing else"
    );
}

#[test]
fn one_sided_writes_cost_the_partner_no_frame_of_their_own() {
    let (mut p, ca, _cb, _rb) = setup(32, &[InterconnectId::rail(1)], vec![rail_key(1)]);
    let (acks0, flows0) = (
        p.sent_count(false, MsgType::Ack),
        p.sent_count(false, MsgType::Flow),
    );
    let n = 50u64;
    let ids: Vec<u64> = (0..n).map(|i| write8(&mut p, ca, i)).collect();
    // Everything moves, but the clock stands still.
    for _ in 0..100_000 {
        if !p.step() {
            break;
        }
    }
    for id in &ids {
        assert_eq!(
            acked(&p, ca, *id),
            1,
            "write {id} completed on a's queue pair"
        );
    }
    assert_eq!(p.a.stats().writes_placed_one_sided, n);
    assert_eq!(p.b.stats().write_acks_deferred, n);
    assert_eq!(
        (
            p.sent_count(false, MsgType::Ack) - acks0,
            p.sent_count(false, MsgType::Flow) - flows0
        ),
        (0, 0),
        "b sent nothing back yet"
    );
    assert_eq!(p.a.unacked(ca), n as usize, "a keeps them for a replay");
    // `write_ack_delay` later one FLOW acknowledges all of them.
    p.drive();
    assert_eq!(p.sent_count(false, MsgType::Ack) - acks0, 0);
    assert_eq!(p.sent_count(false, MsgType::Flow) - flows0, 1);
    assert_eq!(p.a.unacked(ca), 0, "acknowledged: a dropped its copies");
    assert_eq!(
        count(&p.a_events, ca, |e| matches!(e, ClientEvent::Acked { .. })),
        n as usize,
        "and told nobody twice"
    );
}

#[test]
fn a_writes_code_does_not_complete_the_async_sends_before_it() {
    for (seed, links, rails) in [
        (33, vec![InterconnectId::TCP], vec![]),
        (34, vec![InterconnectId::rail(1)], vec![rail_key(1)]),
    ] {
        let (mut p, ca, cb, _rb) = setup(seed, &links, rails);
        p.auto_consume = false;
        let m =
            p.a.send(ca, Bytes::from_static(b"before"), SendModel::Async)
                .unwrap();
        let w =
            p.a.write_named(ca, "log", 0, Bytes::from_static(b"w"), None, p.now)
                .unwrap();
        p.drive();
        assert_eq!(acked(&p, ca, w), 1, "seed {seed}: the write is placed");
        assert_eq!(
            acked(&p, ca, m),
            0,
            "seed {seed}: b's client has not taken the message: not complete"
        );
        // b's client takes it now.
        let seq = p
            .b_events
            .iter()
            .find_map(|(c, e)| match e {
                ClientEvent::Data { seq, .. } if *c == cb => Some(*seq),
                _ => None,
            })
            .unwrap();
        p.b.consumed(cb, seq);
        for _ in 0..10 {
            p.drive();
            p.advance(std::time::Duration::from_millis(50));
        }
        assert_eq!(acked(&p, ca, m), 1, "seed {seed}: taken, so complete");
    }
}

/// a writes 8 bytes at offset `8 * i` of b's region "log"; the write's id.
fn write8(p: &mut Pair, ca: ClientId, i: u64) -> u64 {
    p.a.write_named(
        ca,
        "log",
        i * 8,
        Bytes::from_static(b"12345678"),
        None,
        p.now,
    )
    .unwrap()
}
