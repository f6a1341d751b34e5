//! Image contents over the `/v1` API: writable layers and imports (tar bodies streamed up),
//! exports (tar bodies streamed down) and checkout (an export materialised on this host).

use std::path::Path;

use async_trait::async_trait;
use imagestore_core::image::validate_metadata;
use imagestore_core::layer::checkout::{CheckoutOptions, CheckoutReport};
use imagestore_core::{
    ByteStream, Exporter, FilterSpec, Image, ImageId, ImportSummary, Importer, Metadata, Result,
    StoreName, Writable,
};
use reqwest::Method;

use crate::client::{byte_stream, read_json, segment};
use crate::store::{RemoteStore, image_path, store_path};

/// `/v1/stores/{store}/writables/{id}` followed by `rest`.
fn writable_path(store: &StoreName, id: &ImageId, rest: &str) -> String {
    store_path(store, &format!("/writables/{}{rest}", segment(id.as_str())))
}

/// The `filter=` query pair of a filter, none for the identity.
fn filter_query(filter: &FilterSpec) -> Option<String> {
    (*filter != FilterSpec::default()).then(|| filter.encode())
}

#[async_trait]
impl Importer for RemoteStore {
    async fn create_writable(&self, parent: &Image, id: &ImageId) -> Result<Writable> {
        self.client
            .request(
                Method::PUT,
                &writable_path(&parent.store, id, ""),
                &[("parent", parent.id.as_str())],
            )?
            .send_json()
            .await
    }

    async fn get_writable(&self, store: &StoreName, id: &ImageId) -> Result<Writable> {
        self.client
            .request(Method::GET, &writable_path(store, id, ""), &[])?
            .send_json()
            .await
    }

    async fn import(
        &self,
        store: &StoreName,
        id: &ImageId,
        filter: &FilterSpec,
        tar: ByteStream,
    ) -> Result<ImportSummary> {
        let f = filter_query(filter);
        let query: Vec<(&str, &str)> = f.iter().map(|f| ("filter", f.as_str())).collect();
        let call =
            self.client
                .request(Method::POST, &writable_path(store, id, "/import"), &query)?;
        let what = call.what.clone();
        let resp = call.send_stream(Vec::new(), tar).await?;
        read_json(resp, &what).await
    }

    async fn commit_writable(
        &self,
        store: &StoreName,
        id: &ImageId,
        new_id: &ImageId,
        meta: Metadata,
    ) -> Result<Image> {
        validate_metadata(&meta)?;
        self.client
            .request(
                Method::POST,
                &writable_path(store, id, "/commit"),
                &[("new_id", new_id.as_str())],
            )?
            .json(&meta)?
            .send_json()
            .await
    }

    async fn delete_writable(&self, store: &StoreName, id: &ImageId) -> Result<()> {
        self.client
            .request(Method::DELETE, &writable_path(store, id, ""), &[])?
            .send_empty()
            .await
    }
}

#[async_trait]
impl Exporter for RemoteStore {
    async fn export(
        &self,
        store: &StoreName,
        id: &ImageId,
        ancestor: Option<&ImageId>,
        filter: &FilterSpec,
        data: bool,
    ) -> Result<ByteStream> {
        let f = filter_query(filter);
        let mut query = vec![("data", if data { "true" } else { "false" })];
        if let Some(a) = ancestor {
            query.push(("ancestor", a.as_str()));
        }
        if let Some(f) = &f {
            query.push(("filter", f.as_str()));
        }
        let call = self
            .client
            .request(Method::GET, &image_path(store, id, "/export"), &query)?;
        let what = call.what.clone();
        Ok(byte_stream(call.send().await?, what))
    }

    async fn export_raw(&self, store: &StoreName, id: &ImageId) -> Result<ByteStream> {
        let call = self
            .client
            .request(Method::GET, &image_path(store, id, "/layer"), &[])?;
        let what = call.what.clone();
        Ok(byte_stream(call.send().await?, what))
    }

    async fn checkout(
        &self,
        store: &StoreName,
        id: &ImageId,
        dest: &Path,
        options: &CheckoutOptions,
    ) -> Result<CheckoutReport> {
        if std::fs::read_dir(dest).is_ok_and(|mut d| d.next().is_some()) {
            // Refused before the download; the engine would refuse it after.
            return Err(imagestore_core::Error::invalid(format!(
                "checkout destination {} is not empty",
                dest.display()
            )));
        }
        let tar = self
            .export(store, id, None, &FilterSpec::all(), true)
            .await?;
        crate::checkout::checkout_tar(id, tar, dest, options).await
    }
}
