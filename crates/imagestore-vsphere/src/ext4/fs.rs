//! An ext4 filesystem open in libext2fs over an [`Overlay`], with a safe method for each
//! library call the writer makes. Every `unsafe` block is one call whose pointers come from
//! this handle (valid until [`Fs::close`] or drop) or from a Rust buffer of the length the
//! call reads or writes.

use std::ffi::{CStr, CString, c_char, c_int};
use std::sync::{Arc, Mutex, Once};

use imagestore_core::{Error, Result};

use super::device::{self, DeviceState};
use super::ffi::{self, errcode_t, ext2_filsys, ext2_ino_t};
use super::inode::{EXTENTS_FL, Inode};
use crate::error::BACKEND;
use crate::vmdk::overlay::Overlay;

/// Feature bits the writer looks at.
const INCOMPAT_EXTENTS: u32 = 0x0040;
const INCOMPAT_FILETYPE: u32 = 0x0002;

/// An error about the filesystem.
pub fn fail(what: impl std::fmt::Display) -> Error {
    Error::backend(BACKEND, format!("ext4: {what}"), false)
}

fn message(code: errcode_t) -> String {
    static TABLE: Once = Once::new();
    // SAFETY: registers libext2fs' static message table with com_err, once.
    TABLE.call_once(|| unsafe { ffi::initialize_ext2_error_table() });
    // SAFETY: error_message returns a pointer to a static or thread-local NUL-terminated
    // string, read at once.
    let text = unsafe { CStr::from_ptr(ffi::error_message(code)) };
    text.to_string_lossy().into_owned()
}

/// An open filesystem.
pub struct Fs {
    fs: ext2_filsys,
    device: Arc<Mutex<DeviceState>>,
    /// Block size in bytes.
    pub blocksize: usize,
    /// Inode size in bytes.
    pub inode_size: usize,
    extents: bool,
    filetype: bool,
}

// SAFETY: the handle is used by one thread at a time (`&mut self` for every call that
// changes it); libext2fs keeps no thread-affine state.
unsafe impl Send for Fs {}

impl std::fmt::Debug for Fs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fs")
            .field("blocksize", &self.blocksize)
            .finish()
    }
}

/// The superblock fields the writer sets when it makes a filesystem.
#[derive(Debug, Clone)]
pub struct MkfsParams {
    /// Size of the filesystem in bytes.
    pub size: u64,
    /// Volume label.
    pub label: String,
}

