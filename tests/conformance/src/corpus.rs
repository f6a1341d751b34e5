//! The corpus of hostile and malformed layers: each archive with the error it must give.
//!
//! Archives are generated here rather than committed, so each one is readable as code and
//! small. `cargo xtask corpus DIR` writes them out (for fuzzing seeds and for other tools).

use std::io::Write;

use tar::{EntryType, Header};

mod rules;

/// The error class a hostile archive must produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// `Error::BadArchive` whose reason contains the text.
    BadArchive(&'static str),
    /// `Error::LimitExceeded` whose `what` contains the text.
    Limit(&'static str),
}

/// One hostile archive.
#[derive(Debug, Clone)]
pub struct Hostile {
    /// A short name.
    pub name: &'static str,
    /// The archive bytes.
    pub bytes: Vec<u8>,
    /// The error it must give.
    pub expect: Expect,
}

/// A raw entry with the name written verbatim (the `tar` crate refuses some hostile names).
fn raw(
    b: &mut tar::Builder<Vec<u8>>,
    name: &str,
    kind: EntryType,
    link: Option<&str>,
    data: &[u8],
) {
    let mut h = Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_mtime(1_700_000_000);
    h.set_size(data.len() as u64);
    let old = h.as_old_mut();
    old.name[..name.len()].copy_from_slice(name.as_bytes());
    if let Some(l) = link {
        old.linkname[..l.len()].copy_from_slice(l.as_bytes());
    }
    h.set_cksum();
    b.append(&h, data).expect("append");
}

fn tar_of(f: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    f(&mut b);
    b.into_inner().expect("finish")
}

fn file(b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]) {
    raw(b, name, EntryType::Regular, None, data);
}

/// Every hostile archive of the corpus.
pub fn all() -> Vec<Hostile> {
    use Expect::*;
    let mut v = vec![
        Hostile {
            name: "dotdot-escape",
            bytes: tar_of(|b| file(b, "../escape.txt", b"x")),
            expect: BadArchive("escapes the root"),
        },
        Hostile {
            name: "nested-dotdot-escape",
            bytes: tar_of(|b| file(b, "a/../../escape.txt", b"x")),
            expect: BadArchive("escapes the root"),
        },
        Hostile {
            name: "write-through-absolute-symlink",
            bytes: tar_of(|b| {
                raw(b, "lnk", EntryType::Symlink, Some("/etc"), b"");
                file(b, "lnk/passwd", b"root::0:0::/:/bin/sh\n");
            }),
            expect: BadArchive("through the symlink"),
        },
        Hostile {
            name: "write-through-relative-symlink",
            bytes: tar_of(|b| {
                raw(b, "up", EntryType::Symlink, Some("../.."), b"");
                file(b, "up/x", b"x");
            }),
            expect: BadArchive("through the symlink"),
        },
        Hostile {
            name: "hardlink-escape",
            bytes: tar_of(|b| raw(b, "hl", EntryType::Link, Some("../../etc/shadow"), b"")),
            expect: BadArchive("escapes the root"),
        },
        Hostile {
            name: "hardlink-to-nothing",
            bytes: tar_of(|b| raw(b, "hl", EntryType::Link, Some("/etc/shadow"), b"")),
            expect: BadArchive("does not exist earlier"),
        },
        Hostile {
            name: "hardlink-forward-reference",
            bytes: tar_of(|b| {
                raw(b, "hl", EntryType::Link, Some("later"), b"");
                file(b, "later", b"x");
            }),
            expect: BadArchive("does not exist earlier"),
        },
        Hostile {
            name: "bare-whiteout",
            bytes: tar_of(|b| file(b, "etc/.wh.", b"")),
            expect: BadArchive("bare whiteout"),
        },
        Hostile {
            name: "whiteout-dot",
            bytes: tar_of(|b| file(b, "etc/.wh..", b"")),
            expect: BadArchive("\".\" or \"..\""),
        },
        Hostile {
            name: "whiteout-dotdot",
            bytes: tar_of(|b| file(b, "etc/.wh...", b"")),
            expect: BadArchive("\".\" or \"..\""),
        },
        Hostile {
            name: "root-replaced-by-symlink",
            bytes: tar_of(|b| raw(b, ".", EntryType::Symlink, Some("/"), b"")),
            expect: BadArchive("replace the root"),
        },
        Hostile {
            name: "entry-below-a-file",
            bytes: tar_of(|b| {
                file(b, "f", b"x");
                file(b, "f/x", b"y");
            }),
            expect: BadArchive("is not a directory"),
        },
        Hostile {
            name: "pax-size-smuggling",
            bytes: smuggled(),
            expect: BadArchive("smuggling"),
        },
        Hostile {
            name: "oversized-pax-header",
            bytes: oversized_pax(),
            expect: BadArchive("maximum"),
        },
        Hostile {
            name: "oversized-gnu-long-name",
            bytes: oversized_longname(),
            expect: BadArchive("maximum"),
        },
        Hostile {
            name: "not-a-tar",
            bytes: b"this is plainly not a tar archive\n".repeat(40),
            expect: BadArchive("not a tar"),
        },
        Hostile {
            name: "corrupt-header",
            bytes: corrupt_second_header(),
            expect: BadArchive("corrupt header"),
        },
        Hostile {
            name: "xz-compressed",
            bytes: b"\xfd7zXZ\x00\x00\x04\xe6\xd6\xb4\x46".repeat(50),
            expect: BadArchive("xz"),
        },
        Hostile {
            name: "corrupt-gzip",
            bytes: corrupt_gzip(),
            expect: BadArchive(""),
        },
        Hostile {
            name: "zstd-bomb",
            bytes: zstd_bomb(),
            expect: Limit("decompression ratio"),
        },
    ];
    v.push(Hostile {
        name: "sparse-file-over-size-limit",
        bytes: sparse_over_limit(),
        expect: Limit("size of a file"),
    });
    let whole = tar_of(|b| file(b, "big", &[7u8; 4000]));
    v.push(Hostile {
        name: "truncated-in-data",
        bytes: whole[..1500].to_vec(),
        expect: BadArchive("truncated"),
    });
    let two = tar_of(|b| {
        file(b, "first", &[1u8; 10]);
        file(b, "second", &[2u8; 10]);
    });
    v.push(Hostile {
        name: "truncated-in-header",
        bytes: two[..512 + 512 + 200].to_vec(),
        expect: BadArchive("truncated"),
    });
    v.extend(rules::all());
    v
}

