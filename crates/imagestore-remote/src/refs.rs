//! References, blobs, pins and quotas over the `/v1` API.

use async_trait::async_trait;
use imagestore_core::refs::{MAX_BLOB_BYTES, check_blob};
use imagestore_core::{
    BlobInfo, Digest, Expect, Pin, RefName, RefTarget, Reference, References, Result, StoreName,
};
use reqwest::Method;
use serde::{Deserialize, Serialize};

use crate::client::{read_limited, ref_segment, segment};
use crate::store::{RemoteStore, store_path};

/// An expectation as the API writes it: `null` for any, `"absent"`, or the target.
fn expect_json(expect: &Expect) -> serde_json::Value {
    match expect {
        Expect::Any => serde_json::Value::Null,
        Expect::Absent => serde_json::Value::String("absent".to_owned()),
        Expect::Target(t) => serde_json::to_value(t).unwrap_or(serde_json::Value::Null),
    }
}

#[derive(Serialize)]
struct SetBody<'a> {
    target: &'a RefTarget,
    expect: serde_json::Value,
}

#[derive(Serialize, Deserialize)]
struct Quota {
    quota: Option<u64>,
}

fn ref_path(store: &StoreName, name: &RefName) -> String {
    store_path(store, &format!("/refs/{}", ref_segment(name.as_str())))
}

fn blob_path(store: &StoreName, digest: &Digest) -> String {
    store_path(store, &format!("/blobs/{}", segment(&digest.to_string())))
}

#[async_trait]
impl References for RemoteStore {
    async fn set_reference(
        &self,
        store: &StoreName,
        name: &RefName,
        target: &RefTarget,
        expect: &Expect,
    ) -> Result<Reference> {
        let body = SetBody {
            target,
            expect: expect_json(expect),
        };
        self.client
            .request(Method::PUT, &ref_path(store, name), &[])?
            .json(&body)?
            .send_json()
            .await
    }

    async fn get_reference(&self, store: &StoreName, name: &RefName) -> Result<Reference> {
        self.client
            .request(Method::GET, &ref_path(store, name), &[])?
            .send_json()
            .await
    }

    async fn list_references(&self, store: &StoreName) -> Result<Vec<Reference>> {
        self.client
            .request(Method::GET, &store_path(store, "/refs"), &[])?
            .send_json()
            .await
    }

    async fn delete_reference(
        &self,
        store: &StoreName,
        name: &RefName,
        expect: &Expect,
    ) -> Result<Reference> {
        let mut call = self
            .client
            .request(Method::DELETE, &ref_path(store, name), &[])?;
        if *expect != Expect::Any {
            call = call.json(&serde_json::json!({ "expect": expect_json(expect) }))?;
        }
        call.send_json().await
    }

    async fn put_blob(&self, store: &StoreName, digest: &Digest, bytes: Vec<u8>) -> Result<()> {
        // Every backend checks this first; here it also spares sending a blob that cannot be
        // stored.
        check_blob(digest, &bytes)?;
        self.client
            .request(Method::PUT, &blob_path(store, digest), &[])?
            .bytes(bytes)
            .send_empty()
            .await
    }

    async fn get_blob(&self, store: &StoreName, digest: &Digest) -> Result<Vec<u8>> {
        let call = self
            .client
            .request(Method::GET, &blob_path(store, digest), &[])?;
        let what = call.what.clone();
        read_limited(call.send().await?, &what, MAX_BLOB_BYTES, false).await
    }

    async fn list_blobs(&self, store: &StoreName) -> Result<Vec<BlobInfo>> {
        self.client
            .request(Method::GET, &store_path(store, "/blobs"), &[])?
            .send_json()
            .await
    }

    async fn delete_blob(&self, store: &StoreName, digest: &Digest) -> Result<()> {
        self.client
            .request(Method::DELETE, &blob_path(store, digest), &[])?
            .send_empty()
            .await
    }

    async fn pins(&self, store: &StoreName) -> Result<Vec<Pin>> {
        self.client
            .request(Method::GET, &store_path(store, "/pins"), &[])?
            .send_json()
            .await
    }

    async fn set_quota(&self, store: &StoreName, quota: Option<u64>) -> Result<()> {
        self.client
            .request(Method::PUT, &store_path(store, "/quota"), &[])?
            .json(&Quota { quota })?
            .send_empty()
            .await
    }

    async fn quota(&self, store: &StoreName) -> Result<Option<u64>> {
        let q: Quota = self
            .client
            .request(Method::GET, &store_path(store, "/quota"), &[])?
            .send_json()
            .await?;
        Ok(q.quota)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imagestore_core::ImageId;

    #[test]
    fn expectations_take_the_contract_form() -> Result<()> {
        assert_eq!(expect_json(&Expect::Any), serde_json::Value::Null);
        assert_eq!(expect_json(&Expect::Absent), serde_json::json!("absent"));
        let t = RefTarget::image(ImageId::new("a")?);
        assert_eq!(
            expect_json(&Expect::Target(t)),
            serde_json::json!({"image": "a"})
        );
        Ok(())
    }
}
