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

#![allow(unsafe_code)]

use crate::api::{CompletionQueue, Device, MemoryRegion, ProtectionDomain, Provider, QueuePair};
use crate::error::VerbsError;
use crate::qp_state;
use crate::types::*;
use rdma_mummy_sys as sys;
use std::ffi::CStr;
use std::sync::{Arc, Mutex};
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

fn port_state(code: u32) -> PortState {
    match code {
        1 => PortState::Down,
        2 => PortState::Init,
        3 => PortState::Armed,
        4 => PortState::Active,
        other => PortState::Other(other as u8),
    }
}

/// Capacity in Mb/s from `active_speed` (per lane) and `active_width` (lanes).
fn capacity_mbps(speed: u8, speed_ex: u32, width: u8) -> u32 {
    let per_lane = match speed {
        1 => 2.5,
        2 => 5.0,
        4 | 8 => 10.0,
        16 => 14.0,
        32 => 25.0,
        64 => 50.0,
        128 => 100.0,
        0 if speed_ex > 0 => 200.0,
        _ => 2.5,
    };
    let lanes = match width {
        1 => 1.0,
        2 => 4.0,
        4 => 8.0,
        8 => 12.0,
        16 => 2.0,
        _ => 1.0,
    };
    (per_lane * lanes * 1000.0) as u32
}

fn mtu_enum(bytes: u32) -> Result<u32, VerbsError> {
    Ok(match bytes {
        256 => 1,
        512 => 2,
        1024 => 3,
        2048 => 4,
        4096 => 5,
        other => {
            return Err(VerbsError::InvalidArgument(format!(
                "MTU {other} bytes: must be 256, 512, 1024, 2048 or 4096"
            )))
        }
    })
}

impl RealDevice {
    fn open_raw(dev: *mut sys::ibv_device, name: &str) -> Result<RealDevice, VerbsError> {
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

    fn raw_port(&self, port: u8) -> Result<sys::ibv_port_attr, VerbsError> {
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

/// A protection domain.
pub struct RealPd {
    pd: *mut sys::ibv_pd,
    dev: Arc<RealDevice>,
}

// SAFETY: see RealDevice.
unsafe impl Send for RealPd {}
// SAFETY: see RealDevice.
unsafe impl Sync for RealPd {}

impl Drop for RealPd {
    fn drop(&mut self) {
        // SAFETY: every MR and QP holds an Arc to us, so none is left.
        unsafe {
            sys::ibv_dealloc_pd(self.pd);
        }
    }
}

fn access_bits(a: Access) -> i32 {
    let mut bits = 0u32;
    if a.contains(Access::LOCAL_WRITE) {
        bits |= sys::ibv_access_flags::IBV_ACCESS_LOCAL_WRITE.0;
    }
    if a.contains(Access::REMOTE_WRITE) {
        bits |= sys::ibv_access_flags::IBV_ACCESS_REMOTE_WRITE.0;
    }
    if a.contains(Access::REMOTE_READ) {
        bits |= sys::ibv_access_flags::IBV_ACCESS_REMOTE_READ.0;
    }
    bits as i32
}

impl ProtectionDomain for RealPd {
    fn reg_mr(
        self: Arc<Self>,
        len: usize,
        access: Access,
    ) -> Result<Arc<dyn MemoryRegion>, VerbsError> {
        if len == 0 {
            return Err(VerbsError::InvalidArgument(
                "cannot register an empty region".into(),
            ));
        }
        // Remote write needs local write too (a kernel rule); add it rather than fail.
        let access = if access.contains(Access::REMOTE_WRITE) {
            access | Access::LOCAL_WRITE
        } else {
            access
        };
        let buf: Box<[u8]> = vec![0u8; len].into_boxed_slice();
        let ptr = Box::into_raw(buf) as *mut u8;
        // SAFETY: ptr points to `len` bytes that stay allocated until RealMr::drop.
        let mr = unsafe { sys::ibv_reg_mr(self.pd, ptr.cast(), len, access_bits(access)) };
        if mr.is_null() {
            let e = VerbsError::last_os("ibv_reg_mr");
            // SAFETY: reclaim the buffer we just leaked.
            drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, len)) });
            return Err(e);
        }
        // SAFETY: mr is valid.
        let (lkey, rkey) = unsafe { ((*mr).lkey, (*mr).rkey) };
        Ok(Arc::new(RealMr {
            mr: Mutex::new(mr),
            buf: ptr,
            len,
            lkey,
            rkey,
            _pd: self,
        }))
    }

    fn create_qp(
        self: Arc<Self>,
        send_cq: Arc<dyn CompletionQueue>,
        recv_cq: Arc<dyn CompletionQueue>,
        caps: QpCaps,
    ) -> Result<Box<dyn QueuePair>, VerbsError> {
        let raw_cq = |cq: &Arc<dyn CompletionQueue>| -> Result<*mut sys::ibv_cq, VerbsError> {
            let fd = cq.completion_fd();
            // A real QP can only use real CQs of this backend: find ours by its channel fd.
            REAL_CQS
                .lock()
                .map_err(|_| VerbsError::InvalidArgument("CQ registry poisoned".into()))?
                .iter()
                .find(|(f, _)| Some(*f) == fd)
                .map(|(_, p)| *p as *mut sys::ibv_cq)
                .ok_or_else(|| {
                    VerbsError::InvalidArgument(
                        "CQ does not belong to the libibverbs backend".into(),
                    )
                })
        };
        // SAFETY: zeroed is a valid ibv_qp_init_attr; we fill what RC needs.
        let mut init: sys::ibv_qp_init_attr = unsafe { std::mem::zeroed() };
        init.send_cq = raw_cq(&send_cq)?;
        init.recv_cq = raw_cq(&recv_cq)?;
        init.cap.max_send_wr = caps.max_send_wr;
        init.cap.max_recv_wr = caps.max_recv_wr;
        init.cap.max_send_sge = caps.max_sge;
        init.cap.max_recv_sge = caps.max_sge;
        init.qp_type = sys::ibv_qp_type::IBV_QPT_RC;
        init.sq_sig_all = 1;
        // SAFETY: pd and both CQs are valid and kept alive by the QP.
        let qp = unsafe { sys::ibv_create_qp(self.pd, &mut init) };
        if qp.is_null() {
            return Err(VerbsError::last_os("ibv_create_qp"));
        }
        Ok(Box::new(RealQp {
            qp,
            pd: self,
            _send_cq: send_cq,
            _recv_cq: recv_cq,
        }))
    }
}

