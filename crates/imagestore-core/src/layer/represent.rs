//! One representability rule for every backend: a layer is refused at ingest when it holds
//! something no Linux file system could hold. The disk backends hold ext4, so the rule is what
//! ext4 on Linux can hold; `file://` and `s3://` store the bytes as received but refuse the
//! same layers, so every backend accepts or refuses alike.
//!
//! Each rule is a [`Error::BadArchive`] naming the entry and the rule:
//!
//! | what | rule |
//! | --- | --- |
//! | a name component | at most [`MAX_NAME_BYTES`] bytes (`NAME_MAX`) |
//! | a whole path | at most [`MAX_PATH_LEN`](crate::layer::path::MAX_PATH_LEN) bytes (`PATH_MAX` less its NUL) |
//! | a symlink target | not empty, at most [`MAX_SYMLINK_BYTES`] bytes, no NUL |
//! | names, link names, xattr names | no NUL |
//! | an xattr name | in one of [`XATTR_NAMESPACES`], at most [`MAX_XATTR_NAME_BYTES`] bytes |
//! | an xattr value | at most [`MAX_XATTR_VALUE_BYTES`] bytes |
//! | all xattrs of an entry | fit one ext4 xattr block: [`xattr_block_bytes`] ≤ [`XATTR_BLOCK_BYTES`] |
//! | mtime | within [`MIN_MTIME`] ..= [`MAX_MTIME`] seconds (ext4 with extra timestamps) |
//! | a device node | major ≤ [`MAX_DEV_MAJOR`], minor ≤ [`MAX_DEV_MINOR`] (Linux's `dev_t`) |
//! | owner | uid and gid at most [`MAX_ID`] (Linux's `uid_t`) |

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::layer::tar_reader::{RawEntry, RawKind};

/// Longest name component, in bytes (`NAME_MAX`, ext4's directory entry name length).
pub const MAX_NAME_BYTES: usize = 255;
/// Longest symlink target, in bytes (`PATH_MAX` less its terminating NUL).
pub const MAX_SYMLINK_BYTES: usize = 4095;
/// Longest xattr name, namespace prefix included, in bytes (`XATTR_NAME_MAX`).
pub const MAX_XATTR_NAME_BYTES: usize = 255;
/// Largest xattr value, in bytes (`XATTR_SIZE_MAX`).
pub const MAX_XATTR_VALUE_BYTES: usize = 65_536;
/// Size of the one ext4 xattr block all of an entry's xattrs must fit in, in bytes.
pub const XATTR_BLOCK_BYTES: usize = 4096;
/// The xattr namespaces Linux knows; a name must start with one of them.
pub const XATTR_NAMESPACES: [&str; 4] = ["user.", "trusted.", "security.", "system."];
/// Earliest mtime ext4 holds, in seconds since the epoch (-2^31, December 1901).
pub const MIN_MTIME: i64 = -(1 << 31);
/// Latest mtime ext4 with extra (256-byte inode) timestamps holds, in seconds since the epoch:
/// a signed 32-bit field plus two epoch bits, so 2^31 - 1 + 3 * 2^32 (May 2446).
pub const MAX_MTIME: i64 = (1 << 31) - 1 + 3 * (1 << 32);
/// Largest user or group id: Linux's `uid_t` is 32 bits, and `2^32 - 1` means "no id".
pub const MAX_ID: u64 = u32::MAX as u64 - 1;
/// Largest device major number Linux's `dev_t` holds (12 bits).
pub const MAX_DEV_MAJOR: u32 = 4095;
/// Largest device minor number Linux's `dev_t` holds (20 bits).
pub const MAX_DEV_MINOR: u32 = (1 << 20) - 1;

fn round_up4(n: usize) -> usize {
    n.div_ceil(4) * 4
}

/// Bytes an entry's xattrs take in one ext4 xattr block: a 32-byte block header, for each
/// xattr a 16-byte entry header plus its name and its value each rounded up to 4 bytes, and a
/// 4-byte end marker — `32 + 4 + Σ (16 + round_up4(name_len) + round_up4(value_len))`, with
/// the whole name (prefix included) counted, a little stricter than ext4, which keeps the
/// prefix as a one-byte index. An entry without xattrs needs no block and gives 0.
pub fn xattr_block_bytes(xattrs: &BTreeMap<String, Vec<u8>>) -> usize {
    if xattrs.is_empty() {
        return 0;
    }
    xattrs.iter().fold(32 + 4, |sum, (k, v)| {
        sum.saturating_add(16 + round_up4(k.len()) + round_up4(v.len()))
    })
}

