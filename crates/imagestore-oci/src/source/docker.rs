//! docker-archives (`docker save`, `skopeo copy ... docker-archive:`): `manifest.json` lists,
//! per image, its config file and its layer files; the config's diff ids name the layers.
//!
//! The archive carries no blob digests for layers, so each layer's sum is found from its
//! bytes: an uncompressed layer's sum is its diff id (checked by the store while writing);
//! a compressed one is hashed first.

use imagestore_core::Digest;
use imagestore_core::layer::ingest::sniff;
use imagestore_core::layer::toc::Compression;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::plan::{Plan, SourceLayer};
use crate::source::files::Files;
use crate::spec::{self, Descriptor, MAX_JSON, Manifest, media};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Entry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

fn matches_tag(entry: &Entry, want: &str) -> bool {
    entry.repo_tags.iter().flatten().any(|t| {
        t == want
            || t.rsplit_once(':').is_some_and(|(_, tag)| tag == want)
            || t.strip_prefix("docker.io/") == Some(want)
            || t.strip_prefix("docker.io/library/") == Some(want)
    })
}

async fn hash_member(files: &Files, name: &str) -> Result<Digest> {
    let files = files.clone();
    let name = name.to_owned();
    tokio::task::spawn_blocking(move || {
        let (mut r, _) = files.open_blocking(&name)?;
        let mut h = imagestore_core::Algorithm::Sha256.hasher();
        std::io::copy(&mut r, &mut h).map_err(|e| Error::io(files.describe(&name), e))?;
        Ok(h.finish())
    })
    .await
    .map_err(|e| Error::invalid("docker-archive", format!("hashing task failed: {e}")))?
}

/// Resolves the image of a docker-archive: the one tagged `tag`, or the only one.
pub async fn plan(files: &Files, tag: Option<&str>) -> Result<Plan> {
    let source = format!("docker-archive {}", files.root().display());
    let what = files.describe("manifest.json");
    let entries: Vec<Entry> =
        spec::parse_json(&files.read("manifest.json", MAX_JSON).await?, &what)?;
    let all_tags = || {
        let t: Vec<&str> = entries
            .iter()
            .flat_map(|e| e.repo_tags.iter().flatten().map(String::as_str))
            .collect();
        if t.is_empty() {
            "none".to_owned()
        } else {
            t.join(", ")
        }
    };
    let entry = match tag {
        Some(t) => entries.iter().find(|e| matches_tag(e, t)).ok_or_else(|| {
            Error::NotFound(format!(
                "no image tagged {t:?} in {what} (tags: {})",
                all_tags()
            ))
        })?,
        None => match entries.as_slice() {
            [one] => one,
            [] => return Err(Error::invalid(&what, "the archive holds no image")),
            _ => {
                return Err(Error::invalid(
                    &what,
                    format!(
                        "the archive holds several images; choose one with --tag (tags: {})",
                        all_tags()
                    ),
                ));
            }
        },
    };
    let reference = match tag {
        Some(t) => entry
            .repo_tags
            .iter()
            .flatten()
            .find(|rt| *rt == t || rt.ends_with(&format!(":{t}")) || rt.ends_with(&format!("/{t}")))
            .cloned()
            .or_else(|| Some(t.to_owned())),
        None => entry.repo_tags.iter().flatten().next().cloned(),
    };
    let config_what = files.describe(&entry.config);
    let config = files.read(&entry.config, MAX_JSON).await?;
    let diff_ids = spec::diff_ids(&config, &config_what)?;
    let mut layers = Vec::with_capacity(entry.layers.len());
    for (i, name) in entry.layers.iter().enumerate() {
        let magic = files.peek(name, 8).await?;
        let compression = sniff(&magic).map_err(|e| Error::invalid(files.describe(name), e))?;
        let (_, size) = files.open_blocking(name)?;
        let (digest, media_type) = match compression {
            Compression::None => match diff_ids.get(i) {
                Some(d) => (d.clone(), media::OCI_LAYER),
                None => (hash_member(files, name).await?, media::OCI_LAYER),
            },
            Compression::Gzip => (hash_member(files, name).await?, media::OCI_LAYER_GZIP),
            Compression::Zstd => (hash_member(files, name).await?, media::OCI_LAYER_ZSTD),
        };
        layers.push(SourceLayer {
            digest,
            media_type: media_type.to_owned(),
            size,
            blob: name.clone(),
        });
    }
    // The archive has no manifest: describe the image as it is stored, in OCI terms.
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(media::OCI_MANIFEST.into()),
        config: Descriptor::new(
            media::OCI_CONFIG,
            Digest::sha256_of(&config),
            config.len() as u64,
        ),
        layers: layers
            .iter()
            .map(|l| Descriptor::new(l.media_type.clone(), l.digest.clone(), l.size))
            .collect(),
        annotations: Default::default(),
    };
    let manifest = serde_json::to_vec(&manifest)
        .map_err(|e| Error::invalid(&source, format!("encoding the manifest: {e}")))?;
    let references = match tag {
        Some(_) => reference.iter().cloned().collect(),
        None => {
            let mut all: Vec<String> = Vec::new();
            for t in entry.repo_tags.iter().flatten() {
                if !all.contains(t) {
                    all.push(t.clone());
                }
            }
            all
        }
    };
    let mut plan = Plan::new(source, reference, manifest, config, layers, diff_ids)?;
    plan.references = references;
    Ok(plan)
}
