//! No library code: peercm's cross-crate integration tests live in tests/tests/
//! (`cargo test -p peercm-tests`); the soft-RoCE lane runners in tests/lanes
//! (`peercm-tests-lanes`).
