//! Running commands and timing them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Cargo's target directory, where its build outputs are: `CARGO_TARGET_DIR` if set (relative
/// to the workspace root when relative), else the `target_directory` of `cargo metadata`
/// (which honours `build.target-dir` in cargo's configuration). Asked once per run.
pub fn target_dir() -> Result<PathBuf> {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    if let Some(d) = DIR.get() {
        return Ok(d.clone());
    }
    let dir = match std::env::var_os("CARGO_TARGET_DIR").filter(|v| !v.is_empty()) {
        Some(d) => root().join(d),
        None => {
            let out = output(cargo().args(["metadata", "--format-version", "1", "--no-deps"]))?;
            let meta: serde_json::Value =
                serde_json::from_str(&out).context("parsing `cargo metadata`")?;
            meta["target_directory"]
                .as_str()
                .map(PathBuf::from)
                .context("`cargo metadata` names no target_directory")?
        }
    };
    Ok(DIR.get_or_init(|| dir).clone())
}

/// Builds the release CLI (`imagestore-cli`, with `features` if any) and returns the path of
/// its binary in [`target_dir`].
pub fn release_cli(features: Option<&str>) -> Result<PathBuf> {
    let mut build = cargo();
    build.args(["build", "--release", "-p", "imagestore-cli"]);
    if let Some(f) = features {
        build.args(["--features", f]);
    }
    run(&mut build)?;
    Ok(target_dir()?.join("release/imagestore"))
}

/// Scratch space for xtask: `target/xtask/<name>` of the workspace, never committed. It stays
/// there whatever `CARGO_TARGET_DIR` says, so that tests find the fixtures at a fixed path.
pub fn work_dir(name: &str) -> Result<PathBuf> {
    let d = root().join("target").join("xtask").join(name);
    std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    Ok(d)
}

/// Prints and runs a command and how long it took, failing if it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("$ {}", describe(cmd));
    let started = std::time::Instant::now();
    let status = cmd
        .status()
        .with_context(|| format!("starting {}", describe(cmd)))?;
    eprintln!("  (took {:.1} s)", started.elapsed().as_secs_f64());
    if !status.success() {
        bail!("{} failed with {status}", describe(cmd));
    }
    Ok(())
}

/// Runs a command and returns its standard output.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("starting {}", describe(cmd)))?;
    if !out.status.success() {
        bail!("{} failed with {}", describe(cmd), out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A command's text for messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// `cargo` with the workspace as working directory, without the variables `cargo run` set
/// for this process.
///
/// Build scripts that watch `CARGO_MANIFEST_DIR` or `CARGO_PKG_NAME` (ring's does) are
/// compared against the value in the environment of the cargo that builds them: left in, the
/// xtask's own values would make every cargo it runs redo those scripts and all that depends
/// on them after a build started from a shell.
pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    for (key, _) in std::env::vars_os() {
        let Some(k) = key.to_str() else { continue };
        if k.starts_with("CARGO_PKG_")
            || k.starts_with("CARGO_MANIFEST_")
            || matches!(
                k,
                "CARGO_CRATE_NAME" | "CARGO_BIN_NAME" | "CARGO_PRIMARY_PACKAGE"
            )
        {
            c.env_remove(&key);
        }
    }
    c
}

/// Result of one timed run.
#[derive(Debug, Clone, Copy)]
pub struct Timed {
    /// Wall-clock seconds.
    pub secs: f64,
    /// Peak resident set size of the process, MiB.
    pub peak_mib: f64,
}

/// The `VmHWM` (peak resident set) of a live process, in KiB.
fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Runs a command to completion, measuring wall time and peak RSS.
///
/// The peak is the process's own `VmHWM` after `exec`, sampled every 10 ms until it exits
/// (rusage's `ru_maxrss` would also count the memory of this process before the `exec`).
pub fn timed(cmd: &mut Command) -> Result<Timed> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let start = Instant::now();
    let mut child = cmd
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", describe(cmd)))?;
    let pid = child.id();
    let done = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (done, peak) = (done.clone(), peak.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                if let Some(k) = vm_hwm_kib(pid) {
                    peak.fetch_max(k, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let status = child
        .wait()
        .with_context(|| format!("waiting for {}", describe(cmd)))?;
    let secs = start.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    if !status.success() {
        bail!("{} failed with {status}", describe(cmd));
    }
    Ok(Timed {
        secs,
        peak_mib: peak.load(Ordering::Relaxed) as f64 / 1024.0,
    })
}

/// The median of some values.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    if v.is_empty() {
        return f64::NAN;
    }
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// A background server, killed (by PID) when dropped.
pub struct Server {
    /// What it is.
    pub name: String,
    /// The process.
    pub child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let cpu = Process(self.child.id()).cpu_text();
        let _ = self.child.kill();
        let _ = self.child.wait();
        eprintln!(
            "stopped {} (pid {}, {cpu} CPU-seconds)",
            self.name,
            self.child.id()
        );
    }
}

/// A process of this machine, as `/proc` shows it (what CI's time goes to).
#[derive(Debug, Clone, Copy)]
pub struct Process(pub u32);

impl Process {
    /// The fields of `/proc/PID/stat` after the command name: the state first.
    fn stat(self) -> Option<Vec<String>> {
        let text = std::fs::read_to_string(format!("/proc/{}/stat", self.0)).ok()?;
        // The command name, in parentheses, may itself hold spaces and parentheses.
        let (_, rest) = text.rsplit_once(')')?;
        Some(rest.split_whitespace().map(str::to_string).collect())
    }

    /// The CPU time in `stat`: user and system, with that of the children it has waited for.
    fn seconds(stat: &[String]) -> Option<f64> {
        // utime, stime, cutime, cstime: fields 14 to 17 of proc(5), 11 to 14 after the name.
        let ticks: u64 = stat
            .get(11..15)?
            .iter()
            .map(|v| v.parse::<u64>().unwrap_or(0))
            .sum();
        // SAFETY: sysconf reads a constant of the system and touches no memory of ours.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        (per_second > 0).then(|| ticks as f64 / per_second as f64)
    }

    /// Its CPU time so far as a log shows it (`?` once it is gone).
    pub fn cpu_text(self) -> String {
        self.stat()
            .and_then(|stat| Self::seconds(&stat))
            .map_or_else(|| "?".to_string(), |s| format!("{s:.1}"))
    }

    /// Its final CPU time if it has ended and waits to be reaped; `None` while it runs.
    pub fn cpu_seconds_if_ended(self) -> Option<f64> {
        let stat = self.stat()?;
        if stat.first().map(String::as_str) != Some("Z") {
            return None;
        }
        Self::seconds(&stat)
    }
}

/// Waits until `ready()` holds, up to `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if ready() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("{what} was not ready after {timeout:?}")
}

