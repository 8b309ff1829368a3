//! `verbs-lane`: the verbs scenario suite on real RDMA devices, one side per process (see
//! [`peercm_tests_lanes::verbs`] and docs/softroce-lane.md).

fn main() -> std::process::ExitCode {
    peercm_tests_lanes::verbs::main()
}
