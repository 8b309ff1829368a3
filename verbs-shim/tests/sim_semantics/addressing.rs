//! Addressing: GID tables like rxe's, GID index and address family, unreachable GIDs, wrong
//! PSNs, and CQs of another device.

use crate::common::{expect, fabric, nothing, pair, params, End, ACK_TIMEOUT};
use peercm_verbs_shim::types::{PortState, QpCaps, QpParams, WcStatus};
use peercm_verbs_shim::VerbsError;
use std::time::{Duration, Instant};

#[test]
fn gid_tables_look_like_rxe() {
    let f = fabric(0x5e);
    let p1 = f.provider("n1");
    let n1r0 = p1.open("rxe0").unwrap();
    let n2r1 = f.provider("n2").open("rxe1").unwrap();
    let g0 = n1r0.gid(1, 0).unwrap();
    assert_eq!(&g0[..2], &[0xfe, 0x80], "index 0 is link-local");
    assert_eq!(n1r0.gid(1, 1).unwrap()[10..], [0xff, 0xff, 10, 77, 1, 1]);
    assert_eq!(n2r1.gid(1, 1).unwrap()[10..], [0xff, 0xff, 10, 77, 2, 2]);
    assert!(matches!(
        n1r0.gid(1, 2),
        Err(VerbsError::InvalidArgument(_))
    ));
    assert!(matches!(
        n1r0.gid(2, 0),
        Err(VerbsError::InvalidArgument(_))
    ));
    let mut all = Vec::new();
    for n in ["n1", "n2"] {
        for d in ["rxe0", "rxe1"] {
            let dev = f.provider(n).open(d).unwrap();
            all.extend(dev.query_port(1).unwrap().gids);
        }
    }
    let mut dedup = all.clone();
    dedup.sort_unstable();
    dedup.dedup();
    assert_eq!(dedup.len(), all.len(), "every GID is distinct");
    // An uncabled device has only its link-local GID and a DOWN port.
    f.add_device("n1", "rxe9", 10).unwrap();
    let lone = p1.open("rxe9").unwrap();
    let port = lone.query_port(1).unwrap();
    assert_eq!((port.gids.len(), port.state), (1, PortState::Down));
}

#[test]
fn unreachable_gid_is_accepted_at_rtr_and_then_times_out() {
    let f = fabric(0x5f);
    let mut a = End::on(&f, "n1", "rxe0", params());
    let b = End::on(&f, "n2", "rxe0", params());
    let mut nowhere = b.endpoint(0);
    nowhere.gid[12..].copy_from_slice(&[10, 99, 0, 9]);
    a.qp.to_init(&a.params).unwrap();
    a.qp.to_rtr(&a.params, &nowhere).unwrap();
    a.qp.to_rts(&a.params, 0).unwrap();
    let t = Instant::now();
    a.send(1, 0, 8);
    expect(&a.scq, 1, WcStatus::RetryExcErr);
    assert!(
        t.elapsed() >= ACK_TIMEOUT * 4,
        "retries took only {:?}",
        t.elapsed()
    );
}

#[test]
fn gid_index_selects_the_address_family() {
    let f = fabric(0x60);
    // Link-local on both sides works.
    let ll = QpParams {
        gid_index: 0,
        ..params()
    };
    let (a, b) = pair(&f, ll, ll);
    b.recv(1, 0, 8);
    a.send(1, 0, 8);
    expect(&a.scq, 1, WcStatus::Success);
    // Link-local source to an IPv4-mapped destination does not.
    let (a, b) = pair(&f, ll, params());
    b.recv(1, 0, 8);
    a.send(2, 0, 8);
    expect(&a.scq, 2, WcStatus::RetryExcErr);
}

#[test]
fn a_wrong_psn_is_dropped_until_retries_run_out() {
    let f = fabric(0x61);
    let mut a = End::on(&f, "n1", "rxe0", params());
    let mut b = End::on(&f, "n2", "rxe0", params());
    a.qp.to_init(&a.params).unwrap();
    b.qp.to_init(&b.params).unwrap();
    let mut ea = a.endpoint(100);
    ea.psn = 105; // b expects a different first PSN than a will send
    a.qp.to_rtr(&a.params, &b.endpoint(200)).unwrap();
    b.qp.to_rtr(&b.params, &ea).unwrap();
    a.qp.to_rts(&a.params, 100).unwrap();
    b.qp.to_rts(&b.params, 200).unwrap();
    b.recv(1, 0, 8);
    a.send(1, 0, 8);
    expect(&a.scq, 1, WcStatus::RetryExcErr);
    nothing(&b.rcq, Duration::ZERO);
}

#[test]
fn cqs_of_another_device_are_rejected() {
    let f = fabric(0x62);
    let a = End::on(&f, "n1", "rxe0", params());
    let other = f.provider("n1").open("rxe1").unwrap();
    let foreign = other.create_cq(8).unwrap();
    let r =
        a.pd.clone()
            .create_qp(foreign, a.rcq.clone(), QpCaps::default());
    assert!(matches!(r, Err(VerbsError::InvalidArgument(_))));
}
