//! `cargo xtask ci-dist`: builds the release (archive and Debian package) and checks it: the
//! archive's entries and their metadata, the binary's size, `--version`, symbols and paths,
//! the SBOM, `SHA256SUMS`, a second build from a copy of the sources in another folder giving
//! the same bytes, and (under CI, or with `--install`) the package installed, used, verified
//! by systemd-analyze and removed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::compile::Source;
use super::{MAX_BINARY_BYTES, Release, release};
use crate::ci::in_ci;
use crate::util::{need, output, root, run, target_dir, work_dir};

/// `(path, mode, mtime, uid, gid, sha256)` of each tar entry, in archive order.
type Listing = Vec<(String, u32, u64, u64, u64, String)>;

fn listing(tgz: &[u8]) -> Result<Listing> {
    use std::io::Read;
    let mut out = Vec::new();
    let mut a = tar::Archive::new(flate2::read::GzDecoder::new(tgz));
    for e in a.entries().context("reading the archive")? {
        let mut e = e.context("reading the archive")?;
        let h = e.header().clone();
        let path = e.path().context("an entry's path")?.display().to_string();
        let mut data = Vec::new();
        e.read_to_end(&mut data)
            .with_context(|| format!("reading {path}"))?;
        out.push((
            path,
            h.mode()?,
            h.mtime()?,
            h.uid()?,
            h.gid()?,
            format!("{:x}", Sha256::digest(&data)),
        ));
    }
    Ok(out)
}

fn read(p: &Path) -> Result<Vec<u8>> {
    std::fs::read(p).with_context(|| format!("reading {}", p.display()))
}

