//! The simulated backend: in-process HCAs with RC semantics and seeded fault injection.
