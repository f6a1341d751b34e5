//! The conformance suite against the `s3://` backend, on two real servers: moto and SeaweedFS.
//! Their URLs come from `IMAGESTORE_TEST_S3_MOTO` and `IMAGESTORE_TEST_S3_SEAWEED`, set by
//! `cargo xtask conformance s3` (which starts both); under `CI=true` a missing one fails.

// A libtest-mimic test binary: what clippy.toml allows in `#[test]` functions is allowed
// here too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use std::process::ExitCode;

use imagestore_conformance::{support, trials};

fn main() -> ExitCode {
    let moto = common::test_url("IMAGESTORE_TEST_S3_MOTO", &[("lease_ttl", "5s")]);
    let seaweed = common::test_url("IMAGESTORE_TEST_S3_SEAWEED", &[("lease_ttl", "10s")]);
    let mut all = trials("moto::", moto, common::ctx);
    all.extend(trials("seaweed::", seaweed, common::ctx));
    support::run(all)
}
