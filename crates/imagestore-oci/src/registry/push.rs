//! Pushing a reference of a store to a registry: the layers as the store keeps them (their
//! original bytes, so their digests are the manifest's), the config and the manifest byte for
//! byte, so the pushed image has the manifest digest it was imported or pulled with.
//!
//! Each blob is first looked up (`HEAD`) and skipped when present; when the reference was
//! pulled from another repository of the same registry, the blob is mounted from there;
//! otherwise it is uploaded, in one request up to [`PushOptions::chunk_threshold`] bytes and
//! in chunks above, streamed from the store.

use std::sync::Arc;

use imagestore_core::{
    ByteStream, Digest, ImageId, ImageStorer, ImageStorerExt, RefName, StoreName,
};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::progress::{Event, Phase, Progress};
use crate::registry::client::{Client, ClientOptions};
use crate::registry::reference::Reference;
use crate::registry::upload::{Feed, Mount};
use crate::spec::{self, Manifest};

/// Blobs larger than this are uploaded in chunks unless told otherwise.
pub const DEFAULT_CHUNK_THRESHOLD: u64 = 64 << 20;

/// The length of an upload chunk unless told otherwise.
pub const DEFAULT_CHUNK_SIZE: u64 = 16 << 20;

/// How to push.
#[derive(Debug, Clone)]
pub struct PushOptions {
    /// Registry access (plain HTTP, credentials).
    pub client: ClientOptions,
    /// Blobs of more bytes than this are uploaded in chunks (`PATCH` with `Content-Range`).
    pub chunk_threshold: u64,
    /// The length of each chunk (at least 1).
    pub chunk_size: u64,
}

impl Default for PushOptions {
    fn default() -> Self {
        PushOptions {
            client: ClientOptions::default(),
            chunk_threshold: DEFAULT_CHUNK_THRESHOLD,
            chunk_size: DEFAULT_CHUNK_SIZE,
        }
    }
}

/// How a blob reached the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Transfer {
    /// The repository already held it.
    Present,
    /// Mounted from the source repository of the same registry.
    Mounted,
    /// Uploaded in one request.
    Uploaded,
    /// Uploaded in chunks.
    Chunked,
}

/// One blob pushed.
#[derive(Debug, Clone, Serialize)]
pub struct PushedBlob {
    /// Its digest.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
    /// How it got there.
    pub transfer: Transfer,
}

/// What a push did.
#[derive(Debug, Clone, Serialize)]
pub struct Pushed {
    /// The store pushed from.
    pub store: StoreName,
    /// The reference pushed.
    pub source: RefName,
    /// Its image.
    pub image: ImageId,
    /// Where it went, normalised (`registry/repository:tag`).
    pub destination: String,
    /// The manifest's digest (the same as the source's).
    pub manifest_digest: Digest,
    /// The manifest's media type.
    pub manifest_media_type: String,
    /// The config.
    pub config: PushedBlob,
    /// The layers, base first.
    pub layers: Vec<PushedBlob>,
    /// Bytes uploaded (mounted and present blobs count nothing).
    pub bytes_uploaded: u64,
}

/// Where a blob's bytes come from.
enum Source<'a> {
    /// The original bytes of an image's layer.
    Layer(&'a dyn ImageStorer, &'a StoreName, &'a ImageId),
    /// Bytes in memory (the config).
    Bytes(Vec<u8>),
}

impl Source<'_> {
    async fn open(self) -> Result<ByteStream> {
        Ok(match self {
            Source::Layer(store, name, id) => store.export_raw(name, id).await?,
            Source::Bytes(b) => Box::pin(std::io::Cursor::new(b)),
        })
    }
}

/// Puts blob `digest` into the client's repository unless it is there, mounting it from
/// `from` when given.
async fn push_blob(
    client: &Client,
    digest: &Digest,
    size: u64,
    from: Option<&str>,
    source: Source<'_>,
    options: &PushOptions,
    progress: Option<(&Arc<dyn Progress>, usize)>,
) -> Result<Transfer> {
    if client.blob_exists(digest).await? {
        return Ok(Transfer::Present);
    }
    let location = match from {
        Some(from) => match client.mount(digest, from).await? {
            Mount::Mounted => return Ok(Transfer::Mounted),
            Mount::Started(l) => l,
        },
        None => client.start_upload().await?,
    };
    let mut feed = Feed {
        reader: source.open().await?,
        hasher: digest.algorithm().hasher(),
        sent: 0,
        progress: progress.filter(|(p, _)| p.wants_bytes()),
    };
    let chunked = size > options.chunk_threshold;
    client
        .upload(
            &location,
            digest,
            size,
            &mut feed,
            chunked.then_some(options.chunk_size),
        )
        .await?;
    Ok(if chunked {
        Transfer::Chunked
    } else {
        Transfer::Uploaded
    })
}

