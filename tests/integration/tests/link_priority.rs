//! Issue 8, item 12: on a TCP link whose writer is backed up with large DATA frames (the
//! partner reads slowly), a HEARTBEAT queued after them goes out ahead of the DATA still
//! queued, so the partner hears the link is alive instead of judging it silent.

use bytes::Bytes;
use futures::StreamExt;
use peercm_cm_proto::frame::{Flags, MsgType};
use peercm_cm_proto::session::{LinkId, LocalDone};
use peercm_cm_proto::Frame;
use peercm_fallback_tcp::{spawn_link, FrameCodec, TcpLinkClosed, TcpLinkSink};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::{Framed, FramedRead};

#[derive(Clone)]
struct NullSink;

impl TcpLinkSink for NullSink {
    async fn frame(&self, _frame: Frame) -> bool {
        true
    }
    async fn oversize(&self, _header: peercm_cm_proto::Header) -> bool {
        true
    }
    async fn written(&self, _bytes: u64, _local_done: Vec<LocalDone>) -> bool {
        true
    }
    async fn closed(&self, _reason: TcpLinkClosed) {}
}

#[tokio::test]
async fn a_heartbeat_overtakes_queued_bulk_frames() {
    // 400 x 64 KiB = 25 MiB: far more than loopback socket buffers hold, so most of it is
    // still in the writer's queue when the heartbeat is queued (the reader has not started).
    const DATA: usize = 400;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let peer = TcpStream::connect(addr).await.expect("connect");
    let (ours, _) = listener.accept().await.expect("accept");
    let link = spawn_link(
        Framed::new(ours, FrameCodec::default()),
        LinkId::new(1),
        NullSink,
    );
    let payload = Bytes::from(vec![0x5a; 64 << 10]);
    for i in 0..DATA {
        let f = Frame::new(
            MsgType::Data,
            Flags::empty(),
            1,
            i as u64 + 1,
            0,
            payload.clone(),
        );
        assert!(link.send(f, None), "data frame {i}");
    }
    assert!(link.send(Frame::control(MsgType::Heartbeat, Bytes::new()), None));
    let mut frames = FramedRead::new(peer, FrameCodec::default());
    let mut data_before = 0usize;
    loop {
        let next = tokio::time::timeout(Duration::from_secs(60), frames.next())
            .await
            .expect("frames keep arriving");
        match next {
            Some(Ok(f)) if f.header.msg_type == MsgType::Heartbeat => break,
            Some(Ok(_)) => data_before += 1,
            other => panic!("the stream ended before the heartbeat: {other:?}"),
        }
    }
    assert!(
        data_before < DATA,
        "the heartbeat waited behind all {DATA} data frames"
    );
}
