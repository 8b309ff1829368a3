//! [`RealDevice`]: an open device context (`ibv_context`): device and port attributes, GIDs,
//! async events, and the objects created on it (protection domains, completion queues).
//! Dropping it closes the context; every object created on it holds an `Arc` to it, so that
//! only happens once they are all gone (or, for one whose destroy failed, never: see
//! [`crate::teardown`]).

use super::convert::{capacity_mbits_per_s, port_state};
use super::cq::RealCq;
use super::pd::RealPd;
use super::wait_readable;
use crate::api::{CompletionQueue, Device, ProtectionDomain};
use crate::error::VerbsError;
use crate::types::{AsyncEvent, DeviceInfo, LinkLayer, PortInfo};
use rdma_mummy_sys as sys;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// An open device context.
pub struct RealDevice {
    ctx: *mut sys::ibv_context,
    name: String,
    guid: u64,
    port_count: u8,
}

// SAFETY: the context pointer is owned by this object and never handed out; libibverbs
// contexts may be used from any thread (rdma-core locks internally).
unsafe impl Send for RealDevice {}
// SAFETY: every use through `&self` is a libibverbs call that is thread-safe on one context
// (queries, allocations, reading the async event fd).
unsafe impl Sync for RealDevice {}

impl Drop for RealDevice {
    fn drop(&mut self) {
        // SAFETY: ctx came from ibv_open_device and is closed only here, once; every object
        // created on it holds an Arc to this device (one whose destroy failed holds it
        // forever), so none is left that could still use the context.
        let rc = unsafe { sys::ibv_close_device(self.ctx) };
        // Closing is the end of the chain: nothing depends on the context any more, so a
        // failure only leaks the context itself.
        let _ = crate::teardown::dispose(
            "device context",
            &self.name,
            None,
            if rc == 0 {
                Ok(())
            } else {
                Err(VerbsError::last_os("ibv_close_device"))
            },
        );
    }
}

impl RealDevice {
    /// The raw context (for matching objects to their context; never dereferenced outside
    /// this backend's FFI calls).
    pub(super) fn ctx(&self) -> *mut sys::ibv_context {
        self.ctx
    }

    /// The device's name (for logs).
    pub(super) fn name(&self) -> &str {
        &self.name
    }

    pub(super) fn open_raw(
        dev: *mut sys::ibv_device,
        name: &str,
    ) -> Result<RealDevice, VerbsError> {
        // SAFETY: the caller passes an entry of a device list that is still alive (not yet freed
        // with ibv_free_device_list), which is what ibv_open_device requires.
        let ctx = unsafe { sys::ibv_open_device(dev) };
        if ctx.is_null() {
            return Err(VerbsError::last_os("ibv_open_device"));
        }
        // SAFETY: `dev` is a live device-list entry (as above); the call only reads it.
        let guid = u64::from_be(unsafe { sys::ibv_get_device_guid(dev) });
        let mut d = RealDevice {
            ctx,
            name: name.to_string(),
            guid,
            port_count: 0,
        };
        // SAFETY: ibv_device_attr is a plain C struct of integers and byte arrays, for which
        // all-zero bytes are a valid value.
        let mut attr: sys::ibv_device_attr = unsafe { std::mem::zeroed() };
        // SAFETY: ctx is the context just opened (and owned by `d`); `attr` is a valid, writable
        // out-parameter of the right type for the call's duration.
        let rc = unsafe { sys::ibv_query_device(ctx, &mut attr) };
        if rc != 0 {
            return Err(VerbsError::from_errno("ibv_query_device", rc));
        }
        d.port_count = attr.phys_port_cnt;
        Ok(d)
    }

    pub(super) fn raw_port(&self, port: u8) -> Result<sys::ibv_port_attr, VerbsError> {
        // SAFETY: ibv_port_attr is a plain C struct of integers, for which all-zero bytes are a
        // valid value.
        let mut attr: sys::ibv_port_attr = unsafe { std::mem::zeroed() };
        // SAFETY: self.ctx is open for as long as `self` lives; `attr` is a valid, writable
        // out-parameter for the call's duration. A bad port number is an error return.
        let rc = unsafe { sys::ibv_query_port(self.ctx, port, &mut attr) };
        if rc != 0 {
            return Err(VerbsError::from_errno("ibv_query_port", rc));
        }
        Ok(attr)
    }
}

impl Device for RealDevice {
    fn info(&self) -> DeviceInfo {
        let ports = (1..=self.port_count)
            .filter_map(|p| self.query_port(p).ok())
            .collect();
        DeviceInfo {
            name: self.name.clone(),
            guid: self.guid,
            ports,
        }
    }

    fn query_port(&self, port: u8) -> Result<PortInfo, VerbsError> {
        let a = self.raw_port(port)?;
        let mut gids = Vec::new();
        for i in 0..a.gid_tbl_len.clamp(0, 16) as u8 {
            if let Ok(g) = self.gid(port, i) {
                if g != [0u8; 16] {
                    gids.push(g);
                }
            }
        }
        Ok(PortInfo {
            port,
            state: port_state(a.state),
            link_layer: if a.link_layer == 2 {
                LinkLayer::Ethernet
            } else {
                LinkLayer::InfiniBand
            },
            capacity_mbits_per_s: capacity_mbits_per_s(
                a.active_speed,
                a.active_speed_ex,
                a.active_width,
            ),
            gids,
        })
    }

