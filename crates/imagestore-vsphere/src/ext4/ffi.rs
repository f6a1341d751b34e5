//! Declarations of the parts of libext2fs (e2fsprogs' library, `libext2fs.so.2`) the writer
//! calls, written from `ext2fs/ext2fs.h` and `ext2fs/ext2_io.h` of e2fsprogs 1.47. Only the
//! functions below are used; everything else of the library stays out of reach.
//!
//! The library is linked by its run-time name, so building needs no development package;
//! `libext2fs2` (which every system with e2fsprogs has) provides it.
//!
//! Structures the library owns are opaque here except for the leading fields of
//! `struct_ext2_filsys` and the I/O structures, whose layouts are part of the library's ABI.
//! Inodes and the superblock are handled as byte buffers in their on-disk layout
//! ([`super::inode`]), never as C structures.

#![allow(non_camel_case_types, missing_debug_implementations, missing_docs)]

use std::ffi::{c_char, c_int, c_long, c_uint, c_ulong, c_ulonglong, c_void};

/// A libext2fs or errno error code (0 for success).
pub type errcode_t = c_long;
/// An inode number.
pub type ext2_ino_t = u32;
/// A block number.
pub type blk64_t = u64;

/// `EXT2_ET_MAGIC_IO_CHANNEL`.
pub const MAGIC_IO_CHANNEL: errcode_t = 2_133_571_333;
/// `EXT2_ET_MAGIC_IO_MANAGER`.
pub const MAGIC_IO_MANAGER: errcode_t = 2_133_571_335;
/// `EXT2_ET_INVALID_ARGUMENT`.
pub const ET_INVALID_ARGUMENT: errcode_t = 2_133_571_399;

/// Open flags (`EXT2_FLAG_*`).
pub const FLAG_RW: c_int = 0x01;
/// Only the primary superblock and group descriptors are written at close.
pub const FLAG_MASTER_SB_ONLY: c_int = 0x200;
/// 64-bit block numbers.
pub const FLAG_64BITS: c_int = 0x20000;
/// Do not check MMP.
pub const FLAG_SKIP_MMP: c_int = 0x100000;

/// `EXT2_FILE_WRITE`.
pub const FILE_WRITE: c_int = 0x0001;
/// `EXT2_SEEK_SET`.
pub const SEEK_SET: c_int = 0;
/// `BMAP_ALLOC`: allocate the block if it is not mapped.
pub const BMAP_ALLOC: c_int = 0x0001;
/// `EXT2_MKJOURNAL_LAZYINIT`: the journal's blocks are known to be zero.
pub const MKJOURNAL_LAZYINIT: c_int = 0x2;
/// `EXT2_BG_INODE_ZEROED`.
pub const BG_INODE_ZEROED: u16 = 0x0004;

/// `struct struct_io_manager`.
#[repr(C)]
pub struct io_manager_t {
    pub magic: errcode_t,
    pub name: *const c_char,
    pub open:
        Option<unsafe extern "C" fn(*const c_char, c_int, *mut *mut io_channel_t) -> errcode_t>,
    pub close: Option<unsafe extern "C" fn(*mut io_channel_t) -> errcode_t>,
    pub set_blksize: Option<unsafe extern "C" fn(*mut io_channel_t, c_int) -> errcode_t>,
    pub read_blk:
        Option<unsafe extern "C" fn(*mut io_channel_t, c_ulong, c_int, *mut c_void) -> errcode_t>,
    pub write_blk:
        Option<unsafe extern "C" fn(*mut io_channel_t, c_ulong, c_int, *const c_void) -> errcode_t>,
    pub flush: Option<unsafe extern "C" fn(*mut io_channel_t) -> errcode_t>,
    pub write_byte:
        Option<unsafe extern "C" fn(*mut io_channel_t, c_ulong, c_int, *const c_void) -> errcode_t>,
    pub set_option:
        Option<unsafe extern "C" fn(*mut io_channel_t, *const c_char, *const c_char) -> errcode_t>,
    pub get_stats: Option<unsafe extern "C" fn(*mut io_channel_t, *mut *mut c_void) -> errcode_t>,
    pub read_blk64: Option<
        unsafe extern "C" fn(*mut io_channel_t, c_ulonglong, c_int, *mut c_void) -> errcode_t,
    >,
    pub write_blk64: Option<
        unsafe extern "C" fn(*mut io_channel_t, c_ulonglong, c_int, *const c_void) -> errcode_t,
    >,
    pub discard:
        Option<unsafe extern "C" fn(*mut io_channel_t, c_ulonglong, c_ulonglong) -> errcode_t>,
    pub cache_readahead:
        Option<unsafe extern "C" fn(*mut io_channel_t, c_ulonglong, c_ulonglong) -> errcode_t>,
    pub zeroout:
        Option<unsafe extern "C" fn(*mut io_channel_t, c_ulonglong, c_ulonglong) -> errcode_t>,
    pub reserved: [c_long; 14],
}

