//! `pull`: resolve a reference to a manifest (picking a platform from an index), download the
//! missing layers concurrently into temporary files, and write them in chain order as they
//! arrive.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use imagestore_core::layer::stream::spawn_producer;
use imagestore_core::{ByteStream, ImageStorer, StoreName};
use tokio::sync::{Mutex, Semaphore};
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::import::{Blobs, Imported, ensure_store, write_chain};
use crate::plan::{Plan, SourceLayer, image_id};
use crate::progress::{Event, Phase, Progress};
use crate::registry::client::{Client, ClientOptions};
use crate::registry::reference::Reference;
use crate::spec::{self, Descriptor, Index, Manifest, Platform, media};

/// Downloads running at once unless told otherwise.
pub const DEFAULT_CONCURRENCY: usize = 3;

/// How to pull.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// Registry access (plain HTTP, credentials).
    pub client: ClientOptions,
    /// The platform picked from a multi-platform index.
    pub platform: Platform,
    /// Most blob downloads at once (at least 1).
    pub concurrency: usize,
    /// Where blobs are downloaded to before being written (default: the system's temp dir).
    pub tmp_dir: Option<PathBuf>,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            client: ClientOptions::default(),
            platform: Platform::host(),
            concurrency: DEFAULT_CONCURRENCY,
            tmp_dir: None,
        }
    }
}

/// Resolves `reference` to a plan: the manifest (through an index if needed) and the config.
pub async fn resolve(client: &Client, reference: &Reference, platform: &Platform) -> Result<Plan> {
    let mut fetched = client.manifest(&reference.manifest_ref()).await?;
    if let Some(want) = &reference.digest
        && fetched.digest != *want
    {
        return Err(Error::DigestMismatch {
            what: format!("manifest of {reference}"),
            expected: want.clone(),
            actual: fetched.digest,
        });
    }
    for _ in 0..4 {
        let kind = spec::sniff_manifest_type(&fetched.bytes, fetched.content_type.as_deref())
            .unwrap_or_default();
        if !media::is_index(&kind) {
            break;
        }
        let what = format!("index of {reference}");
        let index: Index = spec::parse_json(&fetched.bytes, &what)?;
        let chosen = index.select(platform, &what)?.clone();
        fetched = client.manifest(&chosen.digest.to_string()).await?;
        if fetched.digest != chosen.digest {
            return Err(Error::DigestMismatch {
                what: format!("manifest for {platform} of {reference}"),
                expected: chosen.digest,
                actual: fetched.digest,
            });
        }
    }
    let kind = spec::sniff_manifest_type(&fetched.bytes, fetched.content_type.as_deref())
        .unwrap_or_default();
    let what = format!("manifest {} of {reference}", fetched.digest);
    if !media::is_manifest(&kind) {
        return Err(Error::invalid(
            &what,
            format!(
                "media type {kind:?} is not an image manifest (schema 1 images are not supported)"
            ),
        ));
    }
    let manifest: Manifest = spec::parse_json(&fetched.bytes, &what)?;
    let config_what = format!("config {} of {reference}", manifest.config.digest);
    let config = client.small_blob(&manifest.config, &config_what).await?;
    let diff_ids = spec::diff_ids(&config, &config_what)?;
    let layers = manifest
        .layers
        .iter()
        .map(|l| SourceLayer {
            digest: l.digest.clone(),
            media_type: l.media_type.clone(),
            size: l.size,
            blob: l.digest.to_string(),
        })
        .collect();
    let mut plan = Plan::new(
        format!("registry {}", reference.registry),
        Some(reference.to_string()),
        fetched.bytes,
        config,
        layers,
        diff_ids,
    )?;
    plan.manifest_media_type = kind;
    Ok(plan)
}

type Download = JoinHandle<Result<PathBuf>>;

/// Layer blobs downloaded in the background; `open` waits for layer `i`'s download.
struct Pulled {
    client: Arc<Client>,
    progress: Arc<dyn Progress>,
    descriptors: Vec<Descriptor>,
    dir: PathBuf,
    downloads: Mutex<Vec<Option<Download>>>,
}