/// Live CQs of this backend by completion-channel fd (lets `create_qp` take `dyn` CQs).
static REAL_CQS: Mutex<Vec<(i32, usize)>> = Mutex::new(Vec::new());

/// A registered region owning its buffer.
pub struct RealMr {
    mr: Mutex<*mut sys::ibv_mr>,
    buf: *mut u8,
    len: usize,
    lkey: u32,
    rkey: u32,
    _pd: Arc<RealPd>,
}

// SAFETY: the buffer is only touched by copies under bounds checks; the HCA writes it
// concurrently by design, which is why no reference to it is ever handed out.
unsafe impl Send for RealMr {}
// SAFETY: as above.
unsafe impl Sync for RealMr {}

impl RealMr {
    fn check(&self, offset: usize, len: usize) -> Result<(), VerbsError> {
        if offset.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(VerbsError::InvalidArgument(format!(
                "range {offset}+{len} is outside the {}-byte region",
                self.len
            )));
        }
        Ok(())
    }
}

impl MemoryRegion for RealMr {
    fn lkey(&self) -> u32 {
        self.lkey
    }
    fn rkey(&self) -> u32 {
        self.rkey
    }
    fn addr(&self) -> u64 {
        self.buf as u64
    }
    fn len(&self) -> usize {
        self.len
    }
    fn write(&self, offset: usize, data: &[u8]) -> Result<(), VerbsError> {
        self.check(offset, data.len())?;
        // SAFETY: bounds checked; the source is a distinct Rust slice.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.buf.add(offset), data.len()) };
        Ok(())
    }
    fn read(&self, offset: usize, len: usize) -> Result<Vec<u8>, VerbsError> {
        self.check(offset, len)?;
        let mut out = vec![0u8; len];
        // SAFETY: bounds checked; the destination is a fresh Vec.
        unsafe { std::ptr::copy_nonoverlapping(self.buf.add(offset), out.as_mut_ptr(), len) };
        Ok(out)
    }
    fn deregister(&self) -> Result<(), VerbsError> {
        let mut g = self
            .mr
            .lock()
            .map_err(|_| VerbsError::InvalidArgument("MR lock poisoned".into()))?;
        if g.is_null() {
            return Ok(());
        }
        // SAFETY: *g is a live MR, deregistered once (then nulled).
        let rc = unsafe { sys::ibv_dereg_mr(*g) };
        if rc != 0 {
            return Err(VerbsError::from_errno("ibv_dereg_mr", rc));
        }
        *g = std::ptr::null_mut();
        Ok(())
    }
}

