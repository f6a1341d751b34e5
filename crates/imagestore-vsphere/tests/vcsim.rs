//! The `vsphere://` backend against vcsim, beyond the conformance suite: the disks it leaves
//! on the simulator's datastore folder pass the same `qemu-img` / `e2fsck` / `debugfs` checks
//! as `vmdk://` after every layer; a session taken away is logged in again; a VM an image is
//! joined to owns it until the disk leaves; the datastore's faults map to the core errors;
//! transient network faults are retried where a request may be resent and never leave half
//! an image; credentials never show. `cargo xtask conformance vsphere` starts vcsim and sets
//! `IMAGESTORE_TEST_VSPHERE`, `IMAGESTORE_TEST_VSPHERE_DIR` and the login; under `CI=true`
//! a missing simulator fails.

// A libtest-mimic test binary: what clippy.toml allows in `#[test]` functions is allowed
// here too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Result, bail, ensure};
use common::chain::TarB;
use common::store_chain::{layers_pass_the_real_tools, write};
use imagestore::{
    Digest, Error, Image, ImageId, ImageStorer, ImageStorerExt, Metadata, OwnerName, StoreName,
    Url, byte_stream,
};
use imagestore_conformance::faults;
use imagestore_conformance::support;
use imagestore_vsphere::datastore::{DsPath, Storage};
use imagestore_vsphere::vmdk::format::DiskFormat;
use imagestore_vsphere::vsphere::VsphereStore;
use imagestore_vsphere::vsphere::config::{PASSWORD_ENV, USER_ENV, VsphereConfig};
use tokio::io::AsyncReadExt;

/// The simulator's base URL and datastore folder, as `cargo xtask conformance vsphere`
/// passes them.
fn simulator() -> support::Need<(String, PathBuf)> {
    const START: &str = "start vcsim with `cargo xtask conformance vsphere`";
    let base = support::env("IMAGESTORE_TEST_VSPHERE", START)?;
    let dir = support::env("IMAGESTORE_TEST_VSPHERE_DIR", START)?;
    Ok((base, PathBuf::from(dir)))
}