fn put_u32(sb: &mut [u8], at: usize, v: u32) {
    sb[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u16(sb: &mut [u8], at: usize, v: u16) {
    sb[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

impl Fs {
    fn wrap(fs: ext2_filsys, device: Arc<Mutex<DeviceState>>) -> Fs {
        // SAFETY: `fs` was just returned by libext2fs; its leading fields and superblock
        // (1,024 bytes) are valid while it is open.
        let (blocksize, sb) = unsafe {
            let f = &*fs;
            (
                f.blocksize as usize,
                std::slice::from_raw_parts(f.super_ as *const u8, 1024),
            )
        };
        let word = |at: usize| u32::from_le_bytes([sb[at], sb[at + 1], sb[at + 2], sb[at + 3]]);
        let rev = word(0x4c);
        let inode_size = if rev == 0 {
            128
        } else {
            usize::from(u16::from_le_bytes([sb[0x58], sb[0x59]]))
        };
        let incompat = word(0x60);
        Fs {
            fs,
            device,
            blocksize,
            inode_size,
            extents: incompat & INCOMPAT_EXTENTS != 0,
            filetype: incompat & INCOMPAT_FILETYPE != 0,
        }
    }

    /// The error for a failed call, naming what was done and any I/O error behind it.
    fn err(&self, code: errcode_t, what: impl std::fmt::Display) -> Error {
        let io = self
            .device
            .lock()
            .ok()
            .and_then(|mut d| d.error.take())
            .map(|e| format!(" ({e})"))
            .unwrap_or_default();
        fail(format!("{what}: {}{io}", message(code)))
    }

    fn check(&self, code: errcode_t, what: impl FnOnce() -> String) -> Result<()> {
        if code == 0 {
            Ok(())
        } else {
            Err(self.err(code, what()))
        }
    }

    fn new_device(overlay: Overlay) -> Arc<Mutex<DeviceState>> {
        Arc::new(Mutex::new(DeviceState {
            overlay: Some(overlay),
            error: None,
        }))
    }

    /// Hands `overlay` to libext2fs through `call` (which opens or makes a filesystem on the
    /// device named in the thread-local slot, storing the handle where it is given); `what`
    /// names the step in errors.
    fn start(
        overlay: Overlay,
        what: &str,
        call: impl FnOnce(*mut ext2_filsys) -> errcode_t,
    ) -> Result<Fs> {
        let device = Self::new_device(overlay);
        let mut fs: ext2_filsys = std::ptr::null_mut();
        let code = device::with_device(device.clone(), || call(&mut fs));
        if code != 0 {
            let io = device.lock().ok().and_then(|mut d| d.error.take());
            return Err(fail(format!(
                "cannot {what} the filesystem: {}{}",
                message(code),
                io.map(|e| format!(" ({e})")).unwrap_or_default()
            )));
        }
        Ok(Fs::wrap(fs, device))
    }

    /// Opens the filesystem on `overlay` for writing.
    pub fn open(overlay: Overlay) -> Result<Fs> {
        let me = Self::start(overlay, "open", |fs| {
            // SAFETY: the name is a static C string, the manager a static table, and `fs` a
            // valid place for the result.
            unsafe {
                ffi::ext2fs_open2(
                    c"imagestore".as_ptr(),
                    std::ptr::null(),
                    ffi::FLAG_RW | ffi::FLAG_64BITS | ffi::FLAG_SKIP_MMP,
                    0,
                    0,
                    &device::MANAGER,
                    fs,
                )
            }
        })?;
        // SAFETY: `me.fs` is open.
        let code = unsafe { ffi::ext2fs_read_bitmaps(me.fs) };
        me.check(code, || "cannot read the allocation bitmaps".into())?;
        Ok(me)
    }

    /// Makes an empty ext4 filesystem on `overlay` (whose blocks all read as zeros): 4 KiB
    /// blocks, 256-byte inodes, one inode per 16 KiB, the features `mke2fs -t ext4` gives
    /// (journal, extents, flex_bg, 64bit, metadata checksums, directory index, ...) except
    /// the resize inode, 5 % of the blocks reserved for root, a root directory owned by root
    /// and `lost+found`.
    pub fn create(overlay: Overlay, params: &MkfsParams) -> Result<Fs> {
        let blocks = params.size / 4096;
        if blocks < 1024 {
            return Err(Error::invalid(format!(
                "a scratch filesystem of {} bytes is too small (at least 4 MiB)",
                params.size
            )));
        }
        let mut sb = vec![0u8; 1024];
        put_u32(
            &mut sb,
            0x00,
            u32::try_from(params.size / 16384).unwrap_or(u32::MAX),
        );
        put_u32(&mut sb, 0x04, blocks as u32);
        put_u32(&mut sb, 0x150, (blocks >> 32) as u32);
        // 5 % reserved for root, as mke2fs reserves.
        let reserved = blocks / 20;
        put_u32(&mut sb, 0x08, reserved as u32);
        put_u32(&mut sb, 0x154, (reserved >> 32) as u32);
        put_u32(&mut sb, 0x18, 2); // 4 KiB blocks
        put_u32(&mut sb, 0x1c, 2);
        put_u32(&mut sb, 0x4c, 1); // dynamic revision
        put_u16(&mut sb, 0x58, 256);
        // compat: has_journal, ext_attr, dir_index
        put_u32(&mut sb, 0x5c, 0x0004 | 0x0008 | 0x0020);
        // incompat: filetype, extents, 64bit, flex_bg
        put_u32(&mut sb, 0x60, 0x0002 | 0x0040 | 0x0080 | 0x0200);
        // ro_compat: sparse_super, large_file, huge_file, dir_nlink, extra_isize,
        // metadata_csum
        put_u32(
            &mut sb,
            0x64,
            0x0001 | 0x0002 | 0x0008 | 0x0020 | 0x0040 | 0x0400,
        );
        sb[0x174] = 4; // 16 groups per flex group
        put_u16(&mut sb, 0xfe, 64); // 64-bit group descriptors
        let mut me = Self::start(overlay, "make", |fs| {
            // SAFETY: `sb` is a 1,024-byte superblock image the call only reads; the name is
            // a static C string, the manager a static table, `fs` a place for the result.
            unsafe {
                ffi::ext2fs_initialize(
                    c"imagestore".as_ptr(),
                    ffi::FLAG_64BITS,
                    sb.as_mut_ptr(),
                    &device::MANAGER,
                    fs,
                )
            }
        })?;
        let label = params.label.as_bytes();
        let n = label.len().min(16);
        me.superblock_mut()[0x78..0x78 + n].copy_from_slice(&label[..n]);
        me.finish_mkfs()?;
        Ok(me)
    }

    /// The steps of `mke2fs` after the superblock: identity, tables, root, `lost+found`,
    /// reserved inodes, journal.
    fn finish_mkfs(&mut self) -> Result<()> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(0);
        let uuid: [u8; 16] = rand::random();
        let seed: [u8; 16] = rand::random();
        {
            let sb = self.superblock_mut();
            let mut uuid = uuid;
            uuid[6] = (uuid[6] & 0x0f) | 0x40;
            uuid[8] = (uuid[8] & 0x3f) | 0x80;
            sb[0x68..0x78].copy_from_slice(&uuid);
            sb[0xec..0xfc].copy_from_slice(&seed);
            sb[0xfc] = 1; // half_md4
            sb[0x175] = 1; // crc32c metadata checksums
            put_u32(sb, 0x108, now); // mkfs time
            put_u32(sb, 0x40, now); // last check
            put_u16(sb, 0x36, 0xffff); // no mount-count checks
            put_u16(sb, 0x15c, 32); // min extra isize
            put_u16(sb, 0x15e, 32); // want extra isize
        }
        // SAFETY: `self.fs` is open; the uuid was just set.
        unsafe { ffi::ext2fs_init_csum_seed(self.fs) };
        // SAFETY: as above.
        let code = unsafe { ffi::ext2fs_allocate_tables(self.fs) };
        self.check(code, || "cannot lay out the block groups".into())?;
        // The disk reads as zeros wherever nothing was written, so every inode table is
        // already zeroed.
        // SAFETY: `self.fs` is open; the group count is read from it.
        let groups = unsafe { (*self.fs).group_desc_count };
        for g in 0..groups {
            // SAFETY: `g` is a group of this filesystem.
            unsafe {
                ffi::ext2fs_bg_flags_set(self.fs, g, ffi::BG_INODE_ZEROED);
                ffi::ext2fs_group_desc_csum_set(self.fs, g);
            }
        }
        // SAFETY: `self.fs` is open; a null name makes the root directory.
        let code = unsafe { ffi::ext2fs_mkdir(self.fs, 2, 2, std::ptr::null()) };
        self.check(code, || "cannot make the root directory".into())?;
        // SAFETY: as above, with a static name.
        let code = unsafe { ffi::ext2fs_mkdir(self.fs, 2, 0, c"lost+found".as_ptr()) };
        self.check(code, || "cannot make lost+found".into())?;
        let lf = self.lookup_slow(2, "lost+found")?;
        // lost+found gets 16 KiB, as mke2fs gives it, so e2fsck has room without
        // allocating.
        for _ in 1..4 {
            // SAFETY: `lf` is a directory of this filesystem.
            let code = unsafe { ffi::ext2fs_expand_dir(self.fs, lf) };
            self.check(code, || "cannot grow lost+found".into())?;
        }
        // The bad-blocks inode and the reserved inodes up to the first normal one.
        // SAFETY: `self.fs` is open; inode 1 is the bad-blocks inode.
        unsafe { ffi::ext2fs_inode_alloc_stats2(self.fs, 1, 1, 0) };
        // SAFETY: as above; an empty list.
        let code = unsafe { ffi::ext2fs_update_bb_inode(self.fs, std::ptr::null_mut()) };
        self.check(code, || "cannot write the bad-blocks inode".into())?;
        for ino in 3..11 {
            // SAFETY: reserved inode numbers of this filesystem.
            unsafe { ffi::ext2fs_inode_alloc_stats2(self.fs, ino, 1, 0) };
        }
        let mut jp = ffi::journal_params::default();
        // SAFETY: `jp` is a valid parameter block; `self.fs` is open.
        let code = unsafe { ffi::ext2fs_get_journal_params(&mut jp, self.fs) };
        self.check(code, || "cannot size the journal".into())?;
        // SAFETY: as above; the journal's blocks read as zeros, so it needs no zeroing.
        let code = unsafe {
            ffi::ext2fs_add_journal_inode3(self.fs, &mut jp, u64::MAX, ffi::MKJOURNAL_LAZYINIT)
        };
        self.check(code, || "cannot add the journal".into())?;
        Ok(())
    }

    fn superblock_mut(&mut self) -> &mut [u8] {
        // SAFETY: the superblock buffer of an open filesystem is 1,024 bytes, owned by
        // the handle, and only touched through `&mut self`.
        unsafe { std::slice::from_raw_parts_mut((*self.fs).super_, 1024) }
    }

    /// The superblock's bytes.
    pub fn superblock(&self) -> &[u8] {
        // SAFETY: as in `superblock_mut`, read-only.
        unsafe { std::slice::from_raw_parts((*self.fs).super_, 1024) }
    }

    /// True if directory entries carry file types.
    pub fn has_filetype(&self) -> bool {
        self.filetype
    }

    /// Writes everything out (superblock, group descriptors, bitmaps) and returns the disk.
    /// `all_superblocks` also rewrites every backup superblock (for a new filesystem);
    /// otherwise only the primary ones change, so a layer's disk holds no backup groups.
    pub fn close(mut self, all_superblocks: bool) -> Result<Overlay> {
        if !all_superblocks {
            // SAFETY: `self.fs` is open; only a flag is set.
            unsafe { (*self.fs).flags |= ffi::FLAG_MASTER_SB_ONLY };
        }
        let mut fs = std::mem::replace(&mut self.fs, std::ptr::null_mut());
        // SAFETY: `fs` is open and is closed and freed exactly once here.
        let code = unsafe { ffi::ext2fs_close_free(&mut fs) };
        let io = self.device.lock().ok().and_then(|mut d| d.error.take());
        if code != 0 {
            return Err(fail(format!(
                "cannot write the filesystem out: {}{}",
                message(code),
                io.map(|e| format!(" ({e})")).unwrap_or_default()
            )));
        }
        let mut overlay = self
            .device
            .lock()
            .ok()
            .and_then(|mut d| d.overlay.take())
            .ok_or_else(|| fail("the disk was lost while the filesystem closed"))?;
        overlay
            .flush()
            .map_err(|e| fail(format!("cannot write the disk: {e}")))?;
        Ok(overlay)
    }

    /// Reads inode `ino`.
    pub fn read_inode(&self, ino: u32) -> Result<Inode> {
        let mut i = Inode::zeroed(self.inode_size);
        // SAFETY: the buffer holds `inode_size` bytes, the length passed.
        let code = unsafe {
            ffi::ext2fs_read_inode_full(
                self.fs,
                ino,
                i.bytes.as_mut_ptr(),
                self.inode_size as c_int,
            )
        };
        self.check(code, || format!("cannot read inode {ino}"))?;
        Ok(i)
    }

    /// Writes inode `ino` whole.
    pub fn write_inode(&mut self, ino: u32, i: &Inode) -> Result<()> {
        // SAFETY: the buffer holds at least `inode_size` bytes, the length passed.
        let code = unsafe {
            ffi::ext2fs_write_inode_full(self.fs, ino, i.bytes.as_ptr(), self.inode_size as c_int)
        };
        self.check(code, || format!("cannot write inode {ino}"))
    }

    /// A free inode near directory `dir` for a file of `mode`, not yet marked in use.
    fn find_inode(&mut self, dir: u32, mode: u16) -> Result<u32> {
        let mut ino: ext2_ino_t = 0;
        // SAFETY: `self.fs` is open; a null bitmap means the filesystem's own.
        let code = unsafe {
            ffi::ext2fs_new_inode(
                self.fs,
                dir,
                c_int::from(mode),
                std::ptr::null_mut(),
                &mut ino,
            )
        };
        self.check(code, || "no free inode (the scratch disk is full)".into())?;
        Ok(ino)
    }

    /// Allocates a new inode near directory `dir` for a file of `mode` and marks it in use.
    pub fn new_inode(&mut self, dir: u32, mode: u16) -> Result<u32> {
        let ino = self.find_inode(dir, mode)?;
        let is_dir = c_int::from(mode & 0o170000 == 0o040000);
        // SAFETY: `ino` was just found free.
        unsafe { ffi::ext2fs_inode_alloc_stats2(self.fs, ino, 1, is_dir) };
        Ok(ino)
    }

    /// A fresh inode image: zeroed, with the extra size set and, for regular files,
    /// directories and long symlinks, an empty extent tree.
    pub fn blank_inode(&self, mode: u16, extents: bool) -> Inode {
        let mut i = Inode::zeroed(self.inode_size);
        i.set_mode(mode);
        if self.inode_size > 128 {
            i.set_extra_isize(super::inode::EXTRA_ISIZE);
        }
        if extents && self.extents {
            i.set_flags(EXTENTS_FL);
            // The extent header: magic, no entries, room for four, depth 0.
            i.bytes[40..42].copy_from_slice(&0xf30au16.to_le_bytes());
            i.bytes[42..44].copy_from_slice(&0u16.to_le_bytes());
            i.bytes[44..46].copy_from_slice(&4u16.to_le_bytes());
            i.bytes[46..48].copy_from_slice(&0u16.to_le_bytes());
        }
        i
    }

    /// Frees inode `ino` (`i` is its current image): its blocks, its attribute block, and
    /// the inode itself.
    pub fn free_inode(&mut self, ino: u32, i: &mut Inode) -> Result<()> {
        if has_blocks(i) {
            // SAFETY: `i` holds `inode_size` bytes and is this inode's image; a null block
            // buffer lets the library allocate its own.
            let code = unsafe {
                ffi::ext2fs_punch(
                    self.fs,
                    ino,
                    i.bytes.as_mut_ptr(),
                    std::ptr::null_mut(),
                    0,
                    !0,
                )
            };
            self.check(code, || format!("cannot free the blocks of inode {ino}"))?;
        }
        // SAFETY: as above.
        let code = unsafe { ffi::ext2fs_free_ext_attr(self.fs, ino, i.bytes.as_mut_ptr()) };
        self.check(code, || {
            format!("cannot free the attributes of inode {ino}")
        })?;
        let is_dir = i.is_dir();
        i.set_links(0);
        // A deletion time (a small one would read as the next link of the orphan list).
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(u32::MAX);
        i.set_dtime(now.max(1 << 30));
        self.write_inode(ino, i)?;
        // SAFETY: `ino` is in use and is released once.
        unsafe { ffi::ext2fs_inode_alloc_stats2(self.fs, ino, -1, c_int::from(is_dir)) };
        Ok(())
    }

    /// Makes a new directory with `.` and `..` (its parent `parent`, whose link count
    /// grows by one), not linked anywhere; its inode number.
    pub fn mkdir(&mut self, parent: u32) -> Result<u32> {
        let ino = self.find_inode(parent, 0o040755)?;
        // SAFETY: `self.fs` is open; `ino` is free (the call marks it in use); a null name
        // leaves the directory unlinked.
        let code = unsafe { ffi::ext2fs_mkdir(self.fs, parent, ino, std::ptr::null()) };
        self.check(code, || format!("cannot make directory inode {ino}"))?;
        Ok(ino)
    }

    /// Makes a new symlink pointing at `target`, not linked anywhere; its inode number.
    pub fn symlink(&mut self, parent: u32, target: &str) -> Result<u32> {
        let t = CString::new(target)
            .map_err(|_| Error::invalid("a symlink target holds a NUL byte"))?;
        let ino = self.find_inode(parent, 0o120777)?;
        // SAFETY: `self.fs` is open, `t` a NUL-terminated string, `ino` free (the call marks
        // it in use); a null name leaves the link unlinked.
        let code =
            unsafe { ffi::ext2fs_symlink(self.fs, parent, ino, std::ptr::null(), t.as_ptr()) };
        self.check(code, || {
            format!("cannot make a symlink of {} bytes", target.len())
        })?;
        Ok(ino)
    }

    /// Opens regular file `ino` for writing.
    pub fn file(&mut self, ino: u32) -> Result<File<'_>> {
        let mut f: ffi::ext2_file_t = std::ptr::null_mut();
        // SAFETY: `self.fs` is open; `f` a place for the handle.
        let code = unsafe { ffi::ext2fs_file_open(self.fs, ino, ffi::FILE_WRITE, &mut f) };
        self.check(code, || format!("cannot open inode {ino}"))?;
        Ok(File { fs: self, f, ino })
    }

    /// Sets extended attribute `name` (with its namespace prefix) of inode `ino`.
    pub fn set_xattr(&mut self, ino: u32, name: &str, value: &[u8]) -> Result<()> {
        let key = CString::new(name).map_err(|_| Error::invalid("an xattr name holds NUL"))?;
        let mut h: ffi::xattr_handle = std::ptr::null_mut();
        // SAFETY: `self.fs` is open; `h` a place for the handle.
        let code = unsafe { ffi::ext2fs_xattrs_open(self.fs, ino, &mut h) };
        self.check(code, || {
            format!("cannot open the attributes of inode {ino}")
        })?;
        // SAFETY: `h` is open.
        let mut code = unsafe { ffi::ext2fs_xattrs_read(h) };
        if code == 0 {
            // SAFETY: `h` is open; `key` NUL-terminated; `value` of the length passed.
            code = unsafe {
                ffi::ext2fs_xattr_set(h, key.as_ptr(), value.as_ptr().cast(), value.len())
            };
        }
        // SAFETY: `h` is open and closed once.
        let closed = unsafe { ffi::ext2fs_xattrs_close(&mut h) };
        self.check(code, || format!("cannot set attribute {name:?}"))?;
        self.check(closed, || {
            format!("cannot write the attributes of inode {ino}")
        })
    }

    /// The physical block of logical block `lblk` of inode `ino` (`i` its image, updated
    /// when a block is allocated); `alloc` allocates it when unmapped. `None` for a hole.
    pub fn map_block(
        &mut self,
        ino: u32,
        i: &mut Inode,
        lblk: u64,
        alloc: bool,
    ) -> Result<Option<u64>> {
        let mut phys: u64 = 0;
        let flags = if alloc { ffi::BMAP_ALLOC } else { 0 };
        // SAFETY: `i` holds `inode_size` bytes and is this inode's image; the library
        // allocates its own block buffer when given null.
        let code = unsafe {
            ffi::ext2fs_bmap2(
                self.fs,
                ino,
                i.bytes.as_mut_ptr(),
                std::ptr::null_mut(),
                flags,
                lblk,
                std::ptr::null_mut(),
                &mut phys,
            )
        };
        self.check(code, || format!("cannot map block {lblk} of inode {ino}"))?;
        Ok((phys != 0).then_some(phys))
    }

    /// Frees the blocks of inode `ino` from logical block `from` on.
    pub fn truncate_blocks(&mut self, ino: u32, i: &mut Inode, from: u64) -> Result<()> {
        // SAFETY: as in `free_inode`.
        let code = unsafe {
            ffi::ext2fs_punch(
                self.fs,
                ino,
                i.bytes.as_mut_ptr(),
                std::ptr::null_mut(),
                from,
                !0,
            )
        };
        self.check(code, || format!("cannot free the blocks of inode {ino}"))
    }

    /// Reads directory block `phys` of directory `ino`, checking its checksum.
    pub fn read_dir_block(&self, phys: u64, ino: u32, buf: &mut [u8]) -> Result<()> {
        assert_eq!(buf.len(), self.blocksize, "a directory block buffer");
        // SAFETY: `buf` holds one block, what the call reads.
        let code =
            unsafe { ffi::ext2fs_read_dir_block4(self.fs, phys, buf.as_mut_ptr().cast(), 0, ino) };
        self.check(code, || {
            format!("cannot read block {phys} of directory inode {ino}")
        })
    }

    /// Writes directory block `phys` of directory `ino`, setting its checksum.
    pub fn write_dir_block(&mut self, phys: u64, ino: u32, buf: &mut [u8]) -> Result<()> {
        assert_eq!(buf.len(), self.blocksize, "a directory block buffer");
        // SAFETY: `buf` holds one block, what the call writes (after setting its checksum
        // in place).
        let code =
            unsafe { ffi::ext2fs_write_dir_block4(self.fs, phys, buf.as_mut_ptr().cast(), 0, ino) };
        self.check(code, || {
            format!("cannot write block {phys} of directory inode {ino}")
        })
    }

    /// True when large directories may be hash-indexed (`dir_index`).
    pub fn has_dir_index(&self) -> bool {
        let sb = self.superblock();
        u32::from_le_bytes([sb[0x5c], sb[0x5d], sb[0x5e], sb[0x5f]]) & 0x0020 != 0
    }

    /// The directory hash version new indexes record and the seed, from the superblock.
    pub fn hash_params(&self) -> (i32, [u32; 4]) {
        let sb = self.superblock();
        let mut seed = [0u32; 4];
        for (i, w) in seed.iter_mut().enumerate() {
            let at = 0xec + 4 * i;
            *w = u32::from_le_bytes([sb[at], sb[at + 1], sb[at + 2], sb[at + 3]]);
        }
        (i32::from(sb[0xfc]), seed)
    }

    /// The hash and minor hash of directory entry `name` under hash `version` (as an index
    /// records it: the unsigned variant is used when the superblock says so).
    pub fn dirhash(&self, version: i32, seed: &[u32; 4], name: &[u8]) -> Result<(u32, u32)> {
        let sb = self.superblock();
        let flags = u32::from_le_bytes([sb[0x160], sb[0x161], sb[0x162], sb[0x163]]);
        // Legacy, half-MD4 and TEA have unsigned variants 3 numbers up.
        let alg = if version <= 2 && flags & 0x0002 != 0 {
            version + 3
        } else {
            version
        };
        let (mut hash, mut minor) = (0u32, 0u32);
        // SAFETY: `name` is passed with its length, `seed` holds four words, the results
        // are plain out-parameters; no charset (no casefolding).
        let code = unsafe {
            ffi::ext2fs_dirhash2(
                alg,
                name.as_ptr() as *const c_char,
                name.len() as c_int,
                std::ptr::null(),
                0,
                seed.as_ptr(),
                &mut hash,
                &mut minor,
            )
        };
        self.check(code, || "cannot hash a directory entry".into())?;
        Ok((hash, minor))
    }

    /// True when directory blocks end in a checksum tail (metadata_csum).
    pub fn has_csum(&self) -> bool {
        let sb = self.superblock();
        u32::from_le_bytes([sb[0x64], sb[0x65], sb[0x66], sb[0x67]]) & 0x0400 != 0
    }

    /// Looks `name` up in directory `dir` by scanning it (for the few fixed names of a new
    /// filesystem).
    fn lookup_slow(&self, dir: u32, name: &str) -> Result<u32> {
        let mut ino: ext2_ino_t = 0;
        // SAFETY: `name` is passed with its length; a null buffer lets the library allocate.
        let code = unsafe {
            ffi::ext2fs_lookup(
                self.fs,
                dir,
                name.as_ptr() as *const c_char,
                name.len() as c_int,
                std::ptr::null_mut(),
                &mut ino,
            )
        };
        self.check(code, || format!("cannot find {name}"))?;
        Ok(ino)
    }
}

/// True if an inode has data blocks to free (not a fast symlink or device).
fn has_blocks(i: &Inode) -> bool {
    let fmt = i.mode() & 0o170000;
    match fmt {
        0o100000 | 0o040000 => true,
        0o120000 => i.flags() & EXTENTS_FL != 0 || i.block_word(0) != 0 && i.size() >= 60,
        _ => false,
    }
}

impl Drop for Fs {
    fn drop(&mut self) {
        if !self.fs.is_null() {
            // SAFETY: an open filesystem not closed: freed (and its channel closed)
            // without writing anything.
            unsafe { ffi::ext2fs_free(self.fs) };
        }
    }
}

/// A regular file open for writing.
#[derive(Debug)]
pub struct File<'a> {
    fs: &'a mut Fs,
    f: ffi::ext2_file_t,
    ino: u32,
}

impl File<'_> {
    /// Writes `data` at `offset`.
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        // SAFETY: `self.f` is open; a null result pointer is allowed.
        let code =
            unsafe { ffi::ext2fs_file_llseek(self.f, offset, ffi::SEEK_SET, std::ptr::null_mut()) };
        self.fs
            .check(code, || format!("cannot seek in inode {}", self.ino))?;
        let mut rest = data;
        while !rest.is_empty() {
            let n = rest.len().min(1 << 30);
            let mut written: u32 = 0;
            // SAFETY: `rest` holds at least `n` bytes.
            let code = unsafe {
                ffi::ext2fs_file_write(self.f, rest.as_ptr().cast(), n as u32, &mut written)
            };
            self.fs.check(code, || {
                format!(
                    "cannot write inode {} (the scratch disk may be full)",
                    self.ino
                )
            })?;
            if written == 0 {
                return Err(fail(format!(
                    "inode {}: a write made no progress",
                    self.ino
                )));
            }
            rest = &rest[written as usize..];
        }
        Ok(())
    }

    /// Sets the length and closes the file.
    pub fn finish(self, size: u64) -> Result<()> {
        // SAFETY: `self.f` is open.
        let code = unsafe { ffi::ext2fs_file_set_size2(self.f, size as i64) };
        self.fs.check(code, || {
            format!("cannot set the size of inode {}", self.ino)
        })?;
        self.close()
    }

    /// Closes the file, writing out what it buffers.
    pub fn close(mut self) -> Result<()> {
        let f = std::mem::replace(&mut self.f, std::ptr::null_mut());
        // SAFETY: `f` is open and closed once.
        let code = unsafe { ffi::ext2fs_file_close(f) };
        self.fs
            .check(code, || format!("cannot close inode {}", self.ino))
    }
}

impl Drop for File<'_> {
    fn drop(&mut self) {
        if !self.f.is_null() {
            // SAFETY: an open file not finished: closed once.
            unsafe { ffi::ext2fs_file_close(self.f) };
        }
    }
}
