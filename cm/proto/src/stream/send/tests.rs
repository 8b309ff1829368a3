//! Unit tests of the send stream: windows, credit, acknowledgements, replays and writes.

use super::*;

fn b(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

#[test]
fn async_completes_when_consumed_not_on_receipt() {
    let mut s = SendStream::new(8, 8);
    let a = s.push(b("a"), SendModel::Async);
    let c = s.push(b("c"), SendModel::Async);
    assert_eq!((a, c), (1, 2));
    assert_eq!(s.next_transmit().unwrap().0, 1);
    assert_eq!(s.next_transmit().unwrap().0, 2);
    assert!(s.next_transmit().is_none());
    assert!(
        s.on_cumulative_ack(2).is_empty(),
        "in the partner's process is not taken by its client"
    );
    assert_eq!(s.unacked_len(), 2);
    assert_eq!(
        s.on_consumed(1),
        vec![SendCompletion::Acked { seq: 1, code: None }]
    );
    assert_eq!(s.unacked_len(), 1);
    assert!(s.on_consumed(1).is_empty(), "repeated mark is a no-op");
}

#[test]
fn sync_waits_for_code_even_after_receipt() {
    let mut s = SendStream::new(8, 8);
    s.push(b("x"), SendModel::Sync);
    let (_, flags, _, _) = s.next_transmit().unwrap();
    assert!(flags.contains(Flags::SYNC));
    assert!(s.on_cumulative_ack(1).is_empty());
    assert_eq!(
        s.on_code(1, 42),
        Some(SendCompletion::Acked {
            seq: 1,
            code: Some(42)
        })
    );
    assert_eq!(s.on_code(1, 42), None, "duplicate code ignored");
}

#[test]
fn local_completes_once_on_transmission() {
    let mut s = SendStream::new(8, 8);
    s.push(b("x"), SendModel::Local);
    s.next_transmit().unwrap();
    assert_eq!(
        s.on_transmitted(1),
        Some(SendCompletion::Transmitted { seq: 1 })
    );
    assert_eq!(s.on_transmitted(1), None);
    assert!(s.on_cumulative_ack(1).is_empty(), "already reported");
    assert_eq!(s.unacked_len(), 0);
}

#[test]
fn credit_and_window_bound_transmission() {
    let mut s = SendStream::new(2, 10);
    for _ in 0..5 {
        s.push(b("m"), SendModel::Async);
    }
    assert_eq!(s.next_transmit().unwrap().0, 1);
    assert_eq!(s.next_transmit().unwrap().0, 2);
    assert!(s.next_transmit().is_none(), "window of 2 is full");
    s.on_consumed(2);
    assert_eq!(s.next_transmit().unwrap().0, 3);
    let mut c = SendStream::new(100, 1);
    c.push(b("m"), SendModel::Async);
    c.push(b("m"), SendModel::Async);
    c.next_transmit().unwrap();
    assert!(c.next_transmit().is_none(), "credit 1");
    c.on_credit(2);
    assert_eq!(c.next_transmit().unwrap().0, 2);
}

#[test]
fn replay_resends_unacked_in_order_flagged() {
    let mut s = SendStream::new(8, 8);
    for _ in 0..3 {
        s.push(b("m"), SendModel::Async);
    }
    while s.next_transmit().is_some() {}
    s.on_consumed(1);
    assert_eq!(s.replay_all(), 2);
    let (seq, flags, _, _) = s.next_transmit().unwrap();
    assert_eq!(seq, 2);
    assert!(flags.contains(Flags::REPLAY));
    assert_eq!(s.next_transmit().unwrap().0, 3);
    assert!(s.next_transmit().is_none());
}

#[test]
fn received_async_messages_are_not_replayed_and_a_mark_beyond_what_was_sent_is_capped() {
    let mut s = SendStream::new(8, 8);
    for _ in 0..4 {
        s.push(b("m"), SendModel::Async);
    }
    s.next_transmit().unwrap();
    s.next_transmit().unwrap();
    assert!(
        s.on_consumed(4).len() == 2 && s.unacked_len() == 2,
        "a mark beyond what was sent completes only what was sent"
    );
    while s.next_transmit().is_some() {}
    s.on_cumulative_ack(3);
    assert_eq!(
        s.replay_all(),
        1,
        "3 is in the partner's process (only its client's take is awaited): 4 alone goes again"
    );
    assert_eq!(s.next_transmit().unwrap().0, 4);
    assert!(s.next_transmit().is_none());
}

#[test]
fn send_ids_go_on_across_a_reset_and_a_rebase() {
    let mut s = SendStream::new(8, 8);
    assert_eq!(s.push(b("a"), SendModel::Async), 1);
    assert_eq!(s.push(b("b"), SendModel::Async), 2);
    assert_eq!(s.drain_unacked(), vec![1, 2]);
    s.reset(8);
    assert_eq!(
        s.push(b("c"), SendModel::Async),
        3,
        "no id reused after a reset"
    );
    assert_eq!(
        s.next_transmit().unwrap().0,
        1,
        "the wire numbering restarts"
    );
    s.rebase(8);
    assert_eq!(
        s.push(b("d"), SendModel::Async),
        4,
        "no id reused after a rebase"
    );
}

#[test]
fn a_write_placed_one_sided_is_told_once_and_never_nacked_afterwards() {
    use crate::ids::LinkId;
    let t0 = Instant::now();
    let mut s = SendStream::new(8, 8);
    let w = s.push_write(b("w"), Some(Duration::from_secs(1)), Some(t0));
    let bytes_write = s.push_write(b("v"), None, Some(t0));
    let (seq, ..) = s.next_transmit().unwrap();
    s.note_write_route(seq, Some(LinkId::new(3)));
    let (seq2, ..) = s.next_transmit().unwrap();
    s.note_write_route(seq2, None); // went with its bytes: waits for the partner's code
    assert_eq!(s.on_transmitted(seq2), None);
    assert_eq!(
        s.on_transmitted(seq),
        Some(SendCompletion::Placed { seq: w })
    );
    assert_eq!(s.on_transmitted(seq), None, "told once");
    assert_eq!(s.next_deadline(), None, "its deadline is disarmed");
    assert!(s.expire(t0 + Duration::from_secs(5)).is_empty());
    assert_eq!(
        s.on_code(seq, 0),
        None,
        "the partner's code is not a second completion"
    );
    // Placed again after a replay, then the stream is drained (a switch, a reset): only the
    // write that was not placed is NACKed.
    let w3 = s.push_write(b("x"), None, Some(t0));
    let (seq3, ..) = s.next_transmit().unwrap();
    s.note_write_route(seq3, Some(LinkId::new(3)));
    assert_eq!(
        s.on_transmitted(seq3),
        Some(SendCompletion::Placed { seq: w3 })
    );
    assert_eq!(s.replay_all(), 2, "both still on the wire's books");
    assert_eq!(s.drain_writes(), vec![bytes_write]);
    assert_eq!(s.unacked_len(), 0);
}
