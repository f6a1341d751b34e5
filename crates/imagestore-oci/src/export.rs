//! Writing an image's chain out as an OCI image layout (a directory) or an oci-archive (the
//! layout in a tar).
//!
//! Each layer above scratch becomes one blob: on backends that keep layer bytes
//! ([`imagestore_core::Capabilities::raw_layers`]) the exact bytes it was written with, so its
//! digest is the sum it was imported with; elsewhere the layer's changes from its parent as an
//! uncompressed tar. The config is the one the image was imported with (the blob its reference
//! names, or, for images written before stores kept references, the copy on the top image)
//! when its diff ids still match, byte for byte; otherwise a config with the actual diff ids
//! (keeping the original config's other fields when there is one). The manifest is the
//! original one, byte for byte, when it describes exactly the blobs written (always the case
//! on backends with raw layers); otherwise a new OCI manifest.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use imagestore_core::layer::ingest::sniff;
use imagestore_core::layer::stream::BlockingReader;
use imagestore_core::layer::toc::Compression;
use imagestore_core::{
    ByteStream, Digest, FilterSpec, Image, ImageId, ImageStorer, ImageStorerExt, RefName,
    Reference, StoreName,
};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::plan::{META_CONFIG, META_DIFF_ID, META_MANIFEST, META_REF};
use crate::progress::{Event, Phase, Progress};
use crate::spec::{self, Descriptor, Index, MAX_JSON, Manifest, Platform, REF_NAME, media};

/// Where an export goes.
#[derive(Debug, Clone)]
pub enum Target {
    /// An OCI layout directory: created, or an existing layout the image is added to.
    Layout(PathBuf),
    /// An oci-archive file (replaced if it exists).
    Archive(PathBuf),
}

/// One exported layer.
#[derive(Debug, Clone, Serialize)]
pub struct ExportedLayer {
    /// The image it came from.
    pub image: ImageId,
    /// Its descriptor in the manifest.
    pub descriptor: Descriptor,
    /// Its diff id in the config.
    pub diff_id: Digest,
}

/// What an export wrote.
#[derive(Debug, Clone, Serialize)]
pub struct Exported {
    /// The layout directory or archive.
    pub path: PathBuf,
    /// The tag (`org.opencontainers.image.ref.name`) of the image in the layout.
    pub tag: String,
    /// The reference of the store whose manifest and config were exported, if any.
    pub reference: Option<RefName>,
    /// The manifest's descriptor.
    pub manifest: Descriptor,
    /// The config's descriptor.
    pub config: Descriptor,
    /// The layers, base first.
    pub layers: Vec<ExportedLayer>,
    /// True if the config is the one stored at import, byte for byte.
    pub config_preserved: bool,
    /// True if the manifest is the one stored at import, byte for byte (so its digest is the
    /// source's).
    pub manifest_preserved: bool,
}

/// The manifest and config an image was imported with.
#[derive(Debug, Clone)]
struct Original {
    manifest: Option<(Vec<u8>, String)>,
    config: Option<Vec<u8>>,
}

/// The tag an image exports under by default: the tag of the reference it was imported
/// under (kept on the top image by stores written before references), else `latest`.
pub fn default_tag(top: &Image) -> String {
    let r = top
        .metadata
        .get(META_REF)
        .and_then(|v| std::str::from_utf8(v).ok())
        .unwrap_or("");
    tag_of_reference(r)
}

/// The tag a reference name exports under: its tag (`repo:v1` → `v1`, `v1` → `v1`), else
/// `latest`.
pub fn tag_of_reference(r: &str) -> String {
    let last = r.rsplit('/').next().unwrap_or("");
    let last = last.split('@').next().unwrap_or("");
    let tag = match last.rsplit_once(':') {
        Some((_, t)) => t,
        None if !r.contains('/') => last,
        None => "",
    };
    if valid_tag(tag) {
        tag.to_owned()
    } else {
        "latest".to_owned()
    }
}

/// True for a tag as OCI references allow it: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
pub fn valid_tag(t: &str) -> bool {
    let mut chars = t.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric() || c == '_')
        && t.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::io(path, e)
}

