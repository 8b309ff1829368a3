//! The real backend: rdma-core's libibverbs through `rdma-mummy-sys`, which loads
//! `libibverbs.so.1` with `dlopen` at run time. A peercm binary therefore starts on hosts with
//! no rdma-core installed; [`RealProvider::load`] then reports
//! [`VerbsUnavailable::LibraryMissing`], and the manager uses TCP.
//!
//! Every `unsafe` block here is FFI into libibverbs. The wrappers own their objects and free
//! them in `Drop`, and the `Arc` chain keeps parents alive (a PD holds its device, a region or
//! QP holds its PD, a QP holds its CQs), so destruction order is right by construction.
//! libibverbs objects may be used from any thread (the library serialises internally), which
//! is why the wrappers are `Send + Sync`.
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
use crate::types::{DeviceInfo, PortState, VerbsUnavailable};
use rdma_mummy_sys as sys;
use std::ffi::CStr;
use std::sync::Arc;
use std::time::Duration;

/// Whether `libibverbs.so.1` can be loaded, and if not, the loader's reason.
fn library_status() -> Result<(), String> {
    const NAME: &[u8] = b"libibverbs.so.1\0";
    // SAFETY: NAME is NUL-terminated; the handle is closed again right away (the mummy keeps
    // its own reference, so this never unloads the library).
    unsafe {
        let h = libc::dlopen(NAME.as_ptr().cast(), libc::RTLD_LAZY | libc::RTLD_LOCAL);
        if h.is_null() {
            let err = libc::dlerror();
            let why = if err.is_null() {
                "dlopen failed".to_string()
            } else {
                CStr::from_ptr(err).to_string_lossy().into_owned()
            };
            return Err(why);
        }
        libc::dlclose(h);
    }
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
        // SAFETY: `n` is a valid out-pointer.
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
        // SAFETY: the list holds `len` valid entries while `self` lives.
        (0..self.len).map(move |i| unsafe { *self.list.add(i) })
    }
}

impl Drop for DeviceList {
    fn drop(&mut self) {
        // SAFETY: `list` came from ibv_get_device_list and is freed once.
        unsafe { sys::ibv_free_device_list(self.list) }
    }
}

fn device_name(dev: *mut sys::ibv_device) -> String {
    // SAFETY: dev is a valid device; the name is a NUL-terminated string it owns.
    unsafe {
        let p = sys::ibv_get_device_name(dev);
        if p.is_null() {
            String::new()
        } else {
            CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    }
}

/// libibverbs on this host.
#[derive(Debug, Clone, Copy)]
pub struct RealProvider(());

impl RealProvider {
    /// Loads libibverbs and checks there is at least one device with an ACTIVE port.
    pub fn load() -> Result<RealProvider, VerbsUnavailable> {
        library_status().map_err(VerbsUnavailable::LibraryMissing)?;
        let p = RealProvider(());
        let devices = p.devices()?;
        if !devices
            .iter()
            .any(|d| d.ports.iter().any(|port| port.state == PortState::Active))
        {
            return Err(VerbsUnavailable::NoActivePort);
        }
        Ok(p)
    }

    /// Like [`RealProvider::load`], but accepts devices whose ports are all down (for
    /// listing them, and for tests that bring ports up later).
    pub fn load_any() -> Result<RealProvider, VerbsUnavailable> {
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
        // SAFETY: pfd is one valid pollfd.
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
        match RealProvider::load_any() {
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
