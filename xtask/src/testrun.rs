//! Runs the workspace's test binaries a few at a time.
//!
//! `cargo test` runs one test binary after another. Many of ours spend their time waiting on
//! a server (moto, SeaweedFS, vcsim, `imagestore serve`) while others keep both cores busy
//! (the disk backends' ext4 and VMDK work), so running them side by side fills the machine
//! where cargo would leave a core idle. Each binary runs exactly as `cargo test` runs it (its
//! package's folder as working directory, cargo's variables for the package, the same
//! arguments); its output is kept and printed whole when it ends, so that the logs of two
//! binaries never interleave. Doctests still go through `cargo test --doc`.

use std::collections::VecDeque;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::util::{Process, describe, work_dir};

/// One test executable cargo built.
#[derive(Debug, Clone)]
pub struct TestBinary {
    /// `package/target` (`package/lib` for a library's unit tests), as reported.
    pub name: String,
    /// The target's name alone, what [`EXPECTED`] and the cargo `--test` flag use.
    pub target: String,
    /// The executable.
    pub exe: PathBuf,
    /// The package's folder, the binary's working directory under `cargo test`.
    pub package_dir: PathBuf,
    /// The package's name and version, set as cargo sets them.
    pub package: String,
    /// The package's version.
    pub version: String,
}

/// What the last runs of `cargo xtask ci` took per binary, in seconds (2 cores): the longest
/// start first, so that the slowest one does not start last and run alone. A binary not
/// named here counts as short.
const EXPECTED: &[(&str, u32)] = &[
    ("s3", 130),
    ("layers", 95),
    ("remote", 90),
    ("s3_races", 85),
    ("serve_load", 65),
    ("vcsim", 62),
    ("vsphere", 60),
    ("crash_vmdk", 33),
    ("s3_faults", 30),
    ("vmdk", 25),
    ("vmdk_vmfs_sparse", 25),
    ("vmdk_se_sparse", 25),
];

fn expected(b: &TestBinary) -> u32 {
    EXPECTED
        .iter()
        .find(|(t, _)| *t == b.target)
        .map_or(0, |(_, s)| *s)
}

/// Builds the test binaries `cargo` (a `cargo test ... --no-run` command without the
/// `--message-format`) builds, and lists them.
pub fn build(mut cargo_test: Command) -> Result<Vec<TestBinary>> {
    cargo_test.args(["--no-run", "--message-format", "json-render-diagnostics"]);
    eprintln!("$ {}", describe(&cargo_test));
    let out = cargo_test
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("starting {}", describe(&cargo_test)))?;
    if !out.status.success() {
        bail!("{} failed with {}", describe(&cargo_test), out.status);
    }
    let mut bins = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" || msg["profile"]["test"] != true {
            continue;
        }
        let Some(exe) = msg["executable"].as_str() else {
            continue;
        };
        let manifest = msg["manifest_path"]
            .as_str()
            .context("a compiler-artifact message without manifest_path")?;
        let package_dir = Path::new(manifest)
            .parent()
            .context("a manifest path without a folder")?
            .to_path_buf();
        // `package_id` is `path+file:///...#name@version` (or `...#version` when the folder
        // is named like the package).
        let id = msg["package_id"].as_str().unwrap_or_default();
        let tail = id.rsplit('#').next().unwrap_or_default();
        let (package, version) = match tail.split_once('@') {
            Some((n, v)) => (n.to_string(), v.to_string()),
            None => (
                package_dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                tail.to_string(),
            ),
        };
        let target = msg["target"]["name"].as_str().unwrap_or("?").to_string();
        let kinds = &msg["target"]["kind"];
        let unit = kinds
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "lib" || k == "bin"));
        let name = if unit {
            format!("{package} (unit tests of {target})")
        } else {
            format!("{package}/{target}")
        };
        bins.push(TestBinary {
            name,
            target,
            exe: PathBuf::from(exe),
            package_dir,
            package,
            version,
        });
    }
    Ok(bins)
}

/// A binary that is running, its output going to `log`.
struct Running {
    bin: TestBinary,
    child: Child,
    log: PathBuf,
    started: Instant,
}

