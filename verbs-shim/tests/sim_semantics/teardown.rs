//! Tearing objects down when the driver refuses: a region whose deregistration fails is never
//! freed. The partner can still reach it through its rkey (the kernel still has it
//! registered), so its bytes must stay where they are: the simulator leaks it exactly as the
//! real backend's `Drop` does (`src/teardown.rs`).

use crate::common::{expect, fabric, pair, params};
use peercm_verbs_shim::types::{Access, WcStatus};
use peercm_verbs_shim::VerbsError;

#[test]
fn a_region_whose_deregistration_fails_is_leaked_not_freed() {
    let f = fabric(0x6a);
    let (a, b) = pair(&f, params(), params());
    let region = b.pd.clone().reg_mr(4096, Access::all()).unwrap();
    region.write(0, b"still registered").unwrap();
    let remote = region.remote();

    f.fail_deregistrations("n2", true).unwrap();
    assert!(
        matches!(
            region.deregister(),
            Err(VerbsError::Os {
                call: "ibv_dereg_mr",
                errno: libc::EBUSY,
                ..
            })
        ),
        "the failure is reported to an explicit deregister()"
    );
    // The last handle goes while the region is still registered.
    drop(region);

    // The partner still reaches the region: its bytes were kept, not freed, and its writes
    // land in memory nobody else was given.
    a.read(1, remote, 16);
    expect(&a.scq, 1, WcStatus::Success);
    assert_eq!(a.mr.read(0, 16).unwrap(), b"still registered");
    a.mr.write(0, b"written later").unwrap();
    a.write(2, remote, 0, 13);
    expect(&a.scq, 2, WcStatus::Success);
    a.read(3, remote, 16);
    expect(&a.scq, 3, WcStatus::Success);
    assert_eq!(a.mr.read(0, 13).unwrap(), b"written later");

    // Deregistrations work again; the leaked region stays leaked (nothing retries), and a
    // region dropped now is deregistered: the partner's access to it fails.
    f.fail_deregistrations("n2", false).unwrap();
    let normal = b.pd.clone().reg_mr(4096, Access::all()).unwrap();
    let gone = normal.remote();
    drop(normal);
    a.read(4, remote, 16);
    expect(&a.scq, 4, WcStatus::Success);
    a.read(5, gone, 16);
    expect(&a.scq, 5, WcStatus::RemAccessErr);
}

/// `hang_teardowns`: destroying a QP and deregistering a region on the node block until
/// released (as `rxe_destroy_qp` does while packets of the QP are held up), the rest of the
/// fabric keeps working meanwhile, and releasing lets the blocked calls finish.
#[test]
fn hung_teardowns_block_until_released_and_nothing_else_does() {
    let f = fabric(0x6b);
    let (a, b) = pair(&f, params(), params());
    let remote = b.mr.remote();
    f.hang_teardowns("n2", true).unwrap();
    let region = b.pd.clone().reg_mr(4096, Access::all()).unwrap();
    let b_qp = b.qp;
    let blocked = std::thread::spawn(move || {
        let dereg = region.deregister();
        drop(b_qp);
        dereg
    });
    // Wait (without a timing assertion) until the deregistration is blocked.
    while f.hung_teardowns("n2").unwrap() == 0 {
        std::thread::yield_now();
    }
    assert!(!blocked.is_finished());
    // The other node's teardowns are not affected, nor is the fabric.
    let other = a.pd.clone().reg_mr(64, Access::all()).unwrap();
    other.deregister().unwrap();
    drop(other);
    a.read(1, remote, 16);
    expect(&a.scq, 1, WcStatus::Success);
    f.hang_teardowns("n2", false).unwrap();
    blocked.join().unwrap().unwrap();
    assert_eq!(f.hung_teardowns("n2").unwrap(), 0);
}