/// The archive: what it holds, sorted, with fixed owners, modes and times.
fn check_archive(r: &Release, src: &Source) -> Result<Listing> {
    let list = listing(&read(&r.archive)?)?;
    let names: Vec<&str> = list.iter().map(|e| e.0.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    ensure!(names == sorted, "the archive's entries are not sorted");
    let n = &r.name;
    for want in [
        format!("{n}/bin/imagestore"),
        format!("{n}/LICENSE"),
        format!("{n}/README.md"),
        format!("{n}/CHANGELOG.md"),
        format!("{n}/sbom.cdx.json"),
        format!("{n}/share/man/man1/imagestore.1.gz"),
        format!("{n}/share/man/man1/imagestore-serve.1.gz"),
        format!("{n}/share/bash-completion/completions/imagestore"),
        format!("{n}/share/zsh/site-functions/_imagestore"),
        format!("{n}/share/fish/vendor_completions.d/imagestore.fish"),
        format!("{n}/share/imagestore/samples/debian-mini/index.json"),
    ] {
        ensure!(names.contains(&want.as_str()), "the archive has no {want}");
    }
    for (path, mode, mtime, uid, gid, _) in &list {
        ensure!(
            *mtime == src.epoch && *uid == 0 && *gid == 0,
            "{path}: mtime {mtime} uid {uid} gid {gid}, not {} 0 0",
            src.epoch
        );
        let want = if path.ends_with('/') || path.ends_with("/bin/imagestore") {
            0o755
        } else {
            0o644
        };
        ensure!(*mode == want, "{path} has mode {mode:o}, not {want:o}");
    }
    Ok(list)
}

/// The binary: size, `--version`, no symbols, a debug link, no path of this machine.
fn check_binary(r: &Release, src: &Source) -> Result<()> {
    ensure!(
        r.binary_bytes <= MAX_BINARY_BYTES,
        "the binary is {} bytes, over the {MAX_BINARY_BYTES} byte limit",
        r.binary_bytes
    );
    let bin = &r.compiled.binary;
    let version = output(Command::new(bin).arg("--version"))?;
    for want in [
        env!("CARGO_PKG_VERSION"),
        src.commit.as_str(),
        "file",
        "s3",
        "vmdk",
        "vsphere",
        "imagestore+http",
    ] {
        ensure!(
            version.contains(want),
            "`imagestore --version` does not name {want:?}:\n{version}"
        );
    }
    let sections = output(Command::new("readelf").args(["-S", "--wide"]).arg(bin))?;
    // (`.debug_gdb_scripts` is loaded data naming Rust's pretty-printers, not debug info.)
    for section in [".symtab", ".debug_info", ".debug_line"] {
        ensure!(
            !sections.contains(section),
            "the binary still has a {section} section"
        );
    }
    ensure!(
        sections.contains(".gnu_debuglink"),
        "the binary does not name its debug file"
    );
    // readelf complains on stderr that a debug file's interpreter has no contents.
    let debug_sections = Command::new("readelf")
        .args(["-S", "--wide"])
        .arg(&r.debug)
        .output()
        .context("running readelf")?;
    let debug_sections = String::from_utf8_lossy(&debug_sections.stdout);
    ensure!(
        debug_sections.contains(".debug_line"),
        "the debug file has no line tables"
    );
    let bytes = read(bin)?;
    let mut leaks = vec![src.root.display().to_string()];
    if let Some(home) = std::env::var_os("HOME") {
        leaks.push(format!("{}/.cargo", home.to_string_lossy()));
    }
    for leak in leaks {
        ensure!(
            !bytes.windows(leak.len()).any(|w| w == leak.as_bytes()),
            "the binary holds the build machine's path {leak}"
        );
    }
    Ok(())
}

/// The SBOM: CycloneDX 1.5, the crates the binary is made of, each with a licence and purl.
fn check_sbom(r: &Release, list: &Listing, src: &Source) -> Result<()> {
    let tgz = read(&r.archive)?;
    let mut a = tar::Archive::new(flate2::read::GzDecoder::new(tgz.as_slice()));
    let mut sbom = None;
    for e in a.entries()? {
        let mut e = e?;
        if e.path()?.ends_with("sbom.cdx.json") {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut e, &mut s)?;
            sbom = Some(s);
        }
    }
    let text = sbom.context("no SBOM in the archive")?;
    ensure!(
        !text.contains(&src.root.display().to_string()),
        "the SBOM holds the source path"
    );
    let bom: Value = serde_json::from_str(&text).context("the SBOM is not JSON")?;
    ensure!(bom["bomFormat"] == "CycloneDX" && bom["specVersion"] == "1.5");
    ensure!(bom["metadata"]["component"]["name"] == "imagestore-cli");
    let empty = Vec::new();
    let components = bom["components"].as_array().unwrap_or(&empty);
    let names: Vec<&str> = components
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    for want in [
        "imagestore",
        "imagestore-core",
        "imagestore-s3",
        "imagestore-vsphere",
        "imagestore-remote",
        "tokio",
        "object_store",
        "rustls",
    ] {
        ensure!(names.contains(&want), "the SBOM does not list {want}");
    }
    // Test-only crates, and `cc`, which only build scripts use.
    for not_built_in in ["imagestore-test-support", "libtest-mimic", "cc"] {
        ensure!(
            !names.contains(&not_built_in),
            "the SBOM lists {not_built_in}, which is not part of the binary"
        );
    }
    for c in components {
        ensure!(
            c["purl"].is_string() && c["licenses"].is_array(),
            "SBOM component without purl or licence: {c}"
        );
    }
    ensure!(
        !bom["dependencies"].as_array().unwrap_or(&empty).is_empty(),
        "the SBOM has no dependency graph"
    );
    eprintln!(
        "ci-dist: SBOM lists {} components; archive {} entries",
        components.len(),
        list.len()
    );
    Ok(())
}

/// `SHA256SUMS` as `sha256sum -c` reads it.
fn check_sums(r: &Release) -> Result<()> {
    need("sha256sum", "coreutils")?;
    run(Command::new("sha256sum")
        .args(["--check", "--strict", "SHA256SUMS"])
        .current_dir(&r.dir))
}

/// The package's metadata and file list, as dpkg-deb reads them.
fn check_deb(deb: &Path) -> Result<()> {
    need("dpkg-deb", "dpkg")?;
    let info = output(Command::new("dpkg-deb").arg("--info").arg(deb))?;
    for want in [
        "Package: imagestore",
        "Recommends: e2fsprogs, qemu-utils",
        "Depends: ",
        "libext2fs2",
        "conffiles",
    ] {
        ensure!(
            info.contains(want),
            "dpkg-deb --info shows no {want:?}:\n{info}"
        );
    }
    let contents = output(Command::new("dpkg-deb").arg("--contents").arg(deb))?;
    for want in [
        "usr/bin/imagestore",
        "usr/share/man/man1/imagestore.1.gz",
        "usr/share/bash-completion/completions/imagestore",
        "usr/share/zsh/vendor-completions/_imagestore",
        "usr/share/fish/vendor_completions.d/imagestore.fish",
        "usr/lib/systemd/system/imagestore.service",
        "etc/default/imagestore",
        "usr/share/doc/imagestore/copyright",
        "usr/share/imagestore/samples/debian-mini/index.json",
    ] {
        ensure!(
            contents.lines().any(|l| l.ends_with(&format!(" {want}"))),
            "the package does not install {want}"
        );
    }
    ensure!(
        contents.lines().all(|l| l.contains(" root/root ")),
        "a package file is not owned by root/root"
    );
    Ok(())
}

