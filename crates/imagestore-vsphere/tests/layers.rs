//! Scratch and layer disks checked with the real tools after every layer: `qemu-img check`
//! passes, `qemu-img info --backing-chain` shows the chain, the chain converted to raw is an
//! ext4 that `e2fsck -fn` finds clean, and the files `debugfs` reads back are exactly the
//! image the engine computes (core checkout of the same layers).

mod common;

use anyhow::Result;
use common::chain::*;
use common::*;
use tar::EntryType;

#[test]
fn layers_apply_with_every_entry_kind() -> Result<()> {
    if !have(&["qemu-img", "e2fsck", "debugfs", "mke2fs"]) {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let mut c = Chain::new(dir.path(), 1 << 20)?;
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let l1 = TarB::default()
        .dir("app", 0o755)?
        .dir("app/data", 0o750)?
        .file("app/hello.txt", b"hello\n")?
        .file_as(
            "app/secret",
            b"s3cret",
            0o600,
            1000,
            2000,
            &[("user.tag", b"v1")],
        )?
        .file("app/data/big.bin", &big)?
        .file("deep/implied/dirs/file", b"x")?
        .link("app/link", EntryType::Symlink, "hello.txt")?
        .link("app/abs", EntryType::Symlink, "/etc/mtab")?
        .link("app/hard", EntryType::Link, "app/hello.txt")?
        .dev("dev/null", EntryType::Char, 1, 3)?
        .dev("dev/sda", EntryType::Block, 8, 0)?
        .dev("dev/fifo", EntryType::Fifo, 0, 0)?
        .file("etc/hostname", b"box\n")?
        .done()?;
    c.push("l1", l1)?;
    let raw = c.root.join("top.raw");
    let s = stat(&raw, "/app/secret")?;
    assert!(
        s.contains("User:  1000") && s.contains("Group:  2000"),
        "{s}"
    );
    assert!(s.contains("Mode:  0600"), "{s}");
    assert!(s.contains("mtime: 0x5f5e1000"), "{s}");
    let x = debugfs(&raw, "ea_get /app/secret user.tag")?;
    assert!(x.contains("v1"), "{x}");
    let dev = stat(&raw, "/dev/null")?;
    assert!(
        dev.contains("character special") && dev.contains("01:03"),
        "{dev}"
    );
    assert!(stat(&raw, "/dev/sda")?.contains("block special"));
    assert!(stat(&raw, "/dev/fifo")?.contains("FIFO"));
    assert_eq!(
        inode_of(&raw, "/app/hard")?,
        inode_of(&raw, "/app/hello.txt")?
    );
    assert!(stat(&raw, "/app/hard")?.contains("Links: 2"));

    // Whiteouts, an opaque directory, replacements, and a hardlink to a lower file.
    let l2 = TarB::default()
        .file("app/.wh.link", b"")?
        .file("app/data/.wh..wh..opq", b"")?
        .file("app/data/new", b"new")?
        .file("deep/.wh.implied", b"")?
        .file("app/hello.txt", b"replaced\n")?
        .dir("app/secret", 0o700)?
        .file("etc/.wh.hosts", b"")?
        .link("app/hard2", EntryType::Link, "app/data/new")?
        .link("app/hello-old", EntryType::Link, "app/hard")?
        .done()?;
    c.push("l2", l2)?;
    let raw = c.root.join("top.raw");
    assert!(debugfs(&raw, "ls /app")?.contains("hard2"));
    assert_eq!(
        debugfs(&raw, "cat /app/hard")?,
        "hello\n",
        "a link keeps its data"
    );
    assert_eq!(debugfs(&raw, "cat /app/hello.txt")?, "replaced\n");
    // A small layer makes a small delta disk.
    let l3 = TarB::default().file("one", &vec![7u8; 1 << 20])?.done()?;
    let bytes = c.push("l3", l3)?;
    assert!(bytes < 4 << 20, "1 MiB layer made a {bytes}-byte delta");
    Ok(())
}

#[test]
fn a_directory_of_ten_thousand_entries() -> Result<()> {
    if !have(&["qemu-img", "e2fsck", "debugfs", "mke2fs"]) {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let mut c = Chain::new(dir.path(), 1 << 20)?;
    let mut t = TarB::default().dir("many", 0o755)?;
    for i in 0..10_000 {
        t = t.file(&format!("many/f{i:05}"), format!("{i}").as_bytes())?;
    }
    c.push("big", t.done()?)?;
    let t = TarB::default().file("many/.wh.f00042", b"")?.done()?;
    c.push("less", t)?;
    Ok(())
}

#[test]
fn a_multi_gib_sparse_file() -> Result<()> {
    if !have(&["qemu-img", "e2fsck", "debugfs", "mke2fs"]) {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let mut c = Chain::new(dir.path(), 6 << 20)?;
    let size: u64 = (3 << 30) + 12345;
    let seg = |b: u8| vec![b; 256 << 10];
    let segments = vec![
        (0, seg(1)),
        (1 << 30, seg(2)),
        ((5 << 29) + 4096, seg(3)),
        (size - (256 << 10), seg(4)),
    ];
    let t = TarB::default()
        .sparse("big/huge.img", size, &segments)?
        .done()?;
    let bytes = c.push_checked("huge", t, false)?;
    assert!(
        bytes < 8 << 20,
        "sparse 3 GiB file made a {bytes}-byte delta"
    );
    let raw = c.root.join("top.raw");
    let s = stat(&raw, "/big/huge.img")?;
    assert!(s.contains(&format!("Size: {size}")), "{s}");
    // Read the file back through debugfs and compare every segment and a hole.
    let out = dir.path().join("huge.out");
    debugfs(&raw, &format!("dump /big/huge.img {}", out.display()))?;
    let f = std::fs::File::open(&out)?;
    assert_eq!(f.metadata()?.len(), size);
    use std::os::unix::fs::FileExt;
    for (off, d) in &segments {
        let mut buf = vec![0u8; d.len()];
        f.read_exact_at(&mut buf, *off)?;
        assert!(buf == *d, "segment at {off}");
    }
    let mut hole = vec![1u8; 4096];
    f.read_exact_at(&mut hole, 2 << 30)?;
    assert!(hole.iter().all(|b| *b == 0));
    Ok(())
}
