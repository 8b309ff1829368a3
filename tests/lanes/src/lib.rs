//! The soft-RoCE lane runners: test code that runs peercm on real rdma_rxe HCAs inside the
//! lane's QEMU VMs (docs/softroce-lane.md). Nothing in the product depends on this crate.
//!
//! Three binaries, each a thin `main` over one module of this library:
//!
//! - `verbs-lane` ([`verbs`]): the verbs scenario suite (`peercm_verbs_shim::scenarios`) as one
//!   side of each scenario, in lockstep with a second process in the other VM
//!   (scripts/softroce/verbs-lane.sh);
//! - `manager-lane` ([`manager`]): the connection manager (`peercm_cm_manager::Node` on real
//!   verbs) in three roles, one per VM; the leader drives and judges every scenario
//!   (scripts/softroce/manager-lane.sh);
//! - `bench-lane` ([`mod@bench`]): one side of the one-sided write benchmark (a peercm node pair
//!   on one rail or on TCP), run next to perftest and iperf3 (scripts/softroce/bench-lane.sh).
//!
//! What both runners share lives at the top: command-line conventions and exit codes
//! ([`cli`]), the lane's abort file ([`abort`]), sysfs reads of RDMA ports ([`sysfs`]), the
//! netdev switch that cuts and restores a cable ([`netdev`]), and result reporting
//! ([`report`]).

pub mod abort;
pub mod bench;
pub mod cli;
pub mod manager;
pub mod netdev;
pub mod report;
pub mod sysfs;
pub mod verbs;
