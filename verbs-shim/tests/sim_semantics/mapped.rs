//! Regions registered over a caller's mapped file (`ProtectionDomain::reg_mapped`), the
//! memory of client regions: the partner's RDMA WRITE lands in the file; after the region is
//! invalidated (deregistered) a WRITE with its old rkey fails with a remote access error and
//! changes nothing; a WRITE past the region's end with a valid rkey fails the same way and
//! touches nothing; and the mapping outlives the registration.

use crate::common::{expect, fabric, pair, params};
use peercm_verbs_shim::types::{Access, WcStatus};
use peercm_verbs_shim::MappedFile;
use std::sync::Arc;

const LEN: u64 = 64 * 1024;

fn mapped(dir: &tempfile::TempDir) -> Arc<MappedFile> {
    let (m, created) = MappedFile::create_or_open(&dir.path().join("region"), LEN).unwrap();
    assert!(created);
    Arc::new(m)
}

const RIGHTS: Access = Access::LOCAL_WRITE.union(Access::REMOTE_WRITE);

#[test]
fn a_remote_write_lands_in_the_mapped_file() {
    let f = fabric(0x9a);
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = pair(&f, params(), params());
    let file = mapped(&dir);
    let region = b.pd.clone().reg_mapped(file.clone(), RIGHTS).unwrap();
    assert_eq!(region.len(), LEN as usize);

    a.mr.write(0, b"log record 1").unwrap();
    a.write(1, region.remote(), 40_000, 12);
    expect(&a.scq, 1, WcStatus::Success);

    assert_eq!(
        file.read(40_000, 12).unwrap(),
        b"log record 1",
        "in the mapping"
    );
    assert_eq!(
        region.read(40_000, 12).unwrap(),
        b"log record 1",
        "seen via the MR"
    );
    file.flush().unwrap();
    let disk = std::fs::read(dir.path().join("region")).unwrap();
    assert_eq!(
        &disk[40_000..40_012],
        b"log record 1",
        "in the file after flush"
    );
    assert!(
        disk[..40_000].iter().all(|b| *b == 0),
        "nothing else written"
    );

    // A local write through the region reaches the mapping as well.
    region.write(0, b"local").unwrap();
    assert_eq!(file.read(0, 5).unwrap(), b"local");
}

#[test]
fn a_write_after_invalidation_fails_with_a_remote_access_error_and_changes_nothing() {
    let f = fabric(0x9b);
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = pair(&f, params(), params());
    let file = mapped(&dir);
    let region = b.pd.clone().reg_mapped(file.clone(), RIGHTS).unwrap();
    let old = region.remote();

    a.mr.write(0, b"before").unwrap();
    a.write(1, old, 0, 6);
    expect(&a.scq, 1, WcStatus::Success);

    region.deregister().unwrap();
    a.mr.write(0, b"zombie").unwrap();
    a.write(2, old, 0, 6);
    expect(&a.scq, 2, WcStatus::RemAccessErr);
    assert_eq!(
        file.read(0, 6).unwrap(),
        b"before",
        "the fenced write did not land"
    );

    // Dropping the region leaves the mapping to its other holder, bytes intact.
    drop(region);
    assert_eq!(file.read(0, 6).unwrap(), b"before");
}

#[test]
fn an_out_of_bounds_write_with_a_valid_rkey_fails_and_touches_nothing() {
    let f = fabric(0x9c);
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = pair(&f, params(), params());
    let file = mapped(&dir);
    let region = b.pd.clone().reg_mapped(file.clone(), RIGHTS).unwrap();

    a.mr.write(0, &[0xEE; 16]).unwrap();
    // Starts inside, ends 8 bytes past the end.
    a.write(1, region.remote(), LEN - 8, 16);
    expect(&a.scq, 1, WcStatus::RemAccessErr);
    assert_eq!(
        file.read(0, LEN as usize).unwrap(),
        vec![0; LEN as usize],
        "no byte of the mapping changed"
    );
}

#[test]
fn a_region_without_remote_write_refuses_the_partner() {
    let f = fabric(0x9d);
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = pair(&f, params(), params());
    let file = mapped(&dir);
    let region =
        b.pd.clone()
            .reg_mapped(file.clone(), Access::LOCAL_WRITE)
            .unwrap();

    a.mr.write(0, b"nope").unwrap();
    a.write(1, region.remote(), 0, 4);
    expect(&a.scq, 1, WcStatus::RemAccessErr);
    assert_eq!(file.read(0, 4).unwrap(), vec![0; 4]);
}
