//! ImageJoin over HTTP on `vsphere://`, against vcsim: `POST /storage/{store}/info/{id}` with
//! a VM's name as the handle attaches a new child disk of the image's disk to that VM, the VM
//! then holds the image (DeleteImage answers 423), and an unknown VM or image is 404.
//! `cargo xtask conformance vsphere` (and `cargo xtask ci`) start vcsim and set
//! `IMAGESTORE_TEST_VSPHERE`, `IMAGESTORE_TEST_VSPHERE_DIR` and the login; under `CI=true`
//! a missing simulator fails.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, ensure};
use imagestore::{ImageId, ImageStorerExt, Metadata, OwnerName, StoreName};
use imagestore_server::{ServeConfig, Server};
use imagestore_test_support as support;
use serde_json::{Value, json};

/// The VM the test joins; the backend's own vcsim tests use the host's VMs.
const VM: &str = "DC0_C0_RP0_VM0";

/// The simulator's base URL and datastore folder.
fn simulator() -> support::Need<(String, PathBuf)> {
    const START: &str = "start vcsim with `cargo xtask conformance vsphere`";
    let base = support::env("IMAGESTORE_TEST_VSPHERE", START)?;
    let dir = support::env("IMAGESTORE_TEST_VSPHERE_DIR", START)?;
    Ok((base, PathBuf::from(dir)))
}

/// One tar holding file `a`.
fn layer() -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(1);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, "a", &b"1"[..])?;
    Ok(b.into_inner()?)
}

async fn post_join(
    http: &reqwest::Client,
    base: &str,
    image: &str,
    body: Value,
) -> Result<(u16, Value)> {
    let r = http
        .post(format!("{base}/storage/join/info/{image}"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await?;
    let status = r.status().as_u16();
    let text = r.text().await?;
    let json = serde_json::from_str(&text).with_context(|| format!("{status}: {text}"))?;
    Ok((status, json))
}

async fn image_join_attaches_a_child_disk((base, dir): (String, PathBuf)) -> Result<()> {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
    let folder = format!("serve-join-{:x}", nanos & 0xffff_ffff_ffff);
    let storer = imagestore::open(&format!(
        "{base}/{folder}?allow_http=true&capacity_kib=65536"
    ))
    .await?;
    let s = StoreName::new("join")?;
    storer.create_image_store(&s).await?;
    let scratch = storer.scratch(&s).await?;
    let img = storer
        .write_image_bytes(&scratch, &ImageId::new("base")?, Metadata::new(), layer()?)
        .await?;

    let mut config = ServeConfig::new(storer.clone());
    config.listen = "127.0.0.1:0".parse()?;
    let server = Server::bind(config).await?;
    let url = format!("http://{}", server.local_addr());
    tokio::spawn(server.run(std::future::pending()));
    imagestore_core::tls::install_crypto_provider();
    let http = reqwest::Client::new();

    let (status, body) = post_join(
        &http,
        &url,
        "base",
        json!({"handle": VM, "deltaID": "container-1", "imageID": "base", "repoName": "r"}),
    )
    .await?;
    ensure!(status == 200, "{status}: {body}");
    ensure!(body == json!({"handle": VM}), "{body}");
    let child = dir.join(format!(
        "{folder}/VIC/join/containers/container-1/container-1.vmdk"
    ));
    ensure!(child.exists(), "vSphere created {}", child.display());
    let owners = storer.owners(&img.locator).await?;
    ensure!(
        owners.contains(&OwnerName::new(format!("vm-{VM}"))?),
        "{owners:?}"
    );

    // The VM holds the image: VIC's branch delete refuses it.
    let keep = "http%3A%2F%2Fx%2Fstorage%2Fimages%2Fjoin%2Fscratch";
    let r = http
        .delete(format!("{url}/storage/join/info/base?keepNodes={keep}"))
        .send()
        .await?;
    let status = r.status().as_u16();
    ensure!(
        status == 423,
        "delete of a joined image: {status} {}",
        r.text().await?
    );

    // Unknown VM and unknown image: 404 with an Error body; nothing attached.
    let (status, body) = post_join(
        &http,
        &url,
        "base",
        json!({"handle": "no-such-vm", "deltaID": "container-2"}),
    )
    .await?;
    ensure!(status == 404, "{status}: {body}");
    ensure!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("no-such-vm")),
        "{body}"
    );
    ensure!(
        !dir.join(format!("{folder}/VIC/join/containers/container-2"))
            .exists(),
        "nothing was created for an unknown VM"
    );
    let (status, body) = post_join(
        &http,
        &url,
        "nope",
        json!({"handle": VM, "deltaID": "container-3"}),
    )
    .await?;
    ensure!(status == 404, "{status}: {body}");
    Ok(())
}

fn main() -> ExitCode {
    support::run(vec![support::trial_async(
        "image_join_attaches_a_child_disk",
        simulator(),
        2,
        image_join_attaches_a_child_disk,
    )])
}
