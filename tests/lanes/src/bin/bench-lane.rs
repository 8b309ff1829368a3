//! `bench-lane`: one side of the one-sided write benchmark in the soft-RoCE lane (see
//! [`peercm_tests_lanes::bench`] and scripts/softroce/bench-lane.sh).

fn main() -> std::process::ExitCode {
    peercm_tests_lanes::bench::main()
}
