//! The real backend: rdma-core's libibverbs through `rdma-mummy-sys` (loaded at run time).
