//! Plain conversions between libibverbs codes and the shim's types (port states, link speed,
//! MTU, access flags, completion opcodes, QP states). No FFI calls.

use crate::error::VerbsError;
use crate::types::{Access, PortState, QpState, WcOpcode};
use rdma_mummy_sys as sys;

pub(super) fn port_state(code: u32) -> PortState {
    match code {
        1 => PortState::Down,
        2 => PortState::Init,
        3 => PortState::Armed,
        4 => PortState::Active,
        other => PortState::Other(other as u8),
    }
}

/// Capacity in Mb/s from `active_speed` (per lane) and `active_width` (lanes).
pub(super) fn capacity_mbits_per_s(speed: u8, speed_ex: u32, width: u8) -> u32 {
    let per_lane = match speed {
        1 => 2.5,
        2 => 5.0,
        4 | 8 => 10.0,
        16 => 14.0,
        32 => 25.0,
        64 => 50.0,
        128 => 100.0,
        0 if speed_ex > 0 => 200.0,
        _ => 2.5,
    };
    let lanes = match width {
        1 => 1.0,
        2 => 4.0,
        4 => 8.0,
        8 => 12.0,
        16 => 2.0,
        _ => 1.0,
    };
    (per_lane * lanes * 1000.0) as u32
}

pub(super) fn mtu_enum(bytes: u32) -> Result<u32, VerbsError> {
    Ok(match bytes {
        256 => 1,
        512 => 2,
        1024 => 3,
        2048 => 4,
        4096 => 5,
        other => {
            return Err(VerbsError::InvalidArgument(format!(
                "MTU {other} bytes: must be 256, 512, 1024, 2048 or 4096"
            )))
        }
    })
}

pub(super) fn access_bits(a: Access) -> i32 {
    let mut bits = 0u32;
    if a.contains(Access::LOCAL_WRITE) {
        bits |= sys::ibv_access_flags::IBV_ACCESS_LOCAL_WRITE.0;
    }
    if a.contains(Access::REMOTE_WRITE) {
        bits |= sys::ibv_access_flags::IBV_ACCESS_REMOTE_WRITE.0;
    }
    if a.contains(Access::REMOTE_READ) {
        bits |= sys::ibv_access_flags::IBV_ACCESS_REMOTE_READ.0;
    }
    bits as i32
}

pub(super) fn wc_opcode(code: u32) -> WcOpcode {
    match code {
        0 => WcOpcode::Send,
        1 => WcOpcode::RdmaWrite,
        2 => WcOpcode::RdmaRead,
        128 => WcOpcode::Recv,
        129 => WcOpcode::RecvRdmaWithImm,
        other => WcOpcode::Other(other),
    }
}

pub(super) fn state_from(code: u32) -> QpState {
    match code {
        0 => QpState::Reset,
        1 => QpState::Init,
        2 => QpState::Rtr,
        3 => QpState::Rts,
        4 => QpState::Sqd,
        5 => QpState::Sqe,
        _ => QpState::Err,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_from_speed_and_width() {
        assert_eq!(capacity_mbits_per_s(1, 0, 1), 2500, "SDR 1x");
        assert_eq!(capacity_mbits_per_s(32, 0, 2), 100_000, "EDR 4x");
        assert_eq!(capacity_mbits_per_s(64, 0, 2), 200_000, "HDR 4x");
    }

    #[test]
    fn mtu_bytes_map_to_the_enum() {
        assert_eq!(mtu_enum(1024).unwrap(), 3);
        assert!(mtu_enum(1500).is_err());
    }
}
