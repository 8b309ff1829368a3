//! No library code: peercm's cross-crate integration tests live in tests/integration/tests/
//! (`cargo test -p peercm-tests-integration`); the soft-RoCE lane runners in tests/lanes
//! (`peercm-tests-lanes`).
