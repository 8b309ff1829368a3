//! The client limit (issue 8, item 1): a node registers at most `MAX_CLIENTS_PER_NODE` clients
//! (refused at `register` with a typed error, never discovered at reconnect time), a partner
//! announcing more is refused with a reason, and a node's description no longer grows with its
//! clients (they are announced after the handshake, one bounded CLIENT-UP each).

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use peercm_cm_proto::control::{self, ClientAnnounce, MAX_CLIENTS_PER_NODE};
use peercm_cm_proto::frame::{Frame, MsgType};
use peercm_cm_proto::session::{
    ClientSpec, LatencyClass, ProtocolViolation, SessionError, SessionState,
};
use peercm_cm_proto::stream::SendModel;

fn spec() -> ClientSpec {
    ClientSpec {
        bandwidth_mbytes_per_s: 1,
        latency: LatencyClass::Normal,
        model: SendModel::Async,
    }
}

fn name(i: usize) -> String {
    format!("c{i:05}")
}

#[test]
fn register_refuses_the_client_beyond_the_limit_with_a_typed_error() {
    let mut p = Pair::new(1);
    for i in 0..MAX_CLIENTS_PER_NODE {
        p.a.register(&name(i), spec()).unwrap();
    }
    let err = p.a.register("one-too-many", spec()).unwrap_err();
    assert_eq!(
        err,
        SessionError::TooManyClients {
            limit: MAX_CLIENTS_PER_NODE
        }
    );
    assert!(err.to_string().contains("16384"), "{err}");
    // Closing one makes room again.
    let first = p.a.client_ids().next().unwrap();
    p.a.close(first, true).unwrap();
    p.a.register("one-too-many", spec()).unwrap();
}

#[test]
fn thousands_of_clients_come_up_over_one_link_in_bounded_frames() {
    const N: usize = 1024;
    let mut p = Pair::new(2);
    let mut ids = Vec::new();
    for i in 0..N {
        let id = p.a.register(&name(i), spec()).unwrap();
        p.a.connect(id).unwrap();
        ids.push(id);
        p.b.register(&name(i), spec()).unwrap();
    }
    p.add_link();
    p.drive();
    assert_eq!(p.a.state(), SessionState::Up);
    for id in ids {
        assert!(p.a.port_state(id).unwrap().is_up(), "{id} is up");
    }
    // The node description carries no client: its size is the same whatever their number.
    let info = control::encode(&p.a_info);
    assert!(info.len() < 100, "{} bytes", info.len());
}

#[test]
fn a_partner_announcing_more_clients_than_the_limit_is_refused() {
    let mut p = Pair::new(3);
    let link = p.add_link();
    p.drive();
    assert_eq!(p.b.state(), SessionState::Up);
    let announce = |i: usize| {
        Frame::control(
            MsgType::ClientUp,
            control::encode(&ClientAnnounce {
                name: name(i),
                id: i as u32 + 1,
                recv_window: 16,
                connecting: true,
            }),
        )
    };
    for i in 0..MAX_CLIENTS_PER_NODE {
        p.b.handle_frame(link, announce(i), p.now).unwrap();
    }
    let err =
        p.b.handle_frame(link, announce(MAX_CLIENTS_PER_NODE), p.now)
            .unwrap_err();
    assert!(matches!(err, ProtocolViolation::Control(_)), "{err}");
    assert!(err.to_string().contains("16384"), "{err}");
}
