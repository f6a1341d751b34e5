//! `cargo xtask ci`: formatting, lints per feature set, tests, docs; and
//! `cargo xtask conformance <backend>`.

use std::process::Command;

use anyhow::{Result, bail};

use crate::fixture;
use crate::s3::{self, S3Servers};
use crate::util::{cargo, have, run};
use crate::vcsim::{self, Vcsim};

pub use imagestore_test_support::in_ci;

/// Generates the Debian image fixture the interop tests use, when the tools are there. Under
/// CI missing tools are an error; elsewhere the tests that need the fixture are ignored.
fn fixtures() -> Result<()> {
    let tools = ["debootstrap", "umoci", "skopeo"];
    if tools.iter().all(|t| have(t)) {
        fixture::debian()?;
    } else if in_ci() {
        bail!(
            "CI needs {} to build the test fixtures (see .ci/run)",
            tools.join(", ")
        );
    } else {
        eprintln!(
            "ci: no {} here; the interop tests will be reported as ignored",
            tools.join("/")
        );
    }
    Ok(())
}

/// Feature sets of the facade whose lints (tests included) must pass: none, each backend
/// alone, the default. Each set is a build of its own (its dependencies' features differ from
/// the workspace's), so they are linted, not test-built: what their tests would add is
/// covered elsewhere (core's unit tests give the unknown-scheme hints with no backend linked,
/// the workspace run tests the facade with every backend). Every backend together (`full`) is
/// what the workspace clippy and test runs build, where the members' features unify.
const FEATURE_SETS: &[&[&str]] = &[
    &["--no-default-features", "--tests"],
    &["--no-default-features", "--features", "s3", "--tests"],
    &["--no-default-features", "--features", "vmdk", "--tests"],
    &["--no-default-features", "--features", "remote", "--tests"],
    &[],
];

/// A target without Linux's locks and `openat2`, that core must still compile for.
const PORTABLE_TARGET: &str = "x86_64-unknown-freebsd";

/// The S3 servers if they are installed; otherwise the S3 tests are ignored (and fail under
/// `CI=true`).
fn s3_servers() -> Result<Option<S3Servers>> {
    if s3::available() {
        Ok(Some(S3Servers::start()?))
    } else {
        eprintln!(
            "ci: moto/SeaweedFS not installed, S3 tests will be reported as ignored (fail under CI=true); install: {}",
            s3::INSTALL_HINT
        );
        Ok(None)
    }
}

/// vcsim if it can be built here; otherwise the vSphere tests are ignored (and fail under
/// `CI=true`).
fn vcsim_server() -> Result<Option<Vcsim>> {
    if vcsim::available() {
        Ok(Some(Vcsim::start()?))
    } else {
        eprintln!(
            "ci: vcsim cannot be built here, vSphere tests will be reported as ignored (fail under CI=true); install: {}",
            vcsim::INSTALL_HINT
        );
        Ok(None)
    }
}

/// The release check (`cargo xtask ci-dist`, crate::dist) running beside the other checks
/// (`ci --with-dist`): most of it is a whole-program LTO link on one core, which fits beside
/// builds and test binaries that wait on their servers. Stopped (its whole process group) if
/// `ci` fails first.
struct DistCheck {
    child: Option<std::process::Child>,
    log: std::path::PathBuf,
}

impl DistCheck {
    /// Starts `ci-dist` in the background, its output in `target/xtask/ci/ci-dist.log`.
    fn start() -> Result<DistCheck> {
        use std::os::unix::process::CommandExt;
        let log = crate::util::work_dir("ci")?.join("ci-dist.log");
        let out = std::fs::File::create(&log)?;
        let err = out.try_clone()?;
        let exe = std::env::current_exe()?;
        let mut cmd = Command::new(exe);
        cmd.arg("ci-dist")
            .current_dir(crate::util::root())
            .stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        eprintln!(
            "$ {} (in the background, output in {})",
            crate::util::describe(&cmd),
            log.display()
        );
        let child = cmd.spawn()?;
        Ok(DistCheck {
            child: Some(child),
            log,
        })
    }

