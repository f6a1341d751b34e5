//! Tests of the tar reader.
use super::*;

fn build(f: impl FnOnce(&mut tar::Builder<Vec<u8>>) -> io::Result<()>) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    f(&mut b).expect("build tar");
    b.into_inner().expect("finish tar")
}

fn file(b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]) -> io::Result<()> {
    let mut h = Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(EntryType::Regular);
    b.append_data(&mut h, name, data)
}

fn all(bytes: &[u8]) -> Result<Vec<(RawEntry, Vec<u8>)>> {
    let mut r = TarReader::new(bytes, TarLimits::default());
    let mut out = Vec::new();
    while let Some(e) = r.next_entry()? {
        let mut data = Vec::new();
        let mut buf = [0u8; 100];
        loop {
            let n = r.read_data(&mut buf)?;
            if n == 0 {
                break;
            }
            data.extend_from_slice(&buf[..n]);
        }
        out.push((e, data));
    }
    Ok(out)
}

#[test]
fn reads_entries_with_offsets() -> Result<()> {
    let long = "d/".repeat(80) + "file";
    let bytes = build(|b| {
        file(b, "a.txt", b"hello")?;
        file(b, &long, b"x")
    });
    let entries = all(&bytes)?;
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0].0.name, "a.txt");
    assert_eq!(entries[0].0.header_offset, 0);
    assert_eq!(entries[0].0.data_offset, 512);
    assert_eq!(&bytes[512..517], b"hello");
    assert_eq!(entries[0].1, b"hello");
    assert_eq!(entries[1].0.name, long);
    assert_eq!(entries[1].0.header_offset, 1024);
    Ok(())
}

#[test]
fn missing_padding_and_end_marker_are_accepted() -> Result<()> {
    let bytes = build(|b| file(b, "a", &[1u8; 2000]));
    for cut in [2512usize, 2560] {
        let entries = all(&bytes[..cut])?;
        assert_eq!(entries.len(), 1, "cut {cut}");
        assert_eq!(entries[0].1.len(), 2000);
    }
    Ok(())
}

#[test]
fn empty_stream_is_empty_archive() -> Result<()> {
    assert!(all(&[])?.is_empty());
    assert!(all(&[0u8; 1024])?.is_empty());
    Ok(())
}

