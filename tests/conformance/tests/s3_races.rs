//! Races between real processes sharing one bucket, on moto and on SeaweedFS:
//!
//! * several processes write the same image id at once: one write, every process gets the
//!   same image, one body read to its end;
//! * one process deletes a parent while another writes a child on it: only the two legal
//!   outcomes, never a dangling parent;
//! * a writer is killed with SIGKILL in the middle of its upload: another process waits for
//!   its lease to expire, takes it over, cleans up and writes; nothing is left behind;
//! * owners registered by one process are seen, and block deletes, in another;
//! * a garbage collection in one process runs while another writes a child on an image the
//!   collection finds unreferenced: the collection never deletes the parent of a write in
//!   flight; either it deleted the parent before the write registered (the write fails
//!   `NotFound` without its body read) or the parent stays and the child commits on it;
//! * the same with a batch delete (`delete_images`) of a chain and unrelated images, the write
//!   on the chain's middle image: both outcomes, never a dangling parent;
//! * a batch delete whose host died half-way is finished by the next instance's sweep.
//!
//! This is a `harness = false` test: the same binary is the child process when
//! `IMAGESTORE_RACE_CHILD` is set (its arguments come in `IMAGESTORE_RACE_ARGS` as JSON).

// A libtest-mimic test binary: what clippy.toml allows in `#[test]` functions is allowed
// here too.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

mod common;

use std::pin::Pin;
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use imagestore::{
    Digest, Error, Image, ImageId, ImageStorer, ImageStorerExt, Metadata, OwnerName, StoreName,
    byte_stream,
};
use imagestore_conformance::support;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

const CHILD_VAR: &str = "IMAGESTORE_RACE_CHILD";
const ARGS_VAR: &str = "IMAGESTORE_RACE_ARGS";

/// Test sizes per server: SeaweedFS serialises contended conditional writes slowly.
struct Plan {
    writers: usize,
    rounds: usize,
}

fn layer(seed: u64, size: usize) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(size as u64);
    h.set_entry_type(tar::EntryType::Regular);
    let mut x = seed | 1;
    let data: Vec<u8> = (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    b.append_data(&mut h, format!("f/{seed}"), data.as_slice())
        .unwrap();
    b.into_inner().unwrap()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

async fn sleep_until_ms(at: u64) {
    let now = now_ms();
    if at > now {
        tokio::time::sleep(Duration::from_millis(at - now)).await;
    }
}

/// A body that may wait before its first byte, may stall forever after `stall_after` bytes,
/// and tells whether it was read to its end.
struct Body {
    data: std::io::Cursor<Vec<u8>>,
    delay: Option<Duration>,
    stall_after: Option<u64>,
    eof: Arc<std::sync::atomic::AtomicBool>,
}

impl AsyncRead for Body {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Some(d) = self.delay.take() {
            std::thread::sleep(d);
        }
        if let Some(limit) = self.stall_after
            && self.data.position() >= limit
        {
            // Never woken: the process is killed while the write waits here.
            return Poll::Pending;
        }
        let before = buf.filled().len();
        let mut tmp = vec![0u8; buf.remaining().min(64 << 10)];
        let n = std::io::Read::read(&mut self.data, &mut tmp)?;
        buf.put_slice(&tmp[..n]);
        if buf.filled().len() == before {
            self.eof.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        Poll::Ready(Ok(()))
    }
}

fn kind(e: &Error) -> &'static str {
    match e {
        Error::NotFound { .. } => "NotFound",
        Error::ImageInUse { .. } => "ImageInUse",
        Error::Conflict { .. } => "Conflict",
        Error::AlreadyExists { .. } => "AlreadyExists",
        _ => "Other",
    }
}

fn outcome(r: Result<Value, Error>) -> Value {
    match r {
        Ok(v) => json!({"ok": true, "value": v}),
        Err(e) => json!({"ok": false, "kind": kind(&e), "error": e.to_string()}),
    }
}