/// Pushes reference `source` of store `name` to `destination`
/// (`[registry[:port]/]repository[:tag][@digest]`): its layers, config and manifest, byte for
/// byte. The store's backend must keep layer bytes
/// ([`imagestore_core::Capabilities::raw_layers`]) and the reference must name a manifest and
/// a config (as `oci import` and `oci pull` set them).
pub async fn push(
    store: &dyn ImageStorer,
    name: &StoreName,
    source: &RefName,
    destination: &str,
    options: &PushOptions,
    progress: Arc<dyn Progress>,
) -> Result<Pushed> {
    let dest = Reference::parse(destination)?;
    let r = store.get_reference(name, source).await?;
    let what = format!("reference {source} of store {name}");
    let (Some(md), Some(config_digest)) = (&r.target.manifest, &r.target.config) else {
        return Err(Error::invalid(
            &what,
            "names no manifest and config to push (import or pull the image to set them)",
        ));
    };
    if !store.capabilities().raw_layers {
        return Err(Error::invalid(
            &what,
            format!(
                "the {}:// backend does not keep the layers' original bytes, which a push \
                 sends; export the reference to an OCI layout and copy that instead",
                store.scheme()
            ),
        ));
    }
    if let Some(d) = &dest.digest
        && *d != md.digest
    {
        return Err(Error::DigestMismatch {
            what: format!("destination {dest}"),
            expected: d.clone(),
            actual: md.digest.clone(),
        });
    }
    let manifest_bytes = store.get_blob(name, &md.digest).await?;
    let manifest_what = format!("manifest {} of {what}", md.digest);
    let manifest: Manifest = spec::parse_json(&manifest_bytes, &manifest_what)?;
    if manifest.config.digest != *config_digest {
        return Err(Error::invalid(
            &manifest_what,
            format!(
                "names config {}, the reference names {config_digest}",
                manifest.config.digest
            ),
        ));
    }
    let config_bytes = store.get_blob(name, config_digest).await?;
    let chain = store.chain(name, &r.target.image).await?;
    let images = chain.get(1..).unwrap_or_default();
    if images.len() != manifest.layers.len() {
        return Err(Error::invalid(
            &manifest_what,
            format!(
                "lists {} layers, image {} has {}",
                manifest.layers.len(),
                r.target.image,
                images.len()
            ),
        ));
    }
    for (i, (img, l)) in images.iter().zip(&manifest.layers).enumerate() {
        if img.sum.as_ref() != Some(&l.digest) {
            return Err(Error::invalid(
                &manifest_what,
                format!(
                    "layer {i} is {}, but image {} was written from {}",
                    l.digest,
                    img.id,
                    img.sum
                        .as_ref()
                        .map_or_else(|| "no recorded blob".to_owned(), ToString::to_string)
                ),
            ));
        }
    }

    let client = Client::new(&dest, &options.client)?;
    // A reference pulled from another repository of the same registry: mount from there.
    let from = Reference::parse(source.as_str())
        .ok()
        .filter(|s| s.registry == dest.registry && s.repository != dest.repository)
        .map(|s| s.repository);
    let count = images.len();
    let mut layers = Vec::with_capacity(count);
    let mut bytes_uploaded = 0;
    for (i, (img, l)) in images.iter().zip(&manifest.layers).enumerate() {
        progress.event(Event::Start {
            layer: i,
            layers: count,
            phase: Phase::Upload,
            digest: l.digest.clone(),
            total: Some(l.size),
        });
        let transfer = push_blob(
            &client,
            &l.digest,
            l.size,
            from.as_deref(),
            Source::Layer(store, name, &img.id),
            options,
            Some((&progress, i)),
        )
        .await
        .map_err(|e| Error::context(format!("layer {i} ({})", l.digest), e))?;
        if matches!(transfer, Transfer::Uploaded | Transfer::Chunked) {
            bytes_uploaded += l.size;
        }
        progress.event(Event::Finish {
            layer: i,
            phase: Phase::Upload,
            image: Some(img.id.clone()),
            skipped: matches!(transfer, Transfer::Present | Transfer::Mounted),
        });
        layers.push(PushedBlob {
            digest: l.digest.clone(),
            size: l.size,
            transfer,
        });
    }
    let config_size = config_bytes.len() as u64;
    let transfer = push_blob(
        &client,
        config_digest,
        config_size,
        from.as_deref(),
        Source::Bytes(config_bytes),
        options,
        None,
    )
    .await
    .map_err(|e| Error::context(format!("config {config_digest}"), e))?;
    if matches!(transfer, Transfer::Uploaded | Transfer::Chunked) {
        bytes_uploaded += config_size;
    }
    client
        .put_manifest(&dest.manifest_ref(), &md.media_type, manifest_bytes)
        .await?;
    Ok(Pushed {
        store: name.clone(),
        source: source.clone(),
        image: r.target.image.clone(),
        destination: dest.to_string(),
        manifest_digest: md.digest.clone(),
        manifest_media_type: md.media_type.clone(),
        config: PushedBlob {
            digest: config_digest.clone(),
            size: config_size,
            transfer,
        },
        layers,
        bytes_uploaded,
    })
}
