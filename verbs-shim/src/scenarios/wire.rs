//! The wire layout of the [`super::Exchange`] messages: `[kind: u8][payload]`, the message
//! kinds, and the fixed little-endian layouts of QP endpoints and memory keys.

use crate::types::{QpEndpoint, RemoteMr};

/// Size of an encoded [`QpEndpoint`].
pub const ENDPOINT_WIRE_LEN: usize = 30;
/// Size of an encoded [`RemoteMr`].
pub const REMOTE_MR_WIRE_LEN: usize = 20;

/// `qpn u32 | psn u32 | gid [16] | mtu_bytes u32 | lid u16`, little-endian, 30 bytes.
pub fn encode_endpoint(ep: &QpEndpoint) -> [u8; ENDPOINT_WIRE_LEN] {
    let mut b = [0u8; ENDPOINT_WIRE_LEN];
    b[0..4].copy_from_slice(&ep.qpn.to_le_bytes());
    b[4..8].copy_from_slice(&ep.psn.to_le_bytes());
    b[8..24].copy_from_slice(&ep.gid);
    b[24..28].copy_from_slice(&ep.mtu_bytes.to_le_bytes());
    b[28..30].copy_from_slice(&ep.lid.to_le_bytes());
    b
}

/// The inverse of [`encode_endpoint`]; `None` unless `b` is exactly 30 bytes.
pub fn decode_endpoint(b: &[u8]) -> Option<QpEndpoint> {
    let b: &[u8; ENDPOINT_WIRE_LEN] = b.try_into().ok()?;
    let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let mut gid = [0u8; 16];
    gid.copy_from_slice(&b[8..24]);
    Some(QpEndpoint {
        qpn: u32_at(0),
        psn: u32_at(4),
        gid,
        mtu_bytes: u32_at(24),
        lid: u16::from_le_bytes([b[28], b[29]]),
    })
}

/// `addr u64 | rkey u32 | len u64`, little-endian, 20 bytes.
pub fn encode_remote_mr(mr: &RemoteMr) -> [u8; REMOTE_MR_WIRE_LEN] {
    let mut b = [0u8; REMOTE_MR_WIRE_LEN];
    b[0..8].copy_from_slice(&mr.addr.to_le_bytes());
    b[8..12].copy_from_slice(&mr.rkey.to_le_bytes());
    b[12..20].copy_from_slice(&mr.len.to_le_bytes());
    b
}

/// The inverse of [`encode_remote_mr`]; `None` unless `b` is exactly 20 bytes.
pub fn decode_remote_mr(b: &[u8]) -> Option<RemoteMr> {
    let b: &[u8; REMOTE_MR_WIRE_LEN] = b.try_into().ok()?;
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[0..8]);
    let mut l = [0u8; 8];
    l.copy_from_slice(&b[12..20]);
    Some(RemoteMr {
        addr: u64::from_le_bytes(a),
        rkey: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
        len: u64::from_le_bytes(l),
    })
}

pub(super) const K_ENDPOINT: u8 = 1;
pub(super) const K_MR: u8 = 2;
pub(super) const K_READY: u8 = 3;
pub(super) const K_DONE: u8 = 4;
pub(super) const K_OK: u8 = 5;
pub(super) const K_INFO: u8 = 6;
pub(super) const K_ABORT: u8 = 0xEE;

pub(super) fn kind_name(k: u8) -> String {
    match k {
        K_ENDPOINT => "ENDPOINT".into(),
        K_MR => "MR".into(),
        K_READY => "READY".into(),
        K_DONE => "DONE".into(),
        K_OK => "OK".into(),
        K_INFO => "INFO".into(),
        K_ABORT => "ABORT".into(),
        other => format!("unknown kind {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_layouts_round_trip() {
        let ep = QpEndpoint {
            qpn: 0x12_3456,
            psn: 0xab_cdef,
            gid: [7; 16],
            mtu_bytes: 1024,
            lid: 3,
        };
        assert_eq!(decode_endpoint(&encode_endpoint(&ep)), Some(ep));
        assert_eq!(decode_endpoint(&[0; 29]), None);
        let mr = RemoteMr {
            addr: 0x7f00_1234_5000,
            rkey: 0xdead_beef,
            len: 4096,
        };
        assert_eq!(decode_remote_mr(&encode_remote_mr(&mr)), Some(mr));
        assert_eq!(decode_remote_mr(&[0; 21]), None);
    }
}
