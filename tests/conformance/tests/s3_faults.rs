//! Faults between the store and the server: the conformance crate's fault proxy
//! ([`imagestore_conformance::faults`]) at random resets connections (before forwarding a
//! request, or after forwarding it and before answering) and answers `500` (without
//! forwarding, or after the server applied the request). Writes, deletes (one by one and in
//! batches) and commits of writable layers run through it; afterwards, through a clean
//! connection, every write must be either committed and verifiable or absent, never half
//! visible, and a fresh instance must leave the store clean.

// A libtest-mimic test binary: what clippy.toml allows in `#[test]` functions is allowed
// here too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Result, ensure};
use imagestore::{Digest, FilterSpec, ImageId, ImageStorer, ImageStorerExt, Metadata, Url};
use imagestore_conformance::faults::{self, Counts, Plan};
use imagestore_conformance::support;
use tokio::io::AsyncReadExt;

/// Probability (in percent) that a request meets a fault.
const FAULT_PERCENT: u64 = 12;

fn layer(seed: u64, size: usize) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(size as u64);
    h.set_entry_type(tar::EntryType::Regular);
    let data: Vec<u8> = (0..size)
        .map(|i| (i as u64).wrapping_mul(seed | 1).wrapping_add(seed >> 3) as u8)
        .collect();
    b.append_data(&mut h, format!("f/{seed}"), data.as_slice())
        .unwrap();
    b.into_inner().unwrap()
}