fn smuggled() -> Vec<u8> {
    tar_of(|b| {
        b.append_pax_extensions([("size", b"2048".as_slice())])
            .expect("pax");
        file(b, "inner", &[1u8; 5]);
    })
}

fn oversized_pax() -> Vec<u8> {
    let big = vec![b'a'; (1 << 20) + 100];
    tar_of(|b| {
        b.append_pax_extensions([("comment", big.as_slice())])
            .expect("pax");
        file(b, "x", b"");
    })
}

fn oversized_longname() -> Vec<u8> {
    let name = vec![b'n'; (1 << 20) + 100];
    tar_of(|b| {
        let mut h = Header::new_gnu();
        h.set_entry_type(EntryType::GNULongName);
        h.set_size(name.len() as u64);
        h.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
        h.set_cksum();
        b.append(&h, name.as_slice()).expect("longname");
        file(b, "short", b"");
    })
}

fn corrupt_second_header() -> Vec<u8> {
    let mut t = tar_of(|b| {
        file(b, "a", b"x");
        file(b, "b", b"y");
    });
    t[1024 + 10] ^= 0xff;
    t
}

fn corrupt_gzip() -> Vec<u8> {
    let layer = tar_of(|b| file(b, "a", &[5u8; 10_000]));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&layer).expect("gzip");
    let mut bytes = gz.finish().expect("gzip");
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 8] {
        *b ^= 0x5a;
    }
    bytes
}

/// A small zstd stream that expands to 600 MiB of zeros (past the ratio floor).
fn zstd_bomb() -> Vec<u8> {
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 19).expect("zstd");
    let mut h = Header::new_gnu();
    h.set_entry_type(EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(600 << 20);
    h.set_path("zeros").expect("path");
    h.set_cksum();
    enc.write_all(h.as_bytes()).expect("write");
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..600 {
        enc.write_all(&zeros).expect("write");
    }
    enc.write_all(&[0u8; 1024]).expect("write");
    enc.finish().expect("zstd")
}

/// A 1 KiB layer declaring a GNU sparse file of 2 TiB + 1 byte (one stored byte at its end):
/// over the default 1 TiB limit and the largest disk a disk backend may have.
fn sparse_over_limit() -> Vec<u8> {
    let size = (2u64 << 40) + 1;
    tar_of(|b| {
        let mut h = Header::new_gnu();
        h.set_entry_type(EntryType::GNUSparse);
        h.set_mode(0o644);
        h.set_size(1);
        let gnu = h.as_gnu_mut().expect("gnu header");
        gnu.sparse[0].set_offset(size - 1);
        gnu.sparse[0].set_length(1);
        gnu.set_real_size(size);
        h.set_path("huge.img").expect("path");
        h.set_cksum();
        b.append(&h, [1u8].as_slice()).expect("sparse");
    })
}
