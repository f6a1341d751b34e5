//! Local image sources: an OCI layout directory, an oci-archive or a docker-archive, told apart
//! by their contents (not their names).

pub mod docker;
pub mod files;
pub mod layout;

use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::plan::Plan;
use crate::spec::Platform;
use files::{Files, TarIndex};

/// What kind of source a path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// An OCI image layout directory.
    OciLayout,
    /// A tar of an OCI image layout.
    OciArchive,
    /// A `docker save` tar (or such a directory, unpacked).
    DockerArchive,
}

impl SourceKind {
    /// The name used in messages and in `skopeo` transports.
    pub fn name(self) -> &'static str {
        match self {
            SourceKind::OciLayout => "oci",
            SourceKind::OciArchive => "oci-archive",
            SourceKind::DockerArchive => "docker-archive",
        }
    }
}

/// An opened source: its files and its kind.
#[derive(Debug, Clone)]
pub struct Source {
    /// Where blobs are read from.
    pub files: Files,
    /// What it is.
    pub kind: SourceKind,
}

/// Opens `path` and detects its kind.
pub async fn open(path: &Path) -> Result<Source> {
    let meta = tokio::fs::metadata(path)
        .await
        .map_err(|e| Error::io(path, e))?;
    let files = if meta.is_dir() {
        Files::Dir(path.to_path_buf())
    } else {
        let p = path.to_path_buf();
        let index = tokio::task::spawn_blocking(move || TarIndex::build(&p))
            .await
            .map_err(|e| Error::invalid(path.display(), format!("indexing task failed: {e}")))??;
        Files::Tar(Arc::new(index))
    };
    let has_layout = files.exists("oci-layout") && files.exists("index.json");
    let kind = match (&files, has_layout) {
        (Files::Dir(_), true) => SourceKind::OciLayout,
        (Files::Tar(_), true) => SourceKind::OciArchive,
        (_, false) if files.exists("manifest.json") => SourceKind::DockerArchive,
        _ => {
            return Err(Error::invalid(
                path.display(),
                "not an OCI layout, an oci-archive or a docker-archive \
                 (no oci-layout and index.json, no manifest.json)",
            ));
        }
    };
    Ok(Source { files, kind })
}

impl Source {
    /// Resolves the image tagged `tag` (or the only image) into a plan.
    pub async fn plan(&self, tag: Option<&str>, platform: &Platform) -> Result<Plan> {
        match self.kind {
            SourceKind::OciLayout | SourceKind::OciArchive => {
                layout::plan(&self.files, self.kind.name(), tag, platform).await
            }
            SourceKind::DockerArchive => docker::plan(&self.files, tag).await,
        }
    }
}
