//! `imagestore export | checkout | writable | import | owner`.

use anyhow::{Context, Result};
use imagestore::layer::checkout::CheckoutOptions;
use imagestore::{
    ByteStream, FilterSpec, FilterType, ImageId, ImageStorer, ImageStorerExt, OwnerName, StoreName,
};
use serde_json::json;
use tokio::io::AsyncWriteExt;

use crate::args::{CheckoutArgs, ExportArgs, ImportArgs, OwnerCmd, WritableCmd};
use crate::images::{input, parse_meta};
use crate::output::{self, ImageView};

fn filter(
    include: &[String],
    exclude: &[String],
    rebase: &Option<String>,
    strip: &Option<String>,
) -> Result<FilterSpec> {
    let mut items: Vec<(&str, FilterType)> = Vec::new();
    // The engine's inclusions only make exceptions to exclusions (the longest prefix wins);
    // on the command line `--include` means "only these", so it also excludes everything.
    if !include.is_empty() {
        items.push(("", FilterType::Exclude));
    }
    items.extend(include.iter().map(|p| (p.as_str(), FilterType::Include)));
    items.extend(exclude.iter().map(|p| (p.as_str(), FilterType::Exclude)));
    if let Some(r) = rebase {
        items.push((r.as_str(), FilterType::Rebase));
    }
    if let Some(s) = strip {
        items.push((s.as_str(), FilterType::Strip));
    }
    Ok(FilterSpec::from_types(items)?)
}

/// The image as one VMDK disk: only the disk backends keep images as disks.
#[cfg(feature = "vsphere")]
async fn vmdk(store: &dyn ImageStorer, s: &StoreName, id: &ImageId) -> Result<ByteStream> {
    use imagestore::vsphere::{DiskStore, VmdkExport};
    match store.as_any().downcast_ref::<DiskStore>() {
        Some(disks) => Ok(disks.export_vmdk(s, id).await?),
        None => Err(unsupported_vmdk(store).into()),
    }
}

/// The image as one VMDK disk: this build links no disk backend.
#[cfg(not(feature = "vsphere"))]
async fn vmdk(store: &dyn ImageStorer, _s: &StoreName, _id: &ImageId) -> Result<ByteStream> {
    Err(unsupported_vmdk(store).into())
}

fn unsupported_vmdk(store: &dyn ImageStorer) -> imagestore::Error {
    imagestore::Error::Unsupported {
        operation: "VMDK export (only the disk backends keep images as disks)",
        backend: store.scheme(),
    }
}

/// Reports an owner registration or renewal.
fn lease_said(
    json: bool,
    what: &str,
    o: &OwnerName,
    s: &StoreName,
    id: &ImageId,
    ttl: Option<std::time::Duration>,
) -> Result<()> {
    let ttl_s = ttl.map(|t| t.as_secs());
    if json {
        output::json(&json!({ what: o.as_str(), "image": id.as_str(), "ttl_s": ttl_s }))?;
    } else {
        match ttl {
            Some(t) => println!("{o} uses {s}/{id} for {}", humantime::format_duration(t)),
            None => println!("{o} now uses {s}/{id}"),
        }
    }
    Ok(())
}

/// `export`: a tar to stdout or a file.
pub async fn export(store: &dyn ImageStorer, a: ExportArgs) -> Result<()> {
    let s = a.store.name()?;
    let id = crate::oci::resolve_id(store, &s, &a.id).await?;
    let mut stream = if a.raw {
        store.export_raw(&s, &id).await?
    } else if a.vmdk {
        vmdk(store, &s, &id).await?
    } else {
        let ancestor = a.ancestor.as_deref().map(ImageId::new).transpose()?;
        let f = filter(&a.include, &a.exclude, &a.rebase, &a.strip)?;
        store
            .export(&s, &id, ancestor.as_ref(), &f, !a.headers_only)
            .await?
    };
    let copy = |e: std::io::Error| imagestore::layer::stream::error_from_io(e, "export");
    match &a.output {
        Some(path) => {
            let tmp = path.with_extension("partial");
            let mut f = tokio::fs::File::create(&tmp)
                .await
                .with_context(|| format!("creating {}", tmp.display()))?;
            tokio::io::copy(&mut stream, &mut f).await.map_err(copy)?;
            f.sync_all()
                .await
                .with_context(|| format!("writing {}", tmp.display()))?;
            tokio::fs::rename(&tmp, path)
                .await
                .with_context(|| format!("renaming to {}", path.display()))?;
        }
        None => {
            let mut out = tokio::io::stdout();
            tokio::io::copy(&mut stream, &mut out).await.map_err(copy)?;
            out.flush().await.context("writing standard output")?;
        }
    }
    Ok(())
}

/// `checkout`.
pub async fn checkout(store: &dyn ImageStorer, a: CheckoutArgs, json: bool) -> Result<()> {
    let s = a.store.name()?;
    let id = crate::oci::resolve_id(store, &s, &a.id).await?;
    let report = store
        .checkout(
            &s,
            &id,
            &a.dir,
            &CheckoutOptions {
                rootless: a.rootless,
            },
        )
        .await?;
    if json {
        output::json(&report)?;
    } else {
        println!(
            "checked out {s}/{id} into {}: {} entries, {}",
            a.dir.display(),
            report.entries,
            output::human(report.bytes)
        );
        for skipped in &report.skipped {
            println!("skipped: {skipped}");
        }
    }
    Ok(())
}