/// The child process: one operation, its outcome as one JSON line on stdout.
async fn child(role: &str) -> Result<()> {
    let args: Value = serde_json::from_str(&std::env::var(ARGS_VAR)?)?;
    let s = |k: &str| args[k].as_str().unwrap_or_default().to_owned();
    let n = |k: &str| args[k].as_u64().unwrap_or_default();
    let store = imagestore::open(&s("url")).await?;
    let name = StoreName::new(s("store"))?;
    store.get_image_store(&name).await?;
    sleep_until_ms(n("start_at")).await;
    let out = match role {
        "write" | "stall" => {
            let parent = match store.get_image(&name, &ImageId::new(s("parent"))?).await {
                Ok(p) => p,
                // Deleted before this write began (a collection that ran first).
                Err(e) => {
                    let mut o = outcome(Err(e));
                    o["read_to_end"] = json!(false);
                    println!("RESULT {o}");
                    return Ok(());
                }
            };
            let bytes = layer(n("seed"), n("size") as usize);
            let sum = Digest::sha256_of(&bytes);
            let eof = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let body = Body {
                data: std::io::Cursor::new(bytes),
                delay: Some(Duration::from_millis(n("delay_ms"))),
                stall_after: (role == "stall").then(|| n("stall_after")),
                eof: eof.clone(),
            };
            let r = store
                .write_image(
                    &parent,
                    &ImageId::new(s("id"))?,
                    Metadata::new(),
                    &sum,
                    byte_stream(body),
                )
                .await;
            let read_to_end = eof.load(std::sync::atomic::Ordering::SeqCst);
            let mut o = outcome(r.map(|img| serde_json::to_value(img).unwrap_or_default()));
            o["read_to_end"] = json!(read_to_end);
            o
        }
        "delete" => {
            let img = store.get_image(&name, &ImageId::new(s("id"))?).await?;
            outcome(store.delete_image(&img).await.map(|_| json!(null)))
        }
        "gc" => {
            let opts = imagestore::GcOptions {
                dry_run: false,
                grace: Duration::ZERO,
                keep: Vec::new(),
            };
            outcome(store.gc(&name, &opts).await.map(|r| {
                json!({
                    "deleted": r.images.iter().map(|i| i.id.to_string()).collect::<Vec<_>>(),
                    "skipped": r.skipped.iter().map(|k| k.id.to_string()).collect::<Vec<_>>(),
                })
            }))
        }
        "batch" => {
            let ids: Vec<ImageId> = args["ids"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(ImageId::new)
                        .collect()
                })
                .unwrap_or(Ok(Vec::new()))?;
            let images = store.list_images(&name, &ids).await?;
            ensure!(
                images.len() == ids.len(),
                "the batch's images are not all there"
            );
            outcome(store.delete_images(&name, &images).await.map(|rs| {
                let per: serde_json::Map<String, Value> = ids
                    .iter()
                    .zip(rs)
                    .map(|(id, r)| {
                        let kind = match r {
                            Ok(_) => "deleted",
                            Err(e) => kind(&e),
                        };
                        (id.to_string(), json!(kind))
                    })
                    .collect();
                Value::Object(per)
            }))
        }
        "acquire" | "release" => {
            let id = ImageId::new(s("id"))?;
            let o = OwnerName::new(s("owner"))?;
            let r = if role == "acquire" {
                store.acquire(&name, &id, &o).await
            } else {
                store.release(&name, &id, &o).await
            };
            outcome(r.map(|()| json!(null)))
        }
        other => bail!("unknown child role {other}"),
    };
    println!("RESULT {out}");
    Ok(())
}

