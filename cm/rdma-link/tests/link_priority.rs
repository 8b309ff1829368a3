//! Issue 8, item 12: a control frame (here a HEARTBEAT) queued behind bulk DATA waiting for
//! credit is posted before that DATA, so a link busy with large frames still proves it is
//! alive within the heartbeat interval.

mod common;

use common::*;
use crossbeam_channel::{unbounded, Receiver, Sender};
use peercm_cm_proto::frame::MsgType;
use peercm_cm_proto::session::LocalDone;
use peercm_cm_proto::Frame;
use peercm_cm_rdma_link::{LinkCloseReason, LinkSink, PreparedLink};
use std::time::Duration;

/// A sink that takes nothing until the gate opens (so no credit goes back to the sender),
/// then forwards every frame's type.
struct GatedSink {
    gate: Receiver<()>,
    open: bool,
    out: Sender<MsgType>,
}

impl LinkSink for GatedSink {
    fn frame(&mut self, frame: Frame) -> bool {
        if !self.open {
            let _ = self.gate.recv();
            self.open = true;
        }
        self.out.send(frame.header.msg_type).is_ok()
    }
    fn oversize(&mut self, _header: peercm_cm_proto::Header) -> bool {
        true
    }
    fn written(&mut self, _bytes: u64, _local_done: Vec<LocalDone>) {}
    fn closed(&mut self, _reason: LinkCloseReason) {}
}

#[test]
fn a_heartbeat_overtakes_data_waiting_for_credit() {
    const DATA: u64 = 600;
    let f = fabric(0x12_0001);
    let (pa, ea) = PreparedLink::new(device(&f, "n1"), test_cfg(1)).unwrap();
    let (pb, eb) = PreparedLink::new(device(&f, "n2"), test_cfg(2)).unwrap();
    let (ea, eb) = (over_the_wire(&ea), over_the_wire(&eb));
    let (sink_a, _events_a) = unbounded();
    let (gate_tx, gate) = unbounded();
    let (out, received) = unbounded();
    let a = pa.connect(&eb, Box::new(ChanSink(sink_a))).unwrap();
    let _b = pb
        .connect(
            &ea,
            Box::new(GatedSink {
                gate,
                open: false,
                out,
            }),
        )
        .unwrap();
    for i in 0..DATA {
        assert!(a.send(data_frame(1, i, 1024), None), "data frame {i}");
    }
    assert!(
        a.stats().frames_queued > 0,
        "precondition: data is waiting for credit"
    );
    assert!(a.send(
        Frame::control(MsgType::Heartbeat, bytes::Bytes::new()),
        None
    ));
    gate_tx.send(()).unwrap();
    let mut data_before = 0u64;
    loop {
        match received.recv_timeout(Duration::from_secs(30)) {
            Ok(MsgType::Heartbeat) => break,
            Ok(_) => data_before += 1,
            Err(e) => panic!("the heartbeat never arrived ({data_before} data frames did): {e}"),
        }
    }
    assert!(
        data_before < DATA,
        "the heartbeat waited behind all {DATA} data frames"
    );
}
