//! `cargo xtask fuzz [TARGET] [SECONDS]`: runs the cargo-fuzz targets of `fuzz/` for a fixed
//! time each. Not part of CI (too slow); crashes land in `fuzz/artifacts/TARGET/` and each one
//! becomes a unit test.

use std::process::Command;

use anyhow::{Result, bail};

use crate::util::{have, root, run};

/// The targets in `fuzz/fuzz_targets/`.
pub const TARGETS: &[&str] = &["tar_ingest", "toc_decode", "filter_decode"];

/// Seconds per target when none is given.
pub const DEFAULT_SECONDS: u64 = 60;

fn cargo_fuzz_installed() -> bool {
    Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs `target` (or every target) for `seconds` each.
pub fn fuzz(args: &[&str]) -> Result<()> {
    let (targets, seconds): (Vec<&str>, u64) = match args {
        [] => (TARGETS.to_vec(), DEFAULT_SECONDS),
        [t] if t.parse::<u64>().is_ok() => (TARGETS.to_vec(), t.parse()?),
        [t] => (vec![*t], DEFAULT_SECONDS),
        [t, s] => (
            vec![*t],
            s.parse()
                .map_err(|_| anyhow::anyhow!("SECONDS must be a number, not {s:?}"))?,
        ),
        _ => bail!("usage: cargo xtask fuzz [TARGET] [SECONDS]"),
    };
    for t in &targets {
        if !TARGETS.contains(t) {
            bail!(
                "unknown fuzz target {t:?} (targets: {})",
                TARGETS.join(", ")
            );
        }
    }
    if !cargo_fuzz_installed() {
        if !have("cargo") {
            bail!("cargo is not on the PATH");
        }
        eprintln!("fuzz: cargo-fuzz is missing; installing it (cargo install cargo-fuzz)");
        run(Command::new("cargo").args(["install", "cargo-fuzz"]))?;
    }
    for t in targets {
        // cargo-fuzz needs nightly flags (-Z sanitizer); RUSTC_BOOTSTRAP lets the pinned
        // stable toolchain accept them.
        run(Command::new("cargo")
            .args([
                "fuzz",
                "run",
                t,
                "--",
                &format!("-max_total_time={seconds}"),
            ])
            .current_dir(root())
            .env("RUSTC_BOOTSTRAP", "1"))?;
    }
    eprintln!("fuzz: no crash; new crashes would be in fuzz/artifacts/<target>/");
    Ok(())
}