/// Prepares a layout directory: absent (created), empty, or already a layout.
fn prepare_layout(dir: &Path) -> Result<()> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            let is_layout = dir.join("oci-layout").is_file() && dir.join("index.json").is_file();
            if !is_layout && entries.next().is_some() {
                return Err(Error::invalid(
                    dir.display(),
                    "exists and is neither empty nor an OCI layout",
                ));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        Err(e) => return Err(Error::io(dir, e)),
    }
    let blobs = dir.join("blobs").join("sha256");
    std::fs::create_dir_all(&blobs).map_err(io_err(&blobs))?;
    Ok(())
}

/// A blob written to a layout, with what was learnt while writing it.
struct WrittenBlob {
    digest: Digest,
    size: u64,
    compression: Compression,
    diff_id: Option<Digest>,
}

/// Streams `body` into `dir/blobs/sha256/<digest>`, hashing it and, if asked, the
/// uncompressed bytes too.
fn write_blob_blocking(
    dir: &Path,
    mut body: impl Read,
    want_diff_id: bool,
    advance: impl Fn(u64),
) -> Result<WrittenBlob> {
    let blobs = dir.join("blobs").join("sha256");
    let mut tmp = tempfile::Builder::new()
        .prefix(".partial-")
        .tempfile_in(&blobs)
        .map_err(io_err(&blobs))?;
    let (tx, hasher) = if want_diff_id {
        let (tx, rx) = mpsc::channel::<bytes::Bytes>(4);
        let h = std::thread::spawn(move || crate::verify::uncompressed_digest_of(rx));
        (Some(tx), Some(h))
    } else {
        (None, None)
    };
    let mut h = imagestore_core::Algorithm::Sha256.hasher();
    let mut size = 0u64;
    let mut head: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = body
            .read(&mut buf)
            .map_err(|e| Error::invalid("reading the layer from the store", e))?;
        if n == 0 {
            break;
        }
        let chunk = &buf[..n];
        if head.len() < 8 {
            head.extend_from_slice(&chunk[..chunk.len().min(8 - head.len())]);
        }
        h.update(chunk);
        tmp.write_all(chunk).map_err(io_err(tmp.path()))?;
        if let Some(tx) = &tx {
            let _ = tx.blocking_send(bytes::Bytes::copy_from_slice(chunk));
        }
        size += n as u64;
        advance(n as u64);
    }
    drop(tx);
    let diff_id = match hasher {
        Some(t) => Some(
            t.join()
                .map_err(|_| Error::invalid("diff_id", "the hashing thread panicked"))?
                .map_err(|reason| Error::invalid("the layer from the store", reason))?,
        ),
        None => None,
    };
    tmp.as_file().sync_all().map_err(io_err(tmp.path()))?;
    let digest = h.finish();
    let dest = blobs.join(digest.hex());
    tmp.persist(&dest).map_err(|e| Error::io(&dest, e.error))?;
    let compression = sniff(&head).map_err(|e| Error::invalid(dest.display(), e))?;
    Ok(WrittenBlob {
        digest,
        size,
        compression,
        diff_id,
    })
}

async fn write_blob(
    dir: &Path,
    body: ByteStream,
    want_diff_id: bool,
    progress: &Arc<dyn Progress>,
    layer: usize,
) -> Result<WrittenBlob> {
    let dir = dir.to_path_buf();
    let handle = tokio::runtime::Handle::current();
    let progress = progress.clone();
    tokio::task::spawn_blocking(move || {
        let reader = BlockingReader::new(handle, body);
        write_blob_blocking(&dir, reader, want_diff_id, |n| {
            if progress.wants_bytes() {
                progress.event(Event::Advance {
                    layer,
                    phase: Phase::Export,
                    bytes: n,
                });
            }
        })
    })
    .await
    .map_err(|e| Error::invalid("export", format!("writer task failed: {e}")))?
}

/// Writes a small blob (config, manifest) and returns its descriptor.
fn put_json_blob(dir: &Path, media_type: &str, bytes: &[u8]) -> Result<Descriptor> {
    let digest = Digest::sha256_of(bytes);
    let path = dir.join("blobs").join("sha256").join(digest.hex());
    write_atomic(&path, bytes)?;
    Ok(Descriptor::new(media_type, digest, bytes.len() as u64))
}

/// Writes a file through a temporary file and a rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".partial-")
        .tempfile_in(dir)
        .map_err(io_err(dir))?;
    tmp.write_all(bytes).map_err(io_err(tmp.path()))?;
    tmp.as_file().sync_all().map_err(io_err(tmp.path()))?;
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

