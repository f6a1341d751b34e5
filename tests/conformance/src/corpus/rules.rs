//! Hostile shapes for the representability rule (what ext4 on Linux can hold) and for the
//! parsing differentials: each must be refused alike by every backend.

use tar::{EntryType, Header};

use super::{Expect, Hostile, file, raw, tar_of};
use crate::tars::Layer;

/// An entry preceded by one PAX header carrying `records`.
fn pax_entry(
    records: &[(&str, &[u8])],
    kind: EntryType,
    name: &str,
    link: Option<&str>,
) -> Vec<u8> {
    tar_of(|b| {
        b.append_pax_extensions(records.iter().copied())
            .expect("pax");
        raw(b, name, kind, link, b"");
    })
}

fn xattr(name: &str, value: &[u8]) -> Vec<u8> {
    let key = format!("SCHILY.xattr.{name}");
    pax_entry(&[(&key, value)], EntryType::Regular, "x", None)
}

fn xattrs(list: &[(&str, &[u8])]) -> Vec<u8> {
    let keys: Vec<String> = list
        .iter()
        .map(|(k, _)| format!("SCHILY.xattr.{k}"))
        .collect();
    let recs: Vec<(&str, &[u8])> = keys
        .iter()
        .zip(list)
        .map(|(k, (_, v))| (k.as_str(), *v))
        .collect();
    pax_entry(&recs, EntryType::Regular, "x", None)
}

fn mtime(value: &str) -> Vec<u8> {
    pax_entry(
        &[("mtime", value.as_bytes())],
        EntryType::Regular,
        "t",
        None,
    )
}

/// A character device whose major field is written in base-256 (as GNU tar does past 2^21).
fn base256_major() -> Vec<u8> {
    tar_of(|b| {
        let mut h = Header::new_gnu();
        h.set_entry_type(EntryType::Char);
        h.set_mode(0o644);
        h.set_size(0);
        h.set_path("dev/big").expect("path");
        let major = &mut h.as_gnu_mut().expect("gnu").dev_major;
        major.copy_from_slice(&[0x80, 0, 0, 0, 0, 0x40, 0, 0]);
        h.set_cksum();
        b.append(&h, &[][..]).expect("append");
    })
}

fn gnu_long_chain() -> Vec<u8> {
    let name = vec![b'n'; 400_000];
    tar_of(|b| {
        for kind in [
            EntryType::GNULongName,
            EntryType::GNULongLink,
            EntryType::GNULongName,
        ] {
            let mut h = Header::new_gnu();
            h.set_entry_type(kind);
            h.set_size(name.len() as u64);
            h.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
            h.set_cksum();
            b.append(&h, name.as_slice()).expect("long name");
        }
        file(b, "short", b"");
    })
}

fn pax_chain() -> Vec<u8> {
    let value = vec![b'v'; 100_000];
    tar_of(|b| {
        for i in 0..12 {
            let key = format!("comment.{i}");
            b.append_pax_extensions([(key.as_str(), value.as_slice())])
                .expect("pax");
        }
        file(b, "x", b"");
    })
}

fn pax_flood() -> Vec<u8> {
    let keys: Vec<String> = (0..1100).map(|i| format!("k{i}")).collect();
    tar_of(|b| {
        b.append_pax_extensions(keys.iter().map(|k| (k.as_str(), &b"v"[..])))
            .expect("pax");
        file(b, "x", b"");
    })
}

fn lone_zero_block() -> Vec<u8> {
    let first = tar_of(|b| file(b, "a", b"x"));
    let mut bytes = first[..1024].to_vec();
    bytes.extend_from_slice(&[0u8; 512]);
    bytes.extend_from_slice(&tar_of(|b| file(b, "hidden", b"secret")));
    bytes
}

fn after_end_marker() -> Vec<u8> {
    let mut bytes = tar_of(|b| file(b, "a", b"x"));
    bytes.extend_from_slice(&tar_of(|b| file(b, "hidden", b"secret")));
    bytes
}