impl Drop for RealMr {
    fn drop(&mut self) {
        let _ = self.deregister();
        // SAFETY: the region is deregistered (or was never used by a live MR), so the HCA no
        // longer touches the buffer; it was leaked from a Box of exactly `len` bytes.
        drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(self.buf, self.len)) });
    }
}

/// A completion queue with its channel.
pub struct RealCq {
    cq: *mut sys::ibv_cq,
    channel: *mut sys::ibv_comp_channel,
    unacked_events: Mutex<u32>,
    _dev: Arc<RealDevice>,
}

// SAFETY: see RealDevice; polling is serialised by libibverbs providers.
unsafe impl Send for RealCq {}
// SAFETY: as above.
unsafe impl Sync for RealCq {}

impl RealCq {
    fn register(self: &Arc<Self>) {
        if let Ok(mut reg) = REAL_CQS.lock() {
            // SAFETY: channel is valid.
            reg.push((unsafe { (*self.channel).fd }, self.cq as usize));
        }
    }
}

fn wc_opcode(code: u32) -> WcOpcode {
    match code {
        0 => WcOpcode::Send,
        1 => WcOpcode::RdmaWrite,
        2 => WcOpcode::RdmaRead,
        128 => WcOpcode::Recv,
        129 => WcOpcode::RecvRdmaWithImm,
        other => WcOpcode::Other(other),
    }
}

impl CompletionQueue for RealCq {
    fn poll(&self, max: usize) -> Result<Vec<WorkCompletion>, VerbsError> {
        let max = max.clamp(1, 256);
        // SAFETY: zeroed ibv_wc values are valid out-parameters.
        let mut wcs: Vec<sys::ibv_wc> = vec![unsafe { std::mem::zeroed() }; max];
        // SAFETY: wcs has room for `max` entries; cq is valid.
        let n = unsafe { sys::ibv_poll_cq(self.cq, max as i32, wcs.as_mut_ptr()) };
        if n < 0 {
            return Err(VerbsError::from_errno("ibv_poll_cq", -n));
        }
        Ok(wcs[..n as usize]
            .iter()
            .map(|wc| {
                let with_imm = wc.wc_flags & sys::ibv_wc_flags::IBV_WC_WITH_IMM.0 != 0;
                WorkCompletion {
                    wr_id: wc.wr_id,
                    status: WcStatus::from_code(wc.status),
                    opcode: wc_opcode(wc.opcode),
                    byte_len: wc.byte_len,
                    // SAFETY: imm_data is the active member when IBV_WC_WITH_IMM is set.
                    imm: with_imm.then(|| {
                        u32::from_be(unsafe { wc.imm_data_invalidated_rkey_union.imm_data })
                    }),
                    qpn: wc.qp_num,
                }
            })
            .collect())
    }

    fn wait(&self, max: usize, timeout: Duration) -> Result<Vec<WorkCompletion>, VerbsError> {
        let ready = self.poll(max)?;
        if !ready.is_empty() {
            return Ok(ready);
        }
        // SAFETY: cq is valid; arm the channel, then poll again to close the race.
        let rc = unsafe { sys::ibv_req_notify_cq(self.cq, 0) };
        if rc != 0 {
            return Err(VerbsError::from_errno("ibv_req_notify_cq", rc));
        }
        let ready = self.poll(max)?;
        if !ready.is_empty() {
            return Ok(ready);
        }
        // SAFETY: channel is valid.
        let fd = unsafe { (*self.channel).fd };
        if wait_readable(fd, timeout)? {
            let mut cq: *mut sys::ibv_cq = std::ptr::null_mut();
            let mut ctx: *mut libc::c_void = std::ptr::null_mut();
            // SAFETY: the fd is readable, so this does not block; out-pointers are valid.
            let rc = unsafe { sys::ibv_get_cq_event(self.channel, &mut cq, &mut ctx) };
            if rc == 0 {
                if let Ok(mut n) = self.unacked_events.lock() {
                    *n += 1;
                    if *n >= 64 {
                        // SAFETY: acknowledge what we consumed.
                        unsafe { sys::ibv_ack_cq_events(self.cq, *n) };
                        *n = 0;
                    }
                }
            }
        }
        self.poll(max)
    }

