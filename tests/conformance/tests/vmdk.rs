//! The conformance suite against the `vmdk://` backend, on a datastore folder in a temporary
//! directory. The backend writes ext4 in-process; the hooks check its disks with `qemu-img`.

// A libtest-mimic test binary: what clippy.toml allows in `#[test]` functions is allowed
// here too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod disk;

fn main() -> anyhow::Result<std::process::ExitCode> {
    disk::vmdk_suite("")
}
