//! The real backend: rdma-core's libibverbs through `rdma-mummy-sys`, which loads
//! `libibverbs.so.1` with `dlopen` at run time. A peercm binary therefore starts on hosts with
//! no rdma-core installed; [`RealProvider::load`] then reports
//! [`VerbsUnavailable::LibraryMissing`], and the manager uses TCP.
//!
//! Every `unsafe` block here is FFI into libibverbs (or libc), each with its own `SAFETY`
//! comment (`clippy::undocumented_unsafe_blocks` is denied for the crate). The wrappers own
//! their objects and free them in `Drop`, and the `Arc` chain keeps parents alive (a PD holds
//! its device, a region or QP holds its PD, a QP holds its CQs), so destruction order is right
//! by construction. A destroy that fails leaks the object and keeps its parents alive for good
//! (`verbs-shim/src/teardown.rs`): memory the HCA may still write into is never freed. libibverbs
//! objects may be used from any thread (the library serialises internally), which is why the
//! wrappers are `Send + Sync`.
//!
//! One file per verbs object, as the safe wrappers of the `sideway` crate are laid out:
//!
//! - `mod.rs` (this file): loading the library, the device list and [`RealProvider`];
//! - `device.rs`: [`RealDevice`], an open device context (ports, GIDs, async events);
//! - `pd.rs`: [`RealPd`], a protection domain (registers regions, creates QPs);
//! - `mr.rs`: [`RealMr`], a registered region owning its buffer;
//! - `cq.rs`: [`RealCq`], a completion queue with its completion channel;
//! - `qp.rs`: [`RealQp`], an RC queue pair (state changes, posting);
//! - `convert.rs`: plain conversions between libibverbs codes and the shim's types.

#![allow(unsafe_code)]

mod convert;
mod cq;
mod device;
mod mr;
mod pd;
mod qp;

pub use cq::RealCq;
pub use device::RealDevice;
pub use mr::RealMr;
pub use pd::RealPd;
pub use qp::RealQp;

use crate::api::{Device, Provider};
use crate::error::VerbsError;
use crate::types::{DeviceInfo, VerbsUnavailable};
use rdma_mummy_sys as sys;
use std::ffi::CStr;
use std::sync::Arc;
use std::time::Duration;

/// Whether `libibverbs.so.1` can be loaded, and if not, the loader's reason.
fn library_status() -> Result<(), String> {
    const NAME: &CStr = c"libibverbs.so.1";
    // SAFETY: NAME is a NUL-terminated C string that outlives the call; dlopen has no other
    // precondition.
    let h = unsafe { libc::dlopen(NAME.as_ptr(), libc::RTLD_LAZY | libc::RTLD_LOCAL) };
    if h.is_null() {
        // SAFETY: dlerror takes no arguments; it returns null or a NUL-terminated message.
        let err = unsafe { libc::dlerror() };
        let why = if err.is_null() {
            "dlopen failed".to_string()
        } else {
            // SAFETY: `err` is the non-null, NUL-terminated message dlerror just returned,
            // valid until the next dl* call on this thread; it is copied out at once.
            unsafe { CStr::from_ptr(err) }
                .to_string_lossy()
                .into_owned()
        };
        return Err(why);
    }
    // SAFETY: `h` is the handle dlopen just returned, closed once; the library stays loaded
    // (rdma-mummy-sys holds its own handle), so nothing that uses it is unmapped.
    unsafe { libc::dlclose(h) };
    Ok(())
}

/// The device list, freed on drop.
struct DeviceList {
    list: *mut *mut sys::ibv_device,
    len: usize,
}

impl DeviceList {
    fn get() -> Result<DeviceList, VerbsUnavailable> {
        let mut n: i32 = 0;
        // SAFETY: `n` is a valid, writable out-parameter; the list returned is owned by the
        // DeviceList built below and freed once in its Drop.
        let list = unsafe { sys::ibv_get_device_list(&mut n) };
        if list.is_null() {
            // ENOSYS: the kernel has no RDMA (uverbs) support at all.
            return Err(VerbsUnavailable::NoDevice);
        }
        let dl = DeviceList {
            list,
            len: usize::try_from(n).unwrap_or(0),
        };
        if dl.len == 0 {
            return Err(VerbsUnavailable::NoDevice);
        }
        Ok(dl)
    }

