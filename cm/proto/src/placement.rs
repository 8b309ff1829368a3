//! Bandwidth placement policy (work in progress).
