//! `imagestore sample`: a small built-in chain, to see a store at work without any files.

use anyhow::Result;
use imagestore::{
    Digest, Error, ImageId, ImageStorer, ImageStorerExt, Metadata, ObjectKind, StoreName,
};

use crate::args::SampleArgs;

fn layer(entries: &[(&str, &[u8])]) -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in entries {
        let mut h = tar::Header::new_ustar();
        h.set_mode(if path.starts_with("bin/") {
            0o755
        } else {
            0o644
        });
        h.set_mtime(1_700_000_000);
        h.set_size(data.len() as u64);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, *data)?;
    }
    Ok(b.into_inner()?)
}

/// The id of a layer on a parent: the chain id (sha256 of the parent id and the layer sum).
pub fn chain_id(parent: &ImageId, sum: &Digest) -> Result<ImageId> {
    let d = Digest::sha256_of(format!("{parent} {sum}").as_bytes());
    Ok(ImageId::new(d.hex())?)
}

/// Writes the sample chain and shows it.
pub async fn run(store: &dyn ImageStorer, a: SampleArgs, json: bool) -> Result<()> {
    let s = StoreName::new(&a.store)?;
    match store.create_image_store(&s).await {
        Ok(_)
        | Err(Error::AlreadyExists {
            kind: ObjectKind::Store,
            ..
        }) => {}
        Err(e) => return Err(e.into()),
    }
    let layers = [
        layer(&[
            ("etc/os-release", b"NAME=\"imagestore sample\"\nID=sample\n"),
            ("bin/hello", b"#!/bin/sh\necho hello from a layer chain\n"),
            (
                "usr/share/doc/sample/README",
                b"The first layer of the sample image.\n",
            ),
        ])?,
        layer(&[
            ("app/config.json", br#"{"greeting":"hello"}"#),
            ("app/data.bin", &[42u8; 64 << 10]),
        ])?,
        {
            let mut b = tar::Builder::new(Vec::new());
            let mut h = tar::Header::new_ustar();
            h.set_mode(0o644);
            h.set_size(0);
            h.set_mtime(1_700_000_000);
            b.append_data(&mut h, "usr/share/doc/sample/.wh.README", std::io::empty())?;
            b.into_inner()?
        },
    ];
    let mut parent = store.scratch(&s).await?;
    for (i, bytes) in layers.into_iter().enumerate() {
        let sum = Digest::sha256_of(&bytes);
        let id = chain_id(&parent.id, &sum)?;
        let mut meta = Metadata::new();
        meta.insert("sample.layer".into(), format!("{}", i + 1).into_bytes());
        parent = store.write_image_bytes(&parent, &id, meta, bytes).await?;
    }
    crate::content::show_chain(store, &s, &parent.id, json).await
}