    fn completion_fd(&self) -> Option<std::os::fd::RawFd> {
        // SAFETY: channel is valid.
        Some(unsafe { (*self.channel).fd })
    }
}

impl Drop for RealCq {
    fn drop(&mut self) {
        // SAFETY: channel is valid.
        let fd = unsafe { (*self.channel).fd };
        if let Ok(mut reg) = REAL_CQS.lock() {
            reg.retain(|(f, _)| *f != fd);
        }
        // SAFETY: every QP using this CQ holds an Arc to it, so none is left; events are
        // acknowledged before destruction as libibverbs requires.
        unsafe {
            if let Ok(n) = self.unacked_events.lock() {
                if *n > 0 {
                    sys::ibv_ack_cq_events(self.cq, *n);
                }
            }
            sys::ibv_destroy_cq(self.cq);
            sys::ibv_destroy_comp_channel(self.channel);
        }
    }
}

/// An RC queue pair.
pub struct RealQp {
    qp: *mut sys::ibv_qp,
    pd: Arc<RealPd>,
    _send_cq: Arc<dyn CompletionQueue>,
    _recv_cq: Arc<dyn CompletionQueue>,
}

// SAFETY: see RealDevice.
unsafe impl Send for RealQp {}
// SAFETY: as above.
unsafe impl Sync for RealQp {}

impl Drop for RealQp {
    fn drop(&mut self) {
        // SAFETY: qp is valid and destroyed once.
        unsafe {
            sys::ibv_destroy_qp(self.qp);
        }
    }
}

fn state_from(code: u32) -> QpState {
    match code {
        0 => QpState::Reset,
        1 => QpState::Init,
        2 => QpState::Rtr,
        3 => QpState::Rts,
        4 => QpState::Sqd,
        5 => QpState::Sqe,
        _ => QpState::Err,
    }
}

impl RealQp {
    fn modify(
        &self,
        to: QpState,
        attr: &mut sys::ibv_qp_attr,
        mask: u32,
        call: &'static str,
    ) -> Result<(), VerbsError> {
        qp_state::check(self.state(), to)?;
        // SAFETY: qp and attr are valid; mask names the fields we set.
        let rc = unsafe { sys::ibv_modify_qp(self.qp, attr, mask as i32) };
        if rc != 0 {
            return Err(VerbsError::from_errno(call, rc));
        }
        Ok(())
    }

    fn sge(s: &Sge) -> Result<sys::ibv_sge, VerbsError> {
        let end = s.offset.checked_add(u64::from(s.len));
        if end.is_none_or(|e| e > s.mr.len() as u64) {
            return Err(VerbsError::InvalidArgument(format!(
                "local range {}+{} is outside the {}-byte region",
                s.offset,
                s.len,
                s.mr.len()
            )));
        }
        Ok(sys::ibv_sge {
            addr: s.mr.addr() + s.offset,
            length: s.len,
            lkey: s.mr.lkey(),
        })
    }
}

impl QueuePair for RealQp {
    fn qpn(&self) -> u32 {
        // SAFETY: qp is valid.
        unsafe { (*self.qp).qp_num }
    }

    fn state(&self) -> QpState {
        // SAFETY: zeroed attrs are valid out-parameters.
        let mut attr: sys::ibv_qp_attr = unsafe { std::mem::zeroed() };
        let mut init: sys::ibv_qp_init_attr = unsafe { std::mem::zeroed() };
        let mask = sys::ibv_qp_attr_mask::IBV_QP_STATE.0 as i32;
        // SAFETY: qp is valid.
        let rc = unsafe { sys::ibv_query_qp(self.qp, &mut attr, mask, &mut init) };
        if rc != 0 {
            return QpState::Err;
        }
        state_from(attr.qp_state)
    }

    fn endpoint(&self, params: &QpParams, psn: u32) -> Result<QpEndpoint, VerbsError> {
        let dev = &self.pd.dev;
        let port = dev.raw_port(params.port)?;
        Ok(QpEndpoint {
            qpn: self.qpn(),
            psn: psn & 0x00ff_ffff,
            gid: dev.gid(params.port, params.gid_index)?,
            mtu_bytes: params.mtu_bytes,
            lid: port.lid,
        })
    }

