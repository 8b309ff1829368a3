//! Arbitrary payloads into every handshake state, and into every control payload decoder.
//!
//! Input layout: byte 0 picks the message type, byte 1 picks how the payload is built, the rest
//! is the payload. Besides raw payloads the target builds payloads whose authenticated prefix is
//! correct (AUTH's nonce and proof, or WELCOME's proof, followed by fuzzer bytes) so that the
//! checks behind the proof are reachable; IDENTIFY is fed to an acceptor that completed a genuine
//! AUTH. Nothing may panic; decoded values must re-encode and decode to
//! themselves.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use peercm_cm_proto::auth::{self, ClusterSecret, Role};
use peercm_cm_proto::control::{
    self, Auth, Challenge, ClientAnnounce, Hello, Identify, NodeInfo, RefuseReason, TransportCap,
    TransportMsg, Welcome,
};
use peercm_cm_proto::frame::{Flags, Frame, MsgType};
use peercm_cm_proto::handshake::{
    AcceptorStart, DialerExpectChallenge, DialerStart, HandshakeConfig,
};
use peercm_cm_proto::testkit::msg_type_from_byte;

const CLUSTER: &str = "fuzz-cluster";
const D_NONCE: [u8; 32] = [0x11; 32];
const A_NONCE: [u8; 32] = [0x22; 32];
const SECRET: &[u8] = b"5b0e7c39d1a48f26e3b7150c9d8a2f4e6c1b3d5f7a9e0c2b4d6f8a1c3e5b7d9f";

fn config(node: &str, instance: u64) -> HandshakeConfig {
    HandshakeConfig {
        cluster_id: CLUSTER.into(),
        secret: ClusterSecret::new(SECRET).expect("a strong secret"),
        node: NodeInfo {
            node_id: node.into(),
            instance,
            capabilities: vec![TransportCap::Tcp],
            max_payload_bytes: 1 << 20,
        },
    }
}

fn frame(t: MsgType, payload: Bytes) -> Frame {
    Frame::new(t, Flags::empty(), 0, 0, 0, payload)
}

/// Decodes `bytes` as `T`; if that works, the value must survive encode/decode unchanged.
macro_rules! check_decode {
    ($t:ty, $what:expr, $bytes:expr) => {
        if let Ok(v) = control::decode::<$t>($what, $bytes) {
            let again = control::encode(&v);
            let back: $t = control::decode($what, &again).expect("re-encoded value decodes");
            assert_eq!(back, v, "{} does not round-trip", $what);
        }
    };
}

fn dialer_expecting_challenge() -> DialerExpectChallenge {
    DialerStart::new(config("dialer", 1), D_NONCE).start().0
}

fuzz_target!(|data: &[u8]| {
    let (Some(&t), Some(&mode)) = (data.first(), data.get(1)) else {
        return;
    };
    let t = msg_type_from_byte(t);
    let raw = &data[2..];

    // Every control decoder on the raw bytes.
    check_decode!(Hello, "HELLO", raw);
    check_decode!(Challenge, "CHALLENGE", raw);
    check_decode!(Auth, "AUTH", raw);
    check_decode!(Welcome, "WELCOME", raw);
    check_decode!(Identify, "IDENTIFY", raw);
    check_decode!(NodeInfo, "NODE", raw);
    check_decode!(RefuseReason, "REFUSE", raw);
    check_decode!(ClientAnnounce, "CLIENT-UP", raw);
    check_decode!(String, "CLIENT-DOWN", raw);
    check_decode!(TransportMsg, "TRANSPORT", raw);
    if let Ok(node) = control::decode::<NodeInfo>("NODE", raw) {
        let _ = node.validate();
    }
    if let Ok(code) = control::decode_code(raw) {
        assert_eq!(control::decode_code(&control::encode_code(code)), Ok(code));
    }
    if let Ok((reason, id)) = control::decode_nack(raw) {
        assert_eq!(
            control::decode_nack(&control::encode_nack(reason, id)),
            Ok((reason, id))
        );
    }

    // Build the payload: raw, or an authenticated prefix followed by the fuzzer's bytes.
    let payload = match mode % 4 {
        // AUTH (dialer nonce and proof) or WELCOME (acceptor proof) with a correct proof, then
        // whatever follows.
        1 => {
            let role = if t == MsgType::Welcome {
                Role::Acceptor
            } else {
                Role::Dialer
            };
            let secret = config("x", 0).secret;
            let proof = auth::proof(&secret, role, CLUSTER, &D_NONCE, &A_NONCE);
            let mut v = Vec::new();
            if t != MsgType::Welcome {
                v.extend_from_slice(&D_NONCE);
            }
            v.extend_from_slice(&proof);
            v.extend_from_slice(raw);
            Bytes::from(v)
        }
        // HELLO for our cluster with the fuzzer's bytes appended (trailing-byte handling).
        2 => {
            let mut v = control::encode(&Hello {
                cluster_id: CLUSTER.into(),
            })
            .to_vec();
            v.extend_from_slice(raw);
            Bytes::from(v)
        }
        _ => Bytes::copy_from_slice(raw),
    };
    let f = frame(t, payload);

    // Acceptor waiting for HELLO.
    if let Ok((_, challenge)) = AcceptorStart::new(config("acceptor", 2), A_NONCE).handle(&f) {
        assert_eq!(challenge.header.msg_type, MsgType::Challenge);
    }

    // Dialer waiting for CHALLENGE (after a real start).
    let _ = dialer_expecting_challenge().handle(&f);

    // Acceptor waiting for AUTH, reached through a genuine HELLO.
    let (_, hello) = DialerStart::new(config("dialer", 1), D_NONCE).start();
    let (acc, challenge) = AcceptorStart::new(config("acceptor", 2), A_NONCE)
        .handle(&hello)
        .expect("genuine HELLO accepted");
    if let Ok((_, welcome)) = acc.handle(&f) {
        assert_eq!(welcome.header.msg_type, MsgType::Welcome);
    }

    // Dialer waiting for WELCOME, reached through a genuine CHALLENGE.
    let (dialer_welcome, auth) = dialer_expecting_challenge()
        .handle(&challenge)
        .expect("genuine CHALLENGE accepted");
    if let Ok((node, identify)) = dialer_welcome.handle(&f) {
        assert!(
            node.validate().is_ok(),
            "accepted an invalid node: {node:?}"
        );
        assert_eq!(identify.header.msg_type, MsgType::Identify);
    }

    // Acceptor waiting for IDENTIFY, reached through a genuine AUTH.
    let (acc, _) = AcceptorStart::new(config("acceptor", 2), A_NONCE)
        .handle(&hello)
        .expect("genuine HELLO accepted");
    let (acc, _) = acc.handle(&auth).expect("genuine AUTH accepted");
    if let Ok(node) = acc.handle(&f) {
        assert!(
            node.validate().is_ok(),
            "accepted an invalid node: {node:?}"
        );
    }
});
