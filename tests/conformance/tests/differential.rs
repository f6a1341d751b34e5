//! Our tar reader against Go's `archive/tar` (see `imagestore_conformance::differential`):
//! the hostile corpus, layers built like the suite builds them, Go's own test archives, any
//! committed fuzz corpus, and a few thousand generated archives. Every archive is either read
//! the same by both or refused by ours; anything else fails the test, listed by file.
//!
//! Needs `IMAGESTORE_TARLIST` (set by `cargo xtask differential` and `cargo xtask ci`).
//! `IMAGESTORE_DIFF_SEED` replays a run, `IMAGESTORE_DIFF_COUNT` sets how many archives are
//! generated (default 3000), `IMAGESTORE_DIFF_OUT` is where disagreeing archives are kept.

// A libtest-mimic test binary: what clippy.toml allows in `#[test]` functions is allowed
// here too.
#![allow(clippy::expect_used, clippy::print_stderr, clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use imagestore_conformance::differential::{
    Feature, TARLIST_VAR, declared_sparse_size, features, go_list, judge, our_items, plain,
};
use imagestore_conformance::{corpus, support, targen, tars::Layer};

/// Constructs our reader is known to read differently from Go (each a disagreement the tar
/// reader must fix by refusing the construct or reading it as Go does); an archive that
/// disagrees and holds one of them is counted, not failed. Every construct the first runs
/// found is now refused or read alike, so the list is empty and must stay so.
const KNOWN: &[Feature] = &[];

/// Sparse files bigger than this are not compared: the Go lister hashes their holes, which
/// costs minutes for the 60 GB file of Go's test data.
const MAX_SPARSE: u64 = 256 << 20;

fn env_u64(var: &str) -> Option<u64> {
    let v = std::env::var(var).ok()?;
    let v = v.trim();
    match v.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => v.parse().ok(),
    }
}

/// Layers built the way the conformance cases build them: every kind of entry the suite uses.
fn suite_layers() -> Vec<(String, Vec<u8>)> {
    let all = Layer::new()
        .dir("etc")
        .file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n")
        .file_mode("bin-sh", &[0x7f; 700], 0o755)
        .file_owned("home", b"x", 1000, 1000)
        .symlink("etc/link", "/etc/passwd")
        .hardlink("etc/hard", "etc/passwd")
        .chardev("null", 1, 3)
        .fifo("pipe")
        .whiteout("gone")
        .opaque("etc")
        .file_xattrs("cap", b"c", &[("security.capability", b"\x01\x00\x00\x02")])
        .sparse("holes", 1 << 20, &[(4096, b"data"), (65536, &[9u8; 600])])
        .file(&format!("deep/{}", "n".repeat(150)), b"long")
        .build();
    let plainest = Layer::new().file("a", b"hello").build();
    vec![
        ("suite/every-kind.tar".into(), all.clone()),
        (
            "suite/every-kind.tar.gz".into(),
            imagestore_conformance::tars::gzip(&all),
        ),
        (
            "suite/every-kind.tar.zst".into(),
            imagestore_conformance::tars::zstd(&all),
        ),
        ("suite/one-file.tar".into(), plainest),
        ("suite/empty".into(), Vec::new()),
    ]
}

/// Archives kept in a directory (Go's test data, a fuzz corpus), when it exists.
fn files_in(dir: &Path, label: &str) -> Vec<(String, Vec<u8>)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<(String, Vec<u8>)> = rd
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| {
            let bytes = std::fs::read(e.path()).ok()?;
            Some((
                format!("{label}/{}", e.file_name().to_string_lossy()),
                bytes,
            ))
        })
        .collect();
    v.sort();
    v
}

fn goroot() -> Option<PathBuf> {
    if let Ok(r) = std::env::var("GOROOT") {
        return Some(PathBuf::from(r));
    }
    let out = std::process::Command::new("go")
        .args(["env", "GOROOT"])
        .output()
        .ok()?;
    Some(PathBuf::from(String::from_utf8(out.stdout).ok()?.trim()))
}

