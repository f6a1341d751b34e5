//! The I/O manager libext2fs reads and writes through: a [`Overlay`] (a new delta disk over
//! its parent chain), so blocks come from the chain's grains and land in the new disk's.
//!
//! libext2fs opens a device by name through its manager's `open`. The device to open is
//! handed over in a thread-local slot just before the call ([`with_device`]); `open` takes it
//! from there, so no pointer ever travels through a name string. The channel owns the
//! device until libext2fs closes it, and [`Device::take_result`] gives the overlay back.

use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_ulong, c_ulonglong, c_void};
use std::io;
use std::sync::{Arc, Mutex};

use super::ffi::{self, errcode_t, io_channel_t, io_manager_t};
use crate::vmdk::overlay::Overlay;

/// What a device holds, shared between the channel and the code that opened it.
#[derive(Debug)]
pub struct DeviceState {
    /// The disk; `None` once taken back.
    pub overlay: Option<Overlay>,
    /// The first I/O error, kept for the report (libext2fs only sees an errno).
    pub error: Option<io::Error>,
}

/// A handle on the device of an open filesystem.
pub type Device = Arc<Mutex<DeviceState>>;

thread_local! {
    static PENDING: RefCell<Option<Device>> = const { RefCell::new(None) };
}

/// Runs `f` (a libext2fs call that opens a device through [`MANAGER`]) with `device` ready
/// to be opened.
pub fn with_device<T>(device: Device, f: impl FnOnce() -> T) -> T {
    PENDING.with(|p| *p.borrow_mut() = Some(device));
    let out = f();
    PENDING.with(|p| p.borrow_mut().take());
    out
}

/// The channel's private data: the device and the current block size.
struct Channel {
    device: Device,
}

static NAME: &[u8] = b"imagestore overlay\0";

/// The manager: positional reads and writes of the overlay, nothing else.
pub static MANAGER: io_manager_t = io_manager_t {
    magic: ffi::MAGIC_IO_MANAGER,
    name: NAME.as_ptr() as *const c_char,
    open: Some(open),
    close: Some(close),
    set_blksize: Some(set_blksize),
    read_blk: Some(read_blk),
    write_blk: Some(write_blk),
    flush: Some(flush),
    write_byte: Some(write_byte),
    set_option: Some(set_option),
    get_stats: None,
    read_blk64: Some(read_blk64),
    write_blk64: Some(write_blk64),
    discard: None,
    cache_readahead: None,
    zeroout: None,
    reserved: [0; 14],
};

const EIO: errcode_t = libc::EIO as errcode_t;

unsafe extern "C" fn open(
    _name: *const c_char,
    _flags: c_int,
    channel: *mut *mut io_channel_t,
) -> errcode_t {
    let Some(device) = PENDING.with(|p| p.borrow_mut().take()) else {
        return ffi::ET_INVALID_ARGUMENT;
    };
    let private = Box::into_raw(Box::new(Channel { device })) as *mut c_void;
    let ch = Box::new(io_channel_t {
        magic: ffi::MAGIC_IO_CHANNEL,
        manager: &MANAGER,
        name: NAME.as_ptr() as *mut c_char,
        block_size: 1024,
        read_error: std::ptr::null_mut(),
        write_error: std::ptr::null_mut(),
        refcount: 1,
        flags: 0,
        reserved: [0; 14],
        private_data: private,
        app_data: std::ptr::null_mut(),
        align: 0,
    });
    // SAFETY: libext2fs passes a valid pointer to store the new channel in.
    unsafe { *channel = Box::into_raw(ch) };
    0
}

/// The channel behind a pointer libext2fs hands back.
///
/// # Safety
/// `ch` must be a channel made by [`open`] and not yet closed.
unsafe fn channel<'a>(ch: *mut io_channel_t) -> (&'a mut io_channel_t, &'a Channel) {
    // SAFETY: per the contract, `ch` is a live Box-made channel whose private data is a
    // live Box-made `Channel`.
    unsafe {
        let c = &mut *ch;
        let p = &*(c.private_data as *const Channel);
        (c, p)
    }
}

unsafe extern "C" fn close(ch: *mut io_channel_t) -> errcode_t {
    // SAFETY: libext2fs closes only channels it opened through this manager.
    let c = unsafe { &mut *ch };
    c.refcount -= 1;
    if c.refcount > 0 {
        return 0;
    }
    // SAFETY: the last reference: both boxes were made by `open` and are freed once.
    unsafe {
        drop(Box::from_raw(c.private_data as *mut Channel));
        drop(Box::from_raw(ch));
    }
    0
}