fn folder() -> String {
    format!("vcsim-{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
}

async fn open(url: &str) -> Result<VsphereStore> {
    let config = VsphereConfig::from_url(&Url::parse(url)?)?;
    Ok(VsphereStore::open(config).await?)
}

/// A chain written in `format` (`None`: the one the store picks for the simulator's
/// datastore, vmfsSparse) passes the real tools after every layer, with the create types
/// `qemu-img` reports; in a native format the base disk is the simulator's own.
async fn disks_on_the_simulator_pass_the_real_tools(
    (base, dir): (String, PathBuf),
    format: Option<DiskFormat>,
) -> Result<()> {
    let f = folder();
    let query = format.map(|f| format!("&format={f}")).unwrap_or_default();
    let vs = open(&format!("{base}/{f}?allow_http=true{query}")).await?;
    let format = format.unwrap_or(DiskFormat::VmfsSparse);
    let root = dir.join(&f);
    layers_pass_the_real_tools(vs.storer().as_ref(), &root, format).await?;
    if format.is_native() {
        // The simulator made the base disk: its flat extent is the empty file vcsim writes.
        let flat = root.join("VIC/chain/images/scratch/scratch-base-flat.vmdk");
        ensure!(std::fs::metadata(&flat)?.len() == 0, "vcsim's flat extent");
    }
    Ok(())
}

async fn a_lost_session_is_logged_in_again((base, _): (String, PathBuf)) -> Result<()> {
    let url = format!("{base}/{}?allow_http=true&capacity_kib=65536", folder());
    let vs = open(&url).await?;
    let s = StoreName::new("relogin")?;
    vs.store().create_image_store(&s).await?;
    let soap = vs.datastore().soap();
    let before = soap.logins();
    let key = tokio::task::block_in_place(|| soap.session_key())?;
    // Another client takes the session away, as an administrator or an expiry would.
    let admin = open(&url).await?;
    tokio::task::block_in_place(|| admin.datastore().soap().terminate_session(&key))?;
    let listed = vs.store().list_image_stores().await?;
    ensure!(listed.iter().any(|u| u.as_str().ends_with("/relogin")));
    ensure!(soap.logins() == before + 1, "one new login");
    ensure!(tokio::task::block_in_place(|| soap.session_key())? != key);
    Ok(())
}

async fn a_joined_vm_owns_the_image_until_its_disk_leaves(
    (base, dir): (String, PathBuf),
) -> Result<()> {
    let f = folder();
    let vs = open(&format!("{base}/{f}?allow_http=true&capacity_kib=65536")).await?;
    let store = vs.storer();
    let s = StoreName::new("join")?;
    store.create_image_store(&s).await?;
    let scratch = store.scratch(&s).await?;
    let img = write(
        store.as_ref(),
        &scratch,
        "base",
        TarB::default().file("a", b"1")?.done()?,
    )
    .await?;
    let disk = ImageId::new("container-1")?;
    let joined = vs.join(&s, &img.id, "DC0_H0_VM0", &disk).await?;
    ensure!(
        joined.parent.ends_with("VIC/join/images/base/base.vmdk"),
        "{joined:?}"
    );
    let child = dir.join(format!(
        "{f}/VIC/join/containers/container-1/container-1.vmdk"
    ));
    ensure!(child.exists(), "vSphere created the child disk");
    let owners = store.owners(&img.locator).await?;
    ensure!(
        owners.contains(&OwnerName::new("vm-DC0_H0_VM0")?),
        "{owners:?}"
    );
    match store.delete_image(&img).await {
        Err(Error::ImageInUse { users, .. }) => {
            ensure!(users.iter().any(|u| u == "vm DC0_H0_VM0"), "{users:?}")
        }
        other => bail!("delete of a joined image gave {other:?}"),
    }
    // A second VM joined to the same image, then both leave.
    let other = vs
        .join(&s, &img.id, "DC0_H0_VM1", &ImageId::new("container-2")?)
        .await?;
    ensure!(store.owners(&img.locator).await?.len() == 2);
    vs.leave(&joined).await?;
    vs.leave(&other).await?;
    ensure!(!child.exists(), "the child disk was destroyed");
    ensure!(store.owners(&img.locator).await?.is_empty());
    store.delete_image(&img).await?;
    ensure!(
        vs.join(&s, &img.id, "DC0_H0_VM0", &disk).await.is_err(),
        "a deleted image cannot be joined"
    );
    match vs.join(&s, &scratch.id, "no-such-vm", &disk).await {
        Err(Error::NotFound { .. }) => {}
        other => bail!("joining a missing VM gave {other:?}"),
    }
    Ok(())
}

async fn datastore_faults_map_to_core_errors((base, dir): (String, PathBuf)) -> Result<()> {
    let f = folder();
    let vs = open(&format!("{base}/{f}?allow_http=true&capacity_kib=65536")).await?;
    let ds = vs.datastore();
    tokio::task::block_in_place(|| -> Result<()> {
        let p = DsPath::parse("x/y")?;
        ensure!(ds.mkdir(&DsPath::parse("x")?)?, "created");
        ensure!(!ds.mkdir(&DsPath::parse("x")?)?, "exists already");
        ensure!(
            ds.mkdir(&DsPath::parse("nope/child")?).is_err(),
            "missing parent"
        );
        ensure!(ds.list(&DsPath::parse("missing")?)?.is_empty());
        ensure!(ds.read(&p)?.is_none() && ds.stat(&p)?.is_none());
        ensure!(ds.create_new(&p, b"one")?);
        ensure!(
            !ds.create_new(&p, b"two")?,
            "create_new keeps an existing file"
        );
        ensure!(ds.read(&p)?.as_deref() == Some(&b"one"[..]));
        ds.write(&p, b"three")?;
        ensure!(ds.read(&p)?.as_deref() == Some(&b"three"[..]));
        ensure!(ds.stat(&p)?.is_some_and(|s| !s.is_dir && s.size == 5));
        ensure!(ds.stat(&DsPath::parse("x")?)?.is_some_and(|s| s.is_dir));
        ensure!(
            ds.list(&DsPath::parse("x")?)? == vec!["y".to_owned()],
            "no temporaries left"
        );
        // HTTP DELETE deletes nothing on vSphere's /folder; the file manager does.
        ensure!(ds.remove_file(&p)?);
        ensure!(!dir.join(&f).join("x/y").exists());
        ensure!(!ds.remove_file(&p)?, "already gone");
        ensure!(
            ds.remove_all(&DsPath::root()).is_err(),
            "the folder itself is refused"
        );
        ensure!(dir.join(&f).exists());
        Ok(())
    })?;
    Ok(())
}

async fn credentials_never_show((base, _): (String, PathBuf)) -> Result<()> {
    let password = std::env::var(PASSWORD_ENV)?;
    let url = format!("{base}/{}?allow_http=true", folder());
    let vs = open(&url).await?;
    ensure!(!format!("{vs:?}").contains(&password), "Debug of the store");
    let user = std::env::var(USER_ENV)?;
    let config = VsphereConfig::parse(
        &Url::parse(&url)?,
        Some(user),
        Some("wrong-password".to_owned()),
    )?;
    match VsphereStore::open(config).await {
        Err(e) => {
            let msg = e.to_string();
            ensure!(
                msg.contains("login") && !msg.contains("wrong-password"),
                "{msg}"
            );
        }
        Ok(_) => bail!("a wrong password was accepted"),
    }
    let with_user = url.replacen("vsphere://", &format!("vsphere://u:{password}@"), 1);
    match imagestore::open(&with_user).await {
        Err(e) => ensure!(!e.to_string().contains(&password), "{e}"),
        Ok(_) => bail!("credentials in the URL were accepted"),
    }
    Ok(())
}

async fn virtual_disks_are_created_copied_queried_and_deleted(
    (base, dir): (String, PathBuf),
) -> Result<()> {
    let f = folder();
    let vs = open(&format!("{base}/{f}?allow_http=true&capacity_kib=65536")).await?;
    // The disk chain of an image, as vSphere reports it, is the chain the store records.
    let store = vs.storer();
    let s = StoreName::new("disks")?;
    store.create_image_store(&s).await?;
    let scratch = store.scratch(&s).await?;
    let a = write(
        store.as_ref(),
        &scratch,
        "a",
        TarB::default().file("x", b"1")?.done()?,
    )
    .await?;
    let b = write(
        store.as_ref(),
        &a,
        "b",
        TarB::default().file("y", b"2")?.done()?,
    )
    .await?;
    let chain = vs.disk_chain(&s, &b.id).await?;
    let names: Vec<&str> = chain.iter().map(|d| d.name.as_str()).collect();
    // vcsim's datastore is `OTHER`, where the store writes vmfsSparse deltas on a base disk.
    let kind = tokio::task::block_in_place(|| vs.datastore().datastore_kind())?;
    ensure!(
        kind.fs_type == "OTHER" && kind.vmfs_major.is_none(),
        "{kind:?}"
    );
    ensure!(kind.delta_format()? == DiskFormat::VmfsSparse);
    let mut want: Vec<String> = ["b", "a", "scratch"]
        .iter()
        .map(|i| format!("[LocalDS_0] {f}/VIC/disks/images/{i}/{i}.vmdk"))
        .collect();
    want.push(format!(
        "[LocalDS_0] {f}/VIC/disks/images/scratch/scratch-base.vmdk"
    ));
    ensure!(names == want, "{names:?}");
    ensure!(chain[0].parent.as_deref() == Some(want[1].as_str()));
    ensure!(chain[3].parent.is_none() && chain[3].capacity_kib == 65536);
    // The virtual disk manager's own disks.
    let ds = vs.datastore();
    tokio::task::block_in_place(|| -> Result<()> {
        ensure!(ds.mkdir(&DsPath::parse("vd")?)?);
        let one = DsPath::parse("vd/one.vmdk")?;
        let two = DsPath::parse("vd/two.vmdk")?;
        ds.create_disk(&one, 1024)?;
        ensure!(dir.join(&f).join("vd/one.vmdk").exists());
        match ds.create_disk(&one, 1024) {
            Err(Error::AlreadyExists { .. }) => {}
            other => bail!("creating an existing disk gave {other:?}"),
        }
        ds.copy_disk(&one, &two)?;
        ensure!(dir.join(&f).join("vd/two.vmdk").exists());
        ensure!(ds.delete_disk(&one)?);
        ensure!(!ds.delete_disk(&one)?, "already gone");
        ensure!(!dir.join(&f).join("vd/one.vmdk").exists());
        ensure!(ds.delete_disk(&two)?);
        Ok(())
    })?;
    Ok(())
}

/// Requests the client may send again after a fault: file transfers (every `PUT` goes to a
/// temporary name) and the SOAP methods that only read.
fn resend_safe(head: &[u8], body: &[u8]) -> bool {
    if head.starts_with(b"GET ") || head.starts_with(b"HEAD ") || head.starts_with(b"PUT ") {
        return true;
    }
    let body = String::from_utf8_lossy(body);
    [
        "<RetrievePropertiesEx>",
        "<SearchDatastore_Task>",
        "<FindByInventoryPath>",
        "<RetrieveServiceContent>",
        "<Login>",
    ]
    .iter()
    .any(|m| body.contains(m))
}

/// `base` (`vsphere://host:port/dc/ds`) pointed at a fault proxy in front of its server.
async fn through_proxy(base: &str, plan: faults::Plan) -> Result<(String, Arc<faults::Counts>)> {
    let u = Url::parse(base)?;
    let upstream = format!(
        "{}:{}",
        u.host_str().unwrap_or("127.0.0.1"),
        u.port().unwrap_or(443)
    );
    let counts = Arc::new(faults::Counts::default());
    let port = faults::start(upstream, counts.clone(), plan).await?;
    let mut proxied = u.clone();
    proxied
        .set_port(Some(port))
        .map_err(|()| anyhow::anyhow!("bad port"))?;
    Ok((proxied.to_string(), counts))
}

/// The images of `s` seen through a clean connection: every one verifies (its export reads
/// back, its parent exists) and the usage counter agrees with them.
async fn check_whole(store: &dyn ImageStorer, s: &StoreName) -> Result<Vec<Image>> {
    let images = store.list_images(s, &[]).await?;
    let mut total = 0;
    for img in &images {
        let mut tar = Vec::new();
        store
            .export(s, &img.id, None, &imagestore::FilterSpec::all(), true)
            .await?
            .read_to_end(&mut tar)
            .await?;
        if let Some(p) = &img.parent {
            ensure!(
                store.get_image(s, p).await.is_ok(),
                "{} has a dangling parent",
                img.id
            );
        }
        total += store.image_layer_storage_usage(s, &img.id).await?;
    }
    let usage = store.image_storage_usage(s).await?;
    ensure!(
        usage == total,
        "usage {usage} disagrees with the images' {total}: {:?}",
        images.iter().map(|i| (&i.id, i.size)).collect::<Vec<_>>()
    );
    Ok(images)
}

async fn transient_faults_are_retried_and_never_leave_half_an_image(
    (base, _): (String, PathBuf),
) -> Result<()> {
    let f = folder();
    let opts = "allow_http=true&capacity_kib=65536&max_retries=10";
    let s = StoreName::new("faults")?;
    let layer = |i: usize| {
        TarB::default()
            .file(&format!("d/f{i}"), &vec![i as u8; 70_000 + i * 1000])
            .and_then(TarB::done)
    };

    // Faults only where a request may be sent again: every operation succeeds.
    let safe = faults::Plan {
        percent: 25,
        eligible: resend_safe,
    };
    let (proxied, counts) = through_proxy(&base, safe).await?;
    let vs = open(&format!("{proxied}/{f}?{opts}")).await?;
    let store = vs.storer();
    store.create_image_store(&s).await?;
    let mut top = store.scratch(&s).await?;
    for i in 0..3 {
        top = write(store.as_ref(), &top, &format!("l{i}"), layer(i)?).await?;
    }
    let rw = ImageId::new("rw")?;
    store.create_writable(&top, &rw).await?;
    store
        .import(
            &s,
            &rw,
            &imagestore::FilterSpec::all(),
            byte_stream(std::io::Cursor::new(layer(9)?)),
        )
        .await?;
    store
        .commit_writable(&s, &rw, &ImageId::new("committed")?, Metadata::new())
        .await?;
    let mut tar = Vec::new();
    store
        .export(&s, &top.id, None, &imagestore::FilterSpec::all(), true)
        .await?
        .read_to_end(&mut tar)
        .await?;
    eprintln!("resend-safe faults: {counts}");
    ensure!(counts.faults() > 0, "the proxy injected no faults");
    drop(vs);
    let clean = open(&format!("{base}/{f}?{opts}")).await?;
    let images = check_whole(clean.storer().as_ref(), &s).await?;
    ensure!(images.len() == 4, "all four images are there: {images:?}");

    // Faults anywhere: writes and deletes may fail, but each leaves its whole result or
    // nothing, and the usage counter is right once read again.
    let (proxied, counts) = through_proxy(&base, faults::Plan::all(8)).await?;
    let mut outcomes = Vec::new();
    match open(&format!("{proxied}/{f}?{opts}")).await {
        Ok(vs) => {
            let store = vs.storer();
            let parent = clean.storer().get_image(&s, &ImageId::new("l2")?).await?;
            for i in 10..16 {
                let bytes = layer(i)?;
                let sum = Digest::sha256_of(&bytes);
                let r = write(store.as_ref(), &parent, &format!("x{i}"), bytes).await;
                let mut deleted = false;
                match &r {
                    Err(e) => eprintln!("write x{i}: {e}"),
                    // Every other image is deleted again, through the faults too.
                    Ok(img) if i % 2 == 1 => match store.delete_image(img).await {
                        Ok(_) => deleted = true,
                        Err(e) => eprintln!("delete x{i}: {e}"),
                    },
                    Ok(_) => {}
                }
                outcomes.push((ImageId::new(format!("x{i}"))?, sum, deleted));
            }
        }
        Err(e) => eprintln!("open through the proxy failed: {e}"),
    }
    eprintln!("faults anywhere: {counts}");
    let fresh = open(&format!("{base}/{f}?{opts}")).await?;
    let store = fresh.storer();
    let images = check_whole(store.as_ref(), &s).await?;
    for (id, sum, deleted) in &outcomes {
        match images.iter().find(|i| &i.id == id) {
            Some(_) if *deleted => bail!("{id} was deleted but is still there"),
            Some(img) => ensure!(img.sum.as_ref() == Some(sum), "{id} has another sum"),
            None => ensure!(
                matches!(store.get_image(&s, id).await, Err(Error::NotFound { .. })),
                "{id} is listed nowhere but readable"
            ),
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    support::run(vec![
        support::trial_async(
            "disks_on_the_simulator_pass_the_real_tools",
            support::both(
                simulator(),
                support::programs(&["qemu-img", "e2fsck", "debugfs"]),
            ),
            2,
            |(v, ())| disks_on_the_simulator_pass_the_real_tools(v, None),
        ),
        support::trial_async(
            "se_sparse_disks_on_the_simulator_pass_the_real_tools",
            support::both(
                simulator(),
                support::programs(&["qemu-img", "e2fsck", "debugfs"]),
            ),
            2,
            |(v, ())| disks_on_the_simulator_pass_the_real_tools(v, Some(DiskFormat::SeSparse)),
        ),
        support::trial_async(
            "monolithic_sparse_disks_on_the_simulator_pass_the_real_tools",
            support::both(
                simulator(),
                support::programs(&["qemu-img", "e2fsck", "debugfs"]),
            ),
            2,
            |(v, ())| {
                disks_on_the_simulator_pass_the_real_tools(v, Some(DiskFormat::MonolithicSparse))
            },
        ),
        support::trial_async(
            "a_lost_session_is_logged_in_again",
            simulator(),
            2,
            a_lost_session_is_logged_in_again,
        ),
        support::trial_async(
            "a_joined_vm_owns_the_image_until_its_disk_leaves",
            simulator(),
            2,
            a_joined_vm_owns_the_image_until_its_disk_leaves,
        ),
        support::trial_async(
            "datastore_faults_map_to_core_errors",
            simulator(),
            2,
            datastore_faults_map_to_core_errors,
        ),
        support::trial_async(
            "credentials_never_show",
            simulator(),
            2,
            credentials_never_show,
        ),
        support::trial_async(
            "virtual_disks_are_created_copied_queried_and_deleted",
            simulator(),
            2,
            virtual_disks_are_created_copied_queried_and_deleted,
        ),
        support::trial_async(
            "transient_faults_are_retried_and_never_leave_half_an_image",
            simulator(),
            2,
            transient_faults_are_retried_and_never_leave_half_an_image,
        ),
    ])
}
