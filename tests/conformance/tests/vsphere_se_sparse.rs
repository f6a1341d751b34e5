//! The conformance suite against the `vsphere://` backend on vcsim (see `disk/vsphere.rs`),
//! writing seSparse delta disks (`format=seSparse`, what a VMFS 6 datastore gets).

// A libtest-mimic test binary: what clippy.toml allows in `#[test]` functions is allowed
// here too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod disk;

fn main() -> anyhow::Result<std::process::ExitCode> {
    disk::vsphere::vsphere_suite("&format=seSparse")
}