/// Starts a child process for `role`.
fn spawn(role: &str, args: Value) -> Result<tokio::process::Child> {
    Ok(tokio::process::Command::new(std::env::current_exe()?)
        .env(CHILD_VAR, role)
        .env(ARGS_VAR, args.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?)
}

/// Waits for a child and returns its outcome line.
async fn result_of(child: tokio::process::Child) -> Result<Value> {
    let out = tokio::time::timeout(Duration::from_secs(300), child.wait_with_output())
        .await
        .context("child timed out")??;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .with_context(|| format!("child gave no result ({}): {text}", out.status))?;
    Ok(serde_json::from_str(line)?)
}

async fn fresh(url: &str) -> Result<(Arc<dyn ImageStorer>, StoreName, Image)> {
    let store = imagestore::open(url).await?;
    let name = imagestore_conformance::unique("race");
    store.create_image_store(&name).await?;
    let scratch = store.scratch(&name).await?;
    Ok((store, name, scratch))
}

/// A fresh instance sweeps the store; then nothing may be left over and every image must
/// verify.
async fn check_clean(url: &str, hooks: &common::S3Hooks, name: &StoreName) -> Result<()> {
    let other = imagestore::open(url).await?;
    other.get_image_store(name).await?;
    let left = hooks.leftover_list(name).await?;
    ensure!(left.is_empty(), "leftovers after the sweep: {left:?}");
    for img in other.list_images(name, &[]).await? {
        if let Some(p) = &img.parent {
            ensure!(
                other.get_image(name, p).await.is_ok(),
                "{} has a dangling parent {p}",
                img.id
            );
        }
        let mut raw = Vec::new();
        other
            .export_raw(name, &img.id)
            .await?
            .read_to_end(&mut raw)
            .await?;
        ensure!(
            img.sum == Some(Digest::sha256_of(&raw)),
            "{} does not verify",
            img.id
        );
    }
    Ok(())
}

async fn same_id(url: &str, hooks: &common::S3Hooks, plan: &Plan) -> Result<()> {
    let (_store, name, _) = fresh(url).await?;
    let start_at = now_ms() + 3000;
    let mut children = Vec::new();
    for _ in 0..plan.writers {
        children.push(spawn(
            "write",
            json!({"url": url, "store": name.to_string(), "parent": "scratch", "id": "contended",
                   "seed": 42, "size": 6 << 20, "delay_ms": 0, "start_at": start_at}),
        )?);
    }
    let mut images = Vec::new();
    let mut read_to_end = 0;
    for c in children {
        let r = result_of(c).await?;
        ensure!(r["ok"] == json!(true), "a writer failed: {r}");
        if r["read_to_end"] == json!(true) {
            read_to_end += 1;
        }
        images.push(r["value"].clone());
    }
    ensure!(
        images.windows(2).all(|w| w[0] == w[1]),
        "writers got different images: {images:?}"
    );
    ensure!(
        read_to_end == 1,
        "{read_to_end} bodies were read to their end"
    );
    check_clean(url, hooks, &name).await?;
    eprintln!("  same id: {} processes, one write", plan.writers);
    Ok(())
}

async fn delete_vs_child(url: &str, hooks: &common::S3Hooks, plan: &Plan) -> Result<()> {
    let (store, name, scratch) = fresh(url).await?;
    let mut seen = std::collections::BTreeSet::new();
    for round in 0..plan.rounds {
        let bytes = layer(round as u64, 1 << 10);
        let parent = store
            .write_image_bytes(
                &scratch,
                &ImageId::new(format!("p{round}"))?,
                Metadata::new(),
                bytes,
            )
            .await?;
        let start_at = now_ms() + 2500;
        let writer = spawn(
            "write",
            json!({"url": url, "store": name.to_string(), "parent": parent.id.to_string(),
                   "id": format!("k{round}"), "seed": 100 + round, "size": 256 << 10,
                   "delay_ms": 15 * (round % 4), "start_at": start_at}),
        )?;
        let deleter = spawn(
            "delete",
            json!({"url": url, "store": name.to_string(), "id": parent.id.to_string(),
                   "start_at": start_at + 10 * (round as u64 % 3)}),
        )?;
        let w = result_of(writer).await?;
        let d = result_of(deleter).await?;
        match (
            d["ok"].as_bool(),
            w["ok"].as_bool(),
            d["kind"].as_str(),
            w["kind"].as_str(),
        ) {
            (Some(true), Some(false), _, Some("NotFound")) => {
                ensure!(
                    store
                        .get_image(&name, &ImageId::new(format!("k{round}"))?)
                        .await
                        .is_err()
                );
                seen.insert("delete won");
            }
            (Some(false), Some(true), Some("ImageInUse"), _) => {
                ensure!(store.get_image(&name, &parent.id).await.is_ok());
                seen.insert("write won");
            }
            _ => bail!("round {round}: impossible outcome: delete {d}, write {w}"),
        }
    }
    check_clean(url, hooks, &name).await?;
    eprintln!(
        "  delete vs child write: {} rounds, outcomes {seen:?}",
        plan.rounds
    );
    Ok(())
}

/// A collection in one process against a child write in another, on a parent nothing
/// references. The writer registers, then waits before its first byte, so in most rounds the
/// collection meets the write in flight; in others the collection starts first.
async fn gc_vs_writer(url: &str, hooks: &common::S3Hooks, plan: &Plan) -> Result<()> {
    let (store, name, scratch) = fresh(url).await?;
    let mut seen = std::collections::BTreeSet::new();
    for round in 0..plan.rounds {
        let parent = store
            .write_image_bytes(
                &scratch,
                &ImageId::new(format!("gp{round}"))?,
                Metadata::new(),
                layer(500 + round as u64, 1 << 10),
            )
            .await?;
        let child = format!("gk{round}");
        let start_at = now_ms() + 2500;
        // Rounds alternate: the collection starts while the write waits in its body, or
        // before the write starts.
        let gc_at = if round % 2 == 0 {
            start_at + 600
        } else {
            start_at.saturating_sub(400)
        };
        let writer = spawn(
            "write",
            json!({"url": url, "store": name.to_string(), "parent": parent.id.to_string(),
                   "id": child, "seed": 600 + round, "size": 64 << 10,
                   "delay_ms": 2000, "start_at": start_at}),
        )?;
        let collector = spawn(
            "gc",
            json!({"url": url, "store": name.to_string(), "start_at": gc_at}),
        )?;
        let w = result_of(writer).await?;
        let g = result_of(collector).await?;
        ensure!(
            g["ok"] == json!(true),
            "round {round}: the collection failed: {g}"
        );
        let deleted: Vec<&str> = g["value"]["deleted"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let parent_gone = deleted.contains(&parent.id.as_str());
        match (w["ok"].as_bool(), w["kind"].as_str()) {
            (Some(true), _) => {
                ensure!(
                    !parent_gone && store.get_image(&name, &parent.id).await.is_ok(),
                    "round {round}: the child committed but its parent was collected: {g}"
                );
                seen.insert("write kept its parent");
            }
            (Some(false), Some("NotFound")) => {
                ensure!(
                    parent_gone && w["read_to_end"] == json!(false),
                    "round {round}: the write failed after it was in flight: {w}, gc {g}"
                );
                seen.insert("collected before the write registered");
            }
            _ => bail!("round {round}: impossible outcome: write {w}, gc {g}"),
        }
    }
    check_clean(url, hooks, &name).await?;
    ensure!(
        seen.contains("write kept its parent"),
        "no round met a write in flight: {seen:?}"
    );
    eprintln!(
        "  gc vs child write: {} rounds, outcomes {seen:?}",
        plan.rounds
    );
    Ok(())
}

/// A batch delete (`delete_images`) in one process against a child write in another, on the
/// middle image of a chain the batch lists leaf first, among unrelated images. Either the
/// batch deleted everything before the write registered (the write fails `NotFound` without
/// its body read), or the write was in flight: the child commits, its parent and the
/// parent's parent stay (`ImageInUse`), and the rest of the batch is deleted.
async fn batch_vs_writer(url: &str, hooks: &common::S3Hooks, plan: &Plan) -> Result<()> {
    let (store, name, scratch) = fresh(url).await?;
    let mut seen = std::collections::BTreeSet::new();
    let rounds = plan.rounds.max(4);
    for round in 0..rounds {
        let mut chain = Vec::new();
        let mut parent = scratch.clone();
        for depth in 0..3 {
            parent = store
                .write_image_bytes(
                    &parent,
                    &ImageId::new(format!("bx{round}-{depth}"))?,
                    Metadata::new(),
                    layer(700 + round as u64 * 10 + depth, 1 << 10),
                )
                .await?;
            chain.push(parent.id.to_string());
        }
        let mut ids: Vec<String> = chain.iter().rev().cloned().collect();
        for k in 0..3 {
            let single = store
                .write_image_bytes(
                    &scratch,
                    &ImageId::new(format!("bs{round}-{k}"))?,
                    Metadata::new(),
                    layer(800 + round as u64 * 10 + k, 1 << 10),
                )
                .await?;
            ids.push(single.id.to_string());
        }
        let target = chain[1].clone();
        let child = format!("bk{round}");
        let start_at = now_ms() + 2500;
        // Rounds alternate: the batch starts while the write waits in its body, or well
        // before the write starts.
        let batch_at = if round % 2 == 0 {
            start_at + 600
        } else {
            start_at.saturating_sub(1500)
        };
        let writer = spawn(
            "write",
            json!({"url": url, "store": name.to_string(), "parent": target,
                   "id": child, "seed": 900 + round, "size": 64 << 10,
                   "delay_ms": 2000, "start_at": start_at}),
        )?;
        let batch = spawn(
            "batch",
            json!({"url": url, "store": name.to_string(), "ids": ids, "start_at": batch_at}),
        )?;
        let w = result_of(writer).await?;
        let b = result_of(batch).await?;
        ensure!(
            b["ok"] == json!(true),
            "round {round}: the batch failed: {b}"
        );
        let per = &b["value"];
        let exists = |id: String| {
            let (store, name) = (store.clone(), name.clone());
            async move {
                Ok::<bool, anyhow::Error>(store.get_image(&name, &ImageId::new(id)?).await.is_ok())
            }
        };
        match (w["ok"].as_bool(), w["kind"].as_str()) {
            (Some(true), _) => {
                ensure!(
                    per[&chain[0]] == json!("ImageInUse") && per[&chain[1]] == json!("ImageInUse"),
                    "round {round}: the child committed but the batch said {b}"
                );
                ensure!(
                    exists(chain[0].clone()).await? && exists(chain[1].clone()).await?,
                    "round {round}: the child committed but an ancestor is gone: {b}"
                );
                ensure!(exists(child.clone()).await?);
                for id in ids.iter().filter(|i| **i != chain[0] && **i != chain[1]) {
                    ensure!(
                        per[id] == json!("deleted") && !exists(id.clone()).await?,
                        "round {round}: {id} should have been deleted: {b}"
                    );
                }
                seen.insert("write kept its parent");
            }
            (Some(false), Some("NotFound")) => {
                ensure!(
                    w["read_to_end"] == json!(false),
                    "round {round}: the write failed after it was in flight: {w}, batch {b}"
                );
                for id in &ids {
                    ensure!(
                        per[id] == json!("deleted") && !exists(id.clone()).await?,
                        "round {round}: {id} should have been deleted: {b}"
                    );
                }
                seen.insert("batch deleted first");
            }
            _ => bail!("round {round}: impossible outcome: write {w}, batch {b}"),
        }
    }
    check_clean(url, hooks, &name).await?;
    ensure!(
        seen.len() == 2,
        "not both outcomes over {rounds} rounds: {seen:?}"
    );
    eprintln!("  batch delete vs child write: {rounds} rounds, outcomes {seen:?}");
    Ok(())
}

/// A batch delete whose host died half-way, as it left the bucket: every lease of the batch
/// (dead), the batch intent, one record removed with its layer, TOC and link still there, the
/// others untouched. A fresh instance finishes the one, keeps the others, and the index,
/// usage and bucket agree.
async fn crashed_batch(url: &str, hooks: &common::S3Hooks) -> Result<()> {
    let (store, name, scratch) = fresh(url).await?;
    let mut images = Vec::new();
    for k in 0..3 {
        images.push(
            store
                .write_image_bytes(
                    &scratch,
                    &ImageId::new(format!("cb{k}"))?,
                    Metadata::new(),
                    layer(950 + k, 2048),
                )
                .await?,
        );
    }
    let base = hooks.base(&name).await?;
    let n = "dead0000batch001";
    for img in &images {
        let rec: Value = serde_json::from_slice(
            &hooks
                .get(&format!("{base}/images/{}", img.id))
                .await?
                .context("record")?,
        )?;
        let victim = rec["nonce"].as_str().context("nonce")?;
        hooks
            .put(
                &format!("{base}/leases/{}", img.id),
                format!(
                    r#"{{"version":1,"nonce":"{n}","op":"delete","ttl_ms":0,"seq":0,"holder":"crashed:2","parent":"scratch","target":"{victim}"}}"#
                )
                .as_bytes(),
            )
            .await?;
    }
    hooks
        .put(
            &format!("{base}/log/{n}.b"),
            br#"{"version":1,"ids":["cb0","cb1","cb2"]}"#,
        )
        .await?;
    hooks.delete(&format!("{base}/images/cb0")).await?;
    // Past the leases' TTL (0) plus the backend's slack, by the server's clock.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let other = imagestore::open(url).await?;
    other.get_image_store(&name).await?;
    let left: Vec<String> = other
        .list_images(&name, &[])
        .await?
        .iter()
        .map(|i| i.id.to_string())
        .collect();
    ensure!(left == ["cb1", "cb2"], "after the sweep: {left:?}");
    let usage = other.image_storage_usage(&name).await?;
    ensure!(
        usage == images[1].size + images[2].size,
        "usage {usage} after a crashed batch"
    );
    check_clean(url, hooks, &name).await?;
    // The rest can still be deleted as a batch.
    let rest = other.list_images(&name, &[]).await?;
    for r in other.delete_images(&name, &rest).await? {
        r?;
    }
    ensure!(other.list_images(&name, &[]).await?.is_empty());
    ensure!(other.image_storage_usage(&name).await? == 0);
    check_clean(url, hooks, &name).await?;
    eprintln!("  crashed batch delete: finished by the sweep");
    Ok(())
}

async fn killed_writer(url: &str, hooks: &common::S3Hooks) -> Result<()> {
    let (store, name, _) = fresh(url).await?;
    let base = hooks.base(&name).await?;
    let args = json!({"url": url, "store": name.to_string(), "parent": "scratch", "id": "victim",
                      "seed": 7, "size": 12 << 20, "delay_ms": 0, "start_at": 0,
                      "stall_after": 7 << 20});
    let mut stalled = spawn("stall", args.clone())?;
    // Wait until it holds the lease and has a part uploaded, then kill it.
    let t = Instant::now();
    loop {
        let lease = hooks.get(&format!("{base}/leases/victim")).await?;
        let uploads = hooks.uploads(&base).await?;
        if lease.is_some() && !uploads.is_empty() {
            break;
        }
        ensure!(
            t.elapsed() < Duration::from_secs(60),
            "the writer never started uploading"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stalled.start_kill()?;
    stalled.wait().await?;
    let t = Instant::now();
    let r = result_of(spawn("write", args)?).await?;
    ensure!(r["ok"] == json!(true), "the second writer failed: {r}");
    ensure!(r["read_to_end"] == json!(true));
    let img = store.get_image(&name, &ImageId::new("victim")?).await?;
    ensure!(img.sum == Some(Digest::sha256_of(&layer(7, 12 << 20))));
    check_clean(url, hooks, &name).await?;
    eprintln!(
        "  killed writer: taken over after {:.1}s",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn owners_across_processes(url: &str, hooks: &common::S3Hooks) -> Result<()> {
    let (store, name, scratch) = fresh(url).await?;
    let img = store
        .write_image_bytes(
            &scratch,
            &ImageId::new("owned")?,
            Metadata::new(),
            layer(9, 100),
        )
        .await?;
    let args = json!({"url": url, "store": name.to_string(), "id": "owned", "owner": "vm-1", "start_at": 0});
    let r = result_of(spawn("acquire", args.clone())?).await?;
    ensure!(r["ok"] == json!(true), "{r}");
    let owners = store.owners(&store.url(&name, &img.id).await?).await?;
    ensure!(owners == vec![OwnerName::new("vm-1")?], "{owners:?}");
    match store.delete_image(&img).await {
        Err(e) if e.is_image_in_use() => {}
        other => bail!("deleted an image owned by another process: {other:?}"),
    }
    let r = result_of(spawn("release", args)?).await?;
    ensure!(r["ok"] == json!(true), "{r}");
    store.delete_image(&img).await?;
    check_clean(url, hooks, &name).await?;
    eprintln!("  owners seen across processes");
    Ok(())
}

async fn run_all(server: &str, url: &str, plan: &Plan) -> Result<()> {
    let hooks = common::S3Hooks::new(url)?;
    eprintln!("{server}:");
    same_id(url, &hooks, plan).await?;
    delete_vs_child(url, &hooks, plan).await?;
    killed_writer(url, &hooks).await?;
    owners_across_processes(url, &hooks).await?;
    gc_vs_writer(url, &hooks, plan).await?;
    batch_vs_writer(url, &hooks, plan).await?;
    crashed_batch(url, &hooks).await?;
    Ok(())
}

fn main() -> ExitCode {
    if let Ok(role) = std::env::var(CHILD_VAR) {
        return child_main(&role);
    }
    let url = |var| common::test_url(var, &[("lease_ttl", "4s"), ("part_size", "5MiB")]);
    let servers = [
        (
            "moto",
            "IMAGESTORE_TEST_S3_MOTO",
            Plan {
                writers: 6,
                rounds: 6,
            },
        ),
        (
            "seaweed",
            "IMAGESTORE_TEST_S3_SEAWEED",
            Plan {
                writers: 3,
                rounds: 3,
            },
        ),
    ];
    let trials = servers
        .into_iter()
        .map(|(server, var, plan)| {
            support::trial_async(
                format!("{server}_races_between_processes"),
                url(var),
                4,
                move |url| async move { run_all(server, &url, &plan).await },
            )
        })
        .collect();
    support::run(trials)
}

/// The child process: runs one role of a race (see `child`).
fn child_main(role: &str) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(child(role)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("child {role}: {e:#}");
            ExitCode::FAILURE
        }
    }
}
