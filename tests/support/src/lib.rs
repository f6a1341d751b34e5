//! What imagestore's test binaries share: one decision of what a missing server, program or
//! fixture means, and the [libtest-mimic](libtest_mimic) harness that reports it.
//!
//! A test that needs something from outside the process (an S3 server, vcsim, `qemu-img`,
//! the Debian fixture) states it as a [`Need`]. Under CI (`CI=true` or `CI=1`) a missing need
//! fails the test with a message naming what to start or install; outside CI the test is
//! reported as *ignored*, with that message as the reason, never as passed. Test binaries
//! that use this set `harness = false` and end in `run` (feature `harness`, on by default):
//!
//! ```text
//! fn main() -> std::process::ExitCode {
//!     let tools = program("qemu-img");
//!     run(vec![trial("disks_pass_qemu_img", tools, |()| disks_pass_qemu_img())])
//! }
//! ```

#![deny(missing_docs)]

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

#[cfg(feature = "harness")]
mod harness;
#[cfg(feature = "harness")]
pub use harness::*;

/// The variable whose value says the tests run under CI.
pub const CI_VAR: &str = "CI";

/// Whether a value of `CI` means CI: `true` or `1`.
pub fn ci_value_is_ci(value: Option<&str>) -> bool {
    matches!(value, Some("true" | "1"))
}

/// Whether the tests run under CI, read from `CI` once per process.
pub fn in_ci() -> bool {
    static CI: OnceLock<bool> = OnceLock::new();
    *CI.get_or_init(|| ci_value_is_ci(std::env::var(CI_VAR).ok().as_deref()))
}

/// Something a test needs that is not there: what is missing, and how to provide it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    what: String,
    remedy: String,
}

impl Missing {
    /// `what` is missing; `remedy` says what to start, install or generate.
    pub fn new(what: impl Into<String>, remedy: impl Into<String>) -> Missing {
        Missing {
            what: what.into(),
            remedy: remedy.into(),
        }
    }
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}; {}", self.what, self.remedy)
    }
}

/// What a test needs: the value it runs with, or what is missing.
pub type Need<T> = Result<T, Missing>;

/// Combines two needs: both values, or everything that is missing.
pub fn both<A, B>(a: Need<A>, b: Need<B>) -> Need<(A, B)> {
    match (a, b) {
        (Ok(a), Ok(b)) => Ok((a, b)),
        (Err(m), Ok(_)) | (Ok(_), Err(m)) => Err(m),
        (Err(x), Err(y)) => Err(Missing::new(
            format!("{}, {}", x.what, y.what),
            format!("{}, {}", x.remedy, y.remedy),
        )),
    }
}

/// The value of the environment variable `var` (set by whatever starts the server), if it is
/// set and not empty.
pub fn env(var: &str, remedy: &str) -> Need<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Ok(v),
        _ => Err(Missing::new(format!("{var} is not set"), remedy)),
    }
}

/// Whether `program` is an executable file in a directory of `PATH`.
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
}

/// The Debian package that installs `program`, for the programs the tests use; the program's
/// own name for any other.
pub fn debian_package(program: &str) -> &str {
    match program {
        "qemu-img" | "qemu-io" => "qemu-utils",
        "e2fsck" | "debugfs" | "mke2fs" => "e2fsprogs",
        "ctr" => "containerd",
        "go" => "golang-go",
        other => other,
    }
}

/// `program`, if it is on `PATH`.
pub fn program(program: &str) -> Need<()> {
    programs(&[program])
}

