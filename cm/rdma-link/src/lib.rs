//! peercm RDMA transport (work in progress).
