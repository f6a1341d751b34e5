//! [`RemoteStore`]: stores, images, owners and usage over the `/v1` API.
//!
//! Each trait method is one request (a batch delete or a long id list a few), so its
//! atomicity and its behaviour when dropped are those of the server's backend: dropping the
//! future closes the connection and the server drops the operation, which then completes or
//! does not happen as the trait method documents.

use std::sync::Arc;

use async_trait::async_trait;
use imagestore_core::image::validate_metadata;
use imagestore_core::storer::{check_existing_write, check_write_id};
use imagestore_core::wire::ErrorBody;
use imagestore_core::{
    ByteStream, Capabilities, Digest, Error, Image, ImageId, ImageStorer, Metadata, OwnerName,
    Resolver, Result, StoreName, Url,
};
use reqwest::Method;
use serde::Deserialize;

use crate::client::{Client, segment};
use crate::config::Config;

/// Ids per `GET .../images?ids=` request, so that its URL stays short (ids are at most 128
/// bytes).
const IDS_PER_LIST: usize = 48;

/// Images per batch delete request (the API's bound).
const IDS_PER_DELETE: usize = 4096;

/// What `GET /v1/info` answers.
#[derive(Debug, Clone, Deserialize)]
pub struct ServerInfo {
    /// The scheme of the backend the server serves (`file`, `s3`, ...).
    pub scheme: String,
    /// What that backend can do.
    pub capabilities: Capabilities,
    /// The server's version.
    #[serde(default)]
    pub version: String,
}

#[derive(Deserialize)]
struct UrlAnswer {
    url: Url,
}

#[derive(Deserialize)]
struct UsageAnswer {
    usage: u64,
}

/// One result of a batch delete: the image, or the error that kept it.
#[derive(Deserialize)]
struct DeleteResult {
    #[serde(default)]
    image: Option<Image>,
    #[serde(default)]
    error: Option<ErrorBody>,
}

/// An image store served by `imagestore serve`, reached over its native HTTP API.
pub struct RemoteStore {
    pub(crate) client: Client,
    scheme: &'static str,
    info: ServerInfo,
}

impl std::fmt::Debug for RemoteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteStore")
            .field("client", &self.client)
            .field("backend", &self.info.scheme)
            .finish()
    }
}

/// `/v1/stores/{store}` followed by `rest`.
pub(crate) fn store_path(store: &StoreName, rest: &str) -> String {
    format!("/v1/stores/{}{rest}", segment(store.as_str()))
}

/// `/v1/stores/{store}/images/{id}` followed by `rest`.
pub(crate) fn image_path(store: &StoreName, id: &ImageId, rest: &str) -> String {
    store_path(store, &format!("/images/{}{rest}", segment(id.as_str())))
}

impl RemoteStore {
    /// Connects to the server `config` names: reads the token file, if any, and asks the
    /// server what its backend can do (`GET /v1/info`).
    pub async fn open(config: Config) -> Result<RemoteStore> {
        let token = match &config.token_file {
            Some(path) => Some(read_token(&config, path).await?),
            None => None,
        };
        let client = Client::new(&config, token.as_deref())?;
        let info: ServerInfo = client
            .request(Method::GET, "/v1/info", &[])?
            .send_json()
            .await?;
        Ok(RemoteStore {
            client,
            scheme: config.scheme,
            info,
        })
    }

    /// What the server said about itself and its backend when this store was opened.
    pub fn server_info(&self) -> &ServerInfo {
        &self.info
    }

    pub(crate) async fn delete_chunk(
        &self,
        store: &StoreName,
        images: &[Image],
    ) -> Result<Vec<Result<Image>>> {
        let ids: Vec<&ImageId> = images.iter().map(|i| &i.id).collect();
        let answers: Vec<DeleteResult> = self
            .client
            .request(Method::POST, &store_path(store, "/delete"), &[])?
            .json(&serde_json::json!({ "ids": ids }))?
            .send_json()
            .await?;
        if answers.len() != images.len() {
            return Err(crate::error::unreadable(
                "batch delete",
                format!("{} results for {} images", answers.len(), images.len()),
            ));
        }
        Ok(answers
            .into_iter()
            .map(|a| match (a.image, a.error) {
                (Some(image), _) => Ok(image),
                (None, Some(e)) => Err(e.into_error()),
                (None, None) => Err(crate::error::unreadable(
                    "batch delete",
                    "a result with neither image nor error",
                )),
            })
            .collect())
    }
}

