//! [`RealDevice`]: an open device context (`ibv_context`): device and port attributes, GIDs,
//! async events, and the objects created on it (protection domains, completion queues).

use super::convert::{capacity_mbps, port_state};
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

// SAFETY: libibverbs contexts are thread-safe; we never hand out the raw pointer.
unsafe impl Send for RealDevice {}
// SAFETY: as above.
unsafe impl Sync for RealDevice {}

impl Drop for RealDevice {
    fn drop(&mut self) {
        // SAFETY: ctx came from ibv_open_device; every child holds an Arc to us, so none is
        // left when this runs.
        unsafe {
            sys::ibv_close_device(self.ctx);
        }
    }
}

impl RealDevice {
    pub(super) fn open_raw(
        dev: *mut sys::ibv_device,
        name: &str,
    ) -> Result<RealDevice, VerbsError> {
        // SAFETY: dev is a valid entry of a live device list.
        let ctx = unsafe { sys::ibv_open_device(dev) };
        if ctx.is_null() {
            return Err(VerbsError::last_os("ibv_open_device"));
        }
        // SAFETY: dev is valid.
        let guid = u64::from_be(unsafe { sys::ibv_get_device_guid(dev) });
        let mut d = RealDevice {
            ctx,
            name: name.to_string(),
            guid,
            port_count: 0,
        };
        // SAFETY: zeroed is a valid ibv_device_attr; ctx is open.
        let mut attr: sys::ibv_device_attr = unsafe { std::mem::zeroed() };
        let rc = unsafe { sys::ibv_query_device(ctx, &mut attr) };
        if rc != 0 {
            return Err(VerbsError::from_errno("ibv_query_device", rc));
        }
        d.port_count = attr.phys_port_cnt;
        Ok(d)
    }

    pub(super) fn raw_port(&self, port: u8) -> Result<sys::ibv_port_attr, VerbsError> {
        // SAFETY: zeroed is a valid ibv_port_attr; ctx is open.
        let mut attr: sys::ibv_port_attr = unsafe { std::mem::zeroed() };
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
            capacity_mbps: capacity_mbps(a.active_speed, a.active_speed_ex, a.active_width),
            gids,
        })
    }

    fn gid(&self, port: u8, index: u8) -> Result<[u8; 16], VerbsError> {
        // SAFETY: zeroed is a valid ibv_gid; ctx is open.
        let mut gid: sys::ibv_gid = unsafe { std::mem::zeroed() };
        let rc = unsafe { sys::ibv_query_gid(self.ctx, port, i32::from(index), &mut gid) };
        if rc != 0 {
            return Err(VerbsError::from_errno("ibv_query_gid", rc));
        }
        // SAFETY: every bit pattern is a valid [u8; 16].
        Ok(unsafe { gid.raw })
    }

    fn alloc_pd(self: Arc<Self>) -> Result<Arc<dyn ProtectionDomain>, VerbsError> {
        // SAFETY: ctx is open.
        let pd = unsafe { sys::ibv_alloc_pd(self.ctx) };
        if pd.is_null() {
            return Err(VerbsError::last_os("ibv_alloc_pd"));
        }
        Ok(Arc::new(RealPd { pd, dev: self }))
    }

    fn create_cq(self: Arc<Self>, depth: u32) -> Result<Arc<dyn CompletionQueue>, VerbsError> {
        // SAFETY: ctx is open.
        let channel = unsafe { sys::ibv_create_comp_channel(self.ctx) };
        if channel.is_null() {
            return Err(VerbsError::last_os("ibv_create_comp_channel"));
        }
        let depth = i32::try_from(depth.max(1)).unwrap_or(i32::MAX);
        // SAFETY: ctx and channel are valid.
        let cq = unsafe { sys::ibv_create_cq(self.ctx, depth, std::ptr::null_mut(), channel, 0) };
        if cq.is_null() {
            let e = VerbsError::last_os("ibv_create_cq");
            // SAFETY: channel is valid and unused.
            unsafe { sys::ibv_destroy_comp_channel(channel) };
            return Err(e);
        }
        let cq = Arc::new(RealCq {
            cq,
            channel,
            unacked_events: Mutex::new(0),
            _dev: self,
        });
        cq.register();
        Ok(cq)
    }

    fn next_async_event(&self, timeout: Duration) -> Result<Option<AsyncEvent>, VerbsError> {
        // SAFETY: ctx is open; async_fd is its event fd.
        let fd = unsafe { (*self.ctx).async_fd };
        if !wait_readable(fd, timeout)? {
            return Ok(None);
        }
        // SAFETY: zeroed is a valid out-parameter; the fd is readable so this does not block.
        let mut ev: sys::ibv_async_event = unsafe { std::mem::zeroed() };
        let rc = unsafe { sys::ibv_get_async_event(self.ctx, &mut ev) };
        if rc != 0 {
            return Err(VerbsError::last_os("ibv_get_async_event"));
        }
        // Read the type as a plain integer: an unknown value must not become an invalid enum.
        // SAFETY: ibv_event_type is a C enum, i.e. a u32.
        let code = unsafe { *(std::ptr::addr_of!(ev.event_type).cast::<u32>()) };
        // SAFETY: the union member read matches the event type, as libibverbs documents.
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
        // SAFETY: every event obtained must be acknowledged exactly once.
        unsafe { sys::ibv_ack_async_event(&mut ev) };
        Ok(Some(mapped))
    }
}