unsafe extern "C" fn set_blksize(ch: *mut io_channel_t, size: c_int) -> errcode_t {
    // SAFETY: a live channel of this manager.
    let (c, _) = unsafe { channel(ch) };
    c.block_size = size;
    0
}

/// Byte offset and length of a block request (`count < 0` means `-count` bytes).
fn span(block_size: c_int, block: u64, count: c_int) -> Option<(u64, usize)> {
    let len = if count < 0 {
        usize::try_from(-i64::from(count)).ok()?
    } else {
        usize::try_from(count)
            .ok()?
            .checked_mul(block_size as usize)?
    };
    Some((block.checked_mul(block_size as u64)?, len))
}

fn record(device: &Device, r: io::Result<()>) -> errcode_t {
    match r {
        Ok(()) => 0,
        Err(e) => {
            if let Ok(mut d) = device.lock()
                && d.error.is_none()
            {
                d.error = Some(e);
            }
            EIO
        }
    }
}

fn read(ch: *mut io_channel_t, offset: u64, len: usize, data: *mut c_void) -> errcode_t {
    // SAFETY: a live channel of this manager.
    let (_, p) = unsafe { channel(ch) };
    // SAFETY: libext2fs passes a buffer of at least the requested length.
    let buf = unsafe { std::slice::from_raw_parts_mut(data as *mut u8, len) };
    let r = match p.device.lock() {
        Ok(mut d) => match &mut d.overlay {
            Some(o) => o.read_at(offset, buf),
            None => Err(io::Error::other("the disk was closed")),
        },
        Err(_) => Err(io::Error::other("the disk's lock is poisoned")),
    };
    record(&p.device, r)
}

fn write(ch: *mut io_channel_t, offset: u64, len: usize, data: *const c_void) -> errcode_t {
    // SAFETY: a live channel of this manager.
    let (_, p) = unsafe { channel(ch) };
    // SAFETY: libext2fs passes a buffer of at least the requested length.
    let buf = unsafe { std::slice::from_raw_parts(data as *const u8, len) };
    let r = match p.device.lock() {
        Ok(mut d) => match &mut d.overlay {
            Some(o) => o.write_at(offset, buf),
            None => Err(io::Error::other("the disk was closed")),
        },
        Err(_) => Err(io::Error::other("the disk's lock is poisoned")),
    };
    record(&p.device, r)
}

unsafe extern "C" fn read_blk64(
    ch: *mut io_channel_t,
    block: c_ulonglong,
    count: c_int,
    data: *mut c_void,
) -> errcode_t {
    // SAFETY: a live channel of this manager.
    let (c, _) = unsafe { channel(ch) };
    match span(c.block_size, block, count) {
        Some((offset, len)) => read(ch, offset, len, data),
        None => ffi::ET_INVALID_ARGUMENT,
    }
}

unsafe extern "C" fn read_blk(
    ch: *mut io_channel_t,
    block: c_ulong,
    count: c_int,
    data: *mut c_void,
) -> errcode_t {
    // SAFETY: forwarded with the caller's guarantees.
    unsafe { read_blk64(ch, c_ulonglong::from(block), count, data) }
}

unsafe extern "C" fn write_blk64(
    ch: *mut io_channel_t,
    block: c_ulonglong,
    count: c_int,
    data: *const c_void,
) -> errcode_t {
    // SAFETY: a live channel of this manager.
    let (c, _) = unsafe { channel(ch) };
    match span(c.block_size, block, count) {
        Some((offset, len)) => write(ch, offset, len, data),
        None => ffi::ET_INVALID_ARGUMENT,
    }
}

unsafe extern "C" fn write_blk(
    ch: *mut io_channel_t,
    block: c_ulong,
    count: c_int,
    data: *const c_void,
) -> errcode_t {
    // SAFETY: forwarded with the caller's guarantees.
    unsafe { write_blk64(ch, c_ulonglong::from(block), count, data) }
}

unsafe extern "C" fn write_byte(
    ch: *mut io_channel_t,
    offset: c_ulong,
    count: c_int,
    data: *const c_void,
) -> errcode_t {
    match usize::try_from(count) {
        // `unsigned long` is 64 bits on every target this builds for (Linux, LP64).
        #[allow(clippy::useless_conversion)]
        Ok(len) => write(ch, u64::from(offset), len, data),
        Err(_) => ffi::ET_INVALID_ARGUMENT,
    }
}

unsafe extern "C" fn flush(_ch: *mut io_channel_t) -> errcode_t {
    // Writes go straight to the disk's file; it is synced when the disk is finished.
    0
}

unsafe extern "C" fn set_option(
    _ch: *mut io_channel_t,
    _option: *const c_char,
    _arg: *const c_char,
) -> errcode_t {
    ffi::ET_INVALID_ARGUMENT
}
