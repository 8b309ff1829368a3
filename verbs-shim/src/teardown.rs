//! What happens when destroying a verbs object fails: the one policy both backends' `Drop`s
//! follow.
//!
//! A failed `ibv_dereg_mr` / `ibv_destroy_qp` / `ibv_destroy_cq` / `ibv_dealloc_pd` leaves the
//! object alive in the kernel, and the HCA may still use it: a region that is still registered
//! can still be written by the HCA, or by the partner through its rkey. Freeing its buffer then
//! would hand memory the device can still write into back to the allocator. So a failed destroy
//! **leaks**: the object's memory is never freed, and the parents it still depends on (its
//! protection domain, completion queues, device context) are kept alive for good, because the
//! kernel still ties them to it. The leak is bounded (one object per failure, which only
//! happens on a broken device or driver) and logged at error level with the device and the
//! size, so an operator sees it. Nothing retries: a destroy that failed once is not assumed to
//! succeed later.
//!
//! [`dispose`] is that decision, separate from the FFI so it is unit-tested with fake results;
//! the simulator's regions follow it too (with an injectable deregistration failure), so the
//! behaviour is also tested end to end there (`tests/sim_semantics/teardown.rs`).

use crate::error::VerbsError;

/// What a `Drop` may do after trying to destroy its verbs object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub(crate) enum Disposal {
    /// The object is destroyed: its memory may be freed and its parents released.
    Release,
    /// The destroy failed and the kernel (and the HCA) may still use the object: leak its memory
    /// and keep its parents alive.
    Leak,
}

/// Decides what to do after destroying `object` (for example `"memory region"` or
/// `"queue pair 0x11"`) on `device`
/// returned `destroyed`; `bytes` is the size of the memory the object owns, if any. A failure
/// is logged at error level, with the device, the size and the error.
pub(crate) fn dispose(
    object: &str,
    device: &str,
    bytes: Option<usize>,
    destroyed: Result<(), VerbsError>,
) -> Disposal {
    match destroyed {
        Ok(()) => Disposal::Release,
        Err(error) => {
            tracing::error!(
                object,
                device,
                bytes,
                %error,
                "destroying an RDMA {object} on {device} failed: leaking it (its memory is never \
                 freed and its parents stay allocated, because the device may still use them)"
            );
            Disposal::Leak
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    /// Collects what a tracing subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn logged(f: impl FnOnce()) -> String {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::TRACE)
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let bytes = out.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[test]
    fn a_successful_destroy_releases_quietly() {
        let log = logged(|| {
            assert_eq!(
                dispose("memory region", "mlx5_0", Some(4096), Ok(())),
                Disposal::Release
            );
        });
        assert_eq!(log, "", "nothing logged for a normal destroy");
    }

    #[test]
    fn a_failed_deregistration_leaks_and_logs_an_error_with_device_and_length() {
        let busy = VerbsError::from_errno("ibv_dereg_mr", libc::EBUSY);
        let log = logged(|| {
            assert_eq!(
                dispose("memory region", "mlx5_0", Some(4 << 20), Err(busy)),
                Disposal::Leak,
                "memory still registered is never freed"
            );
        });
        assert!(log.contains("ERROR"), "logged at error level: {log}");
        assert!(log.contains("device=\"mlx5_0\""), "names the device: {log}");
        assert!(log.contains("bytes=4194304"), "gives the length: {log}");
        assert!(
            log.contains("ibv_dereg_mr failed"),
            "gives the error: {log}"
        );
    }

    #[test]
    fn every_kind_of_failed_destroy_leaks() {
        for object in ["queue pair", "completion queue", "protection domain"] {
            let e = VerbsError::from_errno("ibv_destroy", libc::EIO);
            let log = logged(|| {
                assert_eq!(dispose(object, "rxe0", None, Err(e)), Disposal::Leak);
            });
            assert!(log.contains(object) && log.contains("ERROR"), "{log}");
        }
    }
}
