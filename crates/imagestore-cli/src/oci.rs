//! `imagestore oci import | pull | push | export`.

use std::io::{BufRead, IsTerminal};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use imagestore::{ImageId, ImageStorer, RefName, StoreName};
use imagestore_oci::export::{Target, export, export_reference};
use imagestore_oci::import::{Imported, import_path};
use imagestore_oci::plan::META_REF;
use imagestore_oci::registry::{ClientOptions, Credentials, PullOptions, PushOptions, pull, push};
use imagestore_oci::{Platform, Progress};
use serde_json::json;

use crate::args::OciCmd;
use crate::output::{self, ImageView};

fn platform(p: Option<&str>) -> Result<Platform> {
    Ok(match p {
        Some(p) => Platform::parse(p)?,
        None => Platform::host(),
    })
}

/// Resolves what a user typed as a reference of store `s`: its exact name, or the one name
/// that ends with `/TEXT` (`test/rootfs:latest` for `127.0.0.1:5000/test/rootfs:latest`).
/// `None` if no reference matches; an error if several do.
pub async fn resolve_ref(
    store: &dyn ImageStorer,
    s: &StoreName,
    text: &str,
) -> Result<Option<RefName>> {
    let Ok(name) = RefName::new(text) else {
        return Ok(None);
    };
    match store.get_reference(s, &name).await {
        Ok(r) => return Ok(Some(r.name)),
        Err(e) if e.is_not_found() => {}
        Err(e) => return Err(e.into()),
    }
    let suffix = format!("/{text}");
    let matches: Vec<RefName> = store
        .list_references(s)
        .await?
        .into_iter()
        .map(|r| r.name)
        .filter(|n| n.as_str().ends_with(&suffix))
        .collect();
    match matches.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one.clone())),
        many => bail!(
            "{text:?} matches several references in store {s}: {}",
            many.iter()
                .map(RefName::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Resolves what a user typed as an image: an id (of an image or writable layer), a
/// reference of the store ([`resolve_ref`]), a unique prefix of an image id, or the
/// reference an image was imported under before stores kept references. Falls back to the
/// text itself so that the operation reports its own not-found error.
pub async fn resolve_id(store: &dyn ImageStorer, s: &StoreName, text: &str) -> Result<ImageId> {
    if let Ok(id) = ImageId::new(text)
        && (store.get_image(s, &id).await.is_ok() || store.get_writable(s, &id).await.is_ok())
    {
        return Ok(id);
    }
    if let Ok(Some(r)) = resolve_ref(store, s, text).await {
        return Ok(store.get_reference(s, &r).await?.target.image);
    }
    let images = match store.list_images(s, &[]).await {
        Ok(i) => i,
        Err(_) => return Ok(ImageId::new(text)?),
    };
    let by_ref: Vec<&ImageId> = images
        .iter()
        .filter(|i| {
            i.metadata.get(META_REF).is_some_and(|r| {
                let r = String::from_utf8_lossy(r);
                r == text || r.ends_with(&format!("/{text}"))
            })
        })
        .map(|i| &i.id)
        .collect();
    let by_prefix: Vec<&ImageId> = if text.len() >= 4 {
        images
            .iter()
            .filter(|i| i.id.as_str().starts_with(text))
            .map(|i| &i.id)
            .collect()
    } else {
        Vec::new()
    };
    match (by_ref.as_slice(), by_prefix.as_slice()) {
        ([one], _) | ([], [one]) => Ok((*one).clone()),
        ([], []) => Ok(ImageId::new(text)?),
        (refs, prefixes) => {
            let mut all: Vec<&str> = refs.iter().chain(prefixes).map(|i| i.as_str()).collect();
            all.sort();
            all.dedup();
            bail!(
                "{text:?} matches several images in store {s}: {}",
                all.join(", ")
            )
        }
    }
}

/// The credentials given on the command line: a user name, and a password from standard
/// input or the environment.
fn credentials(username: Option<String>, password_stdin: bool) -> Result<Option<Credentials>> {
    let password = read_password(password_stdin)?;
    Ok(match (username, password) {
        (Some(u), Some(p)) => Some(Credentials::new(u, p)),
        (Some(u), None) => {
            bail!(
                "a password is needed for user {u:?}: pass --password-stdin or set IMAGESTORE_REGISTRY_PASSWORD"
            )
        }
        (None, Some(_)) => {
            bail!("a password was given without a user name: pass --username")
        }
        (None, None) => None,
    })
}

fn read_password(stdin: bool) -> Result<Option<String>> {
    if stdin {
        let input = std::io::stdin();
        if input.is_terminal() {
            eprintln!("password for the registry (input is echoed; prefer a pipe):");
        }
        let mut line = String::new();
        input
            .lock()
            .read_line(&mut line)
            .context("reading the password from standard input")?;
        let p = line.trim_end_matches(['\n', '\r']).to_owned();
        if p.is_empty() {
            bail!("--password-stdin: standard input held no password");
        }
        return Ok(Some(p));
    }
    Ok(std::env::var("IMAGESTORE_REGISTRY_PASSWORD")
        .ok()
        .filter(|p| !p.is_empty()))
}

async fn report(store: &dyn ImageStorer, done: &Imported, what: &str, json: bool) -> Result<()> {
    let s = &done.store;
    if json {
        let chain = imagestore::ImageStorerExt::chain(store, s, &done.top).await?;
        let usage = store.image_storage_usage(s).await?;
        output::json(&json!({
            "result": done,
            "chain": chain.iter().map(ImageView::from).collect::<Vec<_>>(),
            "usage_bytes": usage,
        }))?;
        return Ok(());
    }
    println!(
        "{what}{} into store {s}: {} layer(s) written, {} already stored",
        done.reference
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default(),
        done.written,
        done.skipped
    );
    println!("image {}", done.top);
    for r in &done.references {
        println!("reference {r} -> {}", done.top);
    }
    crate::content::show_chain(store, s, &done.top, false).await?;
    println!("next:");
    println!(
        "  imagestore checkout --store {s} {} /tmp/rootfs --rootless",
        done.top
    );
    println!(
        "  imagestore oci export --store {s} {} /tmp/layout",
        done.top
    );
    Ok(())
}

/// Where the sample image lives in the source tree this binary was built from; not known to a
/// release build (`cargo xtask dist`), which must not carry the path of the tree it was built in.
const SOURCE_TREE_SAMPLE: Option<&str> = match crate::build_info::COMMIT {
    Some(_) => None,
    None => Some(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../samples/debian-mini"
    )),
};

/// Where the sample image is looked for when `--path` is not given: beside an installed binary
/// (`<prefix>/share/imagestore/samples/debian-mini` for `<prefix>/bin/imagestore`, as the
/// release archive and the Debian package lay it out), then in the source tree.
fn sample_candidates() -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Some(prefix) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent()?.parent().map(std::path::Path::to_path_buf))
    {
        out.push(prefix.join("share/imagestore/samples/debian-mini"));
    }
    if let Some(p) = SOURCE_TREE_SAMPLE {
        out.push(std::path::PathBuf::from(p));
    }
    out
}

