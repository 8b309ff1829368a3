//! Item 13 of issue 8: user-facing messages say what happened and who is to blame, exactly
//! once. Each test asserts the exact text a user or an operator reads.

mod common;

use bytes::{Bytes, BytesMut};
use common::{spec, start_b};
use peercm_cm_manager::{CmError, SendModel};
use peercm_cm_proto::frame::MsgType;
use peercm_cm_proto::session::{LinkId, LocalDone};
use peercm_cm_proto::Frame;
use peercm_fallback_tcp::{spawn_link, FrameCodec, TcpLinkClosed, TcpLinkSink};
use std::error::Error;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::codec::Framed;

/// An error as an `anyhow` chain prints it: the message, then every `source()`.
fn chain(e: &dyn Error) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        text.push_str(": ");
        text.push_str(&s.to_string());
        next = s.source();
    }
    text
}

#[tokio::test]
async fn bind_error_names_the_address_and_the_os_error_once() {
    let taken = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = taken.local_addr().expect("addr");
    let mut cfg = common::fast_config(peercm_cm_manager::NodeConfig::new("node-x", "test"));
    cfg.listen = Some(addr);
    let Err(e) = peercm_cm_manager::Node::start(cfg, common::secret()).await else {
        panic!("a node started on an address already in use");
    };
    // EADDRINUSE is 98 on Linux, the only platform peercm runs on.
    let os = std::io::Error::from_raw_os_error(98).to_string();
    let expected = format!("cannot listen on {addr}: {os}");
    assert_eq!(e.to_string(), expected);
    assert_eq!(
        chain(&e),
        expected,
        "the OS error must not be repeated by source()"
    );
}

#[tokio::test]
async fn sending_on_a_closed_handle_says_the_handle_was_closed() {
    common::init_tracing();
    let b = start_b(None).await;
    let h = b
        .register("solo", spec(SendModel::Sync))
        .await
        .expect("register");
    h.close().await.expect("close");
    let e = h
        .send(Bytes::from_static(b"late"))
        .await
        .expect_err("send after close");
    assert!(matches!(e, CmError::ClientClosed), "{e:?}");
    assert_eq!(e.to_string(), "this client handle was closed");
    let e = h.connect().await.expect_err("connect after close");
    assert_eq!(e.to_string(), "this client handle was closed");
}

/// Records the reason a link closed.
#[derive(Clone)]
struct Sink(mpsc::UnboundedSender<String>);

impl TcpLinkSink for Sink {
    async fn frame(&self, _frame: Frame) -> bool {
        true
    }
    async fn oversize(&self, _header: peercm_cm_proto::Header) -> bool {
        true
    }
    async fn written(&self, _bytes: u64, _local_done: Vec<LocalDone>) -> bool {
        true
    }
    async fn closed(&self, reason: TcpLinkClosed) {
        let _ = self.0.send(chain(&reason));
    }
}

#[tokio::test]
async fn peer_closing_mid_frame_is_reported_with_the_byte_counts() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut peer = TcpStream::connect(addr).await.expect("connect");
    let (ours, _) = listener.accept().await.expect("accept");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _link = spawn_link(
        Framed::new(ours, FrameCodec::default()),
        LinkId::new(1),
        Sink(tx),
    );
    let mut frame = BytesMut::new();
    Frame::control(MsgType::Heartbeat, Bytes::from_static(&[1u8; 64])).encode(&mut frame);
    peer.write_all(&frame[..40]).await.expect("write");
    peer.shutdown().await.expect("shutdown");
    let reason = tokio::time::timeout(common::WAIT, rx.recv())
        .await
        .expect("the link closes")
        .expect("a reason");
    assert_eq!(
        reason,
        "peer closed the connection in the middle of a frame (40 of 100 bytes)"
    );
}