// SAFETY: the manager is an immutable table of function pointers and a static name.
unsafe impl Sync for io_manager_t {}

/// `struct struct_io_channel`.
#[repr(C)]
pub struct io_channel_t {
    pub magic: errcode_t,
    pub manager: *const io_manager_t,
    pub name: *mut c_char,
    pub block_size: c_int,
    pub read_error: *mut c_void,
    pub write_error: *mut c_void,
    pub refcount: c_int,
    pub flags: c_int,
    pub reserved: [c_long; 14],
    pub private_data: *mut c_void,
    pub app_data: *mut c_void,
    pub align: c_int,
}

/// The leading fields of `struct struct_ext2_filsys` (the rest is never touched).
#[repr(C)]
pub struct filsys_t {
    pub magic: errcode_t,
    pub io: *mut io_channel_t,
    pub flags: c_int,
    pub device_name: *mut c_char,
    pub super_: *mut u8,
    pub blocksize: c_uint,
    pub fragsize: c_int,
    pub group_desc_count: u32,
}

/// An open filesystem (`ext2_filsys`).
pub type ext2_filsys = *mut filsys_t;
/// An open file (`ext2_file_t`), opaque.
pub type ext2_file_t = *mut c_void;
/// An extended-attribute handle, opaque.
pub type xattr_handle = *mut c_void;

/// `struct ext2fs_journal_params`.
#[repr(C)]
#[derive(Default)]
pub struct journal_params {
    pub num_journal_blocks: u32,
    pub num_fc_blocks: u32,
}