/// The representability and differential shapes.
pub(super) fn all() -> Vec<Hostile> {
    use Expect::*;
    let h = |name, bytes, expect| Hostile {
        name,
        bytes,
        expect,
    };
    let deep = format!("{}f", format!("{}/", "d".repeat(200)).repeat(21));
    vec![
        h(
            "name-component-over-255",
            Layer::new()
                .file(&format!("d/{}", "n".repeat(256)), b"x")
                .build(),
            BadArchive("NAME_MAX"),
        ),
        h(
            "path-over-4095",
            Layer::new().file(&deep, b"x").build(),
            BadArchive("the maximum is 4095"),
        ),
        h(
            "symlink-target-over-4095",
            Layer::new().symlink("l", &"t".repeat(4096)).build(),
            BadArchive("symlink target is 4096 bytes"),
        ),
        h(
            "symlink-target-empty",
            tar_of(|b| raw(b, "l", EntryType::Symlink, None, b"")),
            BadArchive("empty target"),
        ),
        h(
            "symlink-target-nul",
            pax_entry(&[("linkpath", b"a\0b")], EntryType::Symlink, "l", Some("x")),
            BadArchive("symlink target contains a NUL byte"),
        ),
        h(
            "name-with-nul",
            pax_entry(&[("path", b"a\0b")], EntryType::Regular, "x", None),
            BadArchive("NUL byte"),
        ),
        h(
            "xattr-name-with-nul",
            xattr("user.a\0b", b"v"),
            BadArchive("NUL byte"),
        ),
        h(
            "xattr-without-namespace",
            xattr("comment", b"v"),
            BadArchive("no Linux namespace"),
        ),
        h(
            "xattr-name-over-255",
            xattr(&format!("user.{}", "n".repeat(251)), b"v"),
            BadArchive("XATTR_NAME_MAX"),
        ),
        h(
            "xattr-value-over-64k",
            xattr("user.big", &[7u8; 65_537]),
            BadArchive("XATTR_SIZE_MAX"),
        ),
        h(
            "xattrs-over-one-block",
            xattrs(&[("user.a", &[1u8; 2100]), ("user.b", &[2u8; 2100])]),
            BadArchive("ext4 xattr block"),
        ),
        h(
            "mtime-before-ext4",
            mtime("-2147483649"),
            BadArchive("outside what ext4 holds"),
        ),
        h(
            "mtime-after-ext4",
            mtime("15032385536"),
            BadArchive("outside what ext4 holds"),
        ),
        h(
            "uid-over-32-bits",
            Layer::new().file_owned("big-uid", b"x", 1 << 32, 0).build(),
            BadArchive("uid_t"),
        ),
        h(
            "device-major-over-4095",
            Layer::new().chardev("dev/x", 4096, 0).build(),
            BadArchive("dev_t"),
        ),
        h(
            "device-minor-over-20-bits",
            Layer::new().chardev("dev/x", 1, 1 << 20).build(),
            BadArchive("dev_t"),
        ),
        h(
            "device-major-base-256",
            base256_major(),
            BadArchive("device major"),
        ),
        h(
            "lone-zero-block-then-entry",
            lone_zero_block(),
            BadArchive("a lone zero block at offset 1024 is followed by more data"),
        ),
        h(
            "data-after-end-marker",
            after_end_marker(),
            BadArchive("after the end-of-archive marker"),
        ),
        h(
            "trailing-slash-file-with-data",
            tar_of(|b| file(b, "f/", b"hello")),
            BadArchive("ends with '/' (type '0', 5 bytes"),
        ),
        h(
            "entry-below-whiteout",
            tar_of(|b| file(b, "a/.wh.b/c", b"x")),
            BadArchive("a whiteout name used as a directory"),
        ),
        h(
            "entry-below-opaque-marker",
            tar_of(|b| file(b, "a/.wh..wh..opq/c", b"x")),
            BadArchive("a whiteout name used as a directory"),
        ),
        h(
            "whiteout-as-directory",
            tar_of(|b| raw(b, "a/.wh.b/", EntryType::Directory, None, b"")),
            BadArchive("is a whiteout name but the entry is a directory"),
        ),
        h(
            "pax-header-chain",
            pax_chain(),
            BadArchive("a second PAX extended header"),
        ),
        h("pax-record-flood", pax_flood(), BadArchive("PAX records")),
        h(
            "gnu-long-name-chain",
            gnu_long_chain(),
            BadArchive("before one entry"),
        ),
    ]
}
