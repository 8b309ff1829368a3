//! The verbs objects' bookkeeping: opened contexts, protection domains, memory regions (with
//! their bytes -- owned, or a caller's mapped file -- and keys), completion queues and queue pairs -- creating, looking up and
//! destroying them. What happens to requests on a QP is the engine's job ([`super::engine`]).

use super::qp::{ack_timeout, rnr_timer, RecvEntry, SendEntry};
use super::{invalid, World};
use crate::error::VerbsError;
use crate::mapped::MappedFile;
use crate::sim::eventfd::EventFd;
use crate::sim::rng::Rng;
use crate::types::{Access, AsyncEvent, QpCaps, QpState, WorkCompletion};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest queue a QP may ask for (like a device's `max_qp_wr`).
pub(crate) const MAX_QP_WR: u32 = 16_384;
/// Largest completion queue (like `max_cqe`).
pub(crate) const MAX_CQE: u32 = 65_536;

pub(super) struct CtxRec {
    pub(super) dev: usize,
    pub(super) events: VecDeque<AsyncEvent>,
}

pub(super) struct PdRec {
    dev: usize,
    ctx: u64,
}

/// A region's bytes: its own, or the caller's mapping it was registered over (kept alive by
/// the record, so a leaked region keeps its mapping too).
pub(super) enum Bytes {
    Owned(Vec<u8>),
    Mapped(Arc<MappedFile>),
}

impl Bytes {
    pub(super) fn len(&self) -> usize {
        match self {
            Bytes::Owned(v) => v.len(),
            Bytes::Mapped(m) => m.len(),
        }
    }

    /// A copy of `len` bytes at `offset`, if inside.
    pub(super) fn get(&self, offset: usize, len: usize) -> Option<Vec<u8>> {
        match self {
            Bytes::Owned(v) => v.get(offset..offset.checked_add(len)?).map(<[u8]>::to_vec),
            Bytes::Mapped(m) => m.read(offset, len).ok(),
        }
    }

    /// Copies `data` in at `offset`; false (and nothing written) if it does not fit.
    pub(super) fn put(&mut self, offset: usize, data: &[u8]) -> bool {
        match self {
            Bytes::Owned(v) => {
                let Some(dst) = offset
                    .checked_add(data.len())
                    .and_then(|end| v.get_mut(offset..end))
                else {
                    return false;
                };
                dst.copy_from_slice(data);
                true
            }
            Bytes::Mapped(m) => m.write(offset, data).is_ok(),
        }
    }
}

pub(super) struct MrRec {
    dev: usize,
    pub(super) pd: u64,
    pub(super) addr: u64,
    pub(super) data: Bytes,
    pub(super) access: Access,
    key: u32,
    pub(super) registered: bool,
}

pub(super) struct CqRec {
    pub(super) dev: usize,
    pub(super) ctx: u64,
    pub(super) depth: usize,
    pub(super) entries: VecDeque<WorkCompletion>,
    pub(super) efd: Option<EventFd>,
    pub(super) efd_tried: bool,
    pub(super) overflowed: bool,
}

pub(crate) struct QpRec {
    pub(super) dev: usize,
    pub(super) ctx: u64,
    pub(super) pd: u64,
    pub(super) send_cq: u64,
    pub(super) recv_cq: u64,
    pub(super) caps: QpCaps,
    pub state: QpState,
    pub(super) port: u8,
    pub(super) gid_index: u8,
    pub(super) access: Access,
    pub(super) remote: Option<([u8; 16], u32)>,
    pub(super) rq_psn: u32,
    pub(super) sq_psn: u32,
    pub(super) min_rnr_timer: Duration,
    pub(super) ack_timeout: Option<Duration>,
    pub(super) retry_count: u8,
    pub(super) rnr_retry: u8,
    pub(super) sq: VecDeque<SendEntry>,
    pub(super) rq: VecDeque<RecvEntry>,
    pub(super) rng: Rng,
    pub(super) kick_at: Option<Instant>,
}

impl World {
    pub(crate) fn open_ctx(&mut self, dev: usize) -> u64 {
        let id = self.id();
        self.ctxs.insert(
            id,
            CtxRec {
                dev,
                events: VecDeque::new(),
            },
        );
        id
    }

    pub(crate) fn close_ctx(&mut self, ctx: u64) {
        self.ctxs.remove(&ctx);
    }

    pub(crate) fn alloc_pd(&mut self, dev: usize, ctx: u64) -> u64 {
        let id = self.id();
        self.pds.insert(id, PdRec { dev, ctx });
        id
    }

    pub(crate) fn free_pd(&mut self, pd: u64) {
        self.pds.remove(&pd);
    }

    /// Registers a zeroed region; returns (id, key, addr).
    pub(crate) fn reg_mr(
        &mut self,
        pd: u64,
        len: usize,
        access: Access,
    ) -> Result<(u64, u32, u64), VerbsError> {
        self.register(pd, Bytes::Owned(vec![0; len]), access)
    }

    /// Registers a region over a caller's mapping; returns (id, key, addr).
    pub(crate) fn reg_mapped(
        &mut self,
        pd: u64,
        mem: Arc<MappedFile>,
        access: Access,
    ) -> Result<(u64, u32, u64), VerbsError> {
        self.register(pd, Bytes::Mapped(mem), access)
    }

    fn register(
        &mut self,
        pd: u64,
        data: Bytes,
        access: Access,
    ) -> Result<(u64, u32, u64), VerbsError> {
        let len = data.len();
        let dev = self
            .pds
            .get(&pd)
            .ok_or_else(|| invalid("protection domain was freed"))?
            .dev;
        if access.intersects(Access::REMOTE_WRITE) && !access.contains(Access::LOCAL_WRITE) {
            // ibv_reg_mr: remote write requires local write (EINVAL).
            return Err(invalid(
                "REMOTE_WRITE access requires LOCAL_WRITE (as ibv_reg_mr)",
            ));
        }
        if len > (1 << 30) {
            return Err(invalid(format!(
                "simulated regions are limited to 1 GiB, not {len} bytes"
            )));
        }
        let key = loop {
            let index = self.next_key_index & 0x00ff_ffff;
            self.next_key_index = self.next_key_index.wrapping_add(1).max(1);
            let k = (index << 8) | (self.rng.next_u64() & 0xff) as u32;
            if !self.keys.contains_key(&(dev, k)) {
                break k;
            }
        };
        let addr = self.devs[dev].next_addr;
        let span = (len as u64).div_ceil(4096) * 4096 + 4096;
        self.devs[dev].next_addr = addr.wrapping_add(span);
        let id = self.id();
        self.mrs.insert(
            id,
            MrRec {
                dev,
                pd,
                addr,
                data,
                access,
                key,
                registered: true,
            },
        );
        self.keys.insert((dev, key), id);
        Ok((id, key, addr))
    }

    pub(crate) fn mr_write(
        &mut self,
        mr: u64,
        offset: usize,
        data: &[u8],
    ) -> Result<(), VerbsError> {
        let m = self
            .mrs
            .get_mut(&mr)
            .ok_or_else(|| invalid("memory region is gone"))?;
        if !m.data.put(offset, data) {
            return Err(invalid(format!(
                "write of {} bytes at {offset} beyond a {}-byte region",
                data.len(),
                m.data.len()
            )));
        }
        Ok(())
    }

    pub(crate) fn mr_read(
        &self,
        mr: u64,
        offset: usize,
        len: usize,
    ) -> Result<Vec<u8>, VerbsError> {
        let m = self
            .mrs
            .get(&mr)
            .ok_or_else(|| invalid("memory region is gone"))?;
        m.data.get(offset, len).ok_or_else(|| {
            invalid(format!(
                "read of {len} bytes at {offset} beyond a {}-byte region",
                m.data.len()
            ))
        })
    }

    /// Invalidates the region's keys; its bytes stay readable locally. Fails (and changes
    /// nothing) while deregistrations on the region's node are made to fail.
    pub(crate) fn deregister(&mut self, mr: u64) -> Result<(), VerbsError> {
        let Some(m) = self.mrs.get_mut(&mr) else {
            return Ok(());
        };
        if !m.registered {
            return Ok(());
        }
        if self.nodes[self.devs[m.dev].node].fail_dereg {
            return Err(VerbsError::from_errno("ibv_dereg_mr", libc::EBUSY));
        }
        m.registered = false;
        let k = (m.dev, m.key);
        self.keys.remove(&k);
        Ok(())
    }

    /// The node a region is on.
    pub(crate) fn mr_node(&self, mr: u64) -> Option<usize> {
        self.mrs.get(&mr).map(|m| self.devs[m.dev].node)
    }

    /// The node a completion queue is on.
    pub(crate) fn cq_node(&self, cq: u64) -> Option<usize> {
        self.cqs.get(&cq).map(|c| self.devs[c.dev].node)
    }

    /// The node a queue pair is on.
    pub(crate) fn qp_node(&self, qpn: u32) -> Option<usize> {
        self.qp_dev(qpn).map(|d| self.devs[d].node)
    }

    /// The name of the device a region is on (for logs).
    pub(crate) fn mr_device(&self, mr: u64) -> String {
        self.mrs
            .get(&mr)
            .map(|m| self.devs[m.dev].name.clone())
            .unwrap_or_default()
    }

    /// Forgets a deregistered region and its bytes.
    pub(crate) fn drop_mr(&mut self, mr: u64) {
        self.mrs.remove(&mr);
    }

    pub(crate) fn create_cq(
        &mut self,
        dev: usize,
        ctx: u64,
        depth: u32,
    ) -> Result<u64, VerbsError> {
        if depth == 0 || depth > MAX_CQE {
            return Err(invalid(format!("CQ depth {depth} outside 1..={MAX_CQE}")));
        }
        let id = self.id();
        self.cqs.insert(
            id,
            CqRec {
                dev,
                ctx,
                depth: depth as usize,
                entries: VecDeque::new(),
                efd: None,
                efd_tried: false,
                overflowed: false,
            },
        );
        Ok(id)
    }

    pub(crate) fn register_cq_addr(&mut self, addr: usize, cq: u64) {
        self.cq_addr.insert(addr, cq);
    }

    pub(crate) fn destroy_cq(&mut self, cq: u64, addr: usize) {
        self.cqs.remove(&cq);
        if self.cq_addr.get(&addr) == Some(&cq) {
            self.cq_addr.remove(&addr);
        }
    }

    pub(crate) fn create_qp(
        &mut self,
        pd: u64,
        send_cq_addr: usize,
        recv_cq_addr: usize,
        caps: QpCaps,
    ) -> Result<u32, VerbsError> {
        let p = self
            .pds
            .get(&pd)
            .ok_or_else(|| invalid("protection domain was freed"))?;
        let (dev, ctx) = (p.dev, p.ctx);
        let lookup = |addr: usize, which: &str| -> Result<u64, VerbsError> {
            let id = *self.cq_addr.get(&addr).ok_or_else(|| {
                invalid(format!(
                    "{which} CQ does not belong to this simulated fabric"
                ))
            })?;
            match self.cqs.get(&id) {
                Some(c) if c.dev == dev => Ok(id),
                _ => Err(invalid(format!("{which} CQ belongs to another device"))),
            }
        };
        let send_cq = lookup(send_cq_addr, "send")?;
        let recv_cq = lookup(recv_cq_addr, "receive")?;
        if caps.max_send_wr == 0 || caps.max_send_wr > MAX_QP_WR || caps.max_recv_wr > MAX_QP_WR {
            return Err(invalid(format!(
                "QP caps: max_send_wr {} / max_recv_wr {} outside 1..={MAX_QP_WR}",
                caps.max_send_wr, caps.max_recv_wr
            )));
        }
        if caps.max_sge > 32 {
            return Err(invalid(format!("QP caps: max_sge {} > 32", caps.max_sge)));
        }
        let qpn = self.next_qpn;
        self.next_qpn += 1;
        if self.next_qpn >= 1 << 24 {
            self.next_qpn = 17;
        }
        let rng = Rng::derive(self.seed, u64::from(qpn));
        self.qps.insert(
            qpn,
            QpRec {
                dev,
                ctx,
                pd,
                send_cq,
                recv_cq,
                caps,
                state: QpState::Reset,
                port: 1,
                gid_index: 0,
                access: Access::empty(),
                remote: None,
                rq_psn: 0,
                sq_psn: 0,
                min_rnr_timer: rnr_timer(12),
                ack_timeout: ack_timeout(14),
                retry_count: 7,
                rnr_retry: 7,
                sq: VecDeque::new(),
                rq: VecDeque::new(),
                rng,
                kick_at: None,
            },
        );
        Ok(qpn)
    }

    pub(crate) fn destroy_qp(&mut self, qpn: u32) {
        // As ibv_destroy_qp: outstanding requests vanish without completions.
        self.qps.remove(&qpn);
    }

    pub(crate) fn qp(&self, qpn: u32) -> Result<&QpRec, VerbsError> {
        self.qps
            .get(&qpn)
            .ok_or_else(|| invalid(format!("QP {qpn:#x} was destroyed")))
    }

    pub(super) fn qp_mut(&mut self, qpn: u32) -> Result<&mut QpRec, VerbsError> {
        self.qps
            .get_mut(&qpn)
            .ok_or_else(|| invalid(format!("QP {qpn:#x} was destroyed")))
    }

    pub(crate) fn qp_dev(&self, qpn: u32) -> Option<usize> {
        self.qps.get(&qpn).map(|q| q.dev)
    }

    /// The QP numbered `qpn` on `node`, if any.
    pub(crate) fn find_qp(&self, node: usize, qpn: u32) -> Option<u32> {
        self.qps
            .get(&qpn)
            .filter(|q| self.devs.get(q.dev).is_some_and(|d| d.node == node))
            .map(|_| qpn)
    }
}