/// Checks the components of a normalised path (`raw` is the name in the archive, for
/// messages); the whole length is bounded by [`normalize`](crate::layer::path::normalize).
pub fn check_components(raw: &str, normalized: &str) -> Result<()> {
    for comp in normalized.split('/') {
        if comp.len() > MAX_NAME_BYTES {
            return Err(Error::bad_entry(
                short(raw),
                format!(
                    "a name component is {} bytes; a Linux file system holds at most {MAX_NAME_BYTES} (NAME_MAX)",
                    comp.len()
                ),
            ));
        }
    }
    Ok(())
}

/// Checks what an entry carries besides its name: symlink target, xattrs, mtime and device
/// numbers.
pub fn check_entry(e: &RawEntry) -> Result<()> {
    let name = e.name.as_str();
    let bad = |reason: String| Error::bad_entry(short(name), reason);
    if e.kind == RawKind::Symlink {
        let target = e.link.as_deref().unwrap_or_default();
        if target.is_empty() {
            return Err(bad("symlink target is empty".into()));
        }
        if target.contains('\0') {
            return Err(bad("symlink target contains a NUL byte".into()));
        }
        if target.len() > MAX_SYMLINK_BYTES {
            return Err(bad(format!(
                "symlink target is {} bytes; Linux holds at most {MAX_SYMLINK_BYTES}",
                target.len()
            )));
        }
    }
    for (k, v) in &e.xattrs {
        if k.contains('\0') {
            return Err(bad(format!("xattr name {k:?} contains a NUL byte")));
        }
        if k.len() > MAX_XATTR_NAME_BYTES {
            return Err(bad(format!(
                "xattr name is {} bytes; Linux holds at most {MAX_XATTR_NAME_BYTES} (XATTR_NAME_MAX)",
                k.len()
            )));
        }
        if !XATTR_NAMESPACES.iter().any(|ns| k.starts_with(ns)) {
            return Err(bad(format!(
                "xattr {k:?} is in no Linux namespace (user., trusted., security., system.)"
            )));
        }
        if v.len() > MAX_XATTR_VALUE_BYTES {
            return Err(bad(format!(
                "xattr {k:?} has a value of {} bytes; Linux holds at most {MAX_XATTR_VALUE_BYTES} (XATTR_SIZE_MAX)",
                v.len()
            )));
        }
    }
    let block = xattr_block_bytes(&e.xattrs);
    if block > XATTR_BLOCK_BYTES {
        return Err(bad(format!(
            "xattrs need {block} bytes of an ext4 xattr block; at most {XATTR_BLOCK_BYTES} fit"
        )));
    }
    if !(MIN_MTIME..=MAX_MTIME).contains(&e.mtime) {
        return Err(bad(format!(
            "mtime {} is outside what ext4 holds ({MIN_MTIME} ..= {MAX_MTIME} seconds)",
            e.mtime
        )));
    }
    if e.uid > MAX_ID || e.gid > MAX_ID {
        return Err(bad(format!(
            "owner {}:{} does not fit Linux's uid_t (ids at most {MAX_ID})",
            e.uid, e.gid
        )));
    }
    if let Some((major, minor)) = e.dev
        && matches!(e.kind, RawKind::Char | RawKind::Block)
        && (major > MAX_DEV_MAJOR || minor > MAX_DEV_MINOR)
    {
        return Err(bad(format!(
            "device {major}:{minor} does not fit Linux's dev_t (major at most {MAX_DEV_MAJOR}, minor at most {MAX_DEV_MINOR})"
        )));
    }
    Ok(())
}