impl Drop for Pulled {
    fn drop(&mut self) {
        if let Ok(mut d) = self.downloads.try_lock() {
            for h in d.iter_mut().flatten() {
                h.abort();
            }
        }
    }
}

fn spawn_download(
    client: Arc<Client>,
    progress: Arc<dyn Progress>,
    sem: Option<Arc<Semaphore>>,
    d: Descriptor,
    dest: PathBuf,
    layer: usize,
    layers: usize,
) -> Download {
    tokio::spawn(async move {
        let _permit = match &sem {
            Some(s) => Some(
                s.clone()
                    .acquire_owned()
                    .await
                    .map_err(|e| Error::invalid("download", e))?,
            ),
            None => None,
        };
        progress.event(Event::Start {
            layer,
            layers,
            phase: Phase::Download,
            digest: d.digest.clone(),
            total: Some(d.size),
        });
        client.download(&d, &dest, &progress, layer).await?;
        progress.event(Event::Finish {
            layer,
            phase: Phase::Download,
            image: None,
            skipped: false,
        });
        Ok(dest)
    })
}

#[async_trait]
impl Blobs for Pulled {
    async fn open(&self, index: usize) -> Result<ByteStream> {
        let handle = self
            .downloads
            .lock()
            .await
            .get_mut(index)
            .and_then(Option::take);
        let d = self
            .descriptors
            .get(index)
            .ok_or_else(|| Error::invalid("pull", format!("no layer {index}")))?;
        let handle = match handle {
            Some(h) => h,
            None => spawn_download(
                self.client.clone(),
                self.progress.clone(),
                None,
                d.clone(),
                self.dir.join(format!("{index}.blob")),
                index,
                self.descriptors.len(),
            ),
        };
        let path = handle.await.map_err(|e| {
            Error::invalid(format!("layer {index}"), format!("download task: {e}"))
        })??;
        let file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
        // The open file keeps the bytes; the name can go now.
        let _ = std::fs::remove_file(&path);
        let what = path.display().to_string();
        let mut file = file;
        Ok(spawn_producer(move |w| {
            std::io::copy(&mut file, w)
                .map(|_| ())
                .map_err(|e| imagestore_core::Error::invalid(format!("reading {what}: {e}")))
        }))
    }
}

/// Pulls `reference` into store `name` (created if needed) and returns what was written.
pub async fn pull(
    store: &dyn ImageStorer,
    name: &StoreName,
    reference: &str,
    options: &PullOptions,
    progress: Arc<dyn Progress>,
) -> Result<Imported> {
    let reference = Reference::parse(reference)?;
    let client = Arc::new(Client::new(&reference, &options.client)?);
    let plan = resolve(&client, &reference, &options.platform).await?;
    ensure_store(store, name).await?;

    // Layers already stored (a prefix of the chain) need no download.
    let mut present = 0;
    for l in &plan.layers {
        match store.get_image(name, &image_id(&l.chain_id)?).await {
            Ok(_) => present += 1,
            Err(e) if e.is_not_found() => break,
            Err(e) => return Err(e.into()),
        }
    }
    let base = options.tmp_dir.clone().unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::Builder::new()
        .prefix("imagestore-pull-")
        .tempdir_in(&base)
        .map_err(|e| Error::io(&base, e))?;
    let sem = Arc::new(Semaphore::new(options.concurrency.max(1)));
    let descriptors: Vec<Descriptor> = plan
        .layers
        .iter()
        .map(|l| Descriptor::new(l.media_type.clone(), l.digest.clone(), l.size))
        .collect();
    let count = descriptors.len();
    let downloads = descriptors
        .iter()
        .enumerate()
        .map(|(i, d)| {
            (i >= present).then(|| {
                spawn_download(
                    client.clone(),
                    progress.clone(),
                    Some(sem.clone()),
                    d.clone(),
                    tmp.path().join(format!("{i}.blob")),
                    i,
                    count,
                )
            })
        })
        .collect();
    let pulled = Pulled {
        client,
        progress: progress.clone(),
        descriptors,
        dir: tmp.path().to_path_buf(),
        downloads: Mutex::new(downloads),
    };
    let result = write_chain(store, name, &plan, &pulled, progress).await;
    drop(pulled);
    drop(tmp);
    result
}