fn layer_media_type(c: Compression) -> &'static str {
    match c {
        Compression::None => media::OCI_LAYER,
        Compression::Gzip => media::OCI_LAYER_GZIP,
        Compression::Zstd => media::OCI_LAYER_ZSTD,
    }
}

/// The config for the exported image: the original one if its diff ids match, else the
/// original one with the actual diff ids, else a minimal config.
fn config_for(original: Option<&Vec<u8>>, diff_ids: &[Digest]) -> Result<(Vec<u8>, bool)> {
    if let Some(stored) = original {
        if spec::diff_ids(stored, "stored config").is_ok_and(|d| d == diff_ids) {
            return Ok((stored.clone(), true));
        }
        if let Ok(serde_json::Value::Object(mut obj)) =
            serde_json::from_slice::<serde_json::Value>(stored)
        {
            obj.insert(
                "rootfs".into(),
                serde_json::json!({ "type": "layers", "diff_ids": diff_ids }),
            );
            let bytes = serde_json::to_vec(&obj)
                .map_err(|e| Error::invalid("config", format!("encoding: {e}")))?;
            return Ok((bytes, false));
        }
    }
    let host = Platform::host();
    let config = serde_json::json!({
        "architecture": host.architecture,
        "os": host.os,
        "config": {},
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    });
    let bytes = serde_json::to_vec(&config)
        .map_err(|e| Error::invalid("config", format!("encoding: {e}")))?;
    Ok((bytes, false))
}