/// The first 64 characters of a name, for messages about very long names.
fn short(raw: &str) -> &str {
    &raw[..raw.char_indices().nth(64).map_or(raw.len(), |(i, _)| i)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: RawKind) -> RawEntry {
        RawEntry::bare("e", kind, None)
    }

    fn reason(r: Result<()>) -> String {
        match r {
            Err(Error::BadArchive { reason, entry }) => {
                assert!(entry.is_some(), "the entry is named");
                reason
            }
            other => panic!("expected a bad archive, got {other:?}"),
        }
    }

    fn symlink(target: &str) -> RawEntry {
        RawEntry {
            link: Some(target.into()),
            ..entry(RawKind::Symlink)
        }
    }

    fn with_xattrs(x: &[(&str, usize)]) -> RawEntry {
        RawEntry {
            xattrs: x
                .iter()
                .map(|(k, n)| ((*k).to_owned(), vec![7u8; *n]))
                .collect(),
            ..entry(RawKind::File)
        }
    }

    #[test]
    fn name_components_are_bounded() -> Result<()> {
        let ok = format!("a/{}", "n".repeat(255));
        check_components(&ok, &ok)?;
        let long = format!("a/{}/b", "n".repeat(256));
        assert!(reason(check_components(&long, &long)).contains("256 bytes"));
        Ok(())
    }

    #[test]
    fn symlink_targets_are_bounded() -> Result<()> {
        check_entry(&symlink(&"t".repeat(4095)))?;
        assert!(reason(check_entry(&symlink(&"t".repeat(4096)))).contains("4096 bytes"));
        assert_eq!(reason(check_entry(&symlink(""))), "symlink target is empty");
        assert!(reason(check_entry(&symlink("a\0b"))).contains("NUL"));
        Ok(())
    }

    #[test]
    fn xattrs_are_bounded() -> Result<()> {
        check_entry(&with_xattrs(&[("user.a", 10), ("security.capability", 20)]))?;
        assert!(
            reason(check_entry(&with_xattrs(&[("comment", 1)]))).contains("no Linux namespace")
        );
        assert!(reason(check_entry(&with_xattrs(&[("user.a\0b", 1)]))).contains("NUL"));
        let long = format!("user.{}", "n".repeat(251));
        assert!(reason(check_entry(&with_xattrs(&[(&long, 1)]))).contains("256 bytes"));
        assert!(
            reason(check_entry(&with_xattrs(&[("user.big", 65_537)])))
                .contains("value of 65537 bytes")
        );
        // The block formula, exactly at and one past its bound:
        // 36 + (16 + 8 + v) = 4096 for an 8-byte name gives v = 4036.
        check_entry(&with_xattrs(&[("user.abc", 4036)]))?;
        assert_eq!(
            reason(check_entry(&with_xattrs(&[("user.abc", 4037)]))),
            "xattrs need 4100 bytes of an ext4 xattr block; at most 4096 fit"
        );
        assert_eq!(
            xattr_block_bytes(&with_xattrs(&[("user.a", 1), ("user.bb", 5)]).xattrs),
            36 + (16 + 8 + 4) + (16 + 8 + 8)
        );
        Ok(())
    }

    #[test]
    fn mtimes_are_bounded() -> Result<()> {
        for ok in [MIN_MTIME, 0, MAX_MTIME] {
            check_entry(&RawEntry {
                mtime: ok,
                ..entry(RawKind::File)
            })?;
        }
        for bad in [MIN_MTIME - 1, MAX_MTIME + 1, i64::MAX] {
            let r = reason(check_entry(&RawEntry {
                mtime: bad,
                ..entry(RawKind::File)
            }));
            assert!(r.contains(&format!("mtime {bad} is outside")), "{r}");
        }
        Ok(())
    }

    #[test]
    fn owners_are_bounded() -> Result<()> {
        check_entry(&RawEntry {
            uid: MAX_ID,
            gid: MAX_ID,
            ..entry(RawKind::File)
        })?;
        for (uid, gid) in [(MAX_ID + 1, 0), (0, MAX_ID + 1), (u64::MAX, 0)] {
            let r = reason(check_entry(&RawEntry {
                uid,
                gid,
                ..entry(RawKind::File)
            }));
            assert!(r.contains("uid_t"), "{r}");
        }
        Ok(())
    }

    #[test]
    fn device_numbers_are_bounded() -> Result<()> {
        let dev = |major, minor| RawEntry {
            dev: Some((major, minor)),
            ..entry(RawKind::Block)
        };
        check_entry(&dev(MAX_DEV_MAJOR, MAX_DEV_MINOR))?;
        assert!(reason(check_entry(&dev(4096, 0))).contains("device 4096:0"));
        assert!(reason(check_entry(&dev(1, 1 << 20))).contains("dev_t"));
        Ok(())
    }
}
