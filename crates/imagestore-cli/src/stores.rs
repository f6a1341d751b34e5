//! `imagestore store ...`.

use anyhow::Result;
use imagestore::{ImageStorer, StoreName};
use serde_json::json;

use crate::args::StoreCmd;
use crate::output;

/// Runs a store command.
pub async fn run(store: &dyn ImageStorer, cmd: StoreCmd, json: bool) -> Result<()> {
    match cmd {
        StoreCmd::Create { name } => {
            let name = StoreName::new(name)?;
            let url = store.create_image_store(&name).await?;
            if json {
                output::json(&json!({ "name": name.as_str(), "url": url.as_str() }))?;
            } else {
                println!("created store {name} at {url}");
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
            if json {
                output::json(&json!({ "store": name.as_str(), "bytes": bytes }))?;
            } else {
                println!("{bytes} bytes ({})", output::human(bytes));
            }
        }
    }
    Ok(())
}
