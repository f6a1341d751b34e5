//! `cargo xtask fixture debian`: a real three-layer image, generated (never committed).
//!
//! * `rootfs/`: `debootstrap --variant=minbase bookworm` (needs root and the Debian mirror);
//! * `oci/`: an OCI layout built with umoci: the rootfs as one layer, a file layer adding
//!   `/etc/layer2.txt`, a whiteout layer deleting `/etc/motd`; tag `latest`;
//! * `docker.tar`, `oci.tar`: the same image as a docker-archive and an oci-archive (skopeo);
//! * `layers/`: the three layer blobs in chain order as `0.tar.gz`, `1.tar.gz`, `2.tar.gz`.
//!
//! Everything is reused when present (`.done` markers), so CI pays for it once per run.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::util::{need, run, work_dir};

/// The Debian suite and mirror used for the rootfs.
const SUITE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";

/// Paths of the generated Debian fixture.
#[allow(dead_code)]
pub struct Debian {
    /// The unpacked rootfs.
    pub rootfs: PathBuf,
    /// The OCI layout (tag `latest`).
    pub oci: PathBuf,
    /// docker-archive of the image.
    pub docker_archive: PathBuf,
    /// oci-archive of the image.
    pub oci_archive: PathBuf,
    /// The layer blobs in chain order.
    pub layers: Vec<PathBuf>,
}

/// The fixture directory.
pub fn debian_dir() -> Result<PathBuf> {
    work_dir("fixtures/debian")
}

/// Generates (or reuses) the Debian fixture.
pub fn debian() -> Result<Debian> {
    let dir = debian_dir()?;
    let rootfs = dir.join("rootfs");
    if !dir.join("rootfs.done").exists() {
        need("debootstrap", "debootstrap")?;
        let _ = std::fs::remove_dir_all(&rootfs);
        run(Command::new("debootstrap")
            .args(["--variant=minbase", SUITE])
            .arg(&rootfs)
            .arg(MIRROR))
        .context("debootstrap needs root and the Debian mirror")?;
        std::fs::write(dir.join("rootfs.done"), b"")?;
    }
    let oci = dir.join("oci");
    if !dir.join("oci.done").exists() {
        need("umoci", "umoci")?;
        need("skopeo", "skopeo")?;
        let _ = std::fs::remove_dir_all(&oci);
        let image = format!("{}:base", oci.display());
        run(Command::new("umoci").args(["init", "--layout"]).arg(&oci))?;
        run(Command::new("umoci").args(["new", "--image", &image]))?;
        run(Command::new("umoci")
            .args(["insert", "--image", &image])
            .arg(&rootfs)
            .arg("/"))?;
        let l2 = dir.join("layer2.txt");
        std::fs::write(&l2, b"hello from layer 2\n")?;
        run(Command::new("umoci")
            .args(["insert", "--image", &image])
            .arg(&l2)
            .arg("/etc/layer2.txt"))?;
        run(Command::new("umoci").args(["insert", "--image", &image, "--whiteout", "/etc/motd"]))?;
        run(Command::new("umoci").args([
            "config",
            "--image",
            &image,
            "--config.cmd",
            "/bin/bash",
        ]))?;
        run(Command::new("umoci").args(["tag", "--image", &image, "latest"]))?;
        for f in ["docker.tar", "oci.tar"] {
            let _ = std::fs::remove_file(dir.join(f));
        }
        let src = format!("oci:{}:latest", oci.display());
        run(Command::new("skopeo").args([
            "copy",
            &src,
            &format!(
                "docker-archive:{}:test/rootfs:latest",
                dir.join("docker.tar").display()
            ),
        ]))?;
        run(Command::new("skopeo").args([
            "copy",
            &src,
            &format!("oci-archive:{}:latest", dir.join("oci.tar").display()),
        ]))?;
        extract_layers(&oci, &dir.join("layers"))?;
        std::fs::write(dir.join("oci.done"), b"")?;
    }
    let layers = (0..3)
        .map(|i| dir.join("layers").join(format!("{i}.tar.gz")))
        .collect();
    Ok(Debian {
        rootfs,
        oci,
        docker_archive: dir.join("docker.tar"),
        oci_archive: dir.join("oci.tar"),
        layers,
    })
}

/// Copies the layer blobs of `oci:latest` in chain order into `out/<n>.tar.gz`.
fn extract_layers(oci: &Path, out: &Path) -> Result<()> {
    let _ = std::fs::remove_dir_all(out);
    std::fs::create_dir_all(out)?;
    let blob = |digest: &str| -> Result<PathBuf> {
        let (alg, hex) = digest.split_once(':').context("digest without algorithm")?;
        Ok(oci.join("blobs").join(alg).join(hex))
    };
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(oci.join("index.json"))?)?;
    let manifest_digest = index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == "latest")
        .and_then(|m| m["digest"].as_str())
        .context("no manifest tagged latest")?;
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob(manifest_digest)?)?)?;
    let layers: Vec<&str> = manifest["layers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["digest"].as_str())
        .collect();
    if layers.len() != 3 {
        bail!("expected 3 layers, found {}", layers.len());
    }
    for (i, d) in layers.iter().enumerate() {
        std::fs::copy(blob(d)?, out.join(format!("{i}.tar.gz")))?;
    }
    Ok(())
}