/// Every one of `names`, if all are on `PATH`; otherwise the missing ones, and the
/// `apt-get install` line that provides them.
pub fn programs(names: &[&str]) -> Need<()> {
    let missing: Vec<&str> = names.iter().copied().filter(|p| !on_path(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut packages: Vec<&str> = missing.iter().map(|p| debian_package(p)).collect();
    packages.dedup();
    let remedy = format!("apt-get install -y {}", packages.join(" "));
    match missing.as_slice() {
        [one] => Err(Missing::new(format!("{one} is not installed"), remedy)),
        many => Err(Missing::new(
            format!("{} are not installed", many.join(", ")),
            remedy,
        )),
    }
}

/// The variable naming the Debian fixture's directory, when it is not the default.
pub const DEBIAN_FIXTURE_VAR: &str = "IMAGESTORE_FIXTURE_DEBIAN";

/// The generated Debian image fixture (`cargo xtask fixture debian`): its directory, from
/// [`DEBIAN_FIXTURE_VAR`] or the default `target/xtask/fixtures/debian` of the workspace,
/// if the fixture is complete (`oci.done` written).
pub fn debian_fixture() -> Need<PathBuf> {
    let dir = std::env::var_os(DEBIAN_FIXTURE_VAR)
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/xtask/fixtures/debian"));
    if dir.join("oci.done").exists() {
        Ok(dir)
    } else {
        Err(Missing::new(
            format!("no Debian fixture at {}", dir.display()),
            "run `cargo xtask fixture debian`",
        ))
    }
}

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// What becomes of a test given its need and whether it runs under CI.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision<T> {
    /// Everything is there: the test runs with the value.
    Run(T),
    /// Something is missing under CI: the test fails with this message.
    Fail(String),
    /// Something is missing outside CI: the test is ignored for this reason.
    Ignore(String),
}

/// Decides what becomes of a test: runs it, fails it (a missing need under CI) or ignores it
/// (a missing need outside CI).
pub fn decide<T>(ci: bool, need: Need<T>) -> Decision<T> {
    match need {
        Ok(v) => Decision::Run(v),
        Err(m) if ci => Decision::Fail(format!(
            "{m} (under {CI_VAR}=true a missing server, program or fixture fails the test)"
        )),
        Err(m) => Decision::Ignore(m.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ci_is_true_or_one() {
        assert!(ci_value_is_ci(Some("true")));
        assert!(ci_value_is_ci(Some("1")));
        for other in [
            None,
            Some(""),
            Some("0"),
            Some("false"),
            Some("TRUE"),
            Some("yes"),
        ] {
            assert!(!ci_value_is_ci(other), "{other:?}");
        }
    }

    #[test]
    fn a_missing_need_fails_under_ci_and_is_ignored_outside() {
        let missing = || Err::<(), _>(Missing::new("S3_URL is not set", "start the server"));
        match decide(true, missing()) {
            Decision::Fail(msg) => {
                assert!(msg.contains("S3_URL is not set; start the server"), "{msg}");
                assert!(msg.contains("CI=true"), "{msg}");
            }
            other => panic!("under CI: {other:?}"),
        }
        assert_eq!(
            decide(false, missing()),
            Decision::Ignore("S3_URL is not set; start the server".to_owned())
        );
        assert_eq!(decide(true, Ok(7)), Decision::Run(7));
        assert_eq!(decide(false, Ok(7)), Decision::Run(7));
    }

    #[test]
    fn both_lists_everything_missing() {
        let a = Err::<(), _>(Missing::new("a is missing", "make a"));
        let b = Err::<(), _>(Missing::new("b is missing", "make b"));
        assert_eq!(
            both(a, b).map(|_| ()).map_err(|m| m.to_string()),
            Err("a is missing, b is missing; make a, make b".to_owned())
        );
        assert_eq!(both(Ok(1), Ok(2)), Ok((1, 2)));
    }

    #[test]
    fn programs_names_the_missing_ones() {
        let m = programs(&["sh", "no-such-program-here"]).map_err(|m| m.to_string());
        assert_eq!(
            m,
            Err(
                "no-such-program-here is not installed; apt-get install -y no-such-program-here"
                    .to_owned()
            )
        );
        assert_eq!(debian_package("debugfs"), "e2fsprogs");
    }

    #[test]
    fn env_refuses_unset_and_empty() {
        assert!(env("IMAGESTORE_TEST_SUPPORT_SURELY_UNSET", "set it").is_err());
    }
}
