//! A [`Stack`] is what a backend hands the layer engine to answer for an image's contents:
//! its layers' TOCs (scratch first, then a writable layer's imports, if any) and a way to read
//! each layer's bytes. Export, diff, checkout and import are then the same code on every
//! backend.

use std::path::PathBuf;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::layer::chain::{ChainView, LayerToc, diff_with_kinds};
use crate::layer::checkout::{CheckoutOptions, CheckoutReport, checkout};
use crate::layer::compose::MergedView;
use crate::layer::content::ContentSource;
use crate::layer::export::{Plan, write_tar};
use crate::layer::filter::FilterSpec;
use crate::layer::stream::spawn_producer;
use crate::names::ImageId;
use crate::storer::ByteStream;

/// The layers of an image or writable layer, lowest first.
#[derive(Clone)]
pub struct Stack {
    /// For each layer, the image it belongs to (a writable layer's imports carry its id).
    pub owners: Vec<ImageId>,
    /// For each layer, its TOC.
    pub layers: Vec<Arc<dyn LayerToc>>,
    /// Gives the data of the image's files (a [`crate::layer::export::LayerSource`] reads
    /// them from the layers, by the indexes of `layers`).
    pub source: Arc<dyn ContentSource>,
}

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stack")
            .field("owners", &self.owners)
            .finish_non_exhaustive()
    }
}

impl Stack {
    /// The merged view of all layers (loads every TOC).
    pub fn view(&self) -> Result<MergedView> {
        let tocs = self
            .layers
            .iter()
            .map(|l| l.toc())
            .collect::<Result<Vec<_>>>()?;
        Ok(MergedView::build(tocs))
    }

    /// A path-at-a-time view of all layers (loads only what it is asked about).
    pub fn chain(&self) -> ChainView {
        ChainView::new(self.layers.clone())
    }

    /// Number of layers up to and including the last one of image `ancestor`;
    /// `InvalidArgument` if `ancestor` is not in the stack.
    pub fn prefix_len(&self, ancestor: &ImageId, of: &ImageId) -> Result<usize> {
        self.owners
            .iter()
            .rposition(|o| o == ancestor)
            .map(|i| i + 1)
            .ok_or_else(|| Error::invalid(format!("{ancestor} is not an ancestor of {of}")))
    }

    /// A tar of the whole merged image, or with `ancestor_len`, of the changes above the first
    /// `ancestor_len` layers. Runs on the blocking pool; errors end the stream.
    pub fn export(
        &self,
        ancestor_len: Option<usize>,
        filter: FilterSpec,
        data: bool,
    ) -> ByteStream {
        let stack = self.clone();
        spawn_producer(move |w| {
            let plan = match ancestor_len {
                None => Plan::of_view(&stack.view()?),
                Some(n) => {
                    let (changes, modified) = diff_with_kinds(&stack.chain(), n)?;
                    Plan::of_diff(changes, modified)
                }
            };
            write_tar(w, &plan, &filter, data, stack.source.as_ref())?;
            Ok(())
        })
    }

    /// A tar of image `of` (the top of this stack): the whole merged image without `ancestor`,
    /// with it only the changes since that ancestor (`InvalidArgument` if it is not one).
    pub fn export_since(
        &self,
        ancestor: Option<&ImageId>,
        of: &ImageId,
        filter: &FilterSpec,
        data: bool,
    ) -> Result<ByteStream> {
        let prefix = match ancestor {
            Some(a) => Some(self.prefix_len(a, of)?),
            None => None,
        };
        Ok(self.export(prefix, filter.clone(), data))
    }

    /// Materialises the merged image into `dest`.
    pub async fn checkout(
        &self,
        dest: PathBuf,
        options: CheckoutOptions,
    ) -> Result<CheckoutReport> {
        let stack = self.clone();
        tokio::task::spawn_blocking(move || {
            let plan = Plan::of_view(&stack.view()?);
            checkout(&plan, stack.source.as_ref(), &dest, &options)
        })
        .await
        .map_err(|e| Error::invalid(format!("checkout task failed: {e}")))?
    }
}
