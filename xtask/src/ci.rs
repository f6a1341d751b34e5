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

/// Feature sets of the facade whose lints must pass, and whether its tests run with them too.
/// Without the local backend there is nothing for the doctests to open, so those sets run the
/// unit and registry tests only; a single other backend is linted alone, and tested with the
/// rest in the workspace test run, where the members' features give the facade every backend
/// (each extra test build costs CI minutes for little).
const FEATURE_SETS: &[(&[&str], bool)] = &[
    (&["--no-default-features", "--tests"], true),
    (
        &["--no-default-features", "--features", "s3", "--tests"],
        false,
    ),
    (
        &["--no-default-features", "--features", "vmdk", "--tests"],
        false,
    ),
    (
        &["--no-default-features", "--features", "remote", "--tests"],
        false,
    ),
    (&[], true),
    // Every backend together (`full`) is what the workspace clippy and test runs below build,
    // where the members' features unify: it is not checked a second time here.
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

/// Runs every check CI runs.
pub fn ci() -> Result<()> {
    run(cargo().args(["fmt", "--all", "--check"]))?;
    crate::deps::unused_deps()?;
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
    for (set, test) in FEATURE_SETS {
        run(cargo()
            .args(["clippy", "-p", "imagestore", "--all-targets"])
            .args(*set)
            .args(["--", "-D", "warnings"]))?;
        if *test {
            run(cargo().args(["test", "-p", "imagestore"]).args(*set))?;
        }
    }
    fixtures()?;
    let servers = s3_servers()?;
    let vcsim = vcsim_server()?;
    let tarlist = crate::differential::for_ci()?;
    let mut tests = cargo();
    tests
        .args(["test", "--workspace"])
        .env("IMAGESTORE_FIXTURE_DEBIAN", fixture::debian_dir()?);
    if let Some(s) = &servers {
        s.env(&mut tests);
    }
    if let Some(v) = &vcsim {
        v.env(&mut tests);
    }
    // The differential tar test runs with the other tests when the Go lister is built.
    if let Some(t) = &tarlist {
        tests.env(crate::differential::TARLIST_VAR, t).env(
            "IMAGESTORE_DIFF_OUT",
            crate::util::work_dir("differential")?,
        );
    }
    run(&mut tests)?;
    drop(servers);
    drop(vcsim);
    crate::sample::check_in_ci()?;
    // VIC's swagger subset against `imagestore serve`, with schemathesis' standard checks.
    // The CLI binary the workspace test run built serves it (no second build).
    crate::schemathesis::schemathesis_with(&crate::util::target_dir()?.join("debug/imagestore"))?;
    // The fuzz targets are a workspace of their own; type-check them so they never rot.
    // It shares the workspace's target folder, so the dependencies checked for clippy serve.
    run(cargo()
        .args(["check", "--manifest-path", "fuzz/Cargo.toml", "--bins"])
        .env("CARGO_TARGET_DIR", crate::util::target_dir()?))?;
    run(cargo()
        .args(["doc", "--workspace", "--no-deps", "--all-features"])
        .env("RUSTDOCFLAGS", "-D warnings"))?;
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
