//! The Debian package, written here rather than by cargo-deb or dpkg-deb: an `ar` archive of
//! `debian-binary`, `control.tar.gz` and `data.tar.gz` whose bytes depend only on the payload
//! (sorted entries, root:root, every time stamp `SOURCE_DATE_EPOCH`). The shared-library
//! dependencies come from `dpkg-shlibdeps`, the unit, defaults and maintainer scripts from
//! `packaging/debian/`.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::payload::{Layout, Payload};
use super::tree::{Tree, gzip};
use crate::util::{need, output};

/// The package name.
pub const NAME: &str = "imagestore";
/// Who answers for the package.
pub const MAINTAINER: &str = "imagestore developers <imagestore@users.noreply.github.com>";
/// What the VMDK backends call to check and build disks, and what the package suggests.
pub const RECOMMENDS: &str = "e2fsprogs, qemu-utils";
/// The file of settings the unit reads, a conffile.
pub const DEFAULTS: &str = "etc/default/imagestore";
/// The unit.
pub const UNIT: &str = "usr/lib/systemd/system/imagestore.service";
/// The state directory the unit has systemd make; not a package file.
pub const STATE_DIR: &str = "/var/lib/imagestore";

/// Debian's name of the host's architecture.
fn architecture() -> Result<&'static str> {
    match std::env::consts::ARCH {
        "x86_64" => Ok("amd64"),
        "aarch64" => Ok("arm64"),
        other => bail!("no Debian architecture known for {other}"),
    }
}

/// The files the package installs.
pub fn data_tree(p: &Payload, root: &Path) -> Result<Tree> {
    let mut t = p.tree(&Layout {
        binary: "usr/bin/imagestore",
        man: "usr/share/man/man1",
        completions: [
            "usr/share/bash-completion/completions",
            "usr/share/zsh/vendor-completions",
            "usr/share/fish/vendor_completions.d",
        ],
        sample: "usr/share/imagestore/samples/debian-mini",
    })?;
    let read = |rel: &str| -> Result<Vec<u8>> {
        let path = root.join("packaging/debian").join(rel);
        std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
    };
    t.file(UNIT, read("imagestore.service")?)?;
    t.file(DEFAULTS, read("imagestore.default")?)?;
    let doc = "usr/share/doc/imagestore";
    for (name, data) in &p.docs {
        match *name {
            // Debian keeps licences once, in /usr/share/common-licenses; the copyright file
            // points there.
            "LICENSE" => {}
            "CHANGELOG.md" => t.file(&format!("{doc}/changelog.gz"), gzip(data)?)?,
            other => t.file(&format!("{doc}/{other}"), data.clone())?,
        }
    }
    t.file(&format!("{doc}/copyright"), copyright().into_bytes())?;
    t.file(&format!("{doc}/sbom.cdx.json"), p.sbom.clone())?;
    Ok(t)
}

/// `debian/copyright` in the machine-readable format.
fn copyright() -> String {
    format!(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
         Upstream-Name: imagestore\n\
         Source: {}\n\
         \n\
         Files: *\n\
         Copyright: the imagestore developers\n\
         License: Apache-2.0\n \
         On Debian systems the full text of the Apache License, Version 2.0 is in\n \
         /usr/share/common-licenses/Apache-2.0. The licences of the Rust crates built into\n \
         the binary are listed in /usr/share/doc/imagestore/sbom.cdx.json.\n",
        super::REPOSITORY
    )
}

/// The `Depends` field for the binary, from `dpkg-shlibdeps` (libc and libext2fs, with the
/// versions of their symbols the binary uses).
fn depends(binary: &Path, work: &Path) -> Result<String> {
    need("dpkg-shlibdeps", "dpkg-dev")?;
    let dir = work.join("shlibdeps");
    std::fs::create_dir_all(dir.join("debian"))
        .with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(
        dir.join("debian/control"),
        format!("Source: {NAME}\n\nPackage: {NAME}\nArchitecture: any\n"),
    )
    .with_context(|| format!("writing {}/debian/control", dir.display()))?;
    // Where dpkg-shlibdeps expects a package's files while it is being built: a folder
    // with a DEBIAN/ beside usr/.
    let package_root = dir.join("debian").join(NAME);
    let staged = package_root.join("usr/bin");
    for d in [&staged, &package_root.join("DEBIAN")] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    std::fs::copy(binary, staged.join("imagestore"))
        .with_context(|| format!("copying {}", binary.display()))?;
    let out = output(
        Command::new("dpkg-shlibdeps")
            .arg("-O")
            .arg(format!("-edebian/{NAME}/usr/bin/imagestore"))
            .current_dir(&dir),
    )?;
    let deps = out
        .lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .context("dpkg-shlibdeps printed no shlibs:Depends")?
        .trim()
        .to_string();
    if !deps.contains("libc6") {
        bail!("dpkg-shlibdeps found no libc6 dependency in {deps:?}");
    }
    Ok(deps)
}