#[link(name = "libext2fs.so.2", kind = "dylib", modifiers = "+verbatim")]
unsafe extern "C" {
    pub fn initialize_ext2_error_table();
    pub fn ext2fs_initialize(
        name: *const c_char,
        flags: c_int,
        param: *mut u8,
        manager: *const io_manager_t,
        ret: *mut ext2_filsys,
    ) -> errcode_t;
    pub fn ext2fs_open2(
        name: *const c_char,
        io_options: *const c_char,
        flags: c_int,
        superblock: c_int,
        block_size: c_uint,
        manager: *const io_manager_t,
        ret: *mut ext2_filsys,
    ) -> errcode_t;
    pub fn ext2fs_close_free(fs: *mut ext2_filsys) -> errcode_t;
    pub fn ext2fs_free(fs: ext2_filsys);
    pub fn ext2fs_read_bitmaps(fs: ext2_filsys) -> errcode_t;
    pub fn ext2fs_allocate_tables(fs: ext2_filsys) -> errcode_t;
    pub fn ext2fs_init_csum_seed(fs: ext2_filsys);
    pub fn ext2fs_bg_flags_set(fs: ext2_filsys, group: u32, flags: u16);
    pub fn ext2fs_group_desc_csum_set(fs: ext2_filsys, group: u32);
    pub fn ext2fs_update_bb_inode(fs: ext2_filsys, list: *mut c_void) -> errcode_t;
    pub fn ext2fs_get_journal_params(params: *mut journal_params, fs: ext2_filsys) -> errcode_t;
    pub fn ext2fs_add_journal_inode3(
        fs: ext2_filsys,
        params: *mut journal_params,
        goal: blk64_t,
        flags: c_int,
    ) -> errcode_t;
    pub fn ext2fs_expand_dir(fs: ext2_filsys, dir: ext2_ino_t) -> errcode_t;

    pub fn ext2fs_new_inode(
        fs: ext2_filsys,
        dir: ext2_ino_t,
        mode: c_int,
        map: *mut c_void,
        ret: *mut ext2_ino_t,
    ) -> errcode_t;
    pub fn ext2fs_inode_alloc_stats2(fs: ext2_filsys, ino: ext2_ino_t, inuse: c_int, isdir: c_int);
    pub fn ext2fs_read_inode_full(
        fs: ext2_filsys,
        ino: ext2_ino_t,
        inode: *mut u8,
        bufsize: c_int,
    ) -> errcode_t;
    pub fn ext2fs_write_inode_full(
        fs: ext2_filsys,
        ino: ext2_ino_t,
        inode: *const u8,
        bufsize: c_int,
    ) -> errcode_t;
    pub fn ext2fs_mkdir(
        fs: ext2_filsys,
        parent: ext2_ino_t,
        inum: ext2_ino_t,
        name: *const c_char,
    ) -> errcode_t;
    pub fn ext2fs_symlink(
        fs: ext2_filsys,
        parent: ext2_ino_t,
        ino: ext2_ino_t,
        name: *const c_char,
        target: *const c_char,
    ) -> errcode_t;
    pub fn ext2fs_punch(
        fs: ext2_filsys,
        ino: ext2_ino_t,
        inode: *mut u8,
        block_buf: *mut c_char,
        start: blk64_t,
        end: blk64_t,
    ) -> errcode_t;
    pub fn ext2fs_bmap2(
        fs: ext2_filsys,
        ino: ext2_ino_t,
        inode: *mut u8,
        block_buf: *mut c_char,
        bmap_flags: c_int,
        block: blk64_t,
        ret_flags: *mut c_int,
        phys_blk: *mut blk64_t,
    ) -> errcode_t;
    pub fn ext2fs_read_dir_block4(
        fs: ext2_filsys,
        block: blk64_t,
        buf: *mut c_void,
        flags: c_int,
        ino: ext2_ino_t,
    ) -> errcode_t;
    pub fn ext2fs_write_dir_block4(
        fs: ext2_filsys,
        block: blk64_t,
        buf: *mut c_void,
        flags: c_int,
        ino: ext2_ino_t,
    ) -> errcode_t;
    pub fn ext2fs_dirhash2(
        version: c_int,
        name: *const c_char,
        len: c_int,
        charset: *const c_void,
        hash_flags: c_int,
        seed: *const u32,
        ret_hash: *mut u32,
        ret_minor_hash: *mut u32,
    ) -> errcode_t;
    pub fn ext2fs_lookup(
        fs: ext2_filsys,
        dir: ext2_ino_t,
        name: *const c_char,
        namelen: c_int,
        buf: *mut c_char,
        ino: *mut ext2_ino_t,
    ) -> errcode_t;
    pub fn ext2fs_free_ext_attr(fs: ext2_filsys, ino: ext2_ino_t, inode: *mut u8) -> errcode_t;

    pub fn ext2fs_file_open(
        fs: ext2_filsys,
        ino: ext2_ino_t,
        flags: c_int,
        ret: *mut ext2_file_t,
    ) -> errcode_t;
    pub fn ext2fs_file_close(file: ext2_file_t) -> errcode_t;
    pub fn ext2fs_file_write(
        file: ext2_file_t,
        buf: *const c_void,
        nbytes: c_uint,
        written: *mut c_uint,
    ) -> errcode_t;
    pub fn ext2fs_file_llseek(
        file: ext2_file_t,
        offset: u64,
        whence: c_int,
        ret_pos: *mut u64,
    ) -> errcode_t;
    pub fn ext2fs_file_set_size2(file: ext2_file_t, size: i64) -> errcode_t;

    pub fn ext2fs_xattrs_open(
        fs: ext2_filsys,
        ino: ext2_ino_t,
        handle: *mut xattr_handle,
    ) -> errcode_t;
    pub fn ext2fs_xattrs_read(handle: xattr_handle) -> errcode_t;
    pub fn ext2fs_xattr_set(
        handle: xattr_handle,
        key: *const c_char,
        value: *const c_void,
        value_len: usize,
    ) -> errcode_t;
    pub fn ext2fs_xattrs_close(handle: *mut xattr_handle) -> errcode_t;
}

#[link(name = "libcom_err.so.2", kind = "dylib", modifiers = "+verbatim")]
unsafe extern "C" {
    pub fn error_message(code: errcode_t) -> *const c_char;
}
