//! Store quotas, exact across hosts.
//!
//! The quota lives in `quota` under the store's generation. While one is set, every commit
//! takes the store's quota lease (`quota-lease`) around "compute the usage from the index
//! view, check it, create the image record", so two hosts cannot both take the last bytes:
//! the second one's view is read after the first one's record was created, and the index
//! view shows every record created before it was read. Deletes only lower the usage and take
//! no such lease. Without a quota a commit reads the missing `quota` object and nothing more.

use imagestore_core::refs::check_quota;
use imagestore_core::{Result, StoreName};

use crate::lease::{self, Acquired, LeaseGuard, LeaseOp};
use crate::record::{QuotaRecord, encode};
use crate::store::{S3Store, StoreCtx};

impl S3Store {
    /// The store's quota, read now.
    pub(crate) async fn read_quota(&self, st: &StoreCtx) -> Result<Option<u64>> {
        let key = st.keys.quota();
        match self.objects().get(&key).await? {
            None => Ok(None),
            Some(got) => Ok(Some(
                QuotaRecord::parse(&self.objects().show(&key), &got.bytes)?.quota,
            )),
        }
    }

    /// [`imagestore_core::References::set_quota`].
    pub(crate) async fn put_quota(&self, s: &StoreName, quota: Option<u64>) -> Result<()> {
        let st = self.open_store(s).await?;
        let key = st.keys.quota();
        match quota {
            Some(quota) => self
                .objects()
                .put(&key, encode(&QuotaRecord { quota }))
                .await
                .map(|_| ()),
            None => self.objects().delete(&key).await,
        }
    }

    /// Admits a commit of `size` bytes: `Ok(None)` without a quota; with one, the quota lease,
    /// held until the caller has created (or given up) its record, once the usage plus `size`
    /// was found to fit; `QuotaExceeded` otherwise.
    pub(crate) async fn quota_gate(&self, st: &StoreCtx, size: u64) -> Result<Option<LeaseGuard>> {
        let Some(quota) = self.read_quota(st).await? else {
            return Ok(None);
        };
        let guard = match lease::acquire(
            self.objects(),
            &st.keys.quota_lease(),
            self.lease_record(LeaseOp::Quota),
            || async { Ok(None::<()>) },
        )
        .await?
        {
            // A dead holder's commit either created its record or did not; the view shows
            // which, so there is nothing to finish.
            Acquired::Held { guard, .. } => guard,
            Acquired::Answered(()) => {
                return Err(crate::error::backend(
                    "the quota lease answered without a holder",
                    false,
                ));
            }
        };
        let checked: Result<()> = async {
            let usage: u64 = self.view(st).await?.records.values().map(|r| r.size).sum();
            check_quota(&st.name, usage, size, Some(quota))?;
            guard.ensure_fresh().await
        }
        .await;
        match checked {
            Ok(()) => Ok(Some(guard)),
            Err(e) => {
                guard.release().await?;
                Err(e)
            }
        }
    }
}
