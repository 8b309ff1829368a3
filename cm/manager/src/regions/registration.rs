//! [`RegionRegistration`]: a region registered as one memory region per protection domain
//! (one per device the node uses), `LOCAL_WRITE | REMOTE_WRITE`, and its invalidation.
//!
//! Ownership: each memory region holds the region's mapping (`reg_mapped` keeps an `Arc` of
//! it), so no registration can outlive the mapping, whatever order things are dropped in.
//!
//! Invalidation (fencing, release, shutdown) deregisters each memory region, and on rdma_rxe
//! `ibv_dereg_mr` can block in the kernel; so the manager never does it in place: dropping a
//! [`RegionRegistration`] (or calling [`RegionRegistration::invalidate`]) hands every memory
//! region to the reaper (`crate::rails::teardown`, [`Teardown::Region`]), which deregisters it
//! on a thread of its own. From the moment the reaper's deregistration returns, the partner's
//! writes with the old rkey fail with a remote access error.
//!
//! The manager holds one registration per open region (`super::runtime`).

use super::{Region, RegionError};
use crate::rails::teardown::{Reaper, Teardown};
use peercm_verbs_shim::{Access, MemoryRegion, ProtectionDomain, RemoteMr};
use std::sync::Arc;

/// The rights a client region is registered with: the partner may RDMA WRITE into it.
pub(crate) const REGION_ACCESS: Access = Access::LOCAL_WRITE.union(Access::REMOTE_WRITE);

/// One memory region over the region's mapping, on one device's protection domain.
struct DeviceMr {
    device: String,
    mr: Arc<dyn MemoryRegion>,
}

/// A region registered on some devices. Dropping it invalidates every registration through
/// the reaper (see the module docs).
pub(crate) struct RegionRegistration {
    #[cfg_attr(not(test), allow(dead_code))]
    region: Region,
    mrs: Vec<DeviceMr>,
    reaper: Reaper,
}

impl RegionRegistration {
    /// Registers `region` on each `(device, protection domain)`. If one registration fails, the
    /// ones made already are handed to the reaper and the error names the device.
    pub fn register(
        region: &Region,
        pds: &[(String, Arc<dyn ProtectionDomain>)],
        reaper: &Reaper,
    ) -> Result<Self, RegionError> {
        let mut reg = RegionRegistration {
            region: region.clone(),
            mrs: Vec::with_capacity(pds.len()),
            reaper: reaper.clone(),
        };
        for (device, pd) in pds {
            let mr = pd
                .clone()
                .reg_mapped(region.memory().clone(), REGION_ACCESS)
                .map_err(|source| RegionError::Register {
                    name: region.name().to_string(),
                    device: device.clone(),
                    source,
                })?;
            reg.mrs.push(DeviceMr {
                device: device.clone(),
                mr,
            });
        }
        Ok(reg)
    }

    /// The region.
    #[cfg(test)]
    pub fn region(&self) -> &Region {
        &self.region
    }

    /// What the partner needs per device to write into the region: address, rkey, length.
    pub fn remote(&self) -> Vec<(&str, RemoteMr)> {
        self.mrs
            .iter()
            .map(|m| (m.device.as_str(), m.mr.remote()))
            .collect()
    }

    /// Invalidates every registration (on the reaper; never blocks): afterwards the partner's
    /// writes with these rkeys fail with a remote access error. The region stays open.
    #[cfg(test)]
    pub fn invalidate(self) {
        drop(self);
    }
}

