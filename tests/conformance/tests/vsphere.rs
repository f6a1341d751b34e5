//! The conformance suite against the `vsphere://` backend on vcsim (see `disk/vsphere.rs`),
//! in the delta format the backend picks from the datastore: vcsim's datastore reports the
//! file system type `OTHER`, for which it writes vmfsSparse.

// A libtest-mimic test binary: what clippy.toml allows in `#[test]` functions is allowed
// here too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod disk;

fn main() -> anyhow::Result<std::process::ExitCode> {
    disk::vsphere::vsphere_suite("")
}