/// The `control` file.
fn control(version: &str, installed_kib: u64, depends: &str) -> Result<String> {
    Ok(format!(
        "Package: {NAME}\n\
         Version: {version}\n\
         Architecture: {}\n\
         Maintainer: {MAINTAINER}\n\
         Installed-Size: {installed_kib}\n\
         Depends: {depends}\n\
         Recommends: {RECOMMENDS}\n\
         Section: admin\n\
         Priority: optional\n\
         Homepage: {}\n\
         Description: container image layers stored as verified chains\n \
         imagestore stores container image layers as chains (a parent image plus one\n \
         layer, verified against its sha256) on local disk (file://), S3 (s3://), VMDK\n \
         delta disks on a datastore (vmdk://, vsphere://) or another host's store\n \
         (imagestore+http://). The command line imports, pulls, exports and checks out\n \
         OCI images; imagestore.service serves a store over HTTP.\n",
        architecture()?,
        super::REPOSITORY
    ))
}

/// An `ar` archive of `members`, each with `mtime` as its time stamp.
fn ar(members: &[(&str, &[u8])], mtime: u64) -> Result<Vec<u8>> {
    let mut out = b"!<arch>\n".to_vec();
    for (name, data) in members {
        if name.len() > 16 {
            bail!("ar member name {name} is longer than 16 bytes");
        }
        let header = format!(
            "{name:<16}{mtime:<12}{:<6}{:<6}{:<8}{:<10}`\n",
            0,
            0,
            "100644",
            data.len()
        );
        if header.len() != 60 {
            bail!("ar header of {name} is {} bytes, not 60", header.len());
        }
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        if data.len() % 2 == 1 {
            out.push(b'\n');
        }
    }
    Ok(out)
}

/// Builds the package from the payload and the stripped binary at `binary`; returns its bytes
/// and the file name Debian gives it.
pub fn build(
    p: &Payload,
    binary: &Path,
    root: &Path,
    version: &str,
    epoch: u64,
    work: &Path,
) -> Result<(String, Vec<u8>)> {
    let data = data_tree(p, root)?;
    let installed_kib = data
        .entries()
        .map(|(_, n)| match n {
            super::tree::Node::File { data, .. } => (data.len() as u64).div_ceil(1024),
            super::tree::Node::Dir => 1,
        })
        .sum();
    let mut control_tree = Tree::default();
    control_tree.file(
        "control",
        control(version, installed_kib, &depends(binary, work)?)?.into_bytes(),
    )?;
    control_tree.file("conffiles", format!("/{DEFAULTS}\n").into_bytes())?;
    for script in ["postinst", "prerm", "postrm"] {
        let path = root.join("packaging/debian").join(script);
        let text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        control_tree.program(script, text)?;
    }
    let control_tgz = gzip(&control_tree.tar("./", epoch)?)?;
    let data_tgz = gzip(&data.tar("./", epoch)?)?;
    let deb = ar(
        &[
            ("debian-binary", b"2.0\n"),
            ("control.tar.gz", &control_tgz),
            ("data.tar.gz", &data_tgz),
        ],
        epoch,
    )?;
    Ok((format!("{NAME}_{version}_{}.deb", architecture()?), deb))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ar_headers_are_sixty_bytes_and_members_even() {
        let a = ar(&[("debian-binary", b"2.0\n"), ("x", b"odd")], 7).unwrap();
        assert!(a.starts_with(b"!<arch>\n"));
        let first = &a[8..68];
        assert_eq!(&first[..16], b"debian-binary   ");
        assert_eq!(&first[16..28], b"7           ");
        assert_eq!(&first[58..60], b"`\n");
        // 8 + 60 + 4 + 60 + 3 + 1 byte of padding.
        assert_eq!(a.len(), 136);
        assert_eq!(a.last(), Some(&b'\n'));
    }
}