/// The bearer token in `path`, without surrounding white space.
async fn read_token(config: &Config, path: &std::path::Path) -> Result<String> {
    let text = tokio::fs::read_to_string(path).await.map_err(|e| {
        Error::invalid(format!(
            "remote {}: reading the token file {}: {e}",
            config.shown(),
            path.display()
        ))
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(Error::invalid(format!(
            "remote {}: the token file {} is empty",
            config.shown(),
            path.display()
        )));
    }
    Ok(token.to_owned())
}

#[async_trait]
impl ImageStorer for RemoteStore {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn scheme(&self) -> &'static str {
        self.scheme
    }

    fn capabilities(&self) -> Capabilities {
        self.info.capabilities
    }

    async fn create_image_store(&self, name: &StoreName) -> Result<Url> {
        let a: UrlAnswer = self
            .client
            .request(Method::PUT, &store_path(name, ""), &[])?
            .send_json()
            .await?;
        Ok(a.url)
    }

    async fn delete_image_store(&self, name: &StoreName) -> Result<()> {
        self.client
            .request(Method::DELETE, &store_path(name, ""), &[])?
            .send_empty()
            .await
    }

    async fn get_image_store(&self, name: &StoreName) -> Result<Url> {
        let a: UrlAnswer = self
            .client
            .request(Method::GET, &store_path(name, ""), &[])?
            .send_json()
            .await?;
        Ok(a.url)
    }

    async fn list_image_stores(&self) -> Result<Vec<Url>> {
        self.client
            .request(Method::GET, "/v1/stores", &[])?
            .send_json()
            .await
    }

    async fn write_image(
        &self,
        parent: &Image,
        id: &ImageId,
        meta: Metadata,
        sum: &Digest,
        body: ByteStream,
    ) -> Result<Image> {
        check_write_id(id)?;
        validate_metadata(&meta)?;
        // An image that exists comes back without its body being read: the request body
        // streams as soon as it is sent, so the check is made here, after the other writes of
        // the id in this process ended (`crate::writes`).
        let _turn =
            crate::writes::lock(format!("{}/{}/{id}", self.client.shown(), parent.store)).await;
        match self.get_image(&parent.store, id).await {
            Ok(existing) => {
                check_existing_write(
                    format!("{}/{id}", parent.store),
                    existing.parent.as_ref(),
                    existing.sum.as_ref(),
                    &parent.id,
                    Some(sum),
                )?;
                return Ok(existing);
            }
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
        let prefix = serde_json::to_vec(&meta)
            .map_err(|e| Error::invalid(format!("encoding the metadata of {id}: {e}")))?;
        let (p, s) = (parent.id.to_string(), sum.to_string());
        let call = self
            .client
            .request(
                Method::PUT,
                &image_path(&parent.store, id, ""),
                &[("parent", &p), ("sum", &s)],
            )?
            .header("Imagestore-Metadata-Length", prefix.len().to_string());
        let what = call.what.clone();
        let resp = call.send_stream(prefix, body).await?;
        crate::client::read_json(resp, &what).await
    }

    async fn get_image(&self, store: &StoreName, id: &ImageId) -> Result<Image> {
        self.client
            .request(Method::GET, &image_path(store, id, ""), &[])?
            .send_json()
            .await
    }

    async fn list_images(&self, store: &StoreName, ids: &[ImageId]) -> Result<Vec<Image>> {
        let path = store_path(store, "/images");
        if ids.is_empty() {
            return self
                .client
                .request(Method::GET, &path, &[])?
                .send_json()
                .await;
        }
        let mut out = Vec::new();
        for chunk in ids.chunks(IDS_PER_LIST) {
            let list: Vec<&str> = chunk.iter().map(ImageId::as_str).collect();
            let joined = list.join(",");
            let part: Vec<Image> = self
                .client
                .request(Method::GET, &path, &[("ids", &joined)])?
                .send_json()
                .await?;
            out.extend(part);
        }
        Ok(out)
    }

    async fn delete_image(&self, image: &Image) -> Result<Image> {
        self.client
            .request(
                Method::DELETE,
                &image_path(&image.store, &image.id, ""),
                &[],
            )?
            .send_json()
            .await
    }

    async fn delete_images(
        &self,
        store: &StoreName,
        images: &[Image],
    ) -> Result<Vec<Result<Image>>> {
        let mut out = Vec::with_capacity(images.len());
        for chunk in images.chunks(IDS_PER_DELETE) {
            out.extend(self.delete_chunk(store, chunk).await?);
        }
        Ok(out)
    }

    async fn image_storage_usage(&self, store: &StoreName) -> Result<u64> {
        let a: UsageAnswer = self
            .client
            .request(Method::GET, &store_path(store, "/usage"), &[])?
            .send_json()
            .await?;
        Ok(a.usage)
    }

    async fn image_layer_storage_usage(&self, store: &StoreName, id: &ImageId) -> Result<u64> {
        let a: UsageAnswer = self
            .client
            .request(Method::GET, &image_path(store, id, "/usage"), &[])?
            .send_json()
            .await?;
        Ok(a.usage)
    }
}

#[async_trait]
impl Resolver for RemoteStore {
    async fn url(&self, store: &StoreName, id: &ImageId) -> Result<Url> {
        let a: UrlAnswer = self
            .client
            .request(Method::GET, &image_path(store, id, "/url"), &[])?
            .send_json()
            .await?;
        Ok(a.url)
    }

    async fn owners(&self, url: &Url) -> Result<Vec<OwnerName>> {
        self.client
            .request(Method::GET, "/v1/owners", &[("url", url.as_str())])?
            .send_json()
            .await
    }

    async fn acquire(&self, store: &StoreName, id: &ImageId, owner: &OwnerName) -> Result<()> {
        self.client
            .request(Method::PUT, &owner_path(store, id, owner), &[])?
            .send_empty()
            .await
    }

    async fn acquire_lease(
        &self,
        store: &StoreName,
        id: &ImageId,
        owner: &OwnerName,
        ttl: std::time::Duration,
    ) -> Result<()> {
        let ms = ttl.as_millis().to_string();
        self.client
            .request(
                Method::PUT,
                &owner_path(store, id, owner),
                &[("ttl_ms", &ms)],
            )?
            .send_empty()
            .await
    }

    async fn release(&self, store: &StoreName, id: &ImageId, owner: &OwnerName) -> Result<()> {
        self.client
            .request(Method::DELETE, &owner_path(store, id, owner), &[])?
            .send_empty()
            .await
    }
}

fn owner_path(store: &StoreName, id: &ImageId, owner: &OwnerName) -> String {
    image_path(store, id, &format!("/owners/{}", segment(owner.as_str())))
}

/// Opens a remote store for the registry.
pub(crate) async fn open_url(url: Url) -> Result<Arc<dyn ImageStorer>> {
    let config = Config::from_url(&url)?;
    Ok(Arc::new(RemoteStore::open(config).await?) as Arc<dyn ImageStorer>)
}
