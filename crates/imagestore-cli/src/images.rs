//! `imagestore image ...`.

use anyhow::{Context, Result};
use imagestore::{ByteStream, Digest, ImageId, ImageStorer, ImageStorerExt, Metadata, byte_stream};

use crate::args::ImageCmd;
use crate::output::{self, ImageView};

/// Parses `KEY=VALUE` metadata arguments.
pub fn parse_meta(items: &[String]) -> Result<Metadata> {
    let mut m = Metadata::new();
    for item in items {
        let (k, v) = item
            .split_once('=')
            .with_context(|| format!("metadata {item:?} is not KEY=VALUE"))?;
        m.insert(k.to_owned(), v.as_bytes().to_vec());
    }
    Ok(m)
}

/// Opens a file argument, `-` meaning standard input.
pub async fn input(file: &str) -> Result<ByteStream> {
    if file == "-" {
        Ok(byte_stream(tokio::io::stdin()))
    } else {
        let f = tokio::fs::File::open(file)
            .await
            .with_context(|| format!("opening {file}"))?;
        Ok(byte_stream(f))
    }
}

/// Runs an image command.
pub async fn run(store: &dyn ImageStorer, cmd: ImageCmd, json: bool) -> Result<()> {
    match cmd {
        ImageCmd::Write {
            store: s,
            parent,
            id,
            sum,
            meta,
            file,
        } => {
            let s = s.name()?;
            let parent = store.get_image(&s, &ImageId::new(parent)?).await?;
            let id = ImageId::new(id)?;
            let sum = Digest::parse(&sum)?;
            let meta = parse_meta(&meta)?;
            let img = store
                .write_image(&parent, &id, meta, &sum, input(&file).await?)
                .await?;
            if json {
                output::json(&ImageView::from(&img))?;
            } else {
                println!(
                    "wrote {} ({} on {})",
                    img.self_link(),
                    output::human(img.size),
                    parent.id
                );
            }
        }
        ImageCmd::Ls { store: s } => {
            let s = s.name()?;
            let images = store.list_images(&s, &[]).await?;
            let refs = store.list_references(&s).await?;
            if json {
                output::json(
                    &images
                        .iter()
                        .map(|i| ImageView::from(i).with_refs(&refs))
                        .collect::<Vec<_>>(),
                )?;
            } else {
                output::image_table(&images, &refs);
            }
        }
        ImageCmd::Info { store: s, id } => {
            let s = s.name()?;
            let img = store.get_image(&s, &ImageId::new(id)?).await?;
            let view = ImageView::from(&img).with_refs(&store.list_references(&s).await?);
            if json {
                output::json(&view)?;
            } else {
                println!("id:        {}", view.id);
                println!("self link: {}", view.self_link);
                println!("parent:    {}", view.parent.as_deref().unwrap_or("-"));
                println!("sum:       {}", view.sum.as_deref().unwrap_or("-"));
                println!("size:      {} ({})", view.size, output::human(view.size));
                println!("depth:     {}", view.depth);
                println!("locator:   {}", view.locator);
                if !view.references.is_empty() {
                    println!("refs:      {}", view.references.join(", "));
                }
                for (k, v) in &view.metadata {
                    println!("meta {k}: {v}");
                }
            }
        }
        ImageCmd::Rm {
            store: s,
            id,
            branch,
            keep,
        } => {
            let s = s.name()?;
            let img = store.get_image(&s, &ImageId::new(id)?).await?;
            if branch {
                let keep = keep
                    .iter()
                    .map(ImageId::new)
                    .collect::<imagestore::Result<Vec<_>>>()?;
                let gone = store.delete_branch(&img, &keep).await?;
                if json {
                    let views: Vec<ImageView> = gone.iter().map(ImageView::from).collect();
                    output::json(&views)?;
                } else {
                    for g in &gone {
                        println!("deleted {}", g.self_link());
                    }
                }
            } else {
                let gone = store.delete_image(&img).await?;
                if json {
                    output::json(&ImageView::from(&gone))?;
                } else {
                    println!("deleted {}", gone.self_link());
                }
            }
        }
    }
    Ok(())
}