    fn to_init(&mut self, params: &QpParams) -> Result<(), VerbsError> {
        // SAFETY: zeroed is a valid ibv_qp_attr.
        let mut a: sys::ibv_qp_attr = unsafe { std::mem::zeroed() };
        a.qp_state = sys::ibv_qp_state::IBV_QPS_INIT;
        a.pkey_index = 0;
        a.port_num = params.port;
        a.qp_access_flags = access_bits(params.access) as u32;
        use sys::ibv_qp_attr_mask as m;
        let mask = m::IBV_QP_STATE.0
            | m::IBV_QP_PKEY_INDEX.0
            | m::IBV_QP_PORT.0
            | m::IBV_QP_ACCESS_FLAGS.0;
        self.modify(QpState::Init, &mut a, mask, "ibv_modify_qp(INIT)")
    }

    fn to_rtr(&mut self, params: &QpParams, remote: &QpEndpoint) -> Result<(), VerbsError> {
        // SAFETY: zeroed is a valid ibv_qp_attr.
        let mut a: sys::ibv_qp_attr = unsafe { std::mem::zeroed() };
        a.qp_state = sys::ibv_qp_state::IBV_QPS_RTR;
        a.path_mtu = mtu_enum(params.mtu_bytes.min(remote.mtu_bytes))?;
        a.dest_qp_num = remote.qpn;
        a.rq_psn = remote.psn & 0x00ff_ffff;
        a.max_dest_rd_atomic = params.max_rd_atomic.max(1);
        a.min_rnr_timer = params.min_rnr_timer_code.min(31);
        a.ah_attr.is_global = 1;
        a.ah_attr.dlid = remote.lid;
        a.ah_attr.sl = 0;
        a.ah_attr.src_path_bits = 0;
        a.ah_attr.port_num = params.port;
        a.ah_attr.grh.dgid = sys::ibv_gid { raw: remote.gid };
        a.ah_attr.grh.sgid_index = params.gid_index;
        a.ah_attr.grh.hop_limit = 1;
        a.ah_attr.grh.traffic_class = 0;
        a.ah_attr.grh.flow_label = 0;
        use sys::ibv_qp_attr_mask as m;
        let mask = m::IBV_QP_STATE.0
            | m::IBV_QP_AV.0
            | m::IBV_QP_PATH_MTU.0
            | m::IBV_QP_DEST_QPN.0
            | m::IBV_QP_RQ_PSN.0
            | m::IBV_QP_MAX_DEST_RD_ATOMIC.0
            | m::IBV_QP_MIN_RNR_TIMER.0;
        self.modify(QpState::Rtr, &mut a, mask, "ibv_modify_qp(RTR)")
    }

    fn to_rts(&mut self, params: &QpParams, psn: u32) -> Result<(), VerbsError> {
        if params.retry_count > 7 || params.rnr_retry_count > 7 {
            return Err(VerbsError::InvalidArgument(
                "retry counts must be 0..=7".into(),
            ));
        }
        // SAFETY: zeroed is a valid ibv_qp_attr.
        let mut a: sys::ibv_qp_attr = unsafe { std::mem::zeroed() };
        a.qp_state = sys::ibv_qp_state::IBV_QPS_RTS;
        a.timeout = params.ack_timeout_exponent();
        a.retry_cnt = params.retry_count;
        a.rnr_retry = params.rnr_retry_count;
        a.sq_psn = psn & 0x00ff_ffff;
        a.max_rd_atomic = params.max_rd_atomic.max(1);
        use sys::ibv_qp_attr_mask as m;
        let mask = m::IBV_QP_STATE.0
            | m::IBV_QP_TIMEOUT.0
            | m::IBV_QP_RETRY_CNT.0
            | m::IBV_QP_RNR_RETRY.0
            | m::IBV_QP_SQ_PSN.0
            | m::IBV_QP_MAX_QP_RD_ATOMIC.0;
        self.modify(QpState::Rts, &mut a, mask, "ibv_modify_qp(RTS)")
    }

    fn to_error(&mut self) -> Result<(), VerbsError> {
        // SAFETY: zeroed is a valid ibv_qp_attr.
        let mut a: sys::ibv_qp_attr = unsafe { std::mem::zeroed() };
        a.qp_state = sys::ibv_qp_state::IBV_QPS_ERR;
        let mask = sys::ibv_qp_attr_mask::IBV_QP_STATE.0;
        self.modify(QpState::Err, &mut a, mask, "ibv_modify_qp(ERR)")
    }

