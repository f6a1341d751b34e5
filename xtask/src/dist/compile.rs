//! The release build of the CLI: `cargo build --profile dist` with the paths of the build
//! machine mapped to fixed names, then the line tables split off into a debug file and
//! every symbol stripped from the binary (objcopy), the binary naming its debug file by a
//! `.gnu_debuglink`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::util::{cargo, describe, need, run};

/// The package and features of the released binary.
pub const PACKAGE: &str = "imagestore-cli";
/// Every backend.
pub const FEATURES: &str = "full";
/// The cargo profile (see the workspace `Cargo.toml`).
pub const PROFILE: &str = "dist";

/// While set (to a source root), the xtask binary acts as cargo's `RUSTC_WORKSPACE_WRAPPER`:
/// it runs the rustc it is given with `--remap-path-prefix=<root>=/src` added, for the
/// workspace's own crates only, so that the flags of the dependencies (and so their build
/// outputs, shared between source trees) do not depend on where the sources are.
pub const WRAPPER_VAR: &str = "IMAGESTORE_DIST_SOURCE_ROOT";

/// Where a release is built from.
#[derive(Debug, Clone)]
pub struct Source {
    /// The workspace root holding the sources.
    pub root: PathBuf,
    /// The commit (`git rev-parse HEAD`, `-dirty` appended when the work tree differs).
    pub commit: String,
    /// `SOURCE_DATE_EPOCH`: the commit's time.
    pub epoch: u64,
}

impl Source {
    /// The sources of the git work tree at `root`.
    pub fn of_git(root: &Path) -> Result<Source> {
        let git = |args: &[&str]| -> Result<String> {
            let out = Command::new("git")
                .args(args)
                .current_dir(root)
                .output()
                .with_context(|| format!("running git {}", args.join(" ")))?;
            if !out.status.success() {
                bail!(
                    "git {} failed in {}: {}",
                    args.join(" "),
                    root.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        };
        let mut commit = git(&["rev-parse", "HEAD"])?;
        if !git(&["status", "--porcelain", "--untracked-files=no"])?.is_empty() {
            commit.push_str("-dirty");
        }
        let epoch = match std::env::var("SOURCE_DATE_EPOCH") {
            Ok(v) if !v.is_empty() => v
                .parse()
                .with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number"))?,
            _ => git(&["log", "-1", "--format=%ct"])?
                .parse()
                .context("the commit time of `git log`")?,
        };
        Ok(Source {
            root: root.to_path_buf(),
            commit,
            epoch,
        })
    }
}

/// The built binary.
#[derive(Debug)]
pub struct Compiled {
    /// The stripped binary, as shipped.
    pub binary: PathBuf,
    /// Its line tables, named by the binary's `.gnu_debuglink`.
    pub debug: PathBuf,
    /// Whether cargo found the binary up to date instead of linking it.
    pub fresh: bool,
}

/// `$CARGO_HOME`, else `~/.cargo`.
fn cargo_home() -> Result<PathBuf> {
    if let Some(h) = std::env::var_os("CARGO_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(h));
    }
    let home = std::env::var_os("HOME").context("neither CARGO_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cargo"))
}

/// The host's target triple (`rustc -vV`).
pub fn host_triple() -> Result<String> {
    let out = crate::util::output(Command::new("rustc").arg("-vV"))?;
    out.lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(|t| t.trim().to_string())
        .context("`rustc -vV` names no host")
}

/// Builds the CLI from `src` into `target_dir` (whose dependencies' outputs may be shared
/// with another source tree) and splits and strips it into `out`: `imagestore` and
/// `debug_name`.
pub fn compile(src: &Source, target_dir: &Path, out: &Path, debug_name: &str) -> Result<Compiled> {
    need("objcopy", "binutils")?;
    let home = cargo_home()?;
    let remap = |from: &Path, to: &str| format!("{}={to}", from.display());
    // The same on every source tree of a machine: the dependencies build once.
    let rustflags = [
        format!("--remap-path-prefix={}", remap(&home, "/cargo")),
        format!("--remap-path-prefix={}", remap(target_dir, "/target")),
    ]
    .join("\x1f");
    let cflags = format!(
        "-ffile-prefix-map={} -ffile-prefix-map={}",
        remap(&home, "/cargo"),
        remap(target_dir, "/target")
    );
    let wrapper = std::env::current_exe().context("the path of the xtask binary")?;
    let mut build = cargo();
    build
        .current_dir(&src.root)
        .args(["build", "--locked", "--profile", PROFILE, "-p", PACKAGE])
        .args([
            "--features",
            FEATURES,
            "--message-format",
            "json-render-diagnostics",
        ])
        .env("CARGO_TARGET_DIR", target_dir)
        .env_remove("RUSTFLAGS")
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        .env("CFLAGS", &cflags)
        .env("CXXFLAGS", &cflags)
        .env("RUSTC_WORKSPACE_WRAPPER", wrapper)
        .env(WRAPPER_VAR, &src.root)
        .env("SOURCE_DATE_EPOCH", src.epoch.to_string())
        .env("IMAGESTORE_BUILD_COMMIT", &src.commit);
    eprintln!("$ {} (in {})", describe(&build), src.root.display());
    let started = std::time::Instant::now();
    let output = build
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("starting {}", describe(&build)))?;
    eprintln!("  (took {:.1} s)", started.elapsed().as_secs_f64());
    if !output.status.success() {
        bail!("the release build failed with {}", output.status);
    }
    let mut built = None;
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if msg["reason"] == "compiler-artifact"
            && msg["target"]["name"] == "imagestore"
            && let Some(exe) = msg["executable"].as_str()
        {
            built = Some((PathBuf::from(exe), msg["fresh"].as_bool().unwrap_or(false)));
        }
    }
    let Some((exe, fresh)) = built else {
        bail!("cargo reported no `imagestore` executable");
    };
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let debug = out.join(debug_name);
    let binary = out.join("imagestore");
    run(Command::new("objcopy")
        .arg("--only-keep-debug")
        .arg(&exe)
        .arg(&debug))?;
    // The link names the debug file by its file name and CRC; objcopy reads it from `out`.
    run(Command::new("objcopy")
        .arg("--strip-all")
        .arg(format!("--add-gnu-debuglink={debug_name}"))
        .arg(&exe)
        .arg(&binary)
        .current_dir(out))?;
    Ok(Compiled {
        binary,
        debug,
        fresh,
    })
}

