//! `manager-lane`: the connection manager's scenarios on real RDMA devices, one role per VM
//! (see [`peercm_tests_lanes::manager`] and docs/softroce-lane.md).

fn main() -> std::process::ExitCode {
    peercm_tests_lanes::manager::main()
}
