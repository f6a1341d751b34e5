//! OCI image layouts (`oci-layout`, `index.json`, `blobs/<alg>/<hex>`), as a directory or as an
//! oci-archive (the same files in a tar).

use imagestore_core::Digest;

use crate::error::{Error, Result};
use crate::plan::{Plan, SourceLayer};
use crate::source::files::Files;
use crate::spec::{self, Descriptor, Index, MAX_JSON, Manifest, Platform, REF_NAME, media};

/// The member holding a blob.
pub fn blob_name(d: &Digest) -> String {
    format!("blobs/{}/{}", d.algorithm().name(), d.hex())
}

/// Reads a blob that must hash to its descriptor's digest and have its size.
pub async fn read_blob(files: &Files, d: &Descriptor, what: &str) -> Result<Vec<u8>> {
    if d.size > MAX_JSON {
        return Err(Error::invalid(
            what,
            format!("{} bytes; at most {MAX_JSON} are read into memory", d.size),
        ));
    }
    let bytes = files.read(&blob_name(&d.digest), MAX_JSON).await?;
    check_blob(&bytes, d, what)?;
    Ok(bytes)
}

/// Checks bytes against a descriptor's digest and size.
pub fn check_blob(bytes: &[u8], d: &Descriptor, what: &str) -> Result<()> {
    let mut h = d.digest.algorithm().hasher();
    h.update(bytes);
    let actual = h.finish();
    if actual != d.digest {
        return Err(Error::DigestMismatch {
            what: what.to_owned(),
            expected: d.digest.clone(),
            actual,
        });
    }
    if bytes.len() as u64 != d.size {
        return Err(Error::invalid(
            what,
            format!("{} bytes, but the descriptor says {}", bytes.len(), d.size),
        ));
    }
    Ok(())
}

fn tag_of(d: &Descriptor) -> Option<&str> {
    d.annotations.get(REF_NAME).map(String::as_str)
}

/// Resolves the image of a layout: the manifest tagged `tag`, or the only one (named by its
/// `latest` tag when it has several).
pub async fn plan(
    files: &Files,
    kind: &str,
    tag: Option<&str>,
    platform: &Platform,
) -> Result<Plan> {
    let source = format!("{kind} {}", files.root().display());
    let index_name = files.describe("index.json");
    let index: Index = spec::parse_json(&files.read("index.json", MAX_JSON).await?, &index_name)?;
    let candidates: Vec<&Descriptor> = match tag {
        Some(t) => index
            .manifests
            .iter()
            .filter(|d| tag_of(d) == Some(t))
            .collect(),
        None => index.manifests.iter().collect(),
    };
    let mut digests: Vec<&Digest> = candidates.iter().map(|d| &d.digest).collect();
    digests.sort();
    digests.dedup();
    let chosen = match (digests.len(), tag) {
        // One image under several tags: name it by `latest` when that is one of them.
        (1, _) => candidates
            .iter()
            .find(|d| tag_of(d) == Some("latest"))
            .copied()
            .unwrap_or(candidates[0]),
        (0, Some(t)) => {
            return Err(Error::NotFound(format!(
                "no manifest tagged {t:?} in {index_name} (tags: {})",
                tags(&index)
            )));
        }
        (0, None) => return Err(Error::invalid(&index_name, "the layout holds no image")),
        (_, _) => {
            return Err(Error::invalid(
                &index_name,
                format!(
                    "the layout holds several images; choose one with --tag (tags: {})",
                    tags(&index)
                ),
            ));
        }
    };
    let reference = tag
        .map(str::to_owned)
        .or_else(|| tag_of(chosen).map(str::to_owned));
    let mut desc = chosen.clone();
    // A nested index (a multi-platform image in a layout): pick the platform.
    for _ in 0..4 {
        if !media::is_index(&desc.media_type) {
            break;
        }
        let what = format!("index {}", desc.digest);
        let nested: Index = spec::parse_json(&read_blob(files, &desc, &what).await?, &what)?;
        desc = nested.select(platform, &what)?.clone();
    }
    if !media::is_manifest(&desc.media_type) {
        return Err(Error::invalid(
            &index_name,
            format!(
                "{} has media type {:?}, not an image manifest",
                desc.digest, desc.media_type
            ),
        ));
    }
    let what = format!("manifest {}", desc.digest);
    let manifest_bytes = read_blob(files, &desc, &what).await?;
    let manifest: Manifest = spec::parse_json(&manifest_bytes, &what)?;
    let config_what = format!("config {}", manifest.config.digest);
    let config = read_blob(files, &manifest.config, &config_what).await?;
    let diff_ids = spec::diff_ids(&config, &config_what)?;
    let layers = manifest
        .layers
        .iter()
        .map(|l| SourceLayer {
            digest: l.digest.clone(),
            media_type: l.media_type.clone(),
            size: l.size,
            blob: blob_name(&l.digest),
        })
        .collect();
    let mut references: Vec<String> = match tag {
        Some(t) => vec![t.to_owned()],
        // Every tag of the one image (a tag may be listed twice).
        None => candidates
            .iter()
            .filter_map(|d| tag_of(d).map(str::to_owned))
            .collect(),
    };
    references.dedup();
    if let Some(r) = &reference {
        references.retain(|x| x != r);
        references.insert(0, r.clone());
    }
    let mut plan = Plan::new(source, reference, manifest_bytes, config, layers, diff_ids)?;
    plan.references = references;
    plan.manifest_media_type = desc.media_type.clone();
    Ok(plan)
}

fn tags(index: &Index) -> String {
    let t: Vec<&str> = index.manifests.iter().filter_map(tag_of).collect();
    if t.is_empty() {
        "none".into()
    } else {
        t.join(", ")
    }
}
