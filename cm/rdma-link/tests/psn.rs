//! Initial packet sequence numbers are drawn at random, not derived from the QP number and the
//! link id: both recur (the kernel reuses QP numbers, link ids restart at 1 in every process),
//! so a derived PSN would repeat after a restart and a stale packet of the old queue pair could
//! fall into the new one's window.

mod common;

use common::*;
use peercm_cm_rdma_link::PreparedLink;

/// Four links prepared the same way, each on a fresh fabric with the same seed: the same QP
/// number and the same link id every time. A PSN derived from (QPN, link id) is the same four
/// times; random 24-bit PSNs are all equal only with probability 2^-72, so this cannot fail
/// by chance.
#[test]
fn links_with_the_same_qpn_and_link_id_get_different_initial_psns() {
    let mut seen = Vec::new();
    for _ in 0..4 {
        let f = fabric(0x95_0001);
        let (prepared, endpoint) = PreparedLink::new(device(&f, "n1"), test_cfg(1)).unwrap();
        assert!(endpoint.qp.psn < 1 << 24, "a PSN has 24 bits");
        seen.push((endpoint.qp.qpn, endpoint.qp.psn));
        drop(prepared);
    }
    let qpns: Vec<u32> = seen.iter().map(|s| s.0).collect();
    assert!(
        qpns.iter().all(|q| *q == qpns[0]),
        "precondition: the same QP number every time: {seen:x?}"
    );
    assert!(
        seen.iter().any(|s| s.1 != seen[0].1),
        "the same initial PSN four times for QPN {:#x} and link id 1: {seen:x?}",
        qpns[0]
    );
}