    fn gid(&self, port: u8, index: u8) -> Result<[u8; 16], VerbsError> {
        // SAFETY: ibv_gid is a union of a byte array and integers; all-zero bytes are valid for
        // every member.
        let mut gid: sys::ibv_gid = unsafe { std::mem::zeroed() };
        // SAFETY: self.ctx is open for as long as `self` lives; `gid` is a valid, writable
        // out-parameter for the call's duration. Bad port or index values are error returns.
        let rc = unsafe { sys::ibv_query_gid(self.ctx, port, i32::from(index), &mut gid) };
        if rc != 0 {
            return Err(VerbsError::from_errno("ibv_query_gid", rc));
        }
        // SAFETY: the union is fully initialised (zeroed, then written) and any 16 bytes are a
        // valid [u8; 16], so reading the `raw` member is sound whatever was written.
        Ok(unsafe { gid.raw })
    }

    fn alloc_pd(self: Arc<Self>) -> Result<Arc<dyn ProtectionDomain>, VerbsError> {
        // SAFETY: self.ctx is open for as long as `self` lives, and the PD returned keeps `self`
        // (and so the context) alive through its Arc.
        let pd = unsafe { sys::ibv_alloc_pd(self.ctx) };
        if pd.is_null() {
            return Err(VerbsError::last_os("ibv_alloc_pd"));
        }
        Ok(Arc::new(RealPd { pd, dev: self }))
    }

    fn create_cq(self: Arc<Self>, depth: u32) -> Result<Arc<dyn CompletionQueue>, VerbsError> {
        // SAFETY: self.ctx is open for as long as `self` lives; the channel is owned by the CQ
        // built below, which keeps `self` alive through its Arc.
        let channel = unsafe { sys::ibv_create_comp_channel(self.ctx) };
        if channel.is_null() {
            return Err(VerbsError::last_os("ibv_create_comp_channel"));
        }
        let depth = i32::try_from(depth.max(1)).unwrap_or(i32::MAX);
        // SAFETY: self.ctx is open and `channel` was just created on it and is non-null; a null
        // CQ context is allowed (we never read it back); vector 0 always exists.
        let cq = unsafe { sys::ibv_create_cq(self.ctx, depth, std::ptr::null_mut(), channel, 0) };
        if cq.is_null() {
            let e = VerbsError::last_os("ibv_create_cq");
            // SAFETY: `channel` is valid, no CQ uses it (the creation failed) and nothing else
            // holds it, so it is destroyed once, here.
            let rc = unsafe { sys::ibv_destroy_comp_channel(channel) };
            if rc != 0 {
                tracing::error!(
                    device = %self.name,
                    rc,
                    "destroying an unused completion channel failed: its fd is leaked"
                );
            }
            return Err(e);
        }
        let ctx = self.ctx;
        let cq = Arc::new(RealCq {
            cq,
            channel,
            unacked_events: Mutex::new(0),
            _dev: self,
        });
        cq.register(ctx);
        Ok(cq)
    }

    fn next_async_event(&self, timeout: Duration) -> Result<Option<AsyncEvent>, VerbsError> {
        // SAFETY: self.ctx points to the live, initialised `ibv_context` (open for as long as
        // `self` lives); `async_fd` is a plain integer field set by ibv_open_device.
        let fd = unsafe { (*self.ctx).async_fd };
        if !wait_readable(fd, timeout)? {
            return Ok(None);
        }
        // SAFETY: ibv_async_event is a C struct of a union of pointers/integers and an enum
        // whose zero value (IBV_EVENT_CQ_ERR) is valid; all-zero bytes are a valid value.
        let mut ev: sys::ibv_async_event = unsafe { std::mem::zeroed() };
        // SAFETY: self.ctx is open; `ev` is a valid, writable out-parameter. The fd is readable,
        // so the call returns without blocking.
        let rc = unsafe { sys::ibv_get_async_event(self.ctx, &mut ev) };
        if rc != 0 {
            return Err(VerbsError::last_os("ibv_get_async_event"));
        }
        // Read the type as a plain integer: an unknown value must not become an invalid enum.
        // SAFETY: `event_type` is a C enum field, represented as a 4-byte, 4-aligned integer,
        // inside the initialised `ev`, so reading it through a u32 pointer is in bounds, aligned
        // and yields some u32 (never an invalid Rust enum value).
        let code = unsafe { *(std::ptr::addr_of!(ev.event_type).cast::<u32>()) };
        // SAFETY: libibverbs sets the `element` union member that matches the event type: the
        // port number for port events, the QP pointer (live until the event is acknowledged
        // below) for QP events; only that member is read, and a null QP pointer is checked.
        let mapped = unsafe {
            match code {
                9 => AsyncEvent::PortActive {
                    port: ev.element.port_num as u8,
                },
                10 => AsyncEvent::PortError {
                    port: ev.element.port_num as u8,
                },
                1 => AsyncEvent::QpFatal {
                    qpn: if ev.element.qp.is_null() {
                        0
                    } else {
                        (*ev.element.qp).qp_num
                    },
                },
                0 => AsyncEvent::CqError,
                8 => AsyncEvent::DeviceFatal,
                other => AsyncEvent::Other { code: other },
            }
        };
        // SAFETY: `ev` was filled by a successful ibv_get_async_event and is acknowledged exactly
        // once, here, after its last use (every event obtained must be acknowledged once).
        unsafe { sys::ibv_ack_async_event(&mut ev) };
        Ok(Some(mapped))
    }
}
