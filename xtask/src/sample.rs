//! `cargo xtask sample-image [--check]`: the small real image committed under
//! `samples/debian-mini`, built reproducibly from pinned Debian packages.
//!
//! Each layer is the data of one or more `.deb` files (`dpkg-deb --fsys-tarfile`), repacked
//! as a gzip tar with fixed owners, times and order (the store accepts plain, gzip or zstd
//! layers, not the packages' xz); the last layer only deletes (whiteouts). The `.deb` files are
//! fetched with `apt-get download` at pinned versions and checked against pinned sha256 sums,
//! so two runs give the same bytes. `--check` rebuilds into a scratch directory and fails if
//! anything differs from what is committed.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use crate::util::{need, root, run, work_dir};

/// Where the sample lives in the repository.
pub const SAMPLE_DIR: &str = "samples/debian-mini";

/// Every time in the image: 2024-01-01T00:00:00Z.
const EPOCH: u64 = 1_704_067_200;
const CREATED: &str = "2024-01-01T00:00:00Z";

/// A pinned package: name, version, sha256 of the `.deb`.
struct Deb {
    name: &'static str,
    version: &'static str,
    sha256: &'static str,
}

const BASE: &[Deb] = &[
    Deb {
        name: "base-files",
        version: "12.4+deb12u15",
        sha256: "3eb1ea6d85488f488cc2a163b98ad640ef88cee4c79287cf14e361aaf6206f47",
    },
    Deb {
        name: "netbase",
        version: "6.4",
        sha256: "29b23c48c0fe6f878e56c5ddc9f65d1c05d729360f3690a593a8c795031cd867",
    },
    Deb {
        name: "busybox-static",
        version: "1:1.35.0-4+deb12u1+b1",
        sha256: "3d3fdbe91d4660c873e14b092c213fe81c1da6362daa236eb25d0171eb108744",
    },
];

const TZDATA: &[Deb] = &[Deb {
    name: "tzdata",
    version: "2026f-0+deb12u1",
    sha256: "3254eb870c8a949518214805aee5e4276af7699988ea8b9a3a583cd0f1eab31c",
}];

/// What the third layer deletes: a directory with everything below it, and one file.
const WHITEOUTS: &[&str] = &[
    "usr/share/zoneinfo/right",
    "usr/share/doc/tzdata/changelog.Debian.gz",
];

fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// Fetches (or reuses) a pinned `.deb` and checks its sum.
fn fetch(deb: &Deb, dir: &Path) -> Result<PathBuf> {
    let find = || -> Option<PathBuf> {
        let prefix = format!("{}_", deb.name);
        std::fs::read_dir(dir)
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
                    && std::fs::read(p).is_ok_and(|b| sha256_hex(&b) == deb.sha256)
            })
    };
    if let Some(p) = find() {
        return Ok(p);
    }
    need("apt-get", "apt")?;
    run(Command::new("apt-get")
        .args(["download", "-q", &format!("{}={}", deb.name, deb.version)])
        .current_dir(dir))
    .with_context(|| {
        format!(
            "fetching {} {} (is the Debian mirror reachable, and `apt-get update` done?)",
            deb.name, deb.version
        )
    })?;
    find().with_context(|| {
        format!(
            "{} {} was downloaded but its sha256 is not the pinned {}",
            deb.name, deb.version, deb.sha256
        )
    })
}

/// One entry of a layer, as read from a package.
struct Entry {
    kind: tar::EntryType,
    mode: u32,
    link: Option<String>,
    data: Vec<u8>,
}

/// Reads a package's files (`dpkg-deb --fsys-tarfile`) into `entries` (later packages win).
fn read_deb(deb: &Path, entries: &mut BTreeMap<String, Entry>) -> Result<()> {
    need("dpkg-deb", "dpkg")?;
    let out = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .output()
        .with_context(|| format!("dpkg-deb --fsys-tarfile {}", deb.display()))?;
    if !out.status.success() {
        bail!("dpkg-deb --fsys-tarfile {} failed", deb.display());
    }
    let mut archive = tar::Archive::new(out.stdout.as_slice());
    for e in archive.entries()? {
        let mut e = e?;
        let raw = e.path()?.to_string_lossy().into_owned();
        let name = raw
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_owned();
        if name.is_empty() {
            continue;
        }
        let kind = e.header().entry_type();
        let link = e
            .link_name()?
            .map(|l| l.to_string_lossy().trim_start_matches("./").to_owned());
        let mode = e.header().mode()? & 0o7777;
        let mut data = Vec::new();
        if kind.is_file() {
            e.read_to_end(&mut data)?;
        }
        let kind = if kind.is_file() {
            tar::EntryType::Regular
        } else {
            kind
        };
        // Hardlinks name their target from the archive root, like every other name here.
        let link = if kind.is_hard_link() {
            link.map(|l| l.trim_end_matches('/').to_owned())
        } else {
            link
        };
        entries.insert(
            name,
            Entry {
                kind,
                mode,
                link,
                data,
            },
        );
    }
    Ok(())
}

/// Writes entries as a tar (sorted by name, so parents come first, and hardlinks after every
/// other entry, so their targets come first; fixed owners and times).
fn tar_of(entries: &BTreeMap<String, Entry>) -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let ordered = entries
        .iter()
        .filter(|(_, e)| !e.kind.is_hard_link())
        .chain(entries.iter().filter(|(_, e)| e.kind.is_hard_link()));
    for (name, e) in ordered {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(e.kind);
        h.set_mode(e.mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_username("root")?;
        h.set_groupname("root")?;
        h.set_mtime(EPOCH);
        h.set_size(e.data.len() as u64);
        let path = if e.kind.is_dir() {
            format!("{name}/")
        } else {
            name.clone()
        };
        match &e.link {
            Some(l) if e.kind.is_symlink() || e.kind.is_hard_link() => {
                b.append_link(&mut h, &path, l)?;
            }
            _ => b.append_data(&mut h, &path, e.data.as_slice())?,
        }
    }
    Ok(b.into_inner()?)
}

fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    let mut e = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(Vec::new(), flate2::Compression::best());
    e.write_all(data)?;
    Ok(e.finish()?)
}

fn whiteout_layer() -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for w in WHITEOUTS {
        let (dir, base) = w.rsplit_once('/').unwrap_or(("", w));
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(EPOCH);
        h.set_size(0);
        b.append_data(&mut h, format!("{dir}/.wh.{base}"), std::io::empty())?;
    }
    Ok(b.into_inner()?)
}

fn put_blob(dir: &Path, bytes: &[u8]) -> Result<String> {
    let hex = sha256_hex(bytes);
    let p = dir.join("blobs").join("sha256");
    std::fs::create_dir_all(&p)?;
    std::fs::write(p.join(&hex), bytes)?;
    Ok(format!("sha256:{hex}"))
}

fn describe(debs: &[Deb]) -> String {
    debs.iter()
        .map(|d| format!("{} {}", d.name, d.version))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Builds the sample layout into `out` (which must not exist).
fn build(out: &Path) -> Result<()> {
    let debs = work_dir("sample-image/debs")?;
    let mut layers: Vec<(Vec<u8>, String)> = Vec::new();
    for (group, what) in [(BASE, "base"), (TZDATA, "tzdata")] {
        let mut entries = BTreeMap::new();
        for d in group {
            read_deb(&fetch(d, &debs)?, &mut entries)?;
        }
        if what == "base" {
            // A shell for `run`-style use: /bin/sh -> busybox (busybox-static ships /bin/busybox).
            entries.insert(
                "bin/sh".into(),
                Entry {
                    kind: tar::EntryType::Symlink,
                    mode: 0o777,
                    link: Some("busybox".into()),
                    data: Vec::new(),
                },
            );
        }
        layers.push((
            tar_of(&entries)?,
            format!("cargo xtask sample-image: {}", describe(group)),
        ));
    }
    layers.push((
        whiteout_layer()?,
        format!("cargo xtask sample-image: delete {}", WHITEOUTS.join(", ")),
    ));

    std::fs::create_dir_all(out)?;
    let mut descriptors = Vec::new();
    let mut diff_ids = Vec::new();
    let mut history = Vec::new();
    for (tar, created_by) in &layers {
        diff_ids.push(format!("sha256:{}", sha256_hex(tar)));
        let gz = gzip(tar)?;
        let digest = put_blob(out, &gz)?;
        descriptors.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": digest,
            "size": gz.len(),
        }));
        history.push(serde_json::json!({ "created": CREATED, "created_by": created_by }));
    }
    let config = serde_json::json!({
        "created": CREATED,
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sh"],
            "Labels": { "org.opencontainers.image.description":
                "imagestore sample: Debian base-files, netbase, busybox-static and tzdata" }
        },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
        "history": history,
    });
    let config = serde_json::to_vec(&config)?;
    let config_digest = put_blob(out, &config)?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config.len(),
        },
        "layers": descriptors,
    });
    let manifest = serde_json::to_vec(&manifest)?;
    let manifest_digest = put_blob(out, &manifest)?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest.len(),
            "annotations": { "org.opencontainers.image.ref.name": "latest" },
        }],
    });
    std::fs::write(out.join("index.json"), serde_json::to_vec(&index)?)?;
    std::fs::write(out.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    Ok(())
}

/// Every file below `dir` with its bytes, by relative path.
fn tree(dir: &Path) -> Result<BTreeMap<String, Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir)?.to_string_lossy().into_owned();
                out.insert(rel, std::fs::read(&p)?);
            }
        }
    }
    Ok(out)
}

/// Under CI, checks that the committed sample is reproduced byte for byte.
pub fn check_in_ci() -> Result<()> {
    if crate::ci::in_ci() {
        sample_image(true)?;
    }
    Ok(())
}

/// `cargo xtask sample-image [--check]`.
pub fn sample_image(check: bool) -> Result<()> {
    let scratch = work_dir("sample-image")?.join("out");
    let _ = std::fs::remove_dir_all(&scratch);
    build(&scratch)?;
    let committed = root().join(SAMPLE_DIR);
    let new = tree(&scratch)?;
    let size: usize = new.values().map(Vec::len).sum();
    if check {
        let old = tree(&committed)?;
        if old != new {
            let differ: Vec<&String> = old
                .keys()
                .chain(new.keys())
                .filter(|k| old.get(*k) != new.get(*k))
                .collect();
            bail!(
                "{SAMPLE_DIR} differs from a fresh build: {differ:?}; run `cargo xtask sample-image`"
            );
        }
        println!("{SAMPLE_DIR}: reproduced byte for byte ({size} bytes)");
        return Ok(());
    }
    let _ = std::fs::remove_dir_all(&committed);
    if let Some(parent) = committed.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::rename(&scratch, &committed)
        .or_else(|_| {
            // Across file systems: copy.
            for (rel, bytes) in &new {
                let p = committed.join(rel);
                if let Some(d) = p.parent() {
                    std::fs::create_dir_all(d)?;
                }
                std::fs::write(p, bytes)?;
            }
            Ok::<(), std::io::Error>(())
        })
        .with_context(|| format!("writing {}", committed.display()))?;
    println!("{}: {size} bytes", committed.display());
    Ok(())
}