    /// Waits for it; fails with its output if it failed.
    fn finish(mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        eprintln!("ci: waiting for the release check ({})", self.log.display());
        let status = child.wait()?;
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        if !status.success() {
            eprintln!("{text}");
            bail!("the release check (cargo xtask ci-dist) failed with {status}");
        }
        for line in text.lines().filter(|l| l.starts_with("ci-dist:")) {
            eprintln!("{line}");
        }
        Ok(())
    }
}

impl Drop for DistCheck {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            // The group: the xtask, cargo and the compilers it runs.
            // `--` before the negative id: without it procps' kill takes `-ID` for
            // something else than a process group.
            let _ = Command::new("kill")
                .args(["-s", "TERM", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
        }
    }
}

/// Runs every check CI runs; with `with_dist`, the release check (`ci-dist`) beside them.
pub fn ci(with_dist: bool) -> Result<()> {
    // The release check first, so that its long links overlap the checks below.
    let dist = if with_dist {
        Some(DistCheck::start()?)
    } else {
        None
    };
    run(cargo().args(["fmt", "--all", "--check"]))?;
    crate::deps::unused_deps()?;
    // The test binaries first: under `.ci/run` this keeps both cores busy while the packages
    // install (cargo's timings of it kept under CI, in target/cargo-timings/).
    // Libraries, binaries and tests: the examples are linted below, not linked.
    let mut build = cargo();
    build.args(["test", "--workspace", "--lib", "--bins", "--tests"]);
    if in_ci() {
        build.arg("--timings");
    }
    let bins = crate::testrun::build(build)?;
    // Core builds off Linux (its Linux-only parts say Unsupported there).
    run(Command::new("rustup").args(["target", "add", PORTABLE_TARGET]))?;
    run(cargo().args([
        "check",
        "-p",
        "imagestore-core",
        "--target",
        PORTABLE_TARGET,
    ]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    for set in FEATURE_SETS {
        run(cargo()
            .args(["clippy", "-p", "imagestore", "--all-targets"])
            .args(*set)
            .args(["--", "-D", "warnings"]))?;
    }
    crate::util::wait_for_packages()?;
    fixtures()?;
    let servers = s3_servers()?;
    let vcsim = vcsim_server()?;
    let tarlist = crate::differential::for_ci()?;
    // What the test binaries find in their environment: the fixture, the servers' URLs and
    // credentials, the differential test's lister. Collected on a command that never runs,
    // because that is what the servers' `env` methods fill.
    let mut vars = Command::new("env");
    vars.env("IMAGESTORE_FIXTURE_DEBIAN", fixture::debian_dir()?);
    if let Some(s) = &servers {
        s.env(&mut vars);
    }
    if let Some(v) = &vcsim {
        v.env(&mut vars);
    }
    // The differential tar test runs with the other tests when the Go lister is built.
    if let Some(t) = &tarlist {
        vars.env(crate::differential::TARLIST_VAR, t).env(
            "IMAGESTORE_DIFF_OUT",
            crate::util::work_dir("differential")?,
        );
    }
    let vars: Vec<(String, String)> = vars
        .get_envs()
        .filter_map(|(k, v)| Some((k.to_str()?.to_string(), v?.to_str()?.to_string())))
        .collect();
    // The test binaries built above, a few at a time (crate::testrun says why), then the
    // doctests.
    crate::testrun::run_all(bins, crate::testrun::jobs()?, &vars)?;
    run(cargo()
        .args(["test", "--workspace", "--doc"])
        .envs(vars.iter().map(|(k, v)| (k, v))))?;
    drop(servers);
    drop(vcsim);
    crate::sample::check_in_ci()?;
    // VIC's swagger subset against `imagestore serve`, with schemathesis' standard checks.
    // The CLI binary the workspace test run built serves it (no second build).
    crate::schemathesis::schemathesis_with(&crate::util::target_dir()?.join("debug/imagestore"))?;
    // The fuzz targets are a workspace of their own; type-check them so they never rot.
    // It shares the workspace's target folder, so the dependencies checked for clippy serve.
    // A check links nothing, so libfuzzer-sys is pointed at a library instead of compiling
    // libFuzzer's C++ (most of this step's time otherwise); `cargo xtask fuzz` builds it.
    run(cargo()
        .args(["check", "--manifest-path", "fuzz/Cargo.toml", "--bins"])
        .env("CARGO_TARGET_DIR", crate::util::target_dir()?)
        .env(
            "CUSTOM_LIBFUZZER_PATH",
            crate::util::work_dir("fuzz-check")?.join("libfuzzer-unlinked.a"),
        ))?;
    run(cargo()
        .args(["doc", "--workspace", "--no-deps", "--all-features"])
        .env("RUSTDOCFLAGS", "-D warnings"))?;
    if let Some(dist) = dist {
        dist.finish()?;
    }
    eprintln!("ci: all checks passed");
    Ok(())
}

/// `cargo xtask with-s3 CMD ARGS...`: runs one command with both S3 test servers up and their
/// URLs in the environment (for a single test binary, or a shell).
pub fn with_s3(program: &str, args: &[&str]) -> Result<()> {
    let servers = S3Servers::start()?;
    let mut cmd = Command::new(program);
    cmd.args(args).current_dir(crate::util::root());
    servers.env(&mut cmd);
    run(&mut cmd)
}

/// Runs the conformance suite (and, for S3, the race and fault tests) against `backend`,
/// starting its servers.
pub fn conformance(backend: &str) -> Result<()> {
    match backend {
        "local" => run(cargo().args(["test", "-p", "imagestore-conformance", "--test", "local"])),
        "s3" => {
            let servers = S3Servers::start()?;
            let mut cmd = cargo();
            cmd.args([
                "test",
                "-p",
                "imagestore-conformance",
                "--test",
                "s3",
                "--test",
                "s3_races",
                "--test",
                "s3_faults",
            ])
            .env("CI", "true");
            servers.env(&mut cmd);
            run(&mut cmd)
        }
        "remote" => {
            let servers = S3Servers::start()?;
            let mut cmd = cargo();
            cmd.args(["test", "-p", "imagestore-conformance", "--test", "remote"])
                .env("CI", "true");
            servers.env(&mut cmd);
            run(&mut cmd)
        }
        "vmdk" => run(cargo().args([
            "test",
            "-p",
            "imagestore-conformance",
            "--test",
            "vmdk",
            "--test",
            "vmdk_vmfs_sparse",
            "--test",
            "vmdk_se_sparse",
            "--test",
            "crash_vmdk",
        ])),
        "vsphere" => {
            let sim = Vcsim::start()?;
            let mut cmd = cargo();
            cmd.args(["test", "-p", "imagestore-conformance", "--test", "vsphere"])
                .args(["--test", "vsphere_se_sparse"])
                .args(["-p", "imagestore-vsphere", "--test", "vcsim"])
                .args(["-p", "imagestore-server", "--test", "vic_vsphere"])
                .env("CI", "true");
            sim.env(&mut cmd);
            run(&mut cmd)
        }
        other => bail!("unknown backend {other:?} (try: local, s3, vmdk, vsphere)"),
    }
}

/// `cargo xtask vcsim`: a simulator to point a store or a client at by hand.
pub fn vcsim_shell() -> Result<()> {
    let sim = Vcsim::start()?;
    println!(
        "{}/<folder>?allow_http=true\nIMAGESTORE_VSPHERE_USER={} IMAGESTORE_VSPHERE_PASSWORD={}\n\
         datastore folder: {}\npress Enter to stop",
        sim.url,
        vcsim::USER,
        vcsim::PASSWORD,
        sim.dir.display()
    );
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    drop(sim);
    Ok(())
}