/// `imagestore sample`: imports the committed sample layout and shows the chain and usage.
pub async fn sample(
    store: &dyn ImageStorer,
    s: String,
    path: Option<std::path::PathBuf>,
    json: bool,
    progress: Arc<dyn Progress>,
) -> Result<()> {
    let path = match path {
        Some(p) => {
            if !p.join("index.json").is_file() {
                bail!(
                    "no sample image at {} (an OCI layout with index.json)",
                    p.display()
                );
            }
            p
        }
        None => {
            let candidates = sample_candidates();
            match candidates.iter().find(|p| p.join("index.json").is_file()) {
                Some(p) => p.clone(),
                None => bail!(
                    "no sample image (an OCI layout with index.json) at {}; pass --path DIR",
                    candidates
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(" or ")
                ),
            }
        }
    };
    let s = StoreName::new(s)?;
    let done = import_path(store, &s, &path, None, &Platform::host(), progress).await?;
    report(store, &done, "imported the sample image", json).await
}

/// Runs an `oci` command.
pub async fn run(
    store: &dyn ImageStorer,
    cmd: OciCmd,
    json: bool,
    progress: Arc<dyn Progress>,
) -> Result<()> {
    match cmd {
        OciCmd::Import {
            store: s,
            path,
            tag,
            platform: p,
        } => {
            let s = s.name()?;
            let done = import_path(
                store,
                &s,
                &path,
                tag.as_deref(),
                &platform(p.as_deref())?,
                progress,
            )
            .await?;
            report(store, &done, &format!("imported {}", path.display()), json).await
        }
        OciCmd::Pull {
            store: s,
            reference,
            insecure,
            username,
            password_stdin,
            platform: p,
            concurrency,
            tmp_dir,
        } => {
            let s = s.name()?;
            let credentials = credentials(username, password_stdin)?;
            let options = PullOptions {
                client: ClientOptions {
                    insecure,
                    credentials,
                },
                platform: platform(p.as_deref())?,
                concurrency: usize::from(concurrency),
                tmp_dir,
            };
            let done = pull(store, &s, &reference, &options, progress).await?;
            report(store, &done, &format!("pulled {reference}"), json).await
        }
        OciCmd::Push {
            store: s,
            reference,
            destination,
            insecure,
            username,
            password_stdin,
            chunk_threshold,
            chunk_size,
        } => {
            let s = s.name()?;
            let Some(source) = resolve_ref(store, &s, &reference).await? else {
                bail!(
                    "no reference {reference:?} in store {s} (list them with `imagestore oci refs --store {s}`)"
                );
            };
            let options = PushOptions {
                client: ClientOptions {
                    insecure,
                    credentials: credentials(username, password_stdin)?,
                },
                chunk_threshold,
                chunk_size,
            };
            let done = push(store, &s, &source, &destination, &options, progress).await?;
            if json {
                output::json(&json!({ "result": done }))?;
            } else {
                println!(
                    "pushed {s}/{} to {}: manifest {}, {} byte(s) uploaded",
                    done.source, done.destination, done.manifest_digest, done.bytes_uploaded
                );
                for (i, l) in done.layers.iter().enumerate() {
                    println!(
                        "  {i:>3}  {}  {:>10}  {:?}",
                        l.digest,
                        output::human(l.size),
                        l.transfer
                    );
                }
                println!(
                    "  cfg  {}  {:>10}  {:?}",
                    done.config.digest,
                    output::human(done.config.size),
                    done.config.transfer
                );
            }
            Ok(())
        }
        OciCmd::Export {
            store: s,
            id,
            dest,
            archive,
            tag,
        } => {
            let s = s.name()?;
            let target = match (dest, archive) {
                (_, Some(f)) => Target::Archive(f),
                (Some(d), None) => Target::Layout(d),
                (None, None) => bail!("give a destination directory or --archive FILE"),
            };
            let done = match resolve_ref(store, &s, &id).await? {
                Some(r) => {
                    export_reference(store, &s, &r, &target, tag.as_deref(), progress).await?
                }
                None => {
                    let id = resolve_id(store, &s, &id).await?;
                    export(store, &s, &id, &target, tag.as_deref(), progress).await?
                }
            };
            let id = done.reference.as_ref().map_or_else(
                || {
                    done.layers
                        .last()
                        .map(|l| l.image.to_string())
                        .unwrap_or_default()
                },
                ToString::to_string,
            );
            if json {
                output::json(&done)?;
            } else {
                let kind = match target {
                    Target::Layout(_) => "OCI layout",
                    Target::Archive(_) => "oci-archive",
                };
                println!(
                    "exported {s}/{id} to {kind} {} as tag {}: manifest {}, {} layer(s){}",
                    done.path.display(),
                    done.tag,
                    done.manifest.digest,
                    done.layers.len(),
                    match (done.manifest_preserved, done.config_preserved) {
                        (true, _) => ", manifest and config as imported",
                        (false, true) => ", config as imported",
                        (false, false) => "",
                    }
                );
                for (i, l) in done.layers.iter().enumerate() {
                    println!(
                        "  {i:>3}  {}  {:>10}  {}",
                        l.descriptor.digest,
                        output::human(l.descriptor.size),
                        l.descriptor.media_type
                    );
                }
            }
            Ok(())
        }
    }
}
