//! What keeps images in use besides children and references: owners, writable layers and
//! writes in progress ([`imagestore_core::References::pins`]).

use chrono::{DateTime, Utc};

use imagestore_core::{ImageId, OwnerName, Pin, Result, StoreName};

use crate::layout::StoreKeys;
use crate::lease::{self, LeaseOp};
use crate::record::{LinkKind, LinkRecord, OwnerRecord, WritableRecord};
use crate::store::S3Store;

impl S3Store {
    /// [`imagestore_core::References::pins`]: one listing each of owners, writable layers and
    /// child links, plus a read per entry.
    pub(crate) async fn pins_of(&self, s: &StoreName) -> Result<Vec<Pin>> {
        let st = self.open_store(s).await?;
        let o = self.objects();
        let view = self.view(&st).await?;
        let nonce_of = |id: &ImageId| {
            if id.is_scratch() {
                Some(st.record.scratch.nonce.clone())
            } else {
                view.records.get(id).map(|r| r.nonce.clone())
            }
        };
        let mut out = Vec::new();

        let owners = st.keys.all_owners_dir();
        for m in o.list(&owners).await? {
            let rel = o.rel(&m.location);
            let Some((id, owner)) = StoreKeys::pair_under(&owners, &rel) else {
                continue;
            };
            let (Ok(id), Ok(owner)) = (ImageId::new(id), OwnerName::new(owner)) else {
                continue;
            };
            let Some(nonce) = nonce_of(&id) else { continue };
            if let Some(got) = o.get(&rel).await?
                && OwnerRecord::parse(&rel, &got.bytes)
                    .is_ok_and(|r| r.image_nonce == nonce && r.is_live())
            {
                out.push(Pin {
                    image: id,
                    by: format!("owner {owner}"),
                });
            }
        }

        for m in o.list(&st.keys.writables_dir()).await? {
            let rel = o.rel(&m.location);
            if let Some(got) = o.get(&rel).await?
                && let Ok(w) = WritableRecord::parse(&rel, &got.bytes)
            {
                out.push(Pin {
                    image: w.parent,
                    by: format!("writable {}", w.id),
                });
            }
        }

        // Writes in progress: a child link whose child has no record yet and a live write
        // lease naming the parent.
        let children = st.keys.all_children_dir();
        let mut now: Option<DateTime<Utc>> = None;
        for m in o.list(&children).await? {
            let rel = o.rel(&m.location);
            let Some((parent, child)) = StoreKeys::pair_under(&children, &rel) else {
                continue;
            };
            let (Ok(parent), Ok(child)) = (ImageId::new(parent), ImageId::new(child)) else {
                continue;
            };
            if view.records.contains_key(&child) {
                continue;
            }
            let Some(got) = o.get(&rel).await? else {
                continue;
            };
            if !LinkRecord::parse(&rel, &got.bytes).is_ok_and(|l| l.kind == LinkKind::Image) {
                continue;
            }
            let Some(l) = lease::read(o, &st.keys.lease(&child)).await? else {
                continue;
            };
            if l.record.op != LeaseOp::Write || l.record.parent.as_ref() != Some(&parent) {
                continue;
            }
            let t = match now {
                Some(t) => t,
                None => {
                    let t =
                        crate::sweep::server_now(self, &format!("{}/clock", st.keys.base)).await?;
                    now = Some(t);
                    t
                }
            };
            if crate::sweep::is_dead(&l, t) || self.find_record(&st, &child).await?.is_some() {
                continue;
            }
            out.push(Pin {
                image: parent,
                by: format!("write {child}"),
            });
        }
        out.sort_by(|a, b| (&a.image, &a.by).cmp(&(&b.image, &b.by)));
        Ok(out)
    }
}
