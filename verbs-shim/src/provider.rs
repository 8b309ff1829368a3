//! The trait the manager uses to discover RDMA devices. The libibverbs backend and the
//! simulated HCA will both implement it; queue-pair, memory-region and completion APIs join it
//! with them.

use crate::types::{DeviceInfo, VerbsUnavailable};

/// A source of RDMA devices.
pub trait VerbsProvider: Send + Sync {
    /// Lists devices with their ports, or says why there are none to use.
    fn devices(&self) -> Result<Vec<DeviceInfo>, VerbsUnavailable>;
}

/// The provider of a build without a verbs backend: always unavailable, with the reason.
#[derive(Debug, Default, Clone, Copy)]
pub struct Unavailable;

impl VerbsProvider for Unavailable {
    fn devices(&self) -> Result<Vec<DeviceInfo>, VerbsUnavailable> {
        Err(VerbsUnavailable::BackendNotBuilt)
    }
}

/// The provider to use in this build.
pub fn unavailable() -> Unavailable {
    Unavailable
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unavailable_says_why() {
        let err = unavailable().devices().unwrap_err();
        assert_eq!(err, VerbsUnavailable::BackendNotBuilt);
        assert!(err.to_string().contains("TCP"));
    }
}
