//! An ext4 inode as its on-disk bytes (little endian), with the fields the writer sets.

use imagestore_core::layer::toc::EntryKind;

/// `EXT4_EXTENTS_FL`.
pub const EXTENTS_FL: u32 = 0x0008_0000;
/// `EXT2_INDEX_FL`: a hash-indexed directory.
pub const INDEX_FL: u32 = 0x0000_1000;

/// The size of the fields up to `i_projid` (`struct ext2_inode_large`): what 256-byte inodes
/// record as their extra size.
pub const EXTRA_ISIZE: u16 = 32;

/// The file-type bits of a mode for an entry kind.
pub fn type_bits(kind: EntryKind) -> u16 {
    match kind {
        EntryKind::Dir => 0o040000,
        EntryKind::Symlink => 0o120000,
        EntryKind::Char => 0o020000,
        EntryKind::Block => 0o060000,
        EntryKind::Fifo => 0o010000,
        _ => 0o100000,
    }
}

/// The directory-entry file type (`EXT2_FT_*`) for a mode.
pub fn dirent_type(mode: u16) -> u8 {
    match mode & 0o170000 {
        0o100000 => 1,
        0o040000 => 2,
        0o020000 => 3,
        0o060000 => 4,
        0o010000 => 5,
        0o140000 => 6,
        0o120000 => 7,
        _ => 0,
    }
}

/// An inode's bytes, as long as the filesystem's inodes.
#[derive(Debug, Clone)]
pub struct Inode {
    /// The raw bytes.
    pub bytes: Vec<u8>,
}

macro_rules! field {
    ($get:ident, $set:ident, $ty:ty, $at:expr) => {
        #[doc = concat!("The `", stringify!($get), "` field.")]
        pub fn $get(&self) -> $ty {
            let mut b = [0u8; std::mem::size_of::<$ty>()];
            b.copy_from_slice(&self.bytes[$at..$at + std::mem::size_of::<$ty>()]);
            <$ty>::from_le_bytes(b)
        }
        #[doc = concat!("Sets the `", stringify!($get), "` field.")]
        pub fn $set(&mut self, v: $ty) {
            self.bytes[$at..$at + std::mem::size_of::<$ty>()].copy_from_slice(&v.to_le_bytes());
        }
    };
}

impl Inode {
    /// A zeroed inode of `size` bytes (at least 160).
    pub fn zeroed(size: usize) -> Inode {
        Inode {
            bytes: vec![0; size.max(160)],
        }
    }

    field!(mode, set_mode, u16, 0);
    field!(uid_lo, set_uid_lo, u16, 2);
    field!(size_lo, set_size_lo, u32, 4);
    field!(atime, set_atime, u32, 8);
    field!(ctime, set_ctime, u32, 12);
    field!(mtime, set_mtime, u32, 16);
    field!(dtime, set_dtime, u32, 20);
    field!(gid_lo, set_gid_lo, u16, 24);
    field!(links, set_links, u16, 26);
    field!(flags, set_flags, u32, 32);
    field!(size_hi, set_size_hi, u32, 108);
    field!(uid_hi, set_uid_hi, u16, 120);
    field!(gid_hi, set_gid_hi, u16, 122);
    field!(extra_isize, set_extra_isize, u16, 128);
    field!(ctime_extra, set_ctime_extra, u32, 132);
    field!(mtime_extra, set_mtime_extra, u32, 136);
    field!(atime_extra, set_atime_extra, u32, 140);
    field!(crtime, set_crtime, u32, 144);
    field!(crtime_extra, set_crtime_extra, u32, 148);

    /// Word `i` of `i_block` (device numbers, fast symlinks, the extent header).
    pub fn block_word(&self, i: usize) -> u32 {
        let at = 40 + 4 * i;
        u32::from_le_bytes([
            self.bytes[at],
            self.bytes[at + 1],
            self.bytes[at + 2],
            self.bytes[at + 3],
        ])
    }

    /// Sets word `i` of `i_block`.
    pub fn set_block_word(&mut self, i: usize, v: u32) {
        let at = 40 + 4 * i;
        self.bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    /// The file size.
    pub fn size(&self) -> u64 {
        u64::from(self.size_lo()) | u64::from(self.size_hi()) << 32
    }

    /// Sets the file size.
    pub fn set_size(&mut self, size: u64) {
        self.set_size_lo(size as u32);
        self.set_size_hi((size >> 32) as u32);
    }

    /// Sets the owner.
    pub fn set_owner(&mut self, uid: u32, gid: u32) {
        self.set_uid_lo(uid as u16);
        self.set_uid_hi((uid >> 16) as u16);
        self.set_gid_lo(gid as u16);
        self.set_gid_hi((gid >> 16) as u16);
    }

    /// Sets access, change, modification and creation times to `secs` since the epoch,
    /// with ext4's extra precision: the low 32 bits in the base field, two epoch bits and
    /// the nanoseconds in the extra field.
    pub fn set_times(&mut self, secs: i64, nanos: u32) {
        let base = secs as u32;
        let extra = (((secs - i64::from(base as i32)) >> 32) as u32 & 3) | (nanos << 2);
        self.set_atime(base);
        self.set_ctime(base);
        self.set_mtime(base);
        self.set_crtime(base);
        if self.bytes.len() > 128 && self.extra_isize() >= EXTRA_ISIZE {
            self.set_atime_extra(extra);
            self.set_ctime_extra(extra);
            self.set_mtime_extra(extra);
            self.set_crtime_extra(extra);
        }
    }

    /// The file-type bits of the mode.
    pub fn is_dir(&self) -> bool {
        self.mode() & 0o170000 == 0o040000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(i: &Inode) -> i64 {
        let base = i64::from(i.mtime() as i32);
        base + (i64::from(i.mtime_extra() & 3) << 32)
    }

    #[test]
    fn times_round_trip_through_the_epoch_bits() {
        let mut i = Inode::zeroed(256);
        i.set_extra_isize(EXTRA_ISIZE);
        for t in [
            0,
            1,
            i64::from(i32::MAX),
            i64::from(i32::MAX) + 1,
            -1,
            i64::from(i32::MIN),
            (1 << 34) - 1 + i64::from(i32::MIN),
        ] {
            i.set_times(t, 7);
            assert_eq!(decode(&i), t, "{t}");
            assert_eq!(i.mtime_extra() >> 2, 7);
        }
    }
}