/// The `RUSTC_WORKSPACE_WRAPPER` side of [`compile`]: runs `rustc ARGS...` with the source
/// root mapped to `/src`, and exits with its status.
///
/// rustc applies the last of the `--remap-path-prefix` flags that match a path. The source
/// root and the target folder may lie one inside the other (`target/` in the tree, or a copy
/// of the tree under `target/`), so every mapping is moved to the end, the longest prefix
/// last: a path takes the mapping of the innermost folder it is in, wherever the folders are.
pub fn rustc_wrapper(root: &std::ffi::OsStr, args: &[std::ffi::OsString]) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let Some((rustc, rest)) = args.split_first() else {
        bail!("{WRAPPER_VAR} is set but no rustc command was given");
    };
    let err = Command::new(rustc)
        .args(with_source_remap(rest, root))
        .exec();
    Err(err).with_context(|| format!("running {}", rustc.to_string_lossy()))
}

/// `args` with `--remap-path-prefix=<root>=/src` added and every `--remap-path-prefix=` flag
/// moved to the end, the longest prefix last.
fn with_source_remap(
    args: &[std::ffi::OsString],
    root: &std::ffi::OsStr,
) -> Vec<std::ffi::OsString> {
    let mut ours = std::ffi::OsString::from("--remap-path-prefix=");
    ours.push(root);
    ours.push("=/src");
    let (mut remaps, mut out): (Vec<_>, Vec<_>) = args.iter().cloned().partition(|a| {
        a.to_str()
            .is_some_and(|a| a.starts_with("--remap-path-prefix="))
    });
    remaps.push(ours);
    // `--remap-path-prefix=FROM=TO` (TO has no `=`): the length of FROM.
    remaps.sort_by_key(|a| {
        let a = a.to_string_lossy();
        a.rfind('=').unwrap_or(a.len())
    });
    out.extend(remaps);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_innermost_folder_maps_last() {
        let args: Vec<std::ffi::OsString> = [
            "--crate-name",
            "x",
            "--remap-path-prefix=/w/target=/target",
            "--remap-path-prefix=/home/u/.cargo=/cargo",
            "src/lib.rs",
        ]
        .iter()
        .map(Into::into)
        .collect();
        // A copy of the sources under the target folder: its own mapping must win.
        let got = with_source_remap(&args, "/w/target/xtask/copy".as_ref());
        let got: Vec<_> = got
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            got,
            [
                "--crate-name",
                "x",
                "src/lib.rs",
                "--remap-path-prefix=/w/target=/target",
                "--remap-path-prefix=/home/u/.cargo=/cargo",
                "--remap-path-prefix=/w/target/xtask/copy=/src",
            ]
        );
        // The sources around the target folder: the target folder's mapping wins.
        let got = with_source_remap(&args, "/w".as_ref());
        assert_eq!(
            got.last().map(|a| a.to_string_lossy().into_owned()),
            Some("--remap-path-prefix=/home/u/.cargo=/cargo".to_string())
        );
        assert_eq!(got[3].to_string_lossy(), "--remap-path-prefix=/w=/src");
    }
}