/// A package's status line (`install ok installed`, `deinstall ok config-files`), or `None`
/// when dpkg does not know it.
fn dpkg_status() -> Option<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", super::deb::NAME])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|s| !s.is_empty() && s != "unknown ok not-installed")
}

/// Installs the package, runs the installed binary, verifies the unit, removes the package
/// and checks that only the conffile (until purge) and the state directory may stay.
fn install_and_remove(deb: &Path) -> Result<()> {
    need("dpkg", "dpkg")?;
    need("systemd-analyze", "systemd")?;
    if let Some(s) = dpkg_status() {
        bail!("imagestore is already known to dpkg ({s}); remove it first (dpkg -P imagestore)");
    }
    run(Command::new("dpkg").arg("-i").arg(deb))?;
    let result = (|| -> Result<()> {
        let version = output(Command::new("/usr/bin/imagestore").arg("--version"))?;
        ensure!(
            version.contains(env!("CARGO_PKG_VERSION")) && version.contains("backends:"),
            "the installed `imagestore --version` says {version:?}"
        );
        // The README's first command, against the installed binary and its sample image.
        let store = work_dir("dist-install")?.join("store");
        if store.exists() {
            std::fs::remove_dir_all(&store)?;
        }
        let out = output(
            Command::new("/usr/bin/imagestore")
                .arg("sample")
                .env("IMAGESTORE_URL", format!("file://{}", store.display())),
        )?;
        ensure!(
            out.contains("imported the sample image"),
            "`imagestore sample` said:\n{out}"
        );
        let unit = format!("/{}", super::deb::UNIT);
        let verify = Command::new("systemd-analyze")
            .args(["verify", &unit])
            .output()
            .context("running systemd-analyze verify")?;
        let stderr = String::from_utf8_lossy(&verify.stderr);
        ensure!(
            verify.status.success() && !stderr.contains("imagestore"),
            "systemd-analyze verify {unit}: {}\n{stderr}",
            verify.status
        );
        let security = Command::new("systemd-analyze")
            .args(["security", "--offline=yes", "--threshold=30", &unit])
            .output()
            .context("running systemd-analyze security")?;
        let text = String::from_utf8_lossy(&security.stdout);
        ensure!(
            security.status.success(),
            "systemd-analyze security rates the unit above 3.0:\n{}",
            text.lines().last().unwrap_or_default()
        );
        eprintln!(
            "ci-dist: systemd-analyze security: {}",
            text.lines().last().unwrap_or_default().trim()
        );
        Ok(())
    })();
    let files: Vec<PathBuf> = output(Command::new("dpkg").args(["-L", super::deb::NAME]))?
        .lines()
        .map(PathBuf::from)
        .collect();
    run(Command::new("dpkg").args(["-r", super::deb::NAME]))?;
    result?;
    let conffile = PathBuf::from(format!("/{}", super::deb::DEFAULTS));
    let status = dpkg_status().unwrap_or_default();
    ensure!(
        status == "deinstall ok config-files",
        "after dpkg -r the package is {status:?}"
    );
    let left = |files: &[PathBuf]| -> Vec<PathBuf> {
        files
            .iter()
            .filter(|f| f.exists() && !f.is_dir())
            .cloned()
            .collect()
    };
    let after_remove = left(&files);
    ensure!(
        after_remove.iter().all(|f| *f == conffile),
        "dpkg -r left {after_remove:?}"
    );
    run(Command::new("dpkg").args(["-P", super::deb::NAME]))?;
    ensure!(dpkg_status().is_none(), "dpkg -P left the package known");
    ensure!(left(&files).is_empty(), "dpkg -P left {:?}", left(&files));
    for own in ["/usr/share/imagestore", "/usr/share/doc/imagestore"] {
        ensure!(!Path::new(own).exists(), "{own} is left after dpkg -P");
    }
    eprintln!(
        "ci-dist: dpkg -i, --version, sample, systemd-analyze verify, dpkg -r, dpkg -P: only {} may stay",
        super::deb::STATE_DIR
    );
    Ok(())
}

