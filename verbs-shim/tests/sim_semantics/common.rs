//! The fixture every semantics test uses: the standard two-node fabric with fast timers, one
//! end of a QP pair ([`End`]) with its CQs and a region, connecting a pair, and waiting for
//! completions and async events.

use peercm_verbs_shim::api::{CompletionQueue, Device, MemoryRegion, ProtectionDomain, QueuePair};
use peercm_verbs_shim::sim::harness::{fast_params, seed_from_env, standard_fabric};
use peercm_verbs_shim::sim::SimFabric;
use peercm_verbs_shim::types::{
    Access, AsyncEvent, QpCaps, QpEndpoint, QpParams, RecvWr, RemoteMr, SendWr, Sge, WcStatus,
    WorkCompletion,
};
use std::sync::Arc;
use std::time::Duration;

pub(crate) const WAIT: Duration = Duration::from_secs(2);

pub(crate) fn fabric(default_seed: u64) -> SimFabric {
    standard_fabric(seed_from_env(default_seed)).unwrap()
}

/// Fast timers (1 ms ACK timeout, 3 retries) over the IPv4-mapped GID.
pub(crate) fn params() -> QpParams {
    QpParams {
        gid_index: 1,
        ..fast_params()
    }
}

/// ACK timeout of `params()`: exponent 8, 4.096 us * 256.
pub(crate) const ACK_TIMEOUT: Duration = Duration::from_nanos(4096 * 256);

pub(crate) struct End {
    pub(crate) dev: Arc<dyn Device>,
    pub(crate) pd: Arc<dyn ProtectionDomain>,
    pub(crate) scq: Arc<dyn CompletionQueue>,
    pub(crate) rcq: Arc<dyn CompletionQueue>,
    pub(crate) qp: Box<dyn QueuePair>,
    pub(crate) mr: Arc<dyn MemoryRegion>,
    pub(crate) params: QpParams,
}

impl End {
    pub(crate) fn on(f: &SimFabric, node: &str, dev: &str, params: QpParams) -> End {
        let dev = f.provider(node).open(dev).unwrap();
        let pd = dev.clone().alloc_pd().unwrap();
        let scq = dev.clone().create_cq(256).unwrap();
        let rcq = dev.clone().create_cq(256).unwrap();
        let qp = pd
            .clone()
            .create_qp(scq.clone(), rcq.clone(), QpCaps::default())
            .unwrap();
        let mr = pd.clone().reg_mr(64 * 1024, Access::all()).unwrap();
        End {
            dev,
            pd,
            scq,
            rcq,
            qp,
            mr,
            params,
        }
    }

    pub(crate) fn sge(&self, offset: u64, len: u32) -> Sge {
        Sge {
            mr: self.mr.clone(),
            offset,
            len,
        }
    }

    pub(crate) fn send(&self, wr_id: u64, offset: u64, len: u32) {
        let wr = SendWr::Send {
            wr_id,
            local: self.sge(offset, len),
            imm: None,
        };
        self.qp.post_send(wr).unwrap();
    }

    pub(crate) fn recv(&self, wr_id: u64, offset: u64, len: u32) {
        self.qp
            .post_recv(RecvWr {
                wr_id,
                local: self.sge(offset, len),
            })
            .unwrap();
    }

    pub(crate) fn write(&self, wr_id: u64, remote: RemoteMr, remote_offset: u64, len: u32) {
        let wr = SendWr::Write {
            wr_id,
            local: self.sge(0, len),
            remote,
            remote_offset,
            imm: None,
        };
        self.qp.post_send(wr).unwrap();
    }

    pub(crate) fn read(&self, wr_id: u64, remote: RemoteMr, len: u32) {
        let wr = SendWr::Read {
            wr_id,
            local: self.sge(0, len),
            remote,
            remote_offset: 0,
        };
        self.qp.post_send(wr).unwrap();
    }

    pub(crate) fn endpoint(&self, psn: u32) -> QpEndpoint {
        self.qp.endpoint(&self.params, psn).unwrap()
    }
}

pub(crate) fn connect(a: &mut End, b: &mut End) {
    a.qp.to_init(&a.params).unwrap();
    b.qp.to_init(&b.params).unwrap();
    let (ea, eb) = (a.endpoint(100), b.endpoint(200));
    a.qp.to_rtr(&a.params, &eb).unwrap();
    b.qp.to_rtr(&b.params, &ea).unwrap();
    a.qp.to_rts(&a.params, 100).unwrap();
    b.qp.to_rts(&b.params, 200).unwrap();
}

/// A connected QP pair n1/rxe0 (a) <-> n2/rxe0 (b).
pub(crate) fn pair(f: &SimFabric, pa: QpParams, pb: QpParams) -> (End, End) {
    let mut a = End::on(f, "n1", "rxe0", pa);
    let mut b = End::on(f, "n2", "rxe0", pb);
    connect(&mut a, &mut b);
    (a, b)
}

pub(crate) fn one(cq: &Arc<dyn CompletionQueue>) -> WorkCompletion {
    let v = cq.wait(1, WAIT).unwrap();
    assert_eq!(
        v.len(),
        1,
        "expected one completion within {WAIT:?}, got none"
    );
    v[0]
}

pub(crate) fn expect(
    cq: &Arc<dyn CompletionQueue>,
    wr_id: u64,
    status: WcStatus,
) -> WorkCompletion {
    let wc = one(cq);
    assert_eq!((wc.wr_id, wc.status), (wr_id, status), "completion {wc:?}");
    wc
}

pub(crate) fn nothing(cq: &Arc<dyn CompletionQueue>, for_: Duration) {
    let v = cq.wait(1, for_).unwrap();
    assert!(
        v.is_empty(),
        "expected no completion for {for_:?}, got {v:?}"
    );
}

pub(crate) fn event(dev: &Arc<dyn Device>) -> Option<AsyncEvent> {
    dev.next_async_event(WAIT).unwrap()
}
