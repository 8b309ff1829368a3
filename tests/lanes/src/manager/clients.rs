//! The three clients of a storage pair every manager-lane node registers: name, record tag and
//! spec.

use peercm_cm_manager::{ClientSpec, LatencyClass, SendModel};

pub const MIRROR: &str = "mirror";
pub const CONFIG: &str = "config";
pub const HEARTBEAT: &str = "heartbeat";

pub fn client_specs() -> [(&'static str, u8, ClientSpec); 3] {
    [
        (
            MIRROR,
            1,
            ClientSpec {
                bandwidth_mbytes_per_s: 2000,
                latency: LatencyClass::Bulk,
                model: SendModel::Sync,
            },
        ),
        (
            CONFIG,
            2,
            ClientSpec {
                bandwidth_mbytes_per_s: 50,
                latency: LatencyClass::Normal,
                model: SendModel::Async,
            },
        ),
        (
            HEARTBEAT,
            3,
            ClientSpec {
                bandwidth_mbytes_per_s: 1,
                latency: LatencyClass::Critical,
                model: SendModel::Async,
            },
        ),
    ]
}

/// The record tag of a client (0 for an unknown name).
pub fn tag_of(name: &str) -> u8 {
    client_specs()
        .iter()
        .find(|(n, _, _)| *n == name)
        .map_or(0, |(_, t, _)| *t)
}
