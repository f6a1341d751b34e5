//! Interop with umoci: a real image (debootstrap rootfs + a file layer + a whiteout layer, built
//! by umoci) written layer by layer through the library; our rootless checkout must equal
//! `umoci unpack --rootless` of the same image.

// A libtest-mimic test binary: what clippy.toml allows in `#[test]` functions is allowed
// here too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use imagestore::layer::checkout::CheckoutOptions;
use imagestore::layer::scratch::SKELETON;
use imagestore::{Digest, ImageId, ImageStorerExt, Metadata, StoreName, byte_stream};
use imagestore_conformance::{support, tree};

/// The layer digests of `oci:latest`, in chain order.
fn layers(oci: &Path) -> Result<Vec<Digest>> {
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(oci.join("index.json"))?)?;
    let manifest = index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == "latest")
        .and_then(|m| m["digest"].as_str())
        .context("no manifest tagged latest")?;
    let blob = |d: &str| {
        oci.join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(blob(manifest))?)?;
    let mut out = Vec::new();
    for l in manifest["layers"]
        .as_array()
        .context("manifest without layers")?
    {
        out.push(Digest::parse(
            l["digest"].as_str().context("layer without digest")?,
        )?);
    }
    Ok(out)
}

fn main() -> std::process::ExitCode {
    let need = support::both(support::debian_fixture(), support::program("umoci"));
    support::run(vec![support::trial_async(
        "checkout_equals_umoci_unpack",
        need,
        2,
        |(fixture, ())| checkout_equals_umoci_unpack(fixture),
    )])
}

async fn checkout_equals_umoci_unpack(fixture: std::path::PathBuf) -> Result<()> {
    let oci = fixture.join("oci");
    let work = tempfile::tempdir()?;
    let store =
        imagestore::open(&format!("file://{}", work.path().join("store").display())).await?;
    let s = StoreName::new("interop")?;
    store.create_image_store(&s).await?;
    let mut top = store.scratch(&s).await?;
    for (i, digest) in layers(&oci)?.iter().enumerate() {
        let f = tokio::fs::File::open(oci.join("blobs/sha256").join(digest.hex())).await?;
        top = store
            .write_image(
                &top,
                &ImageId::new(format!("layer{i}"))?,
                Metadata::new(),
                digest,
                byte_stream(f),
            )
            .await?;
    }
    ensure!(top.depth == 3);

    let ours = work.path().join("ours");
    let report = store
        .checkout(&s, &top.id, &ours, &CheckoutOptions { rootless: true })
        .await?;
    ensure!(report.entries > 5000, "{report:?}");

    let bundle = work.path().join("bundle");
    let status = Command::new("umoci")
        .args(["unpack", "--rootless", "--image"])
        .arg(format!("{}:latest", oci.display()))
        .arg(&bundle)
        .status()?;
    if !status.success() {
        bail!("umoci unpack failed: {status}");
    }
    let left = tree::walk(&ours)?;
    let right = tree::walk(&bundle.join("rootfs"))?;
    // Our chain starts at scratch: VIC's skeleton may add what the image lacks.
    let skeleton: BTreeSet<String> = SKELETON
        .iter()
        .map(|(p, ..)| p.trim_end_matches('/').to_owned())
        .collect();
    let diffs = tree::differences(&left, &right, &skeleton);
    ensure!(
        diffs.is_empty(),
        "{} differences, first: {:#?}",
        diffs.len(),
        &diffs[..diffs.len().min(20)]
    );
    ensure!(
        !left.nodes.contains_key("etc/motd"),
        "the whiteout layer deleted /etc/motd"
    );
    ensure!(
        left.nodes
            .get("etc/layer2.txt")
            .is_some_and(|n| n.kind == 'f')
    );
    ensure!(!left.links.is_empty(), "the rootfs has hardlinks");
    Ok(())
}
