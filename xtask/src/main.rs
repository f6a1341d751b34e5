//! `cargo xtask`: CI checks, conformance runs against real servers, benchmarks and release
//! builds. Run `cargo xtask help` for the commands.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::expect_used,
    missing_debug_implementations
)]

mod bench;
mod ci;
mod deps;
mod differential;
mod dist;
mod fixture;
mod fuzz;
mod s3;
mod sample;
mod schemathesis;
mod testrun;
mod util;
mod vcsim;

use anyhow::{Result, bail};

const HELP: &str = "\
cargo xtask <command>

  ci [--with-dist]   what CI runs: fmt, clippy -D warnings per feature set, tests (their
                     binaries IMAGESTORE_TEST_JOBS at a time, default cores + 1), docs;
                     --with-dist runs the release check (ci-dist) beside them, from the
                     start (what a release runs)
  unused-deps        fail if a workspace crate declares a dependency its code never names
  conformance s3     start moto and SeaweedFS, run the S3 conformance, race and fault tests
  conformance local  run the conformance suite against the local backend
  conformance remote  start moto, run the suite over imagestore+http:// with the server in
                     front of file:// and of s3://
  conformance vmdk   run the conformance suite and the crash test against vmdk://
  conformance vsphere  build and start vcsim, run the conformance suite and the vSphere
                     tests against vsphere://
  differential       our tar reader vs Go's archive/tar (xtask/tarlist, needs Go): the hostile
                     corpus, suite layers, Go's test archives and 3000 generated archives;
                     IMAGESTORE_DIFF_SEED=N replays a run, IMAGESTORE_DIFF_COUNT=N sets the count;
                     disagreeing archives are kept in target/xtask/differential/ (part of ci)
  fuzz [TARGET] [SECONDS]  run the cargo-fuzz targets (tar_ingest, toc_decode, filter_decode)
                     for SECONDS each (default 60); installs cargo-fuzz if missing, runs it
                     with RUSTC_BOOTSTRAP=1; crashes go to fuzz/artifacts/ (not part of ci)
  schemathesis       schemathesis (target/venv or PATH) against VIC's port-layer swagger subset
                     as `imagestore serve` publishes it at /swagger.json, over file:// in a
                     temporary directory; exclusions per operation in xtask/schemathesis.toml
  vcsim              build and start vcsim on loopback; print its URL; stop on Enter
  dist [--deb]       release build of the CLI with every backend (profile `dist`) into
                     target/artifacts/: imagestore-VERSION-TARGET.tar.gz (binary, man pages,
                     completions, sample image, README, LICENSE, CHANGELOG, CycloneDX SBOM), its
                     .debug file, with --deb the Debian package, and SHA256SUMS; reproducible
                     from a commit (SOURCE_DATE_EPOCH = the commit's time)
  ci-dist [--install]  dist --deb and its checks: archive entries and metadata, binary size
                     (<= 25 MB), --version, SBOM, SHA256SUMS, dpkg-deb; a second build from a copy
                     of the sources in another folder must give the same bytes; under CI=true or
                     with --install: dpkg -i, run it, systemd-analyze verify, dpkg -r/-P
  release-check [--baseline-rev REV]  what a release runs before its tag (docs/releasing.md):
                     cargo semver-checks against REV (default: the newest v* tag; installed if
                     missing), cargo publish --dry-run of the library crates, the CHANGELOG entry,
                     and a release build from scratch in its own target folder compared with
                     target/artifacts/ (run `cargo xtask ci-dist` first)
  with-s3 CMD ARGS...  start moto and SeaweedFS, run CMD with their URLs in
                     IMAGESTORE_TEST_S3_MOTO / IMAGESTORE_TEST_S3_SEAWEED, stop them
  bench write        write a >= 1 GiB layer: ours vs `ctr content ingest` vs sha256+fsync
  bench s3 [write|list] against moto: a 1 GiB layer through the backend vs a plain object_store
                     multipart put; listing a store of 10,000 images
  bench gc [local|s3]  collect a store of 5,000 images of which 4,500 are unreferenced, on
                     file:// (vs rm -rf + sync of the same folders) and moto (vs one plain
                     DELETE per image); the dry run must list exactly what the real run deletes
  bench serve        `imagestore serve` with curl: a 1 GiB WriteImage and raw layer download vs
                     docker-registry's blob upload and GET; GetImage from 32 clients (rps, p99)
  bench checkout     checkout of the Debian fixture: ours vs `umoci unpack --rootless` vs tar -x
  bench export       diff of a one-file layer vs full export; diff on a tiny base
  bench import       import the debian fixture (docker-archive): ours vs `skopeo copy` to an
                     OCI layout vs `ctr images import` (needs the fixture's tools, containerd)
  sample-image       rebuild samples/debian-mini from pinned Debian packages (apt-get, dpkg-deb)
  sample-image --check   fail if a fresh build differs from the committed sample
  bench vmdk         rootfs layer as a delta VMDK vs mke2fs -d + qemu-img convert; 1 MiB layer size
  bench vmdk-dir [N...]  a layer of one directory of N files (default 25000 50000) as a delta
                     VMDK vs mke2fs -d + qemu-img convert of the same tree
  fixture debian     debootstrap rootfs -> 3-layer OCI image (umoci), docker/oci archives
                     under target/xtask/fixtures/debian (needs root, debootstrap, umoci, skopeo)
";

fn main() -> Result<()> {
    // Cargo runs this binary as the rustc wrapper of the workspace's crates during a release
    // build (see dist::compile).
    if let Some(root) = std::env::var_os(dist::WRAPPER_VAR) {
        let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
        return dist::rustc_wrapper(&root, &args);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["ci"] => ci::ci(false),
        ["ci", "--with-dist"] => ci::ci(true),
        ["unused-deps"] => deps::unused_deps(),
        ["conformance", backend] => ci::conformance(backend),
        ["vcsim"] => ci::vcsim_shell(),
        ["with-s3", program, args @ ..] => ci::with_s3(program, args),
        ["differential"] => differential::differential(),
        ["fuzz", rest @ ..] => fuzz::fuzz(rest),
        ["dist"] => dist::dist(false),
        ["dist", "--deb"] => dist::dist(true),
        ["ci-dist"] => dist::ci_dist(false),
        ["ci-dist", "--install"] => dist::ci_dist(true),
        ["release-check"] => dist::release_check(None),
        ["release-check", "--baseline-rev", rev] => dist::release_check(Some(rev)),
        ["bench", which, rest @ ..] => bench::run(which, rest),
        ["schemathesis"] => schemathesis::schemathesis(),
        ["sample-image"] => sample::sample_image(false),
        ["sample-image", "--check"] => sample::sample_image(true),
        ["fixture", "debian"] => {
            let f = fixture::debian()?;
            println!("{}", f.oci.display());
            Ok(())
        }
        [] | ["help"] | ["--help"] | ["-h"] => {
            print!("{HELP}");
            Ok(())
        }
        other => bail!("unknown xtask command {other:?}\n\n{HELP}"),
    }
}