/// Runs `bins`, at most `jobs` at a time, each with the environment `env` adds to this
/// process's, and fails naming every binary that failed (after all have run).
pub fn run_all(bins: Vec<TestBinary>, jobs: usize, env: &[(String, String)]) -> Result<()> {
    let logs = work_dir("test-logs")?;
    let mut queue: Vec<TestBinary> = bins;
    // Longest expected first; the rest in cargo's order.
    queue.sort_by_key(|b| std::cmp::Reverse(expected(b)));
    let mut queue: VecDeque<TestBinary> = queue.into();
    let total = queue.len();
    let started = Instant::now();
    let mut running: Vec<Running> = Vec::new();
    let mut failed: Vec<String> = Vec::new();
    eprintln!(
        "tests: {total} binaries, {} at a time (IMAGESTORE_TEST_JOBS)",
        jobs.max(1)
    );
    while !queue.is_empty() || !running.is_empty() {
        while running.len() < jobs.max(1)
            && let Some(bin) = queue.pop_front()
        {
            running.push(start(bin, &logs, env)?);
        }
        std::thread::sleep(Duration::from_millis(100));
        let mut i = 0;
        while i < running.len() {
            // Read before the reaping below frees it: the binary's CPU time, with that of
            // the tools it ran (qemu-img, e2fsck, ...), not of the servers it talked to.
            let cpu = Process(running[i].child.id()).cpu_seconds_if_ended();
            let status = running[i]
                .child
                .try_wait()
                .with_context(|| format!("waiting for {}", running[i].bin.name))?;
            let Some(status) = status else {
                i += 1;
                continue;
            };
            let done = running.swap_remove(i);
            let secs = done.started.elapsed().as_secs_f64();
            let cpu = cpu.map_or_else(String::new, |c| format!(", {c:.1} CPU-s"));
            let text = std::fs::read_to_string(&done.log).unwrap_or_default();
            if status.success() {
                // libtest's result lines; a binary with a `main` of its own (the crash
                // tests) gets its last line quoted instead.
                let mut summary = text
                    .lines()
                    .filter(|l| l.starts_with("test result:"))
                    .collect::<Vec<_>>()
                    .join("; ");
                if summary.is_empty() {
                    summary = text
                        .lines()
                        .rev()
                        .find(|l| !l.trim().is_empty())
                        .unwrap_or("(no output)")
                        .to_string();
                }
                eprintln!("tests: {} ok in {secs:.1} s{cpu}: {summary}", done.bin.name);
                if std::env::var_os("IMAGESTORE_TEST_VERBOSE").is_some() {
                    eprint!("{text}");
                }
            } else {
                eprintln!(
                    "tests: {} FAILED ({status}) after {secs:.1} s{cpu}; its output:\n{text}",
                    done.bin.name
                );
                failed.push(done.bin.name.clone());
            }
        }
    }
    eprintln!(
        "tests: {total} binaries in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    if !failed.is_empty() {
        bail!("test binaries failed: {}", failed.join(", "));
    }
    Ok(())
}

/// Starts one binary the way `cargo test` runs it.
fn start(bin: TestBinary, logs: &Path, env: &[(String, String)]) -> Result<Running> {
    let file_name = bin
        .exe
        .file_name()
        .map_or_else(|| "test".to_string(), |n| n.to_string_lossy().into_owned());
    let log = logs.join(format!("{file_name}.log"));
    let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let err = out
        .try_clone()
        .with_context(|| format!("opening {} twice", log.display()))?;
    let mut cmd = Command::new(&bin.exe);
    cmd.current_dir(&bin.package_dir)
        .env("CARGO_MANIFEST_DIR", &bin.package_dir)
        .env("CARGO_MANIFEST_PATH", bin.package_dir.join("Cargo.toml"))
        .env("CARGO_PKG_NAME", &bin.package)
        .env("CARGO_PKG_VERSION", &bin.version)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", bin.exe.display()))?;
    Ok(Running {
        bin,
        child,
        log,
        started: Instant::now(),
    })
}

/// How many binaries run at a time: `IMAGESTORE_TEST_JOBS`, else one more than the cores
/// (one binary waiting on a server leaves room for another).
pub fn jobs() -> Result<usize> {
    match std::env::var("IMAGESTORE_TEST_JOBS") {
        Ok(v) if !v.is_empty() => {
            let n: usize = v
                .parse()
                .with_context(|| format!("IMAGESTORE_TEST_JOBS={v:?} is not a number"))?;
            Ok(n.max(1))
        }
        _ => Ok(std::thread::available_parallelism().map_or(2, |n| n.get()) + 1),
    }
}