/// `writable ...`.
pub async fn writable(store: &dyn ImageStorer, cmd: WritableCmd, json: bool) -> Result<()> {
    match cmd {
        WritableCmd::Create {
            store: s,
            parent,
            id,
        } => {
            let s = s.name()?;
            let parent = store.get_image(&s, &ImageId::new(parent)?).await?;
            let w = store.create_writable(&parent, &ImageId::new(id)?).await?;
            if json {
                output::json(&w)?;
            } else {
                println!("created writable layer {} on {}", w.id, w.parent);
            }
        }
        WritableCmd::Commit {
            store: s,
            writable,
            id,
            meta,
        } => {
            let s = s.name()?;
            let img = store
                .commit_writable(
                    &s,
                    &ImageId::new(writable)?,
                    &ImageId::new(id)?,
                    parse_meta(&meta)?,
                )
                .await?;
            if json {
                output::json(&ImageView::from(&img))?;
            } else {
                println!(
                    "committed {} ({})",
                    img.self_link(),
                    img.sum
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_default()
                );
            }
        }
        WritableCmd::Rm { store: s, writable } => {
            let s = s.name()?;
            store.delete_writable(&s, &ImageId::new(&writable)?).await?;
            if json {
                output::json(&json!({ "deleted": writable }))?;
            } else {
                println!("deleted writable layer {writable}");
            }
        }
    }
    Ok(())
}

/// `import`.
pub async fn import(store: &dyn ImageStorer, a: ImportArgs, json: bool) -> Result<()> {
    let s = a.store.name()?;
    let f = filter(&a.include, &a.exclude, &a.rebase, &a.strip)?;
    let summary = store
        .import(&s, &ImageId::new(&a.writable)?, &f, input(&a.file).await?)
        .await?;
    if json {
        output::json(&summary)?;
    } else {
        println!(
            "imported {} entries and {} whiteouts ({})",
            summary.entries,
            summary.whiteouts,
            output::human(summary.bytes)
        );
    }
    Ok(())
}

/// `owner ...`.
pub async fn owner(store: &dyn ImageStorer, cmd: OwnerCmd, json: bool) -> Result<()> {
    match cmd {
        OwnerCmd::Acquire {
            store: s,
            id,
            owner,
            ttl,
        } => {
            let (s, id, o) = (s.name()?, ImageId::new(id)?, OwnerName::new(owner)?);
            match ttl {
                Some(ttl) => store.acquire_lease(&s, &id, &o, ttl).await?,
                None => store.acquire(&s, &id, &o).await?,
            }
            lease_said(json, "acquired", &o, &s, &id, ttl)?;
        }
        OwnerCmd::Renew {
            store: s,
            id,
            owner,
            ttl,
        } => {
            let (s, id, o) = (s.name()?, ImageId::new(id)?, OwnerName::new(owner)?);
            store.acquire_lease(&s, &id, &o, ttl).await?;
            lease_said(json, "renewed", &o, &s, &id, Some(ttl))?;
        }
        OwnerCmd::Release {
            store: s,
            id,
            owner,
        } => {
            let (s, id, o) = (s.name()?, ImageId::new(id)?, OwnerName::new(owner)?);
            store.release(&s, &id, &o).await?;
            if !json {
                println!("{o} released {s}/{id}");
            } else {
                output::json(&json!({ "released": o.as_str(), "image": id.as_str() }))?;
            }
        }
        OwnerCmd::Ls { store: s, id } => {
            let (s, id) = (s.name()?, ImageId::new(id)?);
            let url = store.url(&s, &id).await?;
            let owners = store.owners(&url).await?;
            if json {
                output::json(&owners.iter().map(|o| o.as_str()).collect::<Vec<_>>())?;
            } else {
                for o in owners {
                    println!("{o}");
                }
            }
        }
    }
    Ok(())
}

/// Prints a store's chain for an image and the store's usage.
pub async fn show_chain(
    store: &dyn ImageStorer,
    s: &StoreName,
    top: &ImageId,
    json: bool,
) -> Result<()> {
    let chain = store.chain(s, top).await?;
    let usage = store.image_storage_usage(s).await?;
    if json {
        output::json(&json!({
            "store": s.as_str(),
            "chain": chain.iter().map(ImageView::from).collect::<Vec<_>>(),
            "usage_bytes": usage,
        }))?;
    } else {
        println!(
            "chain of {s}/{top} ({} layers above scratch):",
            chain.len().saturating_sub(1)
        );
        for (depth, img) in chain.iter().enumerate() {
            let sum = img
                .sum
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_else(|| "(root)".into());
            println!(
                "  {depth:>3}  {:<20}  {:>10}  {sum}",
                img.id.as_str().chars().take(20).collect::<String>(),
                output::human(img.size)
            );
        }
        println!("store usage: {usage} bytes ({})", output::human(usage));
    }
    Ok(())
}