fn main() -> std::process::ExitCode {
    let tarlist = support::env(
        TARLIST_VAR,
        "build Go's lister and run the test with `cargo xtask differential`",
    );
    support::run(vec![support::trial(
        "our_reader_agrees_with_go_archive_tar",
        tarlist,
        our_reader_agrees_with_go_archive_tar,
    )])
}

fn our_reader_agrees_with_go_archive_tar(tarlist: String) -> Result<()> {
    let seed = env_u64("IMAGESTORE_DIFF_SEED").unwrap_or_else(rand::random);
    let count = env_u64("IMAGESTORE_DIFF_COUNT").unwrap_or(3000);
    eprintln!(
        "differential: seed {seed:#x} (IMAGESTORE_DIFF_SEED={seed:#x} replays it), {count} generated archives"
    );

    let mut cases: Vec<(String, Vec<u8>)> = corpus::all()
        .into_iter()
        .map(|h| (format!("corpus/{}", h.name), h.bytes))
        .collect();
    cases.extend(suite_layers());
    if let Some(root) = goroot() {
        cases.extend(files_in(
            &root.join("src/archive/tar/testdata"),
            "go-testdata",
        ));
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for sub in ["fuzz/corpus/tar_ingest", "fuzz/artifacts/tar_ingest"] {
        cases.extend(files_in(&repo.join(sub), sub));
    }
    for i in 0..count {
        cases.push((format!("generated/{seed:#x}-{i}"), targen::archive(seed, i)));
    }

    let work = tempfile::tempdir()?;
    let mut accepted = Vec::new();
    let mut refused = 0usize;
    let mut skipped = 0usize;
    for (i, (name, bytes)) in cases.iter().enumerate() {
        if let Ok(tar) = plain(bytes)
            && declared_sparse_size(&tar) > MAX_SPARSE
        {
            eprintln!(
                "differential: {name}: skipped, it declares a sparse file over {MAX_SPARSE} bytes"
            );
            skipped += 1;
            continue;
        }
        match our_items(bytes) {
            Err(_) => refused += 1,
            Ok(items) => {
                let path = work.path().join(format!("{i}.tar"));
                let tar = plain(bytes).with_context(|| format!("{name}: decompressing"))?;
                std::fs::write(&path, tar)?;
                accepted.push((i, path, items));
            }
        }
    }
    let files: Vec<PathBuf> = accepted.iter().map(|(_, p, _)| p.clone()).collect();
    let listings = go_list(Path::new(&tarlist), &files)?;

    let out_dir = std::env::var_os("IMAGESTORE_DIFF_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("imagestore-differential"));
    let mut report = Vec::new();
    let mut known_seen: std::collections::BTreeMap<Feature, usize> = Default::default();
    for ((i, path, items), go) in accepted.iter().zip(&listings) {
        let name = &cases[*i].0;
        let Some(why) = judge(items, go) else {
            continue;
        };
        let found = features(&std::fs::read(path)?);
        if let Some(f) = found.iter().find(|f| KNOWN.contains(f)) {
            *known_seen.entry(*f).or_default() += 1;
            continue;
        }
        std::fs::create_dir_all(&out_dir)?;
        let kept = out_dir.join(format!("{}.tar", name.replace('/', "_")));
        std::fs::copy(path, &kept)?;
        report.push(format!("{name} ({}): {why}", kept.display()));
    }
    eprintln!(
        "differential: {} archives: {skipped} skipped, {refused} refused by ours, {} read alike by both, \
         {} disagreements on known constructs {known_seen:?}, {} new disagreements",
        cases.len(),
        accepted.len() - report.len() - known_seen.values().sum::<usize>(),
        known_seen.values().sum::<usize>(),
        report.len()
    );
    assert!(
        report.is_empty(),
        "our tar reader and Go's archive/tar disagree on {} archives (seed {seed:#x}):\n{}",
        report.len(),
        report.join("\n")
    );
    Ok(())
}