    fn post_send(&self, wr: SendWr) -> Result<(), VerbsError> {
        let state = self.state();
        if !qp_state::accepts_send(state) {
            return Err(VerbsError::WrongState {
                what: "send",
                state,
            });
        }
        let (wr_id, local, opcode, imm, rdma) = match &wr {
            SendWr::Send { wr_id, local, imm } => (
                *wr_id,
                local,
                if imm.is_some() {
                    sys::ibv_wr_opcode::IBV_WR_SEND_WITH_IMM
                } else {
                    sys::ibv_wr_opcode::IBV_WR_SEND
                },
                *imm,
                None,
            ),
            SendWr::Write {
                wr_id,
                local,
                remote,
                remote_offset,
                imm,
            } => (
                *wr_id,
                local,
                if imm.is_some() {
                    sys::ibv_wr_opcode::IBV_WR_RDMA_WRITE_WITH_IMM
                } else {
                    sys::ibv_wr_opcode::IBV_WR_RDMA_WRITE
                },
                *imm,
                Some((remote.addr.wrapping_add(*remote_offset), remote.rkey)),
            ),
            SendWr::Read {
                wr_id,
                local,
                remote,
                remote_offset,
            } => (
                *wr_id,
                local,
                sys::ibv_wr_opcode::IBV_WR_RDMA_READ,
                None,
                Some((remote.addr.wrapping_add(*remote_offset), remote.rkey)),
            ),
        };
        let mut sge = Self::sge(local)?;
        // SAFETY: zeroed is a valid ibv_send_wr; we fill the fields the opcode uses.
        let mut w: sys::ibv_send_wr = unsafe { std::mem::zeroed() };
        w.wr_id = wr_id;
        w.sg_list = &mut sge;
        w.num_sge = 1;
        w.opcode = opcode;
        w.send_flags = sys::ibv_send_flags::IBV_SEND_SIGNALED.0;
        if let Some(imm) = imm {
            w.imm_data_invalidated_rkey_union.imm_data = imm.to_be();
        }
        if let Some((addr, rkey)) = rdma {
            w.wr.rdma = sys::rdma_t {
                remote_addr: addr,
                rkey,
            };
        }
        let mut bad: *mut sys::ibv_send_wr = std::ptr::null_mut();
        // SAFETY: w and sge live across the call; the provider copies them.
        let rc = unsafe { sys::ibv_post_send(self.qp, &mut w, &mut bad) };
        match rc {
            0 => Ok(()),
            libc::ENOMEM => Err(VerbsError::QueueFull("send")),
            e => Err(VerbsError::from_errno("ibv_post_send", e)),
        }
    }

    fn post_recv(&self, wr: RecvWr) -> Result<(), VerbsError> {
        let state = self.state();
        if !qp_state::accepts_recv(state) {
            return Err(VerbsError::WrongState {
                what: "recv",
                state,
            });
        }
        let mut sge = Self::sge(&wr.local)?;
        // SAFETY: zeroed is a valid ibv_recv_wr.
        let mut w: sys::ibv_recv_wr = unsafe { std::mem::zeroed() };
        w.wr_id = wr.wr_id;
        w.sg_list = &mut sge;
        w.num_sge = 1;
        let mut bad: *mut sys::ibv_recv_wr = std::ptr::null_mut();
        // SAFETY: w and sge live across the call.
        let rc = unsafe { sys::ibv_post_recv(self.qp, &mut w, &mut bad) };
        match rc {
            0 => Ok(()),
            libc::ENOMEM => Err(VerbsError::QueueFull("recv")),
            e => Err(VerbsError::from_errno("ibv_post_recv", e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_from_speed_and_width() {
        assert_eq!(capacity_mbps(1, 0, 1), 2500, "SDR 1x");
        assert_eq!(capacity_mbps(32, 0, 2), 100_000, "EDR 4x");
        assert_eq!(capacity_mbps(64, 0, 2), 200_000, "HDR 4x");
    }

    #[test]
    fn mtu_bytes_map_to_the_enum() {
        assert_eq!(mtu_enum(1024).unwrap(), 3);
        assert!(mtu_enum(1500).is_err());
    }

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
