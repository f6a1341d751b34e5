//! The `vsphere://` backend against vcsim, beyond the conformance suite: the disks it leaves
//! on the simulator's datastore folder pass the same `qemu-img` / `e2fsck` / `debugfs` checks
//! as `vmdk://` after every layer; a session taken away is logged in again; a VM an image is
//! joined to owns it until the disk leaves; the datastore's faults map to the core errors;
//! credentials never show. `cargo xtask conformance vsphere` starts vcsim and sets
//! `IMAGESTORE_TEST_VSPHERE`, `IMAGESTORE_TEST_VSPHERE_DIR` and the login; under `CI=true`
//! a missing simulator fails.

mod common;

use std::path::PathBuf;

use anyhow::{Result, bail, ensure};
use common::chain::TarB;
use common::*;
use imagestore::{
    Digest, Error, Image, ImageId, ImageStorer, ImageStorerExt, Metadata, OwnerName, StoreName,
    Url, byte_stream,
};
use imagestore_conformance::require_server;
use imagestore_vsphere::datastore::{Datastore, DsPath};
use imagestore_vsphere::vsphere::VsphereStore;
use imagestore_vsphere::vsphere::config::{PASSWORD_ENV, USER_ENV, VsphereConfig};

/// The simulator's base URL and datastore folder, or `None` (skip) outside CI.
fn simulator() -> Option<(String, PathBuf)> {
    let base = require_server("IMAGESTORE_TEST_VSPHERE")?;
    let dir = require_server("IMAGESTORE_TEST_VSPHERE_DIR")?;
    Some((base, PathBuf::from(dir)))
}

fn folder() -> String {
    format!("vcsim-{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
}

async fn open(url: &str) -> Result<VsphereStore> {
    let config = VsphereConfig::from_url(&Url::parse(url)?)?;
    Ok(VsphereStore::open(config).await?)
}

async fn write(store: &dyn ImageStorer, parent: &Image, id: &str, layer: Vec<u8>) -> Result<Image> {
    let sum = Digest::sha256_of(&layer);
    Ok(store
        .write_image(
            parent,
            &ImageId::new(id)?,
            Metadata::new(),
            &sum,
            byte_stream(std::io::Cursor::new(layer)),
        )
        .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disks_on_the_simulator_pass_the_real_tools() -> Result<()> {
    let Some((base, dir)) = simulator() else {
        return Ok(());
    };
    if !have(&["qemu-img", "e2fsck", "debugfs", "mke2fs"]) {
        return Ok(());
    }
    let f = folder();
    let vs = open(&format!("{base}/{f}?allow_http=true")).await?;
    let store = vs.storer();
    let s = StoreName::new("chain")?;
    store.create_image_store(&s).await?;
    let scratch = store.scratch(&s).await?;
    let layers = [
        TarB::default()
            .dir("app", 0o755)?
            .file("app/a.txt", b"aaa\n")?
            .file("etc/motd", b"hi\n")?
            .done()?,
        TarB::default()
            .file("app/b.txt", &vec![7u8; 300_000])?
            .done()?,
        TarB::default().file("etc/.wh.motd", b"")?.done()?,
    ];
    let mut top = scratch;
    let mut chain = vec!["scratch.vmdk".to_owned()];
    let work = tempfile::tempdir()?;
    for (i, layer) in layers.into_iter().enumerate() {
        let id = format!("l{i}");
        top = write(store.as_ref(), &top, &id, layer).await?;
        // The simulator's own folder: what vSphere would hold.
        let disk = dir.join(format!("{f}/VIC/chain/images/{id}/{id}.vmdk"));
        qemu_check(&disk)?;
        chain.insert(0, format!("{id}.vmdk"));
        ensure!(backing_chain(&disk)? == chain, "backing chain after {id}");
        let raw = work.path().join(format!("{id}.raw"));
        to_raw(&disk, &raw)?;
        e2fsck_clean(&raw)?;
        ensure!(debugfs(&raw, "cat /app/a.txt")? == "aaa\n");
        if i == 2 {
            ensure!(!debugfs(&raw, "ls /etc")?.contains("motd"), "whited out");
            ensure!(debugfs(&raw, "stat /app/b.txt")?.contains("Size: 300000"));
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_session_is_logged_in_again() -> Result<()> {
    let Some((base, _)) = simulator() else {
        return Ok(());
    };
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joined_vm_owns_the_image_until_its_disk_leaves() -> Result<()> {
    let Some((base, dir)) = simulator() else {
        return Ok(());
    };
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datastore_faults_map_to_core_errors() -> Result<()> {
    let Some((base, dir)) = simulator() else {
        return Ok(());
    };
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_never_show() -> Result<()> {
    let Some((base, _)) = simulator() else {
        return Ok(());
    };
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn virtual_disks_are_created_copied_queried_and_deleted() -> Result<()> {
    let Some((base, dir)) = simulator() else {
        return Ok(());
    };
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
    let want: Vec<String> = ["b", "a", "scratch"]
        .iter()
        .map(|i| format!("[LocalDS_0] {f}/VIC/disks/images/{i}/{i}.vmdk"))
        .collect();
    ensure!(names == want, "{names:?}");
    ensure!(chain[0].parent.as_deref() == Some(want[1].as_str()));
    ensure!(chain[2].parent.is_none() && chain[2].capacity_kib == 65536);
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
