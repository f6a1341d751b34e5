//! `cargo xtask bench <name>`: each benchmark measures ours against a peer in the same run and
//! prints `BENCH name=… ours_s=… peer=… peer_s=… ratio=…` (medians) and `RSS name=… peak_mib=…`.
//! Record results in `docs/benchmarks.md` with the command that produced them.

mod containerd;
mod gc;
mod image;
mod import;
mod s3;
mod serve;
mod vmdk;
mod write;

use anyhow::{Result, bail};

/// Number of timed runs per peer (median reported); `BENCH_RUNS` overrides.
pub fn runs() -> usize {
    std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n >= 1)
        .unwrap_or(3)
}

/// Prints one comparison line.
pub fn report(name: &str, ours: f64, peer: &str, peer_s: f64) {
    println!(
        "BENCH name={name} ours_s={ours:.3} peer={peer} peer_s={peer_s:.3} ratio={:.3}",
        ours / peer_s
    );
}

/// Runs benchmark `which`.
pub fn run(which: &str, rest: &[&str]) -> Result<()> {
    match which {
        "write" => write::bench(),
        "checkout" => image::checkout(),
        "export" => image::export(),
        "import" => import::bench(),
        "vmdk" => vmdk::bench(),
        "vmdk-dir" => vmdk::bench_dir(rest),
        "s3" => s3::bench(rest),
        "gc" => gc::bench(rest),
        "serve" => serve::bench(),
        other => {
            bail!(
                "unknown benchmark {other:?} (try: write, checkout, export, import, vmdk, vmdk-dir, s3, gc, serve)"
            )
        }
    }
}