#[test]
fn truncation_and_garbage_are_errors() {
    let bytes = build(|b| file(b, "a", &[1u8; 2000]));
    for cut in [100usize, 512, 1000, 2300, 2600] {
        let r = all(&bytes[..cut]);
        assert!(
            matches!(r, Err(Error::BadArchive { .. })),
            "cut {cut}: {r:?}"
        );
    }
    let r = all(b"this is not a tar file at all, just some text"
        .repeat(20)
        .as_slice());
    match r {
        Err(Error::BadArchive { reason, .. }) => {
            assert!(reason.contains("not a tar"), "{reason}")
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn pax_size_smuggling_is_refused() {
    let mut bytes = build(|b| {
        let mut h = Header::new_ustar();
        h.set_size(5);
        h.set_mode(0o644);
        h.set_path("inner")?;
        h.set_cksum();
        b.append_pax_extensions([("size", b"1024".as_slice())])?;
        b.append(&h, [0u8; 5].as_slice())
    });
    bytes.extend_from_slice(&[0u8; 2048]);
    match all(&bytes) {
        Err(Error::BadArchive { reason, .. }) => {
            assert!(reason.contains("smuggling"), "{reason}")
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn oversized_pax_header_is_refused() {
    let big = vec![b'a'; (1 << 20) + 10];
    let bytes = build(|b| {
        b.append_pax_extensions([("comment", big.as_slice())])?;
        file(b, "x", b"")
    });
    match all(&bytes) {
        Err(Error::BadArchive { reason, .. }) => {
            assert!(reason.contains("maximum"), "{reason}")
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn pax_records_parse() -> Result<()> {
    let mut m = BTreeMap::new();
    let mut n = 0;
    parse_pax(
        b"20 path=hello/world\n29 SCHILY.xattr.user.a=\x00\x01bin\n",
        &mut m,
        0,
        &mut n,
        10,
    )?;
    assert_eq!(n, 2);
    assert_eq!(m["path"], b"hello/world");
    assert_eq!(m["SCHILY.xattr.user.a"], b"\x00\x01bin");
    assert_eq!(
        parse_pax_time(b"1700000000.5"),
        Some((1700000000, 500_000_000))
    );
    assert!(parse_pax(b"99 path=x\n", &mut m, 0, &mut n, 10).is_err());
    Ok(())
}

fn reason<T: std::fmt::Debug>(r: Result<T>) -> String {
    match r {
        Err(Error::BadArchive { reason, .. }) => reason,
        other => panic!("expected a bad archive, got {other:?}"),
    }
}

/// A GNU long-name (or long-link) header carrying `payload`.
fn gnu_long(b: &mut tar::Builder<Vec<u8>>, kind: EntryType, payload: &[u8]) -> io::Result<()> {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(payload.len() as u64);
    h.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
    h.set_cksum();
    b.append(&h, payload)
}

#[test]
fn chains_of_pax_headers_are_refused_at_the_second() {
    // Twelve PAX headers of 100 KB each, distinct keys: each is under the per-header bound;
    // the chain is refused at the second header, before it is read.
    let value = vec![b'v'; 100_000];
    let bytes = build(|b| {
        for i in 0..12 {
            let key = format!("comment.{i}");
            b.append_pax_extensions([(key.as_str(), value.as_slice())])?;
        }
        file(b, "x", b"data")
    });
    let r = reason(all(&bytes));
    assert!(
        r.contains("a second PAX extended header at byte 100864"),
        "{r}"
    );
}

#[test]
fn chains_of_gnu_long_names_are_bounded_in_total() {
    let name = vec![b'n'; 400_000];
    let bytes = build(|b| {
        gnu_long(b, EntryType::GNULongName, &name)?;
        gnu_long(b, EntryType::GNULongLink, &name)?;
        gnu_long(b, EntryType::GNULongName, &name)?;
        file(b, "short", b"")
    });
    let r = reason(all(&bytes));
    assert!(
        r.contains("add up to") && r.contains("before one entry"),
        "{r}"
    );
}

#[test]
fn pax_records_per_entry_are_bounded() -> Result<()> {
    let keys: Vec<String> = (0..1025).map(|i| format!("k{i}")).collect();
    let headers = |split: usize| {
        build(|b| {
            b.append_pax_extensions(keys[..split].iter().map(|k| (k.as_str(), &b"v"[..])))?;
            b.append_pax_extensions(keys[split..].iter().map(|k| (k.as_str(), &b"v"[..])))?;
            file(b, "x", b"")
        })
    };
    let r = reason(all(&headers(1025)));
    assert!(r.contains("past 1024 PAX records"), "{r}");
    // Spread over two headers, the second header is refused first.
    let r = reason(all(&headers(600)));
    assert!(r.contains("a second PAX extended header"), "{r}");
    // 1,024 records are fine, and the count starts again for the next entry.
    let ok = build(|b| {
        for _ in 0..2 {
            b.append_pax_extensions(keys[..1024].iter().map(|k| (k.as_str(), &b"v"[..])))?;
            file(b, "x", b"")?;
        }
        Ok(())
    });
    assert_eq!(all(&ok)?.len(), 2);
    Ok(())
}

#[test]
fn a_lone_zero_block_followed_by_entries_is_refused() {
    let a = build(|b| file(b, "a", b"x"));
    let hidden = build(|b| file(b, "hidden", b"secret"));
    // `a` is one header and one data block; then a single zero block, then another entry.
    let mut bytes = a[..1024].to_vec();
    bytes.extend_from_slice(&[0u8; 512]);
    bytes.extend_from_slice(&hidden);
    assert_eq!(
        reason(all(&bytes)),
        "a lone zero block at offset 1024 is followed by more data"
    );
}

#[test]
fn data_after_the_end_marker_is_refused() -> Result<()> {
    let a = build(|b| file(b, "a", b"x"));
    assert_eq!(a.len(), 2048, "header, data, two zero blocks");
    let mut hidden = a.clone();
    hidden.extend_from_slice(&[0u8; 4096]);
    hidden.extend_from_slice(&build(|b| file(b, "hidden", b"secret")));
    assert_eq!(
        reason(all(&hidden)),
        "data at byte 6144 after the end-of-archive marker (hidden data is refused)"
    );
    let mut stray = a.clone();
    stray.push(1);
    assert!(reason(all(&stray)).contains("at byte 2048 after the end-of-archive"));
    // Zero padding after the marker (tar's 10 KiB records) or a single zero block at the
    // very end stay accepted; a zero block and then a partial block is a cut archive.
    let mut padded = a.clone();
    padded.resize(10240, 0);
    assert_eq!(all(&padded)?.len(), 1);
    let mut partial = a[..1024].to_vec();
    partial.extend_from_slice(&[0u8; 700]);
    assert!(reason(all(&partial)).contains("partial block of 188 bytes"));
    assert_eq!(all(&a[..1536])?.len(), 1);
    Ok(())
}

/// An entry with its name written verbatim (the `tar` crate refuses some of these names).
fn verbatim(kind: EntryType, name: &str, data: &[u8]) -> Vec<u8> {
    build(|b| {
        let mut h = Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        if kind == EntryType::Symlink {
            h.as_old_mut().linkname[..6].copy_from_slice(b"target");
        }
        h.set_cksum();
        b.append(&h, data)
    })
}

#[test]
fn a_trailing_slash_on_a_non_directory_is_refused() -> Result<()> {
    assert_eq!(
        reason(all(&verbatim(EntryType::Regular, "f/", b"hello"))),
        "a regular file whose name ends with '/' (type '0', 5 bytes of data): a trailing slash on a non-directory is malformed"
    );
    // Type '0' says file even without data (Go reads a file named `f/`): refused too.
    assert!(reason(all(&verbatim(EntryType::Regular, "e/", b""))).contains("type '0', 0 bytes"));
    assert!(
        reason(all(&verbatim(EntryType::Symlink, "l/", b"")))
            .contains("Symlink entry's name ends with '/'")
    );
    // The old way of writing a directory (an empty entry of type NUL named `d/`) stays
    // accepted.
    let mut old = verbatim(EntryType::Regular, "d/", b"");
    old[156] = 0;
    let h = Header::from_byte_slice(&old[..512]);
    let mut h = h.clone();
    h.set_cksum();
    old[..512].copy_from_slice(h.as_bytes());
    let old_dir = all(&old)?;
    assert_eq!(old_dir[0].0.kind, RawKind::Dir);
    Ok(())
}

#[test]
fn seeking_over_data_finds_the_same_entries_and_truncation() -> Result<()> {
    let bytes = build(|b| {
        file(b, "a", &[1u8; 3000])?;
        file(b, "b", b"")?;
        file(b, "c", b"xyz")
    });
    let mut r = TarReader::new(io::Cursor::new(bytes.as_slice()), TarLimits::default());
    let mut seen = Vec::new();
    while let Some(e) = r.next_entry()? {
        r.seek_past_data()?;
        seen.push((e.name, e.data_offset, e.stored));
    }
    assert_eq!(
        seen,
        [
            ("a".to_owned(), 512, 3000),
            ("b".to_owned(), 4096, 0),
            ("c".to_owned(), 4608, 3)
        ]
    );
    let mut r = TarReader::new(io::Cursor::new(&bytes[..2000]), TarLimits::default());
    assert!(r.next_entry()?.is_some());
    assert!(reason(r.seek_past_data()).contains("truncated"));
    Ok(())
}

/// Re-checksums the header at `at` after a test changed its bytes.
fn recksum(bytes: &mut [u8], at: usize) {
    let mut h = Header::from_byte_slice(&bytes[at..at + 512]).clone();
    h.set_cksum();
    bytes[at..at + 512].copy_from_slice(h.as_bytes());
}

#[test]
fn a_second_pax_header_for_one_entry_is_refused() {
    let bytes = build(|b| {
        b.append_pax_extensions([("path", &b"one"[..])])?;
        b.append_pax_extensions([("path", &b"two"[..])])?;
        file(b, "x", b"")
    });
    assert!(reason(all(&bytes)).contains("a second PAX extended header at byte 1024"));
}

#[test]
fn a_gnu_long_name_with_a_pax_path_is_refused() {
    let bytes = build(|b| {
        gnu_long(b, EntryType::GNULongName, b"gnu-name")?;
        b.append_pax_extensions([("path", &b"pax-name"[..])])?;
        file(b, "x", b"")
    });
    assert!(reason(all(&bytes)).contains("both a GNU long name and a PAX path"));
}

#[test]
fn header_only_entries_with_a_size_are_refused() -> Result<()> {
    for kind in [
        EntryType::Directory,
        EntryType::Symlink,
        EntryType::Link,
        EntryType::Char,
        EntryType::Block,
        EntryType::Fifo,
    ] {
        // The "data" is a whole header that one kind of reader would take as the next entry.
        let hidden = build(|b| file(b, "hidden", b""));
        let bytes = verbatim(kind, "x", &hidden[..512]);
        let r = reason(all(&bytes));
        assert!(r.contains("declares 512 bytes of data"), "{kind:?}: {r}");
    }
    Ok(())
}

#[test]
fn negative_fractional_pax_times_count_back_from_the_epoch() {
    assert_eq!(parse_pax_time(b"-1.5"), Some((-2, 500_000_000)));
    assert_eq!(parse_pax_time(b"-0.25"), Some((-1, 750_000_000)));
    assert_eq!(parse_pax_time(b"-3"), Some((-3, 0)));
    assert_eq!(parse_pax_time(b"1.5"), Some((1, 500_000_000)));
}

#[test]
fn pax_keys_with_nul_are_refused_and_empty_values_unset() -> Result<()> {
    let (mut m, mut n) = (BTreeMap::new(), 0);
    let r = parse_pax(b"16 SCHILY.a\0b=v\n", &mut m, 7, &mut n, 10);
    assert!(reason(r).contains("holds a NUL byte"));
    // An empty value removes the key, so the header's own field counts (POSIX, and Go).
    let bytes = build(|b| {
        b.append_pax_extensions([("path", &b""[..])])?;
        file(b, "from-header", b"x")
    });
    assert_eq!(all(&bytes)?[0].0.name, "from-header");
    Ok(())
}

#[test]
fn text_in_gnu_time_fields_is_refused() -> Result<()> {
    let mut bytes = build(|b| file(b, "name", b"x"));
    // The GNU header's atime field (offset 345), holding a name prefix as Go 1.7 wrote it.
    bytes[345..351].copy_from_slice(b"prefix");
    recksum(&mut bytes, 0);
    assert!(reason(all(&bytes)).contains("text in its access time field"));
    // Numbers there are fine.
    let mut ok = build(|b| file(b, "name", b"x"));
    ok[345..356].copy_from_slice(b"14000000000");
    recksum(&mut ok, 0);
    assert_eq!(all(&ok)?.len(), 1);
    Ok(())
}

#[test]
fn a_zero_block_then_a_partial_block_is_a_cut_archive() -> Result<()> {
    let mut bytes = build(|b| file(b, "a", b"x"));
    let end = bytes.len() - 1024;
    // One zero block, then 99 more zero bytes.
    bytes.truncate(end + 512 + 99);
    assert!(reason(all(&bytes)).contains("followed by a partial block of 99 bytes"));
    // One zero block and nothing after it is the end.
    bytes.truncate(end + 512);
    assert_eq!(all(&bytes)?.len(), 1);
    Ok(())
}

#[test]
fn empty_xattr_values_are_kept() -> Result<()> {
    let bytes = build(|b| {
        b.append_pax_extensions([("SCHILY.xattr.user.empty", &b""[..])])?;
        file(b, "f", b"")
    });
    let e = &all(&bytes)?[0].0;
    assert_eq!(e.xattrs.get("user.empty").map(Vec::len), Some(0));
    Ok(())
}