impl Drop for RegionRegistration {
    fn drop(&mut self) {
        for m in self.mrs.drain(..) {
            self.reaper.submit(&m.device, Teardown::Region(m.mr));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::RegionTunables;
    use crate::regions::RegionStore;
    use peercm_verbs_shim::sim::harness::{fast_params, standard_fabric};
    use peercm_verbs_shim::sim::SimFabric;
    use peercm_verbs_shim::{
        CompletionQueue, Device, QpCaps, QpParams, QueuePair, SendWr, Sge, WcStatus,
    };
    use std::time::{Duration, Instant};
    use tokio::sync::mpsc;

    /// One end of a connected QP pair on the simulated fabric.
    struct End {
        pd: Arc<dyn ProtectionDomain>,
        cq: Arc<dyn CompletionQueue>,
        qp: Box<dyn QueuePair>,
    }

    fn end(f: &SimFabric, node: &str) -> End {
        let d: Arc<dyn Device> = f.provider(node).open("rxe0").unwrap();
        let pd = d.clone().alloc_pd().unwrap();
        let cq = d.create_cq(64).unwrap();
        let qp = pd
            .clone()
            .create_qp(cq.clone(), cq.clone(), QpCaps::default())
            .unwrap();
        End { pd, cq, qp }
    }

    fn connected(f: &SimFabric) -> (End, End) {
        let p = QpParams {
            gid_index: 1,
            ..fast_params()
        };
        let (mut a, mut b) = (end(f, "n1"), end(f, "n2"));
        a.qp.to_init(&p).unwrap();
        b.qp.to_init(&p).unwrap();
        let (ea, eb) = (a.qp.endpoint(&p, 1).unwrap(), b.qp.endpoint(&p, 2).unwrap());
        a.qp.to_rtr(&p, &eb).unwrap();
        b.qp.to_rtr(&p, &ea).unwrap();
        a.qp.to_rts(&p, 1).unwrap();
        b.qp.to_rts(&p, 2).unwrap();
        (a, b)
    }

    /// `a` writes `data` at `offset` of `remote`; the completion's status.
    fn write(a: &End, wr_id: u64, remote: RemoteMr, offset: u64, data: &[u8]) -> WcStatus {
        let src =
            a.pd.clone()
                .reg_mr(data.len(), Access::LOCAL_WRITE)
                .unwrap();
        src.write(0, data).unwrap();
        // The source region must live until the completion (posting keeps only its lkey).
        let local = Sge {
            mr: src.clone(),
            offset: 0,
            len: data.len() as u32,
        };
        a.qp.post_send(SendWr::Write {
            wr_id,
            local,
            remote,
            remote_offset: offset,
            imm: None,
        })
        .unwrap();
        let wc = a.cq.wait(1, Duration::from_secs(5)).unwrap();
        assert_eq!(wc.len(), 1, "a completion within 5 s");
        assert_eq!(wc[0].wr_id, wr_id);
        wc[0].status
    }

    fn store(dir: &tempfile::TempDir, max_bytes: u64) -> RegionStore {
        RegionStore::new(&RegionTunables {
            dir: Some(dir.path().to_path_buf()),
            max_bytes,
        })
    }

    /// Waits (bounded) for something the reaper's thread does.
    fn until(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !f() {
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn a_region_is_registered_per_device_and_the_partner_writes_into_its_file() {
        let f = standard_fabric(0x51).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let region = store(&dir, 1 << 20).open("nvram", 65_536).unwrap();
        let (tx, _rx) = mpsc::unbounded_channel();
        let reaper = Reaper::new(tx);
        let (a, b) = connected(&f);
        let rxe1 = f.provider("n2").open("rxe1").unwrap().alloc_pd().unwrap();
        let pds = [
            ("rxe0".to_string(), b.pd.clone()),
            ("rxe1".to_string(), rxe1),
        ];
        let reg = RegionRegistration::register(&region, &pds, &reaper).unwrap();
        let remote = reg.remote();
        assert_eq!(
            remote.iter().map(|r| r.0).collect::<Vec<_>>(),
            ["rxe0", "rxe1"]
        );
        assert!(remote.iter().all(|(_, r)| r.len == 65_536));
        assert_eq!(reg.region().name().as_str(), "nvram");

        assert_eq!(
            write(&a, 1, remote[0].1, 1000, b"mirrored"),
            WcStatus::Success
        );
        assert_eq!(region.read(1000, 8).unwrap(), b"mirrored");
    }

    /// Invalidation never blocks the caller: with every teardown on the node hanging (as
    /// `ibv_dereg_mr` can on rxe), `invalidate` returns at once and the deregistration waits on
    /// the reaper's thread; once it finishes, the partner's write with the old rkey fails with
    /// a remote access error and the file keeps what it had.
    #[test]
    fn invalidation_runs_on_the_reaper_and_then_the_old_rkey_is_refused() {
        let f = standard_fabric(0x52).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let region = store(&dir, 1 << 20).open("nvram", 65_536).unwrap();
        let (tx, _rx) = mpsc::unbounded_channel();
        let reaper = Reaper::new(tx);
        let (a, b) = connected(&f);
        let pds = [("rxe0".to_string(), b.pd.clone())];
        let reg = RegionRegistration::register(&region, &pds, &reaper).unwrap();
        let old = reg.remote()[0].1;
        assert_eq!(write(&a, 1, old, 0, b"before"), WcStatus::Success);

        f.hang_teardowns("n2", true).unwrap();
        reg.invalidate();
        until("the deregistration hangs on the reaper", || {
            f.hung_teardowns("n2").unwrap() == 1
        });
        assert_eq!(reaper.busy_on("rxe0"), 1);
        f.hang_teardowns("n2", false).unwrap();
        until("the reaper finished", || reaper.busy_on("rxe0") == 0);

        assert_eq!(write(&a, 2, old, 0, b"zombie"), WcStatus::RemAccessErr);
        assert_eq!(region.read(0, 6).unwrap(), b"before");
    }

    #[test]
    fn a_failed_registration_names_the_device() {
        let f = standard_fabric(0x53).unwrap();
        let dir = tempfile::tempdir().unwrap();
        // Above the simulator's 1 GiB per region: registration fails.
        let region = store(&dir, 2 << 30).open("big", (1 << 30) + 4096).unwrap();
        let (tx, _rx) = mpsc::unbounded_channel();
        let reaper = Reaper::new(tx);
        let pd = f.provider("n2").open("rxe0").unwrap().alloc_pd().unwrap();
        let e = RegionRegistration::register(&region, &[("rxe0".to_string(), pd)], &reaper)
            .err()
            .unwrap();
        assert!(
            matches!(&e, RegionError::Register { device, .. } if device == "rxe0"),
            "{e}"
        );
    }
}
