//! Scratch and layer disks checked with the real tools after every layer: `qemu-img check`
//! passes, `qemu-img info --backing-chain` shows the chain, the chain converted to raw is an
//! ext4 that `e2fsck -fn` finds clean, and the files `debugfs` reads back are exactly the
//! image the engine computes (core checkout of the same layers).

// A libtest-mimic test binary: what clippy.toml allows in `#[test]` functions is allowed
// here too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use anyhow::Result;
use common::chain::*;
use common::*;
use imagestore_conformance::support;
use imagestore_vsphere::vmdk::format::DiskFormat;
use std::process::ExitCode;
use tar::EntryType;

fn layers_apply_with_every_entry_kind(format: DiskFormat) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut c = Chain::with_format(dir.path(), 1 << 20, format)?;
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

/// A layer with a directory of 100,000 entries is written as an indexed directory that
/// `e2fsck` passes and `debugfs` reads back whole; a later layer removes and adds names in it.
fn a_directory_of_a_hundred_thousand_entries() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // 4 GiB: one inode per 16 KiB gives room for the entries.
    let mut c = Chain::new(dir.path(), 4 << 20)?;
    let mut t = TarB::default().dir("many", 0o755)?;
    for i in 0..100_000 {
        let body = if i % 10_000 == 0 {
            format!("{i}")
        } else {
            String::new()
        };
        t = t.file(&format!("many/entry-{i:06}"), body.as_bytes())?;
    }
    c.push("big", t.done()?)?;
    let raw = c.root.join("top.raw");
    let dump = debugfs(&raw, "htree_dump /many")?;
    assert!(dump.contains("Root node dump"), "not indexed: {dump:.300}");
    let t = TarB::default()
        .file("many/.wh.entry-000042", b"")?
        .file("many/entry-100000", b"new")?
        .file("many/entry-050000", b"replaced")?
        .done()?;
    c.push("less", t)?;
    let raw = c.root.join("top.raw");
    assert_eq!(debugfs(&raw, "cat /many/entry-050000")?, "replaced");
    Ok(())
}

/// Modification times keep their nanoseconds in the inode's extra field.
fn times_keep_their_nanoseconds() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut c = Chain::new(dir.path(), 1 << 20)?;
    let mut b = tar::Builder::new(Vec::new());
    b.append_pax_extensions([("mtime", &b"1600000000.123456789"[..])])?;
    let mut h = tar::Header::new_ustar();
    h.set_mode(0o644);
    h.set_size(2);
    h.set_mtime(1_600_000_000);
    b.append_data(&mut h, "t/precise", &b"ns"[..])?;
    c.push("ns", b.into_inner()?)?;
    let s = stat(&c.root.join("top.raw"), "/t/precise")?;
    // The extra field holds the nanoseconds shifted past the two epoch bits.
    let extra = 123_456_789u32 << 2;
    assert!(s.contains(&format!("mtime: 0x5f5e1000:{extra:08x}")), "{s}");
    Ok(())
}

/// The longest names Linux takes: a 255-byte file name, and a symlink target of 4,095 bytes
/// (stored in a block, not in the inode).
fn the_longest_names_and_link_targets() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut c = Chain::new(dir.path(), 1 << 20)?;
    let name = "n".repeat(255);
    let target: String = (0..4095)
        .map(|i| if i % 100 == 99 { '/' } else { 't' })
        .collect();
    let t = TarB::default()
        .file(&format!("d/{name}"), b"long name")?
        .link("d/long-link", EntryType::Symlink, &target)?
        .link(
            &format!("d/{}", "l".repeat(255)),
            EntryType::Symlink,
            "short",
        )?
        .done()?;
    c.push("long", t)?;
    let raw = c.root.join("top.raw");
    assert_eq!(debugfs(&raw, &format!("cat /d/{name}"))?, "long name");
    let s = stat(&raw, "/d/long-link")?;
    assert!(s.contains("Size: 4095"), "{s}");
    Ok(())
}

fn a_multi_gib_sparse_file() -> Result<()> {
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

/// Through the `vmdk://` store with `format=`: after every layer the image's disk passes
/// `qemu-img check`, shows its chain and create types, and its raw image is a clean ext4
/// holding the layers' files.
async fn store_layers_pass_the_real_tools(format: DiskFormat) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = imagestore_vsphere::Config {
        root: dir.path().to_path_buf(),
        work: None,
        options: imagestore_vsphere::Options {
            capacity_kib: 1 << 20,
            format,
        },
    };
    let store = imagestore_vsphere::open_vmdk(config).await?;
    common::store_chain::layers_pass_the_real_tools(&store, dir.path(), format).await
}

fn main() -> ExitCode {
    let tools = || support::programs(&["qemu-img", "e2fsck", "debugfs"]);
    let formats = [
        DiskFormat::MonolithicSparse,
        DiskFormat::VmfsSparse,
        DiskFormat::SeSparse,
    ];
    let mut trials: Vec<_> = formats
        .into_iter()
        .map(|f| {
            support::trial_async(
                format!("{f}_store_layers_pass_the_real_tools"),
                tools(),
                2,
                move |()| store_layers_pass_the_real_tools(f),
            )
        })
        .collect();
    trials.extend(vec![
        support::trial("layers_apply_with_every_entry_kind", tools(), |()| {
            layers_apply_with_every_entry_kind(DiskFormat::MonolithicSparse)
        }),
        support::trial(
            "vmfs_sparse_layers_apply_with_every_entry_kind",
            tools(),
            |()| layers_apply_with_every_entry_kind(DiskFormat::VmfsSparse),
        ),
        support::trial(
            "se_sparse_layers_apply_with_every_entry_kind",
            tools(),
            |()| layers_apply_with_every_entry_kind(DiskFormat::SeSparse),
        ),
        support::trial("a_directory_of_a_hundred_thousand_entries", tools(), |()| {
            a_directory_of_a_hundred_thousand_entries()
        }),
        support::trial("times_keep_their_nanoseconds", tools(), |()| {
            times_keep_their_nanoseconds()
        }),
        support::trial("the_longest_names_and_link_targets", tools(), |()| {
            the_longest_names_and_link_targets()
        }),
        support::trial("a_multi_gib_sparse_file", tools(), |()| {
            a_multi_gib_sparse_file()
        }),
    ]);
    support::run(trials)
}