/// Copies the sources git knows (tracked, and untracked but not ignored) of `from` into `to`.
fn copy_sources(from: &Path, to: &Path) -> Result<()> {
    if to.exists() {
        std::fs::remove_dir_all(to).with_context(|| format!("removing {}", to.display()))?;
    }
    let files = output(
        Command::new("git")
            .args([
                "ls-files",
                "-z",
                "--cached",
                "--others",
                "--exclude-standard",
            ])
            .current_dir(from),
    )?;
    for rel in files.split('\0').filter(|f| !f.is_empty()) {
        let src = from.join(rel);
        // A file deleted in the work tree but still in the index.
        if !src.exists() {
            continue;
        }
        let dst = to.join(rel);
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::copy(&src, &dst).with_context(|| format!("copying {}", src.display()))?;
    }
    Ok(())
}

/// Compares two releases file by file and, for differing archives, entry by entry.
fn same_bytes(a: &Release, b: &Release) -> Result<()> {
    let mut diffs = Vec::new();
    let pairs = [
        (Some(&a.archive), Some(&b.archive)),
        (Some(&a.debug), Some(&b.debug)),
        (a.deb.as_ref(), b.deb.as_ref()),
        (Some(&a.sums), Some(&b.sums)),
    ];
    for (x, y) in pairs {
        let (Some(x), Some(y)) = (x, y) else {
            continue;
        };
        if read(x)? != read(y)? {
            diffs.push(x.display().to_string());
        }
    }
    if diffs.is_empty() {
        return Ok(());
    }
    let la: BTreeMap<_, _> = listing(&read(&a.archive)?)?
        .into_iter()
        .map(|e| (e.0.clone(), e))
        .collect();
    let lb: BTreeMap<_, _> = listing(&read(&b.archive)?)?
        .into_iter()
        .map(|e| (e.0.clone(), e))
        .collect();
    let entries: std::collections::BTreeSet<&String> = la
        .keys()
        .chain(lb.keys())
        .filter(|k| la.get(*k) != lb.get(*k))
        .collect();
    bail!(
        "two builds of the same sources differ: {} (archive entries: {entries:?}); compare {} and {}",
        diffs.join(", "),
        a.dir.display(),
        b.dir.display()
    )
}

/// `cargo xtask ci-dist [--install]`.
pub fn ci_dist(install: bool) -> Result<()> {
    let started = Instant::now();
    super::forget_copy_build()?;
    let src = Source::of_git(&root())?;
    let target = target_dir()?;
    let first = release(&src, &target, &super::artifacts_dir()?, true)?;
    super::report(&first);
    let mut timings: Vec<(String, f64)> = first
        .timings
        .iter()
        .map(|(s, t)| (format!("first build: {s}"), *t))
        .collect();

    let checks = Instant::now();
    let list = check_archive(&first, &src)?;
    check_binary(&first, &src)?;
    check_sbom(&first, &list, &src)?;
    check_sums(&first)?;
    let deb = first.deb.clone().context("no Debian package was built")?;
    check_deb(&deb)?;
    timings.push((
        "archive, binary, SBOM, sums, package checks".into(),
        checks.elapsed().as_secs_f64(),
    ));

    let step = Instant::now();
    if install || in_ci() {
        install_and_remove(&deb)?;
    } else {
        eprintln!(
            "ci-dist: package not installed (it changes this machine): run with --install, or under CI=true"
        );
    }
    timings.push((
        "dpkg -i, run, verify, dpkg -r/-P".into(),
        step.elapsed().as_secs_f64(),
    ));

    // The same sources in another folder, built into the same target folder: the dependencies'
    // outputs are shared (their flags name no source path), the workspace's crates and the
    // LTO link of the binary are redone. docs/decisions/0022-release-builds.md says why.
    let step = Instant::now();
    let copy = super::copy_dir()?;
    let copy_src = Source {
        root: copy.join("src"),
        ..src.clone()
    };
    copy_sources(&src.root, &copy_src.root)?;
    let second = release(&copy_src, &target, &copy.join("artifacts"), true);
    super::forget_copy_build()?;
    let second = second?;
    ensure!(
        !second.compiled.fresh,
        "the second build reused the first one's binary; the comparison would prove nothing"
    );
    same_bytes(&first, &second)?;
    timings.push((
        "second build in another folder + comparison".into(),
        step.elapsed().as_secs_f64(),
    ));
    for (s, t) in &second.timings {
        timings.push((format!("  of which {s}"), *t));
    }

    eprintln!("ci-dist: {} and its package are reproducible", first.name);
    for (step, secs) in &timings {
        eprintln!("ci-dist:   {step}: {secs:.1} s");
    }
    eprintln!(
        "ci-dist: all checks passed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