    fn iter(&self) -> impl Iterator<Item = *mut sys::ibv_device> + '_ {
        (0..self.len).map(move |i| {
            // SAFETY: ibv_get_device_list returned an array of `len` device pointers (plus a
            // terminating null), alive until `self` frees it, and i < len.
            unsafe { *self.list.add(i) }
        })
    }
}

impl Drop for DeviceList {
    fn drop(&mut self) {
        // SAFETY: `list` came from ibv_get_device_list and is freed only here, once; devices
        // opened from it keep their own references (ibv_open_device), so freeing the list does
        // not invalidate them.
        unsafe { sys::ibv_free_device_list(self.list) }
    }
}

/// The name of `dev`, an entry of a live device list.
fn device_name(dev: *mut sys::ibv_device) -> String {
    // SAFETY: callers pass entries of a device list that is still alive; the call only reads
    // the device.
    let p = unsafe { sys::ibv_get_device_name(dev) };
    if p.is_null() {
        return String::new();
    }
    // SAFETY: `p` is non-null and points to the NUL-terminated name the device owns, which lives
    // as long as the list; it is copied out at once.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// libibverbs on this host.
#[derive(Debug, Clone, Copy)]
pub struct RealProvider(());

impl RealProvider {
    /// Loads libibverbs and checks that it lists at least one device. The ports' states do not
    /// matter: a device whose ports are all down is still opened and watched by the manager,
    /// and a later PORT_ACTIVE brings its rails up.
    pub fn load() -> Result<RealProvider, VerbsUnavailable> {
        library_status().map_err(VerbsUnavailable::LibraryMissing)?;
        let p = RealProvider(());
        p.devices()?;
        Ok(p)
    }
}

impl Provider for RealProvider {
    fn devices(&self) -> Result<Vec<DeviceInfo>, VerbsUnavailable> {
        let list = DeviceList::get()?;
        let mut out = Vec::new();
        for dev in list.iter() {
            let name = device_name(dev);
            match RealDevice::open_raw(dev, &name) {
                Ok(d) => out.push(d.info()),
                Err(e) => tracing::warn!(device = %name, error = %e, "cannot open RDMA device"),
            }
        }
        if out.is_empty() {
            return Err(VerbsUnavailable::NoDevice);
        }
        Ok(out)
    }

    fn open(&self, name: &str) -> Result<Arc<dyn Device>, VerbsError> {
        let list = DeviceList::get()?;
        for dev in list.iter() {
            if device_name(dev) == name {
                return Ok(Arc::new(RealDevice::open_raw(dev, name)?));
            }
        }
        Err(VerbsError::NoSuchDevice(name.to_string()))
    }
}

/// Waits until `fd` is readable or `timeout` passes; Ok(true) when readable.
fn wait_readable(fd: i32, timeout: Duration) -> Result<bool, VerbsError> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    loop {
        // SAFETY: `pfd` is one valid, writable pollfd and the count passed is 1.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(VerbsError::last_os("poll"));
        }
        return Ok(rc > 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a host without RDMA (this project's build machines) loading reports a typed reason
    /// instead of failing to start; inside the soft-RoCE lane it finds the rxe devices (that is
    /// tested by the lane, which fails when none is found).
    #[test]
    fn load_reports_a_reason_or_finds_devices() {
        match RealProvider::load() {
            Ok(p) => assert!(!p.devices().unwrap().is_empty()),
            Err(e) => assert!(
                matches!(
                    e,
                    VerbsUnavailable::LibraryMissing(_) | VerbsUnavailable::NoDevice
                ),
                "{e}"
            ),
        }
    }
}