/// Runs writes, deletes and writable-layer commits through the proxy, then checks the store
/// through a clean connection.
async fn faults_against(server: &str, direct: String) -> Result<()> {
    let u = Url::parse(&direct)?;
    let endpoint = u
        .query_pairs()
        .find(|(k, _)| k == "endpoint")
        .map(|(_, v)| v.into_owned())
        .expect("endpoint");
    let upstream = Url::parse(&endpoint)?;
    let upstream = format!(
        "{}:{}",
        upstream.host_str().unwrap_or("127.0.0.1"),
        upstream.port().unwrap_or(80)
    );
    let counts = Arc::new(Counts::default());
    let port = faults::start(upstream, counts.clone(), Plan::all(FAULT_PERCENT)).await?;
    let mut faulty = u.clone();
    {
        let pairs: Vec<(String, String)> = u.query_pairs().into_owned().collect();
        let mut q = faulty.query_pairs_mut();
        q.clear();
        for (k, v) in pairs {
            if k == "endpoint" {
                q.append_pair("endpoint", &format!("http://127.0.0.1:{port}"));
            } else {
                q.append_pair(&k, &v);
            }
        }
        q.append_pair("max_retries", "2");
        q.append_pair("retry_timeout", "20s");
        q.append_pair("timeout", "30s");
    }
    let faulty = faulty.to_string();

    // The store itself is made through a clean connection.
    let clean = imagestore::open(&direct).await?;
    let name = imagestore_conformance::unique("faults");
    clean.create_image_store(&name).await?;
    let scratch = clean.scratch(&name).await?;
    let base = clean
        .write_image_bytes(
            &scratch,
            &ImageId::new("base")?,
            Metadata::new(),
            layer(1, 4096),
        )
        .await?;

    let store: Arc<dyn ImageStorer> = {
        let mut tries = 0;
        loop {
            match imagestore::open(&faulty).await {
                Ok(s) => break s,
                Err(e) if tries < 20 => {
                    tries += 1;
                    eprintln!("open through the proxy failed ({e}); again");
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    let mut tasks = Vec::new();
    for t in 0..4u64 {
        let (store, base, scratch, name) =
            (store.clone(), base.clone(), scratch.clone(), name.clone());
        tasks.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            let mut batch = Vec::new();
            for i in 0..6u64 {
                let seed = 10 + t * 100 + i;
                // Mostly small layers; every third one needs a multipart upload.
                let size = if i % 3 == 2 {
                    11 << 20
                } else {
                    20_000 + (seed as usize % 7) * 3000
                };
                let bytes = layer(seed, size);
                let parent = if i % 2 == 0 { &scratch } else { &base };
                let id = ImageId::new(format!("w{t}-{i}")).unwrap();
                let r = store
                    .write_image(
                        parent,
                        &id,
                        Metadata::new(),
                        &Digest::sha256_of(&bytes),
                        imagestore::byte_stream(std::io::Cursor::new(bytes.clone())),
                    )
                    .await;
                outcomes.push((id.clone(), Digest::sha256_of(&bytes), r.is_ok()));
                if let Err(e) = &r {
                    eprintln!("write {id}: {e}");
                }
                if i % 3 == 0
                    && let Ok(img) = &r
                {
                    batch.push(img.clone());
                }
                if i % 3 == 1
                    && let Ok(img) = &r
                {
                    // Delete some of them again.
                    if let Err(e) = store.delete_image(img).await {
                        eprintln!("delete {id}: {e}");
                    }
                }
                if i == 4 {
                    // A writable layer, an import and a commit.
                    let wid = ImageId::new(format!("rw{t}")).unwrap();
                    let r: imagestore::Result<()> = async {
                        store.create_writable(&base, &wid).await?;
                        store
                            .import(
                                &name,
                                &wid,
                                &FilterSpec::all(),
                                imagestore::byte_stream(std::io::Cursor::new(layer(
                                    seed + 50,
                                    30_000,
                                ))),
                            )
                            .await?;
                        store
                            .commit_writable(
                                &name,
                                &wid,
                                &ImageId::new(format!("c{t}")).unwrap(),
                                Metadata::new(),
                            )
                            .await?;
                        Ok(())
                    }
                    .await;
                    if let Err(e) = r {
                        eprintln!("writable {wid}: {e}");
                    }
                }
            }
            // Some of them again, as one batch.
            match store.delete_images(&name, &batch).await {
                Ok(rs) => {
                    for (img, r) in batch.iter().zip(rs) {
                        if let Err(e) = r {
                            eprintln!("batch delete {}: {e}", img.id);
                        }
                    }
                }
                Err(e) => eprintln!("batch delete: {e}"),
            }
            outcomes
        }));
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.extend(t.await?);
    }
    eprintln!(
        "{server}: {counts}; {} of {} writes failed",
        outcomes.iter().filter(|o| !o.2).count(),
        outcomes.len(),
    );
    ensure!(
        counts.resets_before.load(Ordering::Relaxed) + counts.errors_after.load(Ordering::Relaxed)
            > 0,
        "the proxy injected no faults"
    );

    // Whatever failed left leases behind; once they expired a fresh instance sweeps them.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let fresh = imagestore::open(&direct).await?;
    fresh.get_image_store(&name).await?;
    let images = fresh.list_images(&name, &[]).await?;
    for (id, sum, ok) in &outcomes {
        let found = images.iter().find(|i| &i.id == id);
        if let Some(img) = found {
            ensure!(img.sum.as_ref() == Some(sum), "{id} has another sum");
        } else {
            // A successful write may have been deleted again on purpose; a failed one must
            // be absent from every view.
            ensure!(
                fresh.get_image(&name, id).await.is_err(),
                "{id} is listed nowhere but readable"
            );
        }
        let _ = ok;
    }
    let mut total = 0;
    for img in &images {
        let mut raw = Vec::new();
        fresh
            .export_raw(&name, &img.id)
            .await?
            .read_to_end(&mut raw)
            .await?;
        ensure!(
            img.sum == Some(Digest::sha256_of(&raw)),
            "{} does not verify",
            img.id
        );
        ensure!(img.size == raw.len() as u64);
        total += img.size;
        if let Some(p) = &img.parent {
            ensure!(
                fresh.get_image(&name, p).await.is_ok(),
                "{} has a dangling parent",
                img.id
            );
        }
        // Exports of the merged image read back.
        let mut tar = Vec::new();
        fresh
            .export(&name, &img.id, None, &FilterSpec::all(), true)
            .await?
            .read_to_end(&mut tar)
            .await?;
    }
    ensure!(
        fresh.image_storage_usage(&name).await? == total,
        "usage disagrees with the images"
    );
    let hooks = common::S3Hooks::new(&direct)?;
    let left = hooks.leftover_list(&name).await?;
    ensure!(left.is_empty(), "leftovers after the sweep: {left:?}");
    Ok(())
}

fn main() -> ExitCode {
    let url = |var| common::test_url(var, &[("lease_ttl", "3s"), ("part_size", "5MiB")]);
    support::run(vec![
        support::trial_async(
            "moto_faults_leave_committed_or_nothing",
            url("IMAGESTORE_TEST_S3_MOTO"),
            4,
            |direct| faults_against("moto", direct),
        ),
        support::trial_async(
            "seaweed_faults_leave_committed_or_nothing",
            url("IMAGESTORE_TEST_S3_SEAWEED"),
            4,
            |direct| faults_against("seaweed", direct),
        ),
    ])
}
