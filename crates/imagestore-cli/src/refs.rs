//! `imagestore ref ...` and `imagestore gc`.

use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Result, bail};
use imagestore::{
    Expect, GcOptions, ImageId, ImageStorer, ImageStorerExt, RefName, RefTarget, Reference,
};
use serde::Serialize;
use serde_json::json;

use crate::args::{GcArgs, RefCmd};
use crate::output::{self, ImageView};

/// A reference as shown to people and machines.
#[derive(Debug, Serialize)]
pub struct RefView {
    /// The name.
    pub name: String,
    /// The image it names.
    pub image: String,
    /// The manifest's digest, if kept.
    pub manifest: Option<String>,
    /// The manifest's media type, if kept.
    pub media_type: Option<String>,
    /// The config's digest, if kept.
    pub config: Option<String>,
    /// The platform, if known.
    pub platform: Option<String>,
    /// When it was last set (RFC 3339, UTC).
    pub updated: String,
}

impl From<&Reference> for RefView {
    fn from(r: &Reference) -> Self {
        let t = &r.target;
        RefView {
            name: r.name.to_string(),
            image: t.image.to_string(),
            manifest: t.manifest.as_ref().map(|m| m.digest.to_string()),
            media_type: t.manifest.as_ref().map(|m| m.media_type.clone()),
            config: t.config.as_ref().map(ToString::to_string),
            platform: t.platform.clone(),
            updated: humantime::format_rfc3339_seconds(
                UNIX_EPOCH + Duration::from_millis(r.updated_unix_ms),
            )
            .to_string(),
        }
    }
}

/// What `--expect ID` means: the reference's whole current target, if it names `id`.
async fn expect_image(
    store: &dyn ImageStorer,
    s: &imagestore::StoreName,
    name: &RefName,
    id: &str,
) -> Result<Expect> {
    let id = ImageId::new(id)?;
    let current = match store.get_reference(s, name).await {
        Ok(r) => r,
        Err(imagestore::Error::NotFound { .. }) => {
            bail!("reference {s}/{name} does not exist (expected it naming image {id})")
        }
        Err(e) => return Err(e.into()),
    };
    if current.target.image != id {
        bail!(
            "reference {s}/{name} names image {}, not {id}; nothing changed",
            current.target.image
        );
    }
    Ok(Expect::Target(current.target))
}

/// Runs a `ref` command.
pub async fn run(store: &dyn ImageStorer, cmd: RefCmd, json: bool) -> Result<()> {
    match cmd {
        RefCmd::Ls { store: s } => {
            let s = s.name()?;
            let refs = store.list_references(&s).await?;
            let views: Vec<RefView> = refs.iter().map(RefView::from).collect();
            if json {
                output::json(&views)?;
            } else {
                println!("{:<48} {:<24} MANIFEST", "NAME", "IMAGE");
                for v in views {
                    println!(
                        "{:<48} {:<24} {}",
                        v.name,
                        v.image,
                        v.manifest.as_deref().unwrap_or("-")
                    );
                }
            }
        }
        RefCmd::Show { store: s, name } => {
            let (s, name) = (s.name()?, RefName::new(name)?);
            let v = RefView::from(&store.get_reference(&s, &name).await?);
            if json {
                output::json(&v)?;
            } else {
                println!("name:       {}", v.name);
                println!("image:      {}", v.image);
                println!("manifest:   {}", v.manifest.as_deref().unwrap_or("-"));
                println!("media type: {}", v.media_type.as_deref().unwrap_or("-"));
                println!("config:     {}", v.config.as_deref().unwrap_or("-"));
                println!("platform:   {}", v.platform.as_deref().unwrap_or("-"));
                println!("updated:    {}", v.updated);
            }
        }
        RefCmd::Set {
            store: s,
            name,
            id,
            expect,
        } => {
            let (s, name, id) = (s.name()?, RefName::new(name)?, ImageId::new(id)?);
            let expect = match expect.as_deref() {
                None => Expect::Any,
                Some("none") => Expect::Absent,
                Some(old) => expect_image(store, &s, &name, old).await?,
            };
            // The manifest of the image the reference already names stays with it; an
            // image of its own has none of the old one's.
            let target = match store.get_reference(&s, &name).await {
                Ok(r) if r.target.image == id => r.target,
                _ => RefTarget::image(id),
            };
            let r = store.set_reference(&s, &name, &target, &expect).await?;
            if json {
                output::json(&RefView::from(&r))?;
            } else {
                println!("{s}/{} -> {}", r.name, r.target.image);
            }
        }
        RefCmd::Rm {
            store: s,
            name,
            expect,
        } => {
            let (s, name) = (s.name()?, RefName::new(name)?);
            let expect = match expect.as_deref() {
                None => Expect::Any,
                Some(old) => expect_image(store, &s, &name, old).await?,
            };
            let r = store.delete_reference(&s, &name, &expect).await?;
            if json {
                output::json(&RefView::from(&r))?;
            } else {
                println!("removed {s}/{} (it named {})", r.name, r.target.image);
            }
        }
    }
    Ok(())
}

/// Runs `gc`.
pub async fn gc(store: &dyn ImageStorer, a: GcArgs, json: bool) -> Result<()> {
    let s = a.store.name()?;
    let opts = GcOptions {
        dry_run: a.dry_run,
        grace: a.grace,
        keep: a
            .keep
            .iter()
            .map(ImageId::new)
            .collect::<imagestore::Result<Vec<_>>>()?,
    };
    let report = store.gc(&s, &opts).await?;
    if json {
        output::json(&json!({
            "store": s.as_str(),
            "dry_run": report.dry_run,
            "images": report.images.iter().map(ImageView::from).collect::<Vec<_>>(),
            "blobs": report.blobs.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "freed_bytes": report.freed_bytes,
            "skipped": report.skipped,
            "kept": report.kept,
        }))?;
        return Ok(());
    }
    let verb = if report.dry_run {
        "would delete"
    } else {
        "deleted"
    };
    for i in &report.images {
        println!("{verb} image {} ({})", i.self_link(), output::human(i.size));
    }
    for b in &report.blobs {
        println!("{verb} blob {b}");
    }
    for k in &report.skipped {
        println!("kept {s}/{}: {}", k.id, k.reason);
    }
    println!(
        "{verb} {} image(s) and {} blob(s), {} bytes ({}); {} image(s) kept",
        report.images.len(),
        report.blobs.len(),
        report.freed_bytes,
        output::human(report.freed_bytes),
        report.kept + report.skipped.len()
    );
    Ok(())
}
