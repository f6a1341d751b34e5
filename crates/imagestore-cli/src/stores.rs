//! `imagestore store ...`.

use anyhow::Result;
use imagestore::{ImageStorer, StoreName};
use serde_json::json;

use crate::args::{StoreCmd, parse_bytes};
use crate::output;

/// Runs a store command.
pub async fn run(store: &dyn ImageStorer, cmd: StoreCmd, json: bool) -> Result<()> {
    match cmd {
        StoreCmd::Create { name, quota } => {
            let name = StoreName::new(name)?;
            let url = store.create_image_store(&name).await?;
            if quota.is_some() {
                store.set_quota(&name, quota).await?;
            }
            if json {
                output::json(
                    &json!({ "name": name.as_str(), "url": url.as_str(), "quota": quota }),
                )?;
            } else {
                println!("created store {name} at {url}");
                if let Some(q) = quota {
                    println!("quota {q} bytes ({})", output::human(q));
                }
            }
        }
        StoreCmd::Quota { name, bytes } => {
            let name = StoreName::new(name)?;
            if let Some(b) = bytes {
                let q = if b == "none" {
                    None
                } else {
                    Some(parse_bytes(&b).map_err(anyhow::Error::msg)?)
                };
                store.set_quota(&name, q).await?;
            }
            let quota = store.quota(&name).await?;
            let usage = store.image_storage_usage(&name).await?;
            if json {
                output::json(&json!({ "store": name.as_str(), "quota": quota, "bytes": usage }))?;
            } else {
                match quota {
                    Some(q) => println!(
                        "quota {q} bytes ({}); {usage} used ({})",
                        output::human(q),
                        output::human(usage)
                    ),
                    None => println!("no quota; {usage} bytes used ({})", output::human(usage)),
                }
            }
        }
        StoreCmd::Ls => {
            let urls = store.list_image_stores().await?;
            let names: Vec<String> = urls
                .iter()
                .filter_map(|u| imagestore::image::store_name_of(u).ok())
                .map(|n| n.to_string())
                .collect();
            if json {
                let v: Vec<_> = names
                    .iter()
                    .zip(&urls)
                    .map(|(n, u)| json!({ "name": n, "url": u.as_str() }))
                    .collect();
                output::json(&v)?;
            } else {
                for n in names {
                    println!("{n}");
                }
            }
        }
        StoreCmd::Rm { name } => {
            let name = StoreName::new(name)?;
            store.delete_image_store(&name).await?;
            if json {
                output::json(&json!({ "deleted": name.as_str() }))?;
            } else {
                println!("deleted store {name}");
            }
        }
        StoreCmd::Usage { name } => {
            let name = StoreName::new(name)?;
            let bytes = store.image_storage_usage(&name).await?;
            let quota = store.quota(&name).await?;
            if json {
                output::json(&json!({ "store": name.as_str(), "bytes": bytes, "quota": quota }))?;
            } else {
                match quota {
                    Some(q) => println!(
                        "{bytes} bytes ({}) of a {q}-byte quota ({})",
                        output::human(bytes),
                        output::human(q)
                    ),
                    None => println!("{bytes} bytes ({})", output::human(bytes)),
                }
            }
        }
    }
    Ok(())
}