/// Adds (or replaces) `tag` in the layout's `index.json` and makes sure `oci-layout` exists.
fn update_index(dir: &Path, manifest: &Descriptor, tag: &str) -> Result<()> {
    let index_path = dir.join("index.json");
    let mut index = match std::fs::read(&index_path) {
        Ok(bytes) => {
            if bytes.len() as u64 > MAX_JSON {
                return Err(Error::invalid(index_path.display(), "too large"));
            }
            spec::parse_json::<Index>(&bytes, &index_path.display().to_string())?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Index::empty(),
        Err(e) => return Err(Error::io(&index_path, e)),
    };
    index
        .manifests
        .retain(|d| d.annotations.get(REF_NAME).map(String::as_str) != Some(tag));
    let mut d = manifest.clone();
    d.annotations = BTreeMap::from([(REF_NAME.to_owned(), tag.to_owned())]);
    index.manifests.push(d);
    let bytes = serde_json::to_vec(&index)
        .map_err(|e| Error::invalid(index_path.display(), format!("encoding: {e}")))?;
    let layout = dir.join("oci-layout");
    if !layout.is_file() {
        write_atomic(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    }
    write_atomic(&index_path, &bytes)
}

/// Tars a layout directory into `file` (deterministically: sorted, fixed owners and times).
fn tar_layout(dir: &Path, file: &Path) -> Result<()> {
    let parent = file.parent().unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".partial-")
        .tempfile_in(parent)
        .map_err(io_err(parent))?;
    let mut b = tar::Builder::new(std::io::BufWriter::new(tmp));
    b.mode(tar::HeaderMode::Deterministic);
    let add = |b: &mut tar::Builder<_>, rel: &str| -> Result<()> {
        let p = dir.join(rel);
        b.append_path_with_name(&p, rel).map_err(io_err(&p))
    };
    add(&mut b, "oci-layout")?;
    add(&mut b, "index.json")?;
    let blobs = dir.join("blobs").join("sha256");
    let mut names: Vec<String> = std::fs::read_dir(&blobs)
        .map_err(io_err(&blobs))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    for n in names {
        add(&mut b, &format!("blobs/sha256/{n}"))?;
    }
    let tmp = b
        .into_inner()
        .map_err(io_err(file))?
        .into_inner()
        .map_err(|e| Error::io(file, e.into_error()))?;
    tmp.as_file().sync_all().map_err(io_err(file))?;
    tmp.persist(file).map_err(|e| Error::io(file, e.error))?;
    Ok(())
}

/// The manifest and config reference `r` names, read from the store's blobs.
async fn original_of(store: &dyn ImageStorer, name: &StoreName, r: &Reference) -> Result<Original> {
    let manifest = match &r.target.manifest {
        Some(d) => Some((
            store
                .get_blob(name, &d.digest)
                .await
                .map_err(|e| Error::context(format!("manifest of reference {}", r.name), e))?,
            d.media_type.clone(),
        )),
        None => None,
    };
    let config = match &r.target.config {
        Some(d) => Some(
            store
                .get_blob(name, d)
                .await
                .map_err(|e| Error::context(format!("config of reference {}", r.name), e))?,
        ),
        None => None,
    };
    Ok(Original { manifest, config })
}

/// Exports reference `reference` of store `name`: its image's whole chain, with the manifest
/// and config it names byte for byte where the layers allow (see the module doc), under `tag`
/// (default: the reference's tag, else `latest`).
pub async fn export_reference(
    store: &dyn ImageStorer,
    name: &StoreName,
    reference: &RefName,
    target: &Target,
    tag: Option<&str>,
    progress: Arc<dyn Progress>,
) -> Result<Exported> {
    let r = store.get_reference(name, reference).await?;
    let original = original_of(store, name, &r).await?;
    let default = tag_of_reference(r.name.as_str());
    export_chain(
        store,
        name,
        &r.target.image,
        (original, Some(r.name), default),
        target,
        tag,
        progress,
    )
    .await
}

/// Exports image `id` of store `name` (its whole chain above scratch) to `target` under
/// `tag`. The manifest and config are those of the first reference (by name) naming the image
/// with both, else those an older store kept on the top image; the default tag is that
/// reference's tag, else [`default_tag`].
pub async fn export(
    store: &dyn ImageStorer,
    name: &StoreName,
    id: &ImageId,
    target: &Target,
    tag: Option<&str>,
    progress: Arc<dyn Progress>,
) -> Result<Exported> {
    let named = store.list_references(name).await?.into_iter().find(|r| {
        &r.target.image == id && r.target.manifest.is_some() && r.target.config.is_some()
    });
    let origin = match named {
        Some(r) => {
            let original = original_of(store, name, &r).await?;
            let default = tag_of_reference(r.name.as_str());
            (original, Some(r.name), default)
        }
        None => {
            let top = store.get_image(name, id).await?;
            let original = Original {
                manifest: top.metadata.get(META_MANIFEST).map(|m| {
                    let t = spec::sniff_manifest_type(m, None)
                        .unwrap_or_else(|| media::OCI_MANIFEST.to_owned());
                    (m.clone(), t)
                }),
                config: top.metadata.get(META_CONFIG).cloned(),
            };
            (original, None, default_tag(&top))
        }
    };
    export_chain(store, name, id, origin, target, tag, progress).await
}

async fn export_chain(
    store: &dyn ImageStorer,
    name: &StoreName,
    id: &ImageId,
    (original, reference, default): (Original, Option<RefName>, String),
    target: &Target,
    tag: Option<&str>,
    progress: Arc<dyn Progress>,
) -> Result<Exported> {
    let chain = store.chain(name, id).await?;
    let layers = match chain.split_first() {
        Some((_scratch, rest)) if !rest.is_empty() => rest,
        _ => {
            return Err(Error::invalid(
                format!("{name}/{id}"),
                "scratch has no layers to export",
            ));
        }
    };
    let tag = match tag {
        Some(t) if valid_tag(t) => t.to_owned(),
        Some(t) => {
            return Err(Error::invalid(
                format!("tag {t:?}"),
                "a tag is 1 to 128 of [A-Za-z0-9._-], starting with a letter, digit or '_'",
            ));
        }
        None => default,
    };
    let (dir, _tmp) = match target {
        Target::Layout(d) => {
            let d2 = d.clone();
            tokio::task::spawn_blocking(move || prepare_layout(&d2))
                .await
                .map_err(|e| Error::invalid(d.display(), format!("task failed: {e}")))??;
            (d.clone(), None)
        }
        Target::Archive(f) => {
            let parent = match f.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            let t = tempfile::Builder::new()
                .prefix(".imagestore-export-")
                .tempdir_in(&parent)
                .map_err(io_err(&parent))?;
            let d = t.path().to_path_buf();
            prepare_layout(&d)?;
            (d, Some(t))
        }
    };
    let raw = store.capabilities().raw_layers;
    let count = layers.len();
    let mut out = Vec::with_capacity(count);
    for (i, img) in layers.iter().enumerate() {
        let stored_diff = img
            .metadata
            .get(META_DIFF_ID)
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|s| Digest::parse(s).ok());
        let use_raw = raw && img.sum.is_some();
        progress.event(Event::Start {
            layer: i,
            layers: count,
            phase: Phase::Export,
            digest: img.sum.clone().unwrap_or_else(Digest::empty_sha256),
            total: if use_raw { Some(img.size) } else { None },
        });
        let body = if use_raw {
            store.export_raw(name, &img.id).await?
        } else {
            let parent = img.parent.clone().unwrap_or_else(ImageId::scratch);
            store
                .export(name, &img.id, Some(&parent), &FilterSpec::all(), true)
                .await?
        };
        let want_diff = !use_raw || stored_diff.is_none();
        let blob = write_blob(&dir, body, want_diff, &progress, i).await?;
        if use_raw
            && let Some(sum) = &img.sum
            && *sum != blob.digest
        {
            return Err(Error::DigestMismatch {
                what: format!("layer {i} of {name}/{id} read back from the store"),
                expected: sum.clone(),
                actual: blob.digest,
            });
        }
        let diff_id = match (blob.compression, &blob.diff_id, &stored_diff) {
            (Compression::None, _, _) => blob.digest.clone(),
            (_, Some(d), _) => d.clone(),
            (_, None, Some(d)) => d.clone(),
            (_, None, None) => {
                return Err(Error::invalid(format!("layer {i}"), "no diff id computed"));
            }
        };
        progress.event(Event::Finish {
            layer: i,
            phase: Phase::Export,
            image: Some(img.id.clone()),
            skipped: false,
        });
        out.push(ExportedLayer {
            image: img.id.clone(),
            descriptor: Descriptor::new(layer_media_type(blob.compression), blob.digest, blob.size),
            diff_id,
        });
    }
    let diff_ids: Vec<Digest> = out.iter().map(|l| l.diff_id.clone()).collect();
    let (config_bytes, config_preserved) = config_for(original.config.as_ref(), &diff_ids)?;
    let config = put_json_blob(&dir, media::OCI_CONFIG, &config_bytes)?;
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(media::OCI_MANIFEST.into()),
        config: config.clone(),
        layers: out.iter().map(|l| l.descriptor.clone()).collect(),
        annotations: BTreeMap::new(),
    };
    // The manifest as imported when it describes exactly these blobs, so that its digest
    // survives the round trip too.
    let (manifest_bytes, manifest_type, manifest_preserved) =
        match original_manifest(original.manifest.as_ref(), &manifest) {
            Some((bytes, media_type)) => (bytes, media_type, true),
            None => (
                serde_json::to_vec(&manifest)
                    .map_err(|e| Error::invalid("manifest", format!("encoding: {e}")))?,
                media::OCI_MANIFEST.to_owned(),
                false,
            ),
        };
    let manifest = put_json_blob(&dir, &manifest_type, &manifest_bytes)?;
    update_index(&dir, &manifest, &tag)?;
    let path = match target {
        Target::Layout(d) => d.clone(),
        Target::Archive(f) => {
            let (d, f2) = (dir.clone(), f.clone());
            tokio::task::spawn_blocking(move || tar_layout(&d, &f2))
                .await
                .map_err(|e| Error::invalid(f.display(), format!("task failed: {e}")))??;
            f.clone()
        }
    };
    Ok(Exported {
        path,
        tag,
        reference,
        manifest,
        config,
        layers: out,
        config_preserved,
        manifest_preserved,
    })
}

/// The original manifest and its media type, if it is an image manifest naming the same
/// config and layers (digest and size: the same bytes) as `built`.
fn original_manifest(
    original: Option<&(Vec<u8>, String)>,
    built: &Manifest,
) -> Option<(Vec<u8>, String)> {
    let (bytes, media_type) = original?;
    let stored: Manifest = serde_json::from_slice(bytes).ok()?;
    let same = |a: &Descriptor, b: &Descriptor| a.digest == b.digest && a.size == b.size;
    let matches = media::is_manifest(media_type)
        && stored.media_type.as_deref().is_none_or(|m| m == media_type)
        && same(&stored.config, &built.config)
        && stored.layers.len() == built.layers.len()
        && stored
            .layers
            .iter()
            .zip(&built.layers)
            .all(|(a, b)| same(a, b));
    matches.then(|| (bytes.clone(), media_type.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags() {
        assert!(valid_tag("latest"));
        assert!(valid_tag("v1.2_3-x"));
        assert!(!valid_tag(""));
        assert!(!valid_tag(".x"));
        assert!(!valid_tag("a/b"));
        assert!(!valid_tag(&"a".repeat(129)));
    }
}