/// True if a program is on the PATH.
pub fn have(program: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program} >/dev/null 2>&1"))
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// The variable naming the file `.ci/run` writes the exit status of its package installation
/// into (`.ci/packages`, running beside `cargo xtask ci`).
pub const PACKAGES_VAR: &str = "IMAGESTORE_CI_PACKAGES";

/// Under `.ci/run`, waits until the packages the tests need are installed (the builds before
/// need only the toolchain); elsewhere returns at once.
pub fn wait_for_packages() -> Result<()> {
    let Some(status) = std::env::var_os(PACKAGES_VAR) else {
        return Ok(());
    };
    let status = PathBuf::from(status);
    let started = Instant::now();
    let mut said = false;
    loop {
        if let Ok(text) = std::fs::read_to_string(&status)
            && text.ends_with('\n')
        {
            let code = text.trim();
            if code == "0" {
                if said {
                    eprintln!(
                        "ci: packages installed (waited {:.0} s)",
                        started.elapsed().as_secs_f64()
                    );
                }
                return Ok(());
            }
            bail!(
                "installing the packages failed (exit status {code}); see the log beside {}",
                status.display()
            );
        }
        if started.elapsed() > Duration::from_secs(30 * 60) {
            bail!(
                "the packages were not installed after 30 minutes ({} is still missing)",
                status.display()
            );
        }
        if !said {
            eprintln!("ci: waiting for the packages ({})", status.display());
            said = true;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Fails with an install hint if a program is missing.
pub fn need(program: &str, package: &str) -> Result<()> {
    if have(program) {
        Ok(())
    } else {
        bail!("{program} is not installed (apt-get install -y {package})")
    }
}

/// A small, fast, deterministic generator for benchmark data.
pub struct XorShift(pub u64);

impl XorShift {
    /// The next value.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Fills a buffer with incompressible bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn cpu_time_is_read_once_a_process_ended_and_before_it_is_reaped() {
        let mut running = Command::new("sleep").arg("5").spawn().unwrap();
        assert_eq!(Process(running.id()).cpu_seconds_if_ended(), None);
        assert_ne!(Process(running.id()).cpu_text(), "?");
        running.kill().unwrap();
        running.wait().unwrap();

        let mut child = Command::new("true").spawn().unwrap();
        let process = Process(child.id());
        let started = Instant::now();
        let cpu = loop {
            if let Some(cpu) = process.cpu_seconds_if_ended() {
                break cpu;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "never seen ended"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(cpu >= 0.0);
        assert!(child.try_wait().unwrap().is_some());
        // Reaped: nothing left to read.
        assert_eq!(process.cpu_text(), "?");
    }
}
