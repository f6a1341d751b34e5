//! The conformance suite against the `vmdk://` backend writing ESXi's native seSparse
//! delta disks (`format=seSparse`): scratch is a flat base disk and a first delta, every
//! layer an SEsparse delta; the hooks check each image's chain with `qemu-img`.

// A libtest-mimic test binary: what clippy.toml allows in `#[test]` functions is allowed
// here too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod disk;

fn main() -> anyhow::Result<std::process::ExitCode> {
    disk::vmdk_suite("?format=seSparse")
}
